//! Restart in place after a panic in a handler.
//!
//! actix's own `Supervisor` restarts an actor that stopped itself; a panic
//! in a handler (or in a future spawned on its context) unwinds out of the
//! context's poll instead, the runtime drops the task, and the actor is gone
//! while its address still looks valid. [`start`] runs an actor under a
//! future that does both: it restarts after a stop like actix's, and it
//! catches a panic out of the context's poll, logs it, and restarts the
//! actor in place: the futures spawned on its context are dropped, the
//! mailbox (and so every address) is kept, `Supervised::restarting` rebuilds
//! what the actor owns and `started` runs again, as at start-up.
//!
//! An actor kind whose restart cannot fix the cause would panic in a loop:
//! with [`Escalation::EndProcess`] the guard gives up after
//! [`MAX_PANICS`] panics within [`PANIC_WINDOW`] and asks the daemon, through
//! [`Fatal`], to end the process with a non-zero exit and the reason logged.
//! Snapshot actors never do: their restarts wait a growing backoff, and one
//! server's bad data must not take the others down.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::{Duration, Instant};

use actix::dev::{channel, ContextFut};
use actix::prelude::*;
use slog::{error, Logger};

/// Panics of one actor within [`PANIC_WINDOW`] that end the process, for
/// the kinds that escalate.
pub const MAX_PANICS: usize = 5;
/// See [`MAX_PANICS`].
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// Asks the daemon to end the process; the reason is logged by it.
#[derive(Clone)]
pub struct Fatal(tokio::sync::mpsc::UnboundedSender<String>);

impl Fatal {
    /// The handle, and what the daemon waits on.
    pub fn channel() -> (Fatal, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Fatal(tx), rx)
    }

    pub fn end_process(&self, reason: String) {
        let _ = self.0.send(reason);
    }
}

/// What repeated panics of one actor lead to.
#[derive(Clone)]
pub enum Escalation {
    /// Restart in place every time (the actor paces its own restarts).
    Never,
    /// End the process after [`MAX_PANICS`] within [`PANIC_WINDOW`].
    EndProcess(Fatal),
}

/// Who is guarded, for the log, and what repeated panics lead to.
pub struct Guard {
    pub kind: &'static str,
    pub logger: Logger,
    pub escalation: Escalation,
}

thread_local! {
    /// The message of the panic being recovered from, for the actor's
    /// `restarting` (see [`take_panic`]).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// In `Supervised::restarting`: the panic that caused this restart, if any
/// (`None`: the actor stopped itself).
pub fn take_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Start `A` under the guard on the current arbiter.
pub fn start<A, F>(guard: Guard, make: F) -> Addr<A>
where
    A: Supervised + Actor<Context = Context<A>>,
    F: FnOnce(&mut Context<A>) -> A + 'static,
{
    let mut ctx = Context::new();
    let act = make(&mut ctx);
    let addr = ctx.address();
    actix_rt::spawn(Guarded::new(ctx.into_future(act), guard));
    addr
}

/// Start `A` under the guard on another arbiter (thread).
pub fn start_in_arbiter<A, F>(arbiter: &ArbiterHandle, guard: Guard, make: F) -> Addr<A>
where
    A: Supervised + Actor<Context = Context<A>>,
    F: FnOnce(&mut Context<A>) -> A + Send + 'static,
{
    let (tx, rx) = channel::channel(MAILBOX);
    arbiter.spawn_fn(move || {
        let mut ctx = Context::with_receiver(rx);
        let act = make(&mut ctx);
        actix_rt::spawn(Guarded::new(ctx.into_future(act), guard));
    });
    Addr::new(tx)
}

/// actix's default mailbox capacity.
const MAILBOX: usize = 16;

struct Guarded<A: Actor<Context = Context<A>>> {
    fut: ContextFut<A, Context<A>>,
    guard: Guard,
    /// When the recent panics happened, oldest first.
    panics: VecDeque<Instant>,
}

impl<A> Future for Guarded<A>
where
    A: Supervised + Actor<Context = Context<A>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx)));
            match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                // Stopped itself: restarted while anyone holds its address.
                Ok(Poll::Ready(())) => {}
                Err(payload) => {
                    let reason = panic_message(&*payload);
                    if let Some(fatal) = this.note_panic(&reason) {
                        fatal.end_process(format!(
                            "the {} panicked {MAX_PANICS} times within {}s, \
                             a restart does not fix it; last panic: {reason}",
                            this.guard.kind,
                            PANIC_WINDOW.as_secs()
                        ));
                        return Poll::Ready(());
                    }
                    error!(this.guard.logger, "panic in a handler, restarting in place";
                        "actor" => this.guard.kind, "panic" => &reason);
                    LAST_PANIC.with(|p| *p.borrow_mut() = Some(reason));
                }
            }
            let restarted = this.fut.restart();
            LAST_PANIC.with(|p| p.borrow_mut().take());
            if !restarted {
                return Poll::Ready(());
            }
        }
    }
}

