//! `plaza-load run --voice`: every user is also a voice peer of the server's
//! SFU (`plaza_server::voice::client`), signaled through its own WebSocket.
//! Each sends a 20 ms frame 50 times a second and listens with
//! [`MAX_SLOTS`] slots; what it hears is timed and checked.
//!
//! A frame carries who sent it (room and user), its number and the send
//! time, so a listener can tell:
//! - latency: its clock on arrival − the sender's send time (one clock);
//! - misrouted: a frame from another room;
//! - lost: a hole in one speaker's frame numbers, unless the SFU changed
//!   who the listener hears in between (a `speakers` signal came: while
//!   users join, a newcomer nearer than a speaker takes its slot for a
//!   while), or the hole is [`LOSS_GAP_FRAMES`] or longer (the SFU
//!   re-chooses every half second, so a speaker it dropped is out at least
//!   that long).

use crate::histogram::{Histogram, Summary};
use crate::names::UserKey;
use crate::user::Phase;
use bytes::Bytes;
use plaza_server::voice::client::VoiceClient;
use plaza_shared::messages::ClientMessage;
use plaza_shared::voice::{MAX_SLOTS, VoiceSignal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A frame's payload: about what Opus makes of 20 ms of speech at 24 kbit/s.
const FRAME_BYTES: usize = 60;
const MAGIC: &[u8; 4] = b"PLZV";
/// 20 ms at 48 kHz.
const FRAME_TICKS: u32 = 960;
/// Holes in a speaker's frames shorter than this are loss (see the module docs).
pub const LOSS_GAP_FRAMES: u32 = 25;
/// How long a voice connection gets to come up.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// What every voice user adds to, shared by the run.
#[derive(Debug)]
pub struct VoiceLoad {
    /// Where the users' UDP sockets bind: loopback for a local server.
    pub ip: IpAddr,
    /// The share of the time each user talks (`--voice-talk`), in spurts.
    pub talk: f64,
    pub offered: AtomicU64,
    pub connected: AtomicU64,
    /// Connections that did not come up, or failed later.
    pub failed: AtomicU64,
    /// `ended` signals from the server.
    pub ended: AtomicU64,
    pub sent: AtomicU64,
    pub heard: AtomicU64,
    pub lost: AtomicU64,
    pub misrouted: AtomicU64,
    /// Frames the load tool itself dropped, not taking them in time.
    pub overflowed: AtomicU64,
    /// The run's start, and latencies (µs) by second since it.
    epoch: Instant,
    seconds: Mutex<Vec<Histogram>>,
}

/// Voice latency in one second of the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VoiceSecond {
    pub s: u32,
    pub frames: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The run's voice numbers, in result.json under `voice`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VoiceResult {
    /// The share of the time each user talked (`--voice-talk`), 0–100.
    pub talk_pct: f64,
    pub offered: u64,
    pub connected: u64,
    pub failed: u64,
    pub ended: u64,
    pub frames_sent: u64,
    pub frames_heard: u64,
    /// Frames missing inside a speaker's stream (see the module docs).
    pub lost: u64,
    /// Frames heard from another room's speaker.
    pub misrouted: u64,
    /// Frames the load tool dropped itself (a user's task too busy to take
    /// them): a sign the load tool, not the server, is short of CPU.
    pub dropped_by_load_tool: u64,
    /// A speaker's send → a listener's receive, same clock.
    pub latency_ms: Summary,
    /// The same, second by second.
    pub timeline: Vec<VoiceSecond>,
}

impl VoiceLoad {
    /// For a server at `host` (from its URL): users bind loopback for a
    /// loopback server, else every interface.
    pub fn new(host: &str, epoch: Instant, talk: f64) -> VoiceLoad {
        VoiceLoad {
            ip: plaza_server::voice::client::bind_ip_for(host),
            talk: talk.clamp(0.01, 1.0),
            offered: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            heard: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            epoch,
            seconds: Mutex::new(Vec::new()),
        }
    }

    fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.epoch).as_secs() as usize
    }

    /// Adds one user's latencies of second `s`.
    fn add_second(&self, s: usize, latencies: &Histogram) {
        if latencies.is_empty() {
            return;
        }
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        if seconds.len() <= s {
            seconds.resize_with(s + 1, Histogram::new);
        }
        seconds[s].merge(latencies);
    }

    pub fn result(&self) -> VoiceResult {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        let mut latency_us = Histogram::new();
        seconds.iter().for_each(|s| latency_us.merge(s));
        VoiceResult {
            talk_pct: self.talk * 100.0,
            offered: get(&self.offered),
            connected: get(&self.connected),
            failed: get(&self.failed),
            ended: get(&self.ended),
            frames_sent: get(&self.sent),
            frames_heard: get(&self.heard),
            lost: get(&self.lost),
            misrouted: get(&self.misrouted),
            dropped_by_load_tool: get(&self.overflowed),
            latency_ms: latency_us.summary_ms(),
            timeline: seconds
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.is_empty())
                .map(|(s, h)| {
                    let summary = h.summary_ms();
                    VoiceSecond { s: s as u32, frames: summary.count, p50_ms: summary.p50, p99_ms: summary.p99 }
                })
                .collect(),
        }
    }
}

/// One user's voice: its peer until the answer, then the task that sends
/// and listens. [`UserVoice::stop`] ends it with its counts added to the
/// run's; dropping it aborts it, counts lost.
#[derive(Debug)]
pub struct UserVoice {
    peer: Option<VoiceClient>,
    media: Option<tokio::task::JoinHandle<()>>,
    /// Dropped to tell the media task to stop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Counts the `speakers` signals: a hole across one is routing, not loss.
    routing: Arc<AtomicU64>,
}

impl Drop for UserVoice {
    fn drop(&mut self) {
        if let Some(media) = self.media.take() {
            media.abort();
        }
    }
}

impl UserVoice {
    /// A peer with a microphone and every slot, and the offer to send.
    pub async fn offer(load: &VoiceLoad) -> Result<(UserVoice, ClientMessage), String> {
        let peer = VoiceClient::new(load.ip, true, MAX_SLOTS).await.map_err(|e| e.to_string())?;
        let offer = ClientMessage::Voice(VoiceSignal::Offer { sdp: peer.offer.clone() }.into_message());
        load.offered.fetch_add(1, Ordering::Relaxed);
        Ok((UserVoice { peer: Some(peer), media: None, stop: None, routing: Arc::default() }, offer))
    }

