//! Voice on the network thread: one call per socket, to the server's SFU.
//!
//! Once the session is in a room it starts a [`VoiceCall`]: a WebRTC peer
//! (`plaza_server::voice::client`) with the microphone as its one sending
//! track and [`MAX_SLOTS`] listening slots, signaled through the WebSocket
//! (the relay carries [`VoiceSignal`]s both ways). Every 20 ms the call
//! encodes what the microphone gave, files what the slots heard into their
//! jitter buffers, and mixes one frame for the speakers, each voice placed
//! at its avatar as the ECS last described the scene ([`VoiceScene`]). A
//! call that fails is offered again, backing off; a socket that ends takes
//! its call with it, and the next socket starts another.
//!
//! The microphone is first cleaned of the speakers' echo and the room's
//! noise ([`plaza_voice::mic`]; [`MicControl::cleanup`] switches it), then
//! sent only while it hears speech (a level gate with a 300 ms hold,
//! [`plaza_voice::level`]): the SFU hears who is talking by their packets
//! and gives them the slots first.
//!
//! The ECS and the call share three small channels ([`voice_link`]): the
//! scene and the microphone's switches in, the [`VoiceStatus`] out. Nothing in a
//! frame waits on voice.

use plaza_server::voice::client::{VoiceClient, bind_ip_for};
use plaza_shared::voice::{MAX_SLOTS, OFFER_EVERY_MS, SlotSpeaker, VoiceSignal};
use plaza_shared::telemetry::VoiceTally;
use plaza_voice::FRAME_SAMPLES;
use plaza_voice::jitter::JitterStats;
use plaza_voice::codec::Encoder;
use plaza_voice::device_list::DeviceChoice;
use plaza_voice::devices::AudioIo;
use plaza_voice::level::{Activity, rms};
use plaza_voice::mic::CleanMic;
use plaza_voice::mix::{Mixer, STEREO_FRAME};
use plaza_voice::spatial::Listener;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long an offer waits for its answer, and the connection to come up.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// The first wait before offering again after a failed call; it doubles
/// up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_AT_MOST: Duration = Duration::from_secs(30);
/// The speakers' ring is kept between these (40–80 ms): enough to ride out
/// a late wakeup of this thread or a sound card's large period, little
/// enough not to be heard as delay.
const SPEAKER_LEAD_FRAMES: (usize, usize) = (2, 4);
/// Microphone frames that may go out in one 20 ms step: a device period
/// of up to 160 ms arrives as one block.
const MIC_BURST_FRAMES: usize = 8;
/// How fast the speakers take what is mixed for them: frames mixed per
/// 20 ms step, over windows of [`SpeakerPace::WINDOW`]. Per step, not per
/// second of wall time, so a busy machine that delays the steps is not
/// taken for a fast card.
#[derive(Debug)]
struct SpeakerPace {
    since: Instant,
    frames: u32,
    steps: u32,
    /// The last window's pace, when it was off.
    off: Option<f32>,
    warned: bool,
}

impl SpeakerPace {
    const WINDOW: Duration = Duration::from_secs(5);
    /// Within this nothing is said. A card at real time takes one frame a
    /// step, and up to 1.6 when this thread's steps run a third late; one
    /// with no clock takes the most the mixer makes, two (ALSA's null
    /// device).
    const FINE: std::ops::RangeInclusive<f32> = 0.6..=1.6;

    fn new(now: Instant) -> SpeakerPace {
        SpeakerPace { since: now, frames: 0, steps: 0, off: None, warned: false }
    }

    /// `frames` were mixed for the speakers this step.
    fn frames(&mut self, frames: u32) {
        self.frames += frames;
        self.steps += 1;
        if self.since.elapsed() < Self::WINDOW {
            return;
        }
        let pace = self.frames as f32 / self.steps as f32;
        self.off = (!Self::FINE.contains(&pace)).then_some(pace);
        if self.off.is_some() && !self.warned {
            self.warned = true;
            tracing::warn!(pace = format!("{pace:.2}"), "the speakers take sound at {pace:.2}× real time: their clock is off (a virtual or null device?); voices will break up");
        }
        self.since = Instant::now();
        self.frames = 0;
        self.steps = 0;
    }
}

