//! Voice end to end: two network sessions in one room of a real server,
//! each with detached audio (rings the test plays and listens to in the
//! devices' place). What one says through its microphone comes out of the
//! other's speakers, placed where the speaker's avatar stands; nobody hears
//! themselves, not even through someone's loudspeakers (the echo is
//! cancelled); a server with voice off is said so at once, and the rest of
//! the session carries on.

mod common;

use common::{RestartableServer, server};
use plaza_client::network::session::{self, SessionConfig};
use plaza_client::network::voice::{VoiceControl, VoiceScene, VoiceState, VoiceStatus, voice_link};
use plaza_client::network::{NetEvent, NetInput};
use plaza_shared::pose::Pose;
use plaza_shared::quality::{Platform, QualityPreset};
use plaza_shared::telemetry::{FrameAggregator, TelemetryReport};
use plaza_voice::devices::{AudioIo, Ring};
use plaza_voice::level::rms;
use plaza_voice::spatial::Listener;
use plaza_voice::test_signal::Babble;
use plaza_voice::{FRAME_SAMPLES, SAMPLE_RATE};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

struct Peer {
    events: mpsc::Receiver<NetEvent>,
    poses: watch::Sender<Option<Pose>>,
    commands: mpsc::Sender<plaza_client::network::NetCommand>,
    voice: VoiceControl,
    mic: Ring,
    speakers: Ring,
    /// Where a sound card reports what it played (for the echo canceller).
    played: Ring,
    /// Telemetry reports to post (with what voice sounded like since the last).
    reports: mpsc::Sender<TelemetryReport>,
}

impl Peer {
    fn start(server: &str, room: &str, name: &str) -> Peer {
        let (commands, command_rx) = mpsc::channel(64);
        let (poses, pose_rx) = watch::channel(None);
        let (event_tx, events) = mpsc::channel(256);
        let audio = AudioIo::detached(true);
        let (mic, speakers, played) = (audio.mic.clone().expect("a detached microphone"), audio.speakers.clone(), audio.played.clone());
        let (voice, port) = voice_link(audio, true, Default::default());
        // Test peers wear headsets: nothing to cancel, and the steady tones
        // they say would be taken for noise by the suppressor.
        voice.mic.send_modify(|m| m.cleanup = false);
        let config = SessionConfig::new(server, room, name);
        let (reports, report_rx) = mpsc::channel(4);
        tokio::spawn(session::run_with_telemetry(config, NetInput { commands: command_rx, pose: pose_rx, voice: Some(port) }, event_tx, Some(report_rx)));
        Peer { events, poses, commands, voice, mic, speakers, played, reports }
    }

    /// A peer in `room` whose call is on (within 20 s).
    async fn in_call(server: &str, room: &str, name: &str) -> Peer {
        let mut peer = Peer::start(server, room, name);
        peer.joined().await;
        peer.voice_until(Duration::from_secs(20), |s| s.state == VoiceState::On).await;
        peer
    }

    /// Waits for the room (a reconnect included); returns our avatar id.
    async fn joined(&mut self) -> u32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await.expect("joined within 30 s") {
                Some(NetEvent::Joined(j)) => return j.you,
                Some(_) => {}
                None => panic!("the session stopped"),
            }
        }
    }

    /// Waits until the voice status satisfies `want`.
    async fn voice_until(&mut self, wait: Duration, want: impl Fn(&VoiceStatus) -> bool) -> VoiceStatus {
        let mut status = self.voice.status.clone();
        let result = tokio::time::timeout(wait, status.wait_for(|s| want(s))).await;
        match result {
            Ok(Ok(s)) => s.clone(),
            _ => panic!("voice status not reached within {wait:?}; it is {:?}", *self.voice.status.borrow()),
        }
    }

    fn stand_at(&self, x: f32) {
        self.poses.send_replace(Some(Pose { p: [x, 0.0, 0.0], ..Pose::default() }));
    }
}

/// The voice telemetry the server has taken, across all desktop reports.
#[derive(Debug, Default)]
struct VoiceMetrics {
    played: f64,
    recovered: f64,
    lost: f64,
    stalled: f64,
    sent: f64,
}

impl VoiceMetrics {
    fn heard(&self) -> f64 {
        self.played + self.recovered + self.lost + self.stalled
    }

    fn bad(&self) -> f64 {
        self.lost + self.stalled
    }
}

