//! Delivery of frame-timing reports to `POST /api/v1/telemetry`, on the
//! network thread. No Bevy here: the ECS side ([`crate::telemetry`]) hands
//! finished reports over a bounded channel, and [`run`] posts them one at a
//! time with the session's HTTP client and its current access token.
//!
//! Each report also carries what voice sounded like since the one before
//! ([`plaza_shared::telemetry::VoiceTally`], added to by the call), when there was voice.
//!
//! Telemetry is worth less than the frames and the socket it describes, so
//! a report gets exactly one try: when the server is away, slow or says no,
//! the report is dropped and counted, and the count rides along in the next
//! report that gets through (`dropped_reports`). Nothing is retried or
//! queued beyond the channel, so a dead server costs a few failed requests
//! every few seconds and no memory.

use super::voice::SharedVoiceTally;
use plaza_shared::telemetry::TelemetryReport;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Reports the ECS may have waiting for the network; beyond this it drops
/// (and counts) them itself.
pub const QUEUE: usize = 4;
/// One report's whole request. Shorter than the report interval (5 s) so a
/// hanging server can't make reports pile up behind each other.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The route, after the server's base URL.
pub const PATH: &str = "/api/v1/telemetry";

/// Why a report did not arrive; it is counted in the next one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DropReason {
    #[error("not signed in yet")]
    NoToken,
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The token expired or the server forgot it; the session signs in or
    /// refreshes on its own schedule, so the next report carries the new one.
    #[error("token refused (401)")]
    Unauthorized,
    /// 429, 5xx and anything else that is the server's state, not the report.
    #[error("server answered {0}")]
    Status(u16),
}

/// What became of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took it (204); it told the server about this many drops.
    Delivered { dropped_reports: u64 },
    /// Not delivered; counted.
    Dropped(DropReason),
    /// The server refused the report itself (400 / 413 / 422: a client
    /// bug, not an outage). Not counted as a drop: sending it again would
    /// be refused again, and counting it would blame the network.
    Rejected { status: u16, message: String },
}

/// Posts reports; remembers how many it dropped since the last delivery.
#[derive(Debug)]
pub struct TelemetrySender {
    http: reqwest::Client,
    url: String,
    token: watch::Receiver<Option<String>>,
    dropped: u64,
    warned_rejected: bool,
    voice: Option<SharedVoiceTally>,
}

impl TelemetrySender {
    /// `server` is `http://host:port`; `token` follows the session's
    /// current access token (`None` before the first sign-in).
    pub fn new(http: reqwest::Client, server: &str, token: watch::Receiver<Option<String>>) -> TelemetrySender {
        TelemetrySender { http, url: format!("{}{PATH}", server.trim_end_matches('/')), token, dropped: 0, warned_rejected: false, voice: None }
    }

    /// Reports carry what `tally` added up since the report before.
    pub fn with_voice(mut self, tally: SharedVoiceTally) -> TelemetrySender {
        self.voice = Some(tally);
        self
    }

    /// Reports dropped since the last delivered one (what the next report
    /// will say, on top of any the ECS dropped itself).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sends one report, once. Its `dropped_reports` (drops the ECS
    /// counted) grows by the drops counted here.
    pub async fn send(&mut self, mut report: TelemetryReport) -> Outcome {
        report.dropped_reports = report.dropped_reports.saturating_add(self.dropped);
        // Voice rides with the report, and is dropped with it: the count of
        // dropped reports says for both what did not arrive.
        if let Some(tally) = &self.voice {
            report.voice = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().or(report.voice);
        }
        let outcome = self.post(&report).await;
        match &outcome {
            Outcome::Delivered { .. } => self.dropped = 0,
            Outcome::Dropped(reason) => {
                // This one, and the ones it was carrying.
                self.dropped = report.dropped_reports.saturating_add(1);
                tracing::debug!(%reason, dropped = self.dropped, "telemetry report dropped");
            }
            Outcome::Rejected { status, message } => {
                self.dropped = report.dropped_reports;
                // A bad report is a bug that repeats every 5 s: say it once.
                if !self.warned_rejected {
                    self.warned_rejected = true;
                    tracing::warn!(status, %message, "the server refused a telemetry report; later refusals are logged at debug");
                } else {
                    tracing::debug!(status, %message, "telemetry report refused");
                }
            }
        }
        outcome
    }

    async fn post(&self, report: &TelemetryReport) -> Outcome {
        let Some(token) = self.token.borrow().clone() else {
            return Outcome::Dropped(DropReason::NoToken);
        };
        let request = self.http.post(&self.url).bearer_auth(token).json(report).timeout(REQUEST_TIMEOUT);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Outcome::Dropped(DropReason::Unreachable(e.to_string())),
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => Outcome::Delivered { dropped_reports: report.dropped_reports },
            401 => Outcome::Dropped(DropReason::Unauthorized),
            400 | 413 | 422 => {
                // The body names the bad field; a slow body is not worth waiting for.
                let message = tokio::time::timeout(REQUEST_TIMEOUT, response.text()).await.ok().and_then(Result::ok).unwrap_or_default();
                Outcome::Rejected { status, message }
            }
            _ => Outcome::Dropped(DropReason::Status(status)),
        }
    }
}

/// Posts what arrives on `reports` until the app drops its end. One report
/// at a time: while one is in flight the channel ([`QUEUE`]) holds the
/// next, and the ECS drops beyond that.
pub async fn run(mut sender: TelemetrySender, mut reports: mpsc::Receiver<TelemetryReport>) {
    while let Some(report) = reports.recv().await {
        // A span across the await (an entered guard can't cross one).
        sender.send(report).instrument(tracing::info_span!("telemetry_send")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plaza_shared::quality::{Platform, QualityPreset};
    use plaza_shared::telemetry::FrameAggregator;

    fn report(dropped: u64) -> TelemetryReport {
        let mut agg = FrameAggregator::new(Platform::Desktop);
        agg.record(10.0);
        agg.take(QualityPreset::High, "test", 0, dropped).expect("one frame")
    }

    /// Nothing listens on this port (bound, then let go).
    async fn dead_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn without_a_token_or_a_server_reports_are_dropped_and_the_count_grows() {
        let (token, rx) = watch::channel(None);
        let mut sender = TelemetrySender::new(reqwest::Client::new(), &dead_server().await, rx);
        assert_eq!(sender.send(report(0)).await, Outcome::Dropped(DropReason::NoToken));
        assert_eq!(sender.dropped(), 1);
        token.send_replace(Some("t".into()));
        assert!(matches!(sender.send(report(0)).await, Outcome::Dropped(DropReason::Unreachable(_))));
        assert_eq!(sender.dropped(), 2);
        // The ECS dropped 3 itself (its queue was full): those count too.
        assert!(matches!(sender.send(report(3)).await, Outcome::Dropped(DropReason::Unreachable(_))));
        assert_eq!(sender.dropped(), 2 + 3 + 1);
    }
}
