"""The user's model code, named by [model], and the Trainer's post-training export step.

A ``model.module_file`` (TFX's convention: ``preprocessing_fn`` and ``run_fn`` in one file) is loaded
by file path under a private module name, with its directory on ``sys.path`` and mlpipe's own
top-level packages (``models``, ``data``, ``pipeline``, ``serving``) set aside while it imports: a
user's ``models/`` package is the user's, and mlpipe's stays mlpipe's. Transform and Trainer reach
it through the two shims below (``preprocessing_fn``, ``run_fn``), which read the settings from
their ``custom_config``. The ``run_fn`` shim always ends with the serving contract
(models/signatures.py), so the pushed model has the documented signatures whatever run_fn saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

from models import features
from pipeline.config import ConfigError

MODELS_DIR = Path(features.__file__).resolve().parent  # mlpipe's own model code
MLPIPE_PACKAGES = ("models", "data", "pipeline", "serving")
SETTINGS_KEY = "mlpipe_model"  # the Transform's and Trainer's custom_config key holding [model]
PREPROCESSING_SHIM = "pipeline.dag.user_code.preprocessing_fn"
RUN_SHIM = "pipeline.dag.user_code.run_fn"
ORIGINAL_EXPORT = "run_fn_export"  # under the Trainer's model_run dir: what run_fn saved, kept for reference
ROLES = {"preprocessing_fn": "Transform's", "run_fn": "Trainer's"}

_loaded: dict[str, object] = {}  # module file key -> module
_private: dict[str, object] = {}  # the user's own modules named like mlpipe's packages, kept out of sys.modules


class UserCodeError(ConfigError):
    """The user's code or its [model] settings do not fit; one line naming the setting to change."""


def settings(model_config) -> dict:
    """[model] as the plain JSON value that travels in custom_config."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model_config).items()}


def transform_settings(model_config) -> dict:
    """The part of [model] Transform needs (a change elsewhere does not re-run it)."""
    return {k: v for k, v in settings(model_config).items() if k in ("module_file", "preprocessing_fn")}


def _is_ours(name: str) -> bool:
    return name.split(".")[0] in MLPIPE_PACKAGES


def load_module_file(path: str | os.PathLike):
    """Imports the module file at `path` under a private name (cached by path and content)."""
    path = Path(path).resolve()
    source = path.read_bytes()
    digest = hashlib.sha256(str(path).encode() + b"\0" + source).hexdigest()[:12]
    key = f"_mlpipe_user_{digest}_{path.stem}"
    if key in _loaded:
        return _loaded[key]
    # TFX modules use tf.keras; tf.Transform's Keras layer is Keras 2 (tf_keras), as in models/model.py.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    ours = {name: module for name, module in sys.modules.items() if _is_ours(name)}
    for name in ours:
        del sys.modules[name]
    before = set(sys.modules)
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(key, None)
        raise UserCodeError("model.module_file", f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(path.parent))
        for name in set(sys.modules) - before:
            if _is_ours(name):  # the user's own package of that name: theirs, but not in sys.modules
                _private[f"{key}:{name}"] = sys.modules.pop(name)
        sys.modules.update(ours)
    _loaded[key] = module
    return module


def _import_path(dotted: str, setting: str):
    module_name, _, attr = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserCodeError(
            f"model.{setting}", f"cannot import {module_name} ({e}); set model.module_file to load your file by path"
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserCodeError(f"model.{setting}", f"{module_name} ({module.__file__}) has no function {attr}")
    return fn


def user_fn(model_settings: dict, name: str):
    """The user's `preprocessing_fn` or `run_fn`, from model.module_file or the import path."""
    module_file = model_settings.get("module_file")
    if module_file:
        fn = getattr(load_module_file(module_file), name, None)
        if not callable(fn):
            raise UserCodeError(
                "model.module_file",
                f"{module_file} defines no {name} (the {ROLES[name]} entry point); "
                f"add def {name}(...) to it, or point model.module_file at the file that has it",
            )
        return fn
    return _import_path(model_settings[name], name)


