//! Voice peers for tests: offers, answers, speakers, talking and
//! listening (`plaza_server::voice::client`), shared by the voice tests
//! and the instances' relay test.

use super::Client;
use bytes::Bytes;
use plaza_server::voice::client::VoiceClient;
use plaza_shared::messages::*;
use plaza_shared::voice::{SlotSpeaker, VoiceSignal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

pub const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The next voice signal to `client`, skipping deltas and the rest.
pub async fn voice_signal(client: &mut Client) -> VoiceSignal {
    loop {
        if let ServerMessage::Voice(v) = client.recv().await {
            return VoiceSignal::from_message(&v).expect("a voice signal the server sent");
        }
    }
}

pub fn offer(sdp: &str) -> ClientMessage {
    ClientMessage::Voice(VoiceSignal::Offer { sdp: sdp.into() }.into_message())
}

/// Offers voice for `client` (a microphone, two slots) and applies the
/// answer; returns the peer and the first `speakers` it was told.
pub async fn start_voice(client: &mut Client) -> (VoiceClient, Vec<SlotSpeaker>) {
    let peer = VoiceClient::new(LOOPBACK, true, 2).await.expect("a voice peer");
    client.send(&offer(&peer.offer)).await;
    let VoiceSignal::Answer { sdp } = voice_signal(client).await else { panic!("expected an answer first") };
    peer.answer(sdp).await.expect("the answer applies");
    let VoiceSignal::Speakers { slots } = voice_signal(client).await else { panic!("expected speakers after the answer") };
    (peer, slots)
}

/// `first`, or the speakers signals after it, until one names `avatar`
/// (within 2 s each).
pub async fn until_hears(client: &mut Client, first: Vec<SlotSpeaker>, avatar: AvatarId) -> Vec<SlotSpeaker> {
    if first.iter().any(|s| s.avatar == Some(avatar)) {
        return first;
    }
    loop {
        if let VoiceSignal::Speakers { slots } = voice_signal(client).await
            && slots.iter().any(|s| s.avatar == Some(avatar))
        {
            return slots;
        }
    }
}

/// For `listen`: sends `frames` 20 ms frames tagged `tag` from `peer`, and
/// counts what it hears, by tag.
pub async fn talk(peer: &mut VoiceClient, tag: &'static [u8], frames: u32, listen: Duration) -> HashMap<Vec<u8>, usize> {
    let deadline = tokio::time::Instant::now() + listen;
    let mut next = tokio::time::Instant::now();
    let mut sent = 0;
    let mut heard = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next), if sent < frames => {
                let mut payload = tag.to_vec();
                payload.extend_from_slice(&sent.to_be_bytes());
                peer.send(sent * 960, Bytes::from(payload)).await.expect("send");
                sent += 1;
                next += Duration::from_millis(20);
            }
            got = tokio::time::timeout_at(deadline, peer.recv()) => {
                let Ok(Some(h)) = got else { return heard };
                let tag = h.packet.payload[..h.packet.payload.len() - 4].to_vec();
                *heard.entry(tag).or_insert(0) += 1;
            }
        }
    }
}
