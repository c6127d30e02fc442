//! Between what a sound device runs at (44.1 or 48 kHz, one, two or more
//! channels) and the 48 kHz the codec and mixer use: channel mapping and a
//! linear resampler. Linear interpolation is plain but fine for speech at
//! these rates; it keeps its place between calls, so blocks of any size
//! join without clicks.

/// Interleaved frames of `channels` to mono (the mean of the channels).
pub fn to_mono(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    let channels = channels.max(1);
    out.extend(interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32));
}

/// Stereo interleaved to `channels`: mono is the mean, two is as is, more
/// puts left and right first and silence in the rest.
pub fn from_stereo(stereo: &[f32], channels: usize, out: &mut Vec<f32>) {
    for lr in stereo.chunks_exact(2) {
        match channels {
            0 | 1 => out.push((lr[0] + lr[1]) * 0.5),
            n => {
                out.extend_from_slice(lr);
                out.extend(std::iter::repeat_n(0.0, n - 2));
            }
        }
    }
}

/// A streaming linear resampler for interleaved audio.
#[derive(Debug, Clone)]
pub struct Resampler {
    channels: usize,
    /// Input samples per output sample.
    step: f64,
    /// Where the next output falls, in input frames after `last`.
    pos: f64,
    /// The last input frame of the previous block.
    last: Vec<f32>,
}

impl Resampler {
    pub fn new(from_hz: u32, to_hz: u32, channels: usize) -> Resampler {
        let channels = channels.max(1);
        Resampler { channels, step: f64::from(from_hz.max(1)) / f64::from(to_hz.max(1)), pos: 1.0, last: vec![0.0; channels] }
    }

    /// Whether it passes samples through unchanged.
    pub fn is_identity(&self) -> bool {
        self.step == 1.0
    }

    /// Resamples `input` (interleaved) onto the end of `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let c = self.channels;
        if self.is_identity() {
            out.extend_from_slice(input);
            return;
        }
        let frames = input.len() / c;
        // Frame i of the virtual stream [last, input…]: 0 is `last`.
        let frame = |i: usize, ch: usize| if i == 0 { self.last[ch] } else { input[(i - 1) * c + ch] };
        while self.pos <= frames as f64 {
            let i = self.pos.floor() as usize;
            let t = (self.pos - i as f64) as f32;
            for ch in 0..c {
                let a = frame(i, ch);
                let b = if i < frames { frame(i + 1, ch) } else { a };
                out.push(a + (b - a) * t);
            }
            self.pos += self.step;
        }
        if frames > 0 {
            self.last.copy_from_slice(&input[(frames - 1) * c..frames * c]);
            self.pos -= frames as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_both_ways() {
        let mut mono = Vec::new();
        to_mono(&[1.0, 0.0, 0.5, 0.5], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5]);
        let mut four = Vec::new();
        from_stereo(&[0.25, 0.75], 4, &mut four);
        assert_eq!(four, vec![0.25, 0.75, 0.0, 0.0]);
        let mut one = Vec::new();
        from_stereo(&[0.25, 0.75], 1, &mut one);
        assert_eq!(one, vec![0.5]);
    }

    #[test]
    fn the_rate_changes_by_the_ratio_over_many_blocks() {
        let mut r = Resampler::new(44_100, 48_000, 1);
        let mut out = Vec::new();
        // One second in blocks of odd sizes.
        let input: Vec<f32> = (0..44_100).map(|i| (i as f32 * 0.001).sin()).collect();
        for block in input.chunks(333) {
            r.process(block, &mut out);
        }
        assert!((out.len() as i64 - 48_000).abs() <= 2, "{} samples", out.len());
    }

    #[test]
    fn a_slow_sine_comes_through_smoothly_across_block_joins() {
        let mut r = Resampler::new(48_000, 44_100, 2);
        let mut out = Vec::new();
        let input: Vec<f32> = (0..4_800).flat_map(|i| {
            let s = (std::f32::consts::TAU * 200.0 * i as f32 / 48_000.0).sin();
            [s, -s]
        }).collect();
        for block in input.chunks(2 * 97) {
            r.process(block, &mut out);
        }
        let left: Vec<f32> = out.chunks_exact(2).map(|f| f[0]).collect();
        // Neighbouring samples of a 200 Hz sine at 44.1 kHz differ by at most 2π·200/44100 ≈ 0.0285.
        let worst = left.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f32::max);
        assert!(worst < 0.03, "a jump of {worst} between samples");
        assert!(out.chunks_exact(2).all(|f| (f[0] + f[1]).abs() < 1e-6), "channels stay apart");
    }

    #[test]
    fn the_same_rate_passes_through() {
        let mut r = Resampler::new(48_000, 48_000, 1);
        let mut out = Vec::new();
        r.process(&[0.1, 0.2, 0.3], &mut out);
        assert_eq!(out, vec![0.1, 0.2, 0.3]);
    }
}
