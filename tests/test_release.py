"""Release approvals (release.mode manual / canary, `mlpipe approve | reject`) and the release report
(`mlpipe report`, checked in a real headless Chromium), end to end on the shared first run.

The manual and canary runs each re-run the pipeline on a copy of the first run's workspace: every
component is cached except the Pusher (its custom_config carries the release mode), which pushes the
blessed model again, so each costs one cached run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import FAST_FLAGS, run_cli
from tests.test_docs import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def served(workspace: Path) -> list[int]:
    base = workspace / "serving_model" / "taxi"
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


def models(workspace: Path) -> dict:
    code, out, err = run_cli("models", "--workspace", str(workspace), "--json")
    assert code == 0, err
    return json.loads(out)


def release_of(workspace: Path, version: int) -> dict:
    return next(r["release"] for r in models(workspace)["versions"] if r["version"] == version)


def one_line_error(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2 and out == "", out
    assert len(err.strip().splitlines()) == 1 and expected in err, err


def release_run(first_run, taxi_slice, dest: Path, settings: str):
    """The first run's workspace copied to dest/ws, then `mlpipe run --config` with [release] settings."""
    assert first_run[1] == 0, first_run[2] + first_run[3]
    workspace = dest / "ws"
    shutil.copytree(first_run[0], workspace)
    config = dest / "mlpipe.toml"
    config.write_text(f"[release]\n{settings}\n")
    (before,) = served(workspace)
    code, out, err = run_cli(
        "run", "--config", str(config), "--workspace", str(workspace), "--data-root", str(taxi_slice), *FAST_FLAGS
    )
    assert code == 0, out + err
    pushed = int(re.search(r"pushed as version (\d+)", out).group(1))
    assert pushed > before
    return workspace, before, pushed, out


@pytest.fixture(scope="module")
def manual(first_run, taxi_slice, tmp_path_factory):
    return release_run(first_run, taxi_slice, tmp_path_factory.mktemp("manual"), 'mode = "manual"')


@pytest.fixture(scope="module")
def canary(first_run, taxi_slice, tmp_path_factory):
    return release_run(first_run, taxi_slice, tmp_path_factory.mktemp("canary"), 'mode = "canary"\ncanary_weight = 20')


def test_manual_release_holds_the_push_until_approved(manual, tmp_path):
    workspace, before, version, out = manual
    assert f"Release: version {version} is held (release.mode = manual)" in out
    # Pending: pushed to disk, outside the serving directory, so no server loads it.
    assert served(workspace) == [before]
    assert (workspace / "release_hold" / "taxi" / str(version) / "saved_model.pb").is_file()
    data = models(workspace)
    assert version not in data["serving"]["loaded"] and data["serving"]["loaded"] == [before]
    pending = release_of(workspace, version)
    assert pending["status"] == "pending" and pending["decisions"][0]["decision"] == "pending"
    assert release_of(workspace, before)["status"] == "auto"
    code, text, _ = run_cli("models", "--workspace", str(workspace))
    assert code == 0 and f"  release: pending by {pending['decisions'][0]['user']}" in text

    # Only a pending (or canary) version can be approved: one line, exit 2.
    one_line_error(*run_cli("approve", str(before), "--reason", "x", "--workspace", str(workspace)), "is not pending")
    one_line_error(*run_cli("approve", "17", "--reason", "x", "--workspace", str(workspace)), "was never pushed")

    rejected = tmp_path / "ws-reject"  # the reject path, on a copy taken while the version is pending
    shutil.copytree(workspace, rejected)

    code, out, err = run_cli("approve", str(version), "--reason", "looks good", "--workspace", str(workspace))
    assert code == 0, err
    assert out.startswith(f"mlpipe: approved version {version} (was pending): served from ")
    assert served(workspace) == [before, version]
    assert not (workspace / "release_hold" / "taxi" / str(version)).exists()
    data = models(workspace)
    assert data["serving"]["labels"] == {"stable": version} and version in data["serving"]["loaded"]
    approved = release_of(workspace, version)
    assert approved["status"] == "approved"
    assert [(d["decision"], d["reason"]) for d in approved["decisions"]] == [
        ("pending", "release.mode = manual: held until `mlpipe approve`"),
        ("approved", "looks good"),
    ]
    assert all(d["user"] and d["time"] for d in approved["decisions"])
    code, out, err = run_cli("lineage", str(version), "--workspace", str(workspace), "--json")
    assert code == 0 and json.loads(out)["release"]["status"] == "approved", err
    code, out, _ = run_cli("lineage", str(version), "--workspace", str(workspace))
    assert "  release: approved by " in out and "approved (execution " in out
    one_line_error(*run_cli("approve", str(version), "--reason", "again", "--workspace", str(workspace)), "not pending")

    code, out, err = run_cli("reject", str(version), "--reason", "bad slice", "--workspace", str(rejected), "--json")
    assert code == 0, err
    assert json.loads(out)["decision"] == "rejected" and json.loads(out)["was"] == "pending"
    assert served(rejected) == [before] and release_of(rejected, version)["status"] == "rejected"
    one_line_error(*run_cli("approve", str(version), "--reason", "x", "--workspace", str(rejected)), "rejected")