impl<A: Actor<Context = Context<A>>> Guarded<A> {
    fn new(fut: ContextFut<A, Context<A>>, guard: Guard) -> Self {
        Guarded {
            fut,
            guard,
            panics: VecDeque::new(),
        }
    }

    /// Counts a panic; the handle to end the process with when too many.
    fn note_panic(&mut self, reason: &str) -> Option<Fatal> {
        let Escalation::EndProcess(fatal) = &self.guard.escalation else {
            return None;
        };
        let now = Instant::now();
        while self
            .panics
            .front()
            .is_some_and(|t| now.duration_since(*t) > PANIC_WINDOW)
        {
            self.panics.pop_front();
        }
        self.panics.push_back(now);
        if self.panics.len() < MAX_PANICS {
            return None;
        }
        error!(self.guard.logger, "panic in a handler, too many: ending the process";
            "actor" => self.guard.kind, "panic" => reason, "panics" => self.panics.len());
        Some(fatal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on `Boom`, counts its restarts and what caused them.
    #[derive(Default)]
    struct Fragile {
        restarts: u32,
        causes: Vec<Option<String>>,
        started: u32,
    }

    impl Actor for Fragile {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            self.started += 1;
        }
    }

    impl Supervised for Fragile {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.restarts += 1;
            self.causes.push(take_panic());
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    #[derive(Message)]
    #[rtype(result = "(u32, u32, Vec<Option<String>>)")]
    struct Counts;

    impl Handler<Boom> for Fragile {
        type Result = ();
        fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
            panic!("boom");
        }
    }

    impl Handler<Stop> for Fragile {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    impl Handler<Counts> for Fragile {
        type Result = MessageResult<Counts>;
        fn handle(&mut self, _: Counts, _: &mut Context<Self>) -> Self::Result {
            MessageResult((self.restarts, self.started, self.causes.clone()))
        }
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[actix_rt::test]
    async fn a_panic_restarts_in_place_and_keeps_the_address_and_the_state() {
        let guard = Guard {
            kind: "test actor",
            logger: logger(),
            escalation: Escalation::Never,
        };
        let addr = start(guard, |_| Fragile::default());
        assert!(
            addr.send(Boom).await.is_err(),
            "the panicking request fails"
        );
        addr.send(Stop).await.unwrap();
        let (restarts, started, causes) = addr.send(Counts).await.unwrap();
        assert_eq!(restarts, 2);
        assert_eq!(started, 3, "started again after each restart");
        assert_eq!(causes, vec![Some("boom".to_string()), None]);
    }

    #[actix_rt::test]
    async fn too_many_panics_end_the_process_with_the_reason() {
        let (fatal, mut reasons) = Fatal::channel();
        let guard = Guard {
            kind: "test actor",
            logger: logger(),
            escalation: Escalation::EndProcess(fatal),
        };
        let addr = start(guard, |_| Fragile::default());
        for _ in 1..MAX_PANICS {
            assert!(addr.send(Boom).await.is_err());
        }
        assert!(reasons.try_recv().is_err(), "restarted in place so far");
        let (restarts, _, _) = addr.send(Counts).await.unwrap();
        assert_eq!(restarts as usize, MAX_PANICS - 1);
        assert!(addr.send(Boom).await.is_err());
        let reason = reasons.recv().await.unwrap();
        assert!(
            reason.contains("the test actor panicked 5 times within 60s")
                && reason.contains("last panic: boom"),
            "{reason}"
        );
        assert!(addr.send(Counts).await.is_err(), "not restarted again");
    }
}