/// How often the microphone's meter is read into the status.
const METER_EVERY: Duration = Duration::from_millis(100);
/// How often `--voice-qos-debug` logs each slot's numbers.
const QOS_LOG_EVERY: Duration = Duration::from_secs(5);
/// Signals queued between the relay and the call.
const SIGNAL_QUEUE: usize = 16;

/// Where the listener is and where the voices' avatars are, and how the
/// listener wants them: from the ECS.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceScene {
    pub listener: Listener,
    /// Positions of the avatars the slots carry (the ECS sends those only).
    pub avatars: Vec<(u32, [f32; 3])>,
    /// Avatars in the room the listener muted: the SFU is told (it gives
    /// their slots to others), and they are not played meanwhile.
    pub muted: Vec<u32>,
    /// Every voice's volume (1: as sent).
    pub volume: f32,
    /// Some voices' own volume, on top of that (1 for those not named).
    pub volumes: Vec<(u32, f32)>,
}

impl Default for VoiceScene {
    fn default() -> Self {
        VoiceScene { listener: Listener::default(), avatars: Vec::new(), muted: Vec::new(), volume: 1.0, volumes: Vec::new() }
    }
}

/// The microphone's switches, from the ECS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicControl {
    /// Nothing is sent.
    pub muted: bool,
    /// Echo cancellation, noise suppression and automatic gain (on by
    /// default; off for a headset, or a sound system that does its own).
    pub cleanup: bool,
    /// Frames at least this loud (dBFS, after cleaning) are speech and go
    /// out; within [`plaza_voice::level::GATE_DB_RANGE`].
    pub gate_db: f32,
}

/// The gate a microphone starts with: about −46 dBFS.
pub fn default_gate_db() -> f32 {
    plaza_voice::level::dbfs(plaza_voice::level::SPEAKING_RMS).round()
}

impl Default for MicControl {
    fn default() -> Self {
        MicControl { muted: false, cleanup: true, gate_db: default_gate_db() }
    }
}

/// Where voice stands, for the HUD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VoiceState {
    /// Not in a room (or voice is off).
    #[default]
    Off,
    Connecting,
    On,
    /// The last call failed; the next try is under way or waiting.
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VoiceStatus {
    pub state: VoiceState,
    /// Whether a microphone is sending (present and not muted).
    pub sending: bool,
    /// Whether there is a microphone at all.
    pub mic: bool,
    /// The avatar each slot carries.
    pub slots: Vec<Option<u32>>,
    /// The avatars speaking now.
    pub speaking: Vec<u32>,
    /// Whether we are speaking now (the microphone is loud).
    pub self_speaking: bool,
    /// The microphone's level, dBFS, the loudest of the last tenth of a
    /// second, in whole dB (for the settings panel's meter).
    pub mic_db: Option<f32>,
    /// The speakers take sound this many times faster (or slower) than
    /// real time, when that is far off: a device without a working clock.
    /// Voices break up on it whatever the network does.
    pub speaker_pace: Option<f32>,
    /// How the voices come through, this call so far (each second).
    pub quality: Option<VoiceQuality>,
}

/// How the voices come through: for the stats panel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VoiceQuality {
    /// Slots playing a voice now.
    pub voices: usize,
    /// The largest playout delay among them, ms.
    pub delay_ms: u32,
    /// Frames whose packet was missing (rebuilt, lost or stalled) of all
    /// frames heard, percent.
    pub missing_pct: f32,
}

impl VoiceQuality {
    fn of(mixer: &Mixer) -> VoiceQuality {
        let (mut voices, mut delay_ms, mut missing, mut all) = (0, 0, 0u64, 0u64);
        for slot in mixer.slots() {
            let s = slot.stats();
            if slot.playing() {
                voices += 1;
                delay_ms = delay_ms.max(s.target_frames as u32 * plaza_voice::FRAME_MS);
            }
            // The concealment that ends a voice is no packet missing.
            missing += s.recovered + s.lost + s.stalled;
            all += s.heard();
        }
        VoiceQuality { voices, delay_ms, missing_pct: if all == 0 { 0.0 } else { (missing as f64 * 100.0 / all as f64) as f32 } }
    }
}

