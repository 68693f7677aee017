"""Helpers of the bring-your-own-model tests: a project directory, and `mlpipe serve` on its workspace."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import socket
from pathlib import Path

import requests
import tensorflow as tf

from tests.conftest import run_cli

TFX_EXAMPLES = Path(tf.__file__).resolve().parent.parent / "tfx" / "examples"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_config(path: Path, top: dict, sections: dict) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_json(*argv):
    code, out, err = run_cli(*argv, "--json")
    assert code == 0, out + err
    return json.loads(out)


def rows(csv_path: Path, types: dict, n: int, skip: tuple = ()) -> list[dict]:
    """`n` rows of the CSV typed as `types` says, without the `skip` columns: rows whose float values are
    all present; a missing integer becomes 0 and a missing string "" (sent alike to every signature)."""
    cast = {"int": int, "float": float, "string": str}
    fill = {"int": "0", "string": ""}
    out = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if all(v != "" for k, v in row.items() if types[k] == "float"):
                out.append({k: cast[types[k]](v or fill[types[k]]) for k, v in row.items() if k not in skip})
            if len(out) == n:
                break
    return out


def example_bytes(row: dict, types: dict) -> bytes:
    feats = {}
    for key, value in row.items():
        if types[key] == "string":
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        elif types[key] == "float":
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@contextlib.contextmanager
def mlpipe_serve(config: Path, *flags: str):
    """`mlpipe serve` on the config's pushed model, in-process, on free ports; `flags`: more serve flags."""
    from pipeline import cli
    from pipeline.config import load
    from serving import cli as serving_cli
    from serving.server import ModelServer

    cfg = load(config)
    with socket.socket() as s:  # `--rest_api_port 0` turns REST off: pick a free port
        s.bind(("127.0.0.1", 0))
        rest_port = s.getsockname()[1]
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--model_name",
            cfg.model_name,
            "--model_base_path",
            str(cfg.serving_model_dir),
            "--port",
            "0",
            "--rest_api_port",
            str(rest_port),
            "--file_system_poll_wait_seconds",
            "0",
            *flags,
        ]
    )
    server = ModelServer(serving_cli.build_options(args)).start()
    try:
        yield server
    finally:
        server.stop()


def serve_three_ways(server, model_name: str, examples: list[dict], types: dict, raw_label_keys=()):
    """serving_raw, :classify and b64 :predict on the same rows; returns the three score arrays."""
    import numpy as np

    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{model_name}"
    sigs = requests.get(url + "/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/classify"
    raw_inputs = set(sigs["serving_raw"]["inputs"])
    assert raw_inputs == {k for k in types if k not in raw_label_keys}

    raw = requests.post(
        url + ":predict",
        json={
            "signature_name": "serving_raw",
            "instances": [{k: r[k] for k in raw_inputs} for r in examples],
        },
    )
    assert raw.status_code == 200, raw.text
    by_raw = np.array(raw.json()["predictions"], dtype=float).reshape(len(examples), -1)

    classified = requests.post(url + ":classify", json={"examples": examples})
    assert classified.status_code == 200, classified.text
    by_classify = np.array([[score for _, score in result] for result in classified.json()["results"]])

    b64 = [{"b64": base64.b64encode(example_bytes(r, types)).decode()} for r in examples]
    predicted = requests.post(url + ":predict", json={"instances": b64})
    assert predicted.status_code == 200, predicted.text
    by_b64 = np.array(predicted.json()["predictions"], dtype=float).reshape(len(examples), -1)
    return by_raw, by_classify, by_b64
