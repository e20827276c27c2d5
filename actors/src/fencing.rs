//! Fencing: the proof, inside a snapshot's own repository transaction,
//! that this member may write it.
//!
//! Holding a server's lock (see [`crate::membership`]) is not enough: a
//! member that froze, or lost its membership session mid-snapshot, may
//! still believe it holds it. So the snapshot transaction itself checks,
//! at its start and again just before it commits, that the membership
//! session (by its backend pid) still holds the server's lock in
//! `pg_locks`; and at its start it locks the server's
//! `powa_snapshot_metas` row (skipping it when another transaction holds
//! it: a snapshot of that server is in flight elsewhere) and refuses to
//! run within `min_gap` of the last recorded snapshot. The row lock makes
//! two members' checks of one server happen one after the other, so two
//! snapshots of a server are never closer than `min_gap`.
//!
//! The fleet-wide limit on snapshots in flight is enforced here too: a
//! snapshot first takes one of `slots` advisory locks with its session,
//! polling when all are taken (forced snapshots, then those that waited
//! longest, poll more often, so they tend to get the next free slot
//! first), then opens its transaction and moves the lock to it, so that
//! its commit or rollback frees the slot whatever happens to the member,
//! and the snapshot's time (its transaction's start) lies inside its slot.
//! The same statement queues a NOTIFY, delivered when the transaction
//! commits, that is when the slot is free again: the waiting sessions
//! listen for it and ask at once, so that a slot freed by one member does
//! not stay idle until another member's next poll. The poll remains for
//! the slots freed by a rollback, which notifies nobody.

use std::time::Duration;

use futures_util::future::try_join;
use thiserror::Error;
use tokio::sync::watch;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

use crate::layout::Layout;
use crate::membership::{SERVER_SPACE, SLOT_SPACE};
use crate::server::SrvId;

/// What a snapshot must prove before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The backend pid of this member's membership session.
    pub member_pid: i32,
    /// No snapshot closer than this to the last recorded one.
    pub min_gap: Duration,
    /// Snapshots in flight at once across all members.
    pub slots: usize,
    /// A forced snapshot: asks for a slot more often.
    pub forced: bool,
    /// The repository ends the transaction when it stays idle this long: a
    /// member frozen mid-snapshot must not keep the server's metas row
    /// (and a slot) locked until it thaws. Longer than any wait for the
    /// remote server between two statements.
    pub stall_limit: Duration,
}

impl Fence {
    /// How long to wait before asking again for a slot, after `attempts`
    /// refused ones: the longer a snapshot has waited, the more often it
    /// asks, so across members the oldest waiters tend to get the next
    /// free slot (within a member the gate already serves them first).
    pub fn slot_poll(&self, attempts: u32) -> Duration {
        if self.forced {
            return Duration::from_millis(10);
        }
        let base = 100u64.saturating_sub(5 * u64::from(attempts)).max(10);
        // Spread the members' attempts.
        Duration::from_millis(base + rand::random::<u64>() % (base / 4 + 1))
    }
}

/// Wait for a free fleet-wide slot, taken by the session (outside any
/// transaction); its number. Session-level slots left by an earlier use of
/// this pooled session (a snapshot cut off between the two steps) are
/// released first: a pooled session holds no other advisory lock.
pub async fn wait_for_slot(
    client: &tokio_postgres::Client,
    fence: &Fence,
    mut freed: Option<watch::Receiver<u64>>,
) -> Result<i32, tokio_postgres::Error> {
    let slots = i32::try_from(fence.slots.max(1)).unwrap_or(i32::MAX);
    // The LIMIT stops at the first lock taken: one slot per snapshot.
    // Typed, so that it needs no prepared statement (one round trip).
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&SLOT_SPACE, Type::INT4), (&slots, Type::INT4)];
    let try_slot = || {
        client.query_typed_opt(
            "SELECT k FROM pg_catalog.generate_series(0, $2 - 1) k \
             WHERE pg_catalog.pg_try_advisory_lock($1, k) LIMIT 1",
            &params,
        )
    };
    // The unlock and the first attempt are sent together (pipelined on
    // the session, run in that order).
    let (_, mut row) = try_join(
        client.batch_execute("SELECT pg_catalog.pg_advisory_unlock_all()"),
        try_slot(),
    )
    .await?;
    if row.is_none() {
        if let Some(freed) = &mut freed {
            // Every slot taken: listen for their release (the session
            // stops listening after its snapshot, see `take_snapshot`),
            // and ask again in the same round trip, in case one was freed
            // before the LISTEN.
            freed.borrow_and_update();
            (_, row) = try_join(client.batch_execute(LISTEN), try_slot()).await?;
        }
    }
    let mut attempts = 0;
    loop {
        if let Some(row) = row {
            return Ok(row.get(0));
        }
        let poll = fence.slot_poll(attempts);
        match &mut freed {
            // A closed connection ends the wait through the next attempt.
            Some(freed) => {
                let _ = tokio::time::timeout(poll, freed.changed()).await;
                freed.borrow_and_update();
            }
            None => tokio::time::sleep(poll).await,
        }
        attempts += 1;
        row = try_slot().await?;
    }
}

