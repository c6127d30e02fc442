//! The run's outputs: `result.json` (the contract's keys and more) and
//! `report.html` (one self-contained page: inline SVG charts, no scripts,
//! no fonts, nothing fetched).

use crate::collect::{ResourcePoint, SecondPoint};
use crate::delivery::ChatDelivery;
use crate::histogram::Summary as Percentiles;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("can't create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("can't write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The server's side, as measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    /// Mean CPU over the run, percent of one core.
    pub cpu_pct: f64,
    /// Peak resident memory, MB (10^6 bytes).
    pub rss_mb: f64,
    /// Highest one-second CPU.
    pub cpu_pct_max: f64,
    /// true: the embedded server, sharing this process (its CPU is its own
    /// threads'; `rss_mb` includes the load tool).
    pub in_process: bool,
    pub source: String,
    pub url: String,
    /// A remote server's gauges before the users came…
    pub before: Option<crate::server::ServerGauges>,
    /// …and once they were gone (or when the wait for that ran out).
    pub after: Option<crate::server::ServerGauges>,
    /// Seconds after the users closed until the gauges were back to
    /// `before` (no connections, no extra tasks); `None`: they never were.
    pub settled_s: Option<f64>,
    /// (peak RSS − RSS before) / users that got in, KB (10^3 bytes).
    pub rss_per_user_kb: Option<f64>,
}

/// The load generator itself: when it runs out of CPU, latency measures
/// the generator, not the server.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LoadToolStats {
    /// Mean CPU of this tool's threads, percent of one core.
    pub cpu_pct: f64,
    pub cpu_pct_max: f64,
    /// CPU cores this machine offers.
    pub cores: u32,
    /// The whole machine's mean CPU (every process), percent of all cores.
    pub machine_busy_pct: f64,
    /// The machine was full (over 90 % busy, or this tool plus the embedded
    /// server over 85 % of all cores): latency measures the load tool and
    /// whatever else runs, not only the server.
    pub saturated: bool,
}

/// How paced users (`--send-at tick`) timed their poses: the lead before
/// the tick they sent by, and how far their learnt tick grid was from the
/// room's (learnt from every member's deltas). A grid later than the
/// room's by more than the lead lands poses just after the tick, and they
/// wait a whole period more.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PacingStats {
    pub lead_ms: Percentiles,
    /// Either way.
    pub grid_offset_ms: Percentiles,
    /// Sends by a grid over 2 ms later than the room's, percent.
    pub grid_late_pct: f64,
}

/// Things that must not happen, beyond `misrouted` and `errors`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AnomalyCounts {
    /// Deltas that carried the receiver's own avatar (counted in `misrouted`).
    pub own_avatar: u64,
    /// Poses for avatar ids never introduced (counted in `errors`).
    pub unknown_avatar: u64,
    /// Poses not newer than one already received from that sender (in `errors`).
    pub stale: u64,
    /// A sender's stream that jumped by more than `gap_ms` (diagnostic only).
    pub gaps: u64,
    pub gap_ms: u64,
    /// Avatars and chats of users not in this run (diagnostic only).
    pub foreign: u64,
}

/// What the fault proxy did in a run with faults.
#[derive(Debug, Clone, Serialize)]
pub struct FaultStats {
    /// The faults, in words.
    pub describe: String,
    pub proxy: crate::proxy::StatsSnapshot,
    /// Sockets that ended without a close because the proxy cut them: not
    /// counted as errors.
    pub drops_from_resets: u64,
    /// Sockets users gave up on after hearing nothing for their silence
    /// limit, on links the proxy made silent: not counted as errors.
    pub silent_links: u64,
}

/// Server restarts in a run: the embedded server's (`--restart-every`),
/// and the 1001 closes ("the server is restarting") of any server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartStats {
    /// `--restart-every`, s; `None`: the server was restarted by someone else.
    pub every_s: Option<f64>,
    /// The embedded server's restarts, in order.
    pub done: Vec<RestartRecord>,
    /// Sockets the server closed with 1001.
    pub drained_sockets: u64,
    /// Tries that failed while users came back (the server was not up yet):
    /// expected, so not errors.
    pub retries: u64,
    /// Per user and restart: the 1001 close → `joined` on a new socket.
    pub back_ms: Percentiles,
    /// Users still on their way back when the run ended.
    pub still_away: u64,
}

