//! Every listening slot's voice, decoded and placed, summed into one stereo
//! frame for the speakers each 20 ms.

use crate::FRAME_SAMPLES;
use crate::codec::{CodecError, Decoder};
use crate::jitter::{JitterBuffer, JitterStats, Playout};
use crate::level::{Activity, rms};
use crate::spatial::{Gains, Listener, gains};

/// Stereo samples in one mixed frame.
pub const STEREO_FRAME: usize = 2 * FRAME_SAMPLES;

/// One listening slot: the voice the SFU forwards into it.
#[derive(Debug)]
pub struct SlotVoice {
    jitter: JitterBuffer,
    decoder: Decoder,
    /// The avatar heard in this slot (the SFU's `speakers` signal).
    avatar: Option<u32>,
    activity: Activity,
    frame: Vec<f32>,
    /// Packets the decoder refused (not Opus).
    pub undecodable: u64,
    /// Decoded (its timing kept) but not played: the listener muted them.
    silenced: bool,
    /// This voice's volume, the listener's choice (1: as sent).
    volume: f32,
}

impl SlotVoice {
    fn new() -> Result<SlotVoice, CodecError> {
        Ok(SlotVoice { jitter: JitterBuffer::new(), decoder: Decoder::new()?, avatar: None, activity: Activity::default(), frame: vec![0.0; FRAME_SAMPLES], undecodable: 0, silenced: false, volume: 1.0 })
    }

    /// Decodes this slot's next frame into `self.frame`; false when silent.
    fn next_frame(&mut self) -> bool {
        let decoded = match self.jitter.pop() {
            Playout::Silent => {
                self.activity.quiet();
                return false;
            }
            Playout::Packet(p) => self.decoder.decode(&p, &mut self.frame),
            Playout::Recover(next) => self.decoder.recover(&next, &mut self.frame),
            Playout::Conceal => self.decoder.conceal(&mut self.frame),
        };
        if decoded.is_err() {
            self.undecodable += 1;
            self.frame.fill(0.0);
        }
        self.activity.update(rms(&self.frame));
        true
    }

    pub fn avatar(&self) -> Option<u32> {
        self.avatar
    }

    pub fn speaking(&self) -> bool {
        self.activity.speaking()
    }

    /// Whether a voice is playing in this slot (not silent, not filling).
    pub fn playing(&self) -> bool {
        self.jitter.playing()
    }

    pub fn stats(&self) -> JitterStats {
        self.jitter.stats()
    }
}

/// All slots, and the mix.
#[derive(Debug)]
pub struct Mixer {
    slots: Vec<SlotVoice>,
    /// Output gain before the limiter.
    pub volume: f32,
}

impl Mixer {
    pub fn new(slots: usize) -> Result<Mixer, CodecError> {
        Ok(Mixer { slots: (0..slots).map(|_| SlotVoice::new()).collect::<Result<_, _>>()?, volume: 1.0 })
    }

    pub fn slots(&self) -> &[SlotVoice] {
        &self.slots
    }

