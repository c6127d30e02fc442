//! Automatic gain: evens out how loud each person comes through. A quiet
//! microphone (a laptop's, across the desk) is brought up and a loud one
//! down, towards [`TARGET_DBFS`]: slowly up, quickly down, within
//! [`MIN_GAIN_DB`]…[`MAX_GAIN_DB`], and never past a ceiling, so nothing
//! clips. It runs after the cleaning, and learns only from what is left
//! while the speakers are quiet: the voice, not the room's noise (taken
//! out before) or the speakers' echo.

use crate::level::{dbfs, rms};

/// Where a 20 ms frame of speech is brought (RMS, dB full scale).
pub const TARGET_DBFS: f32 = -26.0;
/// The most it lifts a quiet microphone (dB): more would lift the room
/// with it.
pub const MAX_GAIN_DB: f32 = 20.0;
/// The most it takes a loud one down (dB).
pub const MIN_GAIN_DB: f32 = -12.0;
/// Up at most 6 dB a second, down 20 (per 20 ms frame).
const RISE_DB_PER_FRAME: f32 = 0.12;
const FALL_DB_PER_FRAME: f32 = 0.4;
/// Quieter than this after cleaning (−60 dBFS) is not speech to learn from.
const LEARN_FROM_RMS: f32 = 0.001;
/// No sample leaves louder than this.
const CEILING: f32 = 0.95;

/// The gain, learnt as it goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoGain {
    gain_db: f32,
}

impl AutoGain {
    pub fn gain_db(&self) -> f32 {
        self.gain_db
    }

    /// Applies the gain to `frame`, first learning from it when `learn`
    /// (the speakers are quiet) and it is loud enough to be speech.
    pub fn apply(&mut self, frame: &mut [f32], learn: bool) {
        let level = rms(frame);
        if learn && level > LEARN_FROM_RMS {
            let wanted = (TARGET_DBFS - dbfs(level)).clamp(MIN_GAIN_DB, MAX_GAIN_DB);
            let change = wanted - self.gain_db;
            self.gain_db += change.clamp(-FALL_DB_PER_FRAME, RISE_DB_PER_FRAME);
        }
        let mut gain = 10f32.powf(self.gain_db / 20.0);
        let peak = frame.iter().fold(0.0f32, |p, s| p.max(s.abs()));
        if peak * gain > CEILING {
            gain = CEILING / peak;
        }
        for s in frame.iter_mut() {
            *s *= gain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FRAME_SAMPLES;
    use crate::level::dbfs as db;
    use crate::test_signal::Babble;

    /// `seconds` of babble at `loudness`, through the gain; the RMS of the
    /// speech frames (not the gaps) in the last second, in and out.
    fn run(gain: &mut AutoGain, loudness: f32, seconds: usize, learn: bool) -> (f32, f32) {
        let mut voice = Babble::new(8);
        let (mut heard, mut sent) = (Vec::new(), Vec::new());
        for f in 0..seconds * 50 {
            let mut frame: Vec<f32> = voice.take(FRAME_SAMPLES).iter().map(|s| loudness * s).collect();
            let speech = rms(&frame) > 0.1 * loudness;
            let before = frame.clone();
            gain.apply(&mut frame, learn);
            if f >= (seconds - 1) * 50 && speech {
                heard.extend(before);
                sent.extend(frame);
            }
        }
        (rms(&heard), rms(&sent))
    }

    #[test]
    fn a_quiet_voice_is_brought_up_and_a_loud_one_down() {
        let mut quiet = AutoGain::default();
        let (heard, sent) = run(&mut quiet, 0.03, 8, true);
        assert!(db(heard) < TARGET_DBFS - 12.0, "quiet: {:.1} dBFS", db(heard));
        assert!((db(sent) - TARGET_DBFS).abs() < 4.0, "brought up: {:.1} dBFS → {:.1} dBFS (gain {:.1} dB)", db(heard), db(sent), quiet.gain_db());
        let mut loud = AutoGain::default();
        let (heard, sent) = run(&mut loud, 1.0, 4, true);
        assert!(db(heard) > TARGET_DBFS + 4.0, "loud: {:.1} dBFS", db(heard));
        assert!((db(sent) - TARGET_DBFS).abs() < 4.0, "taken down: {:.1} dBFS → {:.1} dBFS (gain {:.1} dB)", db(heard), db(sent), loud.gain_db());
    }

    #[test]
    fn it_learns_nothing_from_silence_or_while_told_not_to() {
        let mut gain = AutoGain::default();
        let mut hiss = vec![0.0002; FRAME_SAMPLES];
        for _ in 0..500 {
            gain.apply(&mut hiss, true);
            hiss.fill(0.0002);
        }
        assert_eq!(gain.gain_db(), 0.0, "−74 dBFS is no voice to learn from");
        run(&mut gain, 0.03, 4, false);
        assert_eq!(gain.gain_db(), 0.0, "the speakers playing: nothing learnt");
    }

    #[test]
    fn a_shout_after_quiet_talk_does_not_clip() {
        let mut gain = AutoGain::default();
        run(&mut gain, 0.02, 8, true);
        assert!(gain.gain_db() > 15.0, "lifted a quiet voice: {:.1} dB", gain.gain_db());
        let mut shout = vec![0.9; FRAME_SAMPLES];
        gain.apply(&mut shout, true);
        assert!(shout.iter().all(|s| s.abs() <= CEILING + 1e-6), "under the ceiling: {}", shout[0]);
    }
}
