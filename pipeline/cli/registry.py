"""`mlpipe runs | models | lineage | rollback | label`: the model registry view over ML Metadata.

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
from pipeline.publish import approvals, promotion
from pipeline.publish import rollback as rollback_lib
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


def _dump(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str))


def _guard(handler):
    """Turns registry refusals into the CLI's one-line errors with their exit codes."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except snapshot_lib.RegistryError as e:
            raise cli.CommandError(str(e), e.code) from None

    return run


# --- runs -------------------------------------------------------------------------------------


def _runs(args: argparse.Namespace) -> int:
    config, snap = _snapshot(args)
    rows = runs_lib.list_runs(snap) if snap is not None else []
    if not rows:
        return _nothing_yet(config, args, {"runs": []})
    if args.json:
        _dump({"workspace": str(config.workspace_path), "runs": rows})
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
        _dump({"workspace": str(config.workspace_path), "serving": serving, "versions": records, "refused": refused})
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
            _dump({"span": args.span, "versions": versions})
        elif versions:
            print(f"Versions trained on span {args.span}: {', '.join(map(str, versions))}")
        else:
            print(f"No pushed version was trained on span {args.span}")
        return cli.EXIT_OK
    chain = lineage_lib.lineage(snap, args.version)
    if args.json:
        _dump(chain)
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


# --- rollback ---------------------------------------------------------------------------------


