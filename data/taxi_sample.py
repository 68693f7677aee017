"""The embedded default dataset: the Chicago taxi sample CSV shipped inside the tfx package.

It is materialized (copied) into ``data/taxi/`` on first use so that the pipeline reads it from a
directory of its own; the copy is git-ignored.
"""

import importlib.util
import shutil
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "taxi"
SAMPLE_IN_TFX = ("examples", "chicago_taxi_pipeline", "data", "simple", "data.csv")


def source_csv() -> Path:
    """Path of the sample inside the installed tfx package (found without importing tfx)."""
    spec = importlib.util.find_spec("tfx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the tfx package is not installed; run `make setup`")
    path = Path(spec.submodule_search_locations[0]).joinpath(*SAMPLE_IN_TFX)
    if not path.is_file():
        raise FileNotFoundError(f"the taxi sample is missing from the tfx package: {path}")
    return path


def materialize(dest_dir: Path = DEFAULT_DIR) -> Path:
    """Copies the sample to `dest_dir`/data.csv unless it is there already; returns the directory."""
    dest = Path(dest_dir) / "data.csv"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".csv.tmp")
        shutil.copyfile(source_csv(), tmp)
        tmp.replace(dest)
    return dest.parent