def test_canary_release_labels_and_splits_traffic_until_approved(canary, tmp_path):
    from serving.traffic import read_traffic

    workspace, before, version, out = canary
    assert f"Release: version {version} is the canary (20% of unlabelled traffic" in out
    sidecar = workspace / "serving_model" / "traffic.json"
    assert models(workspace)["serving"]["labels"] == {"canary": version, "stable": before}
    routes, _ = read_traffic(str(sidecar))  # what a server started on models.config reads
    assert dict(routes["taxi"].split) == {"canary": 20.0, "stable": 80.0}
    assert release_of(workspace, version)["status"] == "canary"

    rejected = tmp_path / "ws-reject"
    shutil.copytree(workspace, rejected)

    # A live server on the workspace's models.config routes by the label and the weight, then follows
    # the approval without a restart.
    config_file = workspace / "serving_model" / "models.config"
    server = Server(f"mlpipe serve --model_config_file {config_file} --model_config_file_poll_wait_seconds 1", tmp_path)
    try:
        traffic = f"http://127.0.0.1:{server.rest}/v1/models/taxi/traffic"
        assert requests.get(traffic, timeout=10).json() == {
            "model": "taxi",
            "labels": {"canary": version, "stable": before},
            "split": {"canary": 0.2, "stable": 0.8},
            "shadow": None,
        }
        code, out, err = run_cli("approve", str(version), "--reason", "canary healthy", "--workspace", str(workspace))
        assert code == 0, err
        assert models(workspace)["serving"]["labels"] == {"stable": version}
        assert read_traffic(str(sidecar))[0] == {}
        assert release_of(workspace, version)["status"] == "approved"
        deadline = time.monotonic() + 120
        while requests.get(traffic, timeout=10).json()["labels"] != {"stable": version}:
            assert time.monotonic() < deadline, requests.get(traffic, timeout=10).text
            time.sleep(0.5)
        assert requests.get(traffic, timeout=10).json()["split"] == {}
    finally:
        assert server.stop() == 0

    code, out, err = run_cli("reject", str(version), "--reason", "auc dropped", "--workspace", str(rejected))
    assert code == 0 and "was canary" in out, err
    data = models(rejected)
    assert data["serving"]["labels"] == {"stable": before} and data["serving"]["loaded"] == [before]
    assert served(rejected) == [before]  # moved out of the serving directory, held
    assert (rejected / "release_hold" / "taxi" / str(version) / "saved_model.pb").is_file()
    assert read_traffic(str(rejected / "serving_model" / "traffic.json"))[0] == {}
    one_line_error(*run_cli("reject", str(version), "--reason", "x", "--workspace", str(rejected)), "not pending")


# --- the release report -----------------------------------------------------------------------------

SECTIONS = ("summary", "gates", "data", "metrics", "push", "lineage")


