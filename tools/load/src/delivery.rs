//! Delivery accounting: did every receiver get every sender's poses and
//! chats?
//!
//! Poses. The room sends each member, once per tick, the newest pose of
//! every avatar that moved; a pose that a newer one from the same sender
//! supersedes before the tick is never sent, and that is fine (the
//! contract counts it as delivered when the newer one arrives). So a
//! receiver only needs to remember, per sender, the newest `t` it got
//! ([`PairStats::max_t`]): a sent pose counts as delivered when that newest
//! `t` is at or after it, and as **lost** otherwise.
//!
//! Only poses the receiver could get are expected: sent while it was in the
//! room (from its `joined` until it stopped listening, less a grace period
//! for poses still in flight, and not while it was away between a lost
//! socket and the state coming back on the next: the `joined` it then gets
//! carries every avatar's current pose) and before the sender stopped (or,
//! for a sender whose connection died, a grace period before that).
//!
//! Chats. Every acknowledged chat must reach every member of its room that
//! was there from before it was sent until after it was acknowledged, the
//! sender included. A chat never acknowledged is lost too.

use crate::names::UserKey;
use crate::track::PairStats;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What one user sent.
#[derive(Debug, Clone, Default)]
pub struct SenderLog {
    pub key: Option<UserKey>,
    /// `t` of every pose written to the socket, strictly increasing (ms).
    pub poses: Vec<u64>,
    /// Poses after this (ms) are not expected anywhere.
    pub until_ms: u64,
    pub chats: Vec<SentChat>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentChat {
    pub id: String,
    pub sent_ms: u64,
    pub acked_ms: Option<u64>,
}

/// What one user received, and when it could.
#[derive(Debug, Clone, Default)]
pub struct ReceiverLog {
    pub key: Option<UserKey>,
    /// When it first got `joined` (ms); `None`: never in the room.
    pub from_ms: Option<u64>,
    /// Poses sent after this (ms) are not expected at this receiver.
    pub until_ms: u64,
    /// Away between reconnects, `[from, to]` ms, in order: the grace period
    /// before the socket was lost, until the state was back.
    pub away: Vec<(u64, u64)>,
    pub seen: HashMap<UserKey, PairStats>,
    pub chats: HashSet<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoseDelivery {
    /// (sent pose, receiver) pairs that had to arrive.
    pub expected: u64,
    /// Pose entries that did arrive (superseded poses never do).
    pub received: u64,
    /// Expected poses not covered by any pose received from their sender.
    pub lost: u64,
    /// (sender, receiver) pairs with at least one lost pose.
    pub pairs_with_loss: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChatDelivery {
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub received: u64,
    /// Expected but not received, plus chats never acknowledged.
    pub lost: u64,
}

/// Counts expected, received and lost poses over every (sender, receiver)
/// pair of the same room (a user is never its own receiver of poses).
pub fn account_poses(senders: &[SenderLog], receivers: &[ReceiverLog]) -> PoseDelivery {
    let mut out = PoseDelivery::default();
    for r in receivers {
        let (Some(rkey), Some(from)) = (r.key, r.from_ms) else { continue };
        out.received += r.seen.values().map(|s| s.received).sum::<u64>();
        for s in senders {
            let Some(skey) = s.key else { continue };
            if skey == rkey || skey.room != rkey.room {
                continue;
            }
            let until = r.until_ms.min(s.until_ms);
            if until < from {
                continue;
            }
            // Poses in [from, until]; those after max_t were never covered.
            let lo = s.poses.partition_point(|&t| t < from);
            let hi = s.poses.partition_point(|&t| t <= until);
            let max_t = r.seen.get(&skey).map_or(0, |p| p.max_t);
            let covered_to = s.poses.partition_point(|&t| t <= max_t).clamp(lo, hi);
            let away = |start: usize| -> u64 { r.away.iter().map(|&(a, b)| count_within(&s.poses[start..hi], a, b)).sum() };
            let expected = (hi - lo) as u64 - away(lo);
            let lost = (hi - covered_to) as u64 - away(covered_to);
            out.expected += expected;
            out.lost += lost;
            if lost > 0 {
                out.pairs_with_loss += 1;
            }
        }
    }
    out
}

/// Poses (sorted) with `t` in `[a, b]`.
fn count_within(poses: &[u64], a: u64, b: u64) -> u64 {
    (poses.partition_point(|&t| t <= b) - poses.partition_point(|&t| t < a)) as u64
}

/// Counts chats: every acknowledged chat to every receiver in its room
/// (the sender included) that was there from before the send until after
/// the acknowledgement.
pub fn account_chats(senders: &[SenderLog], receivers: &[ReceiverLog]) -> ChatDelivery {
    let mut out = ChatDelivery::default();
    for s in senders {
        let Some(skey) = s.key else { continue };
        for chat in &s.chats {
            out.sent += 1;
            let Some(acked) = chat.acked_ms else {
                if chat.sent_ms <= s.until_ms {
                    out.lost += 1;
                }
                continue;
            };
            out.acked += 1;
            for r in receivers {
                let (Some(rkey), Some(from)) = (r.key, r.from_ms) else { continue };
                if rkey.room != skey.room || from > chat.sent_ms || acked > r.until_ms {
                    continue;
                }
                out.expected += 1;
                if r.chats.contains(&chat.id) {
                    out.received += 1;
                } else {
                    out.lost += 1;
                }
            }
        }
    }
    out
}
