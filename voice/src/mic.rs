//! The microphone's frames as the call takes them: each paired with what
//! the speakers played over the same 20 ms, cleaned of that echo and the
//! room's noise ([`crate::cleanup`]), and brought to one loudness
//! ([`crate::gain`]).
//!
//! Pairing is by count: from a common start (the played ring cut to the
//! microphone's backlog) the n-th sample recorded goes with the n-th sample
//! played. Both come at the sound card's pace, so the delay between them
//! then holds, and the canceller learns it. Whatever upsets the count is
//! counted too, so the pairing holds through it:
//! - a frame whose reference has not arrived yet (the output's period is
//!   longer than the input's) waits up to [`REFERENCE_WAIT_STEPS`]; after
//!   that it goes with silence, and the reference it should have had is
//!   skipped when it comes;
//! - microphone audio skipped by the caller, or dropped by its full ring,
//!   skips as much reference; reference dropped by its full ring pairs as
//!   much microphone audio with silence.
//!
//! Two sound cards (a USB microphone, laptop speakers) keep two clocks, a
//! few tens or hundreds of parts per million apart: the count then slides,
//! and so does the echo's delay, faster than the canceller can follow. The
//! drift is read from when each stream's periods arrive, and the played
//! stream is resampled to the microphone's clock ([`DriftResampler`]).
//!
//! When the account runs past [`MAX_OFFSET`], or the reference on hand
//! moves against the microphone by more than [`MAX_DRIFT`] all the same
//! (drift not yet caught, or the speakers stopped reporting), the pairing
//! starts again from now and the canceller relearns. No microphone audio
//! is dropped for any of it.

use crate::FRAME_SAMPLES;
use crate::cleanup::{CleanupError, MicCleaner};
use crate::gain::AutoGain;
use crate::devices::Ring;
use crate::level::rms;

/// Steps (calls to [`CleanMic::next_frame`] that find it missing) a
/// microphone frame may wait for its reference: 60 ms at one step a frame,
/// more than an output period of 2,048 frames at 48 kHz.
pub const REFERENCE_WAIT_STEPS: u32 = 3;
/// The most reference (stereo samples) owed or lent before the pairing
/// starts again: 200 ms.
pub const MAX_OFFSET: i64 = 2 * 10 * FRAME_SAMPLES as i64;
/// The lowest lead of the played ring over the microphone is taken over
/// this many steps (1 s: past any device period's saw-tooth) ...
const DRIFT_WINDOW_STEPS: u32 = 50;
/// ... and when it has moved by more than this (20 ms, stereo samples)
/// since the pairing started, the clocks have drifted apart: start again.
const MAX_DRIFT: i64 = 2 * FRAME_SAMPLES as i64;
/// A reference louder than this (RMS) counts as the speakers playing, for
/// [`CleanStats`]'s figure and [`CleanMic::echo_only`].
const PLAYING_RMS: f32 = 0.01;
/// The aligned ring holds at most this (200 ms, stereo).
const ALIGNED_RING: usize = 2 * 10 * FRAME_SAMPLES;
/// The echo tail in frames: the speakers quiet this long, their echo is gone.
const ECHO_TAIL_FRAMES: u32 = crate::cleanup::ECHO_TAIL_MS / crate::FRAME_MS;
/// A frame taken down by this much (dB) while the speakers played was
/// their echo and nothing else: a voice here would have kept most of its
/// level.
const ECHO_ONLY_DB: f64 = 12.0;

/// What the cleaning did, this call so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CleanStats {
    /// Frames cleaned.
    pub cleaned: u64,
    /// Frames that went (in part) with silence for a reference that was late.
    pub late_reference: u64,
    /// Times the pairing started (the first time, after the clocks drifted
    /// apart, and each time the cleaning is switched on).
    pub starts: u64,
    /// Of those, the starts because the speakers' and the microphone's
    /// clocks drifted apart.
    pub drifted: u64,
    /// How far the speakers' clock is taken to run from the microphone's
    /// (parts per million, + faster), and so resampled.
    pub drift_ppm: f64,
    /// The automatic gain now (dB).
    pub gain_db: f32,
    /// Energy in and out over the frames taken while the speakers played:
    /// how much of what the microphone heard then was taken out.
    pub energy_in: f64,
    pub energy_out: f64,
}

impl CleanStats {
    /// How much quieter the microphone was made while the speakers played
    /// (dB): echo and noise taken out, or what a voice here lost. None
    /// before the speakers played.
    pub fn reduction_db(&self) -> Option<f32> {
        (self.energy_in > 0.0 && self.energy_out > 0.0).then(|| (10.0 * (self.energy_in / self.energy_out).log10()) as f32)
    }
}

/// The microphone as the call takes it; see the module's doc.
#[derive(Debug)]
pub struct CleanMic {
    cleaner: Option<MicCleaner>,
    on: bool,
    synced: bool,
    /// Positive: reference samples to skip before the next pairing (their
    /// microphone audio is gone, or they went as silence). Negative: that
    /// many reference samples are missing, and silence stands in for them.
    offset: i64,
    waited: u32,
    /// The lowest lead this window, the steps in it, and the first
    /// window's lowest since the start (see [`MAX_DRIFT`]).
    lead_low: i64,
    window_steps: u32,
    lead_baseline: Option<i64>,
    mic_dropped: u64,
    played_dropped: u64,
    aligned_dropped: u64,
    /// The played stream brought to the microphone's clock (see
    /// [`DriftResampler`]); all the pairing works on this.
    aligned: Ring,
    /// When the speakers' last period came.
    played_at: Option<std::time::Instant>,
    resampler: DriftResampler,
    drift: DriftEstimate,
    reference: Vec<f32>,
    scratch: Vec<f32>,
    pulled: Vec<f32>,
    echo_only: bool,
    /// Automatic gain after the cleaning (off only to measure the
    /// canceller alone).
    auto_gain: bool,
    gain: AutoGain,
    /// Frames since the speakers last played.
    quiet_frames: u32,
    pub stats: CleanStats,
}