/// The network thread's ends of voice.
#[derive(Debug)]
pub struct VoicePort {
    pub audio: Arc<AudioIo>,
    pub scene: watch::Receiver<VoiceScene>,
    pub mic: watch::Receiver<MicControl>,
    pub status: Arc<watch::Sender<VoiceStatus>>,
    /// `--voice-qos-debug`: log the jitter buffers' numbers and decisions.
    pub qos_debug: bool,
    /// What calls heard and sent, for the telemetry reports.
    pub tally: SharedVoiceTally,
    /// When the last offer went out, by any call: the server drops an
    /// offer sooner than [`OFFER_EVERY_MS`] after the one before.
    pub last_offer: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// Voice quality between two telemetry reports: calls add to it every
/// frame, the telemetry sender takes it.
pub type SharedVoiceTally = Arc<std::sync::Mutex<VoiceTally>>;

/// The app's ends of voice.
#[derive(Debug)]
pub struct VoiceControl {
    pub scene: watch::Sender<VoiceScene>,
    pub mic: watch::Sender<MicControl>,
    pub status: watch::Receiver<VoiceStatus>,
    /// The sound devices: what is open, and another choice of them.
    pub audio: Arc<AudioIo>,
    /// The devices asked for when they were opened.
    pub devices: DeviceChoice,
}

/// The two ends, over `audio` (opened for `devices`).
pub fn voice_link(audio: AudioIo, qos_debug: bool, devices: DeviceChoice) -> (VoiceControl, VoicePort) {
    let (scene_tx, scene) = watch::channel(VoiceScene::default());
    let (mic_tx, mic_control) = watch::channel(MicControl::default());
    let mic = audio.mic.is_some();
    let (status_tx, status) = watch::channel(VoiceStatus { mic, ..Default::default() });
    let audio = Arc::new(audio);
    (
        VoiceControl { scene: scene_tx, mic: mic_tx, status, audio: audio.clone(), devices },
        VoicePort { audio, scene, mic: mic_control, status: Arc::new(status_tx), qos_debug, tally: SharedVoiceTally::default(), last_offer: Arc::default() },
    )
}

/// The status with no call up: `state`, and nothing heard or sent.
fn no_call(status: &watch::Sender<VoiceStatus>, state: VoiceState) {
    status.send_modify(|s| *s = VoiceStatus { state, mic: s.mic, ..VoiceStatus::default() });
}

/// What the relay hands a call.
#[derive(Debug)]
enum CallSignal {
    Server(VoiceSignal),
    /// The server refused the offer (`voice_unavailable`): why.
    Unavailable(String),
}

/// One socket's voice: a task that keeps a call up while the socket lives.
#[derive(Debug)]
pub struct VoiceCall {
    signals: mpsc::Sender<CallSignal>,
    task: tokio::task::JoinHandle<()>,
    status: Arc<watch::Sender<VoiceStatus>>,
}

impl Drop for VoiceCall {
    fn drop(&mut self) {
        self.task.abort();
        no_call(&self.status, VoiceState::Off);
    }
}

impl VoiceCall {
    /// Starts voice for a socket to `server` (`http://host:port`); what the
    /// call sends to the server comes out of `outbox`.
    pub fn start(port: &VoicePort, server: &str, outbox: mpsc::Sender<VoiceSignal>) -> VoiceCall {
        let (signals, inbox) = mpsc::channel(SIGNAL_QUEUE);
        let call = Call {
            audio: port.audio.clone(),
            scene: port.scene.clone(),
            mic: port.mic.clone(),
            status: port.status.clone(),
            qos_debug: port.qos_debug,
            tally: port.tally.clone(),
            last_offer: port.last_offer.clone(),
            ip: bind_ip_for(server),
            outbox,
            inbox,
        };
        VoiceCall { signals, task: tokio::spawn(call.run()), status: port.status.clone() }
    }

