//! Synthesized sound: an ambient music loop and a few effects, written as
//! 16-bit mono WAV. Oscillators read a sine table built with the
//! deterministic math, envelopes are multiplicative recurrences: the same
//! bits on every machine.

use std::sync::OnceLock;

use crate::dmath;
use crate::noise::Rng;

pub const SAMPLE_RATE: u32 = 22_050;
const TABLE: usize = 4096;

fn sine_table() -> &'static [f64] {
    static T: OnceLock<Vec<f64>> = OnceLock::new();
    T.get_or_init(|| (0..=TABLE).map(|i| dmath::sin(dmath::TAU * i as f64 / TABLE as f64)).collect())
}

/// sin(2π·phase), phase in cycles.
fn osc(phase: f64) -> f64 {
    let t = sine_table();
    let x = (phase - phase.floor()) * TABLE as f64;
    let i = x as usize;
    t[i] + (t[i + 1] - t[i]) * (x - i as f64)
}

fn midi(note: i32) -> f64 {
    440.0 * dmath::pow(2.0, f64::from(note - 69) / 12.0)
}

fn seconds(s: f64) -> usize {
    (s * f64::from(SAMPLE_RATE)).round() as usize
}

/// Per-sample factor of an exponential decay with time constant `tau` s.
fn decay(tau: f64) -> f64 {
    dmath::exp(-1.0 / (tau * f64::from(SAMPLE_RATE)))
}

/// Adds a bell (a few inharmonic partials, decaying) at `start` into
/// `out`, wrapping around the end when `wrap`.
fn bell(out: &mut [f64], start: usize, freq: f64, gain: f64, tau: f64, wrap: bool) {
    let partials = [(1.0, 1.0), (2.76, 0.3), (5.4, 0.1)];
    let n = seconds(tau * 7.0);
    let k = decay(tau);
    let mut env = gain;
    for i in 0..n {
        let t = i as f64 / f64::from(SAMPLE_RATE);
        let s: f64 = partials.iter().map(|(m, a)| a * osc(freq * m * t)).sum();
        let at = start + i;
        let at = if wrap { at % out.len() } else if at < out.len() { at } else { break };
        // A 2 ms attack avoids a click.
        out[at] += s * env * (t / 0.002).min(1.0);
        env *= k;
    }
}

/// The ambient loop: four 4-second chords of a soft detuned pad with
/// bell arpeggios, 16 s, seamless (tails wrap to the start).
pub fn ambient() -> Vec<f64> {
    let chords: [[i32; 4]; 4] = [[48, 52, 55, 59], [45, 48, 52, 55], [41, 45, 48, 52], [43, 47, 50, 52]];
    let chord_len = seconds(4.0);
    let mut out = vec![0.0; chord_len * chords.len()];
    let len = out.len();
    let (attack, release) = (seconds(1.5), seconds(2.0));
    for (c, notes) in chords.iter().enumerate() {
        let start = c * chord_len;
        for &note in notes {
            let f = midi(note);
            for i in 0..chord_len + release {
                let t = i as f64 / f64::from(SAMPLE_RATE);
                let env = if i < attack {
                    i as f64 / attack as f64
                } else if i < chord_len {
                    1.0
                } else {
                    1.0 - (i - chord_len) as f64 / release as f64
                };
                let pad = osc(f * t) + 0.5 * osc(f * 1.0015 * t) + 0.5 * osc(f * 0.9985 * t) + 0.15 * osc(2.0 * f * t);
                out[(start + i) % len] += 0.05 * env * env * pad;
            }
        }
    }
    let mut rng = Rng::new(7);
    for step in 0..32 {
        let notes = chords[step / 8];
        let note = notes[rng.below(4) as usize] + 24;
        let gain = if step % 2 == 0 { 0.1 } else { 0.06 };
        bell(&mut out, step * seconds(0.5), midi(note), gain, 0.35, true);
    }
    normalize(&mut out, 0.5);
    out
}

fn normalize(samples: &mut [f64], peak: f64) {
    let max = samples.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    if max > 0.0 {
        samples.iter_mut().for_each(|s| *s *= peak / max);
    }
}

/// Two bell notes, the second 130 ms after the first.
fn chime(first: i32, second: i32, peak: f64) -> Vec<f64> {
    let mut out = vec![0.0; seconds(1.4)];
    bell(&mut out, 0, midi(first), 0.5, 0.25, false);
    bell(&mut out, seconds(0.13), midi(second), 0.5, 0.3, false);
    normalize(&mut out, peak);
    out
}

/// A rising fifth (E5, B5).
pub fn join_chime() -> Vec<f64> {
    chime(76, 83, 0.6)
}

/// The same, falling and softer.
pub fn leave_chime() -> Vec<f64> {
    chime(83, 76, 0.5)
}

/// A short rising blip.
pub fn chat_blip() -> Vec<f64> {
    let n = seconds(0.12);
    let mut phase = 0.0;
    let k = decay(0.03);
    let mut env = 1.0;
    let out: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / n as f64;
            phase += (900.0 + 500.0 * t) / f64::from(SAMPLE_RATE);
            let attack = (i as f64 / f64::from(SAMPLE_RATE) / 0.004).min(1.0);
            env *= k;
            0.5 * osc(phase) * env * attack
        })
        .collect();
    out
}

/// A soft step on stone: filtered noise and a low thump.
pub fn footstep() -> Vec<f64> {
    let n = seconds(0.25);
    let mut rng = Rng::new(99);
    let (kn, kt) = (decay(0.035), decay(0.045));
    let (mut env_noise, mut env_thump, mut lp) = (1.0, 1.0, 0.0);
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            // One-pole low-pass at roughly 900 Hz.
            lp += 0.23 * (rng.range(-1.0, 1.0) - lp);
            let attack = (t / 0.003).min(1.0);
            let s = attack * (lp * env_noise + 0.6 * osc(70.0 * t) * env_thump);
            env_noise *= kn;
            env_thump *= kt;
            s
        })
        .collect();
    normalize(&mut out, 0.6);
    out
}

/// 16-bit PCM mono RIFF/WAVE.
pub fn wav(samples: &[f64]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    out
}

/// Every sound: (file name, samples).
pub fn all() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("ambient_loop.wav", ambient()),
        ("join.wav", join_chime()),
        ("leave.wav", leave_chime()),
        ("chat.wav", chat_blip()),
        ("footstep.wav", footstep()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_the_samples() {
        let bytes = wav(&[0.0, 1.0, -1.0]);
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]), 6);
        assert_eq!(i16::from_le_bytes([bytes[46], bytes[47]]), 32767);
        assert_eq!(bytes.len(), 44 + 6);
    }

    #[test]
    fn the_loop_wraps_without_a_jump() {
        let a = ambient();
        assert_eq!(a.len(), 16 * SAMPLE_RATE as usize);
        let jump = (a[a.len() - 1] - a[0]).abs();
        let typical = a.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f64::max);
        assert!(jump <= typical, "{jump} vs {typical}");
    }
}
