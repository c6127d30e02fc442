//! The voice SFU: each voice member is a WebRTC peer of the server (Opus
//! over SRTP, by UDP), set up with an offer/answer inside its WebSocket
//! (`plaza_shared::voice`). The SFU never decodes audio: it forwards each
//! speaker's RTP packets into the listening slots of the members that hear
//! it, rewriting only what makes a slot one continuous stream (SSRC,
//! sequence numbers, timestamps, payload type).
//!
//! Who hears whom is the room's choice (`rooms`, every half second: the
//! nearest speakers in range), published to each speaker's forwarding task
//! as a list of routes. Each listener has one task that owns its slots and
//! a bounded queue: a listener that can't keep up loses packets (counted in
//! `plaza_ws_dropped_total{reason="voice_slow_listener"}`), and never slows a
//! speaker or the other listeners.

pub mod client;

use plaza_shared::messages::AvatarId;
use plaza_shared::voice::MAX_SLOTS;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateType, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

/// Packets queued to one listener: about 150 ms of eight speakers at 50
/// packets a second. More than that behind is audio too late to play.
pub const LISTENER_QUEUE: usize = 64;
/// How long the answer waits for the SFU's own ICE candidates (host ones
/// come at once; this only bounds a broken network setup).
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// One Opus frame (20 ms) at 48 kHz: the gap put between two voices that
/// follow each other in a slot.
const OPUS_FRAME_TICKS: u32 = 960;
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// A peer silent this long is disconnected (it may come back: a Wi-Fi
/// hiccup)...
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(5);
/// ...and this much longer, failed: its socket is told `ended` and its
/// place is freed (the library's default, 25 s, held a gone peer's place
/// and left its client waiting half a minute).
const ICE_FAILED_AFTER: Duration = Duration::from_secs(10);
const ICE_KEEPALIVE_EVERY: Duration = Duration::from_secs(2);

/// Where and how much voice the server serves.
#[derive(Debug, Clone)]
pub struct VoiceConfig {
    /// The address the SFU's UDP sockets bind to (`--voice-ip`); its host
    /// candidates carry it. `0.0.0.0` binds every interface.
    pub ip: IpAddr,
    /// The address clients reach the SFU at, when it is not `ip` (a NAT
    /// in front of the server: `--voice-public-ip`).
    pub public_ip: Option<IpAddr>,
    /// Most voice peers at once (`--voice-max-peers`); 0 turns voice off.
    pub max_peers: usize,
    /// The UDP ports peers take (`--voice-ports`); `None`: any free port.
    pub ports: Option<PortRange>,
}

impl VoiceConfig {
    /// Loopback only, for tests and `--dev`.
    pub fn local() -> VoiceConfig {
        VoiceConfig { ip: IpAddr::from([127, 0, 0, 1]), public_ip: None, max_peers: 256, ports: None }
    }
}

/// UDP ports for voice peers, both ends included (`--voice-ports
/// 40000-40099`): the range a firewall opens or a container publishes.
/// Each peer takes one, so the range bounds the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never: a range holds its first port at least.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The `n`th port, wrapping around.
    pub fn nth(self, n: usize) -> u16 {
        self.first + (n % self.len()) as u16
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use FIRST-LAST, both 1024–65535, e.g. 40000-40099";
        let (first, last) = s.split_once('-').ok_or_else(|| format!("`{s}` is not a port range; {usage}"))?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p >= 1024).ok_or_else(|| format!("`{p}` in `{s}` is not a port from 1024 to 65535; {usage}"));
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("`{s}` ends before it starts; {usage}"));
        }
        Ok(PortRange { first, last })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("the voice offer can't be used: {0}")]
    BadOffer(String),
    #[error("voice is off on this server")]
    Off,
    #[error("voice is at its limit on this server ({max} peers); try again later")]
    Full { max: usize },
    #[error("voice is at its limit on this server (no free UDP port in {0}); try again later")]
    NoFreePort(PortRange),
    #[error("voice could not start: {0}")]
    Failed(String),
}

