//! One listening slot's jitter buffer. Packets come by UDP out of order,
//! late or not at all; the speakers want one frame every 20 ms. The buffer
//! keeps packets by sequence number, starts playing once it holds enough
//! to ride out the jitter it has measured (RFC 3550's estimator), and at
//! each 20 ms says what to play: a packet, a lost frame to rebuild from the
//! next packet's FEC, a frame to conceal, or silence.
//!
//! Counting frames, not wall time, keeps it simple: the mixer calls
//! [`JitterBuffer::pop`] once a frame, so a buffer of `n` frames is `n × 20`
//! ms of delay.

use crate::{FRAME_MS, FRAME_SAMPLES};
use std::collections::BTreeMap;

/// Least frames held before playing: 40 ms.
pub const MIN_TARGET_FRAMES: usize = 2;
/// Most: 300 ms. A link worse than this gets gaps rather than more delay.
pub const MAX_TARGET_FRAMES: usize = 15;
/// More than this many frames held (a burst after a stall) and the oldest
/// beyond the target are dropped, so the delay comes back down.
const CATCH_UP_OVER_TARGET: usize = 3;
/// Frames concealed in a row before the buffer stops and waits to fill
/// again: the speaker stopped, or the link did.
const CONCEAL_AT_MOST: u32 = 5;
/// Packets held at most (a second); more are dropped, oldest first.
const HOLD_AT_MOST: usize = 50;

/// What to play for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet.
    Packet(Vec<u8>),
    /// This frame was lost; rebuild it from the FEC in the next packet,
    /// which stays queued and plays next.
    Recover(Vec<u8>),
    /// Lost with nothing after it yet: the decoder conceals it.
    Conceal,
    /// Nothing playing (not started, or waiting to fill again).
    Silent,
}

/// What a buffer has seen, for `--voice-qos-debug` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub recovered: u64,
    pub concealed: u64,
    /// Frames concealed because their packet never came while later ones
    /// did (the sequence skipped it, and FEC could not rebuild it).
    pub lost: u64,
    /// Frames concealed while the buffer ran dry that a later packet ended
    /// (it came later than the playout delay allowed, or the sender
    /// paused): an audible hiccup, where the concealment at the end of a
    /// voice (before [`JitterStats::underruns`]) is not.
    pub stalled: u64,
    /// Arrived after their frame's turn had passed.
    pub late: u64,
    /// Dropped to bring the delay back down, or past [`HOLD_AT_MOST`].
    pub dropped: u64,
    /// Duplicates of a packet held or played.
    pub duplicate: u64,
    /// Times the buffer ran dry while playing and stopped to fill again.
    pub underruns: u64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Frames the buffer fills to before playing.
    pub target_frames: usize,
    /// Frames held now.
    pub depth: usize,
}

impl JitterStats {
    /// Frames of voice played or stood in for, each once: from a packet,
    /// rebuilt, lost or stalled. Leaves out the concealment that ends a
    /// voice.
    pub fn heard(&self) -> u64 {
        self.played + self.recovered + self.lost + self.stalled
    }
}

#[derive(Debug)]
pub struct JitterBuffer {
    /// By extended sequence number (wraps of the 16-bit one counted).
    held: BTreeMap<u64, Vec<u8>>,
    /// The highest extended sequence number seen.
    highest: Option<u64>,
    /// The next sequence number to play, while playing.
    next: Option<u64>,
    concealed_in_a_row: u32,
    /// The last packet's arrival (ms) and RTP timestamp, for the jitter.
    last_transit: Option<(f64, u32)>,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        JitterBuffer::new()
    }
}

impl JitterBuffer {
    pub fn new() -> JitterBuffer {
        JitterBuffer {
            held: BTreeMap::new(),
            highest: None,
            next: None,
            concealed_in_a_row: 0,
            last_transit: None,
            stats: JitterStats { target_frames: MIN_TARGET_FRAMES, ..Default::default() },
        }
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats { depth: self.held.len(), ..self.stats }
    }