/// `/metrics`' voice telemetry, once `ready` (within 10 s).
async fn voice_metrics(base: &str, ready: impl Fn(&VoiceMetrics) -> bool) -> VoiceMetrics {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        let value = |series: &str| text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0);
        let frames = |outcome: &str| value(&format!("plaza_client_voice_frames_total{{platform=\"desktop\",outcome=\"{outcome}\"}} "));
        let m = VoiceMetrics {
            played: frames("played"),
            recovered: frames("recovered"),
            lost: frames("lost"),
            stalled: frames("stalled"),
            sent: value("plaza_client_voice_mic_frames_total{platform=\"desktop\",outcome=\"sent\"} "),
        };
        if ready(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "voice telemetry not in /metrics within 10 s: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tone(hz: f32, frame: usize) -> Vec<f32> {
    (0..FRAME_SAMPLES).map(|i| 0.4 * (std::f32::consts::TAU * hz * (frame * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32).sin()).collect()
}

/// Frames `frames` of a tone said into `mic` at a microphone's pace, and the
/// left and right RMS of the second half of what `speakers` played meanwhile.
async fn listen(clock: &mut tokio::time::Interval, mic: &Ring, speakers: &Ring, frames: std::ops::Range<usize>) -> (f32, f32) {
    let mut heard = Vec::new();
    let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
    for f in frames {
        clock.tick().await;
        mic.push(&tone(440.0, f));
        if speakers.take_exact(&mut frame) {
            heard.extend_from_slice(&frame);
        }
    }
    ears(&heard[heard.len() / 2..])
}

/// Left and right RMS of interleaved stereo.
fn ears(stereo: &[f32]) -> (f32, f32) {
    let left: Vec<f32> = stereo.chunks_exact(2).map(|f| f[0]).collect();
    let right: Vec<f32> = stereo.chunks_exact(2).map(|f| f[1]).collect();
    (rms(&left), rms(&right))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_to_the_right_comes_out_of_the_right_speaker_and_nobody_hears_themselves() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let base = format!("http://{addr}");
    let mut ann = Peer::start(&base, "voice-room", "Ann");
    let ann_id = ann.joined().await;
    let mut ben = Peer::start(&base, "voice-room", "Ben");
    let ben_id = ben.joined().await;
    // Ann at the origin facing −z (her right is +x); Ben 3 m to her right.
    ann.stand_at(0.0);
    ben.stand_at(3.0);
    ann.voice.scene.send_replace(VoiceScene { listener: Listener { position: [0.0, 1.6, 0.0], right: [1.0, 0.0, 0.0] }, avatars: vec![(ben_id, [3.0, 1.6, 0.0])], ..VoiceScene::default() });
    ben.voice.scene.send_replace(VoiceScene { listener: Listener { position: [3.0, 1.6, 0.0], right: [1.0, 0.0, 0.0] }, avatars: vec![(ann_id, [0.0, 1.6, 0.0])], ..VoiceScene::default() });
    let on = |s: &VoiceStatus| s.state == VoiceState::On && s.mic && s.sending;
    ann.voice_until(Duration::from_secs(20), on).await;
    ben.voice_until(Duration::from_secs(20), on).await;
    // The SFU puts Ben in one of Ann's slots once it has their positions.
    ann.voice_until(Duration::from_secs(10), |s| s.slots.contains(&Some(ben_id))).await;

    // Ben says a tone for 3 s, at the pace a microphone would; Ann is quiet.
    let (mut ann_heard, mut ben_heard) = (Vec::new(), Vec::new());
    let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut ann_saw_ben_speaking = false;
    for f in 0..150 {
        clock.tick().await;
        ben.mic.push(&tone(440.0, f));
        ann.mic.push(&[0.0; FRAME_SAMPLES]);
        // Each plays one frame a tick, as a sound card would.
        if ann.speakers.take_exact(&mut frame) {
            ann_heard.extend_from_slice(&frame);
        }
        if ben.speakers.take_exact(&mut frame) {
            ben_heard.extend_from_slice(&frame);
        }
        ann_saw_ben_speaking |= ann.voice.status.borrow().speaking.contains(&ben_id);
    }
    // The last second: the voice has come through by then.
    let last_second = |heard: &[f32]| heard[heard.len().saturating_sub(2 * SAMPLE_RATE as usize)..].to_vec();
    let (left, right) = ears(&last_second(&ann_heard));
    assert!(right > 0.05, "Ann hears Ben: right ear RMS {right} (left {left}), {} samples", ann_heard.len());
    assert!(right > 2.0 * left, "Ben stands to Ann's right: right {right} against left {left}");
    assert!(ann_saw_ben_speaking, "Ann's HUD shows Ben speaking");
    let quality = ann.voice.status.borrow().quality.expect("the stats panel's voice line after 3 s");
    assert_eq!(quality.voices, 1, "one voice playing: {quality:?}");
    assert!((40..=300).contains(&quality.delay_ms), "{quality:?}");
    assert!(quality.missing_pct < 10.0, "on loopback little is missing: {quality:?}");
    let (bl, br) = ears(&last_second(&ben_heard));
    assert!(bl < 0.001 && br < 0.001, "Ben does not hear himself (and Ann is silent): {bl} {br}");
    assert!(ben.voice.status.borrow().self_speaking, "Ben's own meter shows him talking");

    // Their next telemetry reports tell the server what the call sounded like.
    let frames = || {
        let mut agg = FrameAggregator::new(Platform::Desktop);
        agg.record(16.0);
        agg.take(QualityPreset::High, "test", 1, 0).expect("a frame")
    };
    ann.reports.send(frames()).await.unwrap();
    ben.reports.send(frames()).await.unwrap();
    let voice = voice_metrics(&base, |m| m.sent >= 140.0 && m.heard() >= 100.0).await;
    assert!(voice.sent <= 151.0, "Ben's 150 frames (one more may be on its way): {voice:?}");
    assert!(voice.heard() <= 160.0, "Ann heard Ben's, and nobody heard silent Ann: {voice:?}");
    assert!(voice.bad() / voice.heard() < 0.1, "on loopback little is lost or stalled: {voice:?}");

    // Ann turns round: Ben is now on her left.
    ann.voice.scene.send_replace(VoiceScene { listener: Listener { position: [0.0, 1.6, 0.0], right: [-1.0, 0.0, 0.0] }, avatars: vec![(ben_id, [3.0, 1.6, 0.0])], ..VoiceScene::default() });
    let mut turned = Vec::new();
    for f in 150..200 {
        clock.tick().await;
        ben.mic.push(&tone(440.0, f));
        if ann.speakers.take_exact(&mut frame) {
            turned.extend_from_slice(&frame);
        }
    }
    let (left, right) = ears(&turned[turned.len() / 2..]);
    assert!(left > 2.0 * right, "turned round, Ben is on the left: left {left} right {right}");

    // Half the volume, then Ben muted: Ann's choices, not Ben's.
    let placed = VoiceScene { listener: Listener { position: [0.0, 1.6, 0.0], right: [1.0, 0.0, 0.0] }, avatars: vec![(ben_id, [3.0, 1.6, 0.0])], ..VoiceScene::default() };
    ann.voice.scene.send_replace(VoiceScene { volume: 0.5, ..placed.clone() });
    let half = listen(&mut clock, &ben.mic, &ann.speakers, 200..250).await;
    // Half (0.5) give or take what a busy box conceals in either window.
    assert!((0.3..0.7).contains(&(half.1 / right.max(left))), "half the volume: {half:?} against {}", right.max(left));
    // Ben's own volume at half, everyone's back at full: the same.
    ann.voice.scene.send_replace(VoiceScene { volumes: vec![(ben_id, 0.5)], ..placed.clone() });
    let own_half = listen(&mut clock, &ben.mic, &ann.speakers, 300..350).await;
    assert!((0.3..0.7).contains(&(own_half.1 / right.max(left))), "Ben at half: {own_half:?} against {}", right.max(left));
    ann.voice.scene.send_replace(VoiceScene { muted: vec![ben_id], ..placed });
    let muted = listen(&mut clock, &ben.mic, &ann.speakers, 250..300).await;
    assert!(muted.0 == 0.0 && muted.1 == 0.0, "Ben muted: {muted:?}");
    // The SFU was told: Ben's slot is free for someone else.
    ann.voice_until(Duration::from_secs(5), |s| !s.slots.contains(&Some(ben_id))).await;
    ann.voice.scene.send_replace(VoiceScene::default());
    ann.voice_until(Duration::from_secs(5), |s| s.slots.contains(&Some(ben_id))).await;

    // Ann speaks up, then mutes: Ben hears her, then nothing.
    let mut ben_heard = Vec::new();
    for f in 200..300 {
        clock.tick().await;
        if f == 250 {
            ann.voice.mic.send_modify(|m| m.muted = true);
        }
        ann.mic.push(&tone(300.0, f));
        if ben.speakers.take_exact(&mut frame) {
            ben_heard.extend_from_slice(&frame);
        }
    }
    assert!(!ann.voice.status.borrow().sending, "muted");
    let half = ben_heard.len() / 2;
    let (before, after) = (ears(&ben_heard[half - 2 * 10 * FRAME_SAMPLES..half]), ears(&ben_heard[ben_heard.len() - 2 * 20 * FRAME_SAMPLES..]));
    assert!(before.0 > 0.05, "Ben hears Ann before she mutes: {before:?}");
    assert!(after.0 < 0.001 && after.1 < 0.001, "and nothing once she has: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_voice_off_is_said_at_once_and_the_room_goes_on() {
    let mut config = plaza_server::ServerConfig::ephemeral();
    config.voice.max_peers = 0;
    let (addr, _stop) = server(config).await;
    let mut ann = Peer::start(&format!("http://{addr}"), "quiet-room", "Ann");
    ann.joined().await;
    let status = ann.voice_until(Duration::from_secs(5), |s| matches!(s.state, VoiceState::Failed(_))).await;
    let VoiceState::Failed(why) = status.state else { unreachable!() };
    assert!(why.contains("voice"), "the reason names voice: {why}");
    // The session itself is untouched: chat still goes through.
    ann.commands.send(plaza_client::network::NetCommand::Chat { id: "c1".into(), text: "anyone?".into() }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ann.events.recv()).await.expect("chat acknowledged within 10 s") {
            Some(NetEvent::ChatAck(id)) if id == "c1" => break,
            Some(_) => {}
            None => panic!("the session stopped"),
        }
    }
}

/// The client sends nothing while quiet; the SFU calls a peer gone after
/// 15 s without a packet or an ICE keepalive. A quiet listener must keep
/// its call on the keepalives alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_member_keeps_its_voice_past_the_sfus_silence_limit() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let ann = Peer::in_call(&format!("http://{addr}"), "hush-room", "Ann").await;
    let mut status = ann.voice.status.clone();
    status.mark_unchanged();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(17);
    while tokio::time::Instant::now() < quiet_until {
        clock.tick().await;
        ann.mic.push(&[0.0; FRAME_SAMPLES]);
        let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
        ann.speakers.take_exact(&mut frame);
        if status.has_changed().unwrap_or(false) {
            let s = status.borrow_and_update().clone();
            assert_eq!(s.state, VoiceState::On, "voice dropped while quiet: {s:?}");
        }
    }
}

