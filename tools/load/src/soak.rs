//! `plaza-load soak`: a long run against a server in its own process, then
//! the leak checks: resident memory must not creep up while the load holds
//! steady, and once the users are gone the server must be back to idle (no
//! connections, no more tasks than before).

use crate::collect::ResourcePoint;
use crate::report::ServerStats;
use serde::Serialize;

/// The first part of the steady load is left out of the drift: allocators
/// and buffers grow to their working size there.
const WARM_UP_SHARE: f64 = 0.2;
/// Each side of the comparison averages this share of the steady part.
const WINDOW_SHARE: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
pub struct SoakLimits {
    /// Largest RSS growth allowed between the early and late windows, %.
    pub max_rss_drift_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakVerdict {
    /// Mean RSS in the early window (after the warm-up), MB.
    pub rss_early_mb: f64,
    /// Mean RSS in the last window before the users stopped, MB.
    pub rss_late_mb: f64,
    /// (late − early) / early, %.
    pub rss_drift_pct: f64,
    pub max_rss_drift_pct: f64,
    /// The windows, seconds since the start.
    pub early_window_s: (f64, f64),
    pub late_window_s: (f64, f64),
    pub connections_after: Option<f64>,
    pub tasks_before: Option<f64>,
    /// `tasks_before` plus one per room the run created (rooms are kept).
    pub tasks_idle: Option<f64>,
    pub tasks_after: Option<f64>,
    pub settled_s: Option<f64>,
    pub passed: bool,
    /// Why not, one line.
    pub failure: String,
}

/// Judges a finished run. `steady_from_s`/`steady_to_s`: when the load was
/// all there (after the ramp) and when the users stopped sending.
pub fn judge(limits: SoakLimits, resources: &[ResourcePoint], steady_from_s: f64, steady_to_s: f64, server: &ServerStats) -> SoakVerdict {
    let span = (steady_to_s - steady_from_s).max(0.0);
    let early_from = steady_from_s + span * WARM_UP_SHARE;
    let early = (early_from, early_from + span * WINDOW_SHARE);
    let late = (steady_to_s - span * WINDOW_SHARE, steady_to_s);
    let mean = |(a, b): (f64, f64)| {
        let values: Vec<f64> = resources.iter().filter(|p| p.s >= a && p.s <= b && p.rss_mb > 0.0).map(|p| p.rss_mb).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let mut v = SoakVerdict {
        max_rss_drift_pct: limits.max_rss_drift_pct,
        early_window_s: early,
        late_window_s: late,
        connections_after: server.after.map(|g| g.connections),
        tasks_before: server.before.and_then(|g| g.tasks),
        tasks_idle: server.after.zip(server.before).and_then(|(after, before)| after.idle_tasks(&before)),
        tasks_after: server.after.and_then(|g| g.tasks),
        settled_s: server.settled_s,
        ..SoakVerdict::default()
    };
    let mut reasons = Vec::new();
    match (mean(early), mean(late)) {
        (Some(e), Some(l)) if e > 0.0 => {
            v.rss_early_mb = round1(e);
            v.rss_late_mb = round1(l);
            v.rss_drift_pct = round1((l - e) / e * 100.0);
            if v.rss_drift_pct > limits.max_rss_drift_pct {
                reasons.push(format!("RSS grew {:.1}% ({:.1} → {:.1} MB) while the load held steady; at most {}% allowed", v.rss_drift_pct, e, l, limits.max_rss_drift_pct));
            }
        }
        _ => reasons.push("too few memory samples to judge drift (is the run long enough, and /metrics reachable?)".into()),
    }
    match (server.before, server.after) {
        (Some(_), Some(after)) => {
            if after.connections != 0.0 {
                reasons.push(format!("{} connections still open after the users closed", after.connections));
            }
            if let (Some(idle), Some(now)) = (v.tasks_idle, v.tasks_after)
                && now > idle
            {
                reasons.push(format!("{now:.0} tasks alive after the run, {idle:.0} when idle: a task leak"));
            }
        }
        _ => reasons.push("the server's gauges could not be read before and after the run".into()),
    }
    v.passed = reasons.is_empty();
    v.failure = reasons.join("; ");
    v
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerGauges;

    fn points(rss: impl Fn(f64) -> f64) -> Vec<ResourcePoint> {
        (0..=1000).map(|s| ResourcePoint { s: f64::from(s), rss_mb: rss(f64::from(s)), ..ResourcePoint::default() }).collect()
    }

    fn settled() -> ServerStats {
        let idle = ServerGauges { rss_mb: 20.0, connections: 0.0, tasks: Some(6.0), rooms: Some(1.0) };
        ServerStats { before: Some(idle), after: Some(ServerGauges { rss_mb: 60.0, ..idle }), settled_s: Some(1.5), ..ServerStats::default() }
    }

    #[test]
    fn flat_memory_after_the_warm_up_passes() {
        // Growth during the warm-up (first 20% of the steady part) is fine.
        let v = judge(SoakLimits { max_rss_drift_pct: 5.0 }, &points(|s| if s < 150.0 { 40.0 + s / 10.0 } else { 55.0 }), 0.0, 1000.0, &settled());
        assert!(v.passed, "{}", v.failure);
        assert_eq!((v.rss_early_mb, v.rss_late_mb, v.rss_drift_pct), (55.0, 55.0, 0.0));
    }

    #[test]
    fn steady_growth_fails_and_says_how_much() {
        let v = judge(SoakLimits { max_rss_drift_pct: 5.0 }, &points(|s| 50.0 + s * 0.02), 0.0, 1000.0, &settled());
        assert!(!v.passed);
        assert!(v.rss_drift_pct > 5.0 && v.failure.contains("RSS grew"), "{}", v.failure);
    }

    #[test]
    fn open_connections_or_extra_tasks_after_the_run_fail() {
        let mut server = settled();
        server.after = Some(ServerGauges { rss_mb: 60.0, connections: 2.0, tasks: Some(9.0), rooms: Some(2.0) });
        let v = judge(SoakLimits { max_rss_drift_pct: 5.0 }, &points(|_| 50.0), 0.0, 1000.0, &server);
        assert!(v.failure.contains("2 connections still open") && v.failure.contains("task leak"), "{}", v.failure);
    }
}
