"""`mlpipe compare`: primary vs canary and shadow, from the traffic log `mlpipe serve` writes when
traffic.json is set (serving/traffic.py: one JSON line per answered request and per shadow copy).

- arms: every (role, label, version) seen: requests, error rate, latency p50/p90/p99 (ms), mean
  prediction.
- shadow divergence: each shadow answer is paired with the primary answer of the same request
  (request_id), instance by instance: mean and max absolute difference of the predictions and the
  rate of decisions that flip at 0.5; overall and by slice (the value of --slice FEATURE in the
  request's instance, REST requests only).
- canary divergence: a canary answers different requests, so it is compared by distribution: the
  difference of its mean prediction from the primary label's (the label with the most requests).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path


class CompareError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def read_lines(log_dir: Path, since: float | None = None) -> list[dict]:
    if not log_dir.is_dir():
        raise CompareError(
            f"no traffic log at {log_dir}: put a traffic.json beside the server's models.config "
            "(docs/serving.md, traffic controls) and send requests first"
        )
    rows = []
    for path in sorted(log_dir.glob("traffic-*.jsonl")):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if since is None or row.get("time", 0) >= since:
                    rows.append(row)
    if not rows:
        raise CompareError(f"the traffic log at {log_dir} has no request{' in the window' if since else ''} yet")
    return rows


def _numbers(value) -> list[float]:
    if isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    return []


def instances(outputs) -> list[list[float]]:
    """Per-instance numbers of a logged answer (REST {"predictions": [...]} or gRPC {name: rows})."""
    if not isinstance(outputs, dict):
        return []
    for key in ("predictions", "results"):
        if key in outputs and isinstance(outputs[key], list):
            return [_numbers(v) for v in outputs[key]]
    if "outputs" in outputs:
        outputs = outputs["outputs"] if isinstance(outputs["outputs"], dict) else {"y": outputs["outputs"]}
    columns = [v for _, v in sorted(outputs.items()) if isinstance(v, list)]
    if not columns:
        return []
    n = min(len(c) for c in columns)
    return [[x for c in columns for x in _numbers(c[i])] for i in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return round(ordered[index], 3)


def _arm(rows: list[dict]) -> dict:
    latencies = [r["latency_ms"] for r in rows if r.get("ok")]
    preds = [x for r in rows if r.get("ok") for inst in instances(r.get("outputs")) for x in inst[:1]]
    errors = sum(not r.get("ok") for r in rows)
    return {
        "requests": len(rows),
        "errors": errors,
        "error_rate": round(errors / len(rows), 4) if rows else 0.0,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
        },
        "mean_prediction": round(sum(preds) / len(preds), 6) if preds else None,
    }


def _divergence(pairs: list[tuple[list[float], list[float]]]) -> dict:
    diffs, flips = [], 0
    for a, b in pairs:
        if not a or not b:
            continue
        diffs.append(abs(a[0] - b[0]))
        flips += (a[0] >= 0.5) != (b[0] >= 0.5)
    if not diffs:
        return {"instances": 0, "mean_abs_diff": None, "max_abs_diff": None, "decision_flip_rate": None}
    return {
        "instances": len(diffs),
        "mean_abs_diff": round(sum(diffs) / len(diffs), 6),
        "max_abs_diff": round(max(diffs), 6),
        "decision_flip_rate": round(flips / len(diffs), 4),
    }


def _slice_value(inputs, i: int, feature: str) -> str:
    if isinstance(inputs, list) and i < len(inputs) and isinstance(inputs[i], dict) and feature in inputs[i]:
        value = inputs[i][feature]
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
        return str(value)
    return "(unknown)"


def compare(log_dir: Path, since: float | None = None, slice_feature: str | None = None) -> dict:
    rows = read_lines(log_dir, since)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["role"], r.get("label") or "(latest)", r.get("version"))].append(r)
    arms = [
        {"role": role, "label": label, "version": version, **_arm(items)}
        for (role, label, version), items in sorted(
            groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), str(kv[0][2]))
        )
    ]

    primaries = [r for r in rows if r["role"] == "primary"]
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in primaries:
        if r.get("label"):  # requests for a version or the latest are nobody's canary
            by_label[r["label"]].append(r)
    main = max(by_label, key=lambda k: len(by_label[k])) if by_label else None
    canaries = []
    main_mean = _arm(by_label[main])["mean_prediction"] if main else None
    for label, items in sorted(by_label.items()):
        if label == main:
            continue
        mean = _arm(items)["mean_prediction"]
        canaries.append(
            {
                "label": label,
                "primary_label": main,
                "requests": len(items),
                "mean_prediction": mean,
                "primary_mean_prediction": main_mean,
                "mean_prediction_diff": None if mean is None or main_mean is None else round(mean - main_mean, 6),
            }
        )

    by_id = {r["request_id"]: r for r in primaries}
    shadows = [r for r in rows if r["role"] == "shadow"]
    pairs, sliced = [], defaultdict(list)
    for s in shadows:
        p = by_id.get(s["request_id"])
        if p is None or not s.get("ok") or not p.get("ok"):
            continue
        for i, (a, b) in enumerate(zip(instances(p.get("outputs")), instances(s.get("outputs")))):
            pairs.append((a, b))
            if slice_feature:
                sliced[_slice_value(p.get("inputs"), i, slice_feature)].append((a, b))
    shadow = None
    if shadows:
        shadow = {
            "label": shadows[-1].get("label"),
            "copies": len(shadows),
            "paired_requests": sum(1 for s in shadows if s["request_id"] in by_id),
            "divergence": _divergence(pairs),
            "by_slice": {k: _divergence(v) for k, v in sorted(sliced.items())} if slice_feature else None,
        }
    return {
        "log_dir": str(log_dir),
        "lines": len(rows),
        "slice_feature": slice_feature,
        "arms": arms,
        "canaries": canaries,
        "shadow": shadow,
    }


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def table(report: dict) -> list[str]:
    out = [
        f"mlpipe compare: {report['lines']} logged answers in {report['log_dir']}",
        f"{'role':<8} {'label':<10} {'version':>11} {'requests':>8} {'errors':>7} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'mean pred':>10}",
    ]
    for a in report["arms"]:
        lat = a["latency_ms"]
        out.append(
            f"{a['role']:<8} {a['label']:<10} {_fmt(a['version']):>11} {a['requests']:>8} "
            f"{a['error_rate']:>7.2%} {_fmt(lat['p50']):>8} {_fmt(lat['p90']):>8} {_fmt(lat['p99']):>8} "
            f"{_fmt(a['mean_prediction']):>10}"
        )
    for c in report["canaries"]:
        out.append(
            f"canary {c['label']} vs {c['primary_label']}: mean prediction {_fmt(c['mean_prediction'])} vs "
            f"{_fmt(c['primary_mean_prediction'])} (diff {_fmt(c['mean_prediction_diff'])})"
        )
    s = report["shadow"]
    if s:
        d = s["divergence"]
        out.append(
            f"shadow {s['label']}: {s['copies']} copies, {d['instances']} paired instances: mean |diff| "
            f"{_fmt(d['mean_abs_diff'])}, max {_fmt(d['max_abs_diff'])}, decisions flipped "
            f"{_fmt(d['decision_flip_rate'])}"
        )
        for value, d in (s["by_slice"] or {}).items():
            out.append(
                f"  {report['slice_feature']}={value}: {d['instances']} instances, mean |diff| "
                f"{_fmt(d['mean_abs_diff'])}, flipped {_fmt(d['decision_flip_rate'])}"
            )
    return out


def write_html(report: dict, path: Path) -> None:
    lines = table(report)
    rows = lines[2 : 2 + len(report["arms"])]
    cells = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ("role", "label", "version", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "mean pred")
    )
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row.split()) + "</tr>" for row in rows)
    rest = "".join(f"<p>{html.escape(line)}</p>" for line in lines[2 + len(report["arms"]) :])
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>mlpipe compare</title></head>"
        f"<body style='font-family:sans-serif'><h1>{html.escape(lines[0])}</h1>"
        f"<table border='1' cellpadding='4'><tr>{cells}</tr>{body}</table>{rest}"
        f"<script type='application/json' id='report'>{html.escape(json.dumps(report))}</script></body></html>"
    )
