//! What the client's voice costs each 20 ms frame: the microphone cleaned
//! of echo and noise and encoded, and eight listening slots decoded, placed
//! and mixed (the most a listener hears). One frame of real time is 20 ms;
//! these run once per frame.

use criterion::{Criterion, criterion_group, criterion_main};
use plaza_voice::cleanup::MicCleaner;
use plaza_voice::codec::Encoder;
use plaza_voice::mix::{Mixer, STEREO_FRAME};
use plaza_voice::spatial::Listener;
use plaza_voice::{FRAME_SAMPLES, SAMPLE_RATE};
use std::hint::black_box;

/// A voice-like test signal: two tones with a slow swell.
fn speech_like(frame: usize, pitch: f32) -> Vec<f32> {
    (0..FRAME_SAMPLES)
        .map(|i| {
            let t = (frame * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
            let swell = 0.5 + 0.5 * (std::f32::consts::TAU * 3.0 * t).sin();
            0.3 * swell * ((std::f32::consts::TAU * pitch * t).sin() + 0.5 * (std::f32::consts::TAU * 2.7 * pitch * t).sin())
        })
        .collect()
}

fn voice_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("voice_frame");
    let mut encoder = Encoder::new().expect("an Opus encoder");
    let frames: Vec<Vec<f32>> = (0..50).map(|f| speech_like(f, 180.0)).collect();
    let mut n = 0;
    group.bench_function("encode_mic", |b| {
        b.iter(|| {
            n = (n + 1) % frames.len();
            encoder.encode(black_box(&frames[n])).expect("encodes").len()
        })
    });

    // Eight speakers' packets, a second of them, fed round and round.
    let packets: Vec<Vec<Vec<u8>>> = (0..8)
        .map(|s| {
            let mut enc = Encoder::new().expect("an Opus encoder");
            (0..50).map(|f| enc.encode(&speech_like(f, 120.0 + 25.0 * s as f32)).expect("encodes").to_vec()).collect()
        })
        .collect();
    let mut mixer = Mixer::new(8).expect("a mixer");
    for slot in 0..8 {
        mixer.set_speaker(slot, Some(slot as u32));
    }
    let listener = Listener::default();
    let place = |id: u32| Some([id as f32 - 4.0, 1.6, -3.0]);
    let mut out = vec![0.0; STEREO_FRAME];
    let mut seq: u16 = 0;
    group.bench_function("decode_and_mix_8_slots", |b| {
        b.iter(|| {
            for (slot, p) in packets.iter().enumerate() {
                let f = usize::from(seq) % p.len();
                mixer.push(slot, seq, u32::from(seq) * FRAME_SAMPLES as u32, p[f].clone(), f64::from(seq) * 20.0);
            }
            seq = seq.wrapping_add(1);
            mixer.mix(&listener, place, black_box(&mut out))
        })
    });

    // The microphone cleaned: echo cancelled (the speakers taken down to
    // mono, a 200 ms tail) and noise suppressed, one 20 ms frame.
    let mut cleaner = MicCleaner::new().expect("libspeexdsp");
    let played: Vec<Vec<f32>> = (0..50).map(|f| speech_like(f, 150.0).iter().flat_map(|s| [0.7 * s, 0.4 * s]).collect()).collect();
    let mut mic = vec![0.0; FRAME_SAMPLES];
    group.bench_function("clean_mic", |b| {
        b.iter(|| {
            n = (n + 1) % frames.len();
            for (m, (f, p)) in mic.iter_mut().zip(frames[n].iter().zip(played[n].iter().step_by(2))) {
                *m = 0.5 * f + 0.3 * p;
            }
            cleaner.clean(black_box(&mut mic), &played[n]);
        })
    });
    group.finish();
}

criterion_group!(benches, voice_frame);
criterion_main!(benches);
