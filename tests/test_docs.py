"""Every command and request in README.md and docs/*.md, run as a user types it, output checked.

How commands are found: in each fenced code block, a line starting with "$ " is a command (the
lines up to the next "$ " are its documented output); in a block without prompts whose first line
starts with one of COMMAND_STARTS, every such line is a command. A command goes on over the next
lines while a quote is open or the line ends with a backslash. Usage synopses (with "[--..."
placeholders) are not run: each flag they name must be a flag of that command in the real parser.

Commands run with bash, with the venv's `mlpipe` and `python` first on PATH and PYTHONPATH at this
checkout, in a scratch directory that holds what the documents assume:
  ./workspace (and ./ws, the same)  a copy of the shared first run's workspace (one pushed version)
  ./data/taxi/data.csv              the tests' 3000-row slice of the taxi sample
  ./data/span-7/                    500 labelled rows of it
  ./mlpipe.toml                     `model_name = "taxi"`
Substitutions (the only edits made to a documented command):
  ports 8501 / 8500                 an ephemeral REST / gRPC port (the machine is shared)
  `mlpipe serve ...`                gets `--rest_api_port P --port Q` appended for the same reason
Documented output is compared as a template: numbers, versions, timestamps and elided paths ("...")
may differ, everything else must match; JSON output must have the documented keys and shape.
Commands that need what a test machine lacks are in NOT_RUN_HERE, with where else they are proven.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import cli

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND_STARTS = ("mlpipe ", "curl ", "make ", "python ", "docker ", "EX=", "0 * * * *")

# Documented commands not run by this module: (prefix, why, where else it is proven).
NOT_RUN_HERE = [
    ("make setup", "installs the venv; CI runs it", ".ci/run (test_readme_make_commands_are_what_ci_runs)"),
    ("make test", "the test suite itself; CI runs it", ".ci/run"),
    ("make run", "the whole pipeline on 15k rows; CI runs it after make test and checks the push", ".ci/run"),
    ("docker ", "no Docker engine on the test machines", "Dockerfile is not built here (docs/scale-out.md)"),
    ("mlpipe retrain --data-root spans", "a full pipeline run per call", "tests/test_retrain.py (retrain on spans)"),
    (
        "0 * * * *",
        "a crontab line: its command runs under cron on a server",
        "retrain --wait: tests/test_new_user.py; monitor --since/--retrain: tests/test_monitor.py",
    ),
    (
        "mlpipe monitor --workspace ws --since 5h --until 4h",
        "needs hours-old logged traffic",
        "tests/test_monitor.py writes such traffic and runs monitor with --since/--until",
    ),
    (
        "mlpipe run --config block.toml ...",
        "elided arguments: the hand check docs/monitoring.md describes",
        "tests/test_monitor.py (the drift gate's comparison, strategy and wiring)",
    ),
    ("mlpipe run --config warn.toml ...", "elided arguments (the same hand check)", "tests/test_monitor.py"),
    ("mlpipe lineage 1795324391 ...", "elided arguments (the same hand check)", "tests/test_registry.py (lineage)"),
    ("python bench/", "benchmarks are run by hand", "docs/performance.md"),
    (
        "mlpipe init myproj --data penguins.csv",
        "needs the reader's own CSV",
        "tests/test_byo_project.py (mlpipe init on a CSV, then mlpipe run --config on the scaffolded project)",
    ),
    ("mlpipe run --config myproj/mlpipe.toml", "the project the init line creates", "tests/test_byo_project.py"),
    (
        "mlpipe monitor --workspace ws --since 2026-",
        "needs traffic logged at those exact times",
        "tests/test_monitor.py writes traffic and runs monitor with --since/--until",
    ),
    (
        "mlpipe monitor --config mlpipe.toml --labels shifted.csv",
        "needs keyed traffic of a live server in two windows and two pushed versions",
        "tests/test_feedback.py runs both commands there and matches their documented output",
    ),
    (
        "mlpipe label set stable 1795321741 --reason",
        "needs that pushed version and a live server",
        "tests/test_promotion.py (label set --reason --wait-server against a live mlpipe serve)",
    ),
]


@dataclass
class DocCommand:
    path: Path
    line: int
    text: str
    output: list[str]  # the documented output lines (prompt blocks only)
    block: int  # index of its code block in its document

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def synopsis(self) -> bool:
        return re.search(r"\[[a-z-]", self.text) is not None  # e.g. [--by month|quarter], [same flags]


def _open(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return True
    return command.endswith("\\")


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for index, match in enumerate(FENCE.finditer(text)):
            lines = match.group(2).splitlines()
            first_line = text[: match.start()].count("\n") + 2
            prompts = any(line.startswith("$ ") for line in lines)
            if not prompts and not (lines and lines[0].startswith(COMMAND_STARTS)):
                continue
            i = 0
            while i < len(lines):
                line = lines[i]
                starts = line.startswith("$ ") if prompts else line.startswith(COMMAND_STARTS)
                if not starts:
                    i += 1
                    continue
                start = i
                command = [line[2:] if prompts else line]
                while i + 1 < len(lines) and (
                    _open("\n".join(command)) or (not prompts and lines[i + 1].startswith(" "))
                ):
                    i += 1
                    command.append(lines[i])
                i += 1
                output = []
                while prompts and i < len(lines) and not lines[i].startswith("$ "):
                    output.append(lines[i])
                    i += 1
                found.append(DocCommand(path, first_line + start, "\n".join(command), output, index))
    return found


def find(prefix: str) -> list[DocCommand]:
    hits = [c for c in doc_commands() if c.text.startswith(prefix)]
    assert hits, f"no documented command starts with {prefix!r}"
    return hits


def block_of(command: DocCommand) -> list[DocCommand]:
    return [c for c in doc_commands() if c.path == command.path and c.block == command.block]


# --- output templates --------------------------------------------------------------------------------


def template(line: str, values: dict[str, str] | None = None) -> re.Pattern:
    """A documented output line as a pattern: numbers and "..." may differ, the rest must match.

    A documented decimal stands for a measured float, which may also be `nan` (TFMA's value of a metric
    that is undefined on the data, e.g. precision when nothing is predicted positive)."""
    line = line.split("   # ")[0].rstrip()
    for placeholder, actual in (values or {}).items():
        line = line.replace(placeholder, "\0" + actual + "\0")
    parts = re.split(r"(\.\.\.|\d+(?:\.\d+)?|\0[^\0]*\0)", line)
    pattern = ""
    for part in parts:
        if part == "...":
            pattern += ".*"
        elif part and part[0] == "\0":
            pattern += re.escape(part.strip("\0"))
        elif re.fullmatch(r"\d+\.\d+", part or "x"):  # a measured value: any float, NaN included
            pattern += r"(?:-?\d+(?:\.\d+)?(?:e-?\d+)?|nan)"  # (e.g. precision with no positive prediction)
        elif re.fullmatch(r"\d+", part or "x"):
            pattern += r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
        else:
            pattern += re.escape(part)
    return re.compile(pattern + "$")


def assert_matches(documented: list[str], actual: str, values: dict[str, str] | None = None) -> None:
    doc_lines = [line for line in documented if line.strip()]
    out_lines = actual.rstrip("\n").splitlines()
    assert len(out_lines) == len(doc_lines), f"documented:\n{chr(10).join(doc_lines)}\nprinted:\n{actual}"
    for doc, out in zip(doc_lines, out_lines):
        assert template(doc, values).match(out), f"documented: {doc}\nprinted:    {out}"


def shape(value):
    """The JSON structure without its numbers: keys, list lengths, types (ints and floats alike)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    return "number" if isinstance(value, (int, float)) else value


