//! Client frame-timing telemetry: what a client sends to
//! `POST /api/v1/telemetry` every few seconds, and the pure aggregation that
//! makes it from frame times.
//!
//! A report summarises one interval of frames. Besides the percentiles it
//! carries the frame-time histogram over [`FRAME_BUCKETS_MS`], the same
//! bounds the server's `plaza_client_frame_seconds` histogram uses, so the
//! server can add the client's counts bucket for bucket and Prometheus
//! quantiles over many clients stay exact to a bucket.
//!
//! The client never blocks a frame on this: it aggregates in place, hands a
//! finished report to its network thread, and counts reports it had to drop
//! (`dropped_reports`) while the server was away.

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::quality::Platform;
use crate::quality::QualityPreset;

/// Upper bounds (ms) of the frame-time buckets, ascending; a last, implicit
/// bucket holds everything slower. Chosen around the targets: VR 72 fps
/// (13.9 ms), desktop 60 (16.7 ms), mobile 30 (33.3 ms).
pub const FRAME_BUCKETS_MS: [f64; 14] = [4.0, 8.0, 11.1, 13.9, 16.7, 20.0, 25.0, 33.3, 40.0, 50.0, 66.7, 100.0, 200.0, 500.0];
/// Buckets in a report's `bucket_counts`: the bounds plus the overflow.
pub const FRAME_BUCKET_COUNT: usize = FRAME_BUCKETS_MS.len() + 1;
/// How often a client sends a report.
pub const REPORT_INTERVAL_SECS: f64 = 5.0;
/// The largest report body the server reads.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Longest adapter name kept (longer names are cut, not refused).
pub const MAX_ADAPTER_CHARS: usize = 128;
/// Most frames one report may claim (an interval of 60 s at 1,000 fps).
pub const MAX_FRAMES_PER_REPORT: u64 = 60_000;

/// Percentiles of one interval's frame times, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameMs {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// One interval's report (the body of `POST /api/v1/telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryReport {
    pub platform: Platform,
    /// The preset in effect at the end of the interval (what `auto` had
    /// chosen, never "auto").
    pub preset: QualityPreset,
    /// GPU / adapter name as the renderer reports it.
    pub adapter: String,
    /// Length of the interval the report covers, in seconds.
    pub interval_s: f64,
    pub frames: u64,
    pub frame_ms: FrameMs,
    /// Frame rate of the slowest 1% of frames.
    pub fps_1pct_low: f64,
    /// Frames slower than the platform's budget.
    pub over_budget: u64,
    /// Frame counts per bucket of [`FRAME_BUCKETS_MS`], plus the overflow.
    pub bucket_counts: Vec<u64>,
    /// Avatars drawn at the end of the interval.
    pub visible_avatars: u32,
    /// Reports the client dropped since its last delivered one.
    #[serde(default)]
    pub dropped_reports: u64,
    /// Voice heard and sent since the last report, when there was any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceReport>,
}

/// Voice as one client heard it and sent it over an interval: the part of
/// a [`TelemetryReport`] that shows operators what calls sound like.
///
/// Frames are Opus's 20 ms. The four outcomes of a frame of someone
/// else's voice add up to what the client heard; the concealment that
/// follows the end of a voice is none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceReport {
    /// Played from a packet that came in time.
    pub played: u64,
    /// Lost, and rebuilt from the next packet's forward error correction.
    pub recovered: u64,
    /// Lost and concealed.
    pub lost: u64,
    /// Concealed while the jitter buffer ran dry, until a late packet came.
    pub stalled: u64,
    /// Mean playout (jitter buffer) delay of the frames heard, ms.
    pub delay_ms: f64,
    /// The largest interarrival jitter (RFC 3550) of the voices heard, ms.
    pub jitter_ms: f64,
    /// Microphone frames sent.
    pub mic_sent: u64,
    /// Microphone frames skipped because the client's voice thread was late.
    pub mic_skipped: u64,
}

