//! The COPY pipe: rows stream from `COPY ... TO STDOUT` on the remote server
//! into `COPY ... FROM STDIN` on the repository, one CopyData message at a
//! time. Memory stays bounded by the sink's small write buffer whatever the
//! size of the datasource (the reference collector buffers it whole).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::{Error, Transaction};

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
    repository
        .batch_execute(&format!("LOCK TABLE {sink_table} IN ROW EXCLUSIVE MODE"))
        .await
        .map_err(PipeError::Sink)?;
    let source = from_remote(remote_silence, remote.copy_out(source_sql)).await?;
    let sink = repository
        .copy_in::<_, Bytes>(sink_sql)
        .await
        .map_err(PipeError::Sink)?;
    pin_mut!(source);
    pin_mut!(sink);
    let mut bytes = 0u64;
    while let Some(chunk) = from_remote(remote_silence, async { Ok(source.next().await) }).await? {
        let chunk = chunk.map_err(PipeError::Source)?;
        bytes += chunk.len() as u64;
        // `feed`, not `send`: the sink gathers rows into ~4 KiB messages
        // instead of flushing one message per row.
        sink.feed(chunk).await.map_err(PipeError::Sink)?;
    }
    let rows = sink.as_mut().finish().await.map_err(PipeError::Sink)?;
    Ok(Copied { rows, bytes })
}