def json_documents(text: str) -> list:
    """The JSON documents printed one after another (curl -s adds no newline between them)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
    return docs


def documented_json(line: str):
    return json.loads(line.split("   # ")[0])


# --- running ------------------------------------------------------------------------------------------


def env() -> dict:
    e = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_USE_LEGACY_KERAS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    e.pop("MLPIPE_WORKSPACE", None)
    return e


def bash(script: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A documented `mlpipe serve` command, started in the background with ephemeral ports."""

    def __init__(self, command: str, cwd: Path):
        import requests

        self.rest, self.grpc = free_port(), free_port()
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command.split(' # ')[0].strip()} --rest_api_port {self.rest} --port {self.grpc}"],
            cwd=cwd,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                status = requests.get(f"http://127.0.0.1:{self.rest}/v1/models/taxi", timeout=2)
                if status.status_code == 200 and "AVAILABLE" in status.text:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"`{command}` did not serve: {self.proc.stderr.read()[-3000:]}")

    def subs(self, text: str) -> str:
        for host in ("localhost", "127.0.0.1"):
            text = text.replace(f"{host}:8501", f"127.0.0.1:{self.rest}").replace(
                f"{host}:8500", f"127.0.0.1:{self.grpc}"
            )
        return text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode


def versions(workspace: Path) -> list[int]:
    return sorted(int(p.name) for p in (workspace / "serving_model" / "taxi").iterdir() if p.name.isdigit())


