"""`mlpipe runs | models | lineage`: the model registry view over ML Metadata (`rollback`, `label`: rollout.py).

See docs/registry.md for the output, the JSON schemas and the exit codes.
"""

from __future__ import annotations

import argparse
import json

from pipeline import cli
from pipeline.metadata import lineage as lineage_lib
from pipeline.metadata import runs as runs_lib
from pipeline.metadata import snapshot as snapshot_lib
from pipeline.metadata import thresholds
from pipeline.metadata import versions as versions_lib
from pipeline.publish import approvals
from pipeline.publish import versions as on_disk


def _snapshot(args: argparse.Namespace):
    config = cli.load_config(args)
    return config, snapshot_lib.open_snapshot(config)


def _nothing_yet(config, args: argparse.Namespace, empty: dict, snap=None) -> int:
    runs = runs_lib.list_runs(snap) if snap is not None else []
    if args.json:
        print(json.dumps({"workspace": str(config.workspace_path), **empty}, indent=2))
    elif runs:  # runs, but none pushed: say so, not "nothing has run"
        print(
            f"mlpipe: nothing pushed yet: {len(runs)} run(s) in {config.workspace_path}, none pushed a model "
            f"(newest: {runs_lib.describe_run(runs[0])}); `mlpipe runs` lists them"
        )
    else:
        print(f"mlpipe: nothing yet: no pipeline has run in {config.workspace_path} (start with `mlpipe run`)")
    return cli.EXIT_OK


# --- runs -------------------------------------------------------------------------------------


def _runs(args: argparse.Namespace) -> int:
    config, snap = _snapshot(args)
    rows = runs_lib.list_runs(snap) if snap is not None else []
    if not rows:
        return _nothing_yet(config, args, {"runs": []})
    if args.json:
        cli.print_json({"workspace": str(config.workspace_path), "runs": rows})
        return cli.EXIT_OK
    print(f"{'RUN':<28} {'STARTED (UTC)':<26} {'SECONDS':>8}  {'SPANS':<6} OUTCOME")
    for row in rows:
        spans = ",".join(map(str, row["spans"])) or "-"
        print(
            f"{row['run_id']:<28} {row['started'] or '-':<26} {row['seconds']:>8.1f}  {spans:<6} "
            f"{runs_lib.describe_run(row)}"
        )
    return cli.EXIT_OK


# --- models -----------------------------------------------------------------------------------


def _serving_line(serving: dict) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in serving["labels"].items()) or "none"
    loaded = ", ".join(map(str, serving["loaded"])) or "nothing"
    return f"Serving would load: {loaded} (latest {serving['latest'] or '-'}; labels: {labels})"


def _models(args: argparse.Namespace) -> int:
    config, snap = _snapshot(args)
    records = versions_lib.list_models(snap) if snap is not None else []
    serving = on_disk.serving_state(config)
    if not records and not serving["versions_on_disk"]:
        return _nothing_yet(config, args, {"serving": serving, "versions": [], "refused": []}, snap)
    refused = runs_lib.refused_candidates(snap) if snap is not None else []
    states = approvals.release_states(config)
    for r in records:
        r["release"] = approvals.status_of(states, r["version"])  # pending/canary/approved/rejected/auto
    if args.json:
        cli.print_json(
            {"workspace": str(config.workspace_path), "serving": serving, "versions": records, "refused": refused}
        )
        return cli.EXIT_OK
    if not records:
        print("mlpipe: no pushed versions recorded in MLMD yet")
    marks = {v: [] for v in serving["versions_on_disk"]}
    if serving["latest"] is not None:
        marks[serving["latest"]].append("latest")
    for label, version in serving["labels"].items():
        marks.setdefault(version, []).append(label)
    for r in records:
        tags = ", ".join(marks.get(r["version"], []))
        print(f"version {r['version']}" + (f"  [{tags}]" if tags else "") + f"  pushed {r['pushed']}")
        if r["release"]["status"] != "auto":
            print(f"  release: {_release_line(r['release'])}")
        if r["rollback"]:
            rb = r["rollback"]
            print(
                f"  rollback: re-publishes version {rb['of_version']} (replaced {rb['replaced_version']}) "
                f"by {rb['user']}: {rb['reason']}"
            )
        elif r.get("forced_blessing"):
            print(
                f"  pushed by `mlpipe bless --force` (execution {r['forced_blessing']['execution_id']}); trained in run "
                f"{r['trainer_run_id']}; spans {','.join(map(str, r['training_spans'])) or '-'}"
            )
        else:
            print(
                f"  run {r['run_id']}; trained in run {r['trainer_run_id']}; spans "
                f"{','.join(map(str, r['training_spans'])) or '-'}"
            )
        baseline = r["baseline"]
        print(f"  baseline: {('version ' + str(baseline['version'])) if baseline and baseline['version'] else 'none'}")
        for check in r["checks"]:
            print(f"  {thresholds.describe_check(check)}")
        _print_gates(r, "  ")
    for r in refused:
        baseline = r["baseline"]
        against = f"version {baseline['version']}" if baseline and baseline["version"] else "no baseline"
        print(f"refused: run {r['run_id']} (compared with {against})")
        for check in r["failed_checks"]:
            print(f"  {thresholds.describe_check(check)}")
        _print_gates(r, "  ")
    print(_serving_line(serving))
    return cli.EXIT_OK


