"""`mlpipe init` (scaffold a project for your own data and model) and `mlpipe schema` (infer once, pin)."""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from pipeline import cli

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def add_parser(sub) -> None:
    init = sub.add_parser(
        "init",
        help="scaffold a project for your own CSV data: config, module file, pinned schema",
        description="Create DIR with mlpipe.toml (commented), model.py (a TFX module file: preprocessing_fn "
        "and run_fn that run as they are), data/ (a copy of the CSV) and schema.pbtxt (inferred from the "
        "data once, pinned). Then: mlpipe run --config DIR/mlpipe.toml. Exit 0 created, 2 bad arguments "
        "or DIR not empty.",
    )
    init.add_argument("dir", metavar="DIR", help="project directory to create (must be empty or absent)")
    init.add_argument("--data", metavar="CSV", required=True, help="a CSV file with a header row: your dataset")
    init.add_argument(
        "--label", metavar="COLUMN", required=True, help="the CSV column to predict (integer class ids or class names)"
    )
    init.set_defaults(func=_init)

    schema = sub.add_parser(
        "schema",
        help="infer a schema from the CSV data once and write it for review and pinning",
        description="Run TFDV's schema inference over data.root's CSV files (or --data-root) and write the "
        "schema in text format. Review it, then pin it with data.schema (or --schema): ExampleGen then types "
        "each CSV column as the schema says, and ImportSchemaGen replaces per-run inference. "
        "Exit 0 written, 2 bad config or data.",
    )
    cli.add_config_options(schema)
    schema.add_argument("--data-root", metavar="DIR", help="directory of CSV files (data.root)")
    schema.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write schema.pbtxt")
    schema.add_argument(
        "--infer-feature-shape",
        action="store_true",
        default=None,
        help="dense features where every example has one value (data.infer_feature_shape)",
    )
    schema.set_defaults(func=_schema)


def _csv_files(root: Path) -> list[Path]:
    from pipeline.dag import inputs

    root = Path(root)
    if not root.is_dir():
        raise cli.CommandError(f"input data error: data directory {root} does not exist", cli.EXIT_USAGE)
    files = sorted(root.glob(inputs.CSV_PATTERN))
    if not files:
        raise cli.CommandError(f"input data error: {root} has no {inputs.CSV_PATTERN} files", cli.EXIT_USAGE)
    return files


def infer_and_write(csv_files: list[Path], output: Path, infer_feature_shape: bool) -> dict[str, str]:
    from pipeline import logs
    from pipeline.dag import dataset

    with logs.capture_output(output.parent / f".{output.name}.log", verbose=False):
        schema = dataset.infer_schema(csv_files, infer_feature_shape)
    (output.parent / f".{output.name}.log").unlink(missing_ok=True)
    dataset.write_schema(schema, output, ", ".join(str(p) for p in csv_files))
    return dataset.schema_column_types(output)


def _schema(args: argparse.Namespace) -> int:
    overrides = {"data.root": args.data_root, "data.infer_feature_shape": args.infer_feature_shape}
    config = cli.load_config(args, overrides)
    output = Path(args.output).resolve()
    types = infer_and_write(_csv_files(Path(config.data.root)), output, config.data.infer_feature_shape)
    print(f"mlpipe: wrote {output} ({len(types)} columns: {', '.join(f'{k} {v}' for k, v in types.items())})")
    print(f'mlpipe: review it, then pin it: data.schema = "{output}" in the config, or --schema {output}')
    return cli.EXIT_OK


def _init(args: argparse.Namespace) -> int:
    project = Path(args.dir).resolve()
    source = Path(args.data)
    if project.exists() and any(project.iterdir()):
        raise cli.CommandError(f"init: {project} is not empty; choose a new directory", cli.EXIT_USAGE)
    if not source.is_file():
        raise cli.CommandError(f"init: --data {source}: no such file", cli.EXIT_USAGE)
    with open(source, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        labels = {row[header.index(args.label)] for row in reader if args.label in header and row}
    if args.label not in header:
        raise cli.CommandError(
            f"init: --label {args.label!r} is not a column of {source} (columns: {', '.join(header)})", cli.EXIT_USAGE
        )
    labels.discard("")
    if len(labels) < 2:
        raise cli.CommandError(f"init: --label {args.label!r} has fewer than two classes in {source}", cli.EXIT_USAGE)
    (project / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, project / "data" / source.name)
    types = infer_and_write([project / "data" / source.name], project / "schema.pbtxt", infer_feature_shape=False)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in project.name) or "my-model"
    values = {
        "pipeline_name": name,
        "model_name": name,
        "label": args.label,
        "label_xf": f"{args.label}_xf",
        "num_classes": len(labels),
        "label_is_string": types[args.label] == "string",
    }
    (project / "mlpipe.toml").write_text((TEMPLATE_DIR / "mlpipe.toml").read_text().format(**values))
    (project / "model.py").write_text(
        (TEMPLATE_DIR / "model.py")
        .read_text()
        .replace("__LABEL__", args.label)
        .replace("__NUM_CLASSES__", str(len(labels)))
        .replace("__LABEL_IS_STRING__", str(values["label_is_string"]))
    )
    print(f"mlpipe: created {project}: mlpipe.toml, model.py, schema.pbtxt, data/{source.name}")
    print(f"mlpipe: {len(types)} columns, label {args.label!r} with {len(labels)} classes")
    print(f"mlpipe: next: mlpipe run --config {project / 'mlpipe.toml'}")
    return cli.EXIT_OK
