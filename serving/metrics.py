"""Prometheus metrics of one server (its own registry, so several servers can run in one process).

Two families on one page: mlpipe's own (`mlpipe_serving_*`, through prometheus_client) and TF Serving's
(`:tensorflow:serving:*`), written the way TF Serving's PrometheusExporter writes them so that an
operator's existing dashboards and alerts keep working:

* `:tensorflow:serving:request_count{model_name,status}`, a counter
  (servables/tensorflow/util.cc `model_request_status_count_total`; status is the canonical code name);
* `:tensorflow:serving:request_latency{model_name,API,entrypoint}`, a histogram in microseconds, only for
  requests that succeeded (http_server.cc `ProcessRequest`, prediction_service_impl.cc);
* `:tensorflow:serving:runtime_latency{model_name,API,runtime}`, a histogram in microseconds of the model
  call alone (predict_util.cc, classifier.cc, regressor.cc).

Both histograms use `monitoring::Buckets::Exponential(10, 1.8, 33)`; the exporter prints `# TYPE` lines
(no `# HELP`), bucket limits and sums with absl::StrCat's six significant digits, and `+Inf` last
(util/prometheus_exporter.cc `SerializeHistogram`, `SerializeScalar`).
"""

from __future__ import annotations

import bisect
import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_LABELS = ("model", "version", "api", "protocol", "status")

# TF Serving's names: the exporter turns "/tensorflow/serving/request_count" into ":tensorflow:serving:request_count".
TFS_REQUEST_COUNT = ":tensorflow:serving:request_count"
TFS_REQUEST_LATENCY = ":tensorflow:serving:request_latency"
TFS_RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
# monitoring::Buckets::Exponential(10, 1.8, 33): limits 10 * 1.8**i, then DBL_MAX (printed as +Inf).
TFS_LATENCY_LIMITS = tuple(10 * 1.8**i for i in range(33))
# The runtime label of the classic (SavedModelBundle) path; TF Serving's TFRT path says "TFRT".
TFS_RUNTIME = "TF1"


def _six_digits(value: float) -> str:
    """absl::StrCat(double): six significant digits, no trailing zeros (10, 18, 32.4, 188.957, 1.23457e+06)."""
    return f"{value:.6g}"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _TfsHistogram:
    def __init__(self, name: str, label_names: tuple[str, ...]):
        self.name, self.label_names = name, label_names
        self.cells: dict[tuple, list] = {}  # labels -> [bucket counts..., sum]

    def add(self, labels: tuple, micros: float) -> None:
        cell = self.cells.get(labels)
        if cell is None:
            cell = self.cells.setdefault(labels, [0] * (len(TFS_LATENCY_LIMITS) + 1) + [0.0])
        cell[bisect.bisect_right(TFS_LATENCY_LIMITS, micros)] += 1  # TF's Histogram: bucket i holds v < limit[i]
        cell[-1] += micros

    def lines(self) -> list[str]:
        out = [f"# TYPE {self.name} histogram"]
        for labels, cell in sorted(self.cells.items()):
            pairs = ",".join(f'{k}="{_label_value(v)}"' for k, v in zip(self.label_names, labels))
            prefix = f"{self.name}_bucket{{{pairs}{',' if pairs else ''}"
            total = 0
            for i, count in enumerate(cell[:-1]):
                total += count
                limit = _six_digits(TFS_LATENCY_LIMITS[i]) if i < len(TFS_LATENCY_LIMITS) else "+Inf"
                out.append(f'{prefix}le="{limit}"}} {total}')
            out.append(f"{self.name}_sum{{{pairs}}} {_six_digits(cell[-1])}")
            out.append(f"{self.name}_count{{{pairs}}} {total}")
        return out


class TfServingMetrics:
    """TF Serving's request_count, request_latency and runtime_latency, thread-safe, in its exposition format."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._request = _TfsHistogram(TFS_REQUEST_LATENCY, ("model_name", "API", "entrypoint"))
        self._runtime = _TfsHistogram(TFS_RUNTIME_LATENCY, ("model_name", "API", "runtime"))

    def request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One finished request: counted always, its latency recorded only when it succeeded."""
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            if status == "OK":
                self._request.add((model_name, api, entrypoint), seconds * 1e6)

    def runtime(self, model_name: str, api: str, seconds: float) -> None:
        with self._lock:
            self._runtime.add((model_name, api, TFS_RUNTIME), seconds * 1e6)

    def page(self) -> str:
        with self._lock:
            lines = [f"# TYPE {TFS_REQUEST_COUNT} counter"]
            lines += [
                f'{TFS_REQUEST_COUNT}{{model_name="{_label_value(m)}",status="{_label_value(s)}"}} {n}'
                for (m, s), n in sorted(self._counts.items())
            ]
            lines += self._request.lines() + self._runtime.lines()
        return "\n".join(lines) + "\n"


SHARED_FILE_PREFIX = "metrics-"  # <shared dir>/metrics-<pid>.prom: one server process's page


