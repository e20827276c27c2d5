//! The COPY pipe: rows stream from `COPY ... TO STDOUT` on the remote server
//! into `COPY ... FROM STDIN` on the repository, one CopyData message at a
//! time. Memory stays bounded by [`BATCH`] whatever the size of the
//! datasource (the reference collector buffers it whole).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::try_join;
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{Error, Transaction};

/// Rows are gathered up to this many bytes before they go to the
/// repository as one CopyData message. The remote sends one message per
/// row, and the sink's own buffer sends one message of about 4 KiB at a
/// time, each a wake-up of the connection task and a write on the socket;
/// at 64 KiB a snapshot of a few MB costs tens of writes instead of
/// hundreds, for 64 KiB of memory while it runs.
pub const BATCH: usize = 64 * 1024;

/// What one pipe moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub rows: u64,
    pub bytes: u64,
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

/// Stream the output of `source_sql` (a `COPY ... TO STDOUT`) on `remote`
/// into `sink_sql` (a `COPY ... FROM STDIN`) on `repository`. On error the
/// unfinished sink is dropped, which aborts the COPY on the repository.
///
/// `sink_table` is locked first with a plain statement: a `COPY ... FROM
/// STDIN` that fails before copying starts (a lock timeout on the table,
/// say) leaves the tokio-postgres session unusable, which would cost the
/// whole snapshot instead of this datasource.
///
/// The remote side must answer within `remote_silence` at every step, so
/// that a frozen server is given up quickly whatever the datasource's size.
pub async fn pipe(
    remote_silence: Duration,
    remote: &Transaction<'_>,
    repository: &Transaction<'_>,
    source_sql: &str,
    sink_table: &str,
    sink_sql: &str,
) -> Result<Copied, PipeError> {
    // The lock and the COPY's preparation are sent at once (pipelined on
    // the session, run in that order): a failed lock is the error seen.
    let lock = format!("LOCK TABLE {sink_table} IN ROW EXCLUSIVE MODE");
    let (_, sink_statement) = try_join(
        repository.batch_execute(&lock),
        repository.prepare(sink_sql),
    )
    .await
    .map_err(PipeError::Sink)?;
    let source = from_remote(remote_silence, remote.copy_out(source_sql)).await?;
    let sink = repository
        .copy_in::<_, Bytes>(&sink_statement)
        .await
        .map_err(PipeError::Sink)?;
    pin_mut!(source);
    pin_mut!(sink);
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
            sink.feed(std::mem::take(&mut batch).freeze())
                .await
                .map_err(PipeError::Sink)?;
        }
    }
    if !batch.is_empty() {
        sink.feed(batch.freeze()).await.map_err(PipeError::Sink)?;
    }
    let rows = sink.as_mut().finish().await.map_err(PipeError::Sink)?;
    Ok(Copied { rows, bytes })
}
