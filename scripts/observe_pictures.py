#!/usr/bin/env python3
"""Draws the README's pictures as HTML pages, for headless Chromium to turn into PNGs
(scripts/observe-pictures.sh runs the whole thing).

  observe_pictures.py trace SPANS.jsonl OUT.html
      the waterfall of the one job trace in SPANS.jsonl (written by `cargo run -p ferry-cli
      --example otlp_dump`): every span of the trace under the job's root, by start time,
      coloured by the service that made it.

  observe_pictures.py dashboard DASHBOARD.json PROMETHEUS_URL START END OUT.html [MAX_Y]
      the panels of a Grafana dashboard (those above MAX_Y in its grid, all by default), each
      query evaluated by Prometheus's range API over START..END (Unix seconds), drawn as
      Grafana lays them out: time series as lines, stats as their last value.

Standard library only.
"""

import html
import json
import sys
import urllib.parse
import urllib.request

SERVICE_COLOURS = [
    ("ferry_planner", "#7eb26d", "planner"),
    ("ferry_scheduler", "#6ed0e0", "scheduler"),
    ("ferry_launcher", "#ef843c", "launcher"),
    ("ferry_log_collector", "#e24d42", "log collector"),
    ("ferry_bus", "#a4a4a4", "bus"),
    ("ferry_api", "#1f78c1", "api"),
]
LINE_COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d"]

PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #111217; color: #ccccdc; font: 12px 'DejaVu Sans', sans-serif; }}
h1 {{ font-size: 15px; font-weight: 500; margin: 10px 14px 6px; color: #e0e0ea; }}
.sub {{ color: #8e8ea0; font-size: 11px; margin: 0 14px 8px; }}
</style></head><body>{body}</body></html>"""


def service_of(span):
    target = span["attributes"].get("target", "")
    for prefix, colour, label in SERVICE_COLOURS:
        if target.startswith(prefix):
            return colour, label
    return "#8e8ea0", target or span["service"]


def trace(spans_path, out_path):
    spans = [json.loads(line) for line in open(spans_path) if line.strip()]
    roots = [s for s in spans if s["name"] == "ferry.job"]
    if len(roots) != 1:
        sys.exit(f"{spans_path}: {len(roots)} job roots, expected one job")
    root = roots[0]
    spans = [s for s in spans if s["trace_id"] == root["trace_id"]]
    children = {}
    for s in spans:
        children.setdefault(s["parent"], []).append(s)
    rows = []

    def walk(span, depth):
        rows.append((span, depth))
        for child in sorted(children.get(span["span_id"], []), key=lambda c: c["start"]):
            walk(child, depth + 1)

    walk(root, 0)
    if len(rows) != len(spans):
        sys.exit(f"{len(spans) - len(rows)} spans of the trace are not under its root")
    t0 = min(s["start"] for s in spans)
    t1 = max(s["end"] for s in spans)
    span_ns = max(t1 - t0, 1)
    label_w, bar_w, row_h = 430, 700, 15
    width, top = label_w + bar_w + 30, 28
    height = top + row_h * len(rows) + 34
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    # Time axis.
    ms = span_ns / 1e6
    step = next(s for s in [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] if ms / s <= 8)
    t = 0
    while t <= ms:
        x = label_w + bar_w * t / ms
        svg.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 30}" stroke="#2c2d33"/>')
        svg.append(f'<text x="{x:.1f}" y="{top - 8}" fill="#8e8ea0" font-size="10" text-anchor="middle">{t} ms</text>')
        t += step
    for i, (s, depth) in enumerate(rows):
        y = top + i * row_h
        colour, service = service_of(s)
        name = s["name"]
        task = s["attributes"].get("ferry.task.id")
        event = s["attributes"].get("ferry.event.type")
        detail = task or ""
        if event and name == "ferry.event":
            detail = (event + (" · " + task if task else ""))
        label = "  " * depth + name + (f"  {detail}" if detail else "")
        svg.append(f'<text x="6" y="{y + 11}" fill="#ccccdc" font-size="11" xml:space="preserve">{html.escape(label[:60])}</text>')
        svg.append(f'<text x="{label_w - 8}" y="{y + 11}" fill="{colour}" font-size="10" text-anchor="end">{html.escape(service)}</text>')
        x = label_w + bar_w * (s["start"] - t0) / span_ns
        w = max(bar_w * (s["end"] - s["start"]) / span_ns, 1.5)
        svg.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" rx="2" fill="{colour}"/>')
    # Legend.
    x = 6
    for _, colour, label in SERVICE_COLOURS[:4]:
        svg.append(f'<rect x="{x}" y="{height - 20}" width="10" height="10" fill="{colour}"/>')
        svg.append(f'<text x="{x + 14}" y="{height - 11}" fill="#ccccdc" font-size="11">{label}</text>')
        x += 110
    svg.append("</svg>")
    job = root["attributes"].get("ferry.job.id", "")
    services = sorted({service_of(s)[1] for s in spans})
    body = (
        f"<h1>ferry run examples/diamond.yaml: one trace, {len(spans)} spans</h1>"
        f'<div class="sub">job {html.escape(job)} · trace {root["trace_id"]} · {ms:.0f} ms · '
        f"spans from {html.escape(', '.join(services))}</div>" + "".join(svg)
    )
    open(out_path, "w").write(PAGE.format(body=body))
    print(f"{out_path}: {len(spans)} spans, {width}x{height + 50}")
    return width, height + 50


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        sys.exit(f"{expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, metric, expr):
    if not fmt:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")
        return labels or expr[:40]
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
    return out


def fmt_value(v, unit):
    if v != v:  # NaN
        return "–"
    if unit == "s":
        if v < 0.01:
            return f"{v * 1000:.1f} ms".replace(".0 ms", " ms")
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "percentunit":
        return f"{v * 100:.0f}%"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def panel_svg(panel, series, start, end, w, h):
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    title = html.escape(panel.get("title", ""))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
           f'<rect x="0.5" y="0.5" width="{w - 1}" height="{h - 1}" rx="3" fill="#181b1f" stroke="#2c2d33"/>',
           f'<text x="10" y="18" fill="#ccccdc" font-size="12" font-weight="500">{title}</text>']
    if panel.get("type") == "stat":
        values = [(name, pts[-1][1]) for name, pts in series if pts]
        big = fmt_value(sum(v for _, v in values), unit) if values else "–"
        out.append(f'<text x="{w / 2}" y="{h / 2 + 16}" fill="#73bf69" font-size="40" text-anchor="middle">{big}</text>')
        out.append("</svg>")
        return "".join(out)
    left, right, top, bottom = 52, 10, 28, 40
    pw, ph = w - left - right, h - top - bottom
    finite = [v for _, pts in series for _, v in pts if v == v and abs(v) != float("inf")]
    vmax = max(finite) if finite else 1.0
    vmax = vmax * 1.1 if vmax > 0 else 1.0
    for i in range(5):
        v = vmax * i / 4
        y = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#2c2d33"/>')
        out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" fill="#8e8ea0" font-size="9" text-anchor="end">{fmt_value(v, unit)}</text>')
    for i in range(5):
        t = start + (end - start) * i / 4
        x = left + pw * i / 4
        seconds = round(t - start)
        out.append(f'<text x="{x:.1f}" y="{top + ph + 12}" fill="#8e8ea0" font-size="9" text-anchor="middle">{seconds // 60}:{seconds % 60:02d}</text>')
    lx = left
    for i, (name, pts) in enumerate(series):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        path = []
        for t, v in pts:
            if v != v or abs(v) == float("inf"):
                continue
            x = left + pw * (t - start) / (end - start)
            y = top + ph - ph * min(v, vmax) / vmax
            path.append(f"{'M' if not path else 'L'}{x:.1f},{y:.1f}")
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if lx < w - 60:
            out.append(f'<rect x="{lx}" y="{h - 14}" width="10" height="3" fill="{colour}"/>')
            out.append(f'<text x="{lx + 13}" y="{h - 9}" fill="#ccccdc" font-size="9">{html.escape(name[:28])}</text>')
            lx += 20 + 5.5 * len(name[:28])
    out.append("</svg>")
    return "".join(out)


def dashboard(dash_path, prom, start, end, out_path, max_y=None):
    start, end = float(start), float(end)
    d = json.load(open(dash_path))
    col_w, row_h = 50, 30  # Grafana's grid: 24 columns, rows of 30 px.
    panels = [p for p in d["panels"] if max_y is None or p["gridPos"]["y"] < int(max_y)]
    width = 24 * col_w + 20
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * row_h + 10
    step = max((end - start) / 120, 1)
    parts = []
    empty = []
    for p in panels:
        g = p["gridPos"]
        series = []
        for target in p.get("targets", []):
            for r in query_range(prom, target["expr"], start, end, step):
                pts = [(float(t), float(v)) for t, v in r["values"]]
                series.append((legend(target.get("legendFormat"), r["metric"], target["expr"]), pts))
        if not series:
            empty.append(p.get("title"))
        x, y = 10 + g["x"] * col_w, 5 + g["y"] * row_h
        w, h = g["w"] * col_w - 6, g["h"] * row_h - 6
        parts.append(f'<div style="position:absolute;left:{x}px;top:{y}px">{panel_svg(p, series, start, end, w, h)}</div>')
    if empty:
        sys.exit(f"panels without data: {empty}")
    minutes = (end - start) / 60
    body = (
        f'<h1>{html.escape(d["title"])}</h1><div class="sub">Prometheus scraping <code>ferry up --metrics</code> '
        f"every second while jobs ran: the last {minutes:.0f} minutes, queries from {html.escape(dash_path)}</div>"
        f'<div style="position:relative;width:{width}px;height:{height}px">{"".join(parts)}</div>'
    )
    open(out_path, "w").write(PAGE.format(body=body))
    print(f"{out_path}: {len(panels)} panels, {width}x{height + 60}")
    return width, height + 60


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "trace":
        trace(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 7 and sys.argv[1] == "dashboard":
        dashboard(*sys.argv[2:8])
    else:
        sys.exit(__doc__)
