//! Client telemetry ingest: `POST /api/v1/telemetry`.
//!
//! A client sends one [`TelemetryReport`] per interval (about 5 s). The
//! server checks it and adds it to the `plaza_client_*` metrics:
//!
//! - `plaza_client_frame_seconds{preset,platform}`: a histogram whose
//!   buckets are [`FRAME_BUCKETS_MS`] in seconds. Each of the report's
//!   bucket counts is added to the same bucket here, so `_bucket` and
//!   `_count` are exactly the clients' frame counts, at a cost per report
//!   that doesn't grow with its frames (it is kept here, not in the metrics
//!   recorder: see [`render_frames`]). `_sum` adds each report's
//!   `interval_s`, the sum of its frame times, held to what its bucket
//!   counts allow (see [`frame_time_s`]).
//! - `plaza_client_fps{preset,platform}`: one sample per report, its mean
//!   frame rate.
//! - `plaza_client_voice_frames_total{platform,outcome}` (played,
//!   recovered, lost, stalled), `plaza_client_voice_mic_frames_total
//!   {platform,outcome}` (sent, skipped), and one sample a report that
//!   heard voice in `plaza_client_voice_delay_seconds{platform}` and
//!   `plaza_client_voice_jitter_seconds{platform}`: from the report's
//!   optional `voice` part.
//! - `plaza_client_frames_over_budget_total{preset,platform}`,
//!   `plaza_client_reports_total{platform}`,
//!   `plaza_client_reports_dropped_total{platform}` (what clients say they
//!   dropped while the server was away).
//!
//! The adapter name is logged (debug), never a label: it has no bound.
//!
//! Answers: 204 stored; 400 `bad_request` (not JSON, or not a report) or
//! `bad_telemetry` (a report with a bad field, the message names it); 401
//! without a valid access token; 413 over [`MAX_REPORT_BYTES`]; 429 more than
//! one report a second from one user.

use crate::AppState;
use crate::http::{ApiError, bearer};
use crate::limiter::Interval;
use crate::metrics as m;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use plaza_shared::telemetry::{FRAME_BUCKET_COUNT, FRAME_BUCKETS_MS, MAX_REPORT_BYTES, ReportError, TelemetryReport, VoiceReport};
use plaza_shared::quality::{Platform, QualityPreset};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Reports one user may send: one a second.
pub const MIN_REPORT_GAP: Duration = Duration::from_secs(1);

/// Buckets of `plaza_client_voice_delay_seconds`: the jitter buffer's
/// playout delay runs from 40 to 300 ms in 20 ms steps.
pub const VOICE_DELAY_BUCKETS: [f64; 8] = [0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5];
/// Buckets of `plaza_client_voice_jitter_seconds`.
pub const VOICE_JITTER_BUCKETS: [f64; 7] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2];

/// Buckets of `plaza_client_fps` (frames a second).
pub const FPS_BUCKETS: [f64; 10] = [15.0, 24.0, 30.0, 45.0, 60.0, 72.0, 90.0, 120.0, 144.0, 240.0];

/// [`FRAME_BUCKETS_MS`] in seconds, each the `f64` nearest to the decimal
/// (so `le="0.0111"`, not `le="0.011099999999999999"`).
pub fn frame_bounds_s() -> &'static [f64; FRAME_BUCKETS_MS.len()] {
    static BOUNDS: OnceLock<[f64; FRAME_BUCKETS_MS.len()]> = OnceLock::new();
    BOUNDS.get_or_init(|| FRAME_BUCKETS_MS.map(|ms| format!("{ms}e-3").parse().expect("a float parses")))
}

/// The per-user report limit, shared by every request.
#[derive(Debug, Clone)]
pub struct TelemetryState {
    limit: Arc<Mutex<Interval<String>>>,
}

impl Default for TelemetryState {
    fn default() -> Self {
        Self::new()
    }
}

impl TelemetryState {
    pub fn new() -> Self {
        TelemetryState { limit: Arc::new(Mutex::new(Interval::new(MIN_REPORT_GAP))) }
    }
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the report is over {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error("bad JSON body: {0}")]
    BadJson(String),
    #[error(transparent)]
    BadReport(#[from] ReportError),
    #[error("at most one report a second per user; send the next one later")]
    RateLimited,
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        let (status, code) = match &e {
            IngestError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            IngestError::Unreadable(_) | IngestError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            IngestError::BadReport(_) => (StatusCode::BAD_REQUEST, "bad_telemetry"),
            IngestError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        };
        ApiError(status, code, e.to_string())
    }
}