def make_home(first_run, taxi_slice, dest: Path) -> Path:
    assert first_run[1] == 0, first_run[2] + first_run[3]
    shutil.copytree(first_run[0], dest / "workspace")
    (dest / "ws").symlink_to("workspace")
    (dest / "data" / "taxi").mkdir(parents=True)
    shutil.copy(taxi_slice / "data.csv", dest / "data" / "taxi" / "data.csv")
    (dest / "data" / "span-7").mkdir(parents=True)
    with open(taxi_slice / "data.csv") as src, open(dest / "data" / "span-7" / "data.csv", "w") as out:
        out.writelines(line for n, line in enumerate(src) if n <= 500)
    (dest / "mlpipe.toml").write_text('model_name = "taxi"\n')
    return dest


@pytest.fixture(scope="module")
def home(first_run, taxi_slice, tmp_path_factory):
    return make_home(first_run, taxi_slice, tmp_path_factory.mktemp("docs-home"))


@pytest.fixture(scope="module")
def server(home):
    (serve,) = [c for c in find("mlpipe serve") if c.text.split("#")[0].strip() == "mlpipe serve"]
    s = Server(serve.text, home)
    yield s
    assert s.stop() == 0


# --- which commands are run ---------------------------------------------------------------------------

RUN_HERE = {  # prefix of a documented command: the test below that runs it
    "mlpipe serve": "server fixture, test_serve_commands_of_the_docs_start_a_server",  # every one of them
    "python -m serving --help": "test_serve_commands_of_the_docs_start_a_server",
    "curl ": "test_documented_requests_get_the_documented_answers",
    "EX=": "test_documented_requests_get_the_documented_answers",
    "mlpipe ingest data/taxi/data.csv": "test_ingest_replay_commands",
    "mlpipe monitor --workspace ws --evaluate": "test_monitor_evaluate_prints_the_documented_report",
    "mlpipe rollback": "test_rollback_prints_the_documented_lines",
    "mlpipe compile --target vertex -o build/mlpipe.json --image": "test_compile_command_of_the_docker_section",
    "mlpipe report": "test_report_prints_the_documented_path",
}


def test_every_documented_command_is_run_here_or_listed_with_where_else():
    commands = doc_commands()
    assert len(commands) > 20
    unaccounted = [
        f"{c.where}: {c.text.splitlines()[0]}"
        for c in commands
        if not c.synopsis
        and not any(c.text.startswith(p) for p in RUN_HERE)
        and not any(c.text.startswith(p) for p, *_ in NOT_RUN_HERE)
    ]
    assert not unaccounted, "documented commands no test runs:\n" + "\n".join(unaccounted)
    names = set(globals())
    for how in RUN_HERE.values():
        assert all(t.strip().split(" ")[0] in names for t in how.split(",")), how


def _subparser(path: list[str]):
    import argparse

    parser = cli.build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_every_flag_of_a_usage_synopsis_is_a_flag_of_the_real_command():
    synopses = [c for c in doc_commands() if c.synopsis and c.text.startswith("mlpipe ")]
    assert len(synopses) >= 5
    for c in synopses:
        for line in c.text.splitlines():
            words = line.split()
            if words and words[0] == "mlpipe":
                command = [words[1]] if words[1] != "label" else ["label", words[2]]
        parser = _subparser(command)
        known = {o for a in parser._actions for o in a.option_strings}
        named = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", c.text.replace("every `mlpipe run` knob", "")))
        assert named <= known, f"{c.where}: {sorted(named - known)} are not flags of mlpipe {' '.join(command)}"


def test_readme_make_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    steps = [line.strip() for line in ci if line.strip().startswith("make ")]
    assert steps == ["make setup", "make test", "make run"], steps
    for c in find("make "):
        for part in c.text.split("#")[0].split("&&"):
            assert part.strip() in steps, f"{c.where}: `{part.strip()}` is not run by .ci/run"


# --- the commands themselves ------------------------------------------------------------------------


def test_documented_requests_get_the_documented_answers(home, server):
    blocks = {}
    for c in find("curl ") + find("EX="):
        blocks.setdefault((c.path, c.block), []).append(c)
    assert len(blocks) >= 3
    for commands in blocks.values():
        script = "\n".join(server.subs(c.text) for c in commands)
        done = bash(script, home, timeout=300)
        where = commands[0].where
        assert done.returncode == 0 and "error" not in done.stdout, f"{where}: {done.stdout}{done.stderr[-2000:]}"
        answers = json_documents(done.stdout)
        assert len(answers) == sum(1 for c in commands if c.text.startswith("curl")), (where, done.stdout)
        for answer in answers:
            values = answer.get("predictions") or [row[0][1] for row in answer["results"]]
            flat = [v for row in values for v in (row if isinstance(row, list) else [row])]
            assert flat and all(0.0 <= v <= 1.0 for v in flat), (where, answer)  # probabilities of a big tip
        documented = [line for c in commands for line in c.output if line.startswith("{")]
        for doc in documented:  # the last request's answer has the documented shape
            assert shape(answers[-1]) == shape(documented_json(doc)), (where, doc, answers[-1])


