//! `POST /api/v1/telemetry` against a real server: a report's numbers
//! arrive in `/metrics` exactly; every bad input gets its status and message
//! and moves no metric; one report a second per user.
//!
//! The metrics recorder is process-wide and the tests run in parallel, so
//! each test owns its platform: mobile (numbers), desktop (bad input), vr
//! (rate limit).

mod common;

use common::*;
use plaza_shared::quality::QualityPreset;
use plaza_shared::telemetry::{FRAME_BUCKET_COUNT, FRAME_BUCKETS_MS, FrameMs, MAX_REPORT_BYTES, Platform, TelemetryReport, VoiceReport};
use std::collections::BTreeMap;
use std::time::Duration;

/// `/metrics` as series → value, the labels in a fixed order.
async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let (status, _, text) = server.http("GET", "/metrics", "", &[]).await;
    assert_eq!(status, 200);
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().unwrap_or_else(|_| panic!("bad value in {line}")));
    }
    out
}

/// The value of `name` with exactly these labels (any order).
fn get(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort_unstable();
    let key = if labels.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", labels.join(",")) };
    *metrics.get(&key).unwrap_or_else(|| panic!("no series {key} in /metrics"))
}

fn report(platform: Platform, preset: QualityPreset, bucket_counts: [u64; FRAME_BUCKET_COUNT]) -> TelemetryReport {
    let frames = bucket_counts.iter().sum();
    TelemetryReport {
        platform,
        preset,
        adapter: "llvmpipe (LLVM 19.1.7, 256 bits)".into(),
        interval_s: 5.0,
        frames,
        frame_ms: FrameMs { p50: 12.0, p95: 30.0, p99: 45.0, max: 700.0 },
        fps_1pct_low: 20.0,
        over_budget: 7,
        bucket_counts: bucket_counts.to_vec(),
        visible_avatars: 12,
        dropped_reports: 0,
        voice: None,
    }
}

async fn post(server: &TestServer, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    let (status, _, body) = server.http("POST", "/api/v1/telemetry", body, &headers).await;
    let json = if body.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")) };
    (status, json)
}

fn client_series(metrics: &BTreeMap<String, f64>, platform: &str) -> BTreeMap<String, f64> {
    let label = format!("platform=\"{platform}\"");
    metrics.iter().filter(|(k, _)| k.starts_with("plaza_client_") && k.contains(&label)).map(|(k, v)| (k.clone(), *v)).collect()
}

