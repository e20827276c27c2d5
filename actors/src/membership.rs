//! Several collectors, one fleet: what a member is and the SQL of
//! membership, with PostgreSQL as the only coordinator and no table of our
//! own.
//!
//! Every member keeps one dedicated repository session, its *membership
//! session*, which holds session-level advisory locks (two-key form, so
//! `pg_locks` shows them with `objsubid = 2`, the key space in `classid`):
//!
//! * `(MEMBER, its own backend pid)`: "I am a member". The live members are
//!   the holders of that key space, joined with `pg_stat_activity` for the
//!   name carried in `application_name`.
//! * `(SERVER, srvid)`: "I collect this server". A snapshot commits only if
//!   its member's session still holds it (see [`crate::fencing`]).
//! * `(LEADER, 0)`: the one member that answers fleet-wide requests.
//!
//! PostgreSQL frees all of them when the session ends: a dead process at
//! once, a frozen process or a lost network through the session's own
//! `idle_session_timeout` (PostgreSQL 14+) and server-side TCP keepalives
//! and `tcp_user_timeout`, set by [`prepare_session`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use crate::assignment::Member;
use crate::server::SrvId;
use crate::text::truncate;

/// Advisory-lock key spaces (the first key of the two-key form): "powa"
/// in ASCII plus a kind, far from anything PoWA itself locks.
pub const MEMBER_SPACE: i32 = 0x706f_7701;
pub const SERVER_SPACE: i32 = 0x706f_7702;
pub const LEADER_SPACE: i32 = 0x706f_7703;
/// Fleet-wide snapshot slots, taken per transaction (see [`crate::fencing`]).
pub const SLOT_SPACE: i32 = 0x706f_7704;

/// The role a membership session carries in `application_name`, after
/// `powa-fleet: `.
pub const MEMBER_ROLE: &str = "member ";

/// How often a member reads the membership and proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// After this long without a statement the repository ends the membership
/// session, and with it the member's locks (PostgreSQL 14+).
pub const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Server-side TCP settings of the membership session: a peer that stops
/// acknowledging is dropped after about `idle + interval × count` seconds,
/// or `TCP_USER_TIMEOUT` when data is unacknowledged.
const TCP_KEEPALIVES: (u32, u32, u32) = (2, 1, 3);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(6);

/// The default member name: host name and process id.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// The name as it can be read back from `application_name` (63 bytes).
pub fn visible_name(name: &str) -> String {
    let full = crate::connect::application_name(&format!("{MEMBER_ROLE}{name}"), None);
    member_name(&full).unwrap_or_default().to_string()
}

/// The member name in an `application_name`, if it is a membership session's.
pub fn member_name(application_name: &str) -> Option<&str> {
    application_name
        .strip_prefix("powa-fleet: ")?
        .strip_prefix(MEMBER_ROLE)
}

/// What the membership session learnt when it was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionFacts {
    pub pid: i32,
    /// PostgreSQL 14+: a frozen member is dropped by the repository itself.
    pub idle_session_timeout: bool,
}

/// Set up a fresh membership session and take the member lock.
pub async fn prepare_session(client: &Client) -> Result<SessionFacts, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_backend_pid(), \
             pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await?;
    let pid: i32 = row.get(0);
    let version: i32 = row.get(1);
    let (idle, interval, count) = TCP_KEEPALIVES;
    // Short statements only: anything slower means the repository is in
    // trouble, and the heartbeat must not hang behind it.
    let mut sql = format!(
        "SET statement_timeout = 5000; SET lock_timeout = 2000; \
         SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; \
         SET tcp_keepalives_count = {count}; SET tcp_user_timeout = {};",
        TCP_USER_TIMEOUT.as_millis()
    );
    let idle_session_timeout = version >= 140000;
    if idle_session_timeout {
        sql.push_str(&format!(
            "SET idle_session_timeout = {};",
            IDLE_SESSION_TIMEOUT.as_millis()
        ));
    }
    client.batch_execute(&sql).await?;
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_lock($1, pg_catalog.pg_backend_pid())",
            &[&MEMBER_SPACE],
        )
        .await?;
    Ok(SessionFacts {
        pid,
        idle_session_timeout,
    })
}

/// The holders of one key space in this database: (pid, second key,
/// application_name). Only what PostgreSQL shows every role.
const HOLDERS: &str = "SELECT l.pid, l.objid::int8, coalesce(a.application_name, '') \
     FROM pg_catalog.pg_locks l \
     LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
       AND l.classid = $1::int8::oid \
       AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                         WHERE datname = pg_catalog.current_database())";

