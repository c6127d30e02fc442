//! Percentiles, delivery accounting and misrouting, without a network.

use plaza_load::delivery::{Away, ReceiverLog, SenderLog, SentChat, account_chats, account_poses};
use plaza_load::histogram::Histogram;
use plaza_load::names::{UserKey, user_name};
use plaza_load::track::{PairStats, Tracker};
use plaza_shared::messages::{AvatarInfo, AvatarPose, ChatMessage, Delta, Joined};
use plaza_shared::pose::Pose;
use std::collections::{HashMap, HashSet};

const TAG: &str = "t001";

fn key(room: u32, user: u32) -> UserKey {
    UserKey { room, user }
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let mut h = Histogram::new();
    for v in 1..=100 {
        h.record(v);
    }
    assert_eq!(h.count(), 100);
    assert_eq!(h.percentile(50.0), Some(50));
    assert_eq!(h.percentile(95.0), Some(95));
    assert_eq!(h.percentile(99.0), Some(99));
    assert_eq!(h.percentile(100.0), Some(100));
    assert_eq!(h.percentile(0.0), Some(1));
    assert_eq!(h.min(), Some(1));
    assert_eq!(h.mean(), Some(50.5));
    // One slow outlier moves the max and p99.9 but not the median.
    h.record(1_000_000);
    assert_eq!(h.percentile(50.0), Some(51));
    assert_eq!(h.max(), Some(1_000_000));
    assert_eq!(Histogram::new().percentile(50.0), None);
}

#[test]
fn large_values_are_within_a_fifth_of_a_percent() {
    let mut h = Histogram::new();
    let values: Vec<u64> = (0..10_000u64).map(|i| 1_000 + i * 7_919 % 5_000_000).collect();
    for &v in &values {
        h.record(v);
    }
    let mut sorted = values.clone();
    sorted.sort_unstable();
    for p in [50.0, 90.0, 99.0, 99.9] {
        let exact = sorted[((p / 100.0) * sorted.len() as f64).ceil() as usize - 1] as f64;
        let got = h.percentile(p).unwrap() as f64;
        assert!((got - exact).abs() <= exact * 0.002 + 1.0, "p{p}: {got} vs {exact}");
    }
    assert_eq!(h.max(), sorted.last().copied());
}

#[test]
fn merged_histograms_count_everything_once() {
    let (mut a, mut b) = (Histogram::new(), Histogram::new());
    (1..=50).for_each(|v| a.record(v));
    (51..=100).for_each(|v| b.record(v));
    a.merge(&b);
    assert_eq!(a.count(), 100);
    assert_eq!(a.percentile(50.0), Some(50));
    assert_eq!(a.summary_ms().max, 0.1);
}

fn sender(k: UserKey, poses: &[u64], until_ms: u64) -> SenderLog {
    SenderLog { key: Some(k), poses: poses.to_vec(), until_ms, cut: vec![], chats: vec![] }
}

fn receiver(k: UserKey, from_ms: u64, until_ms: u64, seen: &[(UserKey, u64, u64)]) -> ReceiverLog {
    ReceiverLog {
        key: Some(k),
        from_ms: Some(from_ms),
        until_ms,
        away: vec![],
        seen: seen.iter().map(|&(s, max_t, received)| (s, PairStats { max_t, received })).collect::<HashMap<_, _>>(),
        chats: HashSet::new(),
    }
}

#[test]
fn a_superseded_pose_counts_as_delivered_when_a_newer_one_arrives() {
    let a = key(1, 1);
    let b = key(1, 2);
    // A sent three poses within one tick; B got only the newest.
    let senders = [sender(a, &[1000, 1020, 1040], 5000), sender(b, &[], 5000)];
    let receivers = [receiver(b, 900, 5000, &[(a, 1040, 1)]), receiver(a, 900, 5000, &[])];
    let d = account_poses(&senders, &receivers);
    assert_eq!((d.expected, d.received, d.lost), (3, 1, 0));
}