def test_serve_commands_of_the_docs_start_a_server(home, server):
    """Every documented `mlpipe serve ...` command serves the taxi model (the plain one is the
    `server` fixture). registry.md's models.config one runs after its documented `label set`."""
    import requests

    (version,) = versions(home / "workspace")
    done = bash(f"mlpipe label set stable {version}", home, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    written = (home / "workspace" / "serving_model" / "models.config").read_text()
    documented = next(c for c in doc_commands() if c.text.startswith("mlpipe serve --model_config_file"))
    config_block = next(
        m.group(2) for m in FENCE.finditer(documented.path.read_text()) if m.group(2).startswith("model_config_list")
    )
    base = str((home / "workspace" / "serving_model" / "taxi").resolve())
    # The documented file lists two versions (a labelled one and the latest); here both are the one
    # version. Text protos are compared token by token (the file is written one field a line).
    documented_text = " ".join(config_block.replace(" versions: 1795321741", "").split())
    assert_matches([documented_text], " ".join(written.split()), {"/abs/workspace/serving_model/taxi": base})
    others = [c for c in find("mlpipe serve") if not c.synopsis and c.text.split(" # ")[0].strip() != "mlpipe serve"]
    assert len(others) >= 2
    for c in others:
        s = Server(c.text, home)
        try:
            if "--model_config_file" in c.text:
                r = requests.get(f"http://127.0.0.1:{s.rest}/v1/models/taxi/labels/stable", timeout=10)
                assert r.status_code == 200 and r.json()["model_version_status"][0]["version"] == str(version), r.text
        finally:
            assert s.stop() == 0, c.where
    (helped,) = find("python -m serving --help")
    done = bash(helped.text.split(" # ")[0], home, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m serving"), done.stdout + done.stderr


def test_ingest_replay_commands(home, tmp_path):
    commands = [c for c in find("mlpipe ingest data/taxi/data.csv") if "--next 1" in c.text]
    assert len(commands) == 2
    for number, c in enumerate(commands, start=1):
        done = bash(c.text, home, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        quarter = re.search(r"span \d+ = (\d{4}-Q\d)", c.text).group(1)  # the comment says which
        assert re.match(
            rf"\s*span {number}\s+{quarter}\s+\d+ rows\s+spans/span-{number}$", done.stdout.splitlines()[0]
        ), done.stdout
        assert (home / "spans" / f"span-{number}" / "data.csv").is_file()


def test_monitor_evaluate_prints_the_documented_report(home):
    (c,) = find("mlpipe monitor --workspace ws --evaluate")
    done = bash(c.text, home, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # TF, CUDA, absl and FutureWarning lines go to the workspace's monitor.log
    assert_matches(c.output, done.stdout)
    assert "tensorflow" in (home / "workspace" / "logs" / "monitor.log").read_text()


def test_rollback_prints_the_documented_lines(first_run, taxi_slice, tmp_path):
    home = make_home(first_run, taxi_slice, tmp_path)
    base = home / "workspace" / "serving_model" / "taxi"
    (version,) = versions(home / "workspace")
    # A second version to roll back from (a hand-copied directory; MLMD has no push of it).
    shutil.copytree(base / str(version), base / str(version + 1))
    (c,) = find("mlpipe rollback --reason")
    done = bash(c.text, home, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_matches(c.output, done.stdout, {"alice": getpass.getuser()})
    assert versions(home / "workspace") == [version, version + 1, version + 2]


def test_compile_command_of_the_docker_section(home):
    (c,) = find("mlpipe compile --target vertex -o build/mlpipe.json --image")
    done = bash(c.text, home, timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    assert done.stdout.startswith("mlpipe: compiled 'mlpipe-taxi' for vertex: build/mlpipe.json")
    job = json.loads((home / "build" / "mlpipe.json").read_text())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://my-bucket/mlpipe"


def test_report_prints_the_documented_path(home):
    (c,) = find("mlpipe report")
    done = bash(c.text, home, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    assert_matches(c.output, done.stdout)
    assert Path(done.stdout.strip()).is_file()
