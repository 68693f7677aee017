"""Runs the pipeline once with TFX's LocalDagRunner: the checks before it, the progress lines during it, the
release decision after it (what the run did is read back by pipeline/ops/summary.py)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline import config as config_lib
from pipeline.config import Config, ConfigError
from pipeline.dag import inputs
from pipeline.metadata import queries as metadata
from pipeline.ops import unchanged
from pipeline.ops.summary import RunSummary, summarize

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
        self.store = None  # one MLMD connection for the whole run (not one per poll), opened once it has a schema

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
            if self.store is None:
                if not metadata.store_initialized(self.config):
                    return
                self.store = metadata.open_store(self.config)
            runs = [
                r
                for r in metadata.pipeline_runs(self.store, self.config.pipeline_name)
                if r.create_time_since_epoch >= self.started_ms
            ]
            executions = metadata.run_executions(self.store, self.config.pipeline_name, runs[0]) if runs else []
        except Exception:  # the writer holds the database right now: connect and look again next time
            self.store = None
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


def ensure_default_data(config: Config) -> Path | None:
    """On first use of the default data root (data/taxi), copies the taxi sample that the tfx package
    ships into it (data/taxi_sample.py); returns the copied file, or None when nothing was copied."""
    root = Path(config.data.root).resolve()
    if root != config_lib.DEFAULT_DATA_ROOT.resolve() or any(root.glob(inputs.CSV_PATTERN)):
        return None
    from data import taxi_sample

    try:
        return taxi_sample.materialize(root) / "data.csv"
    except OSError as e:
        raise inputs.InputDataError(f"cannot copy the embedded taxi sample into {root}: {e}") from None


def check_before_run(config: Config) -> inputs.DataCheck:
    """What can be checked before anything runs: the CSV headers, the [model] column names, the user's code.

    Returns what the data check found; raises inputs.InputDataError (the data) or ConfigError (a
    setting; the message names it).
    """
    from pipeline.dag import dataset, user_code

    try:
        columns = dataset.column_types(config)
    except (OSError, ValueError) as e:
        raise ConfigError("data.schema", f"cannot read column types from {config.data.schema}: {e}") from None
    checked = inputs.check_csv_dir(
        config.data.root, columns, config.data.max_bad_row_fraction, dataset.column_source(config)
    )
    m = config.model
    for key, names in (
        ("raw_label_keys", m.raw_label_keys),
        ("slice_features", m.slice_features),
        ("serving_features", m.serving_features),
    ):
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise ConfigError(
                f"model.{key}",
                f"{', '.join(map(repr, unknown))} not a column of the data (columns: {', '.join(columns)})",
            )
    user_code.check(m, config.user_code_check_path if config.enable_cache else None)
    metadata.check_connection(config)  # bad [metadata] settings: ConfigError naming the setting
    return checked


def run(config: Config, say: Print = print, checked: inputs.DataCheck | None = None) -> RunSummary:
    """Runs the pipeline; never raises for a failed component (the summary says what failed).

    Bad input data (inputs.InputDataError) raises before anything runs, unless the caller has
    `checked` it already (pipeline/dag/inputs.py check_csv_dir).
    """
    if checked is None:
        ensure_default_data(config)
        check_before_run(config)
    config.workspace_path.mkdir(parents=True, exist_ok=True)
    key = _inputs_key(config)
    started = time.time()
    error: BaseException | None = None
    if _copied_last_run(config, key):  # nothing changed since a run TFX found fully cached: TFX not started
        watcher = ProgressWatcher(config, started, say)
        watcher.poll()
    else:
        started, watcher, error = _run_tfx(config, say)
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
    release(config, summary)
    unchanged.remember(config, key, summary.run_id, summary.completed and summary.fully_cached)
    return summary


def _copied_last_run(config: Config, key: str | None) -> bool:
    """Whether this run was recorded as a copy of the last fully cached one (pipeline/ops/unchanged.py)."""
    try:
        return bool(key and unchanged.copy_last_run(config, key))
    except Exception:  # the store is busy or unreadable: TFX decides, as without a key
        logging.getLogger(__name__).exception("cannot copy the last fully cached run: running TFX")
        return False


def _run_tfx(config: Config, say: Print) -> tuple[float, ProgressWatcher, BaseException | None]:
    """Runs the pipeline with TFX's LocalDagRunner, printing progress; returns when it started (after the
    imports), its progress watcher, and what failed, if anything."""
    from absl import flags
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # heavy: only when a run starts

    if not flags.FLAGS.is_parsed():  # else absl would parse the host program's argv (e.g. pytest -v)
        flags.FLAGS.mark_as_parsed()

    from pipeline.dag.pipeline import create_pipeline
    from pipeline.ops import beam_args

    started = time.time()
    watcher = ProgressWatcher(config, started, say)
    watcher.start()
    try:
        pipeline = create_pipeline(config)
        pipeline.metadata_connection_config = metadata.connection_config(config)
        with metadata.redacting(config), beam_args.local_dependencies(config.beam):
            LocalDagRunner().run(pipeline)
    except Exception as e:  # a component failed: report it, keep MLMD as it is
        logging.getLogger(__name__).exception("pipeline run failed")
        return started, watcher, e
    finally:
        watcher.stop()
    return started, watcher, None


def _inputs_key(config: Config) -> str | None:
    """The run's inputs key (pipeline/ops/unchanged.py), or None: no cache, or it cannot be computed."""
    if not config.enable_cache:
        return None
    try:
        return unchanged.inputs_key(config)
    except OSError:
        logging.getLogger(__name__).exception("cannot compute the run's inputs key: TFX decides what is cached")
        return None


def release(config: Config, summary: RunSummary) -> None:
    """After the run: release.mode's decision on a fresh push, then the run's report (never raises)."""
    from pipeline.monitoring import release_report
    from pipeline.publish import approvals

    pusher_ran = any(c.node_id == "Pusher" and c.state == "ran" for c in summary.components)
    if summary.completed and summary.pushed_version and pusher_ran:
        try:
            summary.release = approvals.after_push(config, int(summary.pushed_version))
        except Exception as e:
            logging.getLogger(__name__).exception("release decision failed")
            summary.release = {"version": summary.pushed_version, "status": "failed", "error": str(e)}
    if summary.run_id:
        try:
            summary.report = str(release_report.write(config, summary.run_id))
        except Exception:
            logging.getLogger(__name__).exception("writing the release report failed")