impl From<webrtc::error::Error> for VoiceError {
    fn from(e: webrtc::error::Error) -> Self {
        VoiceError::Failed(e.to_string())
    }
}

/// What a client's offer asks for: a microphone to send, and how many
/// slots to listen with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferShape {
    pub mic: bool,
    pub slots: usize,
}

impl OfferShape {
    /// Reads the audio sections of an SDP offer: one `sendonly` (the
    /// microphone) at most, and up to [`MAX_SLOTS`] `recvonly` (slots).
    pub fn read(sdp: &str) -> Result<OfferShape, VoiceError> {
        let bad = |why: String| Err(VoiceError::BadOffer(why));
        if !sdp.starts_with("v=0") {
            return bad("it is not SDP (it must start with \"v=0\")".into());
        }
        let mut shape = OfferShape { mic: false, slots: 0 };
        for section in sdp.split("\nm=").skip(1) {
            let kind = section.split_whitespace().next().unwrap_or("");
            if kind != "audio" {
                return bad(format!("only audio sections are accepted; it has a `{kind}` section"));
            }
            let direction = section.lines().map(str::trim).find_map(|line| line.strip_prefix("a=").filter(|a| matches!(*a, "sendonly" | "recvonly" | "sendrecv" | "inactive")));
            match direction.unwrap_or("sendrecv") {
                "sendonly" if shape.mic => return bad("it has more than one sendonly (microphone) section".into()),
                "sendonly" => shape.mic = true,
                "recvonly" => shape.slots += 1,
                "inactive" => {}
                other => return bad(format!("each audio section is sendonly (the microphone) or recvonly (a listening slot); one is {other}")),
            }
        }
        if shape.slots > MAX_SLOTS {
            return bad(format!("it has {} recvonly sections; at most {MAX_SLOTS}", shape.slots));
        }
        if !shape.mic && shape.slots == 0 {
            return bad("it has no audio section to send or receive".into());
        }
        Ok(shape)
    }
}

/// One packet for one of a listener's slots.
#[derive(Debug)]
pub struct Forward {
    pub slot: u8,
    pub speaker: AvatarId,
    pub packet: rtp::Packet,
}

/// Where one speaker's packets go: a listener's queue, and its slot there.
#[derive(Debug, Clone)]
pub struct Route {
    pub to: mpsc::Sender<Forward>,
    pub slot: u8,
}

/// What the room needs of a voice member to route it: where its own
/// packets go (set by the room), where others' packets for it go, and its
/// slots' `mid`s.
#[derive(Debug)]
pub struct VoiceRouting {
    pub routes: watch::Sender<Arc<[Route]>>,
    pub forward: mpsc::Sender<Forward>,
    pub mids: Vec<String>,
    pub mic: bool,
    /// When its last packet came ([`clock_ms`]; 0: never): the room hears
    /// those talking first ([`plaza_shared::voice::choose_speakers`]).
    pub heard_ms: Arc<AtomicU64>,
}

impl VoiceRouting {
    /// Whether this member is talking now (a packet within
    /// [`plaza_shared::voice::TALKING_WITHIN_MS`]).
    pub fn talking(&self, now_ms: u64) -> bool {
        let heard = self.heard_ms.load(Ordering::Relaxed);
        heard != 0 && now_ms.saturating_sub(heard) <= plaza_shared::voice::TALKING_WITHIN_MS
    }
}

