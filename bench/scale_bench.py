"""How the pipeline's cost grows with data on one machine.

For each row count and Beam DirectRunner mode, runs `mlpipe run` in a fresh workspace on data made
by bench/scale_data.py, then prints wall time per component (from MLMD), peak memory of the whole
process tree (the sum of RSS over the run and its Beam workers, sampled every 0.2 s) and seconds
per 1k rows. Training uses few steps: this measures the data path, not the model.

    python bench/scale_bench.py --rows 15000 100000 --modes in_memory multi_processing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale_data  # noqa: E402

MODES = {
    "in_memory": ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"],
    "multi_processing": ["--direct-running-mode", "multi_processing", "--direct-num-workers", "0"],
}
SHORT = {
    "CsvExampleGen": "ExGen",
    "EvalSample": "EvSample",
    "StatisticsGen": "Stats",
    "SchemaGen": "Schema",
    "ExampleValidator": "Valid",
    "AnomaliesGate": "Gate",
    "Transform": "Transform",
    "Trainer": "Trainer",
    "latest_blessed_model_resolver": "Resolv",
    "Evaluator": "Evaluator",
    "InfraValidator": "Infra",
    "Pusher": "Pusher",
}


def _tree_rss(pid: int) -> int:
    """Bytes of RSS of `pid` and all its descendants (psutil if installed, else /proc)."""
    try:
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total
    except ImportError:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        page = os.sysconf("SC_PAGE_SIZE")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                statm = (entry / "statm").read_text().split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(statm[1]) * page
        total, todo = 0, [pid]
        while todo:
            p = todo.pop()
            total += rss.get(p, 0)
            todo.extend(children.get(p, []))
        return total


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            self.done.wait(self.interval)


def component_seconds(workspace: Path) -> dict[str, float]:
    """{node id: seconds} of the newest run recorded in the workspace's MLMD."""
    from pipeline import config as config_lib
    from pipeline.metadata import queries as metadata

    config = config_lib.load(None, {"workspace": str(workspace)})
    store = metadata.open_store(config)
    runs = metadata.pipeline_runs(store, config.pipeline_name) if store else []
    if not runs:
        return {}
    return {e.node_id: e.seconds for e in metadata.run_executions(store, config.pipeline_name, runs[0])}


def run_one(rows: int, mode: str, data_dir: Path, workspace: Path, train_steps: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--json",
        "--workspace",
        str(workspace),
        "--data-root",
        str(data_dir),
        "--train-steps",
        str(train_steps),
        "--eval-steps",
        "10",
        *MODES[mode],
    ]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    env.pop("MLPIPE_WORKSPACE", None)  # --workspace decides
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = {"outcome": "failed", "error": (err.strip().splitlines() or ["no output"])[-1]}
    return {
        "rows": rows,
        "mode": mode,
        "exit_code": proc.returncode,
        "outcome": summary.get("outcome"),
        "error": summary.get("error"),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(sampler.peak / 2**20),
        "seconds_per_1k_rows": round(wall / rows * 1000, 3),
        "components": {k: round(v, 1) for k, v in component_seconds(workspace).items()},
        "log": summary.get("log"),
    }


def print_table(results: list[dict]) -> None:
    nodes = [n for n in SHORT if any(n in r["components"] for r in results)]
    head = f"{'rows':>8} {'mode':<16} {'wall s':>7} {'s/1k':>6} {'peak MB':>8} " + " ".join(
        f"{SHORT[n]:>9}" for n in nodes
    )
    print(head)
    print("-" * len(head))
    for r in results:
        cells = " ".join(f"{r['components'][n]:>9.1f}" if n in r["components"] else f"{'-':>9}" for n in nodes)
        print(
            f"{r['rows']:>8} {r['mode']:<16} {r['wall_seconds']:>7.1f} {r['seconds_per_1k_rows']:>6.2f} "
            f"{r['peak_rss_mb']:>8} {cells}" + ("" if r["exit_code"] == 0 else f"  FAILED: {r['error']}")
        )
    print("Per-component columns: seconds from MLMD (execution start to last update).")
    for mode in dict.fromkeys(r["mode"] for r in results):
        ok = sorted((r for r in results if r["mode"] == mode and r["exit_code"] == 0), key=lambda r: r["rows"])
        for small, large in zip(ok, ok[1:]):  # fixed costs cancel out: the cost of one more row
            marginal = (large["wall_seconds"] - small["wall_seconds"]) / (large["rows"] - small["rows"]) * 1000
            ratio = large["seconds_per_1k_rows"] / small["seconds_per_1k_rows"]
            print(
                f"{mode}: {small['rows']} -> {large['rows']} rows: marginal {marginal:.3f} ms per row; "
                f"per-row cost ratio {ratio:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the pipeline at several data sizes and Beam DirectRunner modes; print the cost curve.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[15000, 100000, 1000000],
        help="row counts to run (default 15000 100000 1000000)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(MODES), default=sorted(MODES), help="DirectRunner modes (default both)"
    )
    parser.add_argument("--train-steps", type=int, default=50, help="training steps per run (default 50)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "out",
        help="where data, workspaces and results.json go (default bench/out)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data generator (default 0)")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list instead of a table")
    args = parser.parse_args(argv)

    results = []
    for rows in args.rows:
        data_dir = args.out / f"data-{rows}"
        if not (data_dir / "data.csv").is_file():
            scale_data.scale(rows, data_dir, args.seed)
        for mode in args.modes:
            workspace = args.out / f"ws-{rows}-{mode}-{int(time.time())}"
            print(f"bench: {rows} rows, {mode} ...", file=sys.stderr, flush=True)
            result = run_one(rows, mode, data_dir, workspace, args.train_steps)
            print(
                f"bench: {rows} rows, {mode}: {result['wall_seconds']} s, peak {result['peak_rss_mb']} MB, "
                f"{result['outcome']}",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))  # after each run
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