/// The channel of slot releases, and what a session waiting for a slot
/// and done with it sends.
const SLOT_FREED: &str = "powa_fleet_slot_freed";
const LISTEN: &str = "LISTEN powa_fleet_slot_freed";
pub const UNLISTEN: &str = "UNLISTEN powa_fleet_slot_freed";

/// Move the slot from the session to the transaction: from now on its
/// commit or rollback frees it, whatever happens to the member.
pub async fn hand_slot_to(tx: &impl GenericClient, slot: i32) -> Result<(), tokio_postgres::Error> {
    tx.query_typed(
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2), pg_catalog.pg_advisory_unlock($1, $2), \
         pg_catalog.pg_notify($3, '')",
        &[
            (&SLOT_SPACE, Type::INT4),
            (&slot, Type::INT4),
            (&SLOT_FREED, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Why a snapshot was not written (nothing of it is committed).
#[derive(Debug, Clone, Error, PartialEq)]
pub enum Fenced {
    #[error("this member no longer holds the server (another member collects it)")]
    NotOwner,
    #[error("another snapshot of this server is in flight")]
    InFlight,
    #[error("the last snapshot is only {0:.1}s old")]
    TooSoon(f64),
}

/// Does the session `member_pid` hold the lock of `srvid`, as seen by this
/// transaction?
const HOLDS: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
       AND l.classid = $2::int8::oid AND l.objid = $3::int8::oid AND l.pid = $4 \
       AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                         WHERE datname = pg_catalog.current_database()))";

/// At the start of the snapshot transaction: lock the server's metas row,
/// then check the gap and the ownership.
pub async fn enter(
    tx: &impl GenericClient,
    layout: &Layout,
    srvid: SrvId,
    fence: &Fence,
) -> Result<Option<Fenced>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT CASE WHEN m.snapts > now() - $5::float8 * interval '1 second' \
                THEN EXTRACT(EPOCH FROM now() - m.snapts)::float8 END, {HOLDS} \
         FROM {} m WHERE m.srvid = $1 FOR UPDATE OF m SKIP LOCKED",
        layout.qualify("powa_snapshot_metas")
    );
    let set_timeout = format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        fence.stall_limit.as_millis().max(1)
    );
    // Both sent at once, run in that order.
    let (_, row) = try_join(
        tx.batch_execute(&set_timeout),
        tx.query_typed_opt(
            &sql,
            &[
                (&srvid, Type::INT4),
                (&i64::from(SERVER_SPACE), Type::INT8),
                (&i64::from(srvid), Type::INT8),
                (&fence.member_pid, Type::INT4),
                (&fence.min_gap.as_secs_f64(), Type::FLOAT8),
            ],
        ),
    )
    .await?;
    let Some(row) = row else {
        // Locked by another transaction (a row that does not exist at all
        // is powa_take_snapshot's error to report, and was checked at
        // connection).
        return Ok(Some(Fenced::InFlight));
    };
    let too_soon: Option<f64> = row.get(0);
    let holds: bool = row.get(1);
    Ok(if !holds {
        Some(Fenced::NotOwner)
    } else {
        too_soon.map(Fenced::TooSoon)
    })
}

/// Just before the commit: does the member still hold the server?
pub async fn still_holds(
    tx: &impl GenericClient,
    srvid: SrvId,
    fence: &Fence,
) -> Result<bool, tokio_postgres::Error> {
    // $1 keeps the parameter numbering of HOLDS.
    let sql = format!("SELECT $1::int4 IS NOT NULL AND {HOLDS}");
    let row = tx
        .query_typed_one(
            &sql,
            &[
                (&srvid, Type::INT4),
                (&i64::from(SERVER_SPACE), Type::INT8),
                (&i64::from(srvid), Type::INT8),
                (&fence.member_pid, Type::INT4),
            ],
        )
        .await?;
    Ok(row.get(0))
}