def browse(path: Path) -> tuple[str, list[str]]:
    """(the DOM after scripts ran, console messages) of a page opened in headless Chromium."""
    args = [CHROMIUM, "--headless", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses its sandbox to root
    done = subprocess.run([*args, path.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, re.findall(r":CONSOLE[^\]]*\] (.*)", done.stderr)


def rendering_problems(path: Path) -> list[str]:
    dom, console = browse(path)
    problems = [f"console: {line}" for line in console]
    problems += [f"section {s} missing" for s in SECTIONS if f'<section id="{s}">' not in dom]
    if 'data-rendered="yes"' not in dom:
        problems.append("the page's script did not finish")
    if not re.search(r'id="gate-count">\d+ gate\(s\), \d+ not passed<', dom):
        problems.append("gate count not filled in")
    return problems


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test-services installs it)")
def test_each_run_writes_a_release_report_that_renders_in_a_browser(first_run, tmp_path):
    workspace, code, out, _ = first_run
    assert code == 0
    path = Path(re.search(r"^Release report: (.+)$", out, re.M).group(1))
    assert path.is_file() and path.is_relative_to(workspace / "reports")
    assert run_cli("report", "--workspace", str(workspace)) == (0, f"{path}\n", "")
    (version,) = served(workspace)
    code, text, err = run_cli("report", str(version), "--workspace", str(workspace), "--json")
    info = json.loads(text)
    assert code == 0 and info["report"] == str(path) and info["version"] == version, err
    card = Path(info["model_card"]).read_text()
    for heading in ("## Intended use", "## Data window", "## Metrics by slice", "## Limitations"):
        assert heading in card
    assert re.search(r"\| payment_type=Cash \| \d\.\d{4}", card)  # metrics by slice
    assert run_cli("report", info["run_id"], "--workspace", str(workspace))[1] == f"{path}\n"
    one_line_error(*run_cli("report", "2001-01-01T00:00:00", "--workspace", str(workspace)), "no run")

    page = path.read_text()
    assert "<svg" in page and "<style>" in page  # inline SVG and CSS; nothing loaded from anywhere:
    assert not re.search(r"""(src|href)=['"]?(https?:|//)|@import|<link""", page)
    assert "Evaluator (TFMA thresholds)" in page and "BLESSED" in page and "binary_accuracy" in page
    assert rendering_problems(path) == []
    # The check fails on a missing section or a script that throws.
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("<section id='lineage'>", "<div>").replace("(function () {", "(function () {x();"))
    problems = rendering_problems(broken)
    assert "section lineage missing" in problems and any("ReferenceError" in p for p in problems), problems


def test_the_report_shows_the_verdict_of_any_gate_recorded_in_mlmd(first_run, tmp_path):
    """Gates other components record (an execution with a `verdict` about the run's model, as an audited
    override or a replay gate would) appear in the report without code for them."""
    from pipeline import config as config_lib
    from pipeline.metadata import queries as metadata
    from pipeline.metadata.snapshot import open_snapshot
    from pipeline.metadata.versions import pushed_versions

    workspace = tmp_path / "ws"
    shutil.copytree(first_run[0], workspace)
    config = config_lib.load(None, {"workspace": str(workspace)})
    (pushed,) = pushed_versions(open_snapshot(config))
    metadata.put_registry_execution(
        metadata.open_store(config, read_only=False),
        "mlpipe.SomeGate",
        config.pipeline_name,
        {"verdict": "NOT_BLESSED", "why": "divergence 0.31 > 0.05"},
        [("model", pushed.model)],
        [],
    )
    code, out, err = run_cli("report", "--regenerate", "--workspace", str(workspace))
    assert code == 0, err
    page = Path(out.strip()).read_text()
    assert "mlpipe.SomeGate" in page and "divergence 0.31 &gt; 0.05" in page and "a gate did not pass" in page
    if CHROMIUM:
        dom, console = browse(Path(out.strip()))
        assert console == [] and re.search(r'id="gate-count">\d+ gate\(s\), 1 not passed<', dom), dom
