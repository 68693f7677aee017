"""The release report as one self-contained HTML page: inline CSS, inline SVG, no network.

Sections (each a <section id=...>, which tests/test_release.py checks in a headless browser):
summary, gates, push, data, metrics, lineage. A small inline script counts the gates that did not
pass into the heading and marks the page rendered (<html data-rendered="yes">).
"""

from __future__ import annotations

import html
import json

from pipeline.metadata import verdicts
from pipeline.monitoring.report import _bars  # the monitor page's inline SVG bar chart

SECTIONS = ("summary", "gates", "push", "data", "metrics", "lineage")
PASSING = verdicts.LETS_THROUGH

STYLE = """
body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f3f3f3}.pass{color:#2a7a2a;font-weight:bold}.fail{color:#c0392b;font-weight:bold}
section{margin-bottom:28px}code{background:#f6f6f6;padding:1px 3px}.muted{color:#777}
"""

SCRIPT = """
(function () {
  var failing = document.querySelectorAll('#gates tr[data-verdict]:not([data-passing="yes"])').length;
  var total = document.querySelectorAll('#gates tr[data-verdict]').length;
  document.getElementById('gate-count').textContent =
    total + ' gate(s), ' + failing + ' not passed';
  document.documentElement.setAttribute('data-rendered', 'yes');
})();
"""


def fmt_metric(value) -> str:
    """A metric value: counts as integers, the rest with 4 decimals."""
    if value is None:
        return "-"
    return str(int(value)) if value == value and abs(value) >= 2 and float(value).is_integer() else f"{value:.4f}"


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


def _num(value) -> str:
    return fmt_metric(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _gates(report: dict) -> str:
    rows = []
    for g in report["gates"]:
        ok = g["verdict"] in PASSING
        details = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in g["details"].items())
        rows.append(
            f"<tr data-verdict='{_e(g['verdict'])}' data-passing='{'yes' if ok else 'no'}'><td>{_e(g['gate'])}</td>"
            f"<td class='{'pass' if ok else 'fail'}'>{_e(g['verdict'])}</td><td>{details}</td>"
            f"<td class='muted'>{_e(g['where'])}</td></tr>"
        )
    table = "<table><tr><th>gate</th><th>verdict</th><th>why</th><th>recorded as</th></tr>" + "".join(rows) + "</table>"
    return f"<h2>Gates: the verdict of each</h2><p id='gate-count'></p>{table}"


def _data(report: dict) -> str:
    d = report["data"]
    counts = ", ".join(f"{k}: {v} rows" for k, v in d["row_counts"].items()) or "unknown"
    parts = [
        "<h2>Data</h2>",
        f"<p>Examples {_e(d['examples_uri'])} (span {_e(d['span'])}; training spans "
        f"{_e(', '.join(map(str, d['training_spans'])) or '-')}): {_e(counts)}</p>",
    ]
    rows = [
        [
            _e(f["feature"]),
            _e(f["type"]),
            f"{f['missing']:.1%}",
            _num(f["mean"]),
            _num(f["std"]),
            _num(f["min"]),
            _num(f["max"]),
            _e(f["unique"]),
        ]
        for f in d["features"]
    ]
    parts.append("<h3>Statistics (train split)</h3>")
    parts.append(_table(["feature", "type", "missing", "mean", "std", "min", "max", "unique"], rows))
    found = [(split, line) for split, lines in d["anomalies"].items() for line in lines]
    parts.append("<h3>Anomalies (ExampleValidator)</h3>")
    parts.append(
        "<ul>" + "".join(f"<li>[{_e(s)}] {_e(line)}</li>" for s, line in found) + "</ul>" if found else "<p>none</p>"
    )
    return "".join(parts)


