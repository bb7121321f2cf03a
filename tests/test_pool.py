"""The model pool: versions, idempotence, and nothing corrupted ever used."""

from __future__ import annotations

import json
import os

import onnx
import pytest
from clitools import run_cli
from graphs import chain, early_exit, residual

from splitmq.shared.errors import ModelError, PoolError
from splitmq.shared.model.pool import ModelPool, open_model


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(chain(), a)
    onnx.save(residual(), b)
    return a, b


def test_same_file_twice_is_one_version_a_changed_file_is_the_next(tmp_path, files):
    pool = ModelPool(tmp_path / "pool")
    first = pool.add(files[0], "net")
    again = pool.add(files[0], "net")
    assert (first.version, again.version) == (1, 1)
    changed = pool.add(files[1], "net")
    assert changed.version == 2 and pool.versions("net") == [1, 2]
    assert pool.get("net").version == 2
    assert pool.get("net", 1).manifest.sha256 == first.manifest.sha256
    assert open_model(pool, "net@1").version == 1


def test_manifest_records_the_layout(tmp_path, files):
    mv = ModelPool(tmp_path / "pool").add(files[0], "net")
    files_there = sorted(p.name for p in mv.dir.iterdir())
    assert files_there == ["config.toml", "manifest.json", "model.onnx"]
    raw = json.loads((mv.dir / "manifest.json").read_text())
    assert raw["input"]["name"] == "x" and raw["cuts"][0]["index"] == 0
    mv.segment(1, 3)
    assert (mv.dir / "partitions" / "1_3.onnx").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "replace"])
def test_a_damaged_model_file_is_refused(tmp_path, files, damage):
    pool = ModelPool(tmp_path / "pool")
    path = pool.add(files[0], "net").dir / "model.onnx"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    else:
        path.write_bytes(files[1].read_bytes())
    with pytest.raises(PoolError, match="corrupted or tampered"):
        pool.get("net").model_bytes  # noqa: B018


def test_a_corrupted_manifest_is_a_clear_error(tmp_path, files):
    pool = ModelPool(tmp_path / "pool")
    mv = pool.add(files[0], "net")
    (mv.dir / "manifest.json").write_text('{"name": "net", "version"')
    with pytest.raises(PoolError, match="corrupted manifest"):
        pool.get("net")


def test_a_tampered_cached_partition_is_rebuilt_not_used(tmp_path, files, caplog):
    pool = ModelPool(tmp_path / "pool")
    mv = pool.add(files[0], "net")
    good = mv.segment(0, 2)
    (mv.dir / "partitions" / "0_2.onnx").write_bytes(b"garbage")
    assert pool.get("net").segment(0, 2) == good
    assert "corrupted" in caplog.text


def test_bad_names_and_missing_models(tmp_path, files):
    pool = ModelPool(tmp_path / "pool")
    with pytest.raises(PoolError, match="bad model name"):
        pool.add(files[0], "../evil")
    with pytest.raises(PoolError, match="no model 'nope'"):
        pool.get("nope")
    with pytest.raises(ModelError, match="no such file"):
        pool.add(tmp_path / "missing.onnx", "net")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not protobuf")
    with pytest.raises(ModelError, match="not an ONNX model"):
        pool.add(junk, "net")


def test_a_checkout_finds_the_pool_make_built(tmp_path, files):
    """After `make`, commands run in the checkout use its ./.pool with no settings; an
    empty pool elsewhere names the setting that points at the right one."""
    ModelPool(tmp_path / ".pool").add(files[0], "net")
    env = {k: v for k, v in os.environ.items() if k != "SPLITMQ_POOL"}
    env["HOME"] = str(tmp_path / "home")  # and no pool in the user's cache
    listed = run_cli("pool", "list", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    assert answer["pool"] == str(tmp_path / ".pool")
    assert [m["name"] for m in answer["models"]] == ["net"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = run_cli("inspect", "net", env=env, cwd=elsewhere)
    assert missing.returncode == 2
    assert "SPLITMQ_POOL" in missing.stderr
    assert str(tmp_path / "home") in missing.stderr


def test_a_new_version_keeps_the_previous_ones_preprocessing_and_labels(tmp_path, files):
    from splitmq.shared.model.manifest import Preprocess

    pool = ModelPool(tmp_path / "pool")
    pre = Preprocess(size=(8, 8), mean=[0.0] * 16, std=[1.0] * 16, channels="RGB")
    v1 = pool.add(files[0], "net", preprocess=pre, labels=["a", "b", "c"])
    retrained = onnx.load(files[0])
    retrained.doc_string = "retrained"
    onnx.save(retrained, tmp_path / "v2.onnx")
    v2 = pool.add(tmp_path / "v2.onnx", "net")
    assert v2.version == 2 and v2.manifest.preprocess == v1.manifest.preprocess
    assert v2.labels == ["a", "b", "c"]
    onnx.save(early_exit(), tmp_path / "two-outputs.onnx")  # not the same network's shape
    other = pool.add(tmp_path / "two-outputs.onnx", "net")
    assert other.version == 3 and other.manifest.preprocess is None and other.labels is None
