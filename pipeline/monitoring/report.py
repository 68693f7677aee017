"""`mlpipe monitor`'s table and its self-contained HTML page (inline SVG, no network)."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.monitoring.check import Report


def _verdict(c: dict) -> str:
    if c["alert"]:
        return "ALERT"
    if c.get("expected") and c["p_value"] < c["p_threshold"]:
        return "expected"
    return "ok"


def table(report: Report, show_all: bool = False) -> list[str]:
    d = report.data
    lines = [
        f"mlpipe monitor: {d['requests']} request(s) of model '{d['model']}' from {d['window']['since']} "
        f"to {d['window']['until']}; previous window {d['previous_window']['requests']} request(s)"
    ]
    for v in d["versions"]:
        spans = ", ".join(str(s) for s in v["training_spans"])
        lines.append(
            f"  version {v['version']}: {v['requests']} request(s), {v['examples']} example(s); "
            f"baseline: {v['baseline_rows']} of {v['training_rows']} training rows of span(s) {spans}, "
            f"{v['baseline_scores']} eval-split scores"
        )
    for u in d["unknown_versions"]:
        lines.append(f"  version {u['version']}: {u['requests']} request(s) NOT CHECKED: {u['reason']}")
    for s in d["skipped_logs"]:
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    rows = [c for c in d["checks"] if show_all or c["alert"] or _verdict(c) == "expected"]
    if rows:
        lines.append(
            f"{'CHECK':<6} {'VERSION':<11} {'FEATURE':<22} {'STATISTIC':<10} {'DISTANCE':>8} {'BAND':>7} "
            f"{'P-VALUE':>8}  {'VERDICT':<8} SLICE"
        )
        for c in rows:
            lines.append(
                f"{c['check']:<6} {c['version'] if c['version'] is not None else 'all':<11} "
                f"{c['feature']:<22} {c['statistic']:<10} {c['distance']:>8.4f} {c['band']:>7.4f} "
                f"{c['p_value']:>8.1e}  {_verdict(c):<8} {c['slice'] or '(all rows)'}"
            )
    if not show_all:
        lines.append(f"{len(d['checks']) - len(rows)} other check(s) within their noise bands (--all lists them)")
    lines += d["notes"]
    for a in d["anomalies"]:
        expected = " (seasonal feature: expected, not alerting)" if a.get("expected") else ""
        lines.append(f"anomaly (version {a['version']}) {a['feature']}: {a['description']}{expected}")
    lines.append(f"ALERT: {', '.join(d['alerts'])}" if d["alert"] else "no alert")
    return lines


# --- HTML --------------------------------------------------------------------------------------


def _bars(title: str, items: list[tuple[str, float]], color: str) -> str:
    """An inline SVG bar chart of (label, fraction) pairs."""
    width, row, label_w = 420, 16, 150
    top = max((f for _, f in items), default=0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 24}">',
        f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (label, fraction) in enumerate(items):
        y = 22 + i * row
        bar = (width - label_w - 50) * fraction / top
        parts.append(
            f'<text x="0" y="{y + 11}" font-size="11">{html.escape(label[:24])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{row - 3}" fill="{color}"/>'
            f'<text x="{label_w + bar + 4:.1f}" y="{y + 11}" font-size="11">{fraction:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _score_bar(distance: float, band: float, alert: bool) -> str:
    """The distance as a bar against its noise band (the grey zone) on a 0..1 scale."""
    width = 200
    scale = width / max(1.0, distance, band)
    color = "#e45756" if alert else "#4c78a8"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="14">'
        f'<rect x="0" y="0" width="{band * scale:.1f}" height="14" fill="#ddd"/>'
        f'<rect x="0" y="4" width="{distance * scale:.1f}" height="6" fill="{color}"/></svg>'
    )


def _column(rows: list[dict], feature: str) -> list:
    return [r.get(feature) for r in rows]


def _distributions(base: list, cur: list) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(value or bucket, fraction) of both sides: top values, or the baseline's deciles as buckets."""

    def text(v):
        return "(missing)" if v is None else (v.decode(errors="replace") if isinstance(v, bytes) else str(v))

    numeric = [v for v in base + cur if v is not None]
    if (
        numeric
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numeric)
        and len(set(numeric)) > 20
    ):
        b = np.array([np.nan if v is None else float(v) for v in base])
        c = np.array([np.nan if v is None else float(v) for v in cur])
        edges = np.unique(np.nanquantile(b, np.linspace(0, 1, 11)))
        out = []
        for values in (b, c):
            present = values[~np.isnan(values)]
            counts = np.histogram(np.clip(present, edges[0], edges[-1]), bins=edges)[0] if len(edges) > 1 else []
            total = len(values) or 1
            items = [(f"{lo:.4g}..{hi:.4g}", n / total) for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
            items.append(("(missing)", float(np.isnan(values).sum()) / total))
            out.append(items)
        return out[0], out[1]
    cb, cc = Counter(text(v) for v in base), Counter(text(v) for v in cur)
    top = [v for v, _ in (cb + cc).most_common(15)]
    return ([(v, cb[v] / (len(base) or 1)) for v in top], [(v, cc[v] / (len(cur) or 1)) for v in top])


def write_html(report: Report, path: Path) -> int:
    """Every feature's score against its noise band, the alerting slices, prediction drift, and each
    alerting feature's two distributions. Returns the number of alerting checks."""
    d = report.data
    parts = []
    for check, version in sorted(report.samples, key=lambda k: (k[0], k[1] or 0)):
        rows = [c for c in d["checks"] if c["check"] == check and c["version"] == version]
        title = f"{check}: {'training window' if check == 'skew' else 'previous window'} vs this window" + (
            f" (version {version})" if version is not None else ""
        )
        body = []
        for c in rows:
            if c["slice"] is not None and not c["alert"]:
                continue
            body.append(
                f"<tr><td>{html.escape(c['feature'])}</td><td>{html.escape(c['slice'] or 'all rows')}</td>"
                f"<td>{c['statistic']}</td><td>{c['distance']:.4f}</td><td>{c['band']:.4f}</td>"
                f"<td>{c['p_value']:.1e}</td><td>{_score_bar(c['distance'], c['band'], c['alert'])}</td>"
                f"<td><b>{_verdict(c)}</b></td></tr>"
            )
        parts.append(
            f"<h2>{html.escape(title)}</h2><table cellpadding='3'><tr><th>feature</th><th>slice</th>"
            f"<th>statistic</th><th>distance</th><th>noise band</th><th>p-value</th><th>score vs band</th>"
            f"<th>verdict</th></tr>{''.join(body)}</table>"
        )
        base_rows, cur_rows = report.samples[(check, version)]
        for c in rows:
            if not c["alert"] or c["slice"] is not None or c["feature"] == "prediction":
                continue
            left, right = _distributions(_column(base_rows, c["feature"]), _column(cur_rows, c["feature"]))
            parts.append(
                f"<h3>{html.escape(c['feature'])}</h3><div style='display:flex;gap:24px'>"
                f"<div>{_bars('baseline', left, '#4c78a8')}</div>"
                f"<div>{_bars('this window', right, '#e45756')}</div></div>"
            )
    alerting_slices = [c for c in d["checks"] if c["alert"] and c["slice"]]
    if alerting_slices:
        items = "".join(
            f"<li>{html.escape(c['check'])} <b>{html.escape(c['feature'])}</b> in "
            f"<b>{html.escape(c['slice'])}</b>: {c['statistic']} {c['distance']:.4f} "
            f"(band {c['band']:.4f}, p {c['p_value']:.1e}, {c['n']} rows)</li>"
            for c in alerting_slices
        )
        parts.append(f"<h2>Slices that alerted</h2><ul>{items}</ul>")
    predictions = [c for c in d["checks"] if c["feature"] == "prediction"]
    if predictions:
        items = "".join(
            f"<li>{c['check']}: {c['statistic']} {c['distance']:.4f} (band {c['band']:.4f}, "
            f"p {c['p_value']:.1e}) <b>{_verdict(c)}</b></li>"
            for c in predictions
        )
        parts.append(f"<h2>Prediction drift</h2><ul>{items}</ul>")
    else:
        parts.append("<h2>Prediction drift</h2><p>not checked (no logged scores)</p>")
    if d["anomalies"]:
        items = "".join(
            f"<li><b>{html.escape(a['feature'])}</b> (version {a['version']}): "
            f"{html.escape(a['description'])}{' (expected)' if a.get('expected') else ''}</li>"
            for a in d["anomalies"]
        )
        parts.append(f"<h2>Schema anomalies of the serving data</h2><ul>{items}</ul>")
    if d["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in d["notes"]) + "</ul>")
    verdict = f"ALERT: {', '.join(d['alerts'])}" if d["alert"] else "no alert"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mlpipe monitor</title></head>"
        f"<body style='font-family:sans-serif'><h1>mlpipe monitor: {html.escape(d['model'])}</h1>"
        f"<p>{d['requests']} request(s), {html.escape(d['window']['since'])} to {html.escape(d['window']['until'])}"
        f"</p><p><b>{html.escape(verdict)}</b></p>{''.join(parts)}</body></html>"
    )
    path.write_text(page)
    return sum(1 for c in d["checks"] if c["alert"])
