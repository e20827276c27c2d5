//! A small pool of repository connections shared by every snapshot actor.
//!
//! One repository session per server would mean hundreds of idle sessions
//! on the repository (the reference keeps one per server). Snapshots are
//! bounded by the [`Gate`](crate::gate::Gate), so about that many sessions
//! are ever busy at once; the pool keeps at most `max_idle` of them open
//! between snapshots and opens more only for short bookkeeping bursts.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use crate::connect::{connect_repository, ConnectError};
use crate::settings::Settings;

#[derive(Clone)]
pub struct RepoPool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

struct State {
    settings: Arc<Settings>,
    idle: Vec<Client>,
    max_idle: usize,
}

/// A checked-out repository session; goes back to the pool when dropped,
/// unless its connection is gone.
pub struct PooledClient {
    client: Option<Client>,
    pool: RepoPool,
}

impl RepoPool {
    pub fn new(settings: Arc<Settings>) -> RepoPool {
        let max_idle = settings.max_concurrent_snapshots;
        RepoPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    settings,
                    idle: Vec::new(),
                    max_idle,
                }),
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
        state.max_idle = settings.max_concurrent_snapshots;
        state.settings = settings;
        state.idle.clear();
    }

    /// An idle healthy session, or a new one.
    pub async fn get(&self) -> Result<PooledClient, ConnectError> {
        let settings = {
            let mut state = self.lock();
            while let Some(client) = state.idle.pop() {
                if !client.is_closed() {
                    return Ok(PooledClient {
                        client: Some(client),
                        pool: self.clone(),
                    });
                }
            }
            state.settings.clone()
        };
        let client = connect_repository(&settings, "repository").await?;
        Ok(PooledClient {
            client: Some(client),
            pool: self.clone(),
        })
    }

    /// Sessions currently idle in the pool.
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Close every idle session (shutdown).
    pub fn close_idle(&self) {
        self.lock().idle.clear();
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
            if client.is_closed() {
                return;
            }
            let mut state = self.pool.lock();
            if state.idle.len() < state.max_idle {
                state.idle.push(client);
            }
        }
    }
}