/// The microphone's gate, as the listener set it: a quiet voice under it
/// stays home, over it goes out; the meter shows its level either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_keeps_a_voice_under_it_home_and_the_meter_shows_its_level() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let base = format!("http://{addr}");
    let mut ann = Peer::start(&base, "gate-room", "Ann");
    ann.joined().await;
    let mut ben = Peer::start(&base, "gate-room", "Ben");
    let ben_id = ben.joined().await;
    let on = |s: &VoiceStatus| s.state == VoiceState::On;
    ann.voice_until(Duration::from_secs(20), on).await;
    ben.voice_until(Duration::from_secs(20), on).await;
    ann.voice_until(Duration::from_secs(10), |s| s.slots.contains(&Some(ben_id))).await;
    // Ben's quiet voice: a tone at 0.02 RMS, about −34 dBFS.
    let quiet = |f: usize| tone(440.0, f).iter().map(|s| s * 0.02 / 0.4 * std::f32::consts::SQRT_2).collect::<Vec<f32>>();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
    let mut say = async |ben: &Peer, ann: &Peer, frames: std::ops::Range<usize>| {
        let mut heard = Vec::new();
        let mut meter = Vec::new();
        for f in frames {
            clock.tick().await;
            ben.mic.push(&quiet(f));
            if ann.speakers.take_exact(&mut frame) {
                heard.extend_from_slice(&frame);
            }
            meter.extend(ben.voice.status.borrow().mic_db);
        }
        (ears(&heard[heard.len() / 2..]), meter)
    };
    ben.voice.mic.send_modify(|m| m.gate_db = -30.0);
    let ((left, right), meter) = say(&ben, &ann, 0..100).await;
    assert!(left < 1e-4 && right < 1e-4, "under a −30 dBFS gate nothing goes out: {left} {right}");
    assert!(!ben.voice.status.borrow().self_speaking);
    let last = *meter.last().expect("the meter reads");
    assert!((-37.0..=-31.0).contains(&last), "the meter shows about −34 dBFS: {last}");
    ben.voice.mic.send_modify(|m| m.gate_db = -46.0);
    let ((left, right), _) = say(&ben, &ann, 100..200).await;
    assert!(left.max(right) > 0.005, "over a −46 dBFS gate it does: {left} {right}");
}

