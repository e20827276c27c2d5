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

/// `POWAFLEET_FAULT_WEDGE_STATUS=30`: the status actor's WORKERS_STATUS
/// handler blocks its thread for 30 s, as a wedged actor would (liveness).
pub const WEDGE_STATUS_ENV: &str = "POWAFLEET_FAULT_WEDGE_STATUS";

#[cfg(feature = "fault-injection")]
pub fn in_status_handler() {
    if let Some(secs) = std::env::var(WEDGE_STATUS_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn in_status_handler() {}

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
