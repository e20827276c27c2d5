//! Members among themselves: how the leader gathers every member's worker
//! states for one fleet-wide answer, through NOTIFY on the repository.
//!
//! The leader sends `GATHER <kind> <reply channel> <id>` on
//! [`GATHER_CHANNEL`]; every other member answers on the reply channel with
//! `PART <id> <member pid> <n>/<total> <JSON [[srvid, text], ...]>`, in as
//! many parts as its servers need under [`MAX_PAYLOAD`](super::MAX_PAYLOAD).

use serde::{Deserialize, Serialize};

use super::MAX_PAYLOAD;

/// Every member listens here for the leader's requests.
pub const GATHER_CHANNEL: &str = "powa_fleet_gather";

/// The channel a member's listener receives gathered parts on.
pub fn reply_channel(listener_pid: i32) -> String {
    format!("powa_fleet_reply_{listener_pid}")
}

/// What the leader asks for: the WORKERS_STATUS state strings, the
/// FLEET_STATUS items, or a reload and its outcome (one entry, srvid 0,
/// [`RELOADED`] or the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Workers,
    Fleet,
    Reload,
}

/// A member's entry once its reload succeeded.
pub const RELOADED: &str = "OK";

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Workers => "workers",
            Kind::Fleet => "fleet",
            Kind::Reload => "reload",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    pub kind: Kind,
    pub reply_to: String,
    pub id: u64,
}

impl Gather {
    pub fn encode(&self) -> String {
        format!(
            "GATHER {} {} {}",
            self.kind.as_str(),
            self.reply_to,
            self.id
        )
    }

    pub fn parse(payload: &str) -> Option<Gather> {
        let mut words = payload.split(' ');
        if words.next()? != "GATHER" {
            return None;
        }
        let kind = match words.next()? {
            "workers" => Kind::Workers,
            "fleet" => Kind::Fleet,
            "reload" => Kind::Reload,
            _ => return None,
        };
        let reply_to = words.next()?;
        // Only a channel of ours: a member never NOTIFYs an arbitrary one.
        let pid = reply_to.strip_prefix("powa_fleet_reply_")?;
        pid.parse::<i32>().ok()?;
        let id = words.next()?.parse().ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Gather {
            kind,
            reply_to: reply_to.to_string(),
            id,
        })
    }
}

/// One part of a member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub id: u64,
    pub member_pid: i32,
    pub n: usize,
    pub total: usize,
    pub entries: Vec<(i32, String)>,
}

/// A member's answer, in parts that each fit in a payload. An entry too
/// large for one payload is dropped (a state or an item is far smaller).
pub fn encode_parts(id: u64, member_pid: i32, entries: &[(i32, String)]) -> Vec<String> {
    // Room for the header with the largest numbers.
    let budget = MAX_PAYLOAD - 64;
    let mut chunks: Vec<Vec<&(i32, String)>> = vec![vec![]];
    let mut size = 2;
    for entry in entries {
        let len = serde_json::to_string(entry).map_or(usize::MAX, |s| s.len()) + 1;
        if len > budget {
            continue;
        }
        if size + len > budget {
            chunks.push(vec![]);
            size = 2;
        }
        size += len;
        chunks.last_mut().expect("never empty").push(entry);
    }
    let total = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let json = serde_json::to_string(chunk).unwrap_or_else(|_| "[]".into());
            format!("PART {id} {member_pid} {}/{total} {json}", i + 1)
        })
        .collect()
}

pub fn parse_part(payload: &str) -> Option<Part> {
    let mut words = payload.splitn(5, ' ');
    if words.next()? != "PART" {
        return None;
    }
    let id = words.next()?.parse().ok()?;
    let member_pid = words.next()?.parse().ok()?;
    let (n, total) = words.next()?.split_once('/')?;
    let (n, total): (usize, usize) = (n.parse().ok()?, total.parse().ok()?);
    if n == 0 || n > total {
        return None;
    }
    let entries = serde_json::from_str(words.next()?).ok()?;
    Some(Part {
        id,
        member_pid,
        n,
        total,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gather_request_reads_back_and_names_only_our_channels() {
        let g = Gather {
            kind: Kind::Fleet,
            reply_to: reply_channel(42),
            id: 7,
        };
        assert_eq!(g.encode(), "GATHER fleet powa_fleet_reply_42 7");
        assert_eq!(Gather::parse(&g.encode()), Some(g));
        assert_eq!(Gather::parse("GATHER workers r123 7"), None);
        assert_eq!(Gather::parse("GATHER workers powa_fleet_reply_x 7"), None);
        assert_eq!(Gather::parse("GATHER other powa_fleet_reply_1 7"), None);
        assert_eq!(Gather::parse("GATHER workers powa_fleet_reply_1 7 8"), None);
    }

    #[test]
    fn parts_fit_in_payloads_and_read_back_whole() {
        let entries: Vec<(i32, String)> = (0..2000)
            .map(|i| (i, format!("running \"quoted\" é {i}")))
            .collect();
        let parts = encode_parts(9, 1234, &entries);
        assert!(parts.len() > 1);
        let mut back = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            let part = parse_part(p).unwrap();
            assert_eq!((part.id, part.member_pid), (9, 1234));
            assert_eq!((part.n, part.total), (i + 1, parts.len()));
            back.extend(part.entries);
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn a_member_with_no_server_still_answers() {
        let parts = encode_parts(1, 5, &[]);
        assert_eq!(parts, vec!["PART 1 5 1/1 []".to_string()]);
        assert_eq!(parse_part(&parts[0]).unwrap().entries, vec![]);
        assert_eq!(parse_part("PART 1 5 2/1 []"), None);
        assert_eq!(parse_part("PART 1 5 1/1 {"), None);
    }
}