#[tokio::test]
async fn a_reports_numbers_appear_exactly_in_metrics() {
    let server = TestServer::start().await;
    let labels = [("preset", "ultra"), ("platform", "mobile")];
    let before = scrape(&server).await;
    // Starts at zero: the series exist before any report.
    assert_eq!(get(&before, "plaza_client_frame_seconds_count", &labels), 0.0);
    assert_eq!(get(&before, "plaza_client_reports_total", &[("platform", "mobile")]), 0.0);

    let counts = [3, 10, 40, 100, 60, 30, 20, 15, 8, 5, 4, 2, 1, 1, 1];
    let mut first = report(Platform::Mobile, QualityPreset::Ultra, counts);
    first.interval_s = 6.0; // what these frames can add up to (5.18 s to 6.96 s)
    first.over_budget = 22; // over mobile's 33.3 ms
    first.dropped_reports = 2;
    // One heard two voices, ~4% of the frames lost or stalled, and talked.
    first.voice = Some(VoiceReport { played: 230, recovered: 6, lost: 7, stalled: 3, delay_ms: 70.0, jitter_ms: 12.5, mic_sent: 120, mic_skipped: 2 });
    let second = {
        let mut r = report(Platform::Mobile, QualityPreset::Ultra, [0, 0, 0, 0, 150, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        r.interval_s = 2.5; // 60 fps
        r.frame_ms = FrameMs { p50: 16.6, p95: 16.7, p99: 16.7, max: 16.7 };
        r.over_budget = 0;
        r
    };
    // Two users: the per-user limit is not in the way.
    for (name, r) in [("Mo", &first), ("Bea", &second)] {
        let token = server.token(name).await;
        let (status, body) = post(&server, Some(&token), &serde_json::to_string(r).unwrap()).await;
        assert_eq!(status, 204, "{body}");
    }

    let after = scrape(&server).await;
    let mut cumulative = 0;
    for (i, bound) in FRAME_BUCKETS_MS.iter().enumerate() {
        cumulative += first.bucket_counts[i] + second.bucket_counts[i];
        let le = format!("{bound}e-3").parse::<f64>().unwrap().to_string();
        let value = get(&after, "plaza_client_frame_seconds_bucket", &[labels[0], labels[1], ("le", &le)]);
        assert_eq!(value, cumulative as f64, "bucket le={le}");
    }
    assert_eq!(get(&after, "plaza_client_frame_seconds_bucket", &[labels[0], labels[1], ("le", "+Inf")]), (first.frames + second.frames) as f64);
    assert_eq!(get(&after, "plaza_client_frame_seconds_count", &labels), (first.frames + second.frames) as f64);
    // The sum is the frame time the clients reported (their intervals).
    let sum = get(&after, "plaza_client_frame_seconds_sum", &labels);
    assert!((sum - 8.5).abs() < 1e-6, "_sum {sum}");

    // Mean fps: 300 frames / 6 s = 50 and 150 / 2.5 s = 60 (on the 60 bound).
    assert_eq!(get(&after, "plaza_client_fps_count", &labels), 2.0);
    let fps_sum = get(&after, "plaza_client_fps_sum", &labels);
    assert!((fps_sum - (first.frames as f64 / 6.0 + 60.0)).abs() < 1e-6, "fps _sum {fps_sum}");
    assert_eq!(get(&after, "plaza_client_fps_bucket", &[labels[0], labels[1], ("le", "45")]), 0.0);
    assert_eq!(get(&after, "plaza_client_fps_bucket", &[labels[0], labels[1], ("le", "60")]), 2.0);
    assert_eq!(get(&after, "plaza_client_fps_bucket", &[labels[0], labels[1], ("le", "+Inf")]), 2.0);

    assert_eq!(get(&after, "plaza_client_frames_over_budget_total", &labels), 22.0);
    assert_eq!(get(&after, "plaza_client_reports_total", &[("platform", "mobile")]), 2.0);
    assert_eq!(get(&after, "plaza_client_reports_dropped_total", &[("platform", "mobile")]), 2.0);

    // Voice: the one report that had it.
    let mobile = [("platform", "mobile")];
    for (outcome, frames) in [("played", 230.0), ("recovered", 6.0), ("lost", 7.0), ("stalled", 3.0)] {
        assert_eq!(get(&before, "plaza_client_voice_frames_total", &[mobile[0], ("outcome", outcome)]), 0.0);
        assert_eq!(get(&after, "plaza_client_voice_frames_total", &[mobile[0], ("outcome", outcome)]), frames, "{outcome}");
    }
    assert_eq!(get(&after, "plaza_client_voice_mic_frames_total", &[mobile[0], ("outcome", "sent")]), 120.0);
    assert_eq!(get(&after, "plaza_client_voice_mic_frames_total", &[mobile[0], ("outcome", "skipped")]), 2.0);
    assert_eq!(get(&after, "plaza_client_voice_delay_seconds_count", &mobile), 1.0, "one sample: the report without voice adds none");
    assert!((get(&after, "plaza_client_voice_delay_seconds_sum", &mobile) - 0.07).abs() < 1e-9);
    assert_eq!(get(&after, "plaza_client_voice_delay_seconds_bucket", &[mobile[0], ("le", "0.06")]), 0.0);
    assert_eq!(get(&after, "plaza_client_voice_delay_seconds_bucket", &[mobile[0], ("le", "0.08")]), 1.0);
    assert_eq!(get(&after, "plaza_client_voice_jitter_seconds_bucket", &[mobile[0], ("le", "0.01")]), 0.0);
    assert_eq!(get(&after, "plaza_client_voice_jitter_seconds_bucket", &[mobile[0], ("le", "0.02")]), 1.0);
    // Nothing about the adapter (an unbounded name) becomes a label.
    let (_, _, text) = server.http("GET", "/metrics", "", &[]).await;
    assert!(!text.contains("llvmpipe"), "adapter names are never labels");
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_message_and_changes_no_metric() {
    let server = TestServer::start().await;
    let token = server.token("Dee").await;
    let good = report(Platform::Desktop, QualityPreset::Low, [0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let good_json = serde_json::to_string(&good).unwrap();
    let before = client_series(&scrape(&server).await, "desktop");
    assert!(!before.is_empty());

    // No token, a bad token, a malformed header.
    let (status, body) = post(&server, None, &good_json).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) = post(&server, Some("not.a-token"), &good_json).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = server.http("POST", "/api/v1/telemetry", &good_json, &[("authorization", &token)]).await;
    assert_eq!(status, 401, "a token without `Bearer `");

    // Over 4 KiB: a valid report padded with whitespace.
    let padded = format!("{good_json}{}", " ".repeat(MAX_REPORT_BYTES + 1 - good_json.len()));
    let (status, body) = post(&server, Some(&token), &padded).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("4096 bytes"), "{body}");

    // Not JSON, or not a report.
    for (input, says) in [
        ("{\"platform\":", "bad JSON body"),
        ("[]", "bad JSON body"),
        (&good_json.replace("\"low\"", "\"auto\""), "unknown variant `auto`"),
        (&good_json.replace("\"desktop\"", "\"console\""), "unknown variant `console`"),
        (&good_json.replacen('{', "{\"gpu_temp\":80,", 1), "unknown field `gpu_temp`"),
    ] {
        let (status, body) = post(&server, Some(&token), input).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{input}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says) && message.starts_with("bad JSON body"), "{input}: {message}");
    }

    // Reports with a bad field: 400 bad_telemetry with the shared validation's text.
    type Edit = fn(&mut TelemetryReport);
    fn voice(r: &mut TelemetryReport) -> &mut VoiceReport {
        r.voice.insert(VoiceReport { played: 100, delay_ms: 40.0, ..Default::default() })
    }
    let cases: [(Edit, &str); 11] = [
        (|r| r.interval_s = 0.0, "interval_s must be a number in (0, 60]; got 0"),
        (|r| r.interval_s = 61.0, "interval_s must be a number in (0, 60]; got 61"),
        (|r| r.frames = 0, "frames must be 1..=60000; got 0"),
        (|r| r.bucket_counts.truncate(14), "bucket_counts must have 15 entries"),
        (|r| r.bucket_counts[0] = 1, "bucket_counts must add up to frames (10); they add up to 11"),
        (|r| r.fps_1pct_low = -1.0, "fps_1pct_low must be a finite number ≥ 0; got -1"),
        (|r| r.frame_ms.p50 = 99.0, "frame_ms must be ordered p50 ≤ p95 ≤ p99 ≤ max"),
        (|r| r.over_budget = 11, "over_budget (11) can't exceed frames"),
        (|r| voice(r).stalled = 50_000, "voice frames heard (played + recovered + lost + stalled) must be at most 48000; got 50100"),
        (|r| voice(r).mic_sent = 7_000, "voice microphone frames (mic_sent + mic_skipped) must be at most 6000; got 7000"),
        (|r| voice(r).delay_ms = -3.0, "voice.delay_ms must be a number from 0 to 10000 ms; got -3"),
    ];
    for (edit, says) in cases {
        let mut bad = good.clone();
        edit(&mut bad);
        let expected = bad.clone().validate().expect_err("the edit makes it bad").to_string();
        let (status, body) = post(&server, Some(&token), &serde_json::to_string(&bad).unwrap()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_telemetry")), "{says}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message, expected);
        assert!(message.starts_with(says), "{message}");
    }

    let after = client_series(&scrape(&server).await, "desktop");
    assert_eq!(before, after, "no refused report moved a metric");

    // Refused reports used no rate: the good one goes through now.
    let (status, body) = post(&server, Some(&token), &good_json).await;
    assert_eq!(status, 204, "{body}");
    let counted = client_series(&scrape(&server).await, "desktop");
    assert_eq!(get(&counted, "plaza_client_reports_total", &[("platform", "desktop")]), before["plaza_client_reports_total{platform=\"desktop\"}"] + 1.0);
}

#[tokio::test]
async fn more_than_one_report_a_second_per_user_is_429() {
    let server = TestServer::start().await;
    let (ada, bob) = (server.token("Ada").await, server.token("Bob").await);
    let body = serde_json::to_string(&report(Platform::Vr, QualityPreset::Medium, [0, 0, 0, 72, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).unwrap();
    let reports = |m: &BTreeMap<String, f64>| get(m, "plaza_client_reports_total", &[("platform", "vr")]);
    let before = reports(&scrape(&server).await);

    let started = std::time::Instant::now();
    assert_eq!(post(&server, Some(&ada), &body).await.0, 204);
    let (status, refused) = post(&server, Some(&ada), &body).await;
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!((status, refused["error"]["code"].as_str()), (429, Some("rate_limited")), "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("one report a second"), "{refused}");
    }
    assert_eq!(post(&server, Some(&bob), &body).await.0, 204, "the limit is per user");
    tokio::time::sleep(Duration::from_millis(1050).saturating_sub(started.elapsed())).await;
    assert_eq!(post(&server, Some(&ada), &body).await.0, 204, "a second later");

    let after = reports(&scrape(&server).await);
    assert_eq!(after - before, 3.0, "the refused report was not counted");
}
