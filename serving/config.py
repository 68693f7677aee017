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
            policy = VersionPolicy("specific", versions=tuple(sorted(set(model.model_version_policy.specific.versions))))
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
