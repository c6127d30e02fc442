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