    /// A signal from the server for this call. Dropped (with a log line)
    /// if the call is far behind: it will fail and offer again.
    pub fn signal(&self, signal: VoiceSignal) {
        self.hand_over(CallSignal::Server(signal));
    }

    /// The server refused the last offer (`voice_unavailable`).
    pub fn unavailable(&self, why: String) {
        self.hand_over(CallSignal::Unavailable(why));
    }

    fn hand_over(&self, signal: CallSignal) {
        if let Err(e) = self.signals.try_send(signal) {
            tracing::warn!(cause = %e, "voice signal not taken");
        }
    }
}

/// Each listening slot in the SFU's answer: its `mid`, and the SSRC the SFU
/// sends it with (how a packet is told to be that slot's).
pub fn answer_slots(sdp: &str) -> Vec<(String, u32)> {
    let mut slots = Vec::new();
    for section in sdp.split("\nm=").skip(1) {
        if !section.starts_with("audio") {
            continue;
        }
        let attr = |name: &str| section.lines().find_map(|l| l.trim_end().strip_prefix(name).map(str::to_owned));
        let mid = attr("a=mid:");
        let ssrc = attr("a=ssrc:").and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()));
        if let (Some(mid), Some(ssrc)) = (mid, ssrc) {
            slots.push((mid, ssrc));
        }
    }
    slots
}

struct Call {
    audio: Arc<AudioIo>,
    scene: watch::Receiver<VoiceScene>,
    mic: watch::Receiver<MicControl>,
    status: Arc<watch::Sender<VoiceStatus>>,
    qos_debug: bool,
    tally: SharedVoiceTally,
    last_offer: Arc<std::sync::Mutex<Option<Instant>>>,
    ip: IpAddr,
    outbox: mpsc::Sender<VoiceSignal>,
    inbox: mpsc::Receiver<CallSignal>,
}

impl Call {
    async fn run(mut self) {
        let mut wait = RETRY_FIRST;
        loop {
            let started = Instant::now();
            let reason = self.call().await;
            tracing::warn!(%reason, retry_in = ?wait, "voice call ended");
            no_call(&self.status, VoiceState::Failed(reason));
            // A call that held a while starts the backoff over.
            if started.elapsed() > RETRY_AT_MOST {
                wait = RETRY_FIRST;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_AT_MOST);
        }
    }