/// Milliseconds on the SFU's clock, from 1 (so 0 can mean "never").
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// The SFU: makes voice peers, within the peer limit.
#[derive(Debug, Clone)]
pub struct Sfu {
    config: Arc<VoiceConfig>,
    peers: Arc<Semaphore>,
    /// Where in `config.ports` the next peer starts looking.
    next_port: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sfu {
    pub fn new(config: VoiceConfig) -> Sfu {
        let peers = Arc::new(Semaphore::new(config.max_peers));
        Sfu { config: Arc::new(config), peers, next_port: Arc::default() }
    }

    /// Voice peers open now.
    pub fn peers(&self) -> usize {
        self.config.max_peers - self.peers.available_permits()
    }

    /// Answers `offer` (of `shape`, from [`OfferShape::read`]) for
    /// `speaker`: a peer connection with one sending track per listening
    /// slot, its candidates gathered. `failing` is the socket's, across its
    /// calls.
    pub async fn open(&self, offer: &str, shape: OfferShape, speaker: AvatarId, failing: FailingCalls) -> Result<(VoicePeer, VoiceRouting), VoiceError> {
        if self.config.max_peers == 0 {
            return Err(VoiceError::Off);
        }
        let permit = self.peers.clone().try_acquire_owned().map_err(|_| VoiceError::Full { max: self.config.max_peers })?;
        let (routes_tx, routes_rx) = watch::channel::<Arc<[Route]>>(Arc::from(Vec::new()));
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let gathered = Arc::new(Notify::new());
        let heard_ms = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        let events = PeerEvents { speaker, routes: routes_rx, gathered: gathered.clone(), state: state_tx, heard_ms: heard_ms.clone(), connected: connected.clone() };

        let pc = self.peer_connection(Arc::new(events)).await?;
        // From here on, dropping `peer` closes the connection.
        let mut peer = VoicePeer { pc, answer: String::new(), state: state.clone(), listener: None, answered: None, _permit: permit };

        let mut slots = Vec::with_capacity(shape.slots);
        for i in 0..shape.slots {
            let (track, ssrc) = opus_track(&format!("slot-{i}"));
            let transceiver = peer.pc.add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(direction(RTCRtpTransceiverDirection::Sendonly))).await?;
            slots.push((transceiver, track, ssrc));
        }
        peer.pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned()).map_err(|e| VoiceError::BadOffer(e.to_string()))?).await.map_err(|e| VoiceError::BadOffer(e.to_string()))?;
        let answer = peer.pc.create_answer(None).await?;
        peer.pc.set_local_description(answer).await?;
        peer.answer = gathered_sdp(&peer.pc, &gathered).await?;

        let mut mids = Vec::with_capacity(slots.len());
        let mut outs = Vec::with_capacity(slots.len());
        for (transceiver, track, ssrc) in slots {
            let mid = transceiver.mid().await?.ok_or_else(|| VoiceError::Failed("a listening slot got no mid".into()))?;
            let sender = transceiver.sender().await?.ok_or_else(|| VoiceError::Failed("a listening slot has no sender".into()))?;
            let payload_type = sender.get_parameters().await?.rtp_parameters.codecs.first().map(|c| c.payload_type).ok_or_else(|| VoiceError::BadOffer("it offers no Opus (audio/opus, 48 kHz)".into()))?;
            mids.push(mid);
            outs.push(SlotOut { track, ssrc, payload_type, speaker: None, seq: 0, ts_offset: 0, last_ts: 0 });
        }
        let (forward, queue) = mpsc::channel(LISTENER_QUEUE);
        peer.listener = Some(tokio::spawn(forward_to_listener(queue, outs, state)));
        // Answered: from here, a peer that never connects counts as a call
        // that failed (one that failed before was a bad offer, said to it).
        peer.answered = Some((connected, failing));
        Ok((peer, VoiceRouting { routes: routes_tx, forward, mids, mic: shape.mic, heard_ms }))
    }
}

/// One socket's calls that never connected, in a row: counted once in
/// `plaza_voice_calls_total{outcome="never_connected"}`, however often its
/// client offers again meanwhile (every 10–40 s while UDP is blocked), so
/// the share of calls failing is a share of people, and one person behind a
/// firewall does not read as a broken server. A call that connects ends the
/// run.
#[derive(Debug, Clone, Default)]
pub struct FailingCalls(Arc<AtomicBool>);

impl FailingCalls {
    /// A call of this socket ended, after it connected or without.
    fn ended(&self, connected: bool) {
        if connected {
            self.0.store(false, Ordering::Relaxed);
        } else if !self.0.swap(true, Ordering::Relaxed) {
            metrics::counter!(crate::metrics::VOICE_CALLS, "outcome" => "never_connected").increment(1);
        }
    }
}

