//! Who is who. A simulated user's display name carries the run's tag, its
//! room and its number (`k3f9-r2-u17`), so any receiver can tell, from the
//! names the server puts in `joined` and `chat`, which room a sender was
//! put in: that is how misrouted messages are caught.

use std::fmt;

/// A simulated user: its room (1-based) and its number in that room (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    pub room: u32,
    pub user: u32,
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}-u{}", self.room, self.user)
    }
}

/// The room a simulated user joins by name (a new name creates the room).
pub fn room_name(room: u32) -> String {
    format!("load-{room}")
}

/// The display name of `key` in the run tagged `tag`.
pub fn user_name(tag: &str, key: UserKey) -> String {
    format!("{tag}-{key}")
}

/// The user behind `name`, when it is one of this run's (`tag`). Names of
/// other runs and of people are `None`.
pub fn parse_user_name(tag: &str, name: &str) -> Option<UserKey> {
    let rest = name.strip_prefix(tag)?.strip_prefix("-r")?;
    let (room, user) = rest.split_once("-u")?;
    Some(UserKey { room: number(room)?, user: number(user)? })
}

/// A number exactly as we write it: digits only, no leading zero.
fn number(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// A short random tag for this run: 4 lowercase hex digits.
pub fn run_tag(seed: u64) -> String {
    format!("{:04x}", (plaza_shared::rng::SplitMix::new(seed).next_u64() & 0xffff) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_other_runs_are_not_ours() {
        let key = UserKey { room: 3, user: 17 };
        let name = user_name("ab12", key);
        assert_eq!(name, "ab12-r3-u17");
        assert_eq!(parse_user_name("ab12", &name), Some(key));
        assert_eq!(parse_user_name("cd34", &name), None);
        assert_eq!(parse_user_name("ab12", "Ada"), None);
        assert_eq!(parse_user_name("ab12", "ab12-r03-u17"), None);
        assert_eq!(parse_user_name("ab12", "ab12-r3-u+17"), None);
        assert!(name.chars().count() <= plaza_shared::limits::NAME_MAX_CHARS);
    }
}

/// A fast, non-cryptographic hasher for the per-delta lookups (avatar id →
/// sender, sender → stats). perf showed SipHash, std's default, at about a
/// twentieth of the tool's CPU at 1,200 users; keys here are small integers
/// the server and the tool chose, not attacker input. (The multiply-rotate
/// step of rustc's FxHasher.)
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod fast_hash_tests {
    use super::*;

    #[test]
    fn nearby_keys_spread_over_the_table() {
        let mut map: FastMap<UserKey, u32> = FastMap::default();
        for room in 1..=50 {
            for user in 1..=40 {
                map.insert(UserKey { room, user }, room * 100 + user);
            }
        }
        assert_eq!(map.len(), 2000);
        assert_eq!(map[&UserKey { room: 7, user: 3 }], 703);
        // Low bits (what the table indexes by) differ across neighbours.
        let low = |k: UserKey| std::hash::BuildHasher::hash_one(&std::hash::BuildHasherDefault::<FastHasher>::default(), k) & 0x7f;
        let distinct: std::collections::HashSet<u64> = (1..=40).map(|user| low(UserKey { room: 1, user })).collect();
        assert!(distinct.len() > 20, "{} distinct low-bit buckets of 40", distinct.len());
    }
}
