//! What one simulated user received: who is in its room (avatar id → user,
//! from the names in `joined` and in deltas' `joined`), the newest pose seen
//! from each sender, the chats seen, and everything that should not have
//! arrived (misrouted messages, unknown avatars, its own avatar).
//!
//! Pure bookkeeping, no I/O: the network side feeds it decoded messages.

use crate::names::{FastMap, UserKey, parse_user_name};
use plaza_shared::messages::{AvatarId, AvatarInfo, ChatMessage, Delta, Joined};
use std::collections::HashSet;

/// Who an avatar is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// A user of this run, with its place in `Tracker::pairs` when it is of
    /// our room ([`NOT_OURS`] otherwise): one lookup per pose, not two.
    Ours(UserKey, u32),
    /// Not one of this run's users (a person, a bot, another run).
    Foreign,
}

const NOT_OURS: u32 = u32::MAX;

/// Ids below this are kept in a vector indexed by id.
const DENSE_IDS: AvatarId = 4096;

/// Avatar id → who. A server numbers each room's avatars from 1, so ids are
/// small: a vector indexed by id answers each pose with one load, where a
/// hash map took a hash and a probe (the tracker was the load tool's
/// largest function at 2,000 users). Ids from [`DENSE_IDS`] on (a long
/// run's churn, another server's numbering) go to a map.
#[derive(Debug, Clone, Default)]
struct AvatarTable {
    dense: Vec<Option<Who>>,
    sparse: FastMap<AvatarId, Who>,
}

impl AvatarTable {
    fn get(&self, id: AvatarId) -> Option<&Who> {
        if id < DENSE_IDS { self.dense.get(id as usize).and_then(Option::as_ref) } else { self.sparse.get(&id) }
    }

    fn insert(&mut self, id: AvatarId, who: Who) {
        if id < DENSE_IDS {
            let i = id as usize;
            if self.dense.len() <= i {
                self.dense.resize(i + 1, None);
            }
            self.dense[i] = Some(who);
        } else {
            self.sparse.insert(id, who);
        }
    }

    fn remove(&mut self, id: AvatarId) {
        if id < DENSE_IDS {
            if let Some(slot) = self.dense.get_mut(id as usize) {
                *slot = None;
            }
        } else {
            self.sparse.remove(&id);
        }
    }

    fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
    }
}

/// What a receiver saw from one sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairStats {
    /// The newest `t` received (sender ms); 0 when none.
    pub max_t: u64,
    /// Pose entries received with a `t`.
    pub received: u64,
}

/// Counts of things that should not happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Poses, chats or avatars of users of another room.
    pub misrouted: u64,
    /// The receiver's own avatar in a delta (the server must filter it).
    pub own_avatar: u64,
    /// Pose entries for avatar ids never introduced by `joined`.
    pub unknown_avatar: u64,
    /// A pose whose `t` was not newer than one already seen from its sender.
    pub stale: u64,
    /// Jumps in a sender's `t` larger than the gap threshold: a stream that
    /// stalled for a while (diagnostic; the poses may still be covered).
    pub gaps: u64,
    /// Avatars and chats of users not in this run.
    pub foreign: u64,
}

#[derive(Debug, Clone)]
pub struct Tracker {
    tag: String,
    me: UserKey,
    room_id: Option<String>,
    you: Option<AvatarId>,
    avatars: AvatarTable,
    gap_ms: u64,
    /// What we saw from each sender of our room, in order of first sight.
    pairs: Vec<(UserKey, PairStats)>,
    pair_of: FastMap<UserKey, u32>,
    pub chats: HashSet<String>,
    pub anomalies: Anomalies,
}

impl Tracker {
    /// `gap_ms`: a sender's `t` jumping by more than this counts a gap.
    pub fn new(tag: &str, me: UserKey, gap_ms: u64) -> Self {
        Tracker {
            tag: tag.to_owned(),
            me,
            room_id: None,
            you: None,
            avatars: AvatarTable::default(),
            gap_ms,
            pairs: Vec::new(),
            pair_of: FastMap::default(),
            chats: HashSet::new(),
            anomalies: Anomalies::default(),
        }
    }

    pub fn room_id(&self) -> Option<&str> {
        self.room_id.as_deref()
    }

    pub fn you(&self) -> Option<AvatarId> {
        self.you
    }