def check(model_config, record: Path | None = None) -> None:
    """Loads the user's code and finds both functions, so a missing one fails before anything runs.

    With `record` (Config.user_code_check_path), a check that passes writes its key there (check_key),
    and the next check with the same key returns without importing the code: nothing the check reads
    changed, and loading it (TensorFlow, Keras, tf.Transform) is most of a fully cached run's seconds.
    """
    try:
        key = check_key(model_config) if record else None
    except (UserCodeError, OSError):  # the full check below says what is wrong, naming the setting
        key = None
    if key is not None:
        try:
            if json.loads(record.read_text()).get("key") == key:
                return
        except (OSError, ValueError, AttributeError):
            pass
    model_settings = settings(model_config)
    for name in ROLES:
        user_fn(model_settings, name)
    if key is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key}) + "\n")
        tmp.replace(record)


def check_key(model_config) -> str:
    """What a passing check depends on: the code (code_fingerprint, the cache's own key for the code),
    where it is loaded from (the [model] entry points) and the interpreter that imports it."""
    inputs = {
        "code": code_fingerprint(model_config),
        "module_file": str(Path(model_config.module_file).resolve()) if model_config.module_file else None,
        "entry_points": [model_config.preprocessing_fn, model_config.run_fn],
        "python": [sys.executable, sys.version],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _py_files(root: Path) -> list[Path]:
    """The .py files of a directory and of its packages (subdirectories with __init__.py)."""
    if root.is_file():
        return [root]
    files = sorted(root.glob("*.py"))
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        files += _py_files(sub)
    return files


def code_roots(model_config) -> list[Path]:
    """Directories (or files) whose Python code decides the Transform's and Trainer's output."""
    if model_config.module_file:
        roots = [Path(model_config.module_file).resolve().parent]
    else:
        roots = []
        for dotted in (model_config.preprocessing_fn, model_config.run_fn):
            spec = importlib.util.find_spec(dotted.split(".")[0])
            if spec is None:
                raise UserCodeError(
                    f"model.{'run_fn' if dotted == model_config.run_fn else 'preprocessing_fn'}",
                    f"no module {dotted.split('.')[0]} on the Python path",
                )
            location = spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin
            roots.append(Path(location).resolve())
    # The serving contract is part of the Trainer's output (found, not imported: it imports TensorFlow).
    roots.append(Path(importlib.util.find_spec("models.signatures").origin).resolve())
    unique = sorted(set(roots))
    return [r for r in unique if not any(other != r and other.is_dir() and other in r.parents for other in unique)]


def models_fingerprint(models_dir: Path = MODELS_DIR) -> str:
    """SHA-256 over the model code's .py files, so the cache sees changes to models/."""
    digest = hashlib.sha256()
    for path in sorted(models_dir.rglob("*.py")):
        digest.update(path.relative_to(models_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_fingerprint(model_config) -> str:
    """SHA-256 over the user's code and the serving contract, so the cache sees any edit."""
    roots = code_roots(model_config)
    if len(roots) == 1 and roots[0].is_dir():
        return models_fingerprint(roots[0])
    digest = hashlib.sha256()
    for root in roots:
        for path in _py_files(root):
            digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- the shims Transform and Trainer import --------------------------------------------------------


def preprocessing_fn(inputs, custom_config):
    """Transform's preprocessing_fn: the user's, from model.module_file."""
    fn = user_fn(custom_config[SETTINGS_KEY], "preprocessing_fn")
    if "custom_config" in inspect.signature(fn).parameters:
        return fn(inputs, custom_config=custom_config)
    return fn(inputs)


def run_fn(fn_args):
    """Trainer's run_fn: checks the label, runs the user's run_fn, then gives its export the serving contract."""
    import tensorflow_transform as tft

    from models import signatures

    s = fn_args.custom_config[SETTINGS_KEY]
    output = tft.TFTransformOutput(fn_args.transform_output)
    transformed = sorted(output.transformed_feature_spec())
    if s["label_key"] not in transformed:
        raise UserCodeError(
            "model.label_key",
            f"{s['label_key']!r} is not among the transformed examples' features ({', '.join(transformed)}); "
            "set model.label_key to the label preprocessing_fn outputs",
        )
    user_fn(s, "run_fn")(fn_args)
    if not s["serving_contract"] or signatures.has_contract(fn_args.serving_model_dir, s["task"]):
        return
    try:
        signatures.rebuild(
            fn_args.serving_model_dir,
            output,
            raw_label_keys=tuple(s["raw_label_keys"]),
            serving_features=tuple(s["serving_features"]),
            task=s["task"],
            logits=s["output"] == "logits",
            keep_original=os.path.join(fn_args.model_run_dir, ORIGINAL_EXPORT),
        )
    except signatures.ServingContractError as e:
        raise UserCodeError("serving contract", str(e)) from e
