"""How fast the CLI answers (issue 17): wall time of each read-only command on a workspace with 20 runs,
of a fully cached `mlpipe run`, and of `mlpipe monitor` on a 500-request window.

The workspace is built once in --workdir (kept for reruns): one real `mlpipe run` on a 3000-row slice
of the taxi sample with few steps, two more with other step counts (three pushed versions), then cached
re-runs up to 20 runs in MLMD. Cheaper: --from-workspace WS copies a workspace that has real runs and
adds MLMD records only: copies of its newest `pipeline_run` context (same properties, associated with
the same executions, under the pipeline context), until MLMD holds 20 run contexts. The cached-run row
then runs on that copy (`--data-root`/`--config` of the original are passed with --run-args). Each command then runs as a fresh `python -m pipeline` process, --repeats
times (the best is reported); with --compare REPO the same commands run with that checkout's code too
(e.g. /work/main), side by side in this invocation, and the table shows the ratio. The fully cached
`run` runs, per checkout, on its own copy of the workspace that two untimed runs made cached for that code
(the second one fully cached, so the timed runs find nothing changed since a fully cached run and are
recorded without TFX, pipeline/ops/unchanged.py); "run (cached, TFX decides)" is the same run with that
record dropped before each repeat, so TFX's LocalDagRunner starts and decides (every run before this change).

`monitor` needs request logs: --monitor-workdir is the workdir of bench/drift_scenarios.py (it keeps its
served workspace and the windows it checked); its last 500-request window is timed. Skipped if absent.

Usage:
  python bench/cli_latency.py --workdir /tmp/cli-bench [--compare /work/main] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("--train-steps", "100", "--eval-steps", "20")


CPU = {}  # wall seconds of a timed command -> its CPU seconds (user + sys), for the table


def mlpipe(repo: Path, *argv: str, cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    import resource

    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="2")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], cwd=cwd or repo, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[seconds] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, done


def run_count(ws: Path) -> int:
    _, done = mlpipe(REPO, "runs", "--json", "--workspace", str(ws))
    return len(json.loads(done.stdout)["runs"]) if done.returncode == 0 and done.stdout.strip() else 0


def build_workspace(workdir: Path, runs: int) -> tuple[Path, list[float]]:
    """<workdir>/ws with `runs` runs in MLMD; returns it and the wall times of the cached runs made now."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import write_taxi_slice

    data = workdir / "data"
    if not (data / "data.csv").is_file():
        write_taxi_slice(data)
    ws = workdir / "ws"
    common = ("--workspace", str(ws), "--data-root", str(data), "--eval-steps", "20")
    cached = []
    have = run_count(ws)
    for i in range(have, runs):
        steps = str(100 + min(i, 2))  # runs 1-3 train (three versions), the rest are fully cached
        seconds, done = mlpipe(REPO, "run", *common, "--train-steps", steps)
        if done.returncode != 0:
            raise SystemExit(f"mlpipe run failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        if i >= 3:
            cached.append(seconds)
        print(f"  run {i + 1}/{runs}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return ws, cached


def clone_runs(source: Path, workdir: Path, runs: int, config: Path | None) -> Path:
    """A copy of `source` whose MLMD holds `runs` pipeline_run contexts (copies of the newest completed one)."""
    import datetime as dt
    import shutil

    sys.path.insert(0, str(REPO))
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.config import load
    from pipeline.metadata import queries

    ws = workdir / "ws"
    if not ws.is_dir():
        shutil.copytree(source, ws, ignore=shutil.ignore_patterns("request_logs", "monitoring"))
    name = load(config, {"workspace": str(ws)}).pipeline_name
    store = queries.open_store(ws / "metadata.sqlite", read_only=False)
    existing = queries.pipeline_runs(store, name)
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    for newest in existing:  # the newest completed run
        executions = store.get_executions_by_context(newest.id)
        if executions and all(e.last_known_state in done for e in executions):
            break
    parent = store.get_context_by_type_and_name("pipeline", name)
    start = dt.datetime.fromisoformat(newest.name)
    for i in range(runs - len(existing)):
        context = metadata_store_pb2.Context()
        context.CopyFrom(newest)
        context.ClearField("id")
        context.ClearField("create_time_since_epoch")
        context.ClearField("last_update_time_since_epoch")
        context.name = (start + dt.timedelta(minutes=i + 1)).isoformat()
        [context_id] = store.put_contexts([context])
        associations = [metadata_store_pb2.Association(context_id=context_id, execution_id=e.id) for e in executions]
        store.put_attributions_and_associations([], associations)
        store.put_parent_contexts([metadata_store_pb2.ParentContext(child_id=context_id, parent_id=parent.id)])
    return ws


def last_window(workdir: Path) -> tuple[Path, Path | None, list[str]] | None:
    ws = workdir / "ws"
    history = ws / "monitoring" / "history.jsonl"
    if not history.is_file():
        return None
    entries = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e.get("requests") == 500]
    if not entries:
        return None
    window = entries[-1]["window"]
    config = workdir / "bench.toml"
    return ws, config if config.is_file() else None, ["--since", window["since"], "--until", window["until"]]


def cached_run_commands(ws: Path, workdir: Path, repos: list[Path], run_flags: list[str]) -> dict[Path, list[str]]:
    """Per checkout, `mlpipe run` on its own copy of `ws` that one untimed run has made fully cached for
    that checkout's code: a run's cache keys hold its code (models/ fingerprint) and the workspace's path
    (the Pusher's destination, the gates' request logs), so neither another checkout's runs nor the
    original's are cached there."""
    import shutil

    commands = {}
    for i, repo in enumerate(repos):
        copy = workdir / f"run-ws-{i}"
        if not copy.is_dir():
            shutil.copytree(ws, copy)
        argv = ["run", "--workspace", str(copy), *run_flags]
        # Untimed: the first re-runs what the copy's path or the code changed; the second finds everything
        # cached (TFX decides), which pipeline/ops/unchanged.py keeps, so that every timed run is "nothing
        # changed since a fully cached run".
        for _ in range(2):
            seconds, done = mlpipe(repo, *argv)
            if done.returncode != 0:
                print(f"  {repo}: the untimed run on {copy} failed: {done.stdout[-500:]}", file=sys.stderr)
            print(f"  {repo}: untimed run on {copy}: {seconds:.1f} s", file=sys.stderr, flush=True)
        commands[repo] = argv
    return commands


def forget_unchanged_run(argv: list[str]) -> None:
    """Before a timed run: drops the workspace's record of its last fully cached run, so that TFX decides."""
    from pipeline import config as config_lib

    workspace = argv[argv.index("--workspace") + 1]
    config_lib.load(overrides={"workspace": workspace}).unchanged_run_path.unlink(missing_ok=True)


def timed(repo: Path, argv: list[str], repeats: int, ok=(0,), before=None) -> float | None:
    best = None
    for _ in range(repeats):
        if before:
            before(argv)
        seconds, done = mlpipe(repo, *argv)
        if done.returncode not in ok:
            print(f"  {repo}: mlpipe {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]}", file=sys.stderr)
            return None
        best = seconds if best is None else min(best, seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlpipe-cli-bench"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compare", type=Path, help="another checkout whose code runs the same commands")
    parser.add_argument("--monitor-workdir", type=Path, default=Path("/tmp/mlpipe-drift-bench"))
    parser.add_argument("--from-workspace", type=Path, help="copy this workspace and add run records (see above)")
    parser.add_argument("--config", type=Path, help="the config of --from-workspace (its pipeline name, data)")
    parser.add_argument("--run-args", default="", help="flags of the cached `mlpipe run` on --from-workspace")
    parser.add_argument("--only", action="append", help="time only this row (by its name; repeatable)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.from_workspace:
        ws, cached = clone_runs(args.from_workspace, args.workdir, args.runs, args.config), []
        run_flags = [*(["--config", str(args.config)] if args.config else []), *args.run_args.split()]
    else:
        ws, cached = build_workspace(args.workdir, args.runs)
        run_flags = ["--data-root", str(args.workdir / "data"), "--eval-steps", "20", "--train-steps", "102"]
    ws_flags = ["--workspace", str(ws)]
    cfg_flags = ["--config", str(args.config)] if args.config else []
    _, done = mlpipe(REPO, "models", "--json", *ws_flags, *cfg_flags)
    versions = [v["version"] for v in json.loads(done.stdout)["versions"]]
    commands = {
        "runs": ["runs", *ws_flags, *cfg_flags],
        "runs --json": ["runs", "--json", *ws_flags, *cfg_flags],
        "models": ["models", *ws_flags, *cfg_flags],
        "lineage V": ["lineage", str(versions[0]), *ws_flags, *cfg_flags],
        "label list": ["label", "list", *ws_flags, *cfg_flags],
        "rollback --dry-run": ["rollback", "--dry-run", "--reason", "bench", *ws_flags, *cfg_flags],
    }
    repos = [REPO] + ([args.compare.resolve()] if args.compare else [])
    cached_rows = ("run (fully cached)", "run (cached, TFX decides)")
    if (not args.from_workspace or args.run_args) and (not args.only or set(cached_rows) & set(args.only)):
        commands[cached_rows[0]] = cached_run_commands(ws, args.workdir, repos, run_flags)
        commands[cached_rows[1]] = commands[cached_rows[0]]
    ok = {"rollback --dry-run": (0, 2)}
    before = {cached_rows[1]: forget_unchanged_run}
    monitored = last_window(args.monitor_workdir) if not args.only or "monitor (500 requests)" in args.only else None
    if monitored:
        import shutil

        source, config, window = monitored
        mws = args.workdir / "monitor-ws"  # a copy: each monitor run appends to the workspace's history
        if not mws.is_dir():
            shutil.copytree(source, mws)
        commands["monitor (500 requests)"] = [
            "monitor",
            "--workspace",
            str(mws),
            *(["--config", str(config)] if config else []),
            *window,
            "--no-notify",
        ]
        ok["monitor (500 requests)"] = (0, 3)
        # Untimed first run: builds (caches) the copy's baseline, as any version's first monitor run does.
        mlpipe(REPO, *commands["monitor (500 requests)"])
    if args.only:
        commands = {name: argv for name, argv in commands.items() if name in args.only}
    results = {}
    load_before = os.getloadavg()[0]
    for (name, argv), repo in itertools.product(commands.items(), repos):
        argv = argv[repo] if isinstance(argv, dict) else argv
        results[(name, repo)] = timed(repo, argv, args.repeats, ok.get(name, (0,)), before.get(name))
    load = os.getloadavg()[0]
    print(
        f"\nCLI wall times (best of {args.repeats}, fresh process each; {run_count(ws)} runs in MLMD; "
        f"load average {load_before:.1f} before, {load:.1f} after)"
    )
    head = f"{'command':<24} {'this checkout':>24}"
    if args.compare:
        head += f" {str(args.compare)[:24]:>24} {'ratio':>7}"
    print(head)

    def fmt(value):  # wall (CPU): on a shared machine the CPU seconds show what the wall time hides
        return "failed" if value is None else f"{value:.2f} s ({CPU[value]:.1f} cpu)"

    for name in commands:
        line = f"{name:<24} {fmt(results[(name, REPO)]):>24}"
        if args.compare:
            other = results[(name, repos[1])]
            ratio = f"{results[(name, REPO)] / other:.2f}" if other and results[(name, REPO)] else "-"
            line += f" {fmt(other):>24} {ratio:>7}"
        print(line)
    if not monitored and not args.only:
        print(f"monitor: skipped (no 500-request window in {args.monitor_workdir}; run bench/drift_scenarios.py)")
    if cached:
        print(f"cached runs made while building the workspace: {', '.join(f'{s:.1f}' for s in cached)} s")


if __name__ == "__main__":
    main()
