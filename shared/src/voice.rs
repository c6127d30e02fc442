//! Voice signaling: what travels inside `{"type":"voice","signal":{…}}`
//! between a client and the server's SFU (docs/protocol.md, "Voice").
//!
//! The client offers one `sendonly` audio section for its microphone (or
//! none, to only listen) and up to [`MAX_SLOTS`] `recvonly` audio sections:
//! its listening slots. The server answers, and from then on forwards into
//! each slot one of the nearest speakers within [`HEARING_RANGE_M`], saying
//! who with a `speakers` signal whenever that changes, so the client can
//! place each voice at its avatar. Media (Opus over SRTP) goes by UDP to the
//! SFU, never through the WebSocket.

use crate::messages::{AvatarId, Voice};
use serde::{Deserialize, Serialize};

/// A socket's voice offers are at least this far apart; one sooner is
/// dropped (`rate_limited`): each builds a peer connection on the server.
pub const OFFER_EVERY_MS: u64 = 1_000;
/// Most listening slots one peer may offer: the nearest speakers it hears
/// at once. Beyond a handful of voices a crowd is noise, and each slot is a
/// stream the SFU sends.
pub const MAX_SLOTS: usize = 8;
/// Most avatars one `mute` may name (more than a room holds).
pub const MAX_MUTED: usize = 256;
/// Speakers farther than this (metres) are not forwarded at all.
pub const HEARING_RANGE_M: f32 = 30.0;
/// Ticks between re-choosing who each listener hears (0.5 s at 20 Hz).
pub const ROUTE_EVERY_TICKS: u64 = 10;

/// One voice signal, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VoiceSignal {
    /// Client to server: start voice in the current room (again, replacing
    /// the last session), with this SDP offer. ICE candidates are in it: no
    /// trickle.
    Offer { sdp: String },
    /// Server to client: the SDP answer, with the SFU's candidates in it.
    Answer { sdp: String },
    /// Client to server: stop voice (the room stays).
    Leave,
    /// Client to server: the avatars this listener muted, all of them
    /// (each replaces the last). The SFU gives their slots to others and
    /// forwards them nothing; at most [`MAX_MUTED`].
    Mute { avatars: Vec<AvatarId> },
    /// Server to client: who each listening slot carries now.
    Speakers { slots: Vec<SlotSpeaker> },
    /// Server to client: the server ended voice; offer again to restart.
    Ended { reason: String },
}

/// One listening slot, by its SDP `mid`, and the avatar heard in it (none:
/// silent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSpeaker {
    pub mid: String,
    pub avatar: Option<AvatarId>,
}

impl VoiceSignal {
    /// Reads a signal out of a `voice` message, with an error that says what
    /// was wrong and what is allowed.
    pub fn from_message(voice: &Voice) -> Result<VoiceSignal, String> {
        serde_json::from_value(voice.signal.clone()).map_err(|e| {
            format!("voice signal not understood ({e}); a client sends {{\"type\":\"offer\",\"sdp\":\"…\"}}, {{\"type\":\"mute\",\"avatars\":[…]}} or {{\"type\":\"leave\"}}")
        })
    }

    pub fn into_message(self) -> Voice {
        Voice { signal: serde_json::to_value(self).expect("a voice signal is plain JSON") }
    }

    /// The `type` tag, for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            VoiceSignal::Offer { .. } => "offer",
            VoiceSignal::Answer { .. } => "answer",
            VoiceSignal::Leave => "leave",
            VoiceSignal::Mute { .. } => "mute",
            VoiceSignal::Speakers { .. } => "speakers",
            VoiceSignal::Ended { .. } => "ended",
        }
    }
}

/// Re-chooses a listener's slots: speakers it still hears keep their slot
/// (a voice that jumps between slots clicks), those no longer among the
/// nearest leave theirs, and newcomers take free slots nearest first.
/// `nearest` is in order of distance, at most `current.len()` long.
pub fn assign_slots(current: &[Option<AvatarId>], nearest: &[AvatarId]) -> Vec<Option<AvatarId>> {
    let mut slots: Vec<Option<AvatarId>> = current.iter().map(|s| s.filter(|a| nearest.contains(a))).collect();
    for speaker in nearest {
        if slots.contains(&Some(*speaker)) {
            continue;
        }
        match slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => *free = Some(*speaker),
            None => break,
        }
    }
    slots
}

