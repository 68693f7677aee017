"""The import-layer contract (pyproject.toml [tool.importlinter], docs/architecture.md) holds, and fails on an
upward import: `lint-imports` is what `make lint` (and so `make test` and CI) runs."""

import ast
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


# The workspace layout's names: each path under a workspace is built by pipeline/config.py (Config's
# properties), never joined by hand elsewhere.
WORKSPACE_NAMES = {
    "request_logs",
    "serving_model",
    ".retrain.lock",
    "models.config",
    "traffic_logs",
    "metadata.sqlite",
    "pipeline_root",
    "logs",
    "monitoring",
    "baselines",
    "history.jsonl",
    "reports",
    "release_hold",
}
# serving/traffic.py: a stock TF-Serving-style server has no workspace, only --model_config_file; its
# traffic logs default to traffic_logs/ beside that file (Config.traffic_log_root is the same place).
NOT_WORKSPACE_PATHS = {("serving/traffic.py", "traffic_logs")}


def _hand_built_workspace_paths(root: Path) -> list[str]:
    found = []
    for path in sorted([*root.glob("pipeline/**/*.py"), *root.glob("serving/**/*.py")]):
        rel = path.relative_to(root).as_posix()
        if rel == "pipeline/config.py" or rel.startswith("pipeline/templates/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            operands = []
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                operands = [node.left, node.right]
            elif isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("join", "Path", "joinpath", "with_name"):
                    operands = node.args
            for op in operands:
                if isinstance(op, ast.Constant) and isinstance(op.value, str):
                    name = op.value.strip("/")
                    if name in WORKSPACE_NAMES and (rel, name) not in NOT_WORKSPACE_PATHS:
                        found.append(f"{rel}:{node.lineno}: {op.value!r}")
    return found


def test_every_workspace_path_comes_from_the_config_object():
    assert _hand_built_workspace_paths(ROOT) == []


def test_a_hand_built_workspace_path_is_found(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "pipeline" / "ops" / "runner.py", "a") as f:
        f.write('\n\ndef _logs(config):\n    return config.workspace_path / "request_logs"\n')
    assert [line.split(":", 1)[0] for line in _hand_built_workspace_paths(root)] == ["pipeline/ops/runner.py"]