/// One voice member's peer connection, owned by its socket's task. Dropping
/// it closes the connection and stops its forwarding.
pub struct VoicePeer {
    pc: Arc<dyn PeerConnection>,
    /// The SDP answer for the client.
    pub answer: String,
    /// The connection's state, as the driver reports it.
    pub state: watch::Receiver<RTCPeerConnectionState>,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Once answered: whether the connection ever came up, and the
    /// socket's run of failed calls; told to `plaza_voice_calls_total` when
    /// the peer goes.
    answered: Option<(Arc<AtomicBool>, FailingCalls)>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for VoicePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoicePeer").field("state", &*self.state.borrow()).finish_non_exhaustive()
    }
}

impl VoicePeer {
    /// Resolves once the connection has failed or closed.
    pub async fn ended(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)).await;
    }
}

impl Drop for VoicePeer {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        if let Some((connected, failing)) = &self.answered {
            failing.ended(connected.load(Ordering::Relaxed));
        }
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = pc.close().await {
                    tracing::debug!(cause = %e, "voice peer close");
                }
            });
        }
    }
}

fn opus() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PAYLOAD_TYPE,
    }
}

impl Sfu {
    /// A peer connection on the next free port of `--voice-ports`, or on
    /// any free port without it.
    async fn peer_connection(&self, events: Arc<dyn PeerConnectionEventHandler>) -> Result<Arc<dyn PeerConnection>, VoiceError> {
        let (ip, public_ip) = (self.config.ip, self.config.public_ip);
        let Some(ports) = self.config.ports else {
            return peer_connection(SocketAddr::new(ip, 0), public_ip, events).await;
        };
        let start = self.next_port.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for n in 0..ports.len() {
            let port = ports.nth(start + n);
            match peer_connection(SocketAddr::new(ip, port), public_ip, events.clone()).await {
                Ok(pc) => return Ok(pc),
                Err(e) => last = Some(e), // taken (a peer of ours, or another program): the next one
            }
        }
        tracing::warn!(%ports, cause = ?last, "no free UDP port for a voice peer");
        Err(VoiceError::NoFreePort(ports))
    }
}

/// A peer connection for Opus only, its one UDP socket on `addr`.
async fn peer_connection(addr: SocketAddr, public_ip: Option<IpAddr>, events: Arc<dyn PeerConnectionEventHandler>) -> Result<Arc<dyn PeerConnection>, VoiceError> {
    let ip = addr.ip();
    let mut media = MediaEngine::default();
    media.register_codec(opus(), RtpCodecKind::Audio)?;
    // No mDNS: candidates are plain addresses, and it would cost every peer
    // a multicast socket.
    let mut settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), Some(ICE_KEEPALIVE_EVERY));
    if ip.is_loopback() {
        settings = settings.with_include_loopback_candidate(true);
    }
    if let Some(public) = public_ip {
        settings = settings.with_nat_1to1_ips(vec![public.to_string()], RTCIceCandidateType::Host);
    }
    let pc = PeerConnectionBuilder::new().with_media_engine(media).with_setting_engine(settings.build()).with_handler(events).with_udp_addrs(vec![addr]).build().await?;
    Ok(Arc::new(pc))
}

/// An Opus track to send on, with its SSRC.
fn opus_track(id: &str) -> (Arc<TrackLocalStaticRTP>, u32) {
    let ssrc = random_ssrc();
    let coding = RTCRtpEncodingParameters { rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() }, codec: opus().rtp_codec, ..Default::default() };
    (Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(format!("plaza-{id}"), id.to_owned(), id.to_owned(), RtpCodecKind::Audio, vec![coding]))), ssrc)
}

fn direction(direction: RTCRtpTransceiverDirection) -> RTCRtpTransceiverInit {
    RTCRtpTransceiverInit { direction, streams: vec![], send_encodings: vec![] }
}