#[test]
fn a_pose_never_covered_is_lost() {
    let a = key(1, 1);
    let b = key(1, 2);
    // B never got A's last two poses, nor anything newer.
    let senders = [sender(a, &[1000, 1050, 1100, 1150], 5000)];
    let receivers = [receiver(b, 900, 5000, &[(a, 1050, 2)])];
    let d = account_poses(&senders, &receivers);
    assert_eq!((d.expected, d.received, d.lost, d.pairs_with_loss), (4, 2, 2, 1));
    // Nothing at all from A: all four lost.
    let d = account_poses(&senders, &[receiver(b, 900, 5000, &[])]);
    assert_eq!((d.expected, d.lost), (4, 4));
}

#[test]
fn poses_sent_while_the_receiver_was_away_are_not_expected() {
    let a = key(1, 1);
    let b = key(1, 2);
    // B had A's poses up to 200 when its socket was cut, and the state back
    // at 520; A's later poses (300 in flight, 400 and 500 meanwhile) were
    // never delivered, and A sent nothing after.
    let senders = [sender(a, &[100, 200, 300, 400, 500], 5000)];
    let mut rb = receiver(b, 50, 5000, &[(a, 200, 2)]);
    rb.away = vec![Away { after: HashMap::from([(a, 200)]), to: 520 }];
    let d = account_poses(&senders, std::slice::from_ref(&rb));
    assert_eq!((d.expected, d.lost), (2, 0));
    // Without the away window they would be lost.
    rb.away.clear();
    assert_eq!(account_poses(&senders, std::slice::from_ref(&rb)).lost, 3);
    // Overlapping windows (a second cut before anything new from A) excuse
    // each pose once; a window that never ended excuses the rest.
    rb.away = vec![Away { after: HashMap::from([(a, 200)]), to: 450 }, Away { after: HashMap::from([(a, 200)]), to: u64::MAX }];
    let d = account_poses(&senders, &[rb]);
    assert_eq!((d.expected, d.lost), (2, 0));
}

#[test]
fn poses_that_died_with_the_senders_cut_socket_are_not_expected() {
    let a = key(1, 1);
    let b = key(1, 2);
    // The server answered A's ping of 250; A's socket was cut at 420, and
    // 300 and 400 died with it. B got nothing newer from A.
    let mut sa = sender(a, &[100, 200, 300, 400], 5000);
    let rb = receiver(b, 50, 5000, &[(a, 200, 2)]);
    assert_eq!(account_poses(std::slice::from_ref(&sa), std::slice::from_ref(&rb)).lost, 2);
    sa.cut = vec![(250, 420)];
    let d = account_poses(&[sa], &[rb]);
    assert_eq!((d.expected, d.lost), (2, 0));
}

#[test]
fn only_poses_within_both_windows_are_expected() {
    let a = key(1, 1);
    let b = key(1, 2);
    let c = key(2, 1);
    let senders = [sender(a, &[100, 200, 300, 400, 500], 400)];
    // B joined at 150 and stopped listening at 450; A stopped at 400:
    // expected are 200, 300, 400. C is in another room: nothing expected.
    let receivers = [receiver(b, 150, 450, &[(a, 400, 3)]), receiver(c, 0, 1000, &[])];
    let d = account_poses(&senders, &receivers);
    assert_eq!((d.expected, d.lost), (3, 0));
}

#[test]
fn chats_reach_the_whole_room_or_count_as_lost() {
    let a = key(1, 1);
    let b = key(1, 2);
    let c = key(1, 3);
    let mut s = sender(a, &[], 10_000);
    s.chats = vec![
        SentChat { id: "m1".into(), sent_ms: 1000, acked_ms: Some(1005) },
        SentChat { id: "m2".into(), sent_ms: 2000, acked_ms: None },
    ];
    let mut ra = receiver(a, 500, 10_000, &[]);
    ra.chats.insert("m1".into());
    let mut rb = receiver(b, 500, 10_000, &[]);
    rb.chats.insert("m1".into());
    let rc = receiver(c, 500, 10_000, &[]); // never got m1
    let late = receiver(key(1, 4), 1500, 10_000, &[]); // joined after m1: not expected
    // Joined in the millisecond m1 was sent: the order is unknown.
    let same_ms = receiver(key(1, 5), 1000, 10_000, &[]);
    let d = account_chats(&[s], &[ra, rb, rc, late, same_ms]);
    assert_eq!((d.sent, d.acked, d.expected, d.received), (2, 1, 3, 2));
    assert_eq!(d.lost, 2, "c missed m1, and m2 was never acknowledged");
}

