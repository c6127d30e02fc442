//! A voice peer on the client's side of the protocol, for the tools and
//! tests that talk to the SFU (the load tool's voice users, the server's
//! tests): it offers a microphone and listening slots, takes the answer,
//! sends RTP and hands back what it hears. No audio: payloads are whatever
//! the caller puts in them.

use super::{VoiceError, direction, gathered_sdp, opus_track, peer_connection};
use bytes::Bytes;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription};
use webrtc::rtp_transceiver::RTCRtpTransceiverDirection;

/// Where a client's voice socket binds to reach a server at `host` (its
/// URL's host, with or without `http://`): loopback for a loopback server,
/// else every interface (the SFU's candidates say where to send).
pub fn bind_ip_for(host: &str) -> IpAddr {
    let host = host.trim_start_matches("http://");
    if host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]") {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([0, 0, 0, 0])
    }
}

/// Packets heard and not yet taken; more are dropped (and counted by the
/// caller as lost, which is what they are to a listener).
const HEARD_QUEUE: usize = 1024;

/// One packet heard in a slot, and when.
#[derive(Debug)]
pub struct Heard {
    pub packet: rtp::Packet,
    pub at: Instant,
}

/// A client's voice peer. Dropping it closes the connection.
pub struct VoiceClient {
    pc: Arc<dyn PeerConnection>,
    mic: Option<(Arc<TrackLocalStaticRTP>, u32)>,
    heard: mpsc::Receiver<Heard>,
    state: watch::Receiver<RTCPeerConnectionState>,
    overflow: Arc<std::sync::atomic::AtomicU64>,
    seq: u16,
    /// The SDP offer to send in `{"type":"offer","sdp":…}`.
    pub offer: String,
}

impl std::fmt::Debug for VoiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceClient").field("state", &*self.state.borrow()).finish_non_exhaustive()
    }
}

impl Drop for VoiceClient {
    fn drop(&mut self) {
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

struct ClientEvents {
    heard: mpsc::Sender<Heard>,
    /// Packets dropped because `heard` was full.
    overflow: Arc<std::sync::atomic::AtomicU64>,
    gathered: Arc<Notify>,
    state: watch::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientEvents {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let heard = self.heard.clone();
        let overflow = self.overflow.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event
                    && let Err(mpsc::error::TrySendError::Full(_)) = heard.try_send(Heard { packet, at: Instant::now() })
                {
                    overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
}

impl VoiceClient {
    /// A peer with a microphone (when `mic`) and `slots` listening slots,
    /// its UDP socket on `ip`, its offer ready in [`VoiceClient::offer`].
    pub async fn new(ip: IpAddr, mic: bool, slots: usize) -> Result<VoiceClient, VoiceError> {
        let (heard_tx, heard) = mpsc::channel(HEARD_QUEUE);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let gathered = Arc::new(Notify::new());
        let overflow = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let events = ClientEvents { heard: heard_tx, overflow: overflow.clone(), gathered: gathered.clone(), state: state_tx };
        let pc = peer_connection(std::net::SocketAddr::new(ip, 0), None, Arc::new(events)).await?;
        let mut client = VoiceClient { pc, mic: None, heard, state, overflow, seq: 0, offer: String::new() };
        if mic {
            let (track, ssrc) = opus_track("mic");
            client.pc.add_transceiver_from_track(track.clone() as Arc<dyn TrackLocal>, Some(direction(RTCRtpTransceiverDirection::Sendonly))).await?;
            client.mic = Some((track, ssrc));
        }
        for _ in 0..slots {
            client.pc.add_transceiver_from_kind(RtpCodecKind::Audio, Some(direction(RTCRtpTransceiverDirection::Recvonly))).await?;
        }
        let offer = client.pc.create_offer(None).await?;
        client.pc.set_local_description(offer).await?;
        client.offer = gathered_sdp(&client.pc, &gathered).await?;
        Ok(client)
    }

    /// Applies the SFU's answer.
    pub async fn answer(&self, sdp: String) -> Result<(), VoiceError> {
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| VoiceError::BadOffer(format!("the answer is not SDP: {e}")))?;
        self.pc.set_remote_description(answer).await?;
        Ok(())
    }

    /// Waits until the connection is up (ICE and DTLS), at most `within`.
    pub async fn connected(&mut self, within: Duration) -> Result<(), VoiceError> {
        let waited = tokio::time::timeout(within, self.state.wait_for(|s| matches!(s, RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed))).await;
        match waited {
            Ok(Ok(state)) if *state == RTCPeerConnectionState::Connected => Ok(()),
            Ok(Ok(state)) => Err(VoiceError::Failed(format!("the voice connection went {}", *state))),
            Ok(Err(_)) => Err(VoiceError::Failed("the voice connection is gone".into())),
            Err(_) => Err(VoiceError::Failed(format!("the voice connection did not come up within {} s", within.as_secs_f32()))),
        }
    }

    /// Whether the connection has failed or closed.
    pub fn ended(&self) -> bool {
        matches!(*self.state.borrow(), RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
    }

    /// Sends one 20 ms frame on the microphone, with sampling time
    /// `timestamp` (48 kHz).
    pub async fn send(&mut self, timestamp: u32, payload: Bytes) -> Result<(), VoiceError> {
        let Some((track, ssrc)) = &self.mic else {
            return Err(VoiceError::Failed("this peer has no microphone".into()));
        };
        self.seq = self.seq.wrapping_add(1);
        let mut packet = rtp::Packet { payload, ..Default::default() };
        packet.header.version = 2;
        packet.header.payload_type = super::OPUS_PAYLOAD_TYPE;
        packet.header.sequence_number = self.seq;
        packet.header.timestamp = timestamp;
        packet.header.ssrc = *ssrc;
        track.write_rtp(packet).await?;
        Ok(())
    }

    /// The next packet heard in any slot; `None` once the peer is closed.
    pub async fn recv(&mut self) -> Option<Heard> {
        self.heard.recv().await
    }

    /// Packets heard but dropped because they were not taken in time (more
    /// than a thousand waiting).
    pub fn overflowed(&self) -> u64 {
        self.overflow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A packet already heard, without waiting.
    pub fn try_recv(&mut self) -> Option<Heard> {
        self.heard.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_server_is_called_from_loopback() {
        assert_eq!(bind_ip_for("http://127.0.0.1:7878"), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(bind_ip_for("127.0.0.1:7878"), IpAddr::from([127, 0, 0, 1]), "a bare host, as the load tool has it");
        assert_eq!(bind_ip_for("http://10.1.2.3:7878"), IpAddr::from([0, 0, 0, 0]));
    }
}
