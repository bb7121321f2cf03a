"""The model pool: versions, idempotence, and nothing corrupted ever used."""

from __future__ import annotations

import json

import onnx
import pytest
from graphs import chain, residual

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
    assert files_there == ["manifest.json", "model.onnx"]
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