    /// What we saw from each sender of our room.
    pub fn pairs(&self) -> impl Iterator<Item = (UserKey, PairStats)> + '_ {
        self.pairs.iter().copied()
    }

    /// What we saw from `sender`.
    pub fn pair(&self, sender: UserKey) -> Option<PairStats> {
        self.pair_of.get(&sender).map(|&i| self.pairs[i as usize].1)
    }

    /// Hands over what we saw from each sender, at the end.
    pub fn take_pairs(&mut self) -> Vec<(UserKey, PairStats)> {
        self.pair_of.clear();
        std::mem::take(&mut self.pairs)
    }

    fn classify(&mut self, info: &AvatarInfo) -> Who {
        if Some(info.id) == self.you {
            self.anomalies.own_avatar += 1;
        }
        match parse_user_name(&self.tag, &info.name) {
            Some(key) => {
                if key.room != self.me.room {
                    self.anomalies.misrouted += 1;
                    return Who::Ours(key, NOT_OURS);
                }
                let next = self.pairs.len() as u32;
                let pair = *self.pair_of.entry(key).or_insert(next);
                if pair == next {
                    self.pairs.push((key, PairStats::default()));
                }
                Who::Ours(key, pair)
            }
            None => {
                self.anomalies.foreign += 1;
                Who::Foreign
            }
        }
    }

    /// The room's full state (after a join or a resume): starts over.
    pub fn on_joined(&mut self, joined: &Joined) {
        self.room_id = Some(joined.room.clone());
        self.you = Some(joined.you);
        self.avatars.clear();
        for info in &joined.avatars {
            let who = self.classify(info);
            self.avatars.insert(info.id, who);
        }
    }

    /// A delta: `left`, then `joined`, then poses. Pushes onto `poses`
    /// `(sender, t, the sender's t before it)` for every new pose from a
    /// user of this room (0: the first from that sender).
    pub fn on_delta(&mut self, delta: &Delta, poses: &mut Vec<(UserKey, u64, u64)>) {
        self.on_entries(delta.avatars.iter().map(|a| (a.id, a.t)), &delta.joined, &delta.left, poses);
    }

    /// [`Tracker::on_delta`] from a delta's parts: each moved avatar's id and `t`.
    pub fn on_entries(&mut self, moved: impl IntoIterator<Item = (AvatarId, Option<u64>)>, joined: &[AvatarInfo], left: &[AvatarId], poses: &mut Vec<(UserKey, u64, u64)>) {
        for id in left {
            self.avatars.remove(*id);
        }
        for info in joined {
            let who = self.classify(info);
            self.avatars.insert(info.id, who);
        }
        for (id, t) in moved {
            if Some(id) == self.you {
                self.anomalies.own_avatar += 1;
                continue;
            }
            let (key, pair) = match self.avatars.get(id) {
                None => {
                    self.anomalies.unknown_avatar += 1;
                    continue;
                }
                Some(Who::Foreign) => continue,
                Some(Who::Ours(_, NOT_OURS)) => {
                    self.anomalies.misrouted += 1;
                    continue;
                }
                Some(&Who::Ours(key, pair)) => (key, pair),
            };
            let Some(t) = t else { continue };
            let stats = &mut self.pairs[pair as usize].1;
            if t <= stats.max_t {
                self.anomalies.stale += 1;
                continue;
            }
            if stats.max_t > 0 && t - stats.max_t > self.gap_ms {
                self.anomalies.gaps += 1;
            }
            let before = stats.max_t;
            stats.max_t = t;
            stats.received += 1;
            poses.push((key, t, before));
        }
    }

    /// A chat broadcast. Chats of this room are remembered by their id.
    pub fn on_chat(&mut self, chat: &ChatMessage) {
        match parse_user_name(&self.tag, &chat.name) {
            None => self.anomalies.foreign += 1,
            Some(key) if key.room != self.me.room => self.anomalies.misrouted += 1,
            Some(_) if self.room_id.as_deref().is_some_and(|room| room != chat.room) => self.anomalies.misrouted += 1,
            Some(_) => {
                self.chats.insert(chat.id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avatar_table_answers_as_a_map_would_for_small_and_large_ids() {
        let ours = |user| Who::Ours(UserKey { room: 1, user }, user);
        let mut table = AvatarTable::default();
        let mut map = FastMap::default();
        for (id, who) in [(3, ours(1)), (DENSE_IDS + 7, ours(2)), (1, Who::Foreign), (DENSE_IDS - 1, ours(3)), (u32::MAX, ours(4))] {
            table.insert(id, who);
            map.insert(id, who);
        }
        table.insert(3, ours(5));
        map.insert(3, ours(5));
        for id in [3, DENSE_IDS + 7] {
            table.remove(id);
            map.remove(&id);
        }
        table.remove(DENSE_IDS + 100); // never there
        table.remove(2_000); // past the vector's end
        for id in [0, 1, 2, 3, 4, 2_000, DENSE_IDS - 1, DENSE_IDS, DENSE_IDS + 7, u32::MAX] {
            assert_eq!(table.get(id), map.get(&id), "id {id}");
        }
        table.clear();
        assert!(table.get(1).is_none() && table.get(u32::MAX).is_none());
    }
}
