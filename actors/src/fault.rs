//! Fault injection for tests, compiled in only with the `fault-injection`
//! feature: release builds contain none of it.
//!
//! `POWAFLEET_FAULT_PANIC=3,7` (outside the `POWA_FLEET_` configuration
//! prefix, which accepts known keys only) makes the snapshot work of servers 3 and 7
//! panic, to exercise the path a bug would take (caught, reported, the actor
//! restarted with backoff, the others untouched); `POWAFLEET_FAULT_PANIC_IN`
//! makes a handler of the supervisor, the listener, the status actor or a
//! snapshot actor panic, outside any guarded work.

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

/// The variable naming handlers that panic: `kind:handler` items, comma
/// separated, each optionally `*N` (panic the first N times it runs,
/// once by default), e.g.
/// `supervisor:reload,listener:workers_status,status:report*2,snapshot:due`.
/// The kinds and handlers are the ones passed to [`panic_in`].
pub const PANIC_IN_ENV: &str = "POWAFLEET_FAULT_PANIC_IN";

#[cfg(feature = "fault-injection")]
mod panic_in {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Panics left per `kind:handler`, read from the environment once.
    static LEFT: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

    fn parse(list: &str) -> HashMap<String, u32> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('*') {
                Some((name, n)) => (name.trim().to_string(), n.trim().parse().unwrap_or(1)),
                None => (item.to_string(), 1),
            })
            .collect()
    }

    /// Whether this run of the handler must panic (and count it).
    pub fn due(kind: &str, handler: &str) -> bool {
        let mut left = LEFT.lock().unwrap_or_else(|e| e.into_inner());
        let left = left
            .get_or_insert_with(|| parse(&std::env::var(super::PANIC_IN_ENV).unwrap_or_default()));
        match left.get_mut(&format!("{kind}:{handler}")) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    #[test]
    fn items_are_parsed_with_their_counts() {
        let items = parse("supervisor:reload, status:report*3,,listener:workers_status*x");
        assert_eq!(items["supervisor:reload"], 1);
        assert_eq!(items["status:report"], 3);
        assert_eq!(items["listener:workers_status"], 1);
        assert_eq!(items.len(), 3);
    }
}

/// Panics when [`PANIC_IN_ENV`] names this handler and has panics left.
#[cfg(feature = "fault-injection")]
pub fn panic_in(kind: &str, handler: &str) {
    if panic_in::due(kind, handler) {
        panic!("injected fault in the {kind}'s {handler} handler");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn panic_in(_: &str, _: &str) {}
