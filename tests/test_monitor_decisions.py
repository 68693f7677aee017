"""`mlpipe monitor`'s decisions on realistic traffic (issue 13), through `pipeline.cli.main`.

The version is `first_run`'s. "Normal" traffic is drawn from its eval split (rows of the same
population it was never trained on; the rest of the taxi sample is not: the CSV is partly ordered by
pickup area); the logged responses carry the served model's real scores (the SavedModel is run
here), written with serving/request_log.py's writer.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.test_monitor import HOUR, _monitor, _window, shifted, training_rows


def held_out_rows(pool: list[dict], count: int, seed: int, months: tuple[int, ...] = ()) -> list[dict]:
    """`count` rows of the eval split (of `months` only, if given), as {feature: (value, kind)}."""
    if months:
        pool = [r for r in pool if r["trip_start_month"][0] in months]
    return [dict(r) for r in random.Random(seed).sample(pool, min(count, len(pool)))]


class Scorer:
    """The served version's real scores (its serving_default signature) of decoded rows."""

    def __init__(self, model_dir: Path):
        import tensorflow as tf

        self.signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def __call__(self, rows: list[dict]) -> list[float]:
        import tensorflow as tf

        from tests.test_monitor import _example

        serialized = [_example(r).SerializeToString() for r in rows]
        return [float(v) for v in self.signature(inputs=tf.constant(serialized))["scores"].numpy()[:, -1]]


def write_scored(
    log_dir: Path, rows: list[dict], scorer: Scorer, version: int, start: float, seconds: float, seed: int = 0
) -> int:
    """One classify request per row, with the model's score in the logged response, at times in the window."""
    from tensorflow_serving.apis import classification_pb2, model_pb2

    from serving.request_log import RequestLogger, make_log
    from tests.test_monitor import _example

    rng = random.Random(seed)
    logger = RequestLogger(str(log_dir), sampling_rate=1.0)
    for row, score in zip(rows, scorer(rows)):
        spec = model_pb2.ModelSpec(name="taxi", signature_name="serving_default")
        spec.version.value = version
        request = classification_pb2.ClassificationRequest()
        request.input.example_list.examples.append(_example(row))
        response = classification_pb2.ClassificationResponse()
        response.result.classifications.add().classes.add().score = score
        record = make_log("classify_log", spec, request, response, 1.0)
        record.log_metadata.timestamp_secs = int(start + rng.random() * seconds)
        logger.write(record)
    logger.close()
    return len(rows)


@pytest.fixture(scope="module")
def scored(first_run, tmp_path_factory):
    """(workspace copy, version, scorer, now, eval-split rows)."""
    workspace, code, out, err = first_run
    assert code == 0, err
    copy = tmp_path_factory.mktemp("monitor-decisions-ws")
    shutil.copy2(workspace / "metadata.sqlite", copy / "metadata.sqlite")
    shutil.copytree(workspace / "serving_model", copy / "serving_model")
    versions = sorted(int(p.name) for p in (copy / "serving_model" / "taxi").iterdir() if p.name.isdigit())
    scorer = Scorer(copy / "serving_model" / "taxi" / str(versions[-1]))
    return copy, versions[-1], scorer, time.time(), training_rows(workspace, "eval")


def _set(rows: list[dict], name: str, value, kind: str) -> list[dict]:
    return [dict(r, **{name: (value, kind)}) for r in rows]


def _night(row: dict) -> bool:
    hour = row["trip_start_hour"][0]
    return hour >= 20 or hour <= 4


