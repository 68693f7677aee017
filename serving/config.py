"""What the server serves: models, version policies, labels; read from flags or TF Serving's config file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class ServingConfigError(ValueError):
    """A serving flag or config file is invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1  # for latest
    versions: tuple[int, ...] = ()  # for specific

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to serve, out of the integer version directories found."""
        if self.kind == "all":
            return sorted(on_disk)
        if self.kind == "specific":
            return sorted(v for v in on_disk if v in self.versions)
        return sorted(on_disk)[-self.num_versions :] if on_disk else []

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


def parse_version_policy(text: str) -> VersionPolicy:
    """`latest`, `latest:N`, `all` or `specific:V1,V2`."""
    kind, _, arg = text.strip().partition(":")
    try:
        if kind == "latest":
            n = int(arg) if arg else 1
            if n < 1:
                raise ValueError
            return VersionPolicy("latest", num_versions=n)
        if kind == "all" and not arg:
            return VersionPolicy("all")
        if kind == "specific" and arg:
            versions = tuple(sorted({int(v) for v in arg.split(",")}))
            if any(v < 0 for v in versions):
                raise ValueError
            return VersionPolicy("specific", versions=versions)
    except ValueError:
        pass
    raise ServingConfigError(
        f"--version_policy {text!r} is not valid: use latest, latest:N (N >= 1), all, or specific:V1,V2"
    )


def parse_labels(text: str) -> dict[str, int]:
    """`stable=1,canary=2`."""
    labels: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, version = item.partition("=")
        if not sep or not name or not version.strip().isdigit():
            raise ServingConfigError(f"--version_labels item {item!r} is not valid: use LABEL=VERSION, e.g. stable=1")
        labels[name.strip()] = int(version)
    return labels


@dataclass(frozen=True)
class ModelEntry:
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: tuple[tuple[str, int], ...] = ()
    log_sampling_rate: float | None = None  # None: the server-wide --request_log_sampling_rate
    log_dir: str | None = None

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.labels)


def _check_name(name: str, where: str) -> None:
    if not name or "/" in name or ":" in name:
        raise ServingConfigError(f"{where}: model name {name!r} must be non-empty without '/' or ':'")


def entries_from_proto(config, base_dir: str = ".") -> list[ModelEntry]:
    """tensorflow.serving.ModelServerConfig -> entries; relative base paths are taken from `base_dir`."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ServingConfigError("custom_model_config is not supported: use model_config_list")
    entries, seen = [], set()
    for model in config.model_config_list.config:
        _check_name(model.name, "model_config_list")
        if model.name in seen:
            raise ServingConfigError(f"model_config_list: model {model.name!r} is listed twice")
        seen.add(model.name)
        if not model.base_path:
            raise ServingConfigError(f"model_config_list: model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ServingConfigError(
                f"model {model.name!r}: model_platform {model.model_platform!r} is not supported (only tensorflow)"
            )
        which = model.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            policy = VersionPolicy("all")
        elif which == "specific":
            if not model.model_version_policy.specific.versions:
                raise ServingConfigError(f"model {model.name!r}: specific version policy lists no versions")
            policy = VersionPolicy(
                "specific", versions=tuple(sorted(set(model.model_version_policy.specific.versions)))
            )
        elif which == "latest":
            n = model.model_version_policy.latest.num_versions or 1
            policy = VersionPolicy("latest", num_versions=n)
        else:
            policy = VersionPolicy()
        rate, log_dir = None, None
        if model.HasField("logging_config"):
            rate = model.logging_config.sampling_config.sampling_rate
            if not 0.0 <= rate <= 1.0:
                raise ServingConfigError(f"model {model.name!r}: sampling_rate must be in [0, 1], got {rate}")
            log_dir = model.logging_config.log_collector_config.filename_prefix or None
        base_path = model.base_path if os.path.isabs(model.base_path) else os.path.join(base_dir, model.base_path)
        entries.append(
            ModelEntry(
                name=model.name,
                base_path=os.path.abspath(base_path),
                policy=policy,
                labels=tuple(sorted(model.version_labels.items())),
                log_sampling_rate=rate,
                log_dir=log_dir,
            )
        )
    return entries