/// Waits for ICE gathering to complete (signaled on `gathered`), then
/// returns the local description's SDP, candidates in it.
async fn gathered_sdp(pc: &Arc<dyn PeerConnection>, gathered: &Notify) -> Result<String, VoiceError> {
    if tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await.is_err() {
        return Err(VoiceError::Failed(format!("ICE candidates were not gathered within {} s", GATHER_TIMEOUT.as_secs())));
    }
    Ok(pc.local_description().await.ok_or_else(|| VoiceError::Failed("no local description".into()))?.sdp)
}

fn random_ssrc() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u32::from_le_bytes(bytes)
}

struct PeerEvents {
    speaker: AvatarId,
    routes: watch::Receiver<Arc<[Route]>>,
    gathered: Arc<Notify>,
    state: watch::Sender<RTCPeerConnectionState>,
    heard_ms: Arc<AtomicU64>,
    /// Set the first time the connection is up.
    connected: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerEvents {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(avatar = self.speaker, %state, "voice connection");
        if state == RTCPeerConnectionState::Connected && !self.connected.swap(true, Ordering::Relaxed) {
            metrics::counter!(crate::metrics::VOICE_CALLS, "outcome" => "connected").increment(1);
        }
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(forward_from_speaker(track, self.speaker, self.routes.clone(), self.heard_ms.clone()));
    }
}

/// RTP header bytes not in `payload` (the fixed 12).
const RTP_HEADER_BYTES: u64 = 12;

/// Offers each of a speaker's packets to every listener routed to it.
async fn forward_from_speaker(track: Arc<dyn TrackRemote>, speaker: AvatarId, routes: watch::Receiver<Arc<[Route]>>, heard_ms: Arc<AtomicU64>) {
    let bytes_in = metrics::counter!(crate::metrics::VOICE_BYTES, "direction" => "in");
    let packets_in = metrics::counter!(crate::metrics::VOICE_PACKETS, "direction" => "in");
    let lost = metrics::counter!(crate::metrics::VOICE_PACKETS_LOST);
    let dropped = metrics::counter!(crate::metrics::WS_DROPPED, "reason" => "voice_slow_listener");
    let mut gaps = SequenceGaps::default();
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(mut packet) = event else { continue };
        bytes_in.increment(RTP_HEADER_BYTES + packet.payload.len() as u64);
        packets_in.increment(1);
        lost.increment(gaps.arrived(packet.header.sequence_number));
        heard_ms.store(clock_ms(), Ordering::Relaxed);
        // Its extension ids were negotiated on the speaker's leg: no
        // listener's. Dropped once here, before the copies.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let routes = routes.borrow().clone();
        for route in routes.iter() {
            match route.to.try_send(Forward { slot: route.slot, speaker, packet: packet.clone() }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped.increment(1),
                Err(mpsc::error::TrySendError::Closed(_)) => {} // that listener is leaving; the next routes drop it
            }
        }
    }
    lost.increment(gaps.finish());
}

/// Packets missing from one RTP stream, from its sequence numbers. A
/// number skipped is counted lost only once it is [`SequenceGaps::WINDOW`]
/// packets behind the newest, so a packet that comes out of order within
/// that is not counted.
#[derive(Debug, Clone)]
pub struct SequenceGaps {
    /// The newest sequence number, once one came.
    newest: Option<u16>,
    /// Bit `i`: packet `newest − i` arrived.
    seen: u64,
}

impl Default for SequenceGaps {
    fn default() -> Self {
        SequenceGaps { newest: None, seen: u64::MAX }
    }
}

impl SequenceGaps {
    /// Packets a number may come late and still not count as lost: 64,
    /// 1.28 s of one voice.
    pub const WINDOW: u16 = 64;
    /// A jump further ahead than this (10 s of one voice) is the sender
    /// starting its numbering over, not loss.
    pub const RESTART: u16 = 500;