def _release_line(release: dict) -> str:
    last = release["decisions"][-1] if release["decisions"] else None
    by = f" by {last['user']} at {last['time']}: {last['reason']}" if last else ""
    held = f" (held in {release['held_path']})" if release["held_path"] else ""
    return f"{release['status']}{by}{held}"


def _print_gates(record: dict, indent: str) -> None:
    """The verdict, the infra and replay gates and any `bless --force` (pipeline/metadata/verdicts.py)."""
    from pipeline.metadata import verdicts

    if record.get("verdict"):
        print(f"{indent}verdict: {record['verdict']}")
    for gate in record.get("gates", []):
        if gate["gate"] == verdicts.OVERRIDE:
            n = gate["numbers"]
            print(
                f"{indent}forced blessing by {n['user']} at {n['time']} (overrode {n['overridden']}): {gate['reasons'][0]}"
            )
        elif gate["gate"] != verdicts.EVALUATION:
            print(f"{indent}{verdicts.describe(gate)}")


# --- lineage ----------------------------------------------------------------------------------


def _exec_line(e: dict | None) -> str:
    if not e:
        return "(not recorded)"
    return f"execution {e['id']} ({e['node']}, {e['state']}, run {e['run_id']}, {e['seconds']:.1f} s)"


def _lineage(args: argparse.Namespace) -> int:
    if (args.version is None) == (args.span is None):
        raise cli.CommandError("give either VERSION or --span N (see `mlpipe lineage --help`)", cli.EXIT_USAGE)
    config, snap = _snapshot(args)
    if snap is None:
        if args.span is not None:
            return _nothing_yet(config, args, {"span": args.span, "versions": []})
        raise cli.CommandError(
            f"no pipeline has run in {config.workspace_path} yet: no version {args.version}", cli.EXIT_USAGE
        )
    if args.span is not None:
        versions = versions_lib.versions_trained_on_span(snap, args.span)
        if args.json:
            cli.print_json({"span": args.span, "versions": versions})
        elif versions:
            print(f"Versions trained on span {args.span}: {', '.join(map(str, versions))}")
        else:
            print(f"No pushed version was trained on span {args.span}")
        return cli.EXIT_OK
    chain = lineage_lib.lineage(snap, args.version)
    if args.json:
        cli.print_json(chain)
        return cli.EXIT_OK
    pub = chain["published"]
    print(
        f"Version {chain['version']}: {chain['pushed']['path']}"
        f"{'' if chain['pushed']['exists'] else ' (directory missing)'}  pushed {pub['pushed']}"
    )
    if chain["release"]["status"] != "auto":
        print(f"  release: {_release_line(chain['release'])}")
        for d in chain["release"]["decisions"]:
            print(f"     {d['time']} {d['user']} {d['decision']} (execution {d['execution_id']}): {d['reason']}")
    if chain["rollback"]:
        rb = chain["rollback"]
        print(
            f"  <- rollback execution {rb['execution_id']} by {rb['user']} re-publishing version "
            f"{rb['of_version']} (replaced {rb['replaced_version']}): {rb['reason']}"
        )
    print(f"  <- Pusher {_exec_line(chain['pusher'])}")
    ev = chain["evaluation"]
    base = ev["baseline"]
    print(f"  <- blessing (blessed={ev['blessed']}) from Evaluator {_exec_line(ev['execution'])}")
    print(
        f"     baseline: {('version ' + str(base['version']) + ' (model ' + str(base['model_id']) + ')') if base else 'none'}"
    )
    for check in ev["checks"]:
        print(f"     {thresholds.describe_check(check)}")
    _print_gates({"verdict": ev.get("verdict"), "gates": chain.get("gates", [])}, "     ")
    m = chain["model"]
    print(f"  <- Model {m['uri']} from Trainer {_exec_line(m['trainer'])}")
    print(f"     train_args {json.dumps(m['train_args'])} eval_args {json.dumps(m['eval_args'])}")
    print(f"     hyperparameters {json.dumps(m['hyperparameters'], sort_keys=True)}")
    print(f"     models_fingerprint {m['models_fingerprint']}  git_commit {m['git_commit'] or 'not recorded'}")
    t = chain["transform"]
    print(f"  <- Transform graph {t['graph_uri']} from {_exec_line(t['execution'])}")
    for ex in chain["examples"]:
        counts = ", ".join(f"{k}={v}" for k, v in ex["row_counts"].items()) or "unknown"
        print(f"  <- Examples {ex['uri']}: span {ex['span']}, version {ex['version']}, rows {counts}")
        print(f"     from {ex['input_base']} ({ex['input_fingerprint']})")
        print(f"     statistics {ex['statistics_uri']}")
        drift = ex.get("drift_check")
        if drift is not None:  # monitoring.pipeline_drift (docs/monitoring.md)
            against = f"span {drift['previous_span']}" if drift["previous_span"] is not None else "no previous span"
            found = ", ".join(f"{c['feature']} {c['distance']:.4f} > {c['threshold']:.4f}" for c in drift["alerts"])
            print(f"     drift check ({drift['mode']}) against {against}: {found or 'no drift'}")
    print(f"  <- Schema {chain['schema']['uri']}")
    for a in chain["anomalies"]:
        found = sum(len(v) for v in a["by_split"].values())
        print(f"  <- Anomalies {a['uri']}: {found or 'none'}")
        for split, lines in a["by_split"].items():
            for line in lines:
                print(f"     [{split}] {line}")
    return cli.EXIT_OK


