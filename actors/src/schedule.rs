//! When each server's next snapshot is due (pure arithmetic, no clock).
//!
//! The rhythm survives restarts: the first due time comes from the
//! repository's `snapts`. A fresh worker whose snapshot fell due less than
//! one period ago (a server taken over from a lost member, a collector
//! restarted within a period) takes it at once, on the server's grid.
//! When `snapts` is unknown or older (first start, a collector stopped
//! for a while), or the worker is retrying after a failure, the server pretends
//! its last snapshot happened a random number of seconds ago, so a fleet
//! started at once spreads over the period instead of firing together.
//! After that, due times stay on the grid `first + k × frequency`: they are
//! computed from the schedule, never from when a snapshot ended, so they do
//! not drift; when slots are missed, one late snapshot is taken and the
//! missed ones are counted, not piled up.

use std::time::{Duration, SystemTime};

/// What the repository knows of a server's last snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum LastSnapshot {
    /// No `powa_snapshot_metas` row: not registered with `powa_register_server`.
    NotRegistered,
    /// Registered, never snapshotted (`-infinity`).
    Never,
    At(SystemTime),
}

/// The first due time after (re)connecting. With `take_overdue`, a
/// snapshot due less than one period ago is taken at once, on the server's
/// grid (a worker that just took the server over from a lost member, or
/// a collector restarted within a period); otherwise, and for anything
/// older, the first snapshot is spread over one period. `random_below(n)`
/// must return a number in `0..n`.
pub fn first_due(
    now: SystemTime,
    last: &LastSnapshot,
    frequency: Duration,
    take_overdue: bool,
    random_below: impl FnOnce(u64) -> u64,
) -> SystemTime {
    if let LastSnapshot::At(at) = last {
        let next = *at + frequency;
        if next > now {
            // Keep the rhythm, but never trust a snapts from the future
            // (clock skew) for more than one period.
            return next.min(now + frequency);
        }
        if take_overdue && now < next + frequency {
            return next;
        }
    }
    let period = frequency.as_secs().max(1);
    let ago = Duration::from_secs(random_below(period).min(period - 1));
    now + frequency - ago
}

/// The due time after the one at `previous_due`, and how many slots were
/// skipped because they already passed at `now`.
pub fn next_due(
    previous_due: SystemTime,
    frequency: Duration,
    now: SystemTime,
) -> (SystemTime, u32) {
    let next = previous_due + frequency;
    if next > now || frequency.is_zero() {
        return (next, 0);
    }
    // Slots `next`, `next + f`, … up to `now` have passed: take one snapshot
    // now for the latest of them and skip the others.
    let late = now.duration_since(next).unwrap_or_default();
    let passed = (late.as_nanos() / frequency.as_nanos()) as u32;
    let latest = next + frequency * passed;
    (latest, passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const F: Duration = Duration::from_secs(300);

    #[test]
    fn a_recent_snapshot_keeps_the_rhythm() {
        let due = first_due(
            t(1000),
            &LastSnapshot::At(t(900)),
            F,
            true,
            |_| unreachable!(),
        );
        assert_eq!(due, t(1200));
    }

    #[test]
    fn unknown_or_stale_snapshots_are_spread_over_one_period() {
        for last in [LastSnapshot::Never, LastSnapshot::At(t(100))] {
            assert_eq!(
                first_due(t(1000), &last, F, true, |n| {
                    assert_eq!(n, 300);
                    0
                }),
                t(1300)
            );
            assert_eq!(first_due(t(1000), &last, F, true, |_| 299), t(1001));
        }
    }

    #[test]
    fn a_snapts_in_the_future_is_capped() {
        let due = first_due(t(1000), &LastSnapshot::At(t(5000)), F, true, |_| 0);
        assert_eq!(due, t(1300));
    }

    #[test]
    fn a_snapshot_due_less_than_a_period_ago_is_taken_at_once_on_its_grid() {
        // Due at 1150, 50 s ago: taken now, and the grid stays 1150 + k × F.
        let last = LastSnapshot::At(t(850));
        let due = first_due(t(1200), &last, F, true, |_| unreachable!());
        assert_eq!(due, t(1150));
        assert_eq!(next_due(due, F, t(1201)), (t(1450), 0));
        // After a failure the retry is spread instead.
        let due = first_due(t(1200), &last, F, false, |_| 100);
        assert_eq!(due, t(1400));
    }

    #[test]
    fn next_due_stays_on_the_grid() {
        // The snapshot due at 1000 ended at 1042: next still at 1300.
        assert_eq!(next_due(t(1000), F, t(1042)), (t(1300), 0));
    }

    #[test]
    fn missed_slots_are_taken_once_and_counted() {
        // Due at 1000, finished at 1950: slots 1300, 1600 and 1900 passed.
        let (due, skipped) = next_due(t(1000), F, t(1950));
        assert_eq!(due, t(1900));
        assert_eq!(skipped, 2);
        // Once taken, the grid goes on.
        assert_eq!(next_due(due, F, t(1960)), (t(2200), 0));
    }
}