impl CleanMic {
    /// Cleaning on or off; on fails only if libspeexdsp can't make its
    /// states (it is linked: without the library the client doesn't start).
    pub fn new(on: bool) -> Result<CleanMic, CleanupError> {
        Ok(CleanMic {
            cleaner: if on { Some(MicCleaner::new()?) } else { None },
            on,
            synced: false,
            offset: 0,
            waited: 0,
            lead_low: i64::MAX,
            window_steps: 0,
            lead_baseline: None,
            mic_dropped: 0,
            played_dropped: 0,
            aligned_dropped: 0,
            aligned: Ring::new(ALIGNED_RING),
            played_at: None,
            resampler: DriftResampler::default(),
            drift: DriftEstimate::default(),
            reference: vec![0.0; 2 * FRAME_SAMPLES],
            scratch: Vec::new(),
            pulled: Vec::new(),
            echo_only: false,
            auto_gain: true,
            gain: AutoGain::default(),
            quiet_frames: 0,
            stats: CleanStats::default(),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Whether the last frame was the speakers' echo and nothing more: the
    /// canceller took it down by [`ECHO_ONLY_DB`] while they played. What
    /// is left of such a frame is no one talking here, whatever its level,
    /// so the speech gate should not open for it.
    pub fn echo_only(&self) -> bool {
        self.echo_only
    }

    /// Switches cleaning on or off; on starts the pairing again.
    pub fn set_on(&mut self, on: bool) -> Result<(), CleanupError> {
        if on == self.on {
            return Ok(());
        }
        if on && self.cleaner.is_none() {
            self.cleaner = Some(MicCleaner::new()?);
        }
        self.on = on;
        self.synced = false;
        Ok(())
    }

    /// Once per step, before frames are taken: counts what the rings
    /// dropped, starts the pairing when it is not running (or was lost),
    /// and skips what reference is owed.
    pub fn begin_step(&mut self, mic: &Ring, played: &Ring) {
        if !self.on {
            // Nothing pairs with it: keep it from filling.
            played.keep_newest(0);
            return;
        }
        let played = self.pull(played);
        let (mic_dropped, aligned_dropped) = (mic.dropped(), played.dropped());
        self.offset += 2 * (mic_dropped - self.mic_dropped) as i64 - (aligned_dropped - self.aligned_dropped) as i64;
        (self.mic_dropped, self.aligned_dropped) = (mic_dropped, aligned_dropped);
        if !self.synced || self.offset.abs() > MAX_OFFSET {
            self.start(mic, &played);
        }
        self.pay(&played);
        self.watch_drift(mic, &played);
    }

    /// Moves what the speakers played since the last call through the
    /// drift resampler into the aligned ring; returns that ring.
    fn pull(&mut self, played: &Ring) -> Ring {
        self.scratch.clear();
        // The count and the time of the last period, together.
        if let Some(at) = played.drain_into(&mut self.scratch) {
            self.played_at = Some(at);
        }
        // Played audio lost before it was pulled (this thread stalled past
        // the ring): as much microphone goes with silence.
        let dropped = played.dropped();
        self.offset -= (dropped - self.played_dropped) as i64;
        self.played_dropped = dropped;
        if !self.scratch.is_empty() {
            self.pulled.clear();
            self.resampler.process(&self.scratch, &mut self.pulled);
            self.aligned.push(&self.pulled);
        }
        self.aligned.clone()
    }

    /// The reference on hand beyond what the microphone's backlog needs
    /// saw-tooths with the devices' periods; its low point holds while the
    /// two clocks agree. A speaker clock running fast makes it climb (the
    /// reference paired gets older than the echo: the filter can't follow
    /// past the real latency), a slow one makes it fall.
    fn watch_drift(&mut self, mic: &Ring, played: &Ring) {
        let (mic_len, mic_at) = mic.len_and_last_push();
        let lead = played.len() as i64 - self.offset - 2 * mic_len as i64;
        // Each stream moves on between its periods: where each really is
        // now is its count plus the time since its last period, so the
        // lead between them is the counted lead plus the gap between their
        // last periods. That takes out the periods' saw-tooth, which is
        // far coarser than the drift to be measured.
        if let (Some(m), Some(p)) = (mic_at, self.played_at) {
            let gap_s = match m.checked_duration_since(p) {
                Some(d) => d.as_secs_f64(),
                None => -p.duration_since(m).as_secs_f64(),
            };
            // A stream that stopped for a while says nothing about drift,
            // and the fit under way would read its jump as one.
            if gap_s.abs() > MAX_PERIOD_GAP_S {
                self.drift.restart();
                return self.watch_lead(lead, mic, played);
            }
            let smooth_lead = lead as f64 / 2.0 + gap_s * f64::from(crate::SAMPLE_RATE);
            if let Some(correction) = self.drift.step(m, smooth_lead) {
                self.resampler.correct(correction);
                self.stats.drift_ppm = self.resampler.ppm();
            }
        }
        self.watch_lead(lead, mic, played);
    }

    /// The counted lead's low point per second, against where it started:
    /// past [`MAX_DRIFT`] (drift the resampler has not caught up with, or a
    /// stream that stopped) the pairing starts over.
    fn watch_lead(&mut self, lead: i64, mic: &Ring, played: &Ring) {
        self.lead_low = self.lead_low.min(lead);
        self.window_steps += 1;
        if self.window_steps < DRIFT_WINDOW_STEPS {
            return;
        }
        let low = std::mem::replace(&mut self.lead_low, i64::MAX);
        self.window_steps = 0;
        match self.lead_baseline {
            None => self.lead_baseline = Some(low),
            Some(baseline) if (low - baseline).abs() > MAX_DRIFT => {
                self.stats.drifted += 1;
                self.start(mic, played);
            }
            Some(_) => {}
        }
    }

    /// From now: the played ring cut to the microphone's backlog, so the
    /// oldest of each were heard and played about together.
    fn start(&mut self, mic: &Ring, played: &Ring) {
        let backlog = 2 * mic.len();
        played.keep_newest(backlog);
        self.offset = played.len() as i64 - backlog as i64;
        (self.lead_low, self.window_steps, self.lead_baseline) = (i64::MAX, 0, None);
        self.drift.restart();
        if let Some(c) = &mut self.cleaner {
            c.reset();
        }
        self.synced = true;
        self.stats.starts += 1;
    }

    /// The caller skipped `samples` of microphone audio: the reference for
    /// them goes too.
    pub fn skipped(&mut self, samples: usize, played: &Ring) {
        if self.on && samples > 0 {
            self.offset += 2 * samples as i64;
            let played = self.pull(played);
            self.pay(&played);
        }
    }

    fn pay(&mut self, played: &Ring) {
        self.offset -= played.discard_oldest(self.offset.max(0) as usize) as i64;
    }

    /// The next microphone frame, cleaned, into `frame`; false when there
    /// is none yet (or its reference is worth waiting for).
    pub fn next_frame(&mut self, mic: &Ring, played: &Ring, frame: &mut [f32]) -> bool {
        if mic.len() < FRAME_SAMPLES {
            return false;
        }
        self.echo_only = false;
        if !self.on || self.cleaner.is_none() {
            return mic.take_exact(frame);
        }
        // Reference owed is skipped first (the callback may have brought
        // it since the step began): it is not this frame's.
        let played = &self.pull(played);
        self.pay(played);
        let Some(cleaner) = self.cleaner.as_mut() else { return false };
        let want = self.reference.len();
        // Reference lent (negative offset) is silence at the front.
        let lent = (-self.offset).clamp(0, want as i64) as usize;
        if played.len() < want - lent && self.waited < REFERENCE_WAIT_STEPS {
            self.waited += 1;
            return false;
        }
        if !mic.take_exact(frame) {
            return false;
        }
        self.reference[..lent].fill(0.0);
        self.offset += lent as i64;
        let got = played.pop_into(&mut self.reference[lent..]);
        if lent + got < want {
            // Late past the wait: the frames after this one don't wait
            // until the reference is back (with no speakers reporting at
            // all, the microphone must not stall).
            self.reference[lent + got..].fill(0.0);
            self.offset += (want - lent - got) as i64;
            self.stats.late_reference += 1;
        } else {
            self.waited = 0;
        }
        let playing = rms(&self.reference) > PLAYING_RMS;
        let energy = |f: &[f32]| f.iter().map(|s| f64::from(*s) * f64::from(*s)).sum::<f64>();
        let heard = energy(frame);
        cleaner.clean(frame, &self.reference);
        if playing {
            let sent = energy(frame);
            self.stats.energy_in += heard;
            self.stats.energy_out += sent;
            self.echo_only = heard > 0.0 && heard >= sent * 10f64.powf(ECHO_ONLY_DB / 10.0);
        }
        // Loudness is learnt from the voice alone: not while the speakers
        // play, nor while their echo may still be coming back (what is
        // left of it would teach it too).
        self.quiet_frames = if playing { 0 } else { self.quiet_frames.saturating_add(1) };
        if self.auto_gain {
            self.gain.apply(frame, self.quiet_frames > ECHO_TAIL_FRAMES);
            self.stats.gain_db = self.gain.gain_db();
        }
        self.stats.cleaned += 1;
        true
    }
}

/// The played stream resampled by a ratio a little off 1, so that it runs
/// on the microphone's clock: two sound cards (a USB microphone, laptop
/// speakers) each keep their own, a few tens or hundreds of parts per
/// million apart, and an echo path that slides by a sample every few
/// hundred milliseconds is one the canceller can't learn. Lanczos
/// interpolation (six taps), stereo. At exactly 1 it passes the samples
/// through.
#[derive(Debug, Clone)]
struct DriftResampler {
    /// Played frames per microphone frame.
    step: f64,
    /// Where the next output frame falls, in input frames after
    /// `history[4]` (the last frame of the previous batch).
    pos: f64,
    /// The last five input frames, oldest first.
    history: [[f32; 2]; 5],
}

impl Default for DriftResampler {
    fn default() -> Self {
        DriftResampler { step: 1.0, pos: 1.0, history: [[0.0; 2]; 5] }
    }
}

/// Periods further apart than this (in the two streams' last arrivals)
/// mean a stream stalled: no drift is read from that step.
const MAX_PERIOD_GAP_S: f64 = 0.1;
/// The furthest the resampler goes from 1, and the most a fit may read:
/// beyond it the streams jumped (a stall, a device opened again), and
/// what is not followed is caught by [`MAX_DRIFT`].
const MAX_DRIFT_PPM: f64 = 1_000.0;

impl DriftResampler {
    fn correct(&mut self, relative: f64) {
        self.step = (self.step + relative).clamp(1.0 - MAX_DRIFT_PPM * 1e-6, 1.0 + MAX_DRIFT_PPM * 1e-6);
    }

    fn ppm(&self) -> f64 {
        (self.step - 1.0) * 1e6
    }

    fn process(&mut self, stereo: &[f32], out: &mut Vec<f32>) {
        let n = stereo.len() / 2;
        if n == 0 {
            return;
        }
        // Frames −4 … 0 are the history; frame i > 0 is stereo[i − 1].
        let history = self.history;
        let frame = |i: isize| if i <= 0 { history[(i + 4) as usize] } else { [stereo[2 * i as usize - 2], stereo[2 * i as usize - 1]] };
        if self.step == 1.0 && self.pos == 1.0 {
            out.extend_from_slice(&stereo[..2 * n]);
        } else {
            // Each position between frames i and i + 1, read through a
            // Lanczos kernel over frames i − 2 … i + 3 (i + 3 ≤ n).
            while self.pos < n as f64 - 2.0 {
                let i = self.pos.floor() as isize;
                let t = self.pos - i as f64;
                let (mut acc, mut weights) = ([0.0f32; 2], 0.0f32);
                for k in -2..=3isize {
                    let w = lanczos3(t - k as f64) as f32;
                    let f = frame(i + k);
                    acc[0] += w * f[0];
                    acc[1] += w * f[1];
                    weights += w;
                }
                // Normalised: a steady level comes out as it went in.
                out.extend_from_slice(&[acc[0] / weights, acc[1] / weights]);
                self.pos += self.step;
            }
            self.pos -= n as f64;
        }
        let n = n as isize;
        self.history = [frame(n - 4), frame(n - 3), frame(n - 2), frame(n - 1), frame(n)];
    }
}

/// The Lanczos kernel with three lobes.
fn lanczos3(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        return 1.0;
    }
    if x.abs() >= 3.0 {
        return 0.0;
    }
    let px = std::f64::consts::PI * x;
    3.0 * px.sin() * (px / 3.0).sin() / (px * px)
}

/// The rate the aligned stream drifts at against the microphone, from the
/// lead of one over the other (frames) at every step: a least-squares
/// slope over [`DRIFT_FIT_STEPS`]. Each fit past [`DRIFT_DEADBAND_PPM`]
/// corrects the resampler's ratio by what it measured, then the fit starts
/// afresh at the new ratio.
#[derive(Debug, Clone, Default)]
struct DriftEstimate {
    n: f64,
    sum_t: f64,
    sum_l: f64,
    sum_tt: f64,
    sum_tl: f64,
    /// The fit's first step's time (the microphone's last period then),
    /// and the last step's lead.
    start: Option<std::time::Instant>,
    last: Option<f64>,
}

/// Steps in one fit: 10 s.
const DRIFT_FIT_STEPS: f64 = 500.0;
/// Slopes under this (parts per million) are left alone: one card's two
/// streams read a few ppm either way, from the callbacks' timing.
const DRIFT_DEADBAND_PPM: f64 = 10.0;
/// A lead that moves by more than this (frames, 1 ms) in one step jumped:
/// drift moves it by a fraction of a frame a step.
const MAX_LEAD_STEP: f64 = 48.0;

impl DriftEstimate {
    fn restart(&mut self) {
        *self = DriftEstimate::default();
    }

    /// One step's lead (frames) at `at` (when the microphone's last period
    /// came); a correction to the ratio after each fit.
    fn step(&mut self, at: std::time::Instant, lead: f64) -> Option<f64> {
        if self.last.is_some_and(|last| (lead - last).abs() > MAX_LEAD_STEP) {
            // A jump, not drift: start the fit again from here.
            self.restart();
        }
        self.last = Some(lead);
        // Time, not steps: the call's steps are 20 ms apart only on average.
        let start = *self.start.get_or_insert(at);
        let t = at.saturating_duration_since(start).as_secs_f64();
        self.n += 1.0;
        self.sum_t += t;
        self.sum_l += lead;
        self.sum_tt += t * t;
        self.sum_tl += t * lead;
        if self.n < DRIFT_FIT_STEPS {
            return None;
        }
        let n = self.n;
        let spread = n * self.sum_tt - self.sum_t * self.sum_t;
        let slope = (n * self.sum_tl - self.sum_t * self.sum_l) / spread;
        self.restart();
        if !(spread > 0.0 && slope.is_finite()) {
            return None;
        }
        // Frames of lead gained per second, over the frames a second: what
        // the ratio is still off by. Where the lead has got to meanwhile is
        // left alone: a lead that holds is a delay that holds, which the
        // canceller learns; one past 20 ms starts the pairing over.
        let correction = slope / f64::from(crate::SAMPLE_RATE);
        // Beyond what two cards drift by, the streams jumped (a stall, a
        // device opened again): not a rate to follow.
        if correction.abs() * 1e6 > MAX_DRIFT_PPM {
            return None;
        }
        (correction.abs() * 1e6 > DRIFT_DEADBAND_PPM).then_some(correction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_signal::Babble;

    /// A sound card: each output period it plays what the speakers' ring
    /// has (into the played ring); each input period it records, into the
    /// microphone ring, the echo of what it played `delay` samples earlier,
    /// at half volume. The output's clock runs `speed` times the input's.
    struct Card {
        speakers: Ring,
        played: Ring,
        mic: Ring,
        history: Vec<f32>,
        recorded: usize,
        played_frames: usize,
        delay: usize,
        speed: f64,
        epoch: std::time::Instant,
    }

    impl Card {
        fn new(delay: usize) -> Card {
            Card { speakers: Ring::new(1 << 16), played: Ring::new(2 * 10 * FRAME_SAMPLES), mic: Ring::new(10 * FRAME_SAMPLES), history: Vec::new(), recorded: 0, played_frames: 0, delay, speed: 1.0, epoch: std::time::Instant::now() }
        }

        /// The simulated time `frames` frames into a stream on a clock at `speed`.
        fn at(&self, frames: usize, speed: f64) -> std::time::Instant {
            self.epoch + std::time::Duration::from_secs_f64(frames as f64 / 48_000.0 / speed)
        }

        fn play(&mut self, frames: usize) {
            let mut out = vec![0.0; 2 * frames];
            let got = self.speakers.pop_into(&mut out);
            out[got..].fill(0.0);
            self.played_frames += frames;
            self.played.push_at(&out, self.at(self.played_frames, self.speed));
            self.history.extend(out.chunks_exact(2).map(|f| 0.5 * (f[0] + f[1])));
        }

        fn record(&mut self, frames: usize) {
            let start = self.recorded;
            // Sample i of the microphone hears the speakers at output time
            // i × speed − delay: between their samples when the clocks
            // differ, so read there (Lanczos, 8 taps), as a real room would
            // carry the sound.
            let heard_at = |i: usize| {
                let x = i as f64 * self.speed - self.delay as f64;
                let base = x.floor() as i64;
                let mut sum = 0.0;
                for k in (base - 3)..=(base + 4) {
                    let (Ok(k_index), d) = (usize::try_from(k), x - k as f64) else { continue };
                    let Some(s) = self.history.get(k_index) else { continue };
                    let w = if d.abs() < 1e-9 { 1.0 } else { let pd = std::f64::consts::PI * d; 4.0 * pd.sin() * (pd / 4.0).sin() / (pd * pd) };
                    sum += w * f64::from(*s);
                }
                sum as f32
            };
            let mic: Vec<f32> = (start..start + frames).map(|i| 0.5 * heard_at(i)).collect();
            self.recorded += frames;
            self.mic.push_at(&mic, self.at(self.recorded, 1.0));
        }
    }

    fn far_voice(babble: &mut Babble) -> Vec<f32> {
        babble.take(FRAME_SAMPLES).iter().flat_map(|s| [0.7 * s, 0.4 * s]).collect()
    }

    /// Cleaning with the canceller alone: the suppressor would take down
    /// echo it was never paired for too, hiding a broken pairing.
    fn canceller_only() -> CleanMic {
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        mic.cleaner = Some(MicCleaner::canceller_only().expect("libspeexdsp"));
        mic.auto_gain = false;
        mic
    }

    /// Runs `steps` 20 ms steps with the output's period `out_period` and
    /// the input's `in_period` (frames); returns the stats.
    fn run(on: bool, out_period: usize, in_period: usize, steps: usize) -> (CleanStats, Vec<f32>) {
        let (stats, _, sent) = run_clocks(on, out_period, in_period, steps, 1.0, 0);
        (stats, sent)
    }

    /// How much quieter the microphone was made over the last `tail`
    /// steps (dB), the clocks `speed` apart.
    fn taken_out_at_the_end(out_period: usize, in_period: usize, steps: usize, speed: f64, tail: usize) -> (f64, CleanStats) {
        let (end, before, _) = run_clocks(true, out_period, in_period, steps, speed, steps - tail);
        (10.0 * ((end.energy_in - before.energy_in) / (end.energy_out - before.energy_out)).log10(), end)
    }

    /// [`run`], the output's clock at `speed` times the input's.
    /// Also the stats as they were at step `mark`.
    fn run_clocks(on: bool, out_period: usize, in_period: usize, steps: usize, speed: f64, mark: usize) -> (CleanStats, CleanStats, Vec<f32>) {
        // What a card plays leaves it a period after it was taken, at the
        // earliest; then 30 ms more to the microphone.
        let mut card = Card::new(out_period + 48 * 30);
        card.speed = speed;
        let mut mic = if on { canceller_only() } else { CleanMic::new(false).expect("off") };
        let (mut babble, mut frame, mut sent) = (Babble::new(9), vec![0.0; FRAME_SAMPLES], Vec::new());
        let (mut out_clock, mut in_clock) = (0, 0);
        let mut marked = CleanStats::default();
        for step in 0..steps {
            if step == mark {
                marked = mic.stats;
            }
            card.speakers.push(&far_voice(&mut babble));
            if card.speakers.len() < 2 * out_period {
                card.speakers.push(&far_voice(&mut babble)); // a fast card ran it low
            }
            // The card's periods over this step's 960 frames.
            let now = (step + 1) * FRAME_SAMPLES;
            while out_clock + out_period <= (now as f64 * speed) as usize {
                card.play(out_period);
                out_clock += out_period;
            }
            while in_clock + in_period <= now {
                card.record(in_period);
                in_clock += in_period;
            }
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {
                sent.extend_from_slice(&frame);
            }
        }
        (mic.stats, marked, sent)
    }

    #[test]
    fn echo_is_taken_out_whatever_the_cards_periods() {
        for (out_period, in_period) in [(480, 480), (1024, 256), (256, 1024), (2048, 960)] {
            // The canceller alone, 10 s, a fresh run each (deterministic).
            let (taken, stats) = taken_out_at_the_end(out_period, in_period, 500, 1.0, 100);
            assert!(stats.cleaned > 490, "periods {out_period}/{in_period}: {} frames cleaned of 500", stats.cleaned);
            assert_eq!(stats.starts, 1, "periods {out_period}/{in_period}: the pairing held");
            assert_eq!(stats.drift_ppm, 0.0, "periods {out_period}/{in_period}: one clock, nothing resampled");
            assert!(taken > 15.0, "periods {out_period}/{in_period}: {taken:.1} dB taken out over the last 2 s, {} late references", stats.late_reference);
        }
        // The control: pairing broken on purpose (a microphone 60 ms ahead
        // of the reference it is given: the echo comes before its cause).
        let mut card = Card::new(0);
        card.speed = 1.0;
        let (mut babble, mut frame) = (Babble::new(3), vec![0.0; FRAME_SAMPLES]);
        let mut mic = canceller_only();
        for step in 0..500 {
            card.speakers.push(&far_voice(&mut babble));
            card.play(FRAME_SAMPLES);
            card.record(FRAME_SAMPLES);
            if step == 0 {
                mic.begin_step(&card.mic, &card.played);
                // Three frames of reference the microphone never heard.
                card.played.push(&far_voice(&mut Babble::new(4)));
                card.played.push(&far_voice(&mut Babble::new(5)));
                card.played.push(&far_voice(&mut Babble::new(6)));
            }
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {}
        }
        let taken = mic.stats.reduction_db().expect("played");
        assert!(taken < 6.0, "a reference 60 ms behind its echo takes nothing out: {taken:.1} dB");
    }

    /// Two cards' clocks apart: the drift is read from the streams' arrival
    /// times and the played stream resampled to the microphone's clock.
    /// Measured: without the resampling 4.2 dB taken out at 200 ppm, with
    /// it 16–20 dB, one clock 26 dB.
    #[test]
    fn clocks_that_drift_apart_are_resampled_together() {
        for speed in [1.0002, 0.9998] {
            let (taken, stats) = taken_out_at_the_end(480, 480, 3000, speed, 500);
            let actual = (speed - 1.0) * 1e6;
            assert!((stats.drift_ppm - actual).abs() < 10.0, "speed {speed}: drift read as {:.1} ppm, is {actual:.0}: {stats:?}", stats.drift_ppm);
            assert!(taken > 12.0, "speed {speed}: {taken:.1} dB taken out over the last 10 s: {stats:?}");
            assert_eq!(stats.starts, 1, "speed {speed}: resampled, never adrift enough to start over: {stats:?}");
        }
        let (taken, stats) = taken_out_at_the_end(480, 480, 3000, 1.0, 500);
        assert_eq!((stats.starts, stats.drift_ppm), (1, 0.0), "one clock: nothing resampled");
        assert!(taken > 20.0, "one clock: {taken:.1} dB");
    }

    /// A played stream that jumps (a device opened again: 3 ms more of it at
    /// once, later 30) is not read as drift; a lead moved past 20 ms starts
    /// the pairing over.
    #[test]
    fn a_jump_in_the_played_stream_is_not_drift() {
        let mut card = Card::new(48 * 30);
        let (mut babble, mut frame) = (Babble::new(5), vec![0.0; FRAME_SAMPLES]);
        let mut mic = canceller_only();
        for step in 0..1500 {
            card.speakers.push(&far_voice(&mut babble));
            card.play(FRAME_SAMPLES);
            // 3 ms more at once (under the 20 ms that starts over), then 30.
            let extra = match step {
                300 => 144,
                900 => 1440,
                _ => 0,
            };
            if extra > 0 {
                card.speakers.push(&far_voice(&mut babble));
                card.play(extra);
                card.played_frames -= extra; // the clock did not move
            }
            card.record(FRAME_SAMPLES);
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {}
        }
        assert_eq!(mic.stats.drift_ppm, 0.0, "a jump, not a rate: {:?}", mic.stats);
        assert_eq!((mic.stats.starts, mic.stats.drifted), (2, 1), "3 ms kept, 30 ms more lead started over once: {:?}", mic.stats);
    }

    #[test]
    fn the_resampler_passes_samples_through_at_one_and_keeps_the_count_off_it() {
        let ramp: Vec<f32> = (0..2000).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let mut r = DriftResampler::default();
        let mut out = Vec::new();
        for chunk in ramp.chunks(2 * 480) {
            r.process(chunk, &mut out);
        }
        assert_eq!(out, ramp, "at exactly 1, untouched");
        // 1,000 ppm fast: 1,000 frames of the played clock make 999 of ours
        // (give or take the kernel's reach), and a 440 Hz tone comes out as
        // that tone read at the new times.
        let mut r = DriftResampler::default();
        r.correct(1e-3);
        let mut out = Vec::new();
        let tone = |x: f64| (std::f64::consts::TAU * 440.0 * x / 48_000.0).sin() as f32;
        let long: Vec<f32> = (0..100_000).flat_map(|i| [tone(i as f64), 0.5]).collect();
        for chunk in long.chunks(2 * 333) {
            r.process(chunk, &mut out);
        }
        let frames = out.len() / 2;
        assert!((frames as i64 - 99_900).abs() <= 4, "{frames} frames out of 100,000 at +1,000 ppm");
        let worst = out.chunks_exact(2).enumerate().skip(8).map(|(k, f)| (f[0] - tone(k as f64 * 1.001)).abs().max((f[1] - 0.5).abs())).fold(0.0f32, f32::max);
        assert!(worst < 2e-3, "the tone read at the new times, off by {worst} at most");

        // Batches of one frame and up, and the switch from passing through
        // to resampling in mid-stream: the count holds, and a slow tone has
        // no step in it (a 50 Hz tone moves 0.0065 a frame at most).
        let slow = |x: f64| (std::f64::consts::TAU * 50.0 * x / 48_000.0).sin() as f32;
        let input: Vec<f32> = (0..60_000).flat_map(|i| [slow(i as f64), 0.0]).collect();
        let mut r = DriftResampler::default();
        let (mut out, mut at, mut sizes) = (Vec::new(), 0, [1, 2, 3, 5, 333].iter().cycle());
        while at < 60_000 {
            if at >= 30_000 && r.step == 1.0 {
                r.correct(-5e-4);
            }
            let n = (*sizes.next().expect("cycles")).min(60_000 - at);
            r.process(&input[2 * at..2 * (at + n)], &mut out);
            at += n;
        }
        let frames = out.len() / 2;
        assert!((frames as i64 - 60_015).abs() <= 6, "{frames} frames: 30,000 through and 30,000 at −500 ppm");
        let jump = out.chunks_exact(2).map(|f| f[0]).collect::<Vec<_>>().windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0f32, f32::max);
        assert!(jump < 0.0075, "a step of {jump} in a slow tone");    }

    #[test]
    fn echo_alone_is_told_from_a_voice_here() {
        let mut card = Card::new(48 * 30);
        let (mut far, mut here, mut frame) = (Babble::new(11), Babble::new(12), vec![0.0; FRAME_SAMPLES]);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        let (mut echo_frames, mut voice_frames) = ((0, 0), (0, 0));
        for step in 0..600 {
            card.speakers.push(&far_voice(&mut far));
            card.play(FRAME_SAMPLES);
            card.record(FRAME_SAMPLES);
            // The last 2 s, someone here talks over it, closer and louder.
            let mut talking = false;
            if step >= 500 {
                let mut heard = vec![0.0; FRAME_SAMPLES];
                card.mic.pop_into(&mut heard);
                let voice = here.take(FRAME_SAMPLES);
                // Between its syllables there is only the echo.
                talking = rms(&voice) > 0.05;
                card.mic.push(&heard.iter().zip(&voice).map(|(e, v)| e + 2.0 * v).collect::<Vec<f32>>());
            }
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {
                let count = if talking {
                    &mut voice_frames
                } else if (300..500).contains(&step) {
                    &mut echo_frames
                } else {
                    continue;
                };
                count.0 += usize::from(mic.echo_only());
                count.1 += 1;
            }
        }
        // The far end's babble has gaps too, where nothing plays and no
        // frame is called echo: compare shares.
        let share = |(yes, all): (usize, usize)| yes as f64 / all.max(1) as f64;
        assert!(share(echo_frames) > 0.5, "echo alone, once learnt: {echo_frames:?} frames called echo only");
        assert!(share(voice_frames) < 0.1, "a voice here over it: {voice_frames:?} frames called echo only");
    }

    /// A quiet voice with the speakers silent is brought up; the same with
    /// the speakers playing teaches the gain nothing.
    #[test]
    fn a_quiet_voice_is_brought_up_but_not_from_the_speakers_echo() {
        let card = Card::new(0);
        let (mut voice, mut frame) = (Babble::new(31), vec![0.0; FRAME_SAMPLES]);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        for _ in 0..400 {
            card.mic.push(&voice.take(FRAME_SAMPLES).iter().map(|s| 0.03 * s).collect::<Vec<f32>>());
            card.played.push(&vec![0.0; 2 * FRAME_SAMPLES]);
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {}
        }
        assert!(mic.stats.gain_db > 10.0, "a quiet voice lifted: {:.1} dB", mic.stats.gain_db);

        let mut card = Card::new(48 * 30);
        let mut far = Babble::new(32);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        for _ in 0..400 {
            card.speakers.push(&far_voice(&mut far));
            card.play(FRAME_SAMPLES);
            card.record(FRAME_SAMPLES);
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {}
        }
        assert_eq!(mic.stats.gain_db, 0.0, "nothing learnt from the speakers' echo");
    }

    #[test]
    fn off_the_echo_goes_out_as_it_was_heard() {
        let (stats, sent) = run(false, 480, 480, 100);
        assert_eq!(stats.cleaned, 0);
        let echo = rms(&sent[sent.len() - 48_000..]);
        assert!(echo > 4.0 * crate::level::SPEAKING_RMS, "the echo is there when cleaning is off: {echo}");
    }

    /// `n` stereo frames of `value` for the played ring.
    fn played_frames(n: usize, value: f32) -> Vec<f32> {
        vec![value; 2 * n * FRAME_SAMPLES]
    }

    /// The oldest sample in `ring`, left in place.
    fn front(ring: &Ring) -> f32 {
        let mut all = vec![0.0; ring.len()];
        ring.pop_into(&mut all);
        ring.push(&all);
        all.first().copied().unwrap_or(f32::NAN)
    }

    #[test]
    fn dropped_audio_keeps_the_pairing_and_drift_starts_it_again() {
        let card = Card::new(0);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        // Three frames recorded and five played before the first step: the
        // played ring is cut to the newest three; no microphone audio goes.
        card.mic.push(&vec![0.0; 3 * FRAME_SAMPLES]);
        card.played.push(&played_frames(2, 0.1));
        card.played.push(&played_frames(3, 0.2));
        mic.begin_step(&card.mic, &card.played);
        assert_eq!(mic.stats.starts, 1, "the first step starts it");
        assert_eq!((card.mic.len(), mic.aligned.len()), (3 * FRAME_SAMPLES, 6 * FRAME_SAMPLES), "the microphone kept, the played audio cut to match");
        assert_eq!(front(&mic.aligned), 0.2);

        // The microphone's ring overflows by a frame: that frame's reference goes.
        card.mic.push(&vec![0.0; 8 * FRAME_SAMPLES]);
        assert_eq!(card.mic.dropped(), FRAME_SAMPLES as u64);
        card.played.push(&played_frames(1, 0.3));
        mic.begin_step(&card.mic, &card.played);
        assert_eq!(mic.stats.starts, 1, "no new start");
        assert_eq!(mic.aligned.len(), 6 * FRAME_SAMPLES, "one frame of reference skipped with it");

        // The played audio overflows by a frame: one microphone frame goes
        // with silence, and the pairing is square again after it.
        card.played.push(&played_frames(8, 0.4));
        mic.begin_step(&card.mic, &card.played);
        assert_eq!(mic.aligned.dropped(), 2 * FRAME_SAMPLES as u64);
        assert_eq!(mic.offset, -2 * FRAME_SAMPLES as i64, "one frame of reference missing");
        let mut frame = vec![0.0; FRAME_SAMPLES];
        let before = mic.aligned.len();
        assert!(mic.next_frame(&card.mic, &card.played, &mut frame));
        assert_eq!((mic.offset, mic.aligned.len()), (0, before), "paired with silence, no reference taken");
        assert_eq!(mic.stats.starts, 1, "still the first start");

        // The card's own played ring overflows before a step (this thread
        // stalled): as much microphone goes with silence.
        let stalled = Card::new(0);
        let mut paired = CleanMic::new(true).expect("libspeexdsp");
        paired.begin_step(&stalled.mic, &stalled.played);
        stalled.played.push(&played_frames(11, 0.5));
        assert_eq!(stalled.played.dropped(), 2 * FRAME_SAMPLES as u64);
        paired.begin_step(&stalled.mic, &stalled.played);
        assert_eq!((paired.offset, paired.stats.starts), (-2 * FRAME_SAMPLES as i64, 1), "the frame lost before the pull is lent as silence");

        // The speakers stop reporting, the microphone keeps coming: past
        // 200 ms owed, the pairing starts again, and again while it lasts.
        for _ in 0..30 {
            card.mic.push(&vec![0.0; FRAME_SAMPLES]);
            mic.begin_step(&card.mic, &card.played);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {}
        }
        assert!((2..=5).contains(&mic.stats.starts), "owed past 200 ms: {} starts over 30 frames", mic.stats.starts);
        assert!(mic.offset.abs() <= MAX_OFFSET);

        mic.set_on(false).expect("off");
        card.played.push(&[0.1; 8]);
        mic.begin_step(&card.mic, &card.played);
        assert!(card.played.is_empty(), "off, the played ring is kept empty");
        let before = mic.stats.starts;
        mic.set_on(true).expect("on");
        mic.begin_step(&card.mic, &card.played);
        assert_eq!(mic.stats.starts, before + 1, "switched on, it starts again");
    }

    #[test]
    fn a_microphone_with_no_speakers_reporting_goes_on_without_waiting() {
        let card = Card::new(0);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        let mut frame = vec![0.0; FRAME_SAMPLES];
        let mut taken = 0;
        for step in 0..100 {
            mic.begin_step(&card.mic, &card.played);
            card.mic.push(&vec![0.01; FRAME_SAMPLES]);
            while mic.next_frame(&card.mic, &card.played, &mut frame) {
                taken += 1;
            }
            // It waits for the reference once, then no more.
            let backlog = if step < REFERENCE_WAIT_STEPS as usize { (step + 1) * FRAME_SAMPLES } else { 0 };
            assert_eq!(card.mic.len(), backlog, "step {step}: the microphone's backlog");
        }
        assert_eq!(taken, 100, "every frame taken");
        assert!(mic.offset.abs() <= MAX_OFFSET + 2 * FRAME_SAMPLES as i64, "{}", mic.offset);
    }

    #[test]
    fn skipped_microphone_audio_skips_its_reference() {
        let card = Card::new(0);
        let mut mic = CleanMic::new(true).expect("libspeexdsp");
        mic.begin_step(&card.mic, &card.played);
        card.played.push(&vec![0.2; 2 * FRAME_SAMPLES]);
        card.played.push(&vec![0.3; 2 * FRAME_SAMPLES]);
        mic.skipped(FRAME_SAMPLES, &card.played);
        let mut next = vec![0.0; 2 * FRAME_SAMPLES];
        assert!(mic.aligned.take_exact(&mut next) && next[0] == 0.3, "the skipped frame's reference went with it");
        // Owed before it arrives: paid when it does.
        mic.skipped(FRAME_SAMPLES, &card.played);
        card.played.push(&vec![0.4; 2 * FRAME_SAMPLES]);
        card.played.push(&vec![0.5; 2 * FRAME_SAMPLES]);
        mic.begin_step(&card.mic, &card.played);
        assert!(mic.aligned.take_exact(&mut next) && next[0] == 0.5, "paid once it came");
    }
}
