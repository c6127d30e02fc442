//! Client telemetry against a real server: reports made from known frame
//! times arrive as `plaza_client_*` metrics, and reports sent while the
//! server is away are dropped, counted, and told in the next one.
//!
//! The metrics recorder is global to the process, so each test uses its own
//! label values (desktop / vr) and compares counts before and after.

use plaza_client::network::telemetry::{DropReason, Outcome, TelemetrySender};
use plaza_shared::quality::{Platform, QualityPreset};
use plaza_shared::telemetry::{FRAME_BUCKETS_MS, FrameAggregator, TelemetryReport};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The server on `listener` until the returned sender is dropped or fired.
fn serve(listener: TcpListener) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plaza_server::run(plaza_server::ServerConfig::ephemeral(), listener, async {
        let _ = stopped.await;
    }));
    stop
}

async fn guest_token(http: &reqwest::Client, server: &str, name: &str) -> String {
    let response = http.post(format!("{server}/api/v1/auth/guest")).json(&serde_json::json!({ "name": name })).send().await.unwrap();
    assert!(response.status().is_success(), "guest sign-in: {}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    body["access_token"].as_str().expect("an access token").to_owned()
}

async fn metrics(http: &reqwest::Client, server: &str) -> String {
    let response = http.get(format!("{server}/metrics")).send().await.unwrap();
    assert!(response.status().is_success());
    response.text().await.unwrap()
}

/// The value of the sample `name{labels…}` that has all of `labels`
/// (0 when the series is absent: counters start at zero).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The cumulative bucket `le` (seconds) of a histogram, matched by value
/// (the exporter decides how to print the bound).
fn bucket(text: &str, name: &str, labels: &[(&str, &str)], le_s: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{')?;
        if metric != bucket || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        let le = rest.split("le=\"").nth(1)?.split('"').next()?.parse::<f64>().ok()?;
        ((le - le_s).abs() < 1e-9).then(|| value.parse().ok()).flatten()
    })
}

fn report(platform: Platform, times_ms: &[f64], dropped: u64) -> TelemetryReport {
    let mut agg = FrameAggregator::new(platform);
    for &t in times_ms {
        agg.record(t);
    }
    agg.take(QualityPreset::High, "llvmpipe (test)", 7, dropped).expect("frames were recorded")
}

#[tokio::test]
async fn reports_arrive_as_client_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let _stop = serve(listener);
    let http = reqwest::Client::new();
    let token = guest_token(&http, &server, "Telemetry").await;
    let labels = [("preset", "high"), ("platform", "desktop")];
    let before = metrics(&http, &server).await;

    // 200 frames: 150 at 10 ms, 40 at 20 ms, 10 at 50 ms.
    let mut times = vec![10.0; 150];
    times.extend([20.0; 40]);
    times.extend([50.0; 10]);
    let report = report(Platform::Desktop, &times, 0);
    assert_eq!(report.over_budget, 50, "frames over 16.7 ms");
    let (_token_tx, token_rx) = watch::channel(Some(token));
    let mut sender = TelemetrySender::new(http.clone(), &server, token_rx);
    assert_eq!(sender.send(report).await, Outcome::Delivered { dropped_reports: 0 });

    let after = metrics(&http, &server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(delta("plaza_client_frame_seconds_count", &labels), 200.0, "every frame is counted under its preset and platform");
    // Cumulative buckets: 150 frames ≤ 11.1 ms, 190 ≤ 20 ms, all 200 ≤ 50 ms.
    for (bound_ms, frames) in [(11.1, 150.0), (20.0, 190.0), (50.0, 200.0), (8.0, 0.0)] {
        assert!(FRAME_BUCKETS_MS.contains(&bound_ms));
        let at = |text: &str| bucket(text, "plaza_client_frame_seconds", &labels, bound_ms / 1000.0);
        let got = at(&after).unwrap_or_else(|| panic!("no le={} bucket for {labels:?} in /metrics", bound_ms / 1000.0)) - at(&before).unwrap_or(0.0);
        assert_eq!(got, frames, "frames ≤ {bound_ms} ms");
    }
    let sum = delta("plaza_client_frame_seconds_sum", &labels);
    assert!((sum - (150.0 * 0.010 + 40.0 * 0.020 + 10.0 * 0.050)).abs() < 0.05, "the histogram's sum is the frames' time: {sum}");
    assert_eq!(delta("plaza_client_reports_total", &[("platform", "desktop")]), 1.0);
    assert_eq!(delta("plaza_client_frames_over_budget_total", &labels), 50.0);
    assert_eq!(delta("plaza_client_fps_count", &labels), 1.0, "one report, one mean fps");

    // A token the server never gave: dropped and counted, not delivered.
    let (_bad_tx, bad_rx) = watch::channel(Some("not-a-token".to_owned()));
    let mut stranger = TelemetrySender::new(http.clone(), &server, bad_rx);
    assert_eq!(stranger.send(self::report(Platform::Desktop, &[10.0], 0)).await, Outcome::Dropped(DropReason::Unauthorized));
    assert_eq!(stranger.dropped(), 1);
    let last = metrics(&http, &server).await;
    assert_eq!(sample(&last, "plaza_client_reports_total", &[("platform", "desktop")]), sample(&after, "plaza_client_reports_total", &[("platform", "desktop")]), "a refused report is not a report");
}

