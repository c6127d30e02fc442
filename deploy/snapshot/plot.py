#!/usr/bin/env python3
"""Plots a Grafana dashboard's panels from a Prometheus as an SVG grid.

Reads the panels (title, targets' expr and legendFormat, unit, threshold)
from a dashboard JSON in deploy/grafana/dashboards/, asks Prometheus's HTTP
API (query_range) for each expression over [start, end], and draws one line
chart per panel in the dashboard's order, three to a row. Standard library
only, so it runs wherever python3 does.

  plot.py --prometheus http://127.0.0.1:9491 --dashboard server-overview.json \
          --start 1700000000 --end 1700000090 --out overview.svg

Template variables: $__rate_interval and $__interval become --rate-interval,
every other $var becomes ".*" (all values). The data behind the picture is
written beside it (--data), so the numbers can be checked.
"""

import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from html import escape

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
CELL_W, CELL_H = 470, 300
PLOT_L, PLOT_R, PLOT_T, PLOT_B = 62, 14, 34, 92  # margins inside a cell
COLUMNS = 3
FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"


def query_range(base, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def fill(expr, rate_interval):
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def legend(fmt, labels):
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def nice_step(span, ticks=4):
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_value(v, unit):
    """A short label for an axis tick in the panel's unit."""
    def trim(x):
        s = f"{x:.2f}".rstrip("0").rstrip(".")
        return s if s != "-0" else "0"
    if unit == "s":
        if v == 0:
            return "0"
        if abs(v) < 1e-3:
            return trim(v * 1e6) + " µs"
        if abs(v) < 1:
            return trim(v * 1e3) + " ms"
        return trim(v) + " s"
    if unit == "percentunit":
        return trim(v * 100) + "%"
    if unit in ("bytes", "Bps", "bps"):
        base, names = (1024, ["B", "KiB", "MiB", "GiB"]) if unit == "bytes" else (1000, ["", "k", "M", "G"])
        suffix = {"bytes": "", "Bps": "B/s", "bps": "b/s"}[unit]
        i = 0
        while abs(v) >= base and i < len(names) - 1:
            v /= base
            i += 1
        return trim(v) + " " + (names[i] if unit == "bytes" else names[i] + suffix)
    for div, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return trim(v / div) + s
    return trim(v)


def threshold_of(panel):
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    mode = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("thresholdsStyle", {}).get("mode")
    values = [s["value"] for s in steps if s.get("value") is not None]
    return values[0] if values and mode and mode != "off" else None


def chart(x0, y0, panel, series, start, end, unit):
    """SVG for one panel: frame, title, axes, lines, threshold, legend."""
    out = []
    w, h = CELL_W, CELL_H
    pw, ph = w - PLOT_L - PLOT_R, h - PLOT_T - PLOT_B
    px, py = x0 + PLOT_L, y0 + PLOT_T
    out.append(f'<rect x="{x0 + 4}" y="{y0 + 4}" width="{w - 8}" height="{h - 8}" rx="4" fill="#ffffff" stroke="#d0d4da"/>')
    out.append(f'<text x="{x0 + 14}" y="{y0 + 22}" font-size="14" font-weight="bold" fill="#222">{escape(panel["title"])}</text>')

    values = [v for s in series for _, v in s["points"] if math.isfinite(v)]
    threshold = threshold_of(panel)
    vmax = max(values) if values else 1.0
    vmin = min(0.0, min(values)) if values else 0.0
    show_threshold = threshold is not None and values and threshold <= 1.6 * vmax
    if show_threshold:
        vmax = max(vmax, threshold)
    if vmax <= vmin:
        vmax = vmin + 1.0
    # Bytes step in powers of 1024 (1, 2, 4 … MiB), everything else in 1-2-5.
    scale = 1.0
    if unit == "bytes":
        while (vmax - vmin) / scale >= 1024:
            scale *= 1024
    step = nice_step((vmax - vmin) / scale) * scale
    top = math.ceil(vmax / step) * step
    bottom = math.floor(vmin / step) * step

    def sx(t):
        return px + (t - start) / max(end - start, 1e-9) * pw

    def sy(v):
        return py + ph - (v - bottom) / (top - bottom) * ph

    # grid and y ticks
    t = bottom
    while t <= top + step / 2:
        y = sy(t)
        out.append(f'<line x1="{px}" y1="{y:.1f}" x2="{px + pw}" y2="{y:.1f}" stroke="#eceef1"/>')
        out.append(f'<text x="{px - 6}" y="{y + 4:.1f}" font-size="10.5" text-anchor="end" fill="#555">{escape(fmt_value(t, unit))}</text>')
        t += step
    # x ticks: seconds since the start
    span = end - start
    xstep = nice_step(span, 6)
    t = 0.0
    while t <= span + 1e-9:
        x = sx(start + t)
        out.append(f'<line x1="{x:.1f}" y1="{py + ph}" x2="{x:.1f}" y2="{py + ph + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{py + ph + 16}" font-size="10.5" text-anchor="middle" fill="#555">{int(t)}s</text>')
        t += xstep
    out.append(f'<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#b8bec6"/>')

    if show_threshold:
        y = sy(threshold)
        out.append(f'<line x1="{px}" y1="{y:.1f}" x2="{px + pw}" y2="{y:.1f}" stroke="#d62728" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{px + pw - 4}" y="{y - 4:.1f}" font-size="10" text-anchor="end" fill="#d62728">{escape(fmt_value(threshold, unit))}</text>')
    elif threshold is not None:
        out.append(f'<text x="{px + pw - 4}" y="{py + 12}" font-size="10" text-anchor="end" fill="#d62728">threshold {escape(fmt_value(threshold, unit))} (off scale)</text>')

    if not values:
        out.append(f'<text x="{px + pw / 2}" y="{py + ph / 2}" font-size="13" text-anchor="middle" fill="#999">no data: no series in /metrics yet</text>')

    # lines, biggest series first in the legend
    ordered = sorted(series, key=lambda s: -max([v for _, v in s["points"] if math.isfinite(v)] or [-1]))
    for i, s in enumerate(ordered):
        color = PALETTE[i % len(PALETTE)]
        path, pen = [], False
        for ts, v in s["points"]:
            if not math.isfinite(v):
                pen = False
                continue
            path.append(f'{"L" if pen else "M"}{sx(ts):.1f},{sy(v):.1f}')
            pen = True
        # Bigger series are drawn first and wider, so one that runs on top of
        # another (pose in and delta out can be equal) still shows.
        width = max(3.2 - 0.8 * i, 1.4)
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"/>')
        s["color"] = color

    # legend: a flow of entries under the x axis, at most three lines; the
    # series that stayed at zero the whole time are named together after.
    def peak(s):
        return max([abs(v) for _, v in s["points"] if math.isfinite(v)] or [0.0])
    moving = [s for s in ordered if peak(s) > 0]
    flat = [s["legend"] or s["expr_ref"] for s in ordered if peak(s) == 0 and any(math.isfinite(v) for _, v in s["points"])]
    lx, ly = x0 + 14, py + ph + 34
    bottom_line = y0 + h - 14
    shown = 0
    for s in moving:
        label = s["legend"] or s["expr_ref"]
        width = 16 + 6.2 * len(label) + 12
        if lx + width > x0 + w - 10:
            lx, ly = x0 + 14, ly + 15
        if ly > bottom_line:
            break
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{s["color"]}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly - 3}" font-size="10.5" fill="#333">{escape(label)}</text>')
        lx += width
        shown += 1
    notes = []
    if shown < len(moving):
        notes.append(f"+{len(moving) - shown} more")
    if flat:
        names = ", ".join(flat)
        notes.append(f"at 0 throughout: {names}" if len(names) < 60 else f"{len(flat)} series at 0 throughout")
    if notes:
        ly = ly + 15 if lx > x0 + 14 else ly
        out.append(f'<text x="{x0 + 14}" y="{min(ly, bottom_line) - 3}" font-size="10" fill="#777">{escape("; ".join(notes))}</text>')
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", help="base URL, e.g. http://127.0.0.1:9491")
    ap.add_argument("--replay", help="draw from a --data file written before instead of asking Prometheus")
    ap.add_argument("--dashboard", required=True, help="a Grafana dashboard JSON")
    ap.add_argument("--start", type=float, help="unix seconds")
    ap.add_argument("--end", type=float, help="unix seconds")
    ap.add_argument("--step", type=float, default=1.0, help="seconds between points")
    ap.add_argument("--rate-interval", default="10s", help="what $__rate_interval becomes")
    ap.add_argument("--subtitle", action="append", default=[], help="a line under the title (repeatable)")
    ap.add_argument("--load-result", help="a plaza-load result.json: its summary becomes a subtitle line")
    ap.add_argument("--out", required=True, help="the SVG to write")
    ap.add_argument("--data", help="also write the query results here (JSON)")
    args = ap.parse_args()

    if args.load_result:
        with open(args.load_result) as f:
            r = json.load(f)
        lat, srv = r["latency_ms"], r["server"]
        args.subtitle.append(
            f'load result: {r["users"]} users, pose latency p50 {lat["p50"]:.1f} ms, p99 {lat["p99"]:.1f} ms; '
            f'join p99 {r["join_ms"]["p99"]:.1f} ms; lost {r["lost"]}, misrouted {r["misrouted"]}, errors {r["errors"]}; '
            f'server CPU {srv["cpu_pct"]:.0f}% of a core, RSS {srv["rss_mb"]:.0f} MB')
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    panels = [p for p in dashboard["panels"] if p.get("type") != "row" and p.get("targets")]
    panels.sort(key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))

    replay = None
    if args.replay:
        with open(args.replay) as f:
            replay = json.load(f)
        args.start, args.end = replay["start"], replay["end"]
        replay = {p["title"]: p for p in replay["panels"]}
    elif not (args.prometheus and args.start and args.end):
        ap.error("--prometheus, --start and --end are needed (or --replay)")

    data, empty = [], []
    for panel in panels:
        series = []
        if replay is not None:
            for s in replay[panel["title"]]["series"]:
                series.append({"legend": s["legend"], "expr_ref": "", "points": [(t, v) for t, v in s["points"]]})
        for target in panel["targets"] if replay is None else []:
            expr = fill(target["expr"], args.rate_interval)
            for r in query_range(args.prometheus, expr, args.start, args.end, args.step):
                points = [(float(t), float(v)) for t, v in r["values"]]
                series.append({"legend": legend(target.get("legendFormat", ""), r["metric"]),
                               "expr_ref": target["refId"], "points": points})
        if not any(math.isfinite(v) for s in series for _, v in s["points"]):
            empty.append(panel["title"])
        data.append({"title": panel["title"], "exprs": [fill(t["expr"], args.rate_interval) for t in panel["targets"]],
                     "series": [{"legend": s["legend"], "points": s["points"]} for s in series]})
        panel["_series"] = series

    rows = math.ceil(len(panels) / COLUMNS)
    head = 40 + 18 * max(len(args.subtitle), 1)
    width, height = COLUMNS * CELL_W + 20, head + rows * CELL_H + 14
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{FONT}">',
           f'<rect width="{width}" height="{height}" fill="#f4f5f7"/>',
           f'<text x="14" y="26" font-size="19" font-weight="bold" fill="#111">{escape(dashboard["title"])}</text>',
           ]
    for i, line in enumerate(args.subtitle):
        svg.append(f'<text x="14" y="{46 + 18 * i}" font-size="12.5" fill="#444">{escape(line)}</text>')
    for i, panel in enumerate(panels):
        x0 = 10 + (i % COLUMNS) * CELL_W
        y0 = head + (i // COLUMNS) * CELL_H
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        svg.extend(chart(x0, y0, panel, panel["_series"], args.start, args.end, unit))
    svg.append("</svg>")
    with open(args.out, "w") as f:
        f.write("\n".join(svg) + "\n")
    if args.data:
        with open(args.data, "w") as f:
            json.dump({"dashboard": dashboard["title"], "start": args.start, "end": args.end, "panels": data}, f)
    print(f"plot.py: {len(panels)} panels -> {args.out}")
    if empty:
        print(f"plot.py: warning: no data for: {', '.join(empty)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