    /// Stops the media task and waits (at most 2 s) for it to add what it
    /// measured to the run's numbers.
    pub async fn stop(mut self) {
        self.stop = None;
        if let Some(media) = self.media.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), media).await;
        }
    }

    /// A signal from the server: the answer starts the media.
    pub async fn on_signal(&mut self, signal: VoiceSignal, key: UserKey, load: &Arc<VoiceLoad>, phase: watch::Receiver<Phase>) {
        match signal {
            VoiceSignal::Answer { sdp } => {
                let Some(peer) = self.peer.take() else { return };
                if let Err(e) = peer.answer(sdp).await {
                    tracing::debug!(cause = %e, "voice answer");
                    load.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let (stop, stopped) = tokio::sync::oneshot::channel();
                self.stop = Some(stop);
                self.media = Some(tokio::spawn(media(peer, key, load.clone(), phase, self.routing.clone(), stopped)));
            }
            VoiceSignal::Ended { .. } => {
                load.ended.fetch_add(1, Ordering::Relaxed);
                self.peer = None;
                self.stop = None; // the task ends itself, counts kept
            }
            VoiceSignal::Speakers { .. } => {
                self.routing.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

fn frame(key: UserKey, number: u32, send_us: u64) -> Bytes {
    let mut payload = Vec::with_capacity(FRAME_BYTES);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&key.room.to_be_bytes());
    payload.extend_from_slice(&key.user.to_be_bytes());
    payload.extend_from_slice(&number.to_be_bytes());
    payload.extend_from_slice(&send_us.to_be_bytes());
    payload.resize(FRAME_BYTES, 0);
    Bytes::from(payload)
}

/// `(speaker, frame number, send time µs)`; `None` for a payload that is
/// not a load-tool frame.
fn read_frame(payload: &[u8]) -> Option<(UserKey, u32, u64)> {
    if payload.len() < 24 || &payload[..4] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    let send_us = u64::from_be_bytes(payload[16..24].try_into().expect("8 bytes"));
    Some((UserKey { room: u32_at(4), user: u32_at(8) }, u32_at(12), send_us))
}

/// When a voice user talks: spurts of [`SPURT_S`] seconds, with pauses
/// between them long enough that it talks `fraction` of the time.
#[derive(Debug)]
struct Spurts {
    rng: plaza_shared::rng::SplitMix,
    fraction: f64,
    talking: bool,
    until: Instant,
}

/// A talk spurt's length, seconds (uniform).
const SPURT_S: (f64, f64) = (1.0, 4.0);

impl Spurts {
    /// Starts at a random point of a talk-pause cycle.
    fn new(seed: u64, fraction: f64, now: Instant) -> Spurts {
        let mut rng = plaza_shared::rng::SplitMix::new(seed);
        let talking = rng.unit() < fraction;
        let mut s = Spurts { rng, fraction, talking, until: now };
        let first = s.next_len();
        s.until = now + first.mul_f64(s.rng.unit());
        s
    }

    fn next_len(&mut self) -> Duration {
        let talk = self.rng.range(SPURT_S.0, SPURT_S.1);
        if self.talking {
            return Duration::from_secs_f64(talk);
        }
        let mean_talk = (SPURT_S.0 + SPURT_S.1) / 2.0;
        let mean_pause = mean_talk * (1.0 - self.fraction) / self.fraction;
        Duration::from_secs_f64(mean_pause * self.rng.range(0.5, 1.5))
    }

    /// Whether it talks at `now`.
    fn talking(&mut self, now: Instant) -> bool {
        if self.fraction >= 1.0 {
            return true;
        }
        while now >= self.until {
            self.talking = !self.talking;
            let len = self.next_len();
            self.until += len;
        }
        self.talking
    }
}

/// Per speaker heard, the last frame number and the routing count then:
/// holes are lost frames unless routing changed across them (see the
/// module docs).
#[derive(Debug, Default)]
struct Streams {
    last: HashMap<UserKey, (u32, u64)>,
}

impl Streams {
    /// Frames lost before `number` from `speaker`, heard at routing count
    /// `routing`.
    fn heard(&mut self, speaker: UserKey, number: u32, routing: u64) -> u32 {
        match self.last.insert(speaker, (number, routing)) {
            Some((last, then)) if number > last + 1 && number - last < LOSS_GAP_FRAMES && then == routing => number - last - 1,
            Some((last, then)) if number <= last => {
                // Late or repeated: keep the newest.
                self.last.insert(speaker, (last, then));
                0
            }
            _ => 0,
        }
    }
}

async fn media(mut peer: VoiceClient, key: UserKey, load: Arc<VoiceLoad>, mut phase: watch::Receiver<Phase>, routing: Arc<AtomicU64>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    if let Err(e) = peer.connected(CONNECT_WITHIN).await {
        tracing::debug!(cause = %e, "voice did not connect");
        load.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    load.connected.fetch_add(1, Ordering::Relaxed);
    let mut every = tokio::time::interval(Duration::from_millis(20));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut number: u32 = 0;
    let mut spurts = Spurts::new(u64::from(key.room) << 32 | u64::from(key.user), load.talk, Instant::now());
    let mut streams = Streams::default();
    // This second's latencies, added to the run's when it ends.
    let (mut second, mut this_second) = (load.second(Instant::now()), Histogram::new());
    let (mut heard, mut lost, mut misrouted) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = every.tick() => {
                let now = *phase.borrow_and_update();
                if now == Phase::Close {
                    break;
                }
                // Frame numbers count frames sent, so a pause is no hole.
                if now == Phase::Run && spurts.talking(Instant::now()) {
                    if peer.send(number.wrapping_mul(FRAME_TICKS), frame(key, number, crate::user::unix_us())).await.is_err() {
                        break;
                    }
                    number += 1;
                    load.sent.fetch_add(1, Ordering::Relaxed);
                }
                if peer.ended() {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            got = peer.recv() => {
                let Some(got) = got else { break };
                let Some((speaker, n, send_us)) = read_frame(&got.packet.payload) else { continue };
                heard += 1;
                if speaker.room != key.room {
                    misrouted += 1;
                }
                lost += u64::from(streams.heard(speaker, n, routing.load(Ordering::Relaxed)));
                let latency = crate::user::unix_us().saturating_sub(send_us);
                let now = load.second(got.at);
                if now != second {
                    load.add_second(second, &this_second);
                    (second, this_second) = (now, Histogram::new());
                }
                this_second.record(latency);
            }
        }
    }
    load.add_second(second, &this_second);
    load.overflowed.fetch_add(peer.overflowed(), Ordering::Relaxed);
    load.heard.fetch_add(heard, Ordering::Relaxed);
    load.lost.fetch_add(lost, Ordering::Relaxed);
    load.misrouted.fetch_add(misrouted, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_says_who_sent_it_which_and_when() {
        let key = UserKey { room: 3, user: 17 };
        let payload = frame(key, 99, 1_234_567);
        assert_eq!(payload.len(), FRAME_BYTES);
        assert_eq!(read_frame(&payload), Some((key, 99, 1_234_567)));
        assert_eq!(read_frame(b"not a frame at all, no magic"), None);
    }

    #[test]
    fn voice_users_talk_their_share_of_the_time_in_spurts() {
        let start = Instant::now();
        for fraction in [0.3, 0.6] {
            let mut s = Spurts::new(7, fraction, start);
            let (mut talking, mut spurts, mut longest) = (0u32, 0u32, 0u32);
            let mut run = 0u32;
            let mut was = false;
            // An hour in 20 ms frames.
            for f in 0..180_000u32 {
                let now = s.talking(start + Duration::from_millis(u64::from(f) * 20));
                talking += u32::from(now);
                if now {
                    run += 1;
                    longest = longest.max(run);
                } else {
                    run = 0;
                }
                spurts += u32::from(now && !was);
                was = now;
            }
            let share = f64::from(talking) / 180_000.0;
            assert!((share - fraction).abs() < 0.05, "talked {share:.3} of the time, asked {fraction}");
            assert!(longest <= 200, "a spurt is at most 4 s: {longest} frames");
            // Talking `fraction` of an hour in spurts of 2.5 s on average.
            let expected = 3600.0 * fraction / 2.5;
            assert!((f64::from(spurts) - expected).abs() < 0.2 * expected, "{spurts} spurts in an hour, about {expected} expected");
        }
        let mut always = Spurts::new(7, 1.0, start);
        assert!((0..1000u64).all(|f| always.talking(start + Duration::from_millis(f * 20))));
    }

    #[test]
    fn short_holes_are_loss_and_long_ones_are_the_sfu_choosing_others() {
        let a = UserKey { room: 1, user: 1 };
        let b = UserKey { room: 1, user: 2 };
        let mut s = Streams::default();
        assert_eq!(s.heard(a, 10, 0), 0, "the first frame heard from a speaker");
        assert_eq!(s.heard(a, 11, 0), 0);
        assert_eq!(s.heard(a, 14, 0), 2, "12 and 13 are lost");
        assert_eq!(s.heard(a, 13, 0), 0, "late: not counted twice");
        assert_eq!(s.heard(a, 15, 0), 0, "still after 14");
        assert_eq!(s.heard(a, 15 + LOSS_GAP_FRAMES, 0), 0, "a long hole: out of the slots for a while");
        assert_eq!(s.heard(b, 3, 0), 0, "each speaker on its own");
        assert_eq!(s.heard(b, 9, 1), 0, "the listener's slots changed in the hole: routing, not loss");
        assert_eq!(s.heard(b, 12, 1), 2, "and after that, holes count again");
    }
}