    /// Packet `seq` arrived: how many packets are now known lost.
    pub fn arrived(&mut self, seq: u16) -> u64 {
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            return 0;
        };
        let ahead = seq.wrapping_sub(newest) as i16;
        if ahead > 0 {
            let ahead = ahead as u16;
            self.newest = Some(seq);
            if ahead > Self::RESTART {
                self.seen = u64::MAX;
                return 0;
            }
            // The numbers that leave the window, never seen, are lost; past
            // a whole window, so are those that never entered it.
            let lost = if ahead >= Self::WINDOW {
                u64::from(self.seen.count_zeros()) + u64::from(ahead - Self::WINDOW)
            } else {
                u64::from((self.seen >> (Self::WINDOW - ahead)).count_zeros()) - u64::from(Self::WINDOW - ahead)
            };
            self.seen = if ahead >= Self::WINDOW { 1 } else { (self.seen << ahead) | 1 };
            lost
        } else {
            let behind = ahead.unsigned_abs();
            if behind < Self::WINDOW {
                self.seen |= 1 << behind;
            }
            0
        }
    }

    /// The stream ended: those still missing in the window are lost.
    pub fn finish(&mut self) -> u64 {
        let lost = if self.newest.is_some() { u64::from(self.seen.count_zeros()) } else { 0 };
        self.seen = u64::MAX;
        lost
    }
}

/// A listening slot's sending side, and the rewrite that makes the voices
/// passing through it one stream.
struct SlotOut {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    speaker: Option<AvatarId>,
    seq: u16,
    ts_offset: u32,
    last_ts: u32,
}

impl SlotOut {
    fn rewrite(&mut self, speaker: AvatarId, mut packet: rtp::Packet) -> rtp::Packet {
        if self.speaker != Some(speaker) {
            // A new voice here: its clock continues one frame after the last.
            self.ts_offset = self.last_ts.wrapping_add(OPUS_FRAME_TICKS).wrapping_sub(packet.header.timestamp);
            self.speaker = Some(speaker);
        }
        self.seq = self.seq.wrapping_add(1);
        let header = &mut packet.header;
        header.sequence_number = self.seq;
        header.timestamp = header.timestamp.wrapping_add(self.ts_offset);
        self.last_ts = header.timestamp;
        header.ssrc = self.ssrc;
        header.payload_type = self.payload_type;
        packet
    }
}