    /// A packet for slot `slot` (out of range: ignored).
    pub fn push(&mut self, slot: usize, seq: u16, timestamp: u32, payload: Vec<u8>, at_ms: f64) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.jitter.push(seq, timestamp, payload, at_ms);
        }
    }

    /// Who slot `slot` carries now.
    pub fn set_speaker(&mut self, slot: usize, avatar: Option<u32>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.avatar = avatar;
        }
    }

    /// Silences (or lets through again) slot `slot`: someone the listener
    /// muted. Its buffer keeps time, so unmuting picks up where they are.
    pub fn silence(&mut self, slot: usize, silenced: bool) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.silenced = silenced;
        }
    }

    /// Sets slot `slot`'s own volume (1: as sent), on top of [`Mixer::volume`].
    pub fn set_volume(&mut self, slot: usize, volume: f32) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.volume = volume;
        }
    }

    /// The avatars speaking now.
    pub fn speaking(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().filter(|s| s.speaking()).filter_map(|s| s.avatar)
    }

    /// The next 20 ms: every slot's frame, placed by `place` (an avatar's
    /// position, if known) around `listener`, into `out` (interleaved
    /// stereo, [`STEREO_FRAME`] long). Returns how many voices played.
    pub fn mix(&mut self, listener: &Listener, place: impl Fn(u32) -> Option<[f32; 3]>, out: &mut [f32]) -> usize {
        out.fill(0.0);
        let mut voices = 0;
        for slot in &mut self.slots {
            if !slot.next_frame() || slot.silenced {
                continue;
            }
            voices += 1;
            let g = slot.avatar.and_then(&place).map_or(Gains::UNPLACED, |p| gains(listener, p));
            let volume = self.volume * slot.volume;
            for (lr, s) in out.chunks_exact_mut(2).zip(&slot.frame) {
                lr[0] += s * g.left * volume;
                lr[1] += s * g.right * volume;
            }
        }
        // Several loud voices at once must not wrap round.
        out.iter_mut().for_each(|s| *s = s.clamp(-1.0, 1.0));
        voices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoder;

    fn tone(hz: f32, frame: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES).map(|i| 0.5 * (std::f32::consts::TAU * hz * (frame * FRAME_SAMPLES + i) as f32 / 48_000.0).sin()).collect()
    }

    fn channel_rms(stereo: &[f32], ch: usize) -> f32 {
        rms(&stereo.chunks_exact(2).map(|f| f[ch]).collect::<Vec<_>>())
    }

    /// Slot 0 carries avatar 7 at (3, 0, 0), slot 1 avatar 9 at (−20, 0, 0);
    /// both speak for `frames` frames; returns the last mixed frame.
    fn two_voices(frames: usize, listener: Listener) -> (Mixer, Vec<f32>) {
        let mut mixer = Mixer::new(2).unwrap();
        mixer.set_speaker(0, Some(7));
        mixer.set_speaker(1, Some(9));
        let (mut a, mut b) = (Encoder::new().unwrap(), Encoder::new().unwrap());
        let mut out = vec![0.0; STEREO_FRAME];
        for f in 0..frames {
            let ts = (f * FRAME_SAMPLES) as u32;
            mixer.push(0, f as u16, ts, a.encode(&tone(440.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            mixer.push(1, f as u16, ts, b.encode(&tone(220.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            mixer.mix(&listener, |id| match id { 7 => Some([3.0, 0.0, 0.0]), 9 => Some([-20.0, 0.0, 0.0]), _ => None }, &mut out);
        }
        (mixer, out)
    }

    #[test]
    fn a_near_voice_on_the_right_dominates_the_right_channel() {
        let (mixer, out) = two_voices(30, Listener::default());
        let (l, r) = (channel_rms(&out, 0), channel_rms(&out, 1));
        assert!(r > 2.0 * l, "right {r} left {l}");
        assert!(l > 0.0, "the far voice on the left is still heard");
        let speaking: Vec<u32> = mixer.speaking().collect();
        assert_eq!(speaking, vec![7, 9]);
    }

    #[test]
    fn a_muted_voice_is_not_played_and_comes_back_in_time_when_unmuted() {
        let listener = Listener::default();
        let place = |_| Some([3.0, 0.0, 0.0]);
        let mut mixer = Mixer::new(1).unwrap();
        mixer.set_speaker(0, Some(7));
        let mut enc = Encoder::new().unwrap();
        let mut out = vec![0.0; STEREO_FRAME];
        for f in 0..40 {
            mixer.silence(0, (10..30).contains(&f));
            mixer.push(0, f as u16, (f * FRAME_SAMPLES) as u32, enc.encode(&tone(440.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            mixer.mix(&listener, place, &mut out);
            let level = channel_rms(&out, 1);
            match f {
                12..30 => assert_eq!(level, 0.0, "frame {f}: muted"),
                34..40 => assert!(level > 0.05, "frame {f}: heard again: {level}"),
                _ => {}
            }
        }
        assert_eq!(mixer.slots()[0].stats().late, 0, "the muted stretch kept time");
    }

    #[test]
    fn one_voice_turned_down_leaves_the_other_as_it_was() {
        let (_, before) = two_voices(30, Listener::default());
        let mut mixer = Mixer::new(2).unwrap();
        mixer.set_speaker(0, Some(7));
        mixer.set_speaker(1, Some(9));
        mixer.set_volume(0, 0.5);
        let (mut a, mut b) = (Encoder::new().unwrap(), Encoder::new().unwrap());
        let (mut out, mut only_9) = (vec![0.0; STEREO_FRAME], vec![0.0; STEREO_FRAME]);
        let mut alone = Mixer::new(2).unwrap();
        alone.set_speaker(1, Some(9));
        let mut c = Encoder::new().unwrap();
        for f in 0..30 {
            let ts = (f * FRAME_SAMPLES) as u32;
            mixer.push(0, f as u16, ts, a.encode(&tone(440.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            mixer.push(1, f as u16, ts, b.encode(&tone(220.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            alone.push(1, f as u16, ts, c.encode(&tone(220.0, f)).unwrap().to_vec(), f as f64 * 20.0);
            let place = |id| match id { 7 => Some([3.0, 0.0, 0.0]), 9 => Some([-20.0, 0.0, 0.0]), _ => None };
            mixer.mix(&Listener::default(), place, &mut out);
            alone.mix(&Listener::default(), place, &mut only_9);
        }
        // The right channel is mostly voice 7 (3 m to the right): subtract
        // voice 9's share and what is left is half what it was.
        let r = |x: &[f32]| x.chunks_exact(2).map(|f| f[1]).collect::<Vec<f32>>();
        let seven = |mix: &[f32]| rms(&r(mix).iter().zip(r(&only_9)).map(|(m, n)| m - n).collect::<Vec<f32>>());
        let ratio = seven(&out) / seven(&before);
        assert!((ratio - 0.5).abs() < 0.02, "voice 7 at half: {ratio}");
    }

    #[test]
    fn facing_the_other_way_puts_it_on_the_left() {
        let (_, out) = two_voices(30, Listener { position: [0.0; 3], right: [-1.0, 0.0, 0.0] });
        assert!(channel_rms(&out, 0) > 2.0 * channel_rms(&out, 1));
    }

    #[test]
    fn an_empty_slot_is_silence_and_junk_is_counted_not_played() {
        let mut mixer = Mixer::new(1).unwrap();
        let mut out = vec![1.0; STEREO_FRAME];
        assert_eq!(mixer.mix(&Listener::default(), |_| None, &mut out), 0);
        assert!(out.iter().all(|s| *s == 0.0));
        for f in 0..3u16 {
            mixer.push(0, f, u32::from(f) * 960, vec![0xff, 0xff, 0xff], f64::from(f) * 20.0);
        }
        mixer.mix(&Listener::default(), |_| None, &mut out);
        assert_eq!(mixer.slots()[0].undecodable, 1);
        assert!(out.iter().all(|s| *s == 0.0));
    }
}