    /// Whether it is playing a voice now (not silent, not filling).
    pub fn playing(&self) -> bool {
        self.next.is_some()
    }

    /// A packet arrived at `at_ms` (any monotonic clock, in ms).
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: Vec<u8>, at_ms: f64) {
        self.stats.received += 1;
        let ext = self.extend(seq);
        self.measure_jitter(timestamp, at_ms);
        if self.next.is_some_and(|next| ext < next) {
            self.stats.late += 1;
            return;
        }
        if self.held.insert(ext, payload).is_some() {
            self.stats.duplicate += 1;
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        while self.held.len() > HOLD_AT_MOST {
            self.held.pop_first();
            self.stats.dropped += 1;
        }
    }

    /// What to play for the next 20 ms.
    pub fn pop(&mut self) -> Playout {
        let target = self.stats.target_frames;
        let mut next = match self.next {
            Some(next) => next,
            // Filling: start once enough is held, from the oldest.
            None if self.held.len() >= target => {
                self.concealed_in_a_row = 0;
                *self.held.first_key_value().expect("held is not empty").0
            }
            None => return Playout::Silent,
        };
        // Too much held (a burst after a stall): skip the oldest frame, one
        // a turn, until the delay is back near the target. One at a time,
        // the cuts are 20 ms each and spread out, not one 80 ms hole.
        if self.held.len() > target + CATCH_UP_OVER_TARGET
            && let Some((first, _)) = self.held.pop_first()
        {
            self.stats.dropped += 1;
            next = next.max(first + 1);
        }
        self.next = Some(next);
        if let Some(packet) = self.held.remove(&next) {
            self.next = Some(next + 1);
            self.end_stall();
            self.stats.played += 1;
            return Playout::Packet(packet);
        }
        // This frame is missing.
        if self.held.is_empty() {
            self.concealed_in_a_row += 1;
            if self.concealed_in_a_row > CONCEAL_AT_MOST {
                // The voice stopped (or the link): wait to fill again. The
                // jitter is not measured across the pause (a new voice in the
                // slot, or the same one after a silence, starts afresh).
                self.next = None;
                self.last_transit = None;
                self.stats.underruns += 1;
                return Playout::Silent;
            }
            // `next` stays: senders pause without skipping sequence numbers,
            // so the packet that ends a short pause is this one, not late.
            self.stats.concealed += 1;
            return Playout::Conceal;
        }
        self.next = Some(next + 1);
        self.end_stall();
        match self.held.get(&(next + 1)) {
            Some(following) => {
                self.stats.recovered += 1;
                Playout::Recover(following.clone())
            }
            None => {
                self.stats.concealed += 1;
                self.stats.lost += 1;
                Playout::Conceal
            }
        }
    }

    /// Playing goes on after frames concealed while dry: they were a stall,
    /// not the end of the voice.
    fn end_stall(&mut self) {
        self.stats.stalled += u64::from(self.concealed_in_a_row);
        self.concealed_in_a_row = 0;
    }

    /// The 16-bit sequence number placed next to the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Room below for packets that arrive out of order at the start.
            return (1 << 20) + u64::from(seq);
        };
        let delta = seq.wrapping_sub(highest as u16) as i16;
        highest.saturating_add_signed(i64::from(delta))
    }

    /// RFC 3550 §6.4.1: J += (|D| − J) / 16, where D is how much the
    /// spacing of two arrivals differs from the spacing of their timestamps.
    /// The target then covers three times the jitter plus a frame.
    fn measure_jitter(&mut self, timestamp: u32, at_ms: f64) {
        if let Some((last_at, last_ts)) = self.last_transit {
            let sent_ms = f64::from(timestamp.wrapping_sub(last_ts) as i32) * f64::from(FRAME_MS) / FRAME_SAMPLES as f64;
            let d = (at_ms - last_at) - sent_ms;
            self.stats.jitter_ms += (d.abs() - self.stats.jitter_ms) / 16.0;
        }
        self.last_transit = Some((at_ms, timestamp));
        let cover_ms = 3.0 * self.stats.jitter_ms + f64::from(FRAME_MS);
        let frames = (cover_ms / f64::from(FRAME_MS)).ceil() as usize;
        self.stats.target_frames = frames.clamp(MIN_TARGET_FRAMES, MAX_TARGET_FRAMES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: u32 = FRAME_SAMPLES as u32;

    fn p(n: u8) -> Vec<u8> {
        vec![n]
    }

    /// Packets `seqs` arriving on time, 20 ms apart.
    fn steady(buffer: &mut JitterBuffer, seqs: impl IntoIterator<Item = u16>) {
        for seq in seqs {
            buffer.push(seq, u32::from(seq) * TS, p(seq as u8), f64::from(seq) * 20.0);
        }
    }

    #[test]
    fn it_waits_for_the_target_then_plays_in_order() {
        let mut b = JitterBuffer::new();
        b.push(1, TS, p(1), 0.0);
        assert_eq!(b.pop(), Playout::Silent, "one frame is under the 2-frame target");
        b.push(0, 0, p(0), 1.0);
        assert_eq!(b.pop(), Playout::Packet(p(0)), "reordered: 0 first");
        assert_eq!(b.pop(), Playout::Packet(p(1)));
        assert!(b.playing());
    }

    #[test]
    fn a_hole_is_rebuilt_from_the_next_packet_and_the_next_still_plays() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1, 3, 4]);
        assert_eq!(b.pop(), Playout::Packet(p(0)));
        assert_eq!(b.pop(), Playout::Packet(p(1)));
        assert_eq!(b.pop(), Playout::Recover(p(3)), "2 is lost: rebuilt from 3's FEC");
        assert_eq!(b.pop(), Playout::Packet(p(3)));
        assert_eq!((b.stats().recovered, b.stats().lost, b.stats().stalled), (1, 0, 0));
        assert_eq!(b.stats().heard(), 4);
    }

    #[test]
    fn two_holes_in_a_row_are_one_lost_and_one_rebuilt() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1, 4]);
        b.pop();
        b.pop();
        assert_eq!(b.pop(), Playout::Conceal, "2 is lost, and 3 is not here to rebuild it from");
        assert_eq!(b.pop(), Playout::Recover(p(4)), "3 is rebuilt from 4");
        assert_eq!(b.pop(), Playout::Packet(p(4)));
        let s = b.stats();
        assert_eq!((s.lost, s.recovered, s.stalled, s.concealed), (1, 1, 0, 1));
        assert_eq!(s.heard(), 5);
    }

    #[test]
    fn a_packet_after_its_turn_is_late_and_not_played() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1, 2]);
        b.pop();
        b.pop();
        b.push(0, 0, p(0), 100.0);
        assert_eq!(b.stats().late, 1);
        assert_eq!(b.pop(), Playout::Packet(p(2)));
    }

    #[test]
    fn a_short_pause_is_concealed_and_the_next_word_plays_from_its_first_packet() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1]);
        b.pop();
        b.pop();
        // Three frames of nothing (the sender's gate closed; its numbers do not skip).
        for _ in 0..3 {
            assert_eq!(b.pop(), Playout::Conceal);
        }
        b.push(2, 10 * TS, p(2), 200.0);
        assert_eq!(b.stats().late, 0, "the word's first packet is not late");
        assert_eq!(b.stats().stalled, 0, "not known to be a stall until the packet plays");
        assert_eq!(b.pop(), Playout::Packet(p(2)));
        let s = b.stats();
        assert_eq!((s.stalled, s.lost, s.concealed), (3, 0, 3), "the three frames held up the voice");
        assert_eq!(s.heard(), 6);
    }

    #[test]
    fn a_voice_that_stops_is_concealed_briefly_then_silent_until_it_fills_again() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1]);
        b.pop();
        b.pop();
        for _ in 0..CONCEAL_AT_MOST {
            assert_eq!(b.pop(), Playout::Conceal);
        }
        assert_eq!(b.pop(), Playout::Silent);
        assert_eq!(b.stats().underruns, 1);
        steady(&mut b, [40, 41]);
        assert_eq!(b.pop(), Playout::Packet(p(40)), "plays again from the new packets");
        let s = b.stats();
        assert_eq!((s.concealed, s.stalled, s.lost), (CONCEAL_AT_MOST as u64, 0, 0), "the end of a voice is neither a stall nor a loss");
        assert_eq!(s.heard(), 3);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [65_534, 65_535]);
        b.push(0, 65_536 * TS, p(0), 1_310_720.0 + 20.0);
        assert_eq!(b.pop(), Playout::Packet(p(254)));
        assert_eq!(b.pop(), Playout::Packet(p(255)));
        assert_eq!(b.pop(), Playout::Packet(p(0)), "0 follows 65535");
    }

    #[test]
    fn the_target_grows_with_jitter_and_stays_low_without() {
        let mut calm = JitterBuffer::new();
        steady(&mut calm, 0..100);
        assert_eq!(calm.stats().target_frames, MIN_TARGET_FRAMES);
        assert!(calm.stats().jitter_ms < 0.01);

        let mut rough = JitterBuffer::new();
        for seq in 0..100u16 {
            // Every other packet 30 ms late.
            let late = if seq % 2 == 1 { 30.0 } else { 0.0 };
            rough.push(seq, u32::from(seq) * TS, p(0), f64::from(seq) * 20.0 + late);
        }
        let s = rough.stats();
        assert!(s.jitter_ms > 20.0, "jitter {}", s.jitter_ms);
        assert!(s.target_frames >= 4, "target {} frames for {} ms of jitter", s.target_frames, s.jitter_ms);
        assert!(s.target_frames <= MAX_TARGET_FRAMES);
    }

    #[test]
    fn a_burst_after_a_stall_is_cut_back_to_the_target() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 1]);
        b.pop();
        // 1 s of stall, then 50 frames at once.
        for seq in 1..51u16 {
            b.push(seq, u32::from(seq) * TS, p(seq as u8), 1000.0);
        }
        let mut cut = Vec::new();
        for _ in 0..60 {
            let before = b.stats().dropped;
            b.pop();
            cut.push(b.stats().dropped - before);
        }
        let s = b.stats();
        assert!(s.depth <= s.target_frames + CATCH_UP_OVER_TARGET, "{s:?}");
        assert!(s.dropped > 0);
        assert!(cut.iter().all(|&n| n <= 1), "at most one frame cut a turn: {cut:?}");
    }

    #[test]
    fn jitter_is_not_measured_across_a_pause() {
        let mut b = JitterBuffer::new();
        steady(&mut b, 0..50);
        for _ in 0..60 {
            b.pop();
        }
        assert!(!b.playing(), "stopped after the voice did");
        // A new voice in the slot: its timestamps run on one frame after the
        // last, but it arrives 2 s later (how the SFU splices voices).
        for seq in 50..60u16 {
            b.push(seq, u32::from(seq) * TS, p(0), 3_000.0 + f64::from(seq - 50) * 20.0);
        }
        assert_eq!(b.stats().target_frames, MIN_TARGET_FRAMES, "no jitter seen: {:?}", b.stats());
    }

    #[test]
    fn duplicates_are_counted_once() {
        let mut b = JitterBuffer::new();
        steady(&mut b, [0, 0, 1]);
        assert_eq!(b.stats().duplicate, 1);
        assert_eq!(b.pop(), Playout::Packet(p(0)));
        assert_eq!(b.pop(), Playout::Packet(p(1)));
    }
}
