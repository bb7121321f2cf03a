"""The model CLI as users run it: JSON contract, files written, one-line errors."""

from __future__ import annotations

import json
import subprocess

import onnx
import pytest
from clitools import cli_env, run_cli
from graphs import residual


def splitmq(*args: str, pool) -> subprocess.CompletedProcess:
    return run_cli(*args, env=cli_env(pool=pool))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "resnet_tiny.onnx"
    onnx.save(residual(), path)
    return path


def test_inspect_json_contract(model_file, tmp_path):
    r = splitmq("inspect", str(model_file), "--json", pool=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "resnet_tiny"
    assert d["input"] == {"name": "x", "shape": [1, 4, 8, 8], "bytes": 1024}
    assert [c["index"] for c in d["cuts"]] == list(range(len(d["cuts"])))
    assert set(d["cuts"][0]) >= {
        "index",
        "name",
        "shape",
        "dtype",
        "bytes",
        "macs_before",
        "macs_after",
        "params_before",
        "params_after",
    }


def test_pool_add_list_show_and_split(model_file, tmp_path):
    assert splitmq("pool", "add", str(model_file), "--name", "tiny", pool=tmp_path).returncode == 0
    listed = json.loads(splitmq("pool", "list", "--json", pool=tmp_path).stdout)
    assert [(m["name"], m["version"]) for m in listed["models"]] == [("tiny", 1)]
    shown = json.loads(splitmq("pool", "show", "tiny", "--json", pool=tmp_path).stdout)
    assert shown["sha256"] == listed["models"][0]["sha256"]
    out = tmp_path / "parts"
    r = splitmq("split", "tiny", "--cut", "2", "--cut", "4", "-o", str(out), pool=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "equivalent" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cloud.onnx", "device.onnx", "edge.onnx"]
    for p in out.iterdir():
        onnx.checker.check_model(onnx.load(p))


def test_profile_stores_a_profile(model_file, tmp_path):
    splitmq("pool", "add", str(model_file), "--name", "tiny", pool=tmp_path)
    r = splitmq("profile", "tiny", "--json", "--repeats", "3", pool=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["full_ms"] > 0 and len(d["cuts"]) == 9
    shown = json.loads(splitmq("pool", "show", "tiny", "--json", pool=tmp_path).stdout)
    assert len(shown["profiles"]) == 1 and shown["profiles"][0]["host"]["threads"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/no/such/file.onnx"], "no such file"),
        (["inspect", "__NOTONNX__"], "not an ONNX model"),
        (["inspect", "nonexistent-model"], "no model 'nonexistent-model'"),
        (["split", "__MODEL__", "--cut", "99", "-o", "__OUT__"], "has no cut 99"),
        (["split", "__MODEL__", "--cut", "3", "--cut", "2", "-o", "__OUT__"], "cloud cut"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(model_file, tmp_path, args, message):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    args = [
        a.replace("__NOTONNX__", str(junk))
        .replace("__MODEL__", str(model_file))
        .replace("__OUT__", str(tmp_path / "o"))
        for a in args
    ]
    r = splitmq(*args, pool=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