/// A sound card with no working clock (it takes whatever is queued, as
/// soon as it is: ALSA's null device) is noticed and said; one at real time
/// is not, and the warning goes once the card keeps time again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_without_a_working_clock_are_noticed() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let ann = Peer::in_call(&format!("http://{addr}"), "pace-room", "Ann").await;
    let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
    // A card at real time takes a frame every 20 ms; one with no clock
    // drains the queue every 2 ms.
    let mut play = async |ann: &Peer, clockless: bool, seconds: u64| {
        let mut clock = tokio::time::interval(Duration::from_millis(if clockless { 2 } else { 20 }));
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while tokio::time::Instant::now() < until {
            clock.tick().await;
            while ann.speakers.take_exact(&mut frame) && clockless {}
        }
        ann.voice.status.borrow().speaker_pace
    };
    // 6 s at real time, more than a 5 s window; then 11 s of each, so the
    // last window read lies wholly within it.
    assert_eq!(play(&ann, false, 6).await, None, "a card at real time is fine");
    let pace = play(&ann, true, 11).await.expect("a card with no clock is noticed");
    assert!((1.8..=2.0).contains(&pace), "the mixer's most, two frames a step: {pace}");
    assert_eq!(play(&ann, false, 11).await, None, "and forgotten once it keeps time again");
}