fn info(id: u32, name: &str) -> AvatarInfo {
    AvatarInfo { id, user: format!("u_{id}"), name: name.into(), pose: Pose::default() }
}

fn moved(id: u32, t: u64) -> AvatarPose {
    AvatarPose { id, t: Some(t), pose: Pose::default() }
}

#[test]
fn the_tracker_keeps_the_newest_pose_per_sender() {
    let me = key(1, 1);
    let mut tr = Tracker::new(TAG, me, 250);
    tr.on_joined(&Joined { room: "r_a".into(), room_name: "load-1".into(), you: 1, tick: 5, avatars: vec![info(2, &user_name(TAG, key(1, 2)))] });
    let mut poses = Vec::new();
    tr.on_delta(&Delta { tick: 6, avatars: vec![moved(2, 1000)], joined: vec![info(3, &user_name(TAG, key(1, 3)))], left: vec![] }, &mut poses);
    tr.on_delta(&Delta { tick: 7, avatars: vec![moved(2, 1050), moved(3, 1060)], joined: vec![], left: vec![] }, &mut poses);
    assert_eq!(poses, vec![(key(1, 2), 1000, 0), (key(1, 2), 1050, 1000), (key(1, 3), 1060, 0)]);
    assert_eq!(tr.pair(key(1, 2)), Some(PairStats { max_t: 1050, received: 2 }));
    // A repeated or older t is stale; a jump past the gap threshold is a gap.
    tr.on_delta(&Delta { tick: 8, avatars: vec![moved(2, 1050), moved(3, 2000)], joined: vec![], left: vec![] }, &mut poses);
    assert_eq!(tr.anomalies.stale, 1);
    assert_eq!(tr.anomalies.gaps, 1);
    assert_eq!(tr.anomalies.misrouted, 0);
    // After leaving, its id is unknown.
    tr.on_delta(&Delta { tick: 9, avatars: vec![moved(2, 3000)], joined: vec![], left: vec![2] }, &mut poses);
    assert_eq!(tr.anomalies.unknown_avatar, 1);
}

#[test]
fn poses_and_chats_from_another_room_are_misrouted() {
    let me = key(1, 1);
    let mut tr = Tracker::new(TAG, me, 250);
    tr.on_joined(&Joined { room: "r_a".into(), room_name: "load-1".into(), you: 1, tick: 5, avatars: vec![] });
    let mut poses = Vec::new();
    // A user of room 2 shows up in room 1 and moves: both count.
    tr.on_delta(&Delta { tick: 6, avatars: vec![], joined: vec![info(4, &user_name(TAG, key(2, 7)))], left: vec![] }, &mut poses);
    tr.on_delta(&Delta { tick: 7, avatars: vec![moved(4, 1000)], joined: vec![], left: vec![] }, &mut poses);
    assert_eq!(tr.anomalies.misrouted, 2);
    assert!(poses.is_empty(), "a misrouted pose is not a latency sample");
    // A chat from room 2, and one claiming room 1's user but stamped with another room id.
    let chat = |name: String, room: &str| ChatMessage { id: "x".into(), room: room.into(), from: "u".into(), name, text: "hi".into(), ts: 1 };
    tr.on_chat(&chat(user_name(TAG, key(2, 7)), "r_b"));
    tr.on_chat(&chat(user_name(TAG, key(1, 2)), "r_b"));
    assert_eq!(tr.anomalies.misrouted, 4);
    tr.on_chat(&chat(user_name(TAG, key(1, 2)), "r_a"));
    assert_eq!(tr.anomalies.misrouted, 4);
    assert!(tr.chats.contains("x"));
    // Our own avatar must never come back to us.
    tr.on_delta(&Delta { tick: 8, avatars: vec![moved(1, 1000)], joined: vec![], left: vec![] }, &mut poses);
    assert_eq!(tr.anomalies.own_avatar, 1);
    // Someone not in this run is foreign, not misrouted.
    tr.on_delta(&Delta { tick: 9, avatars: vec![], joined: vec![info(9, "Ada")], left: vec![] }, &mut poses);
    assert_eq!((tr.anomalies.foreign, tr.anomalies.misrouted), (1, 4));
}
