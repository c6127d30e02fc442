//! The microphone cleaned before it is sent: echo cancellation and noise
//! suppression.
//!
//! Without headphones the microphone hears the speakers: everyone you hear
//! would hear themselves again, a few hundred milliseconds late, and your
//! level gate would open for their voices. [`MicCleaner`] takes out what
//! the speakers played (an adaptive filter learns the path from each
//! speaker to the microphone), then suppresses what is left of the echo
//! and the room's steady noise (a fan, a hum). It is libspeexdsp's MDF
//! echo canceller and its preprocessor, the pair Mumble uses, from the
//! system library (libspeexdsp-dev, `tools/setup.sh`; the client links it,
//! so it is needed to run as well as to build).
//!
//! The canceller needs to be told what was played in step with what was
//! recorded: [`crate::devices`] keeps what the output callback handed the
//! sound card (the played ring), the microphone ring keeps what the input
//! callback recorded, and the caller pairs them in order. Both run on the
//! sound card's clocks, so once paired the delay between them holds; the
//! filter covers [`ECHO_TAIL_MS`] of it.
//!
//! The workspace denies `unsafe`; this module is the one exception: the
//! calls into libspeexdsp, each with its reason beside it.
#![allow(unsafe_code)]

use crate::{FRAME_SAMPLES, SAMPLE_RATE};
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

/// The canceller's step: 10 ms (two per frame).
pub const STEP_SAMPLES: usize = FRAME_SAMPLES / 2;
/// How late an echo may come back and still be cancelled: the sound
/// card's output and input latency, and the room. Longer learns slower
/// (measured here, 8 s of speech-like sound: a 100 ms tail took out 31 dB
/// of an echo 20 ms late, but nothing of one 120 ms late; 200 ms took out
/// 20–22 dB of echoes 20–150 ms late).
pub const ECHO_TAIL_MS: u32 = 200;
/// Noise is taken down by up to this much (dB).
const NOISE_SUPPRESS_DB: c_int = -30;
/// What the filter leaves of the echo is taken down by up to this much
/// (dB) while nobody talks here, and this much while someone does.
const ECHO_SUPPRESS_DB: c_int = -40;
const ECHO_SUPPRESS_ACTIVE_DB: c_int = -15;