/// `POST /api/v1/telemetry`. The route caps the body at
/// [`MAX_REPORT_BYTES`]; the token is checked before the body is looked at.
pub async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<StatusCode, ApiError> {
    let claims = bearer(&state, &headers)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => IngestError::TooLarge,
        _ => IngestError::Unreadable(e.body_text()),
    })?;
    let report = parse(&body)?;
    let admitted = state.telemetry.limit.lock().expect("telemetry limiter lock").admit(&claims.sub, tokio::time::Instant::now());
    if !admitted {
        return Err(IngestError::RateLimited.into());
    }
    tracing::debug!(
        user_id = %claims.sub,
        platform = report.platform.as_str(),
        preset = report.preset.as_str(),
        adapter = %report.adapter,
        frames = report.frames,
        p99_ms = report.frame_ms.p99,
        visible_avatars = report.visible_avatars,
        dropped_reports = report.dropped_reports,
        "client telemetry"
    );
    record(&report);
    Ok(StatusCode::NO_CONTENT)
}

/// A checked report from a body (the adapter name cut to length).
pub fn parse(body: &[u8]) -> Result<TelemetryReport, IngestError> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(IngestError::TooLarge);
    }
    let mut report: TelemetryReport = serde_json::from_slice(body).map_err(|e| IngestError::BadJson(e.to_string()))?;
    report.validate()?;
    Ok(report)
}

/// Adds a checked report to the metrics.
pub fn record(report: &TelemetryReport) {
    let (preset, platform) = (report.preset.as_str(), report.platform.as_str());
    FRAMES[cell(report.preset, report.platform)].add(report);
    metrics::histogram!(m::CLIENT_FPS, "preset" => preset, "platform" => platform).record(report.mean_fps());
    metrics::counter!(m::CLIENT_OVER_BUDGET, "preset" => preset, "platform" => platform).increment(report.over_budget);
    metrics::counter!(m::CLIENT_REPORTS, "platform" => platform).increment(1);
    metrics::counter!(m::CLIENT_REPORTS_DROPPED, "platform" => platform).increment(report.dropped_reports);
    if let Some(voice) = &report.voice {
        record_voice(voice, platform);
    }
}

/// The `plaza_client_voice_*` part of a report.
fn record_voice(voice: &VoiceReport, platform: &'static str) {
    let frames = [voice.played, voice.recovered, voice.lost, voice.stalled];
    for (outcome, n) in m::VOICE_FRAME_OUTCOMES.into_iter().zip(frames) {
        metrics::counter!(m::CLIENT_VOICE_FRAMES, "platform" => platform, "outcome" => outcome).increment(n);
    }
    for (outcome, n) in m::MIC_FRAME_OUTCOMES.into_iter().zip([voice.mic_sent, voice.mic_skipped]) {
        metrics::counter!(m::CLIENT_VOICE_MIC_FRAMES, "platform" => platform, "outcome" => outcome).increment(n);
    }
    // Delay and jitter say something only of a report that heard voice.
    if voice.heard() > 0 {
        metrics::histogram!(m::CLIENT_VOICE_DELAY, "platform" => platform).record(voice.delay_ms / 1000.0);
        metrics::histogram!(m::CLIENT_VOICE_JITTER, "platform" => platform).record(voice.jitter_ms / 1000.0);
    }
}

/// `plaza_client_frame_seconds`, one cell per preset × platform. Kept here
/// rather than in the metrics recorder, which stores every sample until it
/// is drained: a report of 60,000 frames would be 60,000 samples, where here
/// it is 15 additions.
static FRAMES: [FrameCell; QualityPreset::ALL.len() * Platform::ALL.len()] = [const { FrameCell::new() }; QualityPreset::ALL.len() * Platform::ALL.len()];

fn cell(preset: QualityPreset, platform: Platform) -> usize {
    let preset = QualityPreset::ALL.iter().position(|p| *p == preset).expect("every preset is in ALL");
    let platform = Platform::ALL.iter().position(|p| *p == platform).expect("every platform is in ALL");
    preset * Platform::ALL.len() + platform
}

/// One histogram: frames per bucket (not cumulative) and their time.
struct FrameCell {
    buckets: [AtomicU64; FRAME_BUCKET_COUNT],
    sum_ns: AtomicU64,
}

impl FrameCell {
    const fn new() -> Self {
        FrameCell { buckets: [const { AtomicU64::new(0) }; FRAME_BUCKET_COUNT], sum_ns: AtomicU64::new(0) }
    }

