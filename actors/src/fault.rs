//! Fault injection for tests, compiled in only with the `fault-injection`
//! feature: release builds contain none of it.
//!
//! `POWAFLEET_FAULT_PANIC=3,7` (outside the `POWA_FLEET_` configuration
//! prefix, which accepts known keys only) makes the snapshot work of servers 3 and 7
//! panic, to exercise the path a bug would take (caught, reported, the actor
//! restarted with backoff, the others untouched).

use crate::server::SrvId;

/// The variable naming the servers whose snapshots panic.
pub const PANIC_ENV: &str = "POWAFLEET_FAULT_PANIC";

#[cfg(feature = "fault-injection")]
pub fn before_snapshot(srvid: SrvId) {
    let Ok(list) = std::env::var(PANIC_ENV) else {
        return;
    };
    if list.split(',').any(|s| s.trim().parse() == Ok(srvid)) {
        panic!("injected fault for server {srvid}");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn before_snapshot(_: SrvId) {}
