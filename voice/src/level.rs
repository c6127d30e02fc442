//! How loud a frame is, and whether someone is speaking: the HUD's
//! speaking indicators and the microphone meter.

/// Louder than this (RMS, full scale 1.0; about −46 dBFS) is speech, not room noise.
pub const SPEAKING_RMS: f32 = 0.005;
/// The microphone's gate, in dBFS, as a listener may set it: from a
/// whisper in a quiet room to a voice over a loud one.
pub const GATE_DB_RANGE: std::ops::RangeInclusive<f32> = -60.0..=-20.0;

/// `db` held within [`GATE_DB_RANGE`].
pub fn clamp_gate_db(db: f32) -> f32 {
    db.clamp(*GATE_DB_RANGE.start(), *GATE_DB_RANGE.end())
}

/// The RMS level of `db` dBFS.
pub fn rms_of_db(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}
/// Frames a voice counts as speaking after its last loud one (300 ms), so
/// the indicator does not flicker between words.
pub const HOLD_FRAMES: u32 = 15;

/// Root mean square of a frame.
pub fn rms(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return 0.0;
    }
    (frame.iter().map(|s| s * s).sum::<f32>() / frame.len() as f32).sqrt()
}

/// An RMS level in dB full scale (floored at −180 for silence).
pub fn dbfs(rms: f32) -> f32 {
    20.0 * rms.max(1e-9).log10()
}

/// Speaking or not, from frame levels, with a hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    hold: u32,
}

impl Activity {
    /// Takes one frame's level; true while speaking.
    pub fn update(&mut self, level: f32) -> bool {
        self.update_over(level, SPEAKING_RMS)
    }

    /// As [`Activity::update`], with speech anything at or over `threshold` (RMS).
    pub fn update_over(&mut self, level: f32, threshold: f32) -> bool {
        if level >= threshold {
            self.hold = HOLD_FRAMES;
        } else {
            self.hold = self.hold.saturating_sub(1);
        }
        self.hold > 0
    }

    /// A frame of nothing (the voice is silent).
    pub fn quiet(&mut self) -> bool {
        self.update(0.0)
    }

    pub fn speaking(&self) -> bool {
        self.hold > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_scale_square_wave_is_one_and_silence_is_zero() {
        assert_eq!(rms(&[1.0, -1.0, 1.0, -1.0]), 1.0);
        assert_eq!(rms(&[0.0; 8]), 0.0);
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(dbfs(1.0), 0.0);
        assert!((dbfs(SPEAKING_RMS) + 46.0).abs() < 0.1, "the gate is about −46 dBFS: {}", dbfs(SPEAKING_RMS));
        assert_eq!(dbfs(0.0), -180.0);
    }

    #[test]
    fn a_gate_set_higher_lets_a_quiet_voice_pass_no_more() {
        let quiet = rms_of_db(-40.0);
        assert!((dbfs(quiet) + 40.0).abs() < 1e-3);
        let mut default = Activity::default();
        assert!(default.update(quiet), "−40 dBFS is over the default −46");
        let mut strict = Activity::default();
        assert!(!strict.update_over(quiet, rms_of_db(-30.0)), "not over a −30 dBFS gate");
        assert!(strict.update_over(rms_of_db(-25.0), rms_of_db(-30.0)));
    }

    #[test]
    fn speaking_holds_between_words_then_stops() {
        let mut a = Activity::default();
        assert!(!a.update(0.001), "room noise is not speech");
        assert!(a.update(0.1));
        for _ in 1..HOLD_FRAMES {
            assert!(a.quiet(), "held between words");
        }
        assert!(!a.quiet(), "stopped after the hold");
    }
}
