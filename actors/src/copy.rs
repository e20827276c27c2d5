//! The COPY pipe: rows stream from `COPY ... TO STDOUT` on the remote server
//! into `COPY ... FROM STDIN` on the repository, one CopyData message at a
//! time. Memory stays bounded by [`BATCH`] whatever the size of the
//! datasource (the reference collector buffers it whole).
//!
//! Each round trip costs the collector a wake-up and a send on top of the
//! work itself, and a snapshot copies each datasource again and again:
//! COPY statements are prepared once per session ([`Prepared`]); how a
//! repository savepoint ends goes out with the next statement
//! ([`Staging`]), whose answer comes back with the copy's own
//! ([`Landing`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{maybe_done, BoxFuture, MaybeDone};
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{CopyInSink, CopyOutStream, Error, Statement, Transaction};

/// Rows are gathered up to this many bytes before they go to the
/// repository as one CopyData message. The remote sends one message per
/// row, and the sink's own buffer sends one message of about 4 KiB at a
/// time, each a wake-up of the connection task and a write on the socket;
/// at 64 KiB a snapshot of a few MB costs tens of writes instead of
/// hundreds, for 64 KiB of memory while it runs.
pub const BATCH: usize = 64 * 1024;

/// The COPY statements one session has prepared, by their text. A COPY's
/// text is the same at every snapshot of a server, and PostgreSQL resolves
/// the names in a prepared COPY when it runs, not when it is prepared, so
/// a statement stays right across PoWA upgrades.
#[derive(Debug, Default)]
pub struct Prepared {
    by_text: HashMap<String, Statement>,
}

impl Prepared {
    /// A session sees a few dozen texts at most (its datasources and staging
    /// tables); past this many, something keeps changing them (PoWA's
    /// functions edited by hand, say): start again rather than grow.
    const MAX: usize = 128;

    /// The prepared `sql`, preparing it on `tx`'s session the first time.
    pub async fn statement(&mut self, tx: &Transaction<'_>, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.by_text.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql).await?;
        if self.by_text.len() >= Self::MAX {
            self.by_text.clear();
        }
        self.by_text.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// The repository side of a snapshot's copies: each datasource goes into
/// its staging table under the savepoint [`Staging::SAVEPOINT`]; how that
/// savepoint ends (released, or rolled back after a failure) is sent ahead
/// of the next statement instead of on a round trip of its own, and the
/// last copy's answer is read with that statement's ([`Landing`]).
pub struct Staging<'p> {
    pub prepared: &'p mut Prepared,
    ending: Option<&'static str>,
    /// The last copy, if its answer is not read yet.
    pub landing: Option<Landing>,
    /// The staging tables copies landed in, in the order they did.
    pub staged: Vec<String>,
}

/// A started `COPY ... FROM STDIN` on the repository, movable.
pub type Sink = Pin<Box<CopyInSink<Bytes>>>;

/// The end of a copy: the rows it wrote.
type Finish = BoxFuture<'static, Result<u64, Error>>;

/// A copy whose rows and end (`CopyDone`) are sent, its answer not read
/// yet: it is read with the answer of the statement sent after it.
pub struct Landing {
    answer: Pin<Box<MaybeDone<Finish>>>,
    /// The datasource, for the report.
    pub name: String,
    pub table: String,
    pub bytes: u64,
    /// Errors for the report once the copy has landed (statements the
    /// remote role could not see).
    pub notes: Vec<String>,
}

impl Landing {
    /// Send `sink`'s end now; [`Landing::rows`] reads its answer.
    pub async fn start(mut sink: Sink, name: String, table: String, bytes: u64) -> Landing {
        let finish: Finish = Box::pin(async move { sink.as_mut().finish().await });
        let mut answer = Box::pin(maybe_done(finish));
        // One poll sends what can go now; tokio-postgres sends nothing of
        // a later request before this copy's end, whoever polls first.
        let _ = futures_util::poll!(answer.as_mut());
        Landing {
            answer,
            name,
            table,
            bytes,
            notes: Vec::new(),
        }
    }

