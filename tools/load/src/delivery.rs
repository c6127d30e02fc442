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
//! for poses still in flight, and not while it was away: from a lost
//! socket, each sender's poses after the newest one it had got (the rest
//! may have died with the socket), until the state came back on the next
//! (the `joined` it then gets carries every avatar's current pose) — or
//! for good, when it never came back) and before the sender stopped (or,
//! for a sender whose connection died for good, after the last moment the
//! server is known to have had its poses). A sender's poses between that
//! moment and a cut socket are not expected either: they may have died
//! with it.
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
    /// Poses in these `(after, to]` windows (ms) may have died with a cut
    /// socket before the server had them: from the last ping it answered on
    /// that socket to the cut. Not expected anywhere.
    pub cut: Vec<(u64, u64)>,
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
    /// Times away: from a lost socket until the state was back.
    pub away: Vec<Away>,
    pub seen: HashMap<UserKey, PairStats>,
    pub chats: HashSet<String>,
}

/// A receiver's time away from its room: from a lost socket until the
/// state was back on a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Away {
    /// Per sender, the newest `t` received before the socket was lost;
    /// poses after it may have died with the socket. A sender not here had
    /// nothing delivered yet: all its poses up to `to` are excused.
    pub after: HashMap<UserKey, u64>,
    /// When the state was back (ms); `u64::MAX`: never (the run ended).
    pub to: u64,
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
            let excused = excused_windows(&r.away, &s.cut, skey);
            let away = |start: usize| -> u64 { excused.iter().map(|&(after, to)| count_within(&s.poses[start..hi], after, to)).sum() };
            let expected = (hi - lo) as u64 - away(lo);
            let lost = (hi - covered_to) as u64 - away(covered_to);
            out.expected += expected;
            out.lost += lost;
            if lost > 0 {
                out.pairs_with_loss += 1;
                tracing::debug!(receiver = ?rkey, sender = ?skey, lost, first_lost = s.poses[covered_to], last_lost = s.poses[hi - 1], max_t, from, until, receiver_until = r.until_ms, sender_until = s.until_ms, away = ?r.away, "lost poses");
            }
        }
    }
    out
}

/// Poses (sorted) with `t` in `(after, to]`.
fn count_within(poses: &[u64], after: u64, to: u64) -> u64 {
    (poses.partition_point(|&t| t <= to)).saturating_sub(poses.partition_point(|&t| t <= after)) as u64
}

/// A receiver's away windows for one sender, `(after, to]`, merged so
/// nothing is excused twice.
/// The sender's own cut windows count for every receiver.
fn excused_windows(away: &[Away], cut: &[(u64, u64)], sender: UserKey) -> Vec<(u64, u64)> {
    let mut windows: Vec<(u64, u64)> = away.iter().map(|a| (a.after.get(&sender).copied().unwrap_or(0), a.to)).chain(cut.iter().copied()).filter(|&(after, to)| to > after).collect();
    windows.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(windows.len());
    for (after, to) in windows {
        match merged.last_mut() {
            Some(last) if after <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((after, to)),
        }
    }
    merged
}

/// Counts chats: every acknowledged chat to every receiver in its room
/// (the sender included) that was there from before the send until after
/// the acknowledgement. "Before" is an earlier millisecond: a `joined` read
/// in the millisecond the chat was sent may have left the server after the
/// chat was broadcast (seen once in 13,437 deliveries against socket.io).
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
                if rkey.room != skey.room || from >= chat.sent_ms || acked > r.until_ms {
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