def parse_model_config_text(text: str, base_dir: str = "."):
    """ModelServerConfig in protobuf text format -> (proto, entries)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ServingConfigError(
            f"model config is not a valid ModelServerConfig text proto: {e} "
            '(expected e.g. model_config_list { config { name: "taxi" base_path: "/models/taxi" } })'
        ) from None
    return config, entries_from_proto(config, base_dir)


def read_model_config_file(path: str) -> list[ModelEntry]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ServingConfigError(f"--model_config_file: cannot read {path}: {e.strerror}") from None
    _, entries = parse_model_config_text(text, os.path.dirname(os.path.abspath(path)))
    if not entries:
        raise ServingConfigError(f"--model_config_file {path} lists no models")
    return entries


# ---- many models under one serving root, no hand-edited config ------------------------------------

MODEL_CONFIG_FILE = "model.config"  # optional, in a discovered model's directory: a ModelConfig text proto


def _is_version_name(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _subdirs(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n)))


def is_serving_root(path: str) -> bool:
    """A directory of model directories: it has subdirectories and none of them is an integer version."""
    names = _subdirs(path)
    return bool(names) and not any(_is_version_name(n) for n in names)


@dataclass(frozen=True)
class ModelRoot:
    """A serving root: every model directory under `path` is served; `policy` unless its model.config says otherwise."""

    path: str
    policy: VersionPolicy = field(default_factory=VersionPolicy)


def read_discovered_model(root: ModelRoot, name: str) -> ModelEntry:
    """The entry for `<root>/<name>`: its model.config (model_version_policy, version_labels, logging_config)
    if there is one, else the root's default policy. Raises ServingConfigError for a bad model.config."""
    base_path = os.path.join(root.path, name)
    config_path = os.path.join(base_path, MODEL_CONFIG_FILE)
    if not os.path.isfile(config_path):
        return ModelEntry(name=name, base_path=base_path, policy=root.policy)
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    try:
        with open(config_path) as f:
            text_format.Parse(f.read(), model)
    except OSError as e:
        raise ServingConfigError(f"{config_path}: cannot read it: {e.strerror}") from None
    except text_format.ParseError as e:
        raise ServingConfigError(
            f"{config_path} is not a valid ModelConfig text proto: {e} "
            '(expected e.g. model_version_policy { latest { num_versions: 2 } } version_labels { key: "stable" value: 1 })'
        ) from None
    if model.name and model.name != name:
        raise ServingConfigError(
            f"{config_path}: name {model.name!r} differs from its directory name {name!r}; drop it"
        )
    if model.base_path and os.path.abspath(os.path.join(base_path, model.base_path)) != os.path.abspath(base_path):
        raise ServingConfigError(f"{config_path}: base_path is its own directory; drop it")
    model.name, model.base_path = name, base_path
    entry = entries_from_proto(config, base_path)[0]
    if not model.model_version_policy.WhichOneof("policy_choice"):
        entry = ModelEntry(
            entry.name, entry.base_path, root.policy, entry.labels, entry.log_sampling_rate, entry.log_dir
        )
    return entry


def discover_models(
    root: ModelRoot, previous: dict[str, ModelEntry] | None = None
) -> tuple[dict[str, ModelEntry], list[str]]:
    """Model directories under `root` -> ({name: entry}, problems). A model whose model.config is bad keeps
    its `previous` entry (if it had one) and is reported in problems."""
    entries, problems = {}, []
    for name in _subdirs(root.path):
        if _is_version_name(name):
            problems.append(f"{os.path.join(root.path, name)} looks like a version directory, not a model; skipped")
            continue
        if ":" in name:
            problems.append(f"{os.path.join(root.path, name)}: a model name cannot contain ':'; skipped")
            continue
        try:
            entries[name] = read_discovered_model(root, name)
        except ServingConfigError as e:
            problems.append(
                f"{e}; "
                + ("keeping its previous settings" if previous and name in previous else "not serving it until fixed")
            )
            if previous and name in previous:
                entries[name] = previous[name]
    return entries, problems