/// One restart of the embedded server.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RestartRecord {
    /// When the stop signal was given, s into the run.
    pub at_s: f64,
    /// Until the old server was gone: its drain, its 1001 closes, its
    /// sockets closed.
    pub stopped_ms: f64,
    /// Until the new one listened.
    pub down_ms: f64,
}

/// `result.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub users: u64,
    pub rooms: u32,
    pub rate_hz: f64,
    pub duration_s: f64,
    pub users_per_room: u32,
    pub ramp_s: f64,
    pub protocol: String,
    /// When users sent their poses: `tick` (just before the room's tick)
    /// or `random`.
    pub send_at: String,
    pub tag: String,
    pub started_unix_ms: u64,
    /// Users that got into their room.
    pub users_joined: u64,
    /// End-to-end pose latency: receiver's clock on arrival − the sender's `t`.
    pub latency_ms: Percentiles,
    /// The same, less the estimated wait for the room's next tick.
    pub latency_net_ms: Percentiles,
    /// End to end again, to when the delta reached this tool's socket (the
    /// kernel's receive time) instead of when the tool read it: what is left
    /// when the load tool's own lateness is taken out.
    #[serde(default)]
    pub latency_at_socket_ms: Percentiles,
    /// With `--send-at tick`: how the users paced their poses.
    #[serde(default)]
    pub pacing: Option<PacingStats>,
    pub join_ms: Percentiles,
    /// Per socket that joined (not resumed): its connect → `joined`, what
    /// a player waits from connecting to being in the room (with the hello
    /// and the room in the upgrade: one round trip after the connect's).
    #[serde(default)]
    pub connect_join_ms: Percentiles,
    pub auth_ms: Percentiles,
    pub rtt_ms: Percentiles,
    /// Per reconnect: the new socket's connect → `joined` (the room's state back): the connect's and upgrade's round trips, and the hello's when it went as a frame.
    pub restore_ms: Percentiles,
    /// Per reconnect: the old socket lost → `joined` on the new one.
    pub outage_ms: Percentiles,
    /// Reconnects that got their old seat back (`hello.resume`).
    pub resumed: u64,
    /// The server's own count of what became of dropped sockets' seats
    /// over the run (a Plaza server that exports it). Its `resumed` is at
    /// least ours: a resume the server took whose answer a cut lost is
    /// counted there and tried again here.
    #[serde(default)]
    pub server_seats: Option<crate::server::SeatCounts>,
    /// Reconnects whose state took more than 2 s to come back (hello → joined).
    pub restores_over_2s: u64,
    /// Present when the run had the fault proxy in between.
    pub faults: Option<FaultStats>,
    /// Present when the server restarted during the run.
    pub restarts: Option<RestartStats>,
    /// `plaza-load soak`'s leak checks.
    pub soak: Option<crate::soak::SoakVerdict>,
    /// `--voice`: what the users heard through the SFU.
    pub voice: Option<crate::voice::VoiceResult>,
    /// `--hostile`: how the server dealt with the misbehaving clients.
    pub hostile: Option<crate::hostile::HostileResult>,
    pub poses_sent: u64,
    /// Poses per second a user actually sent, on average (below `rate_hz`
    /// when the load tool is short of CPU).
    pub pose_rate_hz: f64,
    pub expected: u64,
    pub received: u64,
    /// Poses overwritten at the server by a newer one before a tick took
    /// them, whose latency was taken when the newer one arrived.
    pub superseded: u64,
    pub lost: u64,
    pub pairs_with_loss: u64,
    pub misrouted: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Access tokens refreshed after the server's `token_expiring`.
    pub token_refreshes: u64,
    pub down_bytes_per_user_s: f64,
    pub up_bytes_per_user_s: f64,
    pub chat: ChatDelivery,
    pub anomalies: AnomalyCounts,
    pub server: ServerStats,
    pub load_tool: LoadToolStats,
    pub interrupted: bool,
    pub passed: bool,
    /// Why the run failed, one line; empty when it passed.
    pub failure: String,
    pub timeline: Vec<SecondPoint>,
    pub resources: Vec<ResourcePoint>,
}

