//! A small pool of repository connections shared by every snapshot actor.
//!
//! One repository session per server would mean hundreds of idle sessions
//! on the repository (the reference keeps one per server). Snapshots are
//! bounded by the [`Gate`](crate::gate::Gate), so about that many sessions
//! are ever busy at once; the pool never opens more than a few beyond it:
//! when a whole fleet fails at once, error reports queue here instead of
//! opening one session each and exhausting the repository's
//! `max_connections`. A healthy session given back stays open for the
//! next user, whatever it was opened for: closing it would only make the
//! next error report open another one (a session churn the repository
//! pays for, and a closed session still counts there until its backend
//! has exited).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use crate::connect::{connect_repository, statement_deadline, ConnectError};
use crate::copy::Prepared;
use crate::layout::Layout;
use crate::settings::Settings;

#[derive(Clone)]
pub struct RepoPool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// When the staging tables were last vacuumed by this process (see
    /// [`RepoPool::claim_staging_vacuum`]).
    last_vacuum: Mutex<Option<Instant>>,
    /// One permit per session that may be open (idle or checked out).
    open: Arc<Semaphore>,
}

/// Sessions beyond the snapshot limit, for bookkeeping and error reports.
const EXTRA_SESSIONS: usize = 4;

/// How often the staging tables are vacuumed, at most: often enough that
/// they hold only a few snapshots' worth of dead rows (a vacuum of tables
/// that small takes milliseconds), rarely enough to cost the repository
/// next to nothing.
pub const STAGING_VACUUM_INTERVAL: Duration = Duration::from_secs(10);

struct State {
    settings: Arc<Settings>,
    /// At most the bound minus the sessions checked out: a new session is
    /// opened only when none is idle and a permit is free.
    idle: Vec<Idle>,
}

/// An idle session, with the thread its connection task runs on.
struct Idle {
    client: Client,
    layout: Arc<Layout>,
    home: ThreadId,
    notified: watch::Receiver<u64>,
    prepared: Prepared,
}

/// A checked-out repository session; goes back to the pool when dropped,
/// unless its connection is gone.
pub struct PooledClient {
    client: Option<Client>,
    layout: Arc<Layout>,
    /// The thread whose runtime drives the session's connection task.
    home: ThreadId,
    /// The count of notifications the session received.
    notified: watch::Receiver<u64>,
    /// The COPY statements prepared on it: they go with the session.
    prepared: Prepared,
    pool: RepoPool,
    /// Held longer than this, the session is closed rather than reused:
    /// its user was cut off by its deadline, maybe mid-statement.
    suspect_after: Instant,
    _open: OwnedSemaphorePermit,
}

impl RepoPool {
    pub fn new(settings: Arc<Settings>) -> RepoPool {
        let bound = settings.max_concurrent_snapshots + EXTRA_SESSIONS;
        RepoPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    settings,
                    idle: Vec::new(),
                }),
                // The bound is fixed at start (a reload that raises the
                // snapshot limit names it as needing a restart).
                open: Arc::new(Semaphore::new(bound)),
                last_vacuum: Mutex::new(None),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New settings (reload): sessions opened from now on use them; idle
    /// sessions opened with the old ones are closed.
    pub fn set_settings(&self, settings: Arc<Settings>) {
        let mut state = self.lock();
        state.settings = settings;
        state.idle.clear();
    }

    /// How long one statement on a pooled session may take on our side
    /// ([`statement_deadline`]); callers bound each statement by it.
    pub fn statement_deadline(&self) -> Duration {
        statement_deadline(&self.lock().settings)
    }

    /// An idle healthy session, or a new one once the bound allows it.
    /// The wait for a free session is bounded by the statement deadline
    /// (sessions in use are held by work bounded the same way: past it,
    /// the repository is not answering them); opening one is bounded by
    /// [`connect_repository`].
    pub async fn get(&self) -> Result<PooledClient, ConnectError> {
        let wait = self.statement_deadline();
        let open = tokio::time::timeout(wait, self.inner.open.clone().acquire_owned())
            .await
            .map_err(|_| ConnectError::PoolBusy { after: wait })?
            .expect("the pool's semaphore is never closed");
        let suspect_after = Instant::now() + wait;
        let here = std::thread::current().id();
        let settings = {
            let mut state = self.lock();
            state.idle.retain(|idle| !idle.client.is_closed());
            // A session whose connection task runs on this thread first:
            // on another thread, every message of every statement would
            // wake that thread and come back (two cross-thread wake-ups
            // per round trip).
            let pick = state
                .idle
                .iter()
                .rposition(|idle| idle.home == here)
                .or_else(|| state.idle.len().checked_sub(1));
            if let Some(index) = pick {
                let idle = state.idle.swap_remove(index);
                return Ok(PooledClient {
                    client: Some(idle.client),
                    layout: idle.layout,
                    home: idle.home,
                    notified: idle.notified,
                    prepared: idle.prepared,
                    pool: self.clone(),
                    suspect_after,
                    _open: open,
                });
            }
            state.settings.clone()
        };
        // `connect` spawns the connection task on this thread's runtime.
        let session = connect_repository(&settings, "repository").await?;
        Ok(PooledClient {
            client: Some(session.client),
            layout: Arc::new(session.layout),
            home: here,
            notified: session.notified,
            prepared: session.prepared,
            pool: self.clone(),
            suspect_after,
            _open: open,
        })
    }

    /// Whether the caller should vacuum the staging tables now: true at
    /// most once per [`STAGING_VACUUM_INTERVAL`] for the whole process,
    /// whichever snapshot asks first.
    pub fn claim_staging_vacuum(&self) -> bool {
        let mut last = self
            .inner
            .last_vacuum
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < STAGING_VACUUM_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Close every idle session (shutdown).
    pub fn close_idle(&self) {
        self.lock().idle.clear();
    }
}

impl PooledClient {
    /// Where PoWA's objects are on the repository.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Changes with every notification the session receives.
    pub fn notified(&self) -> watch::Receiver<u64> {
        self.notified.clone()
    }

    /// The session and the COPY statements prepared on it.
    pub fn with_prepared(&mut self) -> (&mut Client, &mut Prepared) {
        (
            self.client.as_mut().expect("present until dropped"),
            &mut self.prepared,
        )
    }
}

impl Deref for PooledClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if client.is_closed() || Instant::now() >= self.suspect_after {
                return;
            }
            self.pool.lock().idle.push(Idle {
                client,
                layout: self.layout.clone(),
                home: self.home,
                notified: self.notified.clone(),
                prepared: std::mem::take(&mut self.prepared),
            });
        }
    }
}
