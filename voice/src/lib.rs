//! Voice audio for the desktop client: what happens between the microphone
//! and the SFU's RTP, and between the SFU's listening slots and the
//! speakers. No networking and no ECS here: the client's network thread
//! feeds packets in and takes frames out (`client/src/network/voice.rs`).
//!
//! - [`codec`] — Opus at 48 kHz mono, 20 ms frames, with in-band FEC and
//!   loss concealment;
//! - [`jitter`] — one buffer per listening slot: reorders, times the
//!   playout to the measured jitter, says which frames are missing;
//! - [`spatial`] — each voice placed at its avatar: distance fades it,
//!   the listener's facing pans it;
//! - [`mix`] — a slot's jitter buffer and decoder together, and the mix of
//!   all slots into one stereo frame;
//! - [`cleanup`] — echo cancellation and noise suppression for the
//!   microphone;
//! - [`mic`] — the microphone's frames paired with what the speakers
//!   played, and cleaned;
//! - [`gain`] — automatic gain: each voice brought to one loudness;
//! - [`level`] — how loud a frame is, for the speaking indicators;
//! - [`resample`] — between a device's rate and channels and 48 kHz mono;
//! - [`devices`] — the microphone and speakers (cpal), or none;
//! - [`device_list`] — which device a user means, by id or name;
//! - [`test_signal`] — speech-like sound for tests and benchmarks.

pub mod cleanup;
pub mod codec;
pub mod device_list;
pub mod devices;
pub mod gain;
pub mod jitter;
pub mod level;
pub mod mic;
pub mod mix;
pub mod resample;
pub mod spatial;
pub mod test_signal;

/// Opus runs at 48 kHz; so does everything inside this crate.
pub const SAMPLE_RATE: u32 = 48_000;
/// One frame: 20 ms.
pub const FRAME_MS: u32 = 20;
/// Samples in one mono frame (20 ms at 48 kHz); also a frame's RTP
/// timestamp step.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