/// Voice is per room: going to another room ends the call and starts one
/// there at once, never through "lost; retrying".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_room_starts_another_call_at_once() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let mut ann = Peer::in_call(&format!("http://{addr}"), "room-one", "Ann").await;
    let mut status = ann.voice.status.clone();
    status.mark_unchanged();
    let started = tokio::time::Instant::now();
    ann.commands.send(plaza_client::network::NetCommand::JoinRoom { room: "room-two".into() }).await.unwrap();
    ann.joined().await;
    let mut seen = Vec::new();
    loop {
        tokio::time::timeout(Duration::from_secs(20), status.changed()).await.expect("voice on in the new room within 20 s").unwrap();
        let state = status.borrow_and_update().state.clone();
        seen.push(state.clone());
        if state == VoiceState::On {
            break;
        }
    }
    assert!(!seen.iter().any(|s| matches!(s, VoiceState::Failed(_))), "never lost on the way: {seen:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// A server restart ends the socket and the SFU with it; the next socket's
/// join brings voice back, and what is said is heard again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_comes_back_after_a_server_restart() {
    let mut server = RestartableServer::start(plaza_server::ServerConfig { drain_grace: Duration::from_millis(50), ..plaza_server::ServerConfig::ephemeral() }).await;
    let base = server.base();
    let mut ann = Peer::start(&base, "restart-room", "Ann");
    ann.joined().await;
    let mut ben = Peer::start(&base, "restart-room", "Ben");
    ben.joined().await;
    ann.voice_until(Duration::from_secs(20), |s| s.state == VoiceState::On).await;

    server.stop().await;
    ann.voice_until(Duration::from_secs(10), |s| s.state != VoiceState::On).await;
    // Back on the same port (same secret: tokens stay good).
    server.restart().await;
    let ben_id = ben.joined().await;
    ann.joined().await;
    ann.stand_at(0.0);
    ben.stand_at(3.0);
    ann.voice_until(Duration::from_secs(30), |s| s.state == VoiceState::On && s.slots.contains(&Some(ben_id))).await;
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let heard = listen(&mut clock, &ben.mic, &ann.speakers, 0..100).await;
    assert!(heard.0.max(heard.1) > 0.05, "Ann hears Ben on the new server: {heard:?}");
}

/// A loudspeaker and a microphone in one room: each tick it plays a frame
/// from the speakers' ring (reporting it as played, as the output callback
/// does, unless told not to) and the microphone hears it back
/// `ECHO_DELAY` later at `ECHO_GAIN`.
struct LoudspeakerRoom {
    frame: Vec<f32>,
    delay_line: std::collections::VecDeque<f32>,
    report: bool,
}

const ECHO_DELAY: usize = 48 * 40;
const ECHO_GAIN: f32 = 0.6;

impl LoudspeakerRoom {
    fn new() -> LoudspeakerRoom {
        LoudspeakerRoom { frame: vec![0.0; 2 * FRAME_SAMPLES], delay_line: std::iter::repeat_n(0.0, ECHO_DELAY).collect(), report: true }
    }

