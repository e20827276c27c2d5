//! The fleet-wide limit on simultaneous snapshots.
//!
//! `powa_take_snapshot` slows down much faster than linearly with the number
//! of snapshots in flight (they all scan the shared `*_src_tmp` tables), so
//! bounding concurrency protects the repository better than any speed-up in
//! the collector. Permits go to forced snapshots first, then in due-time
//! order, so that no server starves and a late server is served before the
//! ones that became due after it. Snapshot actors live on several threads,
//! hence a plain mutex rather than an actor.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::oneshot;

/// A shared, cloneable handle on the limit.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    capacity: usize,
    in_use: usize,
    next_seq: u64,
    queue: BinaryHeap<Waiter>,
}

struct Waiter {
    forced: bool,
    due: SystemTime,
    seq: u64,
    tx: oneshot::Sender<Permit>,
}

impl Ord for Waiter {
    /// The greatest waiter is served first: forced, then earliest due, then
    /// first come.
    fn cmp(&self, other: &Self) -> Ordering {
        self.forced
            .cmp(&other.forced)
            .then_with(|| other.due.cmp(&self.due))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiter {}

/// The right to run one snapshot; returned to the gate when dropped.
pub struct Permit {
    gate: Gate,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl Gate {
    pub fn new(capacity: usize) -> Gate {
        Gate {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                in_use: 0,
                next_seq: 0,
                queue: BinaryHeap::new(),
            })),
        }
    }

    /// Wait for a permit. Dropping the returned future gives up the place
    /// in the queue.
    pub async fn acquire(&self, forced: bool, due: SystemTime) -> Permit {
        let rx = {
            let mut inner = self.lock();
            if inner.in_use < inner.capacity && inner.queue.is_empty() {
                inner.in_use += 1;
                return Permit { gate: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.queue.push(Waiter {
                forced,
                due,
                seq,
                tx,
            });
            rx
        };
        rx.await
            .expect("the gate never drops a waiter without a permit")
    }

    /// Change the limit (on reload). Extra permits are handed out now;
    /// a lower limit takes effect as running snapshots finish.
    pub fn set_capacity(&self, capacity: usize) {
        self.lock().capacity = capacity.max(1);
        self.grant();
    }

    /// (snapshots running, snapshots waiting for a permit)
    pub fn load(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.in_use, inner.queue.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters
        // half-updated (every critical section is a few plain writes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self) {
        self.lock().in_use -= 1;
        self.grant();
    }

    /// Hand free permits to the best waiters still listening. Sending
    /// happens outside the lock: a permit refused by a waiter that just gave
    /// up is dropped there, which releases it again.
    fn grant(&self) {
        loop {
            let waiter = {
                let mut inner = self.lock();
                if inner.in_use >= inner.capacity {
                    return;
                }
                loop {
                    match inner.queue.pop() {
                        Some(w) if w.tx.is_closed() => continue,
                        Some(w) => {
                            inner.in_use += 1;
                            break w;
                        }
                        None => return,
                    }
                }
            };
            // On failure the permit comes back and its drop releases it.
            let _ = waiter.tx.send(Permit { gate: self.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn permits_are_bounded_and_returned() {
        let gate = Gate::new(2);
        let a = gate.acquire(false, at(1)).await;
        let _b = gate.acquire(false, at(1)).await;
        assert_eq!(gate.load(), (2, 0));
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire(false, at(2)).await });
        tokio::task::yield_now().await;
        assert_eq!(gate.load(), (2, 1));
        drop(a);
        let _c = waiting.await.unwrap();
        assert_eq!(gate.load(), (2, 0));
    }

    #[tokio::test]
    async fn forced_first_then_earliest_due() {
        let gate = Gate::new(1);
        let held = gate.acquire(false, at(0)).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, forced, due) in [
            ("late", false, 30),
            ("early", false, 10),
            ("forced", true, 50),
        ] {
            let gate = gate.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let permit = gate.acquire(forced, at(due)).await;
                tx.send(name).unwrap();
                drop(permit);
            });
        }
        while gate.load().1 < 3 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let order = [rx.recv().await, rx.recv().await, rx.recv().await];
        assert_eq!(order, [Some("forced"), Some("early"), Some("late")]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_leak_its_permit() {
        let gate = Gate::new(1);
        let held = gate.acquire(false, at(0)).await;
        let gate2 = gate.clone();
        let abandoned = tokio::spawn(async move { gate2.acquire(false, at(1)).await });
        while gate.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);
        assert_eq!(gate.load(), (0, 0));
        let _again = gate.acquire(false, at(2)).await;
        assert_eq!(gate.load(), (1, 0));
    }

    #[tokio::test]
    async fn raising_capacity_wakes_waiters() {
        let gate = Gate::new(1);
        let _held = gate.acquire(false, at(0)).await;
        let gate2 = gate.clone();
        let waiting = tokio::spawn(async move { gate2.acquire(false, at(1)).await });
        while gate.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        gate.set_capacity(2);
        let _second = waiting.await.unwrap();
        assert_eq!(gate.load(), (2, 0));
    }
}