/// Most voice frames heard one report may claim: every slot for two
/// intervals of the longest length (a report can carry a little more than
/// its own interval when the one before was not taken in time).
pub const MAX_VOICE_HEARD: u64 = (crate::voice::MAX_SLOTS as u64) * VOICE_FRAMES_PER_S * 120;
/// Most microphone frames, sent and skipped, one report may claim.
pub const MAX_VOICE_MIC: u64 = VOICE_FRAMES_PER_S * 120;
/// Opus frames a second (20 ms each).
pub const VOICE_FRAMES_PER_S: u64 = 50;
/// Playout delay and jitter, ms, beyond any a client could have.
pub const MAX_VOICE_MS: f64 = 10_000.0;

impl VoiceReport {
    /// Frames of others' voices heard, whatever became of them.
    pub fn heard(&self) -> u64 {
        self.played.saturating_add(self.recovered).saturating_add(self.lost).saturating_add(self.stalled)
    }

    fn validate(&self) -> Result<(), ReportError> {
        if self.heard() > MAX_VOICE_HEARD {
            return Err(ReportError::VoiceHeard(self.heard()));
        }
        let mic = self.mic_sent.saturating_add(self.mic_skipped);
        if mic > MAX_VOICE_MIC {
            return Err(ReportError::VoiceMic(mic));
        }
        for (field, value) in [("voice.delay_ms", self.delay_ms), ("voice.jitter_ms", self.jitter_ms)] {
            if !(value.is_finite() && (0.0..=MAX_VOICE_MS).contains(&value)) {
                return Err(ReportError::VoiceMs { field, value });
            }
        }
        Ok(())
    }
}

/// Adds up a client's voice between two reports: the call adds what each
/// slot heard and what the microphone did, the telemetry sender takes it.
#[derive(Debug, Clone, Default)]
pub struct VoiceTally {
    report: VoiceReport,
    /// Playout delay × frames heard, for the mean.
    delay_frames_ms: f64,
}

impl VoiceTally {
    /// One slot's frames since it was last added, heard at `delay_ms` of
    /// playout delay and `jitter_ms` of jitter.
    pub fn heard(&mut self, played: u64, recovered: u64, lost: u64, stalled: u64, delay_ms: f64, jitter_ms: f64) {
        let r = &mut self.report;
        r.played += played;
        r.recovered += recovered;
        r.lost += lost;
        r.stalled += stalled;
        let frames = played + recovered + lost + stalled;
        if frames > 0 {
            if delay_ms.is_finite() {
                self.delay_frames_ms += delay_ms.clamp(0.0, MAX_VOICE_MS) * frames as f64;
            }
            if jitter_ms.is_finite() {
                r.jitter_ms = r.jitter_ms.max(jitter_ms.clamp(0.0, MAX_VOICE_MS));
            }
        }
    }

    /// Microphone frames sent and skipped since they were last added.
    pub fn mic(&mut self, sent: u64, skipped: u64) {
        self.report.mic_sent += sent;
        self.report.mic_skipped += skipped;
    }

    /// What was added since the last take, and a fresh tally; `None` when
    /// nothing was heard or sent. Held to what one report may claim (only a
    /// tally left untaken for minutes reaches it).
    pub fn take(&mut self) -> Option<VoiceReport> {
        let tally = std::mem::take(self);
        let mut r = tally.report;
        let heard = r.heard();
        if heard == 0 && r.mic_sent == 0 && r.mic_skipped == 0 {
            return None;
        }
        if heard > 0 {
            r.delay_ms = tally.delay_frames_ms / heard as f64;
        }
        hold_to(MAX_VOICE_HEARD, [&mut r.played, &mut r.recovered, &mut r.lost, &mut r.stalled]);
        hold_to(MAX_VOICE_MIC, [&mut r.mic_sent, &mut r.mic_skipped]);
        Some(r)
    }
}