async fn holders(
    client: &impl GenericClient,
    space: i32,
) -> Result<Vec<(i32, i64, String)>, tokio_postgres::Error> {
    // Typed: one round trip, no statement prepared for it (this query is
    // also the heartbeat, every second).
    let rows = client
        .query_typed(HOLDERS, &[(&i64::from(space), Type::INT8)])
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The live members, by pid. This query is also the heartbeat.
pub async fn live_members(
    client: &impl GenericClient,
) -> Result<Vec<Member>, tokio_postgres::Error> {
    let mut members: Vec<Member> = holders(client, MEMBER_SPACE)
        .await?
        .into_iter()
        // The member lock's second key is its holder's pid: anything else
        // in that key space is not one of ours.
        .filter(|(pid, key, _)| i64::from(*pid) == *key)
        .map(|(pid, _, app)| Member {
            pid,
            name: member_name(&app).unwrap_or(&app).to_string(),
        })
        .collect();
    members.sort();
    Ok(members)
}

/// Who holds each server's lock: (srvid, pid of the membership session).
pub async fn server_holders(
    client: &impl GenericClient,
) -> Result<Vec<(SrvId, i32)>, tokio_postgres::Error> {
    let mut held: Vec<(SrvId, i32)> = holders(client, SERVER_SPACE)
        .await?
        .into_iter()
        .filter_map(|(pid, key, _)| Some((SrvId::try_from(key).ok()?, pid)))
        .collect();
    held.sort_unstable();
    Ok(held)
}

/// The pid of the leader's membership session, if any.
pub async fn leader(client: &impl GenericClient) -> Result<Option<i32>, tokio_postgres::Error> {
    Ok(holders(client, LEADER_SPACE)
        .await?
        .first()
        .map(|(pid, _, _)| *pid))
}

/// The fleet as the repository shows it, for `powa-fleet status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub members: Vec<Member>,
    /// (srvid, pid of the holder's membership session).
    pub holders: Vec<(SrvId, i32)>,
    pub leader: Option<i32>,
}

impl Roster {
    /// The name of the member collecting `srvid`, if any.
    pub fn member_of(&self, srvid: SrvId) -> Option<&str> {
        let (_, pid) = self.holders.iter().find(|(s, _)| *s == srvid)?;
        self.members
            .iter()
            .find(|m| m.pid == *pid)
            .map(|m| m.name.as_str())
    }

    /// How many servers `member` collects.
    pub fn count_of(&self, member: &Member) -> usize {
        self.holders
            .iter()
            .filter(|(_, p)| *p == member.pid)
            .count()
    }
}

pub async fn roster(client: &impl GenericClient) -> Result<Roster, tokio_postgres::Error> {
    Ok(Roster {
        members: live_members(client).await?,
        holders: server_holders(client).await?,
        leader: leader(client).await?,
    })
}

/// Claim a server for this session; false when another member holds it.
pub async fn try_claim(client: &Client, srvid: SrvId) -> Result<bool, tokio_postgres::Error> {
    try_lock(client, SERVER_SPACE, srvid).await
}

/// Give a server up (after its snapshot actor stopped).
pub async fn release(client: &Client, srvid: SrvId) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "SELECT pg_catalog.pg_advisory_unlock($1, $2)",
            &[(&SERVER_SPACE, Type::INT4), (&srvid, Type::INT4)],
        )
        .await?;
    Ok(())
}

/// Become the leader if no member is.
pub async fn try_lead(client: &Client) -> Result<bool, tokio_postgres::Error> {
    try_lock(client, LEADER_SPACE, 0).await
}

async fn try_lock(client: &Client, space: i32, key: i32) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
            &[(&space, Type::INT4), (&key, Type::INT4)],
        )
        .await?;
    Ok(row.get(0))
}

/// The fleet as one member sees it, shared with the snapshot actors (for
/// fencing), the listener (who answers) and the status.
#[derive(Clone)]
pub struct FleetView {
    inner: Arc<Mutex<View>>,
}

/// A copy of the view at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// This member's name.
    pub name: String,
    /// The membership session's pid; `None` while it is lost, when no
    /// snapshot may commit.
    pub pid: Option<i32>,
    pub leader: bool,
    pub members: Vec<Member>,
    /// The servers whose lock this member holds.
    pub owned: BTreeSet<SrvId>,
    /// Every server registered in the repository, as last read.
    pub known: Vec<SrvId>,
}

impl FleetView {
    pub fn new(name: &str) -> FleetView {
        FleetView {
            inner: Arc::new(Mutex::new(View {
                name: truncate(name, 200).to_string(),
                ..View::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        // Every critical section is a few plain writes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> View {
        self.lock().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.lock())
    }

    /// The membership session's pid, if it is alive.
    pub fn pid(&self) -> Option<i32> {
        self.lock().pid
    }

    pub fn is_leader(&self) -> bool {
        let v = self.lock();
        v.leader && v.pid.is_some()
    }

    pub fn owns(&self, srvid: SrvId) -> bool {
        self.lock().owned.contains(&srvid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_read_back_from_application_name() {
        assert_eq!(member_name("powa-fleet: member db1:42"), Some("db1:42"));
        assert_eq!(member_name("powa-fleet: listener"), None);
        assert_eq!(member_name("psql"), None);
        assert_eq!(visible_name("db1:42"), "db1:42");
        let long = "x".repeat(100);
        let seen = visible_name(&long);
        assert!(seen.len() < 63 && long.starts_with(&seen));
    }

    #[test]
    fn key_spaces_are_distinct_positive_oids() {
        let spaces = [MEMBER_SPACE, SERVER_SPACE, LEADER_SPACE, SLOT_SPACE];
        for (i, a) in spaces.iter().enumerate() {
            assert!(*a > 0);
            assert!(spaces[i + 1..].iter().all(|b| b != a));
        }
    }
}
