"""Model versions on disk -> loaded servables, the way TF Serving's ServerCore manages them.

Each poll lists the integer subdirectories of every model's base path, applies the version policy
to the complete ones (those with a saved_model.pb), loads and warms up new versions before they
take traffic, and unloads versions that left the policy once a wanted version is available and
their in-flight requests are done. A load that fails is retried on later polls (up to
max_num_load_retries, or again whenever the directory's files change); the old version keeps
serving meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from serving import inference
from serving.config import ModelEntry, ModelRoot, discover_models
from serving.errors import Code, ServingError, from_exception, invalid, not_found
from serving.lineage import mlmd_uuid
from serving.servable import Servable, is_complete

log = logging.getLogger("serving.manager")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionSlot:
    version: int
    path: str
    state: str = START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    failures: int = 0
    fingerprint: tuple = ()


class _Model:
    def __init__(self, entry: ModelEntry):
        self.entry = entry
        self.slots: dict[int, VersionSlot] = {}
        self.warned_missing = False


def _fingerprint(path: str) -> tuple:
    items = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


def version_dirs(base_path: str) -> dict[int, str]:
    """Integer-named subdirectories of `base_path` (others, like tmp dirs, are ignored)."""
    found = {}
    try:
        names = os.listdir(base_path)
    except OSError:
        return found
    for name in names:
        full = os.path.join(base_path, name)
        if name.isascii() and name.isdigit() and os.path.isdir(full):
            version = int(name)
            if version < 2**63:
                found[version] = full
    return found


class ModelManager:
    def __init__(
        self,
        entries: list[ModelEntry],
        *,
        poll_seconds: float = 1.0,
        tags: tuple[str, ...] = ("serve",),
        warmup: bool = True,
        warmup_iterations: int = 1,
        max_load_retries: int = 5,
        runner=None,
        metrics=None,
        roots: list[ModelRoot] | None = None,
    ):
        self.poll_seconds = poll_seconds
        self.tags = tags
        self.warmup = warmup
        self.warmup_iterations = warmup_iterations
        self.max_load_retries = max_load_retries
        self.runner = runner  # the batch scheduler, or None
        self.metrics = metrics
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)
        self._poll_lock = threading.Lock()
        self._models: dict[str, _Model] = {e.name: _Model(e) for e in entries}
        self._explicit = list(entries)  # from flags, the config file or a reload request
        self.roots = list(roots or [])  # serving roots whose model directories are discovered on each poll
        self._discovered: dict[str, ModelEntry] = {}
        self._problems: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unloaders: list[threading.Thread] = []
        self.stopping = False

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Loads what is on disk now, then keeps polling in the background."""
        self.poll_once()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-poll", daemon=True)
            self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a poll must never kill the poller
                log.exception("polling model directories failed; will poll again")

    def stop(self, timeout: float = 30.0) -> None:
        """Stops polling, refuses new requests, waits for in-flight ones and unloads everything."""
        self._stop.set()
        with self._lock:
            self.stopping = True
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for model in self._models.values():
                for slot in model.slots.values():
                    if slot.state == AVAILABLE:
                        self._begin_unload(model, slot)
        for t in list(self._unloaders):
            t.join(timeout)

    # ---- polling ----------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [m.entry for m in self._models.values()]

    def poll_once(self, names: list[str] | None = None) -> None:
        with self._poll_lock:
            if self.roots and names is None:
                self._discover()
            with self._lock:
                models = [m for n, m in self._models.items() if names is None or n in names]
            for model in models:
                if not self._stop.is_set():
                    self._sync(model)

    def _sync(self, model: _Model, entry: ModelEntry | None = None, unload: bool = True) -> None:
        """Loads what `entry` (default: the model's own) aspires to; with `unload`, unloads the rest."""
        entry = entry or model.entry
        if not os.path.isdir(entry.base_path):
            if not model.warned_missing:
                log.warning(
                    "model %s: base path %s does not exist yet; serving nothing for it until a version "
                    "directory (e.g. %s/1/saved_model.pb) appears (push a model first)",
                    entry.name,
                    entry.base_path,
                    entry.base_path,
                )
                model.warned_missing = True
            on_disk = {}
        else:
            model.warned_missing = False
            on_disk = version_dirs(entry.base_path)
        complete = {v: p for v, p in on_disk.items() if is_complete(p)}
        aspired = set(entry.policy.select(sorted(complete)))

        for version in sorted(aspired, reverse=True):  # newest first: it is the one clients want
            self._maybe_load(model, version, complete[version])
        if not unload:
            return

        with self._lock:
            any_aspired_up = any(model.slots[v].state == AVAILABLE for v in aspired if v in model.slots)
            for version, slot in list(model.slots.items()):
                if version in aspired:
                    continue
                if slot.state == AVAILABLE and (any_aspired_up or version not in on_disk):
                    self._begin_unload(model, slot)
                elif slot.state == END and slot.servable is None and version not in on_disk:
                    del model.slots[version]  # gone from disk and not loaded: forget it

    def _maybe_load(self, model: _Model, version: int, path: str) -> None:
        with self._lock:
            slot = model.slots.get(version)
            if slot is None:
                slot = model.slots[version] = VersionSlot(version, path)
            if slot.state in (AVAILABLE, LOADING, UNLOADING):
                return
            fingerprint = _fingerprint(path)
            if slot.failures:
                changed = fingerprint != slot.fingerprint
                if not changed and slot.failures > self.max_load_retries:
                    return
                if changed:
                    slot.failures = 0
            slot.fingerprint = fingerprint
            slot.state = LOADING
        name = model.entry.name
        log.info("model %s: loading version %d from %s", name, version, path)
        try:
            servable = Servable(name, version, path, self.tags)
            servable.runner = self.runner
            servable.metrics = self.metrics
            warmed = inference.warm_up(servable, self.warmup_iterations) if self.warmup else 0
        except Exception as e:
            error = from_exception(e)
            with self._lock:
                slot.state, slot.error = END, error
                slot.failures += 1
            left = max(0, self.max_load_retries + 1 - slot.failures)
            log.warning(
                "model %s: loading version %d failed (%s); %s",
                name,
                version,
                error.message,
                f"retrying on the next poll ({left} tries left unless its files change)"
                if left
                else "not retrying until its files change",
            )
            if self.metrics:
                self.metrics.loads.labels(name, str(version), "error").inc()
            return
        with self._lock:
            slot.servable, slot.state, slot.error, slot.failures = servable, AVAILABLE, None, 0
        if self.metrics:
            self.metrics.loads.labels(name, str(version), "ok").inc()
            self.metrics.version_state.labels(name, str(version)).set(1)
            if warmed:
                self.metrics.warmup_requests.labels(name, str(version)).inc(warmed)
            uuid = mlmd_uuid(path)
            if uuid is not None:
                self.metrics.mlmd_map.labels(name, str(version), uuid).set(1)
        log.info(
            "model %s: version %d is available%s",
            name,
            version,
            f" (warmed up with {warmed} requests)" if warmed else "",
        )

    def _begin_unload(self, model: _Model, slot: VersionSlot) -> None:
        """Under the lock: no new requests reach `slot`; a thread unloads it once its requests finish."""
        slot.state = UNLOADING
        if self.metrics:
            self.metrics.version_state.labels(model.entry.name, str(slot.version)).set(0)

        def finish():
            with self._lock:
                while slot.inflight > 0:
                    self._released.wait()
                servable, slot.servable = slot.servable, None
                slot.state = END
            if servable is not None:
                servable.release()
            log.info("model %s: version %d unloaded", model.entry.name, slot.version)

        t = threading.Thread(target=finish, name=f"unload-{model.entry.name}-{slot.version}", daemon=True)
        self._unloaders = [u for u in self._unloaders if u.is_alive()] + [t]
        t.start()

    # ---- config reload ----------------------------------------------------------------------

    def _discover(self) -> None:
        """Under the poll lock: the model directories of every root, applied when they changed."""
        found: dict[str, ModelEntry] = {}
        problems = []
        for root in self.roots:
            entries, issues = discover_models(root, self._discovered)
            problems += issues
            for name, entry in entries.items():
                found.setdefault(name, entry)
        for problem in problems:
            if problem not in self._problems:
                log.warning("model discovery: %s", problem)
        self._problems = set(problems)
        if found != self._discovered:
            added = sorted(set(found) - set(self._discovered))
            removed = sorted(set(self._discovered) - set(found))
            if added or removed:
                log.info(
                    "model discovery: %s",
                    "; ".join(
                        ([f"new model(s) {', '.join(added)}"] if added else [])
                        + ([f"gone: {', '.join(removed)}"] if removed else [])
                    ),
                )
            self._discovered = found
            self._apply(self._effective())

    def _effective(self) -> list[ModelEntry]:
        """Explicit models, then discovered ones whose names are not taken."""
        names = {e.name for e in self._explicit}
        return self._explicit + [e for n, e in sorted(self._discovered.items()) if n not in names]

    def reload(self, entries: list[ModelEntry]) -> None:
        """Applies a new model list: new models load now, dropped ones unload, changed ones re-sync.

        Models discovered under a serving root stay (a config naming one of them takes precedence)."""
        with self._poll_lock:
            self._explicit = list(entries)
            effective = self._staged(self._effective())
            models = self._apply(effective)
            for model in models:
                self._sync(model)

    def _staged(self, entries: list[ModelEntry]) -> list[ModelEntry]:
        """Under the poll lock: ordered label moves. For each model whose labels change, first loads and
        warms the versions the new config wants while the old labels keep answering; a label whose new
        version did not come up keeps its old version (logged), as TF Serving refuses a label on a version
        that is not available. Returns the entries to apply."""
        result = []
        for entry in entries:
            with self._lock:
                model = self._models.get(entry.name)
            if model is None or model.entry.base_path != entry.base_path or model.entry.labels == entry.labels:
                result.append(entry)
                continue
            self._sync(model, entry, unload=False)  # load + warm-up first; nothing is unloaded yet
            labels = dict(entry.labels)
            old = model.entry.label_map
            with self._lock:
                for label, version in entry.labels:
                    slot = model.slots.get(version)
                    if slot is None or slot.state != AVAILABLE:
                        log.warning(
                            "model %s: label %s stays on %s: version %d is not available (%s)",
                            entry.name,
                            label,
                            old.get(label, "nothing"),
                            version,
                            slot.error.message if slot and slot.error else "not loaded",
                        )
                        if label in old:
                            labels[label] = old[label]
                        else:
                            del labels[label]
            if labels != entry.label_map:
                wanted = set(entry.policy.versions) | set(labels.values())
                policy = (
                    entry.policy
                    if entry.policy.kind != "specific"
                    else replace(entry.policy, versions=tuple(sorted(wanted)))
                )
                entry = replace(entry, labels=tuple(sorted(labels.items())), policy=policy)
            else:
                for label, version in entry.labels:
                    if old.get(label) != version:
                        log.info(
                            "model %s: label %s moved %s -> %d after version %d was loaded and warmed up",
                            entry.name,
                            label,
                            old.get(label, "nothing"),
                            version,
                            version,
                        )
            result.append(entry)
        return result

    def _apply(self, entries: list[ModelEntry]) -> list[_Model]:
        """Under the poll lock: makes `entries` the model list (unloading dropped models); returns the models."""
        with self._lock:
            wanted = {e.name: e for e in entries}
            for name in list(self._models):
                old = self._models[name]
                if name not in wanted or wanted[name].base_path != old.entry.base_path:
                    for slot in old.slots.values():
                        if slot.state == AVAILABLE:
                            self._begin_unload(old, slot)
                    del self._models[name]
            for name, entry in wanted.items():
                if name in self._models:
                    self._models[name].entry = entry
                else:
                    self._models[name] = _Model(entry)
            return list(self._models.values())

    # ---- requests ---------------------------------------------------------------------------

    def _model(self, name: str, request_desc: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: {request_desc}")
        return model

    def resolve_label(self, name: str, label: str) -> int:
        with self._lock:
            model = self._models.get(name)
            labels = model.entry.label_map if model else {}
            if label not in labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            return labels[label]

    @contextmanager
    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[Servable]:
        """The servable for a request, held (not unloaded) until the block ends."""
        if version is not None and label:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        with self._lock:  # label -> version and version -> slot under one lock: a label move never falls between
            if label:
                version = self.resolve_label(name, label)
            if self.stopping:
                raise ServingError(Code.UNAVAILABLE, "Server is shutting down; retry against another replica")
            if version is None:
                model = self._model(name, f"Latest({name})")
                up = [s for s in model.slots.values() if s.state == AVAILABLE]
                if not up:
                    raise not_found(
                        f"Servable not found for request: Latest({name}); no version of it is loaded "
                        f"(GET /v1/models/{name} shows each version's state)"
                    )
                slot = max(up, key=lambda s: s.version)
            else:
                model = self._model(name, f"Specific({name}, {version})")
                slot = model.slots.get(version)
                if slot is None or slot.state != AVAILABLE:
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
            slot.inflight += 1
        try:
            yield slot.servable
        finally:
            with self._lock:
                slot.inflight -= 1
                if slot.inflight == 0:
                    self._released.notify_all()

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[tuple[int, str, ServingError | None]]:
        """(version, state, error) newest first, as GetModelStatus reports them.

        `label` is ignored, as in TF Serving: GetModelStatusWithModelSpec only looks at the version
        (get_model_status_impl.cc:82), so a label, known or not, lists every version.
        """
        with self._lock:
            model = self._models.get(name)
            slots = dict(model.slots) if model else {}
            states = {v: (s.state, s.error) for v, s in slots.items()}
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(version, *states[version])]
        return [(v, *states[v]) for v in sorted(states, reverse=True)]

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def entry(self, name: str) -> ModelEntry | None:
        with self._lock:
            model = self._models.get(name)
            return model.entry if model else None
