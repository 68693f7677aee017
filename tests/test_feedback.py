"""Production feedback end to end: a live `mlpipe serve`, requests with and without keys, late labels joined by
`mlpipe monitor --labels`, the live quality series, and the automatic rollback through the audited path.

Two pushed versions come from the shared first run and a second `mlpipe run` with a lower value threshold
that re-runs only Evaluator and Pusher (conftest `second_version`, shared with tests/test_registry.py).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import run_cli
from tests.serving.conftest import live_serve, wait_until
from tests.test_docs import assert_matches, find
from tests.test_monitor import _example, training_rows
from tests.test_registry import copy_workspace, version_dirs

WINDOW = 6  # seconds: monitoring.quality_window of the scenario
PER_WINDOW = 30  # labelled examples per window (monitoring.min_examples 10)


@pytest.fixture(scope="module")
def two_versions(second_version):
    """conftest `second_version`: first_run's workspace with a second pushed version (read-only here)."""
    ws, _ = second_version
    assert len(version_dirs(ws)) == 2
    return ws


def _write_config(path: Path, ws: Path, alerts: Path) -> Path:
    path.write_text(
        f'workspace = "{ws}"\n'
        "[monitoring]\n"
        f'quality_window = "{WINDOW}s"\n'
        "min_examples = 10\n"
        "rollback_after_windows = 2\n"
        "max_rollbacks_per_day = 1\n"
        "min_slice_examples = 1000\n"  # no weakest-slice line in the text output (as in the documented one)
        f"alert_command = \"cat >> '{alerts}'; echo >> '{alerts}'\"\n"
    )
    return path


def _monitor(config: Path, *argv: str) -> tuple[int, dict, str]:
    code, out, err = run_cli("monitor", "--config", str(config), *argv, "--json")
    assert code in (0, 3), out + err
    return code, json.loads(out), err


def _body(rows) -> dict:
    return {"instances": [{"b64": base64.b64encode(_example(r).SerializeToString()).decode()} for r in rows]}


def _next_window() -> None:
    time.sleep(WINDOW - time.time() % WINDOW + 0.05)


def _big_tipper(row) -> bool:
    return row["tips"][0] > 0.2 * row["fare"][0]


