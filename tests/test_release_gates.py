"""Release gates end to end on copies of the shared first run (docs/release.md: Gates and verdicts).

- infra validation: a 0 ms latency budget fails the candidate loaded by serving's own loader; with
  no thresholds configured the Evaluator's verdict is UNVALIDATED; nothing is pushed, the summary
  says why, and `bless --force` refuses a candidate that failed infra validation;
- replay gate: requests logged by a real in-process server on the pushed version, then a retrain
  with other steps whose scores diverge beyond [replay_gate]; the push is blocked, then
  `mlpipe bless --force` pushes it, recorded in MLMD and shown by `models` / `lineage`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST_FLAGS, run_cli


def versions(ws: Path) -> list[int]:
    return sorted(int(p.name) for p in (ws / "serving_model" / "taxi").iterdir() if p.name.isdigit())


def copy_first_run(first_run, dest: Path) -> Path:
    workspace, code, out, err = first_run
    assert code == 0, out + err
    shutil.copytree(workspace, dest)
    return dest


def run_id_of(out: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith("mlpipe: run "))
    return line.split()[2]


def gates(ws: Path, run_id: str) -> dict:
    from pipeline.metadata import queries as metadata
    from pipeline.metadata import verdicts

    store = metadata.open_store(ws / "metadata.sqlite")
    return {g["gate"]: g for g in verdicts.gate_results(store, run_id)}


def test_first_run_passes_infra_validation_and_skips_replay_without_logs(first_run):
    workspace, code, out, err = first_run
    assert code == 0, out + err
    assert "Gates:" in out and "evaluation: BLESSED" in out and "infra_validation: PASSED" in out
    assert f"replay: SKIPPED (no request logs under {workspace / 'request_logs' / 'taxi'})" in out
    run = gates(workspace, run_id_of(out))
    infra = run["infra_validation"]
    signatures = {s["signature"]: s for s in infra["numbers"]["signatures"]}
    assert set(signatures) == {"serving_default", "serving_raw", "transform_features"}
    assert all(s["requests"] == 10 and s["errors"] == 0 for s in signatures.values())
    checks = run["evaluation"]["numbers"]["checks"]
    assert {c["metric"] for c in checks} == {"binary_accuracy", "auc"} and all(c["slice"] == "overall" for c in checks)


def test_infra_failure_and_unvalidated_candidate_are_never_pushed(first_run, taxi_slice, tmp_path):
    ws = copy_first_run(first_run, tmp_path / "ws")
    before = versions(ws)
    config = tmp_path / "gates.toml"
    config.write_text("[evaluation]\nthresholds = false\n\n[infra_validation]\nmax_latency_ms = 0\n")
    code, out, err = run_cli(
        "run", "--config", str(config), "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS
    )
    assert code == 0, out + err
    assert "Result: UNVALIDATED (no thresholds configured), nothing pushed" in out
    assert "infra_validation: FAILED (serving_default: p95 latency" in out and "> budget 0 ms" in out
    assert versions(ws) == before
    run_id = run_id_of(out)
    run = gates(ws, run_id)
    assert run["evaluation"]["verdict"] == "UNVALIDATED" and run["infra_validation"]["verdict"] == "FAILED"
    # TFX's InfraBlessing contract: blessed = 0 and the INFRA_NOT_BLESSED file.
    from pipeline.metadata import queries as metadata

    store = metadata.open_store(ws / "metadata.sqlite")
    blessing = store.get_artifacts_by_id([run["infra_validation"]["artifact_id"]])[0]
    assert metadata.custom_property(blessing, "blessed") == 0
    assert (Path(blessing.uri) / "INFRA_NOT_BLESSED").is_file()

    code, out, err = run_cli("runs", "--workspace", str(ws))
    assert code == 0 and "not pushed: infra_validation FAILED (serving_default: p95 latency" in out
    code, out, err = run_cli("bless", run_id, "--force", "--reason", "ship it", "--workspace", str(ws))
    assert code == 1 and "failed infra validation" in err and "never pushed" in err
    assert versions(ws) == before
    code, out, err = run_cli("bless", run_id, "--reason", "no force", "--workspace", str(ws))
    assert code == 2 and "pass --force" in err


def log_requests(ws: Path, taxi_slice: Path, count: int = 40) -> int:
    """Real requests to a real in-process server on the pushed version, with request logging on."""
    import requests

    from models import features
    from serving.service import LogOptions
    from tests.conftest import taxi_rows
    from tests.serving.conftest import entry, start_server

    rows = taxi_rows(taxi_slice, count)
    server = start_server(
        [entry("taxi", str(ws / "serving_model" / "taxi"))],
        log_options=LogOptions(root=str(ws / "request_logs"), sampling_rate=1.0, seed=1),
    )
    try:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/taxi"
        for i in range(0, count, 4):
            chunk = [{k: r[k] for k in features.MODEL_FEATURES} for r in rows[i : i + 4]]
            for row in chunk:
                for k, v in row.items():
                    if v != v:  # NaN: a missing float is an absent feature in a tf.Example
                        row[k] = None
            examples = [{k: v for k, v in row.items() if v is not None} for row in chunk]
            answer = requests.post(f"{url}:classify", json={"examples": examples}, timeout=60)
            assert answer.status_code == 200, answer.text
    finally:
        server.stop()  # flushes the logs
    return count


def test_replay_gate_blocks_a_diverging_candidate_then_forced_blessing_pushes_it(first_run, taxi_slice, tmp_path):
    ws = copy_first_run(first_run, tmp_path / "ws")
    champion = versions(ws)[-1]
    log_requests(ws, taxi_slice)
    config = tmp_path / "replay.toml"
    config.write_text("[replay_gate]\nmax_mean_abs_delta = 0.001\nmax_flipped_fraction = 1.0\n")
    code, out, err = run_cli(
        "run",
        "--config",
        str(config),
        "--workspace",
        str(ws),
        "--data-root",
        str(taxi_slice),
        "--train-steps",
        "40",
        "--eval-steps",
        "20",
        "--change-tolerance",
        "1",  # the TFMA gate lets it through: the replay gate is the one that blocks
    )
    assert code == 0, out + err
    assert "Result: BLESSED, but NOT PUSHED: replay FAILED: mean |score delta|" in out
    assert f"examples of the last 10 requests vs version {champion}" in out
    assert versions(ws) == [champion]
    run_id = run_id_of(out)
    replay = gates(ws, run_id)["replay"]
    assert replay["verdict"] == "FAILED" and replay["numbers"]["examples"] == 40
    assert replay["numbers"]["mean_abs_delta"] > 0.001 and replay["numbers"]["champion_version"] == champion

    code, out, err = run_cli(
        "bless", run_id, "--force", "--reason", "divergence expected: new features", "--workspace", str(ws), "--json"
    )
    assert code == 0, out + err
    forced = json.loads(out)
    assert forced["overridden"] == "replay FAILED" and forced["run_id"] == run_id
    assert versions(ws) == [champion, forced["version"]]
    assert (ws / "serving_model" / "taxi" / str(forced["version"]) / "assets.extra" / "mlmd_uuid").is_file()

    code, out, err = run_cli("models", "--workspace", str(ws), "--json")
    assert code == 0, err
    record = next(v for v in json.loads(out)["versions"] if v["version"] == forced["version"])
    assert record["verdict"] == "BLESSED" and record["run_id"] is None
    assert record["forced_blessing"]["numbers"]["user"] == forced["user"]
    assert record["forced_blessing"]["reasons"] == ["divergence expected: new features"]
    assert [g["gate"] for g in record["gates"]] == ["evaluation", "infra_validation", "replay", "override"]
    code, out, err = run_cli("models", "--workspace", str(ws))
    assert f"forced blessing by {forced['user']}" in out and "(overrode replay FAILED)" in out
    code, out, err = run_cli("lineage", str(forced["version"]), "--workspace", str(ws))
    assert code == 0, err
    assert "replay: FAILED" in out and "forced blessing by" in out
    code, out, err = run_cli("bless", run_id, "--force", "--reason", "again", "--workspace", str(ws))
    assert code == 1 and f"already pushed as version {forced['version']}" in err


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[infra_validation]\nmax_latency_ms = -1\n", "infra_validation.max_latency_ms"),
        ("[replay_gate]\nlast_requests = 0\n", "replay_gate.last_requests"),
    ],
)
def test_bad_gate_settings_are_one_line(tmp_path, toml, key):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    code, out, err = run_cli("run", "--config", str(config), "--workspace", str(tmp_path / "ws"))
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1