    /// One call, until it fails: why.
    async fn call(&mut self) -> String {
        self.status.send_modify(|s| s.state = VoiceState::Connecting);
        let mut peer = match VoiceClient::new(self.ip, self.audio.mic.is_some(), MAX_SLOTS).await {
            Ok(peer) => peer,
            Err(e) => return format!("no voice peer: {e}"),
        };
        // Not sooner after the last offer (a call just ended: another room)
        // than the server takes one.
        let last = *self.last_offer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = last {
            tokio::time::sleep_until(at + Duration::from_millis(OFFER_EVERY_MS + 50)).await;
        }
        // What is still queued belongs to an earlier call (an `ended` for a
        // peer already given up, a late answer): not to this offer.
        while self.inbox.try_recv().is_ok() {}
        *self.last_offer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        if self.outbox.send(VoiceSignal::Offer { sdp: peer.offer.clone() }).await.is_err() {
            return "the connection is gone".into();
        }
        // Speakers may come before the answer is applied; keep the latest.
        let mut speakers: Option<Vec<SlotSpeaker>> = None;
        let answer = tokio::time::timeout(CONNECT_WITHIN, async {
            loop {
                match self.inbox.recv().await {
                    Some(CallSignal::Server(VoiceSignal::Answer { sdp })) => return Ok(sdp),
                    Some(CallSignal::Server(VoiceSignal::Speakers { slots })) => speakers = Some(slots),
                    // The server ends the old peer silently when it takes a
                    // new offer: an `ended` before our answer is the old one's.
                    Some(CallSignal::Server(VoiceSignal::Ended { reason })) => tracing::debug!(%reason, "an earlier voice call's end; still waiting for the answer"),
                    Some(CallSignal::Unavailable(why)) => return Err(format!("voice unavailable: {why}")),
                    Some(CallSignal::Server(other)) => tracing::debug!(kind = other.kind(), "voice signal ignored while offering"),
                    None => return Err("the connection is gone".into()),
                }
            }
        })
        .await;
        let sdp = match answer {
            Ok(Ok(sdp)) => sdp,
            Ok(Err(reason)) => return reason,
            Err(_) => return format!("no answer to the voice offer within {} s", CONNECT_WITHIN.as_secs()),
        };
        let slots = answer_slots(&sdp);
        if let Err(e) = peer.answer(sdp).await {
            return e.to_string();
        }
        if let Err(e) = peer.connected(CONNECT_WITHIN).await {
            return e.to_string();
        }
        tracing::info!(slots = slots.len(), device = %self.audio.description(), "voice on");
        let mut media = Media::new(&slots, self.qos_debug, self.mic.borrow().cleanup, self.tally.clone());
        let Ok(mut mixer) = Mixer::new(slots.len()) else { return "no Opus decoder".into() };
        if let Some(s) = speakers {
            media.speakers(&s, &mut mixer);
        }
        let mut encoder = match Encoder::new() {
            Ok(e) => e,
            Err(e) => return format!("no Opus encoder: {e}"),
        };
        self.status.send_modify(|s| s.state = VoiceState::On);
        let mut frame_clock = tokio::time::interval(Duration::from_millis(u64::from(plaza_voice::FRAME_MS)));
        frame_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = frame_clock.tick() => {
                    if let Err(reason) = self.frame(&mut peer, &mut encoder, &mut mixer, &mut media).await {
                        return reason;
                    }
                }
                signal = self.inbox.recv() => match signal {
                    Some(CallSignal::Server(VoiceSignal::Speakers { slots })) => media.speakers(&slots, &mut mixer),
                    Some(CallSignal::Server(VoiceSignal::Ended { reason })) => return format!("the server ended voice: {reason}"),
                    Some(CallSignal::Unavailable(why)) => return format!("voice unavailable: {why}"),
                    Some(CallSignal::Server(other)) => tracing::debug!(kind = other.kind(), "voice signal ignored"),
                    None => return "the connection is gone".into(),
                },
            }
        }
    }

    /// One 20 ms step: microphone out, slots in, one mixed frame to the
    /// speakers (more if they ran low), the status.
    async fn frame(&mut self, peer: &mut VoiceClient, encoder: &mut Encoder, mixer: &mut Mixer, media: &mut Media) -> Result<(), String> {
        if peer.ended() {
            return Err("the voice connection failed".into());
        }
        let MicControl { muted, cleanup, gate_db } = *self.mic.borrow();
        let gate = plaza_voice::level::rms_of_db(plaza_voice::level::clamp_gate_db(gate_db));
        if let Some(mic) = &self.audio.mic {
            let played = &self.audio.played;
            // A failure is said once a call, not every step.
            if cleanup != media.cleanup_asked {
                media.cleanup_asked = cleanup;
                if let Err(e) = media.clean.set_on(cleanup) {
                    tracing::warn!(error = %e, "the microphone can't be cleaned of echo and noise");
                }
            }
            media.clean.begin_step(mic, played);
            // A microphone gives a frame every 20 ms on average, in blocks of
            // its period (up to [`MIC_BURST_FRAMES`]). One frame of credit a
            // step, spent per frame sent, lets such blocks through whole and
            // never lets more than real time out; what waited longer than a
            // burst is skipped (this thread was late, or the device is wrong).
            media.mic_credit = (media.mic_credit + 1).min(MIC_BURST_FRAMES);
            let skipped = mic.keep_newest(MIC_BURST_FRAMES * FRAME_SAMPLES);
            media.clean.skipped(skipped, played);
            media.mic_skipped += skipped as u64;
            while media.mic_credit > 0 && media.clean.next_frame(mic, played, &mut media.mic_frame) {
                media.mic_credit -= 1;
                // The speakers' echo, however much of it is left, is no one
                // talking here.
                let heard = if media.clean.echo_only() { 0.0 } else { rms(&media.mic_frame) };
                media.meter_peak = media.meter_peak.max(heard);
                let level = if muted { 0.0 } else { heard };
                media.self_speaking = media.mic_activity.update_over(level, gate);
                media.mic_timestamp = media.mic_timestamp.wrapping_add(FRAME_SAMPLES as u32);
                // Quiet (past the hold after the last word) or muted: nothing
                // goes out. That saves the uplink, and the SFU gives the slots
                // of those who are quiet to those who talk.
                if muted || !media.self_speaking {
                    continue;
                }
                let packet = match encoder.encode(&media.mic_frame) {
                    Ok(p) => bytes::Bytes::copy_from_slice(p),
                    Err(e) => return Err(format!("the microphone could not be encoded: {e}")),
                };
                if let Err(e) = peer.send(media.mic_timestamp, packet).await {
                    return Err(format!("voice send: {e}"));
                }
                media.mic_sent += 1;
            }
        }
        // Who we muted, to the SFU whenever it changes (a new call starts
        // from none, as the SFU's side of it does): it gives their slots
        // to others. Compared in place: copied only when it changed.
        let changed = self.scene.borrow().muted != media.mute_sent;
        if changed {
            let mut muted = self.scene.borrow().muted.clone();
            muted.sort_unstable();
            muted.dedup();
            if muted != media.mute_sent {
                if self.outbox.send(VoiceSignal::Mute { avatars: muted.clone() }).await.is_err() {
                    return Err("the connection is gone".into());
                }
                media.mute_sent = muted;
            }
        }
        while let Some(heard) = peer.try_recv() {
            let Some(&slot) = media.slot_of_ssrc.get(&heard.packet.header.ssrc) else {
                media.unknown_ssrc += 1;
                continue;
            };
            let at_ms = heard.at.saturating_duration_since(media.epoch).as_secs_f64() * 1000.0;
            let h = &heard.packet.header;
            mixer.push(slot, h.sequence_number, h.timestamp, heard.packet.payload.to_vec(), at_ms);
        }
        {
            // No await in here: a span held across one would swallow the
            // other tasks of this thread in Tracy.
            profile_span!("voice_mix");
            let scene = self.scene.borrow().clone();
            let place = |id: u32| scene.avatars.iter().find(|(a, _)| *a == id).map(|(_, p)| *p);
            mixer.volume = scene.volume;
            for slot in 0..mixer.slots().len() {
                let avatar = mixer.slots()[slot].avatar();
                mixer.silence(slot, avatar.is_some_and(|a| scene.muted.contains(&a)));
                let own = avatar.and_then(|a| scene.volumes.iter().find(|(v, _)| *v == a)).map_or(1.0, |(_, v)| *v);
                mixer.set_volume(slot, own);
            }
            // One frame a tick keeps the jitter buffers at real time. The
            // sound card's clock is not ours: when it has drained the ring, a
            // second frame; when the ring is far ahead, none this time.
            let speakers = &self.audio.speakers;
            let queued = speakers.len() / STEREO_FRAME;
            let frames = if queued < SPEAKER_LEAD_FRAMES.0 {
                2
            } else if queued > SPEAKER_LEAD_FRAMES.1 {
                0
            } else {
                1
            };
            for _ in 0..frames {
                mixer.mix(&scene.listener, place, &mut media.out_frame);
                speakers.push(&media.out_frame);
            }
            media.speaker_pace.frames(frames);
        }
        media.qos(mixer);
        media.tally(mixer);
        let (speaking, slots): (Vec<u32>, Vec<Option<u32>>) = (mixer.speaking().collect(), mixer.slots().iter().map(|s| s.avatar()).collect());
        let mic = self.audio.mic.is_some();
        let self_speaking = media.self_speaking;
        if media.meter_at.elapsed() >= METER_EVERY {
            media.meter_at = Instant::now();
            media.mic_db = mic.then(|| plaza_voice::level::dbfs(std::mem::take(&mut media.meter_peak)).max(-90.0).round());
        }
        let mic_db = media.mic_db;
        if media.quality_at.elapsed() >= Duration::from_secs(1) {
            media.quality_at = Instant::now();
            media.quality = Some(VoiceQuality::of(mixer));
        }
        let quality = media.quality;
        self.status.send_if_modified(|s| {
            let next = VoiceStatus { state: VoiceState::On, sending: mic && !muted, mic, slots, speaking, self_speaking, mic_db, speaker_pace: media.speaker_pace.off, quality };
            let changed = *s != next;
            *s = next;
            changed
        });
        Ok(())
    }
}

