"""The Evaluator scores a bounded, deterministic sample of the eval split (evaluation.max_examples),
and the run summary says on how many rows and with what 95% confidence intervals."""

import json
import re
from pathlib import Path

from pipeline.dag import eval_sample
from pipeline.metadata import queries as metadata

PIPELINE = "mlpipe-taxi"


def _records(uri: str, split: str) -> list[bytes]:
    import tensorflow as tf

    files = [str(f) for f in sorted(Path(uri, f"Split-{split}").glob("*.gz"))]
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _newest_outputs(workspace: Path, node: str) -> dict:
    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, PIPELINE)[0]
    execs = {e.node_id: e for e in metadata.run_executions(store, PIPELINE, run)}
    return metadata.outputs(store, execs[node].execution.id)


def test_the_whole_eval_split_is_evaluated_under_the_bound_and_the_summary_gives_intervals(first_run):
    workspace, code, out, err = first_run
    assert code == 0, out + err
    (examples,) = _newest_outputs(workspace, "CsvExampleGen")["examples"]
    population = len(_records(examples.uri, "eval"))
    (sample,) = _newest_outputs(workspace, "EvalSample")["sample"]
    assert metadata.custom_property(sample, "eval_population") == population
    assert metadata.custom_property(sample, "eval_sample") == population  # 3000-row slice: under 50000
    line = next(li for li in out.splitlines() if li.startswith("Evaluated on"))
    assert line.startswith(f"Evaluated on all {population} eval rows: auc 0.")
    assert re.search(r"binary_accuracy 0\.\d{4} \(95% CI 0\.\d{4}-0\.\d{4}\)", line), line


def test_a_bound_below_the_split_evaluates_a_seeded_hash_sample(first_run, sampled_run):
    workspace, code, out, err = sampled_run
    assert code == 0, out + err
    summary = json.loads(out)
    (examples,) = _newest_outputs(first_run[0], "CsvExampleGen")["examples"]
    eval_rows = _records(examples.uri, "eval")
    evaluated = summary["evaluated"]
    assert evaluated["rows"] == 300 and evaluated["population"] == len(eval_rows) > 300
    for metric in ("auc", "binary_accuracy"):
        i = evaluated["intervals"][metric]
        assert 0 <= i["low"] < i["value"] < i["high"] <= 1, (metric, i)
    # Wider than on the whole split: fewer rows.
    assert evaluated["intervals"]["binary_accuracy"]["high"] - evaluated["intervals"]["binary_accuracy"]["low"] > 0.05
    (sample,) = _newest_outputs(workspace, "EvalSample")["sample"]
    assert metadata.custom_property(sample, "eval_sample") == 300
    assert metadata.custom_property(sample, "eval_population") == len(eval_rows)
    # Deterministic: exactly the 300 eval rows of smallest seeded hash (seed evaluation.sample_seed = 0),
    # whatever the order of the files: the same rows on every run, for the candidate and the baseline.
    expected = sorted(eval_rows, key=lambda r: eval_sample.sample_key(r, 0))[:300]
    assert sorted(_records(sample.uri, "eval")) == sorted(expected)
    # The Evaluator read the sample.
    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, PIPELINE)[0]
    execs = {e.node_id: e for e in metadata.run_executions(store, PIPELINE, run)}
    (read,) = metadata.inputs(store, execs["Evaluator"].execution.id)["examples"]
    assert read.id == sample.id
    assert execs["Trainer"].state == "cached" and execs["EvalSample"].state == "ran"
