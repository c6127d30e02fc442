//! Test signals that behave like speech where it matters here: a noise
//! suppressor learns a steady sound (a tone, constant noise) as noise and
//! takes it down, echo or not, so a test of the echo canceller must not use
//! one. These come in syllables: bursts of 120–300 ms at varying loudness,
//! with gaps of 40–160 ms.

/// Deterministic white noise (a linear congruential generator).
#[derive(Debug, Clone)]
pub struct Noise {
    seed: u64,
}

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise { seed }
    }

    /// The next value in 0..1.
    pub fn unit(&mut self) -> f32 {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.seed >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next value in −1..1.
    pub fn signed(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }
}

/// A deterministic generator of speech-like sound.
#[derive(Debug, Clone)]
pub struct Babble {
    noise: Noise,
    /// Samples left in the current burst or gap, and its loudness (0: a gap).
    left: usize,
    loudness: f32,
    talking: bool,
    phase: f32,
    pitch: f32,
}

impl Babble {
    pub fn new(seed: u64) -> Babble {
        Babble { noise: Noise::new(seed.wrapping_add(0x9E37_79B9_7F4A_7C15)), left: 0, loudness: 0.0, talking: false, phase: 0.0, pitch: 150.0 }
    }

    fn uniform(&mut self) -> f32 {
        self.noise.unit()
    }

    /// The next sample at 48 kHz, about 0.1–0.3 RMS while talking.
    pub fn sample(&mut self) -> f32 {
        if self.left == 0 {
            self.talking = !self.talking;
            let ms = if self.talking { 120.0 + 180.0 * self.uniform() } else { 40.0 + 120.0 * self.uniform() };
            self.left = (ms * 48.0) as usize;
            self.loudness = if self.talking { 0.15 + 0.35 * self.uniform() } else { 0.0 };
            self.pitch = 110.0 + 140.0 * self.uniform();
        }
        self.left -= 1;
        self.phase = (self.phase + self.pitch / 48_000.0).fract();
        // A voiced buzz (a few harmonics) with breath noise, which covers
        // the band the way a voice does.
        let tau = std::f32::consts::TAU;
        let buzz = (tau * self.phase).sin() + 0.5 * (tau * 2.0 * self.phase).sin() + 0.3 * (tau * 3.0 * self.phase).sin();
        let breath = self.uniform() * 2.0 - 1.0;
        self.loudness * (0.5 * buzz + 0.5 * breath)
    }

    /// `n` samples.
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.sample()).collect()
    }
}