/// Scales `counts` down together, their shares kept, so they add up to at
/// most `max`.
fn hold_to<const N: usize>(max: u64, counts: [&mut u64; N]) {
    let total = counts.iter().fold(0u64, |a, c| a.saturating_add(**c));
    if total <= max {
        return;
    }
    let keep = max as f64 / total as f64;
    for c in counts {
        *c = (*c as f64 * keep).floor() as u64;
    }
}

/// What is wrong with a report; the server answers 400 with this text.
#[derive(Debug, Error, PartialEq)]
pub enum ReportError {
    #[error("interval_s must be a number in (0, 60]; got {0}")]
    Interval(f64),
    #[error("frames must be 1..={max}; got {0}", max = MAX_FRAMES_PER_REPORT)]
    Frames(u64),
    #[error("bucket_counts must have {expected} entries (the bounds {bounds:?} ms and one overflow); got {0}", expected = FRAME_BUCKET_COUNT, bounds = FRAME_BUCKETS_MS)]
    BucketLen(usize),
    #[error("bucket_counts must add up to frames ({frames}); they add up to {sum}")]
    BucketSum { frames: u64, sum: u64 },
    #[error("{field} must be a finite number ≥ 0; got {value}")]
    Number { field: &'static str, value: f64 },
    #[error("frame_ms must be ordered p50 ≤ p95 ≤ p99 ≤ max")]
    Order,
    #[error("over_budget ({0}) can't exceed frames")]
    OverBudget(u64),
    #[error("voice frames heard (played + recovered + lost + stalled) must be at most {max}; got {0}", max = MAX_VOICE_HEARD)]
    VoiceHeard(u64),
    #[error("voice microphone frames (mic_sent + mic_skipped) must be at most {max}; got {0}", max = MAX_VOICE_MIC)]
    VoiceMic(u64),
    #[error("{field} must be a number from 0 to {max} ms; got {value}", max = MAX_VOICE_MS)]
    VoiceMs { field: &'static str, value: f64 },
}

impl TelemetryReport {
    /// Checks a report from the network; the adapter name is cut to
    /// [`MAX_ADAPTER_CHARS`] rather than refused.
    pub fn validate(&mut self) -> Result<(), ReportError> {
        if !(self.interval_s.is_finite() && self.interval_s > 0.0 && self.interval_s <= 60.0) {
            return Err(ReportError::Interval(self.interval_s));
        }
        if self.frames == 0 || self.frames > MAX_FRAMES_PER_REPORT {
            return Err(ReportError::Frames(self.frames));
        }
        if self.bucket_counts.len() != FRAME_BUCKET_COUNT {
            return Err(ReportError::BucketLen(self.bucket_counts.len()));
        }
        let sum = self.bucket_counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
        if sum != self.frames {
            return Err(ReportError::BucketSum { frames: self.frames, sum });
        }
        let f = &self.frame_ms;
        for (field, value) in [("frame_ms.p50", f.p50), ("frame_ms.p95", f.p95), ("frame_ms.p99", f.p99), ("frame_ms.max", f.max), ("fps_1pct_low", self.fps_1pct_low)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ReportError::Number { field, value });
            }
        }
        if !(f.p50 <= f.p95 && f.p95 <= f.p99 && f.p99 <= f.max) {
            return Err(ReportError::Order);
        }
        if self.over_budget > self.frames {
            return Err(ReportError::OverBudget(self.over_budget));
        }
        if let Some(voice) = &self.voice {
            voice.validate()?;
        }
        if self.adapter.chars().count() > MAX_ADAPTER_CHARS {
            self.adapter = self.adapter.chars().take(MAX_ADAPTER_CHARS).collect();
        }
        Ok(())
    }

    /// Mean frame rate over the interval.
    pub fn mean_fps(&self) -> f64 {
        self.frames as f64 / self.interval_s
    }
}

/// The bucket a frame time falls in.
pub fn bucket_of(frame_ms: f64) -> usize {
    FRAME_BUCKETS_MS.iter().position(|&bound| frame_ms <= bound).unwrap_or(FRAME_BUCKETS_MS.len())
}