/// Until the listener's connection is up (ICE and DTLS), what comes for it
/// is dropped: SRTP has no keys to send it with yet.
async fn forward_to_listener(mut queue: mpsc::Receiver<Forward>, mut slots: Vec<SlotOut>, state: watch::Receiver<RTCPeerConnectionState>) {
    let bytes_out = metrics::counter!(crate::metrics::VOICE_BYTES, "direction" => "out");
    let packets_out = metrics::counter!(crate::metrics::VOICE_PACKETS, "direction" => "out");
    let mut up = false;
    while let Some(Forward { slot, speaker, packet }) = queue.recv().await {
        if !up {
            up = *state.borrow() == RTCPeerConnectionState::Connected;
            if !up {
                continue;
            }
        }
        let Some(out) = slots.get_mut(usize::from(slot)) else { continue };
        let packet = out.rewrite(speaker, packet);
        let bytes = RTP_HEADER_BYTES + packet.payload.len() as u64;
        if out.track.write_rtp(packet).await.is_ok() {
            bytes_out.increment(bytes);
            packets_out.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(sections: &[&str]) -> String {
        let mut sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
        for direction in sections {
            sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na={direction}\r\n"));
        }
        sdp
    }

    #[test]
    fn an_offer_is_a_microphone_and_listening_slots() {
        assert_eq!(OfferShape::read(&offer(&["sendonly", "recvonly", "recvonly"])).unwrap(), OfferShape { mic: true, slots: 2 });
        assert_eq!(OfferShape::read(&offer(&["recvonly"])).unwrap(), OfferShape { mic: false, slots: 1 });
        assert_eq!(OfferShape::read(&offer(&["sendonly"])).unwrap(), OfferShape { mic: true, slots: 0 });
    }

    #[test]
    fn offers_outside_the_shape_say_what_is_allowed() {
        let cases = [
            (offer(&["sendonly", "sendonly"]), "more than one sendonly"),
            (offer(&["sendrecv"]), "sendonly (the microphone) or recvonly"),
            (offer(&["recvonly"; 9]), "at most 8"),
            (offer(&[]), "no audio section"),
            (offer(&["inactive"]), "no audio section"),
            ("hello".to_string(), "not SDP"),
            (offer(&["sendonly"]).replace("m=audio", "m=video"), "only audio"),
        ];
        for (sdp, says) in cases {
            let e = OfferShape::read(&sdp).unwrap_err().to_string();
            assert!(e.contains(says), "{e:?} should say {says:?}");
        }
    }

    /// What `arrived` and then `finish` count for these sequence numbers.
    fn lost(seqs: impl IntoIterator<Item = u16>) -> (u64, u64) {
        let mut gaps = SequenceGaps::default();
        let arrived = seqs.into_iter().map(|s| gaps.arrived(s)).sum();
        (arrived, gaps.finish())
    }

    #[test]
    fn packets_in_order_lose_nothing_across_the_wrap() {
        assert_eq!(lost((65_000..=65_535).chain(0..500)), (0, 0));
    }

    #[test]
    fn a_skipped_number_is_lost_once_it_leaves_the_window() {
        let mut gaps = SequenceGaps::default();
        let mut counted = 0;
        for seq in (0..10).chain(11..74) {
            counted += gaps.arrived(seq);
        }
        assert_eq!(counted, 0, "10 is 63 behind: it may still come");
        assert_eq!(gaps.arrived(74), 1, "10 left the window");
        assert_eq!(gaps.arrived(75), 0, "counted once");
        assert_eq!(gaps.finish(), 0);
    }

    #[test]
    fn a_packet_out_of_order_within_the_window_is_not_lost() {
        assert_eq!(lost([0, 1, 3, 4, 2, 5]), (0, 0));
        assert_eq!(lost((0..100).filter(|s| s % 10 != 0).chain([90, 80, 70]).chain(100..300)), (6, 0), "10…60 are lost; 70, 80 and 90 came late");
        assert_eq!(lost([0, 1, 3]), (0, 1), "the stream ended with 2 missing");
    }

    #[test]
    fn a_jump_counts_what_it_skipped_and_a_restart_does_not() {
        let (now, at_the_end) = lost([0, 1, 101, 102]);
        assert_eq!((now, now + at_the_end), (37, 99), "a 2 s outage mid-sentence: 99 packets, those still in the window counted at the end");
        assert_eq!(lost([0, 1, 40, 41]), (0, 38), "skipped within the window, counted at the end");
        assert_eq!(lost([0, 1, 30_000, 30_001]), (0, 0), "the sender started over");
        assert_eq!(lost([]), (0, 0));
        assert_eq!(lost([9]), (0, 0));
    }

    fn packet(seq: u16, ts: u32) -> rtp::Packet {
        let mut p = rtp::Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.header.ssrc = 42;
        p.header.payload_type = 96;
        p
    }

    #[test]
    fn a_slot_is_one_stream_whoever_speaks_in_it() {
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new("s".into(), "t".into(), "l".into(), RtpCodecKind::Audio, vec![])));
        let mut slot = SlotOut { track, ssrc: 7, payload_type: 111, speaker: None, seq: 100, ts_offset: 0, last_ts: 5_000 };
        let a1 = slot.rewrite(1, packet(9_000, 1_000_000));
        let a2 = slot.rewrite(1, packet(9_001, 1_000_960));
        // Speaker 2 takes the slot with its own numbering and clock.
        let b1 = slot.rewrite(2, packet(17, 40));
        let b2 = slot.rewrite(2, packet(18, 1_000));
        let seqs: Vec<u16> = [&a1, &a2, &b1, &b2].iter().map(|p| p.header.sequence_number).collect();
        assert_eq!(seqs, vec![101, 102, 103, 104], "sequence numbers run on across speakers");
        assert_eq!(a2.header.timestamp - a1.header.timestamp, 960);
        assert_eq!(b1.header.timestamp - a2.header.timestamp, OPUS_FRAME_TICKS, "the next voice starts one frame later");
        assert_eq!(b2.header.timestamp - b1.header.timestamp, 960);
        assert!([&a1, &b2].iter().all(|p| p.header.ssrc == 7 && p.header.payload_type == 111));
    }
}
