"""Training-serving skew, drift, prediction drift and schema anomalies of logged serving traffic
(`mlpipe monitor`). See docs/monitoring.md.

The model server's request logs (serving/request_log.py) are decoded back into the raw features
the model received and the scores it returned (traffic.py), and compared (stats.py: per feature and
per slice, a two-sample test whose p-value accounts for the window's size, plus a distance floor) with:
- skew: a seeded sample of the whole training window of the version that served the traffic, merged
  over its spans, and its scores on the window's eval splits (baseline.py, through MLMD lineage);
- drift: the traffic of the previous window (same length, right before `since`);
- anomalies: the version's schema in TFDV's SERVING environment, tolerant of rare legitimate values
  (tfdv_checks.py).
Every run's scores go to the workspace's history (history.py), which gates `--retrain`.

Modules: window (times, MonitorError), traffic, baseline, stats, tfdv_checks, check (the run),
report (table, HTML), history, evaluate (`--evaluate`), labels and feedback (`--labels`: late labels
joined to logged predictions by request key, the live quality series and the automatic rollback). What
an alert sets off (the alert command, the webhook, `mlpipe retrain`) starts processes, so it lives in
the CLI: pipeline/cli/actions.py.
"""

from pipeline.dag.request_logs import Traffic, decode_request, read_traffic
from pipeline.dag.tfdv_checks import (
    SERVING,
    TRAINING,
    monitoring_schema,
    statistics_of,
    threshold_for,
)
from pipeline.monitoring import auto_rollback, feedback, labels
from pipeline.monitoring.baseline import TrainingData, training_data
from pipeline.monitoring.check import Report, monitor
from pipeline.monitoring.evaluate import evaluate
from pipeline.monitoring.report import table, write_html
from pipeline.monitoring.window import MonitorError, config_duration, iso_seconds, parse_duration, parse_time

__all__ = [
    "MonitorError",
    "Report",
    "SERVING",
    "TRAINING",
    "Traffic",
    "TrainingData",
    "auto_rollback",
    "config_duration",
    "decode_request",
    "evaluate",
    "feedback",
    "iso_seconds",
    "labels",
    "monitor",
    "monitoring_schema",
    "parse_duration",
    "parse_time",
    "read_traffic",
    "statistics_of",
    "table",
    "threshold_for",
    "training_data",
    "write_html",
]