def _labels(path: Path, keyed: list[tuple[str, dict]], shifted: bool, extra: list[tuple[str, float]] = ()) -> Path:
    """The label file: the true tips, or (shifted) tips from the opposite relationship: big tippers tip nothing."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["request_key", "tips"])
        for key, row in keyed:
            tips = row["tips"][0]
            if shifted:
                tips = 0.0 if _big_tipper(row) else row["fare"][0] * 0.5 + 1.0
            writer.writerow([key, tips])
        writer.writerows(extra)
    return path


def test_late_labels_drop_the_live_quality_and_the_served_version_is_rolled_back_once(two_versions, tmp_path):
    ws = copy_workspace((two_versions,), tmp_path / "ws")
    v1, v2 = version_dirs(ws)
    alerts = tmp_path / "alerts.jsonl"
    config = _write_config(tmp_path / "mlpipe.toml", ws, alerts)
    rows = [r for r in training_rows(ws, "eval") if r["fare"][0] is not None and r["tips"][0] is not None]
    rows = rows[: 2 * PER_WINDOW]
    assert len(rows) == 2 * PER_WINDOW
    flags = ["--workspace", str(ws), "--request_log_sampling_rate", "1", "--file_system_poll_wait_seconds", "0.5"]
    with live_serve(*flags) as server:
        session = requests.Session()
        predict = server.url("/v1/models/taxi:predict")
        keyed: list[tuple[str, dict]] = []
        # Window 1: one trip per request, each with the client's own key.
        _next_window()
        for i, row in enumerate(rows[:PER_WINDOW]):
            r = session.post(predict, json=_body([row]), headers={"X-Request-Id": f"trip-{i}"}, timeout=60)
            assert r.status_code == 200 and r.headers["X-Request-Id"] == f"trip-{i}", r.text
            assert r.headers["X-Model-Version"] == str(v2) and list(r.json()) == ["predictions"]
            keyed.append((f"trip-{i}", row))
        # Window 2: ten trips per request, no key: the server makes one up and answers it; example i is KEY/i.
        _next_window()
        for start in range(PER_WINDOW, 2 * PER_WINDOW, 10):
            r = session.post(predict, json=_body(rows[start : start + 10]), timeout=60)
            key = r.headers["X-Request-Id"]
            assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{11}-[0-9a-f]{16}", key)
            keyed += [(f"{key}/{j}", row) for j, row in enumerate(rows[start : start + 10])]
        from serving.request_log import read_logs

        wait_until(lambda: len(list(read_logs(str(ws / "request_logs" / "taxi")))) == PER_WINDOW + 3, timeout=30)

        # Control: the true labels (plus one key nobody sent and one duplicate): quality holds, nothing happens.
        extra = [("never-sent", 1.0), (keyed[0][0], keyed[0][1]["tips"][0])]
        healthy = _labels(tmp_path / "healthy.csv", keyed, shifted=False, extra=extra)
        code, report, _ = _monitor(config, "--labels", str(healthy))
        assert code == 0 and report["alerts"] == [] and report["rollback"]["action"] is None, report
        counts = report["labels"]
        assert (counts["rows"], counts["matched"], counts["unmatched"], counts["duplicates"]) == (62, 60, 1, 1)
        assert report["logs"]["examples"] == 2 * PER_WINDOW and report["logs"]["unkeyed_examples"] == 0
        series = report["series"]
        assert [(e["version"], e["examples"], e["passed"]) for e in series] == [(v2, PER_WINDOW, True)] * 2
        assert series[0]["window"]["since"] < series[1]["window"]["since"]
        assert {s["slice"].split("=")[0] for s in series[0]["slices"]} == {"trip_start_hour", "payment_type"}
        assert version_dirs(ws) == [v1, v2] and not alerts.exists()

        # Labels from a shifted relationship (big tippers now tip nothing): a dry run only says what it would do.
        # Both commands as docs/monitoring.md shows them, with their documented output.
        shifted = _labels(tmp_path / "shifted.csv", keyed, shifted=True)
        dry_doc, real_doc = find("mlpipe monitor --config mlpipe.toml --labels shifted.csv")
        code, out, err = run_cli(
            "monitor", "--config", str(config), "--labels", str(shifted), "--dry-run", "--no-notify"
        )
        assert code == 3 and f"dry run: would roll back: version {v2} failed quality" in out, out + err
        assert f"roll back to version {v1}\nALERT: quality:binary_accuracy\n" in out
        assert_matches(dry_doc.output, out)
        assert version_dirs(ws) == [v1, v2] and not alerts.exists()

        # For real: rolled back through `mlpipe rollback`'s audited path, and the alert hook says so.
        code, out, err = run_cli("monitor", "--config", str(config), "--labels", str(shifted))
        assert code == 3 and out.endswith(f"ALERT: quality:binary_accuracy, rollback:{v2}\n"), out + err
        assert_matches(real_doc.output, out)
        hooked = [json.loads(line) for line in alerts.read_text().splitlines() if line.strip()]
        assert len(hooked) == 1, hooked
        assert all(e["passed"] is False and e["value"] < 0.6 for e in hooked[0]["series"])
        done = hooked[0]["rollback"]["done"]
        v3 = done["new_version"]
        assert (done["action"], done["failed_version"], done["to_version"]) == ("rollback", v2, v1)
        assert version_dirs(ws) == [v1, v2, v3]
        moves = json.loads(run_cli("label", "history", "--workspace", str(ws), "--json")[1])["moves"]
        assert (moves[0]["label"], moves[0]["from_version"], moves[0]["to_version"]) == ("(latest)", v2, v3)
        assert moves[0]["reason"].startswith(f"rollback to version {v1}: automatic: version {v2} failed quality")

        # The live server answers from the re-published previous version.
        wait_until(
            lambda: session.post(predict, json=_body(rows[:1]), timeout=60).headers["X-Model-Version"] == str(v3),
            timeout=60,
        )

        # The same labels again: the failing version no longer serves; nothing more happens.
        code, report, _ = _monitor(config, "--labels", str(shifted))
        assert report["rollback"]["action"] is None and [f["version"] for f in report["rollback"]["failing"]] == []
        assert version_dirs(ws) == [v1, v2, v3]

    # The quality series is kept beside the drift scores.
    code, out, err = run_cli("monitor", "--config", str(config), "--history")
    assert code == 0 and out.count(f" {v2} ") >= 2 and "FAIL (< 0.6000)" in out, out + err
    history = json.loads(run_cli("monitor", "--config", str(config), "--history", "--json")[1])
    assert [e["version"] for e in history["quality"]] == [v2, v2]


def test_labels_errors_are_one_line(two_versions, tmp_path):
    ws = copy_workspace((two_versions,), tmp_path / "ws")  # the shared workspace stays as it is
    config = tmp_path / "mlpipe.toml"
    config.write_text(f'workspace = "{ws}"\n')
    bad = tmp_path / "labels.csv"
    bad.write_text("key,tips\nx,1\n")
    code, out, err = run_cli("monitor", "--config", str(config), "--labels", str(bad))
    assert code == 2 and "has no column 'request_key' (monitoring.label_key_column)" in err, out + err
    code, out, err = run_cli("monitor", "--config", str(config), "--labels", str(tmp_path / "nothing"))
    assert code == 2 and "no label CSV at" in err, out + err
    config.write_text(f'workspace = "{ws}"\n[monitoring]\nquality_window = "soon"\n')
    code, out, err = run_cli("monitor", "--config", str(config), "--labels", str(bad))
    assert code == 2 and "config error: monitoring.quality_window: bad duration 'soon'" in err, out + err


def _series(ws: Path, version: int, passed: list[bool]) -> None:
    """Judged windows of `version` in the live quality series (as `monitor --labels` records them)."""
    lines = [
        {
            "window": {"since": f"2026-11-27T0{i}:00:00+00:00", "until": f"2026-11-27T0{i + 1}:00:00+00:00"},
            "version": version,
            "examples": 50,
            "metrics": {},
            "slices": [],
            "metric": "binary_accuracy",
            "lower_bound": 0.6,
            "value": 0.9 if ok else 0.2,
            "judged": True,
            "passed": ok,
        }
        for i, ok in enumerate(passed)
    ]
    (ws / "monitoring").mkdir(exist_ok=True)
    (ws / "monitoring" / "quality.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_rollback_rule_limits_targets_and_canaries(two_versions, tmp_path):
    import dataclasses

    from pipeline import config as config_lib
    from pipeline.monitoring import auto_rollback
    from pipeline.publish import promotion
    from pipeline.publish.versions import read_labels

    ws = copy_workspace((two_versions,), tmp_path / "ws")
    v1, v2 = version_dirs(ws)
    base = config_lib.load(None, {"workspace": str(ws)})

    def with_rule(k: int, per_day: int = 1):
        return dataclasses.replace(
            base,
            monitoring=dataclasses.replace(base.monitoring, rollback_after_windows=k, max_rollbacks_per_day=per_day),
        )

    now = time.time()
    _series(ws, v2, [True, False, False])
    assert auto_rollback.rollback_decision(base, now)["action"] is None  # off by default
    assert auto_rollback.rollback_decision(with_rule(3), now)["action"] is None  # only 2 failing windows in a row
    decision = auto_rollback.rollback_decision(with_rule(2), now)
    assert (decision["action"], decision["to_version"]) == ("rollback", v1)
    capped = auto_rollback.rollback_decision(with_rule(2, per_day=0), now)
    assert capped["action"] is None and "max_rollbacks_per_day 0" in capped["reason"]
    # Never back to a version that failed the same check.
    (ws / "monitoring" / "rollbacks.jsonl").write_text(
        json.dumps({"time": "2000-01-01T00:00:00+00:00", "failed_version": 5, "failed_origin": v1, "check": "quality"})
        + "\n"
    )
    refused = auto_rollback.rollback_decision(with_rule(2), now)
    assert refused["action"] is None and "has not failed quality" in refused["reason"]
    # A canary label on a failing version that is not the highest: the label is dropped, audited.
    (ws / "monitoring" / "rollbacks.jsonl").unlink()
    promotion.move_label(base, "canary", v1, "try it")
    _series(ws, v1, [False, False])
    decision = auto_rollback.rollback_decision(with_rule(2), now)
    assert (decision["action"], decision["label"]) == ("drop_label", "canary")
    done = auto_rollback.apply(with_rule(2), decision, now)
    assert done["failed_version"] == v1 and "canary" not in read_labels(base)
    assert promotion.label_history(base, "canary")[0]["reason"].startswith("automatic: version")
    assert auto_rollback.rollback_decision(with_rule(2), now)["action"] is None  # acted once


def test_prediction_skew_that_persists_is_a_rollback_check_too(two_versions, tmp_path):
    import dataclasses

    from pipeline import config as config_lib
    from pipeline.monitoring import auto_rollback

    ws = copy_workspace((two_versions,), tmp_path / "ws")
    v1, v2 = version_dirs(ws)[:2]
    base = config_lib.load(None, {"workspace": str(ws)})
    rule = dataclasses.replace(base, monitoring=dataclasses.replace(base.monitoring, rollback_after_windows=2))
    # Two monitor runs (monitoring/history.jsonl, as `mlpipe monitor` records them) with skew:prediction of v2.
    runs = [
        {
            "run_at": f"2026-11-27T0{i}:00:00+00:00",
            "window": {"since": f"2026-11-27T0{i}:00:00+00:00", "until": f"2026-11-27T0{i + 1}:00:00+00:00"},
            "version_filter": None,
            "versions": [v2],
            "requests": 500,
            "alerts": ["skew:prediction"],
            "scores": [{"check": "skew", "version": v2, "feature": "prediction", "slice": None, "alert": True}],
            "retrain": None,
        }
        for i in range(2)
    ]
    (ws / "monitoring").mkdir(exist_ok=True)
    (ws / "monitoring" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    decision = auto_rollback.rollback_decision(rule, time.time())
    assert decision["failing"][0]["check"] == "prediction_drift"
    assert (decision["action"], decision["to_version"]) == ("rollback", v1)


def test_example_keys_and_what_a_label_that_does_not_join_counts_as():
    from pipeline.monitoring.labels import Labels, Prediction, example_keys, join

    rows = [{"trip_id": b"t-1"}, {"trip_id": None}, {}]
    assert example_keys("req", rows, "trip_id") == ["t-1", "req/1", "req/2"]
    assert example_keys("req", rows[1:2], "trip_id") == ["req"]
    assert example_keys("", rows[1:], "") == [None, None]

    now = 1_800_000_000.0
    old_generated = f"{int((now - 10 * 86400) * 1000):011x}-0123456789abcdef"
    predictions = {
        "fresh": [Prediction("fresh", now - 60, 2, {}, 0.9)],
        "stale": [Prediction("stale", now - 8 * 86400, 1, {}, 0.1)],
    }
    labels = Labels({"fresh": "1", "stale": "0", old_generated: "1", "typo": "0"}, [], {})
    matched, counts = join(labels, predictions, oldest_kept=now - 7 * 86400, oldest_logged=now - 8 * 86400)
    assert [(p.key, label) for p, label in matched] == [("fresh", "1")]
    assert counts == {"matched": 1, "unmatched": 1, "outside_retention": 2}