/// Collects one interval's frame times. Keeps the raw times (an interval is
/// a few hundred frames) so the percentiles are exact.
#[derive(Debug, Clone)]
pub struct FrameAggregator {
    platform: Platform,
    frames_ms: Vec<f64>,
    elapsed_s: f64,
}

impl FrameAggregator {
    pub fn new(platform: Platform) -> Self {
        Self { platform, frames_ms: Vec::with_capacity(1024), elapsed_s: 0.0 }
    }

    /// Records one frame of `frame_ms` milliseconds. Non-finite or negative
    /// times (a clock hiccup) are ignored.
    pub fn record(&mut self, frame_ms: f64) {
        if frame_ms.is_finite() && frame_ms >= 0.0 && self.frames_ms.len() < MAX_FRAMES_PER_REPORT as usize {
            self.frames_ms.push(frame_ms);
            self.elapsed_s += frame_ms / 1000.0;
        }
    }

    /// Seconds of frames recorded since the last report.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_s
    }

    /// True once an interval's worth of frames is in.
    pub fn due(&self) -> bool {
        self.elapsed_s >= REPORT_INTERVAL_SECS
    }

    /// The interval's report, and a fresh interval; `None` with no frames.
    pub fn take(&mut self, preset: QualityPreset, adapter: &str, visible_avatars: u32, dropped_reports: u64) -> Option<TelemetryReport> {
        if self.frames_ms.is_empty() {
            return None;
        }
        let mut times = std::mem::take(&mut self.frames_ms);
        let interval_s = std::mem::take(&mut self.elapsed_s).clamp(1e-3, 60.0);
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let pct = |q: f64| times[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mut bucket_counts = vec![0u64; FRAME_BUCKET_COUNT];
        for &t in &times {
            bucket_counts[bucket_of(t)] += 1;
        }
        // The slowest 1% of frames (at least one), as a frame rate.
        let slowest = n.div_ceil(100);
        let slow_mean_ms = times[n - slowest..].iter().sum::<f64>() / slowest as f64;
        let budget = 1000.0 / f64::from(self.platform.target_fps());
        let report = TelemetryReport {
            platform: self.platform,
            preset,
            adapter: adapter.chars().take(MAX_ADAPTER_CHARS).collect(),
            interval_s,
            frames: n as u64,
            frame_ms: FrameMs { p50: pct(0.50), p95: pct(0.95), p99: pct(0.99), max: times[n - 1] },
            fps_1pct_low: if slow_mean_ms > 0.0 { 1000.0 / slow_mean_ms } else { 0.0 },
            over_budget: times.iter().filter(|&&t| t > budget).count() as u64,
            bucket_counts,
            visible_avatars,
            dropped_reports,
            voice: None,
        };
        times.clear();
        self.frames_ms = times;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(times: &[f64]) -> TelemetryReport {
        let mut agg = FrameAggregator::new(Platform::Desktop);
        for &t in times {
            agg.record(t);
        }
        agg.take(QualityPreset::High, "llvmpipe", 12, 0).expect("frames were recorded")
    }

    #[test]
    fn percentiles_buckets_and_budget_come_from_the_frames() {
        // 97 frames at 10 ms, 3 at 40 ms: p99 and max are the slow ones.
        let mut times = vec![10.0; 97];
        times.extend([40.0; 3]);
        let mut r = report_of(&times);
        assert_eq!(r.frames, 100);
        assert_eq!(r.frame_ms.p50, 10.0);
        assert_eq!(r.frame_ms.p95, 10.0);
        assert_eq!(r.frame_ms.p99, 40.0);
        assert_eq!(r.over_budget, 3, "frames over 16.7 ms");
        assert_eq!(r.bucket_counts[bucket_of(10.0)], 97);
        assert_eq!(r.bucket_counts[bucket_of(40.0)], 3);
        assert!((r.fps_1pct_low - 25.0).abs() < 1e-9, "1% low of 40 ms frames is 25 fps: {}", r.fps_1pct_low);
        assert!((r.interval_s - 1.09).abs() < 1e-9);
        assert!(r.validate().is_ok());
    }

    #[test]
    fn a_frame_on_a_bound_falls_in_that_bucket_and_slow_ones_overflow() {
        assert_eq!(bucket_of(4.0), 0);
        assert_eq!(bucket_of(4.01), 1);
        assert_eq!(bucket_of(16.7), 4);
        assert_eq!(bucket_of(10_000.0), FRAME_BUCKETS_MS.len());
    }

    #[test]
    fn an_empty_interval_sends_nothing_and_take_starts_a_new_one() {
        let mut agg = FrameAggregator::new(Platform::Vr);
        assert!(agg.take(QualityPreset::Low, "x", 0, 0).is_none());
        agg.record(f64::NAN);
        agg.record(-1.0);
        assert!(agg.take(QualityPreset::Low, "x", 0, 0).is_none(), "bad times are not frames");
        agg.record(5.0);
        assert_eq!(agg.take(QualityPreset::Low, "x", 0, 0).unwrap().frames, 1);
        assert!(agg.take(QualityPreset::Low, "x", 0, 0).is_none());
    }

    #[test]
    fn bad_reports_say_what_is_wrong() {
        let good = report_of(&[10.0; 50]);
        let check = |f: &dyn Fn(&mut TelemetryReport)| {
            let mut r = good.clone();
            f(&mut r);
            r.validate().unwrap_err()
        };
        assert_eq!(check(&|r| r.interval_s = 0.0), ReportError::Interval(0.0));
        assert_eq!(check(&|r| r.frames = 0), ReportError::Frames(0));
        assert_eq!(check(&|r| r.bucket_counts.pop().map(drop).unwrap_or(())), ReportError::BucketLen(FRAME_BUCKET_COUNT - 1));
        assert_eq!(check(&|r| r.bucket_counts[0] += 1), ReportError::BucketSum { frames: 50, sum: 51 });
        assert!(matches!(check(&|r| r.frame_ms.p99 = f64::INFINITY), ReportError::Number { field: "frame_ms.p99", .. }));
        assert_eq!(check(&|r| r.frame_ms.p50 = 11.0), ReportError::Order);
        assert_eq!(check(&|r| r.over_budget = 51), ReportError::OverBudget(51));
        let msg = check(&|r| r.bucket_counts.clear()).to_string();
        assert!(msg.contains("15 entries") && msg.contains("got 0"), "{msg}");
    }

    #[test]
    fn the_voice_tally_adds_slots_and_takes_a_mean_delay() {
        let mut tally = VoiceTally::default();
        assert_eq!(tally.take(), None, "nothing heard or sent: no voice part");
        // One slot 90 frames at 40 ms, another 10 at 140 ms.
        tally.heard(80, 5, 3, 2, 40.0, 4.0);
        tally.heard(10, 0, 0, 0, 140.0, 25.0);
        tally.heard(0, 0, 0, 0, 300.0, 99.0); // a quiet slot weighs nothing
        tally.mic(40, 2);
        let r = tally.take().expect("voice");
        assert_eq!((r.played, r.recovered, r.lost, r.stalled, r.heard()), (90, 5, 3, 2, 100));
        assert!((r.delay_ms - 50.0).abs() < 1e-9, "(90 × 40 + 10 × 140) / 100: {}", r.delay_ms);
        assert_eq!(r.jitter_ms, 25.0);
        assert_eq!((r.mic_sent, r.mic_skipped), (40, 2));
        assert_eq!(tally.take(), None, "taking starts afresh");
        tally.mic(1, 0);
        assert_eq!(tally.take().map(|r| (r.heard(), r.delay_ms, r.mic_sent)), Some((0, 0.0, 1)), "a talker who heard nobody");
    }

    #[test]
    fn a_tally_left_untaken_is_held_to_what_a_report_may_claim() {
        let mut tally = VoiceTally::default();
        for _ in 0..10 {
            tally.heard(MAX_VOICE_HEARD / 4, 0, MAX_VOICE_HEARD / 20, 0, 60.0, f64::NAN);
            tally.mic(MAX_VOICE_MIC / 2, 0);
        }
        let r = tally.take().unwrap();
        assert!(r.heard() <= MAX_VOICE_HEARD && r.heard() > MAX_VOICE_HEARD * 99 / 100, "{}", r.heard());
        assert_eq!(r.played / r.lost, 5, "the shares stay");
        assert!(r.mic_sent <= MAX_VOICE_MIC);
        assert_eq!(r.jitter_ms, 0.0, "a NaN jitter is not taken");
        let mut report = report_of(&[10.0; 5]);
        report.voice = Some(r);
        assert!(report.validate().is_ok());
    }

    #[test]
    fn bad_voice_parts_say_what_is_wrong() {
        let mut good = report_of(&[10.0; 5]);
        good.voice = Some(VoiceReport { played: 100, delay_ms: 40.0, jitter_ms: 3.0, mic_sent: 50, ..Default::default() });
        assert!(good.clone().validate().is_ok());
        let check = |f: &dyn Fn(&mut VoiceReport)| {
            let mut r = good.clone();
            f(r.voice.as_mut().unwrap());
            r.validate().unwrap_err()
        };
        assert_eq!(check(&|v| v.lost = MAX_VOICE_HEARD), ReportError::VoiceHeard(MAX_VOICE_HEARD + 100));
        assert_eq!(check(&|v| v.played = u64::MAX), ReportError::VoiceHeard(u64::MAX), "no overflow");
        assert_eq!(check(&|v| v.mic_skipped = MAX_VOICE_MIC), ReportError::VoiceMic(MAX_VOICE_MIC + 50));
        assert!(matches!(check(&|v| v.delay_ms = -1.0), ReportError::VoiceMs { field: "voice.delay_ms", .. }));
        assert!(matches!(check(&|v| v.jitter_ms = f64::NAN), ReportError::VoiceMs { field: "voice.jitter_ms", .. }));
        let msg = check(&|v| v.delay_ms = 1e6).to_string();
        assert!(msg.contains("voice.delay_ms") && msg.contains("0 to 10000 ms"), "{msg}");
        let json = serde_json::to_string(&good).unwrap();
        assert!(json.contains(r#""voice":{"played":100"#), "{json}");
        assert!(serde_json::from_str::<TelemetryReport>(&json.replace(r#""mic_skipped":0"#, r#""mic_skipped":0,"echo":1"#)).is_err(), "unknown voice fields are refused");
    }

    #[test]
    fn a_long_adapter_name_is_cut_not_refused() {
        let mut r = report_of(&[10.0; 5]);
        r.adapter = "é".repeat(500);
        assert!(r.validate().is_ok());
        assert_eq!(r.adapter.chars().count(), MAX_ADAPTER_CHARS);
    }

    #[test]
    fn the_json_form_is_the_contract() {
        let r = report_of(&[10.0; 5]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["platform"], "desktop");
        assert_eq!(json["bucket_counts"].as_array().unwrap().len(), FRAME_BUCKET_COUNT);
        let unknown = r#"{"platform":"desktop","preset":"high","adapter":"","interval_s":1,"frames":1,"frame_ms":{"p50":1,"p95":1,"p99":1,"max":1},"fps_1pct_low":1,"over_budget":0,"bucket_counts":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"visible_avatars":0,"extra":1}"#;
        assert!(serde_json::from_str::<TelemetryReport>(unknown).is_err(), "unknown fields are refused");
        assert!(serde_json::from_str::<TelemetryReport>(&unknown.replace(",\"extra\":1", "").replace("high", "auto")).is_err(), "auto is not a preset a frame ran at");
        assert!(serde_json::from_str::<TelemetryReport>(&unknown.replace(",\"extra\":1", "")).is_ok());
        assert!(!serde_json::to_string(&r).unwrap().contains("voice"), "no voice part without voice: older servers take it");
    }
}