#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::{c_int, c_void};

    #[repr(C)]
    pub struct SpeexEchoState {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct SpeexPreprocessState {
        _private: [u8; 0],
    }

    pub const SPEEX_ECHO_SET_SAMPLING_RATE: c_int = 24;
    pub const SPEEX_PREPROCESS_SET_DENOISE: c_int = 0;
    pub const SPEEX_PREPROCESS_SET_NOISE_SUPPRESS: c_int = 18;
    pub const SPEEX_PREPROCESS_SET_ECHO_SUPPRESS: c_int = 20;
    pub const SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE: c_int = 22;
    pub const SPEEX_PREPROCESS_SET_ECHO_STATE: c_int = 24;

    #[link(name = "speexdsp")]
    unsafe extern "C" {
        pub fn speex_echo_state_init_mc(frame_size: c_int, filter_length: c_int, nb_mic: c_int, nb_speakers: c_int) -> *mut SpeexEchoState;
        pub fn speex_echo_state_destroy(st: *mut SpeexEchoState);
        pub fn speex_echo_cancellation(st: *mut SpeexEchoState, rec: *const i16, play: *const i16, out: *mut i16);
        pub fn speex_echo_state_reset(st: *mut SpeexEchoState);
        pub fn speex_echo_ctl(st: *mut SpeexEchoState, request: c_int, ptr: *mut c_void) -> c_int;
        pub fn speex_preprocess_state_init(frame_size: c_int, sampling_rate: c_int) -> *mut SpeexPreprocessState;
        pub fn speex_preprocess_state_destroy(st: *mut SpeexPreprocessState);
        pub fn speex_preprocess_run(st: *mut SpeexPreprocessState, x: *mut i16) -> c_int;
        pub fn speex_preprocess_ctl(st: *mut SpeexPreprocessState, request: c_int, ptr: *mut c_void) -> c_int;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("libspeexdsp could not make its {0}")]
    Init(&'static str),
    #[error("libspeexdsp refused setting {0}")]
    Setting(&'static str),
}

/// Echo cancellation and noise suppression for one microphone. The
/// speakers' stereo is taken down to mono for the reference: a voice is
/// panned, not different on each side, so the two channels are one signal
/// scaled twice, and a two-channel filter can't tell their paths apart
/// (measured: mono took out 21 dB in 8 s where stereo took 18, for half
/// the work).
#[derive(Debug)]
pub struct MicCleaner {
    echo: NonNull<ffi::SpeexEchoState>,
    pre: NonNull<ffi::SpeexPreprocessState>,
    rec: [i16; STEP_SAMPLES],
    play: [i16; STEP_SAMPLES],
    out: [i16; STEP_SAMPLES],
    /// Run the preprocessor after the canceller (off only to measure the
    /// canceller alone).
    suppress: bool,
}

// The states are plain memory owned by this value alone; libspeexdsp keeps
// no thread-local or global state.
unsafe impl Send for MicCleaner {}

impl MicCleaner {
    /// The canceller, then the suppressor.
    pub fn new() -> Result<MicCleaner, CleanupError> {
        MicCleaner::make(true)
    }

    /// The canceller alone: to measure what it takes out by itself (the
    /// suppressor takes any steady sound down, echo or not).
    pub fn canceller_only() -> Result<MicCleaner, CleanupError> {
        MicCleaner::make(false)
    }

    fn make(suppress: bool) -> Result<MicCleaner, CleanupError> {
        let tail = (SAMPLE_RATE / 1000 * ECHO_TAIL_MS) as c_int;
        // SAFETY: plain constructors; a null return is checked.
        let echo = NonNull::new(unsafe { ffi::speex_echo_state_init_mc(STEP_SAMPLES as c_int, tail, 1, 1) }).ok_or(CleanupError::Init("echo canceller"))?;
        let Some(pre) = NonNull::new(unsafe { ffi::speex_preprocess_state_init(STEP_SAMPLES as c_int, SAMPLE_RATE as c_int) }) else {
            // SAFETY: made just above, not yet owned by anything.
            unsafe { ffi::speex_echo_state_destroy(echo.as_ptr()) };
            return Err(CleanupError::Init("preprocessor"));
        };
        let cleaner = MicCleaner { echo, pre, rec: [0; STEP_SAMPLES], play: [0; STEP_SAMPLES], out: [0; STEP_SAMPLES], suppress };
        let mut rate = SAMPLE_RATE as c_int;
        // SAFETY: each request takes a pointer to a c_int (or, for the echo
        // state, the state itself), valid for the call.
        unsafe {
            check(ffi::speex_echo_ctl(echo.as_ptr(), ffi::SPEEX_ECHO_SET_SAMPLING_RATE, (&raw mut rate).cast()), "echo sampling rate")?;
            let pre = pre.as_ptr();
            let mut on: c_int = 1;
            check(ffi::speex_preprocess_ctl(pre, ffi::SPEEX_PREPROCESS_SET_DENOISE, (&raw mut on).cast()), "denoise")?;
            let mut db = NOISE_SUPPRESS_DB;
            check(ffi::speex_preprocess_ctl(pre, ffi::SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, (&raw mut db).cast()), "noise suppression")?;
            let mut db = ECHO_SUPPRESS_DB;
            check(ffi::speex_preprocess_ctl(pre, ffi::SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, (&raw mut db).cast()), "echo suppression")?;
            let mut db = ECHO_SUPPRESS_ACTIVE_DB;
            check(ffi::speex_preprocess_ctl(pre, ffi::SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, (&raw mut db).cast()), "echo suppression while talking")?;
            check(ffi::speex_preprocess_ctl(pre, ffi::SPEEX_PREPROCESS_SET_ECHO_STATE, echo.as_ptr().cast::<c_void>()), "echo state")?;
        }
        Ok(cleaner)
    }

    /// Cleans one 20 ms frame of the microphone (`mic`, 48 kHz mono) in
    /// place. `played` is what the speakers played over the same 20 ms,
    /// 48 kHz interleaved stereo, paired in order with the microphone (see
    /// the module's doc); zeros when nothing played.
    pub fn clean(&mut self, mic: &mut [f32], played: &[f32]) {
        debug_assert_eq!(mic.len(), FRAME_SAMPLES);
        debug_assert_eq!(played.len(), 2 * FRAME_SAMPLES);
        for (mic, played) in mic.chunks_exact_mut(STEP_SAMPLES).zip(played.chunks_exact(2 * STEP_SAMPLES)) {
            to_i16(mic, &mut self.rec);
            for (p, f) in self.play.iter_mut().zip(played.chunks_exact(2)) {
                *p = to_sample(0.5 * (f[0] + f[1]));
            }
            // SAFETY: the buffers are the sizes the states were made for
            // (STEP_SAMPLES each), and the states live as long as self.
            unsafe {
                ffi::speex_echo_cancellation(self.echo.as_ptr(), self.rec.as_ptr(), self.play.as_ptr(), self.out.as_mut_ptr());
                if self.suppress {
                    ffi::speex_preprocess_run(self.pre.as_ptr(), self.out.as_mut_ptr());
                }
            }
            for (m, o) in mic.iter_mut().zip(&self.out) {
                *m = f32::from(*o) / 32768.0;
            }
        }
    }

    /// Forgets the echo path learnt: after the pairing of microphone and
    /// speakers moved (see the module's doc), the old path is wrong.
    pub fn reset(&mut self) {
        // SAFETY: the state lives as long as self.
        unsafe { ffi::speex_echo_state_reset(self.echo.as_ptr()) };
    }
}

impl Drop for MicCleaner {
    fn drop(&mut self) {
        // SAFETY: made in new(), destroyed once, here; the preprocessor
        // points at the echo state, so it goes first.
        unsafe {
            ffi::speex_preprocess_state_destroy(self.pre.as_ptr());
            ffi::speex_echo_state_destroy(self.echo.as_ptr());
        }
    }
}

fn check(rc: c_int, what: &'static str) -> Result<(), CleanupError> {
    if rc == 0 { Ok(()) } else { Err(CleanupError::Setting(what)) }
}

fn to_i16(from: &[f32], to: &mut [i16]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = to_sample(*f);
    }
}

fn to_sample(f: f32) -> i16 {
    (f.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::level::{dbfs as db, rms};
    use crate::test_signal::{Babble, Noise};

    /// A room: each speaker reaches the microphone late and quieter, by its
    /// own path (a direct sound and two reflections).
    struct Room {
        history: Vec<[f32; 2]>,
        paths: [[(usize, f32); 3]; 2],
    }

    impl Room {
        fn new(delay_ms: usize) -> Room {
            let d = delay_ms * 48;
            Room { history: Vec::new(), paths: [[(d, 0.5), (d + 131, -0.2), (d + 907, 0.1)], [(d + 40, 0.4), (d + 260, 0.15), (d + 1500, -0.08)]] }
        }

        /// What the microphone hears of the speakers for the stereo `played`.
        fn echo(&mut self, played: &[f32]) -> Vec<f32> {
            let mut mic = Vec::with_capacity(played.len() / 2);
            for f in played.chunks_exact(2) {
                self.history.push([f[0], f[1]]);
                let now = self.history.len() - 1;
                let mut s = 0.0;
                for (ch, path) in self.paths.iter().enumerate() {
                    for &(lag, gain) in path {
                        if let Some(h) = now.checked_sub(lag) {
                            s += gain * self.history[h][ch];
                        }
                    }
                }
                mic.push(s);
            }
            mic
        }
    }


    /// What the cleaner was given and what it made, over the last two
    /// seconds of a run.
    struct Heard {
        mic: f32,
        /// The echo in what the microphone heard.
        echo: f32,
        sent: f32,
        said: f32,
        /// What was sent, less what was said here: the echo left.
        left: f32,
    }

    /// A far-end voice on the speakers (panned, as the spatial mix does)
    /// heard by the microphone through a room `delay_ms` late; someone here
    /// talks over it in the last two seconds when `near`. The reference the
    /// cleaner is given is what was played `skew_ms` later (0: in step).
    fn run(mut cleaner: MicCleaner, delay_ms: usize, skew_ms: usize, seconds: usize, near: bool) -> Heard {
        let mut room = Room::new(delay_ms);
        let (mut far, mut here) = (Babble::new(1), Babble::new(2));
        let frames = seconds * 50;
        let mut played_log: Vec<f32> = Vec::new();
        let (mut mic_all, mut sent_all, mut said_all, mut echo_all) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for f in 0..frames {
            let played: Vec<f32> = far.take(FRAME_SAMPLES).iter().flat_map(|s| [0.8 * s, 0.5 * s]).collect();
            played_log.extend_from_slice(&played);
            let talking = near && f + 100 >= frames;
            let said = if talking { here.take(FRAME_SAMPLES).iter().map(|s| 0.5 * s).collect() } else { vec![0.0; FRAME_SAMPLES] };
            let echo = room.echo(&played);
            let mut mic: Vec<f32> = echo.iter().zip(&said).map(|(e, n)| e + n).collect();
            let skew = 2 * 48 * skew_ms;
            let start = (f * 2 * FRAME_SAMPLES).checked_sub(skew);
            let reference: Vec<f32> = match start {
                Some(s) => played_log[s..s + 2 * FRAME_SAMPLES].to_vec(),
                None => vec![0.0; 2 * FRAME_SAMPLES],
            };
            let before = mic.clone();
            cleaner.clean(&mut mic, &reference);
            if f + 100 >= frames {
                mic_all.extend(before);
                sent_all.extend(mic);
                said_all.extend(said);
                echo_all.extend(echo);
            }
        }
        let left: Vec<f32> = sent_all.iter().zip(&said_all).map(|(s, n)| s - n).collect();
        Heard { mic: rms(&mic_all), echo: rms(&echo_all), sent: rms(&sent_all), said: rms(&said_all), left: rms(&left) }
    }

    #[test]
    fn the_canceller_alone_takes_the_speakers_echo_out() {
        for delay_ms in [20, 80, 150] {
            let h = run(MicCleaner::canceller_only().expect("libspeexdsp"), delay_ms, 0, 8, false);
            let taken = db(h.mic) - db(h.sent);
            assert!(taken > 15.0, "echo {delay_ms} ms late: {:.1} dBFS in, {:.1} dBFS out, {taken:.1} dB taken out", db(h.mic), db(h.sent));
        }
        // The control: the same, with the reference 300 ms late (past the
        // filter's tail): nothing to learn from, nothing taken out.
        let h = run(MicCleaner::canceller_only().expect("libspeexdsp"), 20, 300, 8, false);
        assert!(db(h.mic) - db(h.sent) < 6.0, "a reference that does not match takes nothing out: {:.1} → {:.1} dBFS", db(h.mic), db(h.sent));
    }

    #[test]
    fn with_suppression_the_echo_is_gone_and_a_voice_here_is_kept() {
        let h = run(MicCleaner::new().expect("libspeexdsp"), 60, 0, 8, false);
        assert!(db(h.mic) - db(h.sent) > 25.0, "echo alone: {:.1} dBFS in, {:.1} dBFS out", db(h.mic), db(h.sent));
        assert!(h.sent < crate::level::SPEAKING_RMS, "under the speech gate: {}", h.sent);
        let h = run(MicCleaner::new().expect("libspeexdsp"), 60, 0, 8, true);
        // Someone here talks over the echo: what goes out is their voice,
        // at its level within a few dB.
        assert!((db(h.sent) - db(h.said)).abs() < 4.0, "said {:.1} dBFS, sent {:.1} dBFS (microphone {:.1} dBFS)", db(h.said), db(h.sent), db(h.mic));
        // And the canceller keeps cancelling while they talk (it does not
        // take their voice for a changed room): alone, it is linear, so what
        // it sent less what was said is the echo it left.
        let h = run(MicCleaner::canceller_only().expect("libspeexdsp"), 60, 0, 8, true);
        assert!(db(h.echo) - db(h.left) > 6.0, "while someone talks: echo {:.1} dBFS heard, {:.1} dBFS left (the voice {:.1} dBFS)", db(h.echo), db(h.left), db(h.said));
    }

    #[test]
    fn steady_noise_alone_is_suppressed() {
        let mut cleaner = MicCleaner::new().expect("libspeexdsp");
        let mut noise = Noise::new(7);
        let mut hiss = || 0.01 * noise.signed();
        let silence = vec![0.0; 2 * FRAME_SAMPLES];
        let (mut raw, mut cleaned) = (Vec::new(), Vec::new());
        for f in 0..250 {
            let mut mic: Vec<f32> = (0..FRAME_SAMPLES).map(|_| hiss()).collect();
            let before = mic.clone();
            cleaner.clean(&mut mic, &silence);
            if f >= 200 {
                raw.extend(before);
                cleaned.extend(mic);
            }
        }
        let (raw, cleaned) = (rms(&raw), rms(&cleaned));
        assert!(raw > crate::level::SPEAKING_RMS, "the hiss alone would open the speech gate: {raw}");
        assert!(db(raw) - db(cleaned) > 10.0, "a fan's hiss: {:.1} dBFS in, {:.1} dBFS out", db(raw), db(cleaned));
        assert!(cleaned < crate::level::SPEAKING_RMS, "the hiss no longer opens the speech gate: {cleaned}");
    }
}