# --- registration -----------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    cli.add_json_options(parser, "docs/registry.md")


def add_parser(subparsers) -> None:
    for name, help_, description, handler in (
        (
            "runs",
            "list pipeline runs, newest first, with their outcome",
            "Each pipeline run recorded in ML Metadata, newest first: start, duration, spans used and "
            "outcome (pushed version N, not blessed with the failed metric and bound, failed at a component with "
            "its error, incomplete, fully cached). Exit 0 (also when nothing has run yet).",
            _runs,
        ),
        (
            "models",
            "list pushed model versions and what serving would load",
            "Every pushed version (and rollback re-publication), newest first: push time, the "
            "thresholds it passed, its baseline, training spans, the run that produced it; and which versions a "
            "server would load now (latest, labels). Exit 0 (also when nothing has been pushed yet).",
            _models,
        ),
    ):
        p = subparsers.add_parser(name, help=help_, description=description)
        _common(p)
        p.set_defaults(func=cli.refusals(handler))

    p = subparsers.add_parser(
        "lineage",
        help="provenance of a pushed version, or the versions trained on a span",
        description="The chain of one pushed version: directory -> Pusher -> blessing/Evaluator -> Model/Trainer "
        "-> Transform -> Examples -> Schema, Statistics, anomalies. With --span N instead: the pushed versions "
        "trained on span N. Exit 2 for a version that was never pushed.",
    )
    p.add_argument("version", type=int, nargs="?", metavar="VERSION", help="a pushed version (see `mlpipe models`)")
    p.add_argument("--span", type=int, metavar="N", help="list the pushed versions trained on span N")
    _common(p)
    p.set_defaults(func=cli.refusals(_lineage))