def test_normal_traffic_of_another_season_does_not_alert(scored, tmp_path):
    """Held-out traffic of one quarter (October-December trips; the version was trained on all months):
    the month shift is reported as expected, nothing pages."""
    workspace, version, scorer, now, pool = scored
    log_dir = workspace / "request_logs" / "taxi"
    quarter = held_out_rows(pool, 500, seed=1, months=(10, 11, 12))
    # One trip paid with a payment type the training data never had (as the one "Dispute" trip).
    quarter[0] = dict(quarter[0], payment_type=(b"Prcard", "bytes_list"))
    write_scored(log_dir, quarter, scorer, version, now - 10 * HOUR, HOUR, seed=1)
    code, out, err = _monitor(workspace, *_window(now, 10), "--json")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["alert"] is False and report["alerts"] == []
    # The rare value is neither a schema anomaly (the schema tolerates < min_distance of new values) nor a
    # page (its share is below the distance floor).
    assert report["anomalies"] == []
    payment = next(c for c in report["checks"] if c["feature"] == "payment_type" and c["slice"] is None)
    assert payment["alert"] is False
    month = next(c for c in report["checks"] if c["feature"] == "trip_start_month" and c["slice"] is None)
    # A huge, certain shift, but declared seasonal (models/features.py SEASONAL_FEATURES).
    assert month["expected"] is True and month["distance"] > 0.15 and month["p_value"] < month["p_threshold"]
    assert month["alert"] is False
    assert report["method"]["seasonal_features"] == ["trip_start_day", "trip_start_hour", "trip_start_month"]
    # The predictions were compared with the training window's eval-split scores, and did not move.
    prediction = next(c for c in report["checks"] if c["feature"] == "prediction")
    assert prediction["check"] == "skew" and prediction["n"] == len(quarter) > 100 and prediction["alert"] is False
    assert report["versions"][0]["baseline_scores"] > 500
    # The table says it is expected.
    code, out, _ = _monitor(workspace, *_window(now, 10))
    assert code == 0 and out.strip().endswith("no alert")
    assert any("trip_start_month" in line and "expected" in line for line in out.splitlines())
    # Without the declaration, the same window pages on the month alone.
    config = tmp_path / "mlpipe.toml"
    config.write_text('[monitoring]\nseasonal_features = ["trip_start_day"]\n')
    code, out, err = _monitor(workspace, "--config", str(config), *_window(now, 10), "--json")
    assert code == 3, err
    assert "skew:trip_start_month" in json.loads(out)["alerts"]


def test_shift_confined_to_a_slice_is_found_and_the_slice_named(scored):
    """fare x3 for cash trips at night (about a quarter of the rows): the alert names fare and the slice."""
    workspace, version, scorer, now, pool = scored
    log_dir = workspace / "request_logs" / "taxi"
    rows = held_out_rows(pool, 500, seed=2)
    moved = [
        dict(r, fare=(r["fare"][0] * 3, "float_list"))
        if r["payment_type"][0] == b"Cash" and _night(r) and r["fare"][0] is not None
        else r
        for r in rows
    ]
    share = sum(a is not b for a, b in zip(moved, rows)) / len(rows)
    assert 0.05 < share <= 0.3
    write_scored(log_dir, moved, scorer, version, now - 20 * HOUR, HOUR, seed=2)
    code, out, err = _monitor(workspace, *_window(now, 20), "--json")
    assert code == 3, err
    report = json.loads(out)
    inputs = [a for a in report["alerts"] if not a.endswith(":prediction")]
    assert inputs == ["skew:fare"]
    slices = [c for c in report["checks"] if c["alert"] and c["slice"]]
    assert slices and {c["feature"] for c in slices} == {"fare"}
    strongest = min(slices, key=lambda c: c["p_value"])
    assert "payment_type=Cash" in strongest["slice"], strongest
    # Within the slice the shift is far beyond the noise band of its (smaller) sample.
    assert strongest["distance"] > strongest["band"] and strongest["p_value"] < strongest["p_threshold"]
    assert strongest["n"] < 500
    # The table names the slice.
    code, out, _ = _monitor(workspace, *_window(now, 20))
    assert any(" ALERT " in line and "fare" in line and "payment_type=Cash" in line for line in out.splitlines())