def _rollback(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    result = rollback_lib.rollback(config, args.to, args.reason, dry_run=args.dry_run)
    result["label_moves"] = promotion.after_rollback(config, result)
    if args.json:
        _dump(result)
    elif args.dry_run:
        print(
            f"mlpipe: dry run: would re-publish version {result['to_version']} as version "
            f"{result['new_version']} ({result['path']}), replacing {result['replaced_version']}"
        )
    else:
        print(
            f"mlpipe: rolled back: version {result['to_version']} re-published as version "
            f"{result['new_version']} ({result['path']}), replacing {result['replaced_version']}"
        )
        print(f"mlpipe: recorded as MLMD execution {result['execution_id']} by {result['user']}: {result['reason']}")
        if result["models_config"]:
            print(f"mlpipe: updated {result['models_config']} to load the new version")
    return cli.EXIT_OK


# --- label ------------------------------------------------------------------------------------


def _label_state(config) -> dict:
    serving = on_disk.serving_state(config)
    return {
        "model_config_file": str(on_disk.models_config_path(config)),
        "labels": serving["labels"],
        "latest": serving["latest"],
        "loaded": serving["loaded"],
    }


def _print_labels(state: dict) -> None:
    if not state["labels"]:
        print(f"mlpipe: no labels yet ({state['model_config_file']}); set one with `mlpipe label set stable VERSION`")
    for label, version in state["labels"].items():
        print(f"{label:<16} {version}")


def _label_list(args: argparse.Namespace) -> int:
    state = _label_state(cli.load_config(args))
    _dump(state) if args.json else _print_labels(state)
    return cli.EXIT_OK


def _label_set(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    move = promotion.move_label(config, args.name, args.version, args.reason, wait_url=args.wait_server)
    path = move["models_config"]
    state = _label_state(config)
    if args.json:
        _dump({**state, "move": move})
    else:
        print(
            f"mlpipe: {args.name} -> version {args.version} in {path} (was {move['from_version'] or 'unset'}; "
            f"recorded as MLMD execution {move['execution_id']})"
        )
        if "server_confirmed_seconds" in move:
            print(
                f"mlpipe: the server at {args.wait_server} answers {args.name} with version {args.version} "
                f"(after {move['server_confirmed_seconds']}s: loaded and warmed up before the label moved)"
            )
        print(f"mlpipe: serve with: mlpipe serve --model_config_file {path}")
    return cli.EXIT_OK


def _label_history(args: argparse.Namespace) -> int:
    moves = promotion.label_history(cli.load_config(args), args.label)
    if args.json:
        _dump({"moves": moves})
    elif not moves:
        print("mlpipe: no label moves recorded yet; move one with `mlpipe label set stable VERSION --reason TEXT`")
    for m in [] if args.json else moves:
        print(
            f"{m['time']}  {m['user']:<10} {m['label']:<10} {m['from_version'] or '-'} -> {m['to_version'] or '-'}  {m['reason']}"
        )
    return cli.EXIT_OK


def _label_remove(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    path = promotion.move_label(config, args.name, None, args.reason)["models_config"]
    _dump(_label_state(config)) if args.json else print(f"mlpipe: removed label {args.name} from {path}")
    return cli.EXIT_OK


# --- registration -----------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    cli.add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (schema in docs/registry.md)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "runs",
        help="list pipeline runs, newest first, with their outcome",
        description="Each pipeline run recorded in ML Metadata, newest first: start, duration, spans used and "
        "outcome (pushed version N, not blessed with the failed metric and bound, failed at a component with "
        "its error, incomplete, fully cached). Exit 0 (also when nothing has run yet).",
    )
    _common(p)
    p.set_defaults(func=_guard(_runs))

    p = subparsers.add_parser(
        "models",
        help="list pushed model versions and what serving would load",
        description="Every pushed version (and rollback re-publication), newest first: push time, the "
        "thresholds it passed, its baseline, training spans, the run that produced it; and which versions a "
        "server would load now (latest, labels). Exit 0 (also when nothing has been pushed yet).",
    )
    _common(p)
    p.set_defaults(func=_guard(_models))

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
    p.set_defaults(func=_guard(_lineage))

    p = subparsers.add_parser(
        "rollback",
        help="serve an earlier blessed version again (re-published as a new highest version)",
        description="Copies an earlier blessed version into a temporary, non-integer directory in the model base "
        "directory and renames it atomically to (highest version + 1), so TF Serving and `mlpipe serve` load it "
        "without a restart; records an mlpipe.Rollback execution in ML Metadata with the reason and the user. "
        "Exit 1 when refused (nothing earlier, never blessed, already served), 2 for an unknown version.",
    )
    p.add_argument(
        "--to",
        type=int,
        metavar="VERSION",
        help="the version to serve (default: the blessed version pushed before the current one)",
    )
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in ML Metadata)")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    _common(p)
    p.set_defaults(func=_guard(_rollback))

    p = subparsers.add_parser(
        "label",
        help="TF Serving version labels (stable, canary) in serving_model/models.config",
        description="Maintain version labels in <workspace>/serving_model/models.config (TF Serving "
        "ModelServerConfig text format; its version policy loads every labelled version plus the latest). "
        "Serve it with `mlpipe serve --model_config_file workspace/serving_model/models.config`.",
    )
    label_sub = p.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    q = label_sub.add_parser("set", help="point a label at a version", description="Point label NAME at VERSION.")
    q.add_argument("name", metavar="NAME", help="label, e.g. stable or canary")
    q.add_argument("version", type=int, metavar="VERSION", help="a version directory under serving_model/<model>/")
    q.add_argument("--reason", default="", metavar="TEXT", help="why (kept in ML Metadata, see `label history`)")
    q.add_argument(
        "--wait-server",
        metavar="URL",
        help="wait until the server at URL (e.g. http://127.0.0.1:8501) "
        "answers the label with VERSION: it loads and warms the version before moving the label",
    )
    _common(q)
    q.set_defaults(func=_guard(_label_set))
    q = label_sub.add_parser(
        "history",
        help="every label move: who, when, from, to, why",
        description="Every label move recorded in ML Metadata (label set/remove, and rollbacks, which move "
        "'(latest)' and the labels of the replaced version), newest first.",
    )
    q.add_argument("--label", metavar="NAME", help="only this label's moves")
    _common(q)
    q.set_defaults(func=_guard(_label_history))
    q = label_sub.add_parser("list", help="show the labels", description="Show the labels and their versions.")
    _common(q)
    q.set_defaults(func=_guard(_label_list))
    q = label_sub.add_parser("remove", help="delete a label", description="Delete label NAME.")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--reason", default="", metavar="TEXT", help="why (kept in ML Metadata)")
    _common(q)
    q.set_defaults(func=_guard(_label_remove))
