"""Runs the pipeline once with TFX's LocalDagRunner and tells the user what happened."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from models import features
from pipeline import metadata
from pipeline.config import Config
from pipeline.inputs import check_csv_dir

Print = Callable[[str], None]


class ProgressWatcher(threading.Thread):
    """Prints one line as each component of the current run starts and one as it ends, read from MLMD.

    MLMD rather than the runner's log records: TF and tf.Transform lower absl's verbosity mid-run
    (through TF's logger, which absl shares), which silences INFO records; the watcher also puts
    absl back to INFO so the run's log file stays complete.
    """

    TERMINAL = ("ran", "cached", "failed", "canceled")

    def __init__(self, config: Config, started: float, say: Print, interval: float = 0.5):
        super().__init__(name="mlpipe-progress", daemon=True)
        self.config, self.started_ms, self.say, self.interval = config, int(started * 1000) - 1000, say, interval
        self.done = threading.Event()
        self.announced: dict[int, str] = {}  # execution id -> "started" | "ended"
        self.current: str | None = None  # node id of the last component started and not ended

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()
        self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)

    def poll(self) -> None:
        absl_logger = logging.getLogger("absl")
        if absl_logger.getEffectiveLevel() > logging.INFO:
            absl_logger.setLevel(logging.INFO)
        try:
            if not metadata.store_initialized(self.config):
                return
            store = metadata.open_store(self.config)
            runs = [r for r in metadata.pipeline_runs(store, self.config.pipeline_name)
                    if r.create_time_since_epoch >= self.started_ms]
            executions = metadata.run_executions(store, self.config.pipeline_name, runs[0]) if runs else []
        except Exception:  # the writer holds the database right now: look again next time
            return
        for e in executions:
            key = e.execution.id
            if key not in self.announced:
                self.say(f"  {e.node_id:<32} started")
                self.announced[key] = "started"
                self.current = e.node_id
            if e.state in self.TERMINAL and self.announced[key] != "ended":
                state = "resolved" if e.node_id.endswith("_resolver") and e.state == "ran" else e.state
                self.say(f"  {e.node_id:<32} {state:<8} {e.seconds:6.1f} s")
                self.announced[key] = "ended"
                if self.current == e.node_id and e.state != "failed":
                    self.current = None


@dataclasses.dataclass
class ComponentResult:
    node_id: str
    state: str  # ran, cached, failed, ... (metadata.STATE_NAMES)
    seconds: float


@dataclasses.dataclass
class RunSummary:
    run_id: str | None
    seconds: float
    completed: bool
    components: list[ComponentResult] = dataclasses.field(default_factory=list)
    blessed: bool | None = None
    checks: list = dataclasses.field(default_factory=list)  # evaluation.ThresholdCheck
    validation_failures: list = dataclasses.field(default_factory=list)  # TFMA's, one line each
    pushed_version: str | None = None
    pushed_path: str | None = None
    failed_component: str | None = None
    error: str | None = None

    @property
    def fully_cached(self) -> bool:
        return bool(self.components) and all(
            c.state == "cached" for c in self.components if not c.node_id.endswith("_resolver")
        )

    @property
    def outcome(self) -> str:
        if not self.completed:
            return "failed"
        if self.pushed_version:
            return "pushed"
        return "not_blessed" if self.blessed is False else "not_pushed"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome
        data["fully_cached"] = self.fully_cached
        return data

    def lines(self) -> list[str]:
        if not self.completed:
            where = f" at {self.failed_component}" if self.failed_component else ""
            return [f"Result: FAILED{where}: {self.error}", "Nothing was pushed."]
        cached = " (fully cached: nothing changed since the last run)" if self.fully_cached else ""
        if self.pushed_version and self.fully_cached:
            head = f"Result: BLESSED, already pushed as version {self.pushed_version}{cached}"
        elif self.pushed_version:
            head = f"Result: BLESSED and pushed as version {self.pushed_version}"
        elif self.blessed:
            head = f"Result: BLESSED, but nothing was pushed{cached}"
        else:
            failed = [c for c in self.checks if c.passed is False]
            reason = "; ".join(
                f"{c.metric} {c.value:.4f} < {c.bound:.4f}" if c.value is not None else f"{c.metric} missing"
                for c in failed
            )
            head = f"Result: NOT BLESSED, nothing pushed ({reason or 'thresholds not met'}){cached}"
        lines = [head] + [f"  {c.describe()}" for c in self.checks]
        if not self.blessed and self.validation_failures:
            lines += ["TFMA validation failures:"] + [f"  {m}" for m in self.validation_failures]
        if self.pushed_path:
            lines.append(f"Pushed model: {self.pushed_path}")
        return lines


def run(config: Config, say: Print = print) -> RunSummary:
    """Runs the pipeline; never raises for a failed component (the summary says what failed).

    Bad input data (inputs.InputDataError) raises before anything runs.
    """
    check_csv_dir(config.data.root, features.CSV_COLUMNS)
    metadata.check_connection(config)  # bad [metadata] settings: raises before anything runs
    config.workspace_path.mkdir(parents=True, exist_ok=True)

    from absl import flags
    from tfx import v1 as tfx  # heavy; imported only when a run really starts

    if not flags.FLAGS.is_parsed():  # else absl would parse the host program's argv (e.g. pytest -v)
        flags.FLAGS.mark_as_parsed()

    from pipeline.pipeline import create_pipeline

    started = time.time()
    watcher = ProgressWatcher(config, started, say)
    watcher.start()
    error: BaseException | None = None
    try:
        pipeline = create_pipeline(config)
        pipeline.metadata_connection_config = metadata.connection_config(config)
        with metadata.redacting(config):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as e:  # a component failed: report it, keep MLMD as it is
        error = e
        logging.getLogger(__name__).exception("pipeline run failed")
    finally:
        watcher.stop()
    try:
        summary = summarize(config, started, time.time() - started)
    except Exception as e:  # the metadata database went away: the run failed, say so in one line
        logging.getLogger(__name__).exception("cannot read the run's metadata")
        summary = RunSummary(run_id=None, seconds=time.time() - started, completed=False)
        error = error or e
    if error is not None:
        summary.completed = False
        summary.failed_component = summary.failed_component or watcher.current
        summary.error = str(error).strip() or type(error).__name__
    return summary


def summarize(config: Config, started: float, seconds: float) -> RunSummary:
    """Builds the run's summary from MLMD: the newest run that began after `started`."""
    from pipeline import evaluation

    store = metadata.open_store(config)
    runs = metadata.pipeline_runs(store, config.pipeline_name) if store else []
    runs = [r for r in runs if r.create_time_since_epoch >= int(started * 1000) - 1000]
    if not runs:
        return RunSummary(run_id=None, seconds=seconds, completed=False, error="the run recorded nothing in MLMD")
    run_context = runs[0]
    executions = metadata.run_executions(store, config.pipeline_name, run_context)
    summary = RunSummary(
        run_id=run_context.name,
        seconds=seconds,
        completed=all(e.state in ("ran", "cached") for e in executions),
        components=[ComponentResult(e.node_id, e.state, e.seconds) for e in executions],
    )
    by_node = {e.node_id: e for e in executions}
    failed = [e for e in executions if e.state == "failed"]
    if failed:
        summary.failed_component = failed[0].node_id
    if "Evaluator" in by_node:
        out = metadata.outputs(store, by_node["Evaluator"].execution.id)
        if out.get("blessing"):
            summary.blessed = metadata.custom_property(out["blessing"][0], "blessed") == 1
        if out.get("evaluation"):
            summary.checks = evaluation.threshold_checks(out["evaluation"][0].uri, config.evaluation)
            summary.validation_failures = evaluation.validation_failures(out["evaluation"][0].uri)
    if "Pusher" in by_node:
        out = metadata.outputs(store, by_node["Pusher"].execution.id)
        for pushed in out.get("pushed_model", []):
            if metadata.custom_property(pushed, "pushed") == 1:
                summary.pushed_version = metadata.custom_property(pushed, "pushed_version")
                summary.pushed_path = metadata.custom_property(pushed, "pushed_destination")
    return summary