    /// One 20 ms tick of `peer`'s sound card; the microphone hears only the echo.
    fn tick(&mut self, peer: &Peer) {
        if !peer.speakers.take_exact(&mut self.frame) {
            self.frame.fill(0.0); // ran dry: silence played
        }
        if self.report {
            peer.played.push(&self.frame);
        }
        self.delay_line.extend(self.frame.chunks_exact(2).map(|f| ECHO_GAIN * 0.5 * (f[0] + f[1])));
        let heard: Vec<f32> = self.delay_line.drain(..FRAME_SAMPLES).collect();
        peer.mic.push(&heard);
    }
}

/// Ann listens on loudspeakers: her microphone hears Ben's voice (speech-
/// like babble: a steady tone would be taken for noise, echo or not).
/// Without echo cancellation she sends it back and Ben hears himself; with
/// it (the default; switched on mid-call here) her microphone stays quiet;
/// and the control: with it on but her sound card not reporting what it
/// played, the echo is back (it was the canceller, not the suppressor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loudspeakers_the_echo_is_cancelled_and_nobody_hears_themselves_back() {
    let (addr, _stop) = server(plaza_server::ServerConfig::ephemeral()).await;
    let base = format!("http://{addr}");
    let mut ann = Peer::start(&base, "echo-room", "Ann");
    let ann_id = ann.joined().await;
    let mut ben = Peer::start(&base, "echo-room", "Ben");
    let ben_id = ben.joined().await;
    ann.stand_at(0.0);
    ben.stand_at(3.0);
    ann.voice.scene.send_replace(VoiceScene { listener: Listener { position: [0.0, 1.6, 0.0], right: [1.0, 0.0, 0.0] }, avatars: vec![(ben_id, [3.0, 1.6, 0.0])], ..VoiceScene::default() });
    ben.voice.scene.send_replace(VoiceScene { listener: Listener { position: [3.0, 1.6, 0.0], right: [1.0, 0.0, 0.0] }, avatars: vec![(ann_id, [0.0, 1.6, 0.0])], ..VoiceScene::default() });
    ann.voice_until(Duration::from_secs(20), |s| s.state == VoiceState::On && s.slots.contains(&Some(ben_id))).await;
    ben.voice_until(Duration::from_secs(20), |s| s.state == VoiceState::On && s.slots.contains(&Some(ann_id))).await;

    let mut room = LoudspeakerRoom::new();
    let mut ben_voice = Babble::new(1);
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut frame = vec![0.0; 2 * FRAME_SAMPLES];
    // Ben talks for `frames` ticks while Ann's loudspeaker room runs;
    // returns the RMS of what Ben heard over the last 2 s, and in how many
    // of those 100 frames Ann's meter showed her talking.
    let mut talk = async |frames: usize, room: &mut LoudspeakerRoom| {
        let mut ben_heard = Vec::new();
        let mut ann_talking = 0;
        for f in 0..frames {
            clock.tick().await;
            ben.mic.push(&ben_voice.take(FRAME_SAMPLES));
            room.tick(&ann);
            let last = f + 100 >= frames;
            if ben.speakers.take_exact(&mut frame) && last {
                ben_heard.extend_from_slice(&frame);
            }
            if last && ann.voice.status.borrow().self_speaking {
                ann_talking += 1;
            }
        }
        (rms(&ben_heard), ann_talking)
    };
    ann.voice.mic.send_modify(|m| m.cleanup = false);
    let (echo_off, talking_off) = talk(200, &mut room).await;
    assert!(echo_off > 0.006, "no cancelling: Ben hears himself back through Ann's loudspeaker: {echo_off}");
    assert!(talking_off > 50, "and Ann's meter shows her talking with Ben's voice: {talking_off} of 100 frames");

    ann.voice.mic.send_modify(|m| m.cleanup = true);
    // A few seconds to learn the room, then the last 2 s. One opening of
    // the gate (300 ms held) may slip through on a busy box; no more.
    let (echo_on, talking_on) = talk(400, &mut room).await;
    assert!(echo_on < 0.2 * echo_off, "cancelled: Ben hears {echo_on} of himself, against {echo_off} without");
    assert!(talking_on < 25, "and Ann's microphone stays quiet: talking in {talking_on} of 100 frames");

    // The control: still on, but Ann's card stops saying what it played.
    room.report = false;
    let (echo_blind, _) = talk(200, &mut room).await;
    assert!(echo_blind > 0.5 * echo_off, "with nothing to cancel against, the echo is back: {echo_blind} against {echo_off}");
}