    fn add(&self, report: &TelemetryReport) {
        for (bucket, &count) in self.buckets.iter().zip(&report.bucket_counts) {
            if count > 0 {
                bucket.fetch_add(count, Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add((frame_time_s(report) * 1e9).round() as u64, Ordering::Relaxed);
    }
}

/// Appends `plaza_client_frame_seconds` in the Prometheus text format, every
/// preset × platform (zero until a report comes).
pub fn render_frames(out: &mut String) {
    use std::fmt::Write;
    let name = m::CLIENT_FRAME;
    let _ = write!(out, "# HELP {name} client frame times from telemetry reports, seconds (the shared frame buckets)\n# TYPE {name} histogram\n");
    for preset in QualityPreset::ALL {
        for platform in Platform::ALL {
            let cell = &FRAMES[cell(preset, platform)];
            let labels = format!("preset=\"{}\",platform=\"{}\"", preset.as_str(), platform.as_str());
            let mut cumulative = 0;
            for (i, bucket) in cell.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                match frame_bounds_s().get(i) {
                    Some(le) => _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"),
                    None => _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
                }
            }
            let sum = cell.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cumulative}");
        }
    }
    out.push('\n');
}

/// The report's frame time (s) for `_sum`: its `interval_s` (the sum of
/// its frame times), held between the least and the most its bucket counts
/// allow (every frame at its bucket's lower or upper bound; the overflow
/// bucket ends at the report's `max`), so a report can't move `_sum / _count`
/// outside its own buckets.
pub fn frame_time_s(report: &TelemetryReport) -> f64 {
    let bounds = frame_bounds_s();
    let last = bounds[bounds.len() - 1];
    let (mut least, mut most) = (0.0, 0.0);
    for (i, &count) in report.bucket_counts.iter().enumerate() {
        let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
        let hi = bounds.get(i).copied().unwrap_or((report.frame_ms.max / 1000.0).max(last));
        least += count as f64 * lo;
        most += count as f64 * hi;
    }
    report.interval_s.clamp(least, most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::telemetry::{FrameAggregator, bucket_of};

    fn report(times_ms: &[f64]) -> TelemetryReport {
        let mut agg = FrameAggregator::new(Platform::Desktop);
        for &t in times_ms {
            agg.record(t);
        }
        agg.take(QualityPreset::High, "test", 0, 0).expect("frames")
    }

    #[test]
    fn bounds_print_as_the_decimals() {
        let printed: Vec<String> = frame_bounds_s().iter().map(|b| b.to_string()).collect();
        assert_eq!(printed[2], "0.0111");
        assert_eq!(printed[4], "0.0167");
        assert_eq!(printed[13], "0.5");
    }

    #[test]
    fn the_frame_time_is_the_interval_where_the_buckets_allow_it() {
        let mut times = vec![10.0; 50];
        times.extend([16.7, 16.0, 4.0, 0.5, 33.3, 700.0, 45.0, 120.0]);
        let r = report(&times);
        assert!((frame_time_s(&r) - r.interval_s).abs() < 1e-9, "{} vs interval {}", frame_time_s(&r), r.interval_s);
        // The frames agree with the shared bucketing.
        for &t in &times {
            assert!(r.bucket_counts[bucket_of(t)] > 0);
        }
    }

    #[test]
    fn an_interval_the_buckets_cannot_hold_is_held_to_them() {
        // Ten frames of 8–11.1 ms add up to 80–111 ms, whatever the report says.
        let mut r = report(&[10.0; 10]);
        r.interval_s = 1e-3;
        assert!((frame_time_s(&r) - 0.080).abs() < 1e-12, "{}", frame_time_s(&r));
        r.interval_s = 60.0;
        assert!((frame_time_s(&r) - 0.111).abs() < 1e-12, "{}", frame_time_s(&r));
        // An overflow frame's time reaches up to the report's max, no less than 500 ms.
        let mut slow = report(&[700.0]);
        slow.interval_s = 60.0;
        assert!((frame_time_s(&slow) - 0.7).abs() < 1e-9, "{}", frame_time_s(&slow));
        slow.frame_ms.max = 1.0;
        assert!((frame_time_s(&slow) - 0.5).abs() < 1e-9, "{}", frame_time_s(&slow));
    }

    #[test]
    fn a_cell_adds_a_full_report_bucket_for_bucket() {
        let cell = FrameCell::new();
        let mut r = report(&[10.0; 3]);
        r.bucket_counts = vec![0; FRAME_BUCKET_COUNT];
        r.bucket_counts[4] = 60_000; // the most a report may claim
        r.frames = 60_000;
        r.interval_s = 60.0; // 1 ms per frame: below the bucket, so its lower edge
        cell.add(&r);
        cell.add(&r);
        let counts: Vec<u64> = cell.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert_eq!(counts[4], 120_000);
        assert_eq!(counts.iter().sum::<u64>(), 120_000);
        let sum = cell.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        assert!((sum - 2.0 * 60_000.0 * 0.0139).abs() < 1e-3, "{sum}");
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(matches!(parse(b"{"), Err(IngestError::BadJson(_))));
        assert!(matches!(parse(&vec![b' '; MAX_REPORT_BYTES + 1]), Err(IngestError::TooLarge)));
        let mut r = report(&[10.0; 3]);
        r.bucket_counts[0] = 9;
        let body = serde_json::to_vec(&r).unwrap();
        assert!(matches!(parse(&body), Err(IngestError::BadReport(ReportError::BucketSum { .. }))));
    }
}
