"""The import-layer contract (pyproject.toml [tool.importlinter], docs/architecture.md) holds, and fails on an
upward import: `lint-imports` is what `make lint` (and so `make test` and CI) runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT_IMPORTS)], cwd=root, env=env, capture_output=True, text=True)


def _copy_tree(tmp_path: Path) -> Path:
    for name in ("pipeline", "serving", "models", "data"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_in_the_library_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "pipeline" / "dag" / "inputs.py", "a") as f:
        f.write("\nfrom pipeline import cli as _upward  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "pipeline.dag is not allowed to import pipeline.cli" in result.stdout
    assert "pipeline.dag.inputs -> pipeline.cli" in result.stdout


def test_serving_importing_the_pipeline_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "serving" / "inference.py", "a") as f:
        f.write("\nfrom pipeline.ops import runner as _orchestration  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "serving.inference -> pipeline.ops.runner" in result.stdout