def test_prediction_drift_alerts_on_its_own_check(scored):
    """Cash payers switching to cards moves the model's scores (tips are recorded for cards)."""
    workspace, version, scorer, now, pool = scored
    log_dir = workspace / "request_logs" / "taxi"
    rows = _set(held_out_rows(pool, 500, seed=3), "payment_type", b"Credit Card", "bytes_list")
    write_scored(log_dir, rows, scorer, version, now - 30 * HOUR, HOUR, seed=3)
    code, out, err = _monitor(workspace, *_window(now, 30), "--json")
    assert code == 3, err
    report = json.loads(out)
    prediction = next(c for c in report["checks"] if c["feature"] == "prediction")
    assert prediction["alert"] is True and prediction["statistic"] == "KS"
    assert {"skew:payment_type", "skew:prediction"} <= set(report["alerts"])


def test_history_records_every_run_and_gates_retrain(scored, tmp_path):
    """--retrain fires only when the same alert persists for K windows, at most max_retrains_per_day."""
    workspace, version, scorer, now, pool = scored
    log_dir = workspace / "request_logs" / "taxi"
    config = tmp_path / "mlpipe.toml"
    config.write_text("[monitoring]\nretrain_after_windows = 2\nmax_retrains_per_day = 1\n")
    # One-hour windows two hours apart (so no window's drift baseline holds another's traffic).
    windows = [(49, "shift"), (47, "normal"), (45, "shift"), (43, "shift"), (41, "shift")]
    for i, (hours_ago, kind) in enumerate(windows):
        rows = held_out_rows(pool, 300, seed=10 + i)
        if kind == "shift":
            rows = shifted(rows, fraction_new_payment=0.0)
        write_scored(log_dir, rows, scorer, version, now - hours_ago * HOUR, HOUR, seed=10 + i)
    results, untils = [], []
    for hours_ago, _ in windows:
        code, out, err = _monitor(
            workspace, "--config", str(config), *_window(now, hours_ago), "--json", "--retrain", "--no-notify"
        )
        report = json.loads(out)
        untils.append(report["window"]["until"])
        results.append((code, report["retrain_wanted"], report["retrain"], report["retrain_gate"]["reason"]))
    # shift: alert, not yet persistent; normal: resets; shift: not yet; shift: 2 in a row -> retrain; shift: max/day.
    assert [r[0] for r in results] == [3, 0, 3, 3, 3]
    assert [r[1] for r in results] == [False, False, False, True, False]
    assert [r[2] is not None for r in results] == [False, False, False, True, False]
    assert results[3][2]["exit_code"] == 2  # the flat data root is refused by retrain itself, at once
    assert "consecutive" in results[2][3] and "max_retrains_per_day" in results[4][3]
    # The history has every run's per-feature scores, alerting or not.
    code, out, err = _monitor(workspace, "--history", "trip_miles", "--json")
    assert code == 0, err
    runs = {r["window"]["until"]: r for r in json.loads(out)["runs"]}
    mine = [runs[u] for u in untils]
    overall = [next(s for s in r["scores"] if s["check"] == "skew" and s["slice"] is None) for r in mine]
    assert [s["alert"] for s in overall] == [True, False, True, True, True]
    assert all(s["feature"] == "trip_miles" and s["band"] > 0 for s in overall)
    assert [bool(r["retrain"]) for r in mine] == [False, False, False, True, False]
    code, out, err = _monitor(workspace, "--history", "--json")
    assert all(any(s["feature"] == "fare" for s in r["scores"]) for r in json.loads(out)["runs"])
    # The table forms.
    code, out, err = _monitor(workspace, "--history", "trip_miles")
    assert code == 0 and sum(1 for line in out.splitlines() if " skew " in line and "ALERT" in line) >= 4
    code, out, err = _monitor(workspace, "--history")
    assert code == 0 and "(retrain started)" in out