#[tokio::test]
async fn reports_made_while_the_server_is_away_are_counted_in_the_next_one() {
    // A port with nothing behind it yet: the server is away.
    let addr: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let server = format!("http://{addr}");
    let http = reqwest::Client::new();
    let (token_tx, token_rx) = watch::channel(Some("from-before-the-outage".to_owned()));
    let mut sender = TelemetrySender::new(http.clone(), &server, token_rx);
    for n in 1..=3 {
        let outcome = sender.send(report(Platform::Vr, &[12.0; 30], 0)).await;
        assert!(matches!(outcome, Outcome::Dropped(DropReason::Unreachable(_))), "{outcome:?}");
        assert_eq!(sender.dropped(), n);
    }

    // The server comes back on the same address; the session signs in again.
    let _stop = serve(TcpListener::bind(addr).await.unwrap());
    token_tx.send_replace(Some(guest_token(&http, &server, "Returning").await));
    let before = metrics(&http, &server).await;
    // The ECS also dropped one itself (its queue was full): 3 + 1.
    assert_eq!(sender.send(report(Platform::Vr, &[12.0; 30], 1)).await, Outcome::Delivered { dropped_reports: 4 });
    assert_eq!(sender.dropped(), 0, "the count starts again after a delivery");
    let after = metrics(&http, &server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(delta("plaza_client_reports_dropped_total", &[("platform", "vr")]), 4.0, "what the client said it dropped");
    assert_eq!(delta("plaza_client_reports_total", &[("platform", "vr")]), 1.0);
    assert_eq!(delta("plaza_client_frame_seconds_count", &[("preset", "high"), ("platform", "vr")]), 30.0);

    // The next one carries nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the server takes one report a second per user
    assert_eq!(sender.send(report(Platform::Vr, &[12.0; 30], 0)).await, Outcome::Delivered { dropped_reports: 0 });
}

/// What the voice call adds up rides with the next report: into the
/// `plaza_client_voice_*` metrics when it arrives, and gone with it when it
/// does not (the dropped count says so), never told twice.
#[tokio::test]
async fn voice_rides_with_the_next_report_and_goes_with_it() {
    let addr: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let server = format!("http://{addr}");
    let http = reqwest::Client::new();
    let (token_tx, token_rx) = watch::channel(Some("before-the-server".to_owned()));
    let tally = plaza_client::network::voice::SharedVoiceTally::default();
    let mut sender = TelemetrySender::new(http.clone(), &server, token_rx).with_voice(tally.clone());
    // Heard while the server is away: dropped with its report.
    tally.lock().unwrap().heard(1_000, 0, 0, 0, 40.0, 1.0);
    assert!(matches!(sender.send(report(Platform::Mobile, &[30.0; 10], 0)).await, Outcome::Dropped(_)));
    assert!(tally.lock().unwrap().take().is_none(), "taken by the report that was dropped");

    let _stop = serve(TcpListener::bind(addr).await.unwrap());
    token_tx.send_replace(Some(guest_token(&http, &server, "Listener").await));
    let before = metrics(&http, &server).await;
    {
        let mut t = tally.lock().unwrap();
        t.heard(180, 4, 6, 10, 60.0, 8.0); // one slot
        t.heard(20, 0, 0, 0, 160.0, 35.0); // another, far rougher
        t.mic(75, 3);
    }
    assert_eq!(sender.send(report(Platform::Mobile, &[30.0; 10], 0)).await, Outcome::Delivered { dropped_reports: 1 });
    let after = metrics(&http, &server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let mobile = ("platform", "mobile");
    for (outcome, frames) in [("played", 200.0), ("recovered", 4.0), ("lost", 6.0), ("stalled", 10.0)] {
        assert_eq!(delta("plaza_client_voice_frames_total", &[mobile, ("outcome", outcome)]), frames, "{outcome}");
    }
    assert_eq!(delta("plaza_client_voice_mic_frames_total", &[mobile, ("outcome", "sent")]), 75.0);
    assert_eq!(delta("plaza_client_voice_mic_frames_total", &[mobile, ("outcome", "skipped")]), 3.0);
    // The delay is the mean over the 220 frames heard: (200 × 60 + 20 × 160) / 220 = 69.1 ms.
    assert_eq!(delta("plaza_client_voice_delay_seconds_count", &[mobile]), 1.0);
    let delay = delta("plaza_client_voice_delay_seconds_sum", &[mobile]);
    assert!((delay - 0.069_09).abs() < 1e-4, "{delay}");
    let jitter = delta("plaza_client_voice_jitter_seconds_sum", &[mobile]);
    assert!((jitter - 0.035).abs() < 1e-9, "the roughest voice's jitter: {jitter}");
    assert!(tally.lock().unwrap().take().is_none(), "told once");
}
