//! Liveness: the supervisor, the listener and the status actor each prove
//! they are alive and not wedged by a heartbeat that their own context
//! ticks; one call ([`Liveness::check`]) answers "is everything alive, and
//! if not, why".
//!
//! A heartbeat is a timer of the actor's context, so it stops when the
//! actor is dead (a panic dropped its context), when its mailbox is held
//! by a `ctx.wait` that never ends, or when a handler blocks its thread.
//! Beats are atomics in a shared registry: checking never waits on an
//! actor or a lock, so `/healthz`, systemd's watchdog and the watchdog
//! thread below answer even when every actor is stuck.
//!
//! The rule (ARCHITECTURE.md, "Faults"): an actor silent for longer than
//! [`UNHEALTHY_AFTER`] makes the daemon unhealthy (`/healthz` 503, no
//! `WATCHDOG=1`); silent for [`WEDGED_AFTER`], it cannot be trusted to
//! restart itself: the watchdog thread logs the reason and ends the process
//! with a non-zero code, and systemd restarts it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

/// How often each actor beats.
pub const BEAT: Duration = Duration::from_secs(1);
/// A heartbeat older than this makes [`Liveness::check`] fail: `/healthz`
/// answers 503 and systemd's watchdog is no longer fed.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A heartbeat older than this (twice [`UNHEALTHY_AFTER`]) means wedged or
/// dead for good: with the watchdog thread checking every [`CHECK_EVERY`],
/// the process ends within 22 s of the last beat.
pub const WEDGED_AFTER: Duration = Duration::from_secs(20);
/// How often the watchdog thread checks.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The actors that must stay alive for the daemon to be of any use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Supervisor,
    Listener,
    Status,
}

impl Component {
    pub const ALL: [Component; 3] = [
        Component::Supervisor,
        Component::Listener,
        Component::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Supervisor => "supervisor",
            Component::Listener => "listener",
            Component::Status => "status actor",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A shared, cloneable registry of heartbeats.
#[derive(Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    /// Milliseconds since `origin` of each component's last beat.
    beats: [AtomicU64; 3],
    bound: Duration,
    /// Set at a graceful stop: actors stop beating on purpose.
    stopping: AtomicBool,
}

/// One component that stopped beating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wedged {
    pub component: Component,
    pub silent_for: Duration,
}

impl fmt::Display for Wedged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} has not run for {:.1}s (wedged or dead)",
            self.component.as_str(),
            self.silent_for.as_secs_f64()
        )
    }
}

/// Every component that stopped beating, as one line.
pub fn describe(wedged: &[Wedged]) -> String {
    wedged
        .iter()
        .map(Wedged::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::with_bound(UNHEALTHY_AFTER)
    }
}

impl Liveness {
    /// A registry where a heartbeat older than `bound` is unhealthy, and
    /// older than twice `bound` wedged. Every component counts as having
    /// beaten at creation.
    pub fn with_bound(bound: Duration) -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                beats: Default::default(),
                bound,
                stopping: AtomicBool::new(false),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.origin.elapsed().as_millis() as u64
    }

    pub fn beat(&self, component: Component) {
        self.inner.beats[component.index()].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Beat now and then every [`BEAT`] from the actor's own context; call
    /// it from `started()` (a restarted actor's context starts empty).
    pub fn keep_beating<A>(&self, component: Component, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        self.beat(component);
        let liveness = self.clone();
        ctx.run_interval(BEAT, move |_, _| liveness.beat(component));
    }

    /// How long since each component last beat.
    pub fn silences(&self) -> [(Component, Duration); 3] {
        let now = self.now_ms();
        Component::ALL.map(|c| {
            let last = self.inner.beats[c.index()].load(Ordering::Relaxed);
            (c, Duration::from_millis(now.saturating_sub(last)))
        })
    }

    /// Is everything alive? The components that are not, otherwise. During
    /// a graceful stop everything counts as alive.
    pub fn check(&self) -> Result<(), Vec<Wedged>> {
        self.check_within(self.inner.bound)
    }

    fn check_within(&self, bound: Duration) -> Result<(), Vec<Wedged>> {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wedged: Vec<Wedged> = self
            .silences()
            .into_iter()
            .filter(|(_, silent)| *silent > bound)
            .map(|(component, silent_for)| Wedged {
                component,
                silent_for,
            })
            .collect();
        if wedged.is_empty() {
            Ok(())
        } else {
            Err(wedged)
        }
    }

    /// A graceful stop began: actors stop beating on purpose.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Check every `period` on a thread of its own (it must work while the
    /// actors' threads are blocked) and call `on_wedged` with the reason,
    /// once, when something has not beaten for twice the bound; `on_wedged`
    /// is expected to end the process.
    pub fn watch(
        &self,
        period: Duration,
        on_wedged: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let liveness = self.clone();
        std::thread::Builder::new()
            .name("liveness".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                if let Err(wedged) = liveness.check_within(liveness.inner.bound * 2) {
                    on_wedged(describe(&wedged));
                    return;
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Beating(Liveness);

    impl Actor for Beating {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            self.0.keep_beating(Component::Listener, ctx);
        }
    }

    /// Blocks the actor's thread, as a wedged handler would.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Block(Duration);

    impl Handler<Block> for Beating {
        type Result = ();

        fn handle(&mut self, Block(d): Block, _: &mut Context<Self>) {
            std::thread::sleep(d);
        }
    }

    #[test]
    fn a_silent_component_is_named_and_a_stop_silences_the_check() {
        let liveness = Liveness::with_bound(Duration::from_millis(50));
        assert!(liveness.check().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        liveness.beat(Component::Supervisor);
        liveness.beat(Component::Status);
        let wedged = liveness.check().unwrap_err();
        assert_eq!(wedged.len(), 1);
        assert_eq!(wedged[0].component, Component::Listener);
        assert!(describe(&wedged).starts_with("the listener has not run for"));
        liveness.set_stopping();
        assert!(liveness.check().is_ok());
    }

    #[actix_rt::test]
    async fn an_actor_beats_until_its_thread_is_blocked() {
        let liveness = Liveness::with_bound(Duration::from_millis(1500));
        let arbiter = Arbiter::new();
        let l = liveness.clone();
        let addr = Beating::start_in_arbiter(&arbiter.handle(), move |_| Beating(l));
        for c in [Component::Supervisor, Component::Status] {
            liveness.beat(c);
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for c in [Component::Supervisor, Component::Status] {
            liveness.beat(c);
        }
        assert!(liveness.check().is_ok(), "a beating actor is alive");
        addr.do_send(Block(Duration::from_secs(4)));
        tokio::time::sleep(Duration::from_millis(3000)).await;
        for c in [Component::Supervisor, Component::Status] {
            liveness.beat(c);
        }
        let wedged = liveness.check().unwrap_err();
        assert_eq!(wedged[0].component, Component::Listener);
        arbiter.stop();
    }

    #[test]
    fn the_watchdog_reports_once() {
        let liveness = Liveness::with_bound(Duration::from_millis(30));
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = liveness
            .watch(Duration::from_millis(20), move |reason| {
                tx.send(reason).unwrap()
            })
            .unwrap();
        let reason = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert!(reason.contains("supervisor"), "{reason}");
        assert!(reason.contains("status actor"), "{reason}");
        handle.join().unwrap();
    }
}
