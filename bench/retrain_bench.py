"""A one-new-span `mlpipe retrain` against a full run over the same window, side by side.

Data: `--window` spans of `--rows-per-span` taxi rows each (bench/scale_data.py, seeded). Both timed
runs train the same steps on the same rows with the same runner:

  full         `mlpipe run --no-cache` in a fresh workspace on the window's CSVs (the flat layout):
               every component sees every row of the window
  incremental  `mlpipe retrain` in a workspace that already ran on spans 1..window-1 (setup runs,
               few steps, not timed): ExampleGen and StatisticsGen read the new span only, and
               Transform analyses only the new span (tf.Transform's analyzer cache,
               pipeline/dag/analyzer_cache.py); it still transforms the whole window for the Trainer

Usage: python bench/retrain_bench.py [--rows-per-span 30000] [--window 3] [--train-steps 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import scale_data  # noqa: E402

PIPELINE = "mlpipe-taxi"
BLESS_ALL = ["--value-threshold", "0", "--change-tolerance", "1"]
BEAM = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]


def write_spans(rows_per_span: int, window: int, out: Path) -> list[Path]:
    """span_1.csv ... span_<window>.csv under out/csv, consecutive chunks of one seeded scaled CSV."""
    whole = scale_data.scale(rows_per_span * window, out / "scaled", seed=0)
    lines = whole.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    paths = []
    for i in range(window):
        path = out / "csv" / f"span_{i + 1}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "".join(body[i * rows_per_span : (i + 1) * rows_per_span]))
        paths.append(path)
    return paths


def mlpipe(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-m", "pipeline", *argv],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    return time.perf_counter() - start


def component_seconds(workspace: Path) -> dict[str, float]:
    from pipeline.metadata import queries as metadata

    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, PIPELINE)[0]
    return {e.node_id: e.seconds for e in metadata.run_executions(store, PIPELINE, run)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-span", type=int, default=30000)
    parser.add_argument("--window", type=int, default=3, help="spans in the window (data.window_spans)")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--out", help="keep data, workspaces and logs here (default: a temp dir)")
    args = parser.parse_args()
    if args.window < 2:
        parser.error("--window must be at least 2")
    out = Path(args.out or tempfile.mkdtemp(prefix="mlpipe-retrain-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    csvs = write_spans(args.rows_per_span, args.window, out)
    flat, spans_root = out / "flat", out / "spans"
    flat.mkdir(exist_ok=True)
    for path in csvs:
        (flat / path.name).write_bytes(path.read_bytes())
    steps = ["--train-steps", str(args.train_steps), "--eval-steps", str(args.eval_steps)]
    inc_ws, full_ws = out / "incremental", out / "full"
    retrain = ["retrain", "--workspace", str(inc_ws), "--data-root", str(spans_root), *BLESS_ALL, *BEAM]
    retrain += ["--window-spans", str(args.window)]
    print(f"{args.window} spans x {args.rows_per_span} rows; timed runs: {args.train_steps}/{args.eval_steps} steps")
    for i, path in enumerate(csvs):
        span = spans_root / f"span-{i + 1}"
        span.mkdir(parents=True, exist_ok=True)
        (span / "data.csv").write_bytes(path.read_bytes())
        if i < len(csvs) - 1:  # setup: ExampleGen ingests this span, Transform writes its cache
            s = mlpipe([*retrain, "--train-steps", "10", "--eval-steps", "5"], out / f"setup-{i + 1}.log")
            print(f"  setup retrain on span {i + 1}: {s:.1f} s (not timed)", flush=True)
    full_s = mlpipe(
        ["run", "--workspace", str(full_ws), "--data-root", str(flat), "--no-cache", *steps, *BEAM, *BLESS_ALL],
        out / "full.log",
    )
    print(f"  full run over the window: {full_s:.1f} s", flush=True)
    inc_s = mlpipe([*retrain, *steps], out / "incremental.log")
    print(f"  one-new-span retrain:     {inc_s:.1f} s", flush=True)

    full_c, inc_c = component_seconds(full_ws), component_seconds(inc_ws)
    print(f"\n{'run':<24} {'wall s':>8} {'vs full':>8}")
    print(f"{'full (window, flat)':<24} {full_s:8.1f} {1:7.2f}x")
    print(f"{'incremental retrain':<24} {inc_s:8.1f} {inc_s / full_s:7.2f}x")
    print(f"\n{'component':<18} {'full s':>8} {'incr. s':>8}")
    for node in ("CsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        print(f"{node:<18} {full_c.get(node, float('nan')):8.1f} {inc_c.get(node, float('nan')):8.1f}")
    (out / "result.json").write_text(
        json.dumps({"full": {"seconds": full_s, **full_c}, "incremental": {"seconds": inc_s, **inc_c}}, indent=2)
    )
    print(f"\ndata, workspaces and logs: {out}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
