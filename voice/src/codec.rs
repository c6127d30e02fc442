//! Opus for speech: 48 kHz mono, 20 ms frames, 24 kbit/s, in-band FEC so
//! that one lost packet can be rebuilt from the next, and the decoder's
//! concealment when it can't.

use crate::FRAME_SAMPLES;

/// Speech at this rate is clear; a room of eight voices is 192 kbit/s down.
pub const BITRATE: i32 = 24_000;
/// The loss the encoder plans its FEC for (percent).
pub const EXPECTED_LOSS_PCT: i32 = 5;
/// Opus's largest packet is 1275 bytes a frame.
const MAX_PACKET: usize = 1275;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not a `source`: the message has it (a printed chain says it once).
    #[error("Opus: {0}")]
    Opus(opus::Error),
    #[error("a frame is {FRAME_SAMPLES} samples (20 ms at 48 kHz), not {0}")]
    FrameSize(usize),
}

impl From<opus::Error> for CodecError {
    fn from(e: opus::Error) -> Self {
        CodecError::Opus(e)
    }
}

/// Encodes the microphone, one 20 ms frame at a time.
pub struct Encoder {
    inner: opus::Encoder,
    out: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new() -> Result<Encoder, CodecError> {
        let mut inner = opus::Encoder::new(crate::SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        inner.set_bitrate(opus::Bitrate::Bits(BITRATE))?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(EXPECTED_LOSS_PCT)?;
        Ok(Encoder { inner, out: vec![0; MAX_PACKET] })
    }

    /// One frame of samples in -1..1 to one Opus packet.
    pub fn encode(&mut self, frame: &[f32]) -> Result<&[u8], CodecError> {
        if frame.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(frame.len()));
        }
        let n = self.inner.encode_float(frame, &mut self.out)?;
        Ok(&self.out[..n])
    }
}

/// Decodes one voice (one listening slot).
pub struct Decoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new() -> Result<Decoder, CodecError> {
        Ok(Decoder { inner: opus::Decoder::new(crate::SAMPLE_RATE, opus::Channels::Mono)? })
    }

    /// A packet to one frame in `out` (which must hold a frame).
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.decode_into(packet, out, false)
    }

    /// A lost frame, rebuilt from the FEC in the packet after it.
    pub fn recover(&mut self, next_packet: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        self.decode_into(next_packet, out, true)
    }

    /// A lost frame with nothing to rebuild it from: the decoder's
    /// concealment (it extends the last sound and fades it).
    pub fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        self.decode_into(&[], out, false)
    }

    fn decode_into(&mut self, packet: &[u8], out: &mut [f32], fec: bool) -> Result<(), CodecError> {
        if out.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(out.len()));
        }
        let n = self.inner.decode_float(packet, out, fec)?;
        // A packet of another duration (a peer not following the protocol):
        // play what fits, silence the rest.
        out[n.min(FRAME_SAMPLES)..].fill(0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::level::rms;

    pub(crate) fn tone(hz: f32, frame: usize, amplitude: f32) -> Vec<f32> {
        let start = frame * FRAME_SAMPLES;
        (0..FRAME_SAMPLES).map(|i| amplitude * (std::f32::consts::TAU * hz * (start + i) as f32 / crate::SAMPLE_RATE as f32).sin()).collect()
    }

    #[test]
    fn a_tone_survives_encoding_at_about_the_planned_bitrate() {
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut bytes = 0;
        let mut out = vec![0.0; FRAME_SAMPLES];
        for frame in 0..50 {
            let packet = enc.encode(&tone(440.0, frame, 0.5)).unwrap().to_vec();
            bytes += packet.len();
            dec.decode(&packet, &mut out).unwrap();
        }
        // One second of frames; VBR lands near the target.
        let kbit = bytes as f64 * 8.0 / 1000.0;
        assert!((10.0..40.0).contains(&kbit), "{kbit} kbit for a second at {BITRATE} bit/s");
        let level = rms(&out);
        assert!((0.25..0.45).contains(&level), "a 0.5 sine's RMS is 0.354; decoded {level}");
    }

    #[test]
    fn a_lost_frame_is_rebuilt_from_the_next_packet_or_concealed() {
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let packets: Vec<Vec<u8>> = (0..20).map(|f| enc.encode(&tone(300.0, f, 0.5)).unwrap().to_vec()).collect();
        let mut out = vec![0.0; FRAME_SAMPLES];
        for p in &packets[..10] {
            dec.decode(p, &mut out).unwrap();
        }
        // Packet 10 lost: rebuilt from 11's FEC; then 11 itself.
        dec.recover(&packets[11], &mut out).unwrap();
        assert!(rms(&out) > 0.1, "the recovered frame has the voice in it: {}", rms(&out));
        dec.decode(&packets[11], &mut out).unwrap();
        dec.conceal(&mut out).unwrap();
        assert!(rms(&out) > 0.05, "concealment carries the sound on: {}", rms(&out));
    }

    #[test]
    fn frames_of_the_wrong_size_are_refused_with_what_is_allowed() {
        let mut enc = Encoder::new().unwrap();
        let err = enc.encode(&[0.0; 100]).unwrap_err();
        assert_eq!(err.to_string(), "a frame is 960 samples (20 ms at 48 kHz), not 100");
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let mut dec = Decoder::new().unwrap();
        let mut out = vec![0.0; FRAME_SAMPLES];
        // A TOC byte asking for more frames than the packet holds.
        assert!(dec.decode(&[0xff, 0xff, 0xff], &mut out).is_err());
    }
}