impl RunResult {
    /// Fails the run for `reason`, after any reasons it already has.
    pub fn fail(&mut self, reason: &str) {
        self.passed = false;
        self.failure = [self.failure.as_str(), reason].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("; ");
    }
}

/// Writes `result.json` and `report.html` into `dir` (created); returns their paths.
pub fn write(dir: &Path, result: &RunResult) -> Result<(PathBuf, PathBuf), ReportError> {
    write_pair(dir, ("result.json", result), ("report.html", html(result)))
}

/// Writes a JSON file and its HTML page into `dir` (created); returns their paths.
pub(crate) fn write_pair(dir: &Path, (json_name, value): (&str, &impl Serialize), (html_name, page): (&str, String)) -> Result<(PathBuf, PathBuf), ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Dir(dir.to_owned(), e))?;
    let json_path = dir.join(json_name);
    let json = serde_json::to_string_pretty(value).expect("reports always serialize");
    std::fs::write(&json_path, json + "\n").map_err(|e| ReportError::Write(json_path.clone(), e))?;
    let html_path = dir.join(html_name);
    std::fs::write(&html_path, page).map_err(|e| ReportError::Write(html_path.clone(), e))?;
    Ok((json_path, html_path))
}

/// The start of a self-contained report page, up to its heading.
pub(crate) fn page_head(title: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:900px}}
table{{border-collapse:collapse;margin:8px 0 20px}}th,td{{border:1px solid #ccc;padding:3px 9px;text-align:right}}th{{text-align:left;background:#f4f4f4}}
.ok{{color:#17692c}}.bad{{color:#b00020}}svg{{display:block;margin:8px 0 20px;border:1px solid #ddd}}p.note{{color:#555;font-size:13px}}
</style></head><body><h1>{t}</h1>"#,
        t = esc(title)
    )
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a chart: name, colour and (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of `series` over seconds since the start.
pub fn line_chart(title: &str, y_unit: &str, series: &[Series<'_>]) -> String {
    line_chart_over(title, "seconds since start", y_unit, series)
}

/// A line chart of `series` over `x_label`. The legend sits in a row of
/// its own under the title.
pub fn line_chart_over(title: &str, x_label: &str, y_unit: &str, series: &[Series<'_>]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 276.0;
    const L: f64 = 64.0;
    const R: f64 = 16.0;
    const T: f64 = 50.0;
    const B: f64 = 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="#fff"/><text x="{L}" y="20" font-size="14" font-weight="bold">{t}</text>"##,
        t = esc(title)
    );
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    if points.is_empty() {
        let _ = write!(svg, r##"<text x="{}" y="{}" font-size="13" fill="#666">no data</text></svg>"##, W / 2.0 - 30.0, H / 2.0);
        return svg;
    }
    let x_max = points.iter().map(|p| p.0).fold(0.0_f64, f64::max).max(1.0);
    let y_top = nice_ceiling(points.iter().map(|p| p.1).fold(0.0_f64, f64::max));
    let sx = |x: f64| L + (W - L - R) * x / x_max;
    let sy = |y: f64| H - B - (H - T - B) * y / y_top;
    for i in 0..=4 {
        let y = y_top * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{L}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#444">{}</text>"##,
            W - R,
            L - 6.0,
            sy(y) + 4.0,
            short(y),
            py = sy(y)
        );
    }
    let x_step = nice_ceiling(x_max / 5.0);
    let mut x = 0.0;
    while x <= x_max * 1.0001 {
        let _ = write!(svg, r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#444">{}</text>"##, sx(x), H - B + 16.0, short(x));
        x += x_step;
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#444">{}</text><text x="14" y="{}" font-size="11" fill="#444" transform="rotate(-90 14 {})" text-anchor="middle">{}</text><line x1="{L}" x2="{L}" y1="{T}" y2="{}" stroke="#888"/><line x1="{L}" x2="{}" y1="{}" y2="{}" stroke="#888"/>"##,
        (L + W - R) / 2.0,
        H - 6.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_unit),
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut legend_x = W - R - 10.0;
    for (name, colour, pts) in series.iter().rev() {
        let path: Vec<String> = pts.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        if path.len() == 1 {
            let (x, y) = pts[0];
            let _ = write!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, sx(x), sy(y));
        } else {
            let _ = write!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#, path.join(" "));
        }
        let width = 14.0 + 7.0 * name.chars().count() as f64;
        legend_x -= width;
        let _ = write!(
            svg,
            r#"<rect x="{legend_x:.1}" y="28" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="37" font-size="11">{}</text>"#,
            legend_x + 13.0,
            esc(name)
        );
        legend_x -= 8.0;
    }
    svg.push_str("</svg>");
    svg
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.round() { format!("{v:.0}") } else if v >= 10.0 { format!("{v:.1}") } else { format!("{v:.2}") }
}

fn percentile_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
        esc(name),
        p.count,
        p.p50,
        p.p95,
        p.p99,
        p.p999,
        p.max,
        p.mean
    );
}

fn row(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value.to_string()));
}

pub fn html(r: &RunResult) -> String {
    let mut h = page_head("plaza-load");
    let verdict = if r.passed { "passed".to_owned() } else { format!("FAILED: {}", r.failure) };
    let _ = write!(h, r#"<p class="{}"><b>{}</b></p>"#, if r.passed { "ok" } else { "bad" }, esc(&verdict));
    let _ = write!(
        h,
        "<p>{} users ({} rooms × {}) at {} Hz for {} s (ramp {} s), subprotocol {}, server {}{}.</p>",
        r.users,
        r.rooms,
        r.users_per_room,
        r.rate_hz,
        r.duration_s,
        r.ramp_s,
        esc(&r.protocol),
        esc(&r.server.url),
        if r.interrupted { " — interrupted" } else { "" }
    );

    let seconds = |f: fn(&SecondPoint) -> f64| r.timeline.iter().map(|p| (f64::from(p.s), f(p))).collect::<Vec<_>>();
    h.push_str("<h2>Pose latency over time</h2>");
    h.push_str(&line_chart("end-to-end pose latency per second", "ms", &[("p50", "#1f77b4", seconds(|p| p.p50_ms)), ("p99", "#d62728", seconds(|p| p.p99_ms))]));
    if let Some(pacing) = &r.pacing {
        h.push_str("<h2>Pacing</h2>");
        h.push_str(&line_chart(
            "paced users' send lead and grid error per second",
            "ms",
            &[("lead p50", "#1f77b4", seconds(|p| p.lead_p50_ms)), ("lead p99", "#9467bd", seconds(|p| p.lead_p99_ms)), ("grid offset p99", "#d62728", seconds(|p| p.grid_offset_p99_ms))],
        ));
        let _ = write!(
            h,
            "<p class=\"note\">Lead: how long before the tick each user sent its pose (its round trip plus a margin for how irregularly deltas come). Grid offset: how far the user's learnt tick grid was from its room's, learnt from all members' deltas; {}% of sends went by a grid more than {} ms late, whose poses land after the tick unless the lead covers it.</p>",
            pacing.grid_late_pct,
            crate::collect::GRID_LATE_US / 1000
        );
    }

    h.push_str("<h2>Percentiles (ms)</h2><table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
    percentile_row(&mut h, "pose latency, end to end", &r.latency_ms);
    percentile_row(&mut h, "pose latency, net of tick wait", &r.latency_net_ms);
    percentile_row(&mut h, "pose latency, to arrival at the load tool's socket", &r.latency_at_socket_ms);
    percentile_row(&mut h, "join (join → joined)", &r.join_ms);
    percentile_row(&mut h, "join from the connect (connect → joined)", &r.connect_join_ms);
    percentile_row(&mut h, "auth (guest login over HTTP)", &r.auth_ms);
    percentile_row(&mut h, "ping round trip", &r.rtt_ms);
    if r.restore_ms.count > 0 {
        percentile_row(&mut h, "reconnect: new socket's connect → state back", &r.restore_ms);
        percentile_row(&mut h, "reconnect: socket lost → state back", &r.outage_ms);
    }
    h.push_str("</table><p class=\"note\">End to end: the receiver's clock when a delta arrives minus the pose's <code>t</code> (the sender's clock when it sent it; same machine); a pose superseded at the server by a newer one is timed by the newer one's arrival. Net: less the wait from sending to the room's next tick, estimated from the room's tick grid (see docs/load.md). To arrival at the socket: end to end, but to the kernel's receive time of the delta instead of when this tool read it; the gap between the two is the load tool being late, not the server.</p>");

    h.push_str("<h2>Delivery</h2><table>");
    row(&mut h, "poses sent", r.poses_sent);
    row(&mut h, "pose rate achieved per user (Hz)", format!("{:.2} of {}", r.pose_rate_hz, r.rate_hz));
    row(&mut h, "expected (pose × receiver)", r.expected);
    row(&mut h, "received", r.received);
    row(&mut h, "superseded (timed by the newer pose's arrival)", r.superseded);
    row(&mut h, "lost", r.lost);
    row(&mut h, "pairs with a loss", r.pairs_with_loss);
    row(&mut h, "misrouted", r.misrouted);
    row(&mut h, "chats sent / acked", format!("{} / {}", r.chat.sent, r.chat.acked));
    row(&mut h, "chat deliveries expected / received / lost", format!("{} / {} / {}", r.chat.expected, r.chat.received, r.chat.lost));
    row(&mut h, "errors", r.errors);
    row(&mut h, "reconnects (seat resumed; state back in over 2 s)", format!("{} ({}; {})", r.reconnects, r.resumed, r.restores_over_2s));
    if let Some(s) = &r.server_seats {
        row(&mut h, "the server's seats: held / resumed / gone / expired", format!("{} / {} / {} / {}", s.held, s.resumed, s.seat_gone, s.expired));
    }
    row(&mut h, "access tokens refreshed", r.token_refreshes);
    row(&mut h, "users joined", format!("{} of {}", r.users_joined, r.users));
    row(&mut h, "down bytes per user per second", format!("{:.0}", r.down_bytes_per_user_s));
    row(&mut h, "up bytes per user per second", format!("{:.0}", r.up_bytes_per_user_s));
    row(&mut h, "own avatar received", r.anomalies.own_avatar);
    row(&mut h, "unknown avatar ids", r.anomalies.unknown_avatar);
    row(&mut h, "stale poses", r.anomalies.stale);
    row(&mut h, format!("stream gaps over {} ms", r.anomalies.gap_ms).as_str(), r.anomalies.gaps);
    row(&mut h, "foreign avatars and chats", r.anomalies.foreign);
    h.push_str("</table><p class=\"note\">Received is less than expected when poses were superseded before a tick (the room sends only the newest); those count as delivered. Lost: a pose no later pose from its sender ever covered at that receiver.</p>");
    if !r.errors_by_kind.is_empty() {
        h.push_str("<h3>Errors by kind</h3><table>");
        for (kind, n) in &r.errors_by_kind {
            row(&mut h, kind, n);
        }
        h.push_str("</table>");
    }

    if let Some(f) = &r.faults {
        h.push_str("<h2>Faults</h2><table>");
        row(&mut h, "fault proxy", &f.describe);
        row(&mut h, "proxy counters", f.proxy);
        row(&mut h, "sockets cut by the proxy (not errors)", f.drops_from_resets);
        if f.proxy.silenced > 0 {
            row(&mut h, "sockets given up after the proxy made them silent (not errors)", f.silent_links);
        }
        h.push_str("</table>");
    }
    if let Some(x) = &r.restarts {
        h.push_str("<h2>Server restarts</h2><table>");
        if let Some(every) = x.every_s {
            row(&mut h, "the embedded server restarted every (s)", every);
        }
        for (i, d) in x.done.iter().enumerate() {
            row(&mut h, &format!("restart {} at {:.1} s: old one gone / new one listening (ms)", i + 1, d.at_s), format!("{:.0} / {:.0}", d.stopped_ms, d.down_ms));
        }
        row(&mut h, "sockets the server closed with 1001 (not errors)", x.drained_sockets);
        row(&mut h, "tries that failed while users came back (not errors)", x.retries);
        row(&mut h, "users still away at the end", x.still_away);
        h.push_str("</table><table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
        percentile_row(&mut h, "1001 close → back in the room (ms)", &x.back_ms);
        h.push_str("</table>");
    }
    if let Some(v) = &r.voice {
        h.push_str("<h2>Voice</h2><table>");
        row(&mut h, "each user talks", if v.talk_pct >= 100.0 { "all the time".to_owned() } else { format!("{:.0}% of the time, in 1–4 s spurts", v.talk_pct) });
        row(&mut h, "peers offered / connected / failed", format!("{} / {} / {}", v.offered, v.connected, v.failed));
        row(&mut h, "ended by the server", v.ended);
        row(&mut h, "frames sent / heard", format!("{} / {}", v.frames_sent, v.frames_heard));
        row(&mut h, "lost inside a speaker's stream", v.lost);
        row(&mut h, "heard from another room", v.misrouted);
        h.push_str("</table><table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th></tr>");
        percentile_row(&mut h, "voice latency", &v.latency_ms);
        h.push_str("</table>");
        let per_second = |f: fn(&crate::voice::VoiceSecond) -> f64| v.timeline.iter().map(|p| (f64::from(p.s), f(p))).collect::<Vec<_>>();
        h.push_str(&line_chart("voice latency per second (speaker's send to listener's receive)", "ms", &[("p50", "#1f77b4", per_second(|p| p.p50_ms)), ("p99", "#d62728", per_second(|p| p.p99_ms))]));
    }
    if let Some(x) = &r.hostile {
        h.push_str(&format!("<h2>Hostile clients ({} a room)</h2>", x.per_room));
        h.push_str("<table><tr><th>kind</th><th>what it does</th><th>clients</th><th>sockets</th><th>closed with</th><th>as expected</th><th>ended, no close frame</th><th>other codes</th><th>left open</th><th>cut by the run's end</th><th>error replies</th><th>end p50 / max (ms)</th><th>server's count</th></tr>");
        for k in &x.kinds {
            let other = if k.closed_otherwise.is_empty() { "none".to_owned() } else { format!("{:?}", k.closed_otherwise) };
            let counted = k.server_closes.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}"));
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0} / {:.0}</td><td>{}</td></tr>",
                k.kind,
                k.behaviour,
                k.clients,
                k.sessions,
                k.expected(),
                k.closed_as_expected,
                k.ended_without_close_frame,
                esc(&other),
                k.left_open,
                k.cut_by_run_end,
                k.error_replies,
                k.ended_after_ms.p50,
                k.ended_after_ms.max,
                counted
            ));
        }
        h.push_str("</table><p class=\"note\">Each hostile client joins a room beside the users, misbehaves until the server ends its socket, and comes back a second later. A client that doesn't read can't see its close frame: the server gives the frame 5 s and then cuts the socket, which the client notices when a ping fails. The server's count is <code>plaza_ws_server_closes_total</code> for that reason over the run, everyone's.</p>");
        let setup: Vec<String> = x.kinds.iter().filter(|k| !k.setup_failures.is_empty()).map(|k| format!("{}: {:?}", k.kind, k.setup_failures)).collect();
        if !setup.is_empty() {
            h.push_str(&format!("<p class=\"note\">Sockets that never got to misbehave: {}</p>", esc(&setup.join("; "))));
        }
    }
    if let Some(s) = &r.soak {
        h.push_str("<h2>Soak</h2><table>");
        row(&mut h, "verdict", if s.passed { "passed".to_owned() } else { format!("FAILED: {}", s.failure) });
        row(&mut h, "RSS early / late window, MB", format!("{:.1} / {:.1}", s.rss_early_mb, s.rss_late_mb));
        row(&mut h, "windows, s", format!("{:.0}–{:.0} and {:.0}–{:.0}", s.early_window_s.0, s.early_window_s.1, s.late_window_s.0, s.late_window_s.1));
        row(&mut h, "RSS drift (limit)", format!("{:.1}% ({}%)", s.rss_drift_pct, s.max_rss_drift_pct));
        row(&mut h, "connections after", s.connections_after.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}")));
        let n = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}"));
        row(&mut h, "tasks before / idle (+ rooms created) / after", format!("{} / {} / {}", n(s.tasks_before), n(s.tasks_idle), n(s.tasks_after)));
        h.push_str("</table>");
    }
    h.push_str("<h2>Server</h2>");
    let res = |f: fn(&ResourcePoint) -> f64| r.resources.iter().map(|p| (p.s, f(p))).collect::<Vec<_>>();
    h.push_str(&line_chart("CPU", "% of one core", &[("server", "#9467bd", res(|p| p.cpu_pct)), ("load tool", "#8c564b", res(|p| p.load_cpu_pct))]));
    h.push_str(&line_chart("resident memory", "MB", &[("rss MB", "#2ca02c", res(|p| p.rss_mb))]));
    h.push_str(&line_chart("messages received by all users", "per second", &[("msgs in/s", "#ff7f0e", res(|p| p.msgs_in_per_s))]));
    h.push_str(&line_chart("users in their room", "users", &[("users", "#17becf", res(|p| p.users_in_room as f64))]));
    h.push_str("<table>");
    row(&mut h, "CPU, mean %", format!("{:.1}", r.server.cpu_pct));
    row(&mut h, "CPU, highest second %", format!("{:.1}", r.server.cpu_pct_max));
    row(&mut h, "RSS, peak MB", format!("{:.1}", r.server.rss_mb));
    if let Some(kb) = r.server.rss_per_user_kb {
        row(&mut h, "RSS per user (peak − before) / users, KB", format!("{kb:.1}"));
    }
    if let (Some(before), Some(after)) = (r.server.before, r.server.after) {
        let tasks = |g: crate::server::ServerGauges| g.tasks.map_or_else(|| "?".to_owned(), |t| format!("{t:.0}"));
        row(&mut h, "before: RSS MB / connections / tasks", format!("{:.1} / {:.0} / {}", before.rss_mb, before.connections, tasks(before)));
        row(&mut h, "after: RSS MB / connections / tasks", format!("{:.1} / {:.0} / {}", after.rss_mb, after.connections, tasks(after)));
        row(&mut h, "back to idle after", r.server.settled_s.map_or_else(|| "never (within the wait)".to_owned(), |s| format!("{s:.1} s")));
    }
    row(&mut h, "source", &r.server.source);
    row(&mut h, "load tool CPU, mean % (of one core)", format!("{:.1} on {} cores", r.load_tool.cpu_pct, r.load_tool.cores));
    row(&mut h, "machine busy, mean % (all processes, all cores)", format!("{:.1}{}", r.load_tool.machine_busy_pct, if r.load_tool.saturated { " — saturated: latency measures the load tool (and anything else running) too" } else { "" }));
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_a_line_per_series_and_escape_text() {
        let svg = line_chart("a <b>", "ms", &[("p50", "#000", vec![(0.0, 1.0), (1.0, 2.0)]), ("p99", "#f00", vec![(0.0, 3.0), (1.0, 4.0)])]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
        assert!(line_chart("empty", "ms", &[("x", "#000", vec![])]).contains("no data"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(42.0), 50.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }
}
