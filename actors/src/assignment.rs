//! Which member collects which server: rendezvous (highest random weight)
//! hashing of the live members × the srvids. Every member computes the
//! same answer from the same member list, with no message exchanged, and a
//! member joining or leaving moves only the servers it wins or held (about
//! 1/n of them). Pure: no clock, no database.

use crate::server::SrvId;

/// A live member as every member sees it in `pg_locks`: the backend pid of
/// its membership session and its name (from `application_name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub pid: i32,
    pub name: String,
}

impl Member {
    /// The member's key in the hash: its name and its session's pid, so
    /// that two members given the same name still differ.
    fn key(&self) -> u64 {
        let mut h = fnv1a(self.name.as_bytes());
        h ^= u64::from(self.pid as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mix(h)
    }
}

/// 64-bit FNV-1a: stable across processes, platforms and releases (the
/// standard library's hasher is not, and every member must agree).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: spreads close inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn score(member_key: u64, srvid: SrvId) -> u64 {
    mix(member_key ^ mix(u64::from(srvid as u32)))
}

/// The member that should collect `srvid`, or `None` without members.
/// Ties (practically impossible) go to the lowest pid.
pub fn owner(members: &[Member], srvid: SrvId) -> Option<&Member> {
    members.iter().max_by(|a, b| {
        score(a.key(), srvid)
            .cmp(&score(b.key(), srvid))
            .then_with(|| b.pid.cmp(&a.pid))
    })
}

/// The srvids of `srvids` that `me` should collect.
pub fn owned_by(members: &[Member], me: i32, srvids: &[SrvId]) -> Vec<SrvId> {
    srvids
        .iter()
        .copied()
        .filter(|&srvid| owner(members, srvid).is_some_and(|m| m.pid == me))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: i32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                pid: 1000 + i,
                name: format!("host-{i}"),
            })
            .collect()
    }

    #[test]
    fn every_server_has_exactly_one_owner() {
        let ms = members(3);
        let srvids: Vec<SrvId> = (1..=300).collect();
        let mut total = 0;
        for m in &ms {
            let mine = owned_by(&ms, m.pid, &srvids);
            // Spread: no member gets far from a third.
            assert!((60..=140).contains(&mine.len()), "{} servers", mine.len());
            total += mine.len();
        }
        assert_eq!(total, srvids.len());
    }

    #[test]
    fn the_order_members_are_listed_in_does_not_matter() {
        let ms = members(4);
        let mut reversed = ms.clone();
        reversed.reverse();
        for srvid in 1..100 {
            assert_eq!(owner(&ms, srvid), owner(&reversed, srvid));
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_servers() {
        let ms = members(4);
        let gone = ms[2].clone();
        let rest: Vec<Member> = ms.iter().filter(|m| **m != gone).cloned().collect();
        for srvid in 1..500 {
            let before = owner(&ms, srvid).unwrap();
            let after = owner(&rest, srvid).unwrap();
            if *before != gone {
                assert_eq!(before, after, "server {srvid} moved needlessly");
            }
        }
    }

    #[test]
    fn a_member_joining_takes_about_its_share_and_only_that() {
        let ms = members(3);
        let mut more = ms.clone();
        more.push(Member {
            pid: 2000,
            name: "new".into(),
        });
        let mut moved = 0;
        for srvid in 1..=400 {
            let before = owner(&ms, srvid).unwrap();
            let after = owner(&more, srvid).unwrap();
            if before != after {
                assert_eq!(after.pid, 2000, "server {srvid} moved between old members");
                moved += 1;
            }
        }
        assert!((60..=140).contains(&moved), "{moved} moved");
    }

    #[test]
    fn a_single_member_owns_everything_and_none_owns_nothing() {
        let ms = members(1);
        assert_eq!(owned_by(&ms, 1000, &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(owned_by(&ms, 999, &[1, 2, 3]), Vec::<SrvId>::new());
        assert!(owner(&[], 1).is_none());
    }

    #[test]
    fn same_name_members_still_split_the_fleet() {
        let ms = vec![
            Member {
                pid: 1,
                name: "x".into(),
            },
            Member {
                pid: 2,
                name: "x".into(),
            },
        ];
        let srvids: Vec<SrvId> = (1..=100).collect();
        let a = owned_by(&ms, 1, &srvids).len();
        assert!((20..=80).contains(&a), "{a}");
    }
}
