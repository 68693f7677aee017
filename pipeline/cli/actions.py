"""What a `mlpipe monitor` alert sets off: the alert command, the webhook, and `mlpipe retrain`.

It starts processes, so it is CLI code (docs/architecture.md): the monitoring library only decides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline import logs
from pipeline.config import Config


def notify(config: Config, document: dict, timeout: float = 30.0) -> dict:
    """Runs the alert command (JSON on stdin) and POSTs the JSON to the webhook; returns what happened."""
    body = json.dumps(document, default=str).encode()
    result: dict[str, Any] = {"command": None, "webhook": None}
    m = config.monitoring
    if m.alert_command:
        try:
            done = subprocess.run(m.alert_command, shell=True, input=body, capture_output=True, timeout=timeout)
            result["command"] = {
                "exit_code": done.returncode,
                "ok": done.returncode == 0,
                "stderr": done.stderr.decode(errors="replace")[-500:],
            }
        except subprocess.TimeoutExpired:
            result["command"] = {"exit_code": None, "ok": False, "stderr": f"timed out after {timeout:.0f} s"}
    if m.webhook_url:
        request = urllib.request.Request(
            m.webhook_url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result["webhook"] = {"status": response.status, "ok": 200 <= response.status < 300}
        except urllib.error.HTTPError as e:
            result["webhook"] = {"status": e.code, "ok": False, "error": str(e)}
        except (urllib.error.URLError, OSError) as e:
            result["webhook"] = {"status": None, "ok": False, "error": str(getattr(e, "reason", e))}
    return result


def start_retrain(config: Config, config_file: str | None, extra_args: list[str] | None = None) -> dict:
    """Runs `mlpipe retrain` on the same workspace and config as a subprocess; its output goes to stderr."""
    argv = [sys.executable, "-m", "pipeline", "retrain", "--workspace", str(config.workspace_path)]
    if config_file:
        argv += ["--config", str(config_file)]
    argv += extra_args or []
    started = time.time()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(argv, capture_output=True, env=env)
    for stream in (done.stdout, done.stderr):  # on our stderr, so --json output stays one document
        logs.terminal().write(stream.decode(errors="replace"))
    return {"command": argv[1:], "exit_code": done.returncode, "seconds": round(time.time() - started, 1)}