/// A call's working state beside the mixer.
struct Media {
    slot_of_ssrc: HashMap<u32, usize>,
    slot_of_mid: HashMap<String, usize>,
    epoch: Instant,
    mic_frame: Vec<f32>,
    mic_timestamp: u32,
    mic_activity: Activity,
    speaker_pace: SpeakerPace,
    /// The loudest microphone frame since the meter was last read, and the
    /// meter's reading.
    meter_peak: f32,
    meter_at: Instant,
    mic_db: Option<f32>,
    /// The microphone paired with the speakers and cleaned, and whether
    /// cleaning was last asked for.
    clean: CleanMic,
    cleanup_asked: bool,
    self_speaking: bool,
    out_frame: Vec<f32>,
    unknown_ssrc: u64,
    /// Microphone samples skipped because they waited too long.
    mic_skipped: u64,
    /// Microphone frames sent, and skipped, not yet in the tally.
    mic_sent: u64,
    mic_skipped_tallied: u64,
    /// Each slot's numbers when last added to the tally.
    tallied: Vec<JitterStats>,
    tally: SharedVoiceTally,
    /// Microphone frames that may go out now (see [`MIC_BURST_FRAMES`]).
    mic_credit: usize,
    qos_debug: bool,
    qos_logged: Instant,
    /// Each slot's playout target last logged, to log its changes.
    targets: Vec<usize>,
    quality: Option<VoiceQuality>,
    quality_at: Instant,
    /// The mute list the SFU was last told this call.
    mute_sent: Vec<u32>,
}