def merge_pages(pages: list[str]) -> str:
    """Prometheus text pages of several processes as one: counters and histograms summed per series,
    gauges the largest value, `_created` the earliest. Families and series keep their first-seen order."""
    types: dict[str, str] = {}
    families: dict[str, dict] = {}  # family -> {"head": [comment lines], "series": {key: [value texts]}}
    for page in pages:
        family = None
        for line in page.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if parts[1] == "TYPE" and len(parts) == 4:
                        types[family] = parts[3]
                    entry = families.setdefault(family, {"head": [], "series": {}})
                    if line not in entry["head"]:
                        entry["head"].append(line)
                continue
            key, _, value = line.rpartition(" ")
            entry = families.setdefault(family or "", {"head": [], "series": {}})
            entry["series"].setdefault(key, []).append(value)
    out = []
    for family, entry in families.items():
        out += entry["head"]
        kind = types.get(family, "untyped")
        for key, values in entry["series"].items():
            out.append(f"{key} {_merge_values(values, kind, key.split('{', 1)[0], family)}")
    return "\n".join(out) + "\n"


def _merge_values(values: list[str], kind: str, series: str, family: str) -> str:
    numbers = [float(v) for v in values]
    if series.endswith("_created"):
        merged = min(numbers)
    elif kind == "gauge":
        merged = max(numbers)
    else:
        merged = sum(numbers)
    if all("." not in v and "e" not in v.lower() for v in values):  # integers stay integers
        return str(int(merged))
    return _six_digits(merged) if family.startswith(":tensorflow:") else repr(merged)


class Metrics:
    def __init__(self, shared_dir: str | None = None):
        """`shared_dir`: one of several server processes on the same ports (serving/processes.py); each
        writes its page there every second, and a scrape of any of them answers the sum of all."""
        self.shared_dir = shared_dir
        self._stop = threading.Event()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlpipe_serving_requests",
            "Requests answered, by model, version, API (predict, classify, regress, metadata, status, "
            "reload), protocol (rest, grpc) and status code (OK, INVALID_ARGUMENT, NOT_FOUND, ...).",
            _REQUEST_LABELS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlpipe_serving_request_latency_seconds",
            "Time from request received to response ready, by the same labels as the request count.",
            _REQUEST_LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mlpipe_serving_batch_size",
            "Rows per model call when batching is on.",
            ("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.version_state = Gauge(
            "mlpipe_serving_model_version_available",
            "1 for each model version that is loaded and serving.",
            ("model", "version"),
            registry=self.registry,
        )
        self.loads = Counter(
            "mlpipe_serving_model_loads",
            "Load attempts of a model version, by outcome (ok, error).",
            ("model", "version", "outcome"),
            registry=self.registry,
        )
        self.warmup_requests = Counter(
            "mlpipe_serving_warmup_requests",
            "Warm-up requests replayed from assets.extra/tf_serving_warmup_requests before a version served.",
            ("model", "version"),
            registry=self.registry,
        )
        self.mlmd_map = Gauge(
            "mlpipe_serving_mlmd_map",
            "1 per loaded version with its assets.extra/mlmd_uuid (TF Serving's /tensorflow/serving/mlmd_map).",
            ("model_name", "version", "mlmd_uuid"),
            registry=self.registry,
        )
        self.routed = Counter(
            "mlpipe_serving_routed_requests",
            "Requests naming neither version nor label, routed by traffic.json's split, by the label picked.",
            ("model", "label"),
            registry=self.registry,
        )
        self.tf_serving = TfServingMetrics()
        self.logged_requests = Counter(
            "mlpipe_serving_logged_requests",
            "Requests written to the request log.",
            ("model",),
            registry=self.registry,
        )
        if shared_dir is not None:
            threading.Thread(target=self._share_loop, name="metrics-share", daemon=True).start()

    def observe(
        self, model: str, version, api: str, protocol: str, status: str, seconds: float, tfs_api: str | None = None
    ) -> None:
        """mlpipe's request metrics; with `tfs_api` (TF Serving's API label) also TF Serving's."""
        labels = (model or "", "" if version is None else str(version), api, protocol, status)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        if tfs_api is not None:
            self.tf_serving.request(model or "", tfs_api, "REST" if protocol == "rest" else "GRPC", status, seconds)

    def own_page(self) -> bytes:
        return generate_latest(self.registry) + self.tf_serving.page().encode()

    def page(self) -> bytes:
        """This process's metrics; with a shared directory, those of every server process summed."""
        if self.shared_dir is None:
            return self.own_page()
        own = self._share()
        pages = [own.decode()]
        mine = self._shared_path()
        for name in sorted(os.listdir(self.shared_dir)):
            path = os.path.join(self.shared_dir, name)
            if name.startswith(SHARED_FILE_PREFIX) and name.endswith(".prom") and path != mine:
                try:
                    with open(path) as f:
                        pages.append(f.read())
                except OSError:  # a process that just ended
                    pass
        return merge_pages(pages).encode()

    def _shared_path(self) -> str:
        return os.path.join(self.shared_dir, f"{SHARED_FILE_PREFIX}{os.getpid()}.prom")

    def _share(self) -> bytes:
        page = self.own_page()
        path = self._shared_path()
        with open(path + ".tmp", "wb") as f:
            f.write(page)
        os.replace(path + ".tmp", path)  # readers see the old page or the new one, never half of one
        return page

    def _share_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._share()
            except OSError:
                pass  # the directory went away: the supervisor is shutting down

    def close(self) -> None:
        self._stop.set()
