"""What serving would load: the integer version directories under serving_model/<name> and the labels
in models.config (TF Serving's ModelServerConfig), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Config
from pipeline.metadata.snapshot import RegistryError


def serving_versions(config: Config) -> list[int]:
    """Integer version directories (the only ones TF Serving and our server load), ascending."""
    base = config.serving_model_dir
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())


def models_config_path(config: Config) -> Path:
    return config.models_config_path


def read_labels(config: Config) -> dict[str, int]:
    """{label: version} from the workspace's models.config ({} if there is none)."""
    path = models_config_path(config)
    if not path.is_file():
        return {}
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise RegistryError(f"{path} is not a valid ModelServerConfig text proto ({e}); fix or delete it") from None
    for model in parsed.model_config_list.config:
        if model.name == config.model_name:
            return dict(sorted(model.version_labels.items()))
    return {}


def write_models_config(config: Config, labels: dict[str, int]) -> Path:
    """Writes models.config: the model, a specific-versions policy (latest + every labelled one), labels."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    on_disk = serving_versions(config)
    wanted = set(labels.values()) | ({on_disk[-1]} if on_disk else set())
    server = model_server_config_pb2.ModelServerConfig()
    model = server.model_config_list.config.add()
    model.name = config.model_name
    model.base_path = str(config.serving_model_dir)
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(sorted(wanted))
    for label, version in sorted(labels.items()):
        model.version_labels[label] = version
    path = models_config_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text_format.MessageToString(server))
    os.replace(tmp, path)  # atomic: a polling server never reads half a file
    return path


def serving_state(config: Config) -> dict:
    """What a server started on this workspace would load now."""
    on_disk = serving_versions(config)
    labels = read_labels(config)
    latest = on_disk[-1] if on_disk else None
    config_path = models_config_path(config)
    if config_path.is_file():
        loaded = sorted(set(labels.values()) | ({latest} if latest is not None else set()))
    else:
        loaded = [latest] if latest is not None else []
    return {
        "base_path": str(config.serving_model_dir),
        "model_config_file": str(config_path) if config_path.is_file() else None,
        "latest": latest,
        "labels": labels,
        "loaded": [v for v in loaded if v in on_disk],
        "versions_on_disk": on_disk,
    }


def set_label(config: Config, name: str, version: int) -> Path:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise RegistryError(f"label name must be letters, digits, '-' or '_', got {name!r}", code=2)
    on_disk = serving_versions(config)
    if version not in on_disk:
        available = ", ".join(map(str, on_disk)) or "none yet"
        raise RegistryError(f"version {version} is not in {config.serving_model_dir} (available: {available})", code=2)
    labels = read_labels(config)
    labels[name] = version
    return write_models_config(config, labels)


def remove_label(config: Config, name: str) -> Path:
    labels = read_labels(config)
    if name not in labels:
        raise RegistryError(f"no label {name!r} (labels: {', '.join(labels) or 'none'})", code=2)
    del labels[name]
    return write_models_config(config, labels)