impl Media {
    fn new(slots: &[(String, u32)], qos_debug: bool, cleanup: bool, tally: SharedVoiceTally) -> Media {
        let clean = CleanMic::new(cleanup).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the microphone can't be cleaned of echo and noise");
            CleanMic::new(false).expect("off needs nothing")
        });
        Media {
            slot_of_ssrc: slots.iter().enumerate().map(|(i, (_, ssrc))| (*ssrc, i)).collect(),
            slot_of_mid: slots.iter().enumerate().map(|(i, (mid, _))| (mid.clone(), i)).collect(),
            epoch: Instant::now(),
            mic_frame: vec![0.0; FRAME_SAMPLES],
            mic_timestamp: rand_timestamp(),
            mic_activity: Activity::default(),
            speaker_pace: SpeakerPace::new(Instant::now()),
            meter_peak: 0.0,
            meter_at: Instant::now(),
            mic_db: None,
            clean,
            cleanup_asked: cleanup,
            self_speaking: false,
            out_frame: vec![0.0; STEREO_FRAME],
            unknown_ssrc: 0,
            mic_skipped: 0,
            mic_sent: 0,
            mic_skipped_tallied: 0,
            tallied: vec![JitterStats::default(); slots.len()],
            tally,
            mic_credit: MIC_BURST_FRAMES,
            qos_debug,
            qos_logged: Instant::now(),
            targets: vec![0; slots.len()],
            quality: None,
            quality_at: Instant::now(),
            mute_sent: Vec::new(),
        }
    }

    fn speakers(&mut self, slots: &[SlotSpeaker], mixer: &mut Mixer) {
        for s in slots {
            match self.slot_of_mid.get(&s.mid) {
                Some(&slot) => mixer.set_speaker(slot, s.avatar),
                None => tracing::debug!(mid = %s.mid, "speakers: a slot this call does not have"),
            }
        }
    }

    /// Adds this frame's news to the telemetry tally: every frame, so a call
    /// that ends (its task is aborted with its socket) has nothing untold.
    fn tally(&mut self, mixer: &Mixer) {
        let skipped = self.mic_skipped / FRAME_SAMPLES as u64;
        let news = self.mic_sent > 0 || skipped > self.mic_skipped_tallied || mixer.slots().iter().zip(&self.tallied).any(|(slot, last)| slot.stats().heard() != last.heard());
        // Most steps of a quiet call have none: no lock for them.
        if !news {
            return;
        }
        let mut tally = self.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (slot, last) in mixer.slots().iter().zip(&mut self.tallied) {
            let s = slot.stats();
            let delay_ms = (s.target_frames * plaza_voice::FRAME_MS as usize) as f64;
            tally.heard(s.played - last.played, s.recovered - last.recovered, s.lost - last.lost, s.stalled - last.stalled, delay_ms, s.jitter_ms);
            *last = s;
        }
        tally.mic(std::mem::take(&mut self.mic_sent), skipped - self.mic_skipped_tallied);
        self.mic_skipped_tallied = skipped;
    }

    /// `--voice-qos-debug`: each change of a slot's playout delay as it
    /// happens, and every slot's numbers every few seconds.
    fn qos(&mut self, mixer: &Mixer) {
        if !self.qos_debug {
            return;
        }
        for (i, slot) in mixer.slots().iter().enumerate() {
            let s = slot.stats();
            if s.received > 0 && s.target_frames != self.targets[i] {
                tracing::info!(target: "plaza::voice::qos", slot = i, avatar = ?slot.avatar(), from_ms = self.targets[i] * 20, to_ms = s.target_frames * 20, jitter_ms = format!("{:.1}", s.jitter_ms), "playout delay changed");
                self.targets[i] = s.target_frames;
            }
        }
        if self.qos_logged.elapsed() < QOS_LOG_EVERY {
            return;
        }
        self.qos_logged = Instant::now();
        for (i, slot) in mixer.slots().iter().enumerate().filter(|(_, s)| s.stats().received > 0) {
            let s = slot.stats();
            tracing::info!(
                target: "plaza::voice::qos",
                slot = i, avatar = ?slot.avatar(), received = s.received, played = s.played, recovered = s.recovered,
                concealed = s.concealed, lost = s.lost, stalled = s.stalled, late = s.late, dropped = s.dropped, underruns = s.underruns,
                jitter_ms = format!("{:.1}", s.jitter_ms), delay_ms = s.target_frames * 20, depth = s.depth, undecodable = slot.undecodable,
                "voice slot"
            );
        }
        let c = self.clean.stats;
        if self.clean.is_on() && c.cleaned > 0 {
            tracing::info!(
                target: "plaza::voice::qos",
                frames = c.cleaned, late_reference = c.late_reference, starts = c.starts, drifted = c.drifted, drift_ppm = format!("{:.0}", c.drift_ppm), gain_db = format!("{:.1}", c.gain_db),
                reduction_db = c.reduction_db().map(|d| format!("{d:.1}")),
                "microphone cleaned (reduction: how much quieter it was made while the speakers played)"
            );
        }
        if self.mic_skipped > 0 {
            tracing::info!(target: "plaza::voice::qos", ms = self.mic_skipped * 1000 / u64::from(plaza_voice::SAMPLE_RATE), "microphone audio skipped (this thread was late)");
        }
        if self.unknown_ssrc > 0 {
            tracing::info!(target: "plaza::voice::qos", packets = self.unknown_ssrc, "voice packets on no known slot");
        }
    }
}

/// RTP timestamps start at a random point (RFC 3550 §5.1).
fn rand_timestamp() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_listening_slots_are_read_with_their_ssrcs() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendonly\r\na=ssrc:1234 cname:x\r\na=ssrc:1234 msid:a b\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=sendonly\r\na=ssrc:99 cname:y\r\n";
        assert_eq!(answer_slots(sdp), vec![("1".to_owned(), 1234), ("2".to_owned(), 99)], "the microphone's section (no ssrc) is not a slot");
    }
}