    /// The rows the copy wrote, or why it failed.
    pub async fn rows(&mut self) -> Result<u64, Error> {
        self.answer.as_mut().await;
        self.answer
            .as_mut()
            .take_output()
            .expect("the answer is read once")
    }
}

impl<'p> Staging<'p> {
    pub const SAVEPOINT: &'static str = "powa_fleet_data";

    pub fn new(prepared: &'p mut Prepared) -> Staging<'p> {
        Staging {
            prepared,
            ending: None,
            landing: None,
            staged: Vec::new(),
        }
    }

    /// SQL to put in front of the next statement sent on the transaction
    /// (empty when nothing is pending); every statement after the copies
    /// must start with it, once the landing (if any) is settled.
    pub fn take_ending(&mut self) -> &'static str {
        self.ending.take().unwrap_or("")
    }

    /// The last copy landed: keep its rows.
    pub fn landed(&mut self) {
        self.ending = Some(Self::RELEASE);
    }

    /// The last copy failed: drop whatever it wrote.
    pub fn failed(&mut self) {
        self.ending = Some(Self::ROLLBACK);
    }

    /// Rows landed in `table` (named once).
    pub fn stage(&mut self, table: &str) {
        if !self.staged.iter().any(|t| t == table) {
            self.staged.push(table.to_owned());
        }
    }

    pub const RELEASE: &'static str = "RELEASE SAVEPOINT powa_fleet_data; ";
    pub const ROLLBACK: &'static str =
        "ROLLBACK TO SAVEPOINT powa_fleet_data; RELEASE SAVEPOINT powa_fleet_data; ";

    /// What opens the next copy into `table`: the last one's ending, its
    /// own savepoint, and the table's lock. The lock comes first, alone:
    /// a `COPY ... FROM STDIN` that fails before copying starts (a lock
    /// timeout, say) leaves the tokio-postgres session unusable, which
    /// would cost the whole snapshot instead of this datasource.
    pub fn opening(&mut self, table: &str) -> String {
        format!(
            "{}SAVEPOINT {}; LOCK TABLE {table} IN ROW EXCLUSIVE MODE",
            self.take_ending(),
            Self::SAVEPOINT
        )
    }
}

/// Which side of the pipe failed.
#[derive(Debug)]
pub enum PipeError {
    /// Reading from the remote server.
    Source(Error),
    /// Writing into the repository.
    Sink(Error),
    /// The remote server sent nothing for this long (frozen, or packets
    /// dropped): its session is left in an unknown state.
    Silent(Duration),
}

/// `fut`, unless the remote server stays silent for `limit`.
async fn from_remote<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, PipeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(PipeError::Source),
        Err(_) => Err(PipeError::Silent(limit)),
    }
}

/// Stream `source` (a started `COPY ... TO STDOUT` on the remote) into
/// `sink` (a started `COPY ... FROM STDIN` on the repository), and send the
/// end of the copy: the sink comes back to read its answer (see
/// [`Landing`]), with the bytes moved. On error the unfinished sink is
/// dropped, which aborts the COPY on the repository.
///
/// The remote side must answer within `remote_silence` at every step, so
/// that a frozen server is given up quickly whatever the datasource's size.
pub async fn pipe(
    remote_silence: Duration,
    source: CopyOutStream,
    sink: CopyInSink<Bytes>,
) -> Result<(Sink, u64), PipeError> {
    pin_mut!(source);
    let mut sink = Box::pin(sink);
    let mut bytes = 0u64;
    let mut batch = BytesMut::new();
    while let Some(chunk) = from_remote(remote_silence, async { Ok(source.next().await) }).await? {
        let chunk = chunk.map_err(PipeError::Source)?;
        bytes += chunk.len() as u64;
        if batch.capacity() == 0 {
            batch.reserve(BATCH);
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH - 1024 {
            // `feed`, not `send`: no flush of the socket per message.
            sink.as_mut()
                .feed(std::mem::take(&mut batch).freeze())
                .await
                .map_err(PipeError::Sink)?;
        }
    }
    if !batch.is_empty() {
        sink.as_mut()
            .feed(batch.freeze())
            .await
            .map_err(PipeError::Sink)?;
    }
    Ok((sink, bytes))
}
