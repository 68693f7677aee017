"""Drift scenario benchmark: does `mlpipe monitor` page on real shifts and stay quiet on normal traffic?

Trains once (three real `mlpipe run`s on the span layout: 2013 Q1, Q2, Q3 of the embedded taxi
sample, 70% of each quarter's rows; 30% are held out), serves the pushed version with the real
`mlpipe serve` (request logging on), replays labelled scenarios through the server's REST API
(one example per request) and runs the real `mlpipe monitor --json` on each scenario's window.
Every scenario window is preceded by a window of normal next-quarter traffic (the drift baseline)
and separated from the previous scenario by a gap longer than a window.

Prints a confusion table (scenario label vs verdict) and, per scenario, what alerted, whether the
alert names the right feature (and slice), and the monitor's wall time.

Usage:
  python bench/drift_scenarios.py                       # about 6 min on 2 cores (training is cached)
  python bench/drift_scenarios.py --workdir /tmp/drift  # keep the trained workspace for reruns
  python bench/drift_scenarios.py --requests 500 --seed 0 --repeats 1
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.server_process import free_port, stop_server, wait_until_serving  # noqa: E402
from models import features  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
TRAIN_QUARTERS = ((2013, 1), (2013, 2), (2013, 3))
NEXT_QUARTER = (2013, 4)
HOLDOUT = 0.3


def mlpipe(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=REPO, env=ENV, capture_output=True, text=True)
    if check and done.returncode not in (0, 3):
        raise RuntimeError(f"mlpipe {' '.join(argv)} exited {done.returncode}: {done.stderr[-3000:]}")
    return done


def quarter(row: dict) -> tuple[int, int]:
    moment = dt.datetime.fromtimestamp(int(row[features.TIMESTAMP_COLUMN]), dt.timezone.utc)
    return moment.year, (moment.month - 1) // 3 + 1


def read_rows() -> tuple[list[str], list[dict]]:
    from data import taxi_sample

    with open(taxi_sample.source_csv(), newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def prepare(workdir: Path, train_steps: int, seed: int) -> dict:
    """Trains the model once (cached in `workdir`); returns the row pools and the workspace."""
    header, rows = read_rows()
    rng = random.Random(seed)
    train, same, nxt = [], [], []
    for row in rows:
        q = quarter(row)
        if q in TRAIN_QUARTERS:
            (same if rng.random() < HOLDOUT else train).append(row)
        elif q == NEXT_QUARTER:
            nxt.append(row)
    ws, spans = workdir / "ws", workdir / "spans"
    done_marker = workdir / "trained.json"
    if not done_marker.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        train_csv = workdir / "train.csv"
        with open(train_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(train)
        config = workdir / "bench.toml"
        # Every run pushes (the bench needs a version trained on all three spans).
        config.write_text("[evaluation]\nvalue_lower_bound = 0.01\nchange_tolerance = 1.0\n")
        for _ in TRAIN_QUARTERS:
            mlpipe("ingest", str(train_csv), "--data-root", str(spans), "--by", "quarter", "--next", "1")
            started = time.time()
            mlpipe(
                "run",
                "--config",
                str(config),
                "--workspace",
                str(ws),
                "--data-root",
                str(spans),
                "--train-steps",
                str(train_steps),
                "--eval-steps",
                "50",
            )
            print(f"  trained on the spans so far in {time.time() - started:.0f} s", file=sys.stderr)
        done_marker.write_text(json.dumps({"train_rows": len(train), "seed": seed}))
    return {"workspace": ws, "same": same, "next": nxt, "train_rows": len(train)}


# --- Scenarios ---------------------------------------------------------------------------------


def night(row: dict) -> bool:
    hour = int(row["trip_start_hour"])
    return hour >= 20 or hour <= 4


def _scale(row: dict, name: str, factor: float) -> dict:
    if row.get(name, "") != "":
        row[name] = str(float(row[name]) * factor)
    return row


def scenario_rows(name: str, pools: dict, n: int, rng: random.Random) -> list[dict]:
    if name == "same_quarter_normal":
        return [dict(r) for r in rng.sample(pools["same"], n)]
    rows = [dict(r) for r in rng.sample(pools["next_current"], n)]
    if name == "next_quarter_normal":
        return rows
    if name == "marginal_numeric_shift":  # every trip takes 40% longer (congestion)
        return [_scale(r, "trip_seconds", 1.4) for r in rows]
    if name == "conditional_cash_night":  # fare x3 for cash trips at night only
        return [_scale(r, "fare", 3.0) if r["payment_type"] == "Cash" and night(r) else r for r in rows]
    if name == "new_category_5pct":  # a company never seen in training on 5% of the rows
        for r in rng.sample(rows, n // 20):
            r["company"] = "Uber Chicago"
        return rows
    if name == "missing_surge":  # the dropoff coordinates feed breaks for 20% of requests
        for r in rng.sample(rows, n // 5):
            r["dropoff_latitude"] = ""
        return rows
    if name == "conditional_card_rush_miles":  # card trips in the morning rush are twice as long
        return [
            _scale(r, "trip_miles", 2.0)
            if r["payment_type"] == "Credit Card" and 7 <= int(r["trip_start_hour"]) <= 10
            else r
            for r in rows
        ]
    if name == "company_share_shift":  # one fleet takes over 15% of the rows from the others
        for r in rng.sample(rows, (3 * n) // 20):
            r["company"] = "Blue Ribbon Taxi Association Inc."
        return rows
    if name == "label_relevant_shift":  # half of the cash payers switch to credit cards (tips are recorded)
        for r in rows:
            if r["payment_type"] == "Cash" and rng.random() < 0.5:
                r["payment_type"] = "Credit Card"
        return rows
    raise ValueError(name)


# (name, expected input features that must alert, a slice that must be named (feature=value), prediction drift)
SCENARIOS = (
    ("next_quarter_normal", set(), None, False),
    ("same_quarter_normal", set(), None, False),
    ("marginal_numeric_shift", {"trip_seconds"}, None, None),
    ("conditional_cash_night", {"fare"}, "payment_type=Cash", None),
    ("new_category_5pct", {"company"}, None, None),
    ("missing_surge", {"dropoff_latitude"}, None, None),
    ("label_relevant_shift", {"payment_type"}, None, True),
    # Not used while the method was developed (added after it was fixed):
    ("conditional_card_rush_miles", {"trip_miles"}, "payment_type=Credit Card", None),
    ("company_share_shift", {"company"}, None, None),
)


# --- Serving and replay ------------------------------------------------------------------------


def start_server(workspace: Path):
    rest, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "serve",
        "--rest_api_port",
        str(rest),
        "--port",
        str(grpc_port),
        "--log_level",
        "WARNING",
        "--request_log_sampling_rate",
        "1",
        "--request_log_max_file_seconds",
        "5",
    ]
    env = dict(ENV, MLPIPE_WORKSPACE=str(workspace))  # `mlpipe serve` serves the workspace's pushed versions
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_serving(proc, rest, 300, 0.5)
    return proc, rest


def _typed(name: str, value: str):
    kind = features.COLUMN_TYPES[name]
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(float(value))
    return value


def replay(session, port: int, rows: list[dict], rate: float) -> None:
    """One request per row at `rate` requests/s (or slower if the server is): a serving_raw predict for
    complete rows, a classify (tf.Example) otherwise."""
    base = f"http://127.0.0.1:{port}/v1/models/taxi"
    start = time.monotonic()
    for i, row in enumerate(rows):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        present = {k: _typed(k, row[k]) for k in features.MODEL_FEATURES if row.get(k, "") != ""}
        if len(present) == len(features.MODEL_FEATURES) and i % 2:
            body = {"signature_name": "serving_raw", "instances": [present]}
            response = session.post(f"{base}:predict", json=body, timeout=30)
        else:
            body = {"signature_name": "serving_default", "examples": [present]}
            response = session.post(f"{base}:classify", json=body, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"request {i} failed: {response.status_code} {response.text[:300]}")


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_window(session, port: int, rows: list[dict], rate: float = 50.0) -> tuple[float, float]:
    """Replays `rows` at a steady rate (so a window and the one before it, of the same length, hold one
    replay each); returns the window [since, until) in whole seconds holding exactly them."""
    time.sleep(1.05 - (time.time() % 1.0))  # start on a fresh second
    since = math.floor(time.time())
    replay(session, port, rows, rate)
    time.sleep(1.05 - (time.time() % 1.0))
    return since, math.floor(time.time())


# --- Verdicts ----------------------------------------------------------------------------------


def monitor(workdir: Path, since: float, until: float) -> subprocess.CompletedProcess:
    """`mlpipe monitor --json` of the window [since, until) in the bench workspace, no alert hooks."""
    return mlpipe(
        "monitor",
        "--workspace",
        str(workdir / "ws"),
        "--since",
        iso(since),
        "--until",
        iso(until),
        "--json",
        "--no-notify",
    )


def judge(report: dict, expected: set, slice_: str | None, prediction: bool | None) -> dict:
    """What alerted, and whether that is the right answer for the scenario."""
    alerting = {a.split(":", 1)[1] for a in report["alerts"]}
    inputs = alerting - {"prediction"}
    predicted = "prediction" in alerting
    ok_features = inputs == expected
    slices = sorted((c for c in report["checks"] if c["alert"] and c.get("slice")), key=lambda c: c["p_value"])
    named = list(dict.fromkeys(f"{c['feature']} in {c['slice']}" for c in slices))
    ok_slice = slice_ is None or (bool(slices) and slice_ in slices[0]["slice"])  # the strongest slice is right
    ok_prediction = prediction is None or predicted == prediction
    return {"alerting": sorted(alerting), "slices": named[:4], "correct": ok_features and ok_slice and ok_prediction}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/mlpipe-drift-bench", help="trained workspace (reused when present)")
    parser.add_argument("--requests", type=int, default=500, help="requests per scenario window (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="windows per scenario (different rows each)")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--prepare-only", action="store_true", help="train and exit")
    parser.add_argument("--only", nargs="*", help="scenario names to run (default all)")
    args = parser.parse_args(argv)
    import requests

    workdir = Path(args.workdir)
    started = time.time()
    pools = prepare(workdir, args.train_steps, args.seed)
    print(
        f"trained on {pools['train_rows']} rows of 2013 Q1-Q3 (spans 1-3) in {time.time() - started:.0f} s; "
        f"held out {len(pools['same'])} rows of Q1-Q3, next quarter {len(pools['next'])} rows",
        file=sys.stderr,
    )
    if args.prepare_only:
        return 0
    rng = random.Random(args.seed)
    nxt = list(pools["next"])
    rng.shuffle(nxt)
    pools["next_previous"], pools["next_current"] = nxt[: len(nxt) // 2], nxt[len(nxt) // 2 :]
    n = min(args.requests, len(pools["next_current"]), len(pools["same"]))
    log_dir = workdir / "ws" / "request_logs"
    history = workdir / "ws" / "monitoring"
    for path in (log_dir, history):
        if path.exists():
            import shutil

            shutil.rmtree(path)
    proc, port = start_server(workdir / "ws")
    results = []
    try:
        session = requests.Session()
        # The first monitor run of a version builds its baseline (reads the window's examples, scores
        # the eval splits) and caches it in the workspace: done once here, timed apart.
        since, until = run_window(session, port, [dict(r) for r in pools["next_previous"][:120]])
        t0 = time.time()
        monitor(workdir, since, until)
        print(f"baseline built (first monitor run of the version) in {time.time() - t0:.1f} s", file=sys.stderr)
        time.sleep(until - since + 1.5)
        for name, expected, slice_, prediction in SCENARIOS:
            if args.only and name not in args.only:
                continue
            for repeat in range(args.repeats):
                local = random.Random(f"{args.seed}-{name}-{repeat}")
                previous = [dict(r) for r in local.sample(pools["next_previous"], n)]
                run_window(session, port, previous)  # the drift baseline: normal traffic right before
                current = scenario_rows(name, pools, n, local)
                since, until = run_window(session, port, current)
                length = until - since
                t0 = time.time()
                done = monitor(workdir, since, until)
                seconds = time.time() - t0
                report = json.loads(done.stdout)
                verdict = judge(report, expected, slice_, prediction)
                results.append(
                    {
                        "scenario": name,
                        "repeat": repeat,
                        "shift": bool(expected),
                        "alert": report["alert"],
                        "requests": report["requests"],
                        "seconds": round(seconds, 1),
                        "check_seconds": report["timing"]["seconds"],
                        **verdict,
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr)
                time.sleep(length + 1.5)  # the next scenario's drift window does not see this one
    finally:
        stop_server(proc)
    print(f"\nmlpipe drift scenarios: {n} requests per window, seed {args.seed}, {args.repeats} window(s) each")
    print(
        f"{'SCENARIO':<28} {'LABEL':<7} {'VERDICT':<8} {'CORRECT':<8} {'WALL':>6} {'CHECK':>6}  ALERTS (strongest slices)"
    )
    for r in results:
        label = "shift" if r["shift"] else "normal"
        slices = f" ({'; '.join(r['slices'])})" if r["slices"] else ""
        print(
            f"{r['scenario']:<28} {label:<7} {'ALERT' if r['alert'] else 'quiet':<8} "
            f"{'yes' if r['correct'] else 'NO':<8} {r['seconds']:>5.1f}s {r['check_seconds']:>5.2f}s  "
            f"{', '.join(r['alerting']) or '-'}{slices}"
        )
    tp = sum(r["shift"] and r["alert"] for r in results)
    fn = sum(r["shift"] and not r["alert"] for r in results)
    fp = sum(not r["shift"] and r["alert"] for r in results)
    tn = sum(not r["shift"] and not r["alert"] for r in results)
    right = sum(r["shift"] and r["correct"] for r in results)
    print("\nconfusion        alert  quiet")
    print(f"  shift          {tp:>5}  {fn:>5}   (attributed to the right feature/slice: {right}/{tp + fn})")
    print(f"  normal         {fp:>5}  {tn:>5}")
    print(
        "WALL: the `mlpipe monitor --json` subprocess (Python, TensorFlow and TFDV imports included); "
        "CHECK: its check after the imports (report timing.seconds)"
    )
    return 0 if fp == 0 and fn == 0 and right == tp + fn else 1


if __name__ == "__main__":
    sys.exit(main())