def _metrics(report: dict) -> str:
    ev = report["evaluation"]
    base = ev["baseline"]
    parts = [
        "<h2>Metrics by slice against the baseline</h2>",
        f"<p>Baseline: {_e('version ' + str(base['version']) if base and base['version'] else 'none')}. "
        f"Evaluation {_e(ev['uri'])}</p>",
        "<h3>Thresholds</h3>",
    ]
    rows = []
    for c in ev["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "not applied"}[c["passed"]]
        cls = {True: "pass", False: "fail", None: "muted"}[c["passed"]]
        rows.append(
            [_e(c["metric"]), _e(c["kind"]), _num(c["value"]), _num(c["baseline_value"]), _num(c["bound"]),
             f"<span class='{cls}'>{verdict}</span>"]
        )  # fmt: skip
    parts.append(_table(["metric", "kind", "candidate", "baseline", "bound", "verdict"], rows))
    names = sorted({m for s in ev["slices"] for m in s["metrics"]})
    rows = []
    for s in ev["slices"]:
        cells = [_e(s["slice"])]
        for n in names:
            v = s["metrics"].get(n, {})
            cand, b = v.get("candidate"), v.get("baseline")
            cells.append(_num(cand) + ("" if b is None else f" <span class='muted'>(baseline {_num(b)})</span>"))
        rows.append(cells)
    parts.append("<h3>All slices</h3>" + _table(["slice", *names], rows))
    checked = [c["metric"] for c in ev["checks"]]
    for metric in dict.fromkeys(checked):
        items = [
            (s["slice"], s["metrics"][metric]["candidate"])
            for s in ev["slices"]
            if s["metrics"].get(metric, {}).get("candidate") is not None
        ]
        if items:
            parts.append(f"<div>{_bars(f'{metric} by slice (candidate)', items[:30], '#4c78a8')}</div>")
    return "".join(parts)


def _push(report: dict, model_card_name: str | None) -> str:
    p = report["push"]
    release = p["release"] or {}
    parts = ["<h2>What was pushed and why</h2>", f"<p>{_e(p['why'])}</p>"]
    if p["version"] is None:
        parts.append("<p>No version was pushed by this run.</p>")
    else:
        parts.append(
            f"<p>Version <b>{p['version']}</b>; release.mode = {_e(p['release_mode'])}; status "
            f"<b>{_e(release.get('status'))}</b>"
            + (f"; held in {_e(release['held_path'])}" if release.get("held_path") else "")
            + "</p>"
        )
        rows = [
            [_e(d["time"]), _e(d["user"]), _e(d["decision"]), _e(d["reason"])] for d in release.get("decisions", [])
        ]
        if rows:
            parts.append(_table(["time", "user", "decision", "reason"], rows))
        if model_card_name:
            parts.append(f"<p>Model card: <a href='{_e(model_card_name)}'>{_e(model_card_name)}</a></p>")
    return "".join(parts)


def _lineage(report: dict) -> str:
    rows = [[_e(c["node"]), _e(c["state"]), f"{c['seconds']:.1f}", _e(c["id"])] for c in report["components"] if c]
    parts = [
        "<h2>Lineage</h2><h3>This run's components</h3>",
        _table(["component", "state", "seconds", "execution"], rows),
    ]
    chain = report["lineage"]
    if chain:
        m, t = chain["model"], chain["transform"]
        items = [
            f"pushed {chain['pushed']['path']}",
            f"Model {m['uri']} from Trainer run {(m['trainer'] or {}).get('run_id')}",
            f"hyperparameters {json.dumps(m['hyperparameters'], sort_keys=True)}",
            f"Transform graph {t['graph_uri']}",
            *[f"Examples {ex['uri']} (span {ex['span']}) from {ex['input_base']}" for ex in chain["examples"]],
            f"Schema {chain['schema']['uri']}",
        ]
        parts.append(
            "<h3>Provenance of the pushed version</h3><ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"
        )
    return "".join(parts)


def render(report: dict, model_card_name: str | None = None) -> str:
    passing = all(g["verdict"] in PASSING for g in report["gates"])
    body = {
        "summary": f"<h2>Summary</h2><p>Run <code>{_e(report['run_id'])}</code> of pipeline "
        f"{_e(report['pipeline'])}: <b>{_e(report['outcome'])}</b></p>"
        f"<p class='{'pass' if passing else 'fail'}'>{'every gate passed' if passing else 'a gate did not pass'}</p>"
        + (
            f"<p>Release: version {report['push']['version']} is <b>{_e(report['push']['release']['status'])}</b> "
            f"(release.mode = {_e(report['push']['release_mode'])})</p>"
            if report["push"]["version"] is not None
            else ""
        ),
        "gates": _gates(report),
        "data": _data(report),
        "metrics": _metrics(report),
        "push": _push(report, model_card_name),
        "lineage": _lineage(report),
    }
    sections = "".join(f"<section id='{name}'>{body[name]}</section>" for name in SECTIONS)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>mlpipe release report: {_e(report['model'])} run {_e(report['run_id'])}</title>"
        f"<style>{STYLE}</style></head><body><h1>Release report: {_e(report['model'])}</h1>{sections}"
        f"<script>{SCRIPT}</script></body></html>"
    )
