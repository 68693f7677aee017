"""`mlpipe rollback | label`: changing what serves, through the audited paths of pipeline/publish.

See docs/registry.md (Rollback, Labels) for the output, the JSON schemas and the exit codes.
"""

from __future__ import annotations

import argparse

from pipeline import cli
from pipeline.publish import promotion
from pipeline.publish import rollback as rollback_lib
from pipeline.publish import versions as on_disk


def _rollback(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    result = rollback_lib.rollback(config, args.to, args.reason, dry_run=args.dry_run)
    result["label_moves"] = promotion.after_rollback(config, result)
    if args.json:
        cli.print_json(result)
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
        print(f"mlpipe: {cli.recorded(result)}")
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
    cli.print_json(state) if args.json else _print_labels(state)
    return cli.EXIT_OK


def _label_set(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    move = promotion.move_label(config, args.name, args.version, args.reason, wait_url=args.wait_server)
    path = move["models_config"]
    state = _label_state(config)
    if args.json:
        cli.print_json({**state, "move": move})
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
        cli.print_json({"moves": moves})
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
    cli.print_json(_label_state(config)) if args.json else print(f"mlpipe: removed label {args.name} from {path}")
    return cli.EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    cli.add_json_options(parser, "docs/registry.md")


def add_parser(subparsers) -> None:
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
    p.set_defaults(func=cli.refusals(_rollback))

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
    q.set_defaults(func=cli.refusals(_label_set))
    q = label_sub.add_parser(
        "history",
        help="every label move: who, when, from, to, why",
        description="Every label move recorded in ML Metadata (label set/remove, and rollbacks, which move "
        "'(latest)' and the labels of the replaced version), newest first.",
    )
    q.add_argument("--label", metavar="NAME", help="only this label's moves")
    _common(q)
    q.set_defaults(func=cli.refusals(_label_history))
    q = label_sub.add_parser("list", help="show the labels", description="Show the labels and their versions.")
    _common(q)
    q.set_defaults(func=cli.refusals(_label_list))
    q = label_sub.add_parser("remove", help="delete a label", description="Delete label NAME.")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--reason", default="", metavar="TEXT", help="why (kept in ML Metadata)")
    _common(q)
    q.set_defaults(func=cli.refusals(_label_remove))