/// The `k` speakers nearest to `listener` within [`HEARING_RANGE_M`],
/// nearest first (ties by id, so the choice is stable).
pub fn nearest_speakers(listener: [f32; 3], speakers: impl IntoIterator<Item = (AvatarId, [f32; 3])>, k: usize) -> Vec<AvatarId> {
    choose_speakers(listener, speakers.into_iter().map(|(id, p)| (id, p, false)), k)
}

/// A speaker whose last packet came within this long (ms) is talking.
/// Clients send nothing while quiet, so this is who is speaking now, with
/// room for the pauses between sentences.
pub const TALKING_WITHIN_MS: u64 = 1_500;

/// The `k` speakers a listener hears, of `(avatar, position, talking)`:
/// within [`HEARING_RANGE_M`], those talking before those quiet, nearest
/// first within each (ties by id, so the choice is stable). In a crowd,
/// someone talking a little farther off is heard over a silent neighbour.
pub fn choose_speakers(listener: [f32; 3], speakers: impl IntoIterator<Item = (AvatarId, [f32; 3], bool)>, k: usize) -> Vec<AvatarId> {
    let range2 = HEARING_RANGE_M * HEARING_RANGE_M;
    let mut near: Vec<(bool, f32, AvatarId)> = speakers
        .into_iter()
        .map(|(id, p, talking)| {
            let d = [p[0] - listener[0], p[1] - listener[1], p[2] - listener[2]];
            (!talking, d[0] * d[0] + d[1] * d[1] + d[2] * d[2], id)
        })
        .filter(|(_, d2, _)| *d2 <= range2)
        .collect();
    near.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    near.into_iter().take(k).map(|(_, _, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_and_write_the_documented_json() {
        let offer: VoiceSignal = serde_json::from_str(r#"{"type":"offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(offer, VoiceSignal::Offer { sdp: "v=0".into() });
        let speakers = VoiceSignal::Speakers { slots: vec![SlotSpeaker { mid: "1".into(), avatar: Some(7) }, SlotSpeaker { mid: "2".into(), avatar: None }] };
        assert_eq!(
            serde_json::to_string(&speakers).unwrap(),
            r#"{"type":"speakers","slots":[{"mid":"1","avatar":7},{"mid":"2","avatar":null}]}"#
        );
        let bad = VoiceSignal::from_message(&Voice { signal: serde_json::json!({"type": "shout"}) }).unwrap_err();
        assert!(bad.contains("offer") && bad.contains("leave") && bad.contains("mute"), "{bad}");
        let mute: VoiceSignal = serde_json::from_str(r#"{"type":"mute","avatars":[3,9]}"#).unwrap();
        assert_eq!(mute, VoiceSignal::Mute { avatars: vec![3, 9] });
        assert_eq!(serde_json::to_string(&VoiceSignal::Mute { avatars: vec![] }).unwrap(), r#"{"type":"mute","avatars":[]}"#);
    }

    #[test]
    fn a_speaker_still_near_keeps_its_slot() {
        // 3 moved away; 5 is new and takes the freed slot, 2 stays where it was.
        assert_eq!(assign_slots(&[Some(2), Some(3), None], &[5, 2]), vec![Some(2), Some(5), None]);
        assert_eq!(assign_slots(&[None, None], &[9, 4, 1]), vec![Some(9), Some(4)]);
        assert_eq!(assign_slots(&[Some(1), Some(2)], &[]), vec![None, None]);
    }

    #[test]
    fn someone_talking_is_chosen_over_a_quiet_neighbour_when_slots_are_short() {
        let speakers = [(1, [1.0, 0.0, 0.0], false), (2, [10.0, 0.0, 0.0], true), (3, [2.0, 0.0, 0.0], false), (4, [40.0, 0.0, 0.0], true)];
        assert_eq!(choose_speakers([0.0; 3], speakers, 1), vec![2], "the talker at 10 m over the quiet one at 1 m");
        assert_eq!(choose_speakers([0.0; 3], speakers, 3), vec![2, 1, 3], "then the quiet ones, nearest first; 4 is out of range");
    }

    #[test]
    fn nearest_speakers_are_in_range_and_in_order() {
        let speakers = [(1, [10.0, 0.0, 0.0]), (2, [1.0, 0.0, 0.0]), (3, [0.0, 0.0, 31.0]), (4, [0.0, 0.0, -5.0])];
        assert_eq!(nearest_speakers([0.0; 3], speakers, 8), vec![2, 4, 1], "3 is past the hearing range");
        assert_eq!(nearest_speakers([0.0; 3], speakers, 2), vec![2, 4]);
    }
}
