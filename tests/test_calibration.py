"""Calibration and fidelity: clip ranges in the manifest, codec_params, held-out measurements."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli
from graphs import chain, early_exit

from splitmq.shared.codecs import decode, encode
from splitmq.shared.errors import UserError
from splitmq.shared.model.calibration import FidelityRow
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline.calibration import (
    calibrate,
    check_cuts,
    default_cuts,
    parse_cuts,
    save,
)
from splitmq.shared.offline.clipping import CALIBRATED, CutValues, choose_range, static_range
from splitmq.shared.offline.exit_curves import exit_curves
from splitmq.shared.offline.fidelity import (
    EARLY_BELOW,
    EARLY_MIN,
    PRECISE,
    Taps,
    pareto,
    wilson,
)
from splitmq.shared.offline.samples import Samples, real_samples

ROW_KEYS = {
    "cut",
    "codec",
    "bytes",
    "ratio",
    "agreement",
    "accuracy",
    "samples",
    "encode_ms",
    "decode_ms",
}
CUTS = [0, 1, 10]  # the input, a (32, 28, 28) feature map, a (256,) vector


def _copy(real_pool: ModelPool, name: str, root: Path) -> ModelVersion:
    """The real model in a pool of its own, so calibrating it leaves the shared pool alone."""
    mv = real_pool.get(name)
    return ModelPool(root).add(
        mv.dir / "model.onnx", name, preprocess=mv.manifest.preprocess, labels=mv.labels
    )


def _stored(mv: ModelVersion) -> dict:
    """The calibration as the manifest stores it: the on-disk contract."""
    return json.loads((mv.dir / "manifest.json").read_text())["calibration"]


@pytest.fixture(scope="module")
def mnist(real_pool: ModelPool, tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    return _copy(real_pool, "mnist-cnn", tmp_path_factory.mktemp("pool"))


@pytest.fixture(scope="module")
def calibrated(mnist: ModelVersion) -> ModelVersion:
    """mnist-cnn calibrated on 200 digits and measured on 300 others, saved."""
    calibration, evaluation = real_samples(mnist, 200, 300)
    save(mnist, calibrate(mnist, calibration, evaluation, CUTS))
    return ModelPool(mnist.dir.parent.parent).get(mnist.name)


def test_calibration_writes_ranges_per_tensor_and_per_channel(calibrated: ModelVersion) -> None:
    cal = _stored(calibrated)
    # Cut 0 travels as u8 or JPEG pixels: nothing to calibrate there.
    assert sorted(cal["cuts"]) == ["1", "10"]
    ranges = cal["cuts"]["1"]
    assert set(ranges) == set(CALIBRATED)
    for codec in ("q4", "q2"):
        assert isinstance(ranges[codec]["lo"], float)
        assert ranges[codec]["lo"] < ranges[codec]["hi"]
    for codec in ("q4c", "q2c"):
        lo, hi = np.array(ranges[codec]["lo"]), np.array(ranges[codec]["hi"])
        assert lo.shape == hi.shape == (32,) and (lo < hi).all()
    # One value per channel: a message's own per-channel range is exact, so no static one.
    assert cal["cuts"]["10"]["q4c"] is None and cal["cuts"]["10"]["q2c"] is None
    assert cal["samples"]["calibration"] == 200 and cal["samples"]["evaluation"] == 300
    assert all(set(row) == ROW_KEYS for row in cal["fidelity"])


def test_codec_params_gives_the_calibrated_ranges(calibrated: ModelVersion) -> None:
    per_channel = calibrated.codec_params(1, "q4c")
    assert per_channel is not None and len(per_channel["lo"]) == len(per_channel["hi"]) == 32
    assert calibrated.codec_params(1, "q4c+zstd") == per_channel
    per_tensor = calibrated.codec_params(1, "q4")
    assert per_tensor is not None and isinstance(per_tensor["hi"], float)
    for codec in ("raw", "fp16", "int8", "int8c", "clip4", "u8", "jpeg:85"):
        assert calibrated.codec_params(1, codec) is None, codec
    assert calibrated.codec_params(10, "q4c") is None  # the message's own range is better
    assert calibrated.codec_params(5, "q4c") is None  # a cut not calibrated
    assert calibrated.codec_params(0, "q4") is None


def test_calibrated_ranges_beat_min_max_on_held_out_digits(calibrated: ModelVersion) -> None:
    _, held_out = real_samples(calibrated, 10, 200)  # digits 1000.. never calibrated on
    _, tensors = Taps(calibrated, [1]).run(held_out.inputs)
    x = tensors[1]
    for codec in CALIBRATED:
        errors = []
        for params in (calibrated.codec_params(1, codec), None):
            decoded = np.concatenate([decode(encode(one[None], codec, params)) for one in x])
            errors.append(float(np.mean((decoded - x) ** 2)))
        assert errors[0] < 0.8 * errors[1], (codec, errors)


def test_mnist_fidelity_has_sane_accuracy(calibrated: ModelVersion) -> None:
    cal = _stored(calibrated)
    assert cal["accuracy"] >= 0.97
    rows = {(row["cut"], row["codec"]): row for row in cal["fidelity"]}
    assert rows[(1, "raw")]["agreement"] == 1.0 and rows[(10, "raw")]["agreement"] == 1.0
    assert rows[(0, "u8")]["ratio"] == pytest.approx(4.0, rel=0.01)
    for row in cal["fidelity"]:
        assert row["accuracy"] is not None and 0.9 <= row["accuracy"] <= 1.0, row
        assert row["bytes"] > 0 and row["ratio"] == pytest.approx(
            calibrated.cuts[row["cut"]].bytes / row["bytes"], rel=1e-3
        )
    # 8 bits keep the digits; the lossless stage changes bytes, never the outcome.
    assert rows[(1, "int8")]["agreement"] >= 0.99
    assert rows[(1, "q4c+zstd")]["agreement"] == rows[(1, "q4c")]["agreement"]
    assert rows[(1, "q4c+zstd")]["bytes"] < rows[(1, "q4c")]["bytes"]


def test_calibration_and_evaluation_digits_are_disjoint(mnist: ModelVersion) -> None:
    calibration, evaluation = real_samples(mnist, 1000, 4000)
    assert calibration.pixels is not None and evaluation.pixels is not None
    seen = {image.tobytes() for image in calibration.pixels}
    assert not any(image.tobytes() in seen for image in evaluation.pixels)
    with pytest.raises(UserError, match="MNIST has"):
        real_samples(mnist, 10, 4001)


def test_cut_choice(mnist: ModelVersion, real_pool: ModelPool) -> None:
    # Every cut but the logits (device-only sends nothing): size in fp32 says little about
    # what a cut costs once compressed.
    assert default_cuts(mnist) == list(range(mnist.last_cut))
    # EfficientNet's static-padding Pads only add a border to the cut before: left out.
    effnet = real_pool.get("efficientnet-lite0")
    chosen = default_cuts(effnet)
    pads = [c.index for c in effnet.cuts if "static_padding/Pad" in c.name]
    assert pads and not set(pads) & set(chosen)
    assert 54 in chosen and set(chosen) | set(pads) == set(range(effnet.last_cut))
    assert parse_cuts(mnist, "10,3,3") == [3, 10]
    assert parse_cuts(mnist, "all") == list(range(mnist.last_cut))
    with pytest.raises(UserError, match="device-only"):
        check_cuts(mnist, [mnist.last_cut])
    with pytest.raises(UserError, match="cut indices"):
        parse_cuts(mnist, "3;4")


def test_static_range_clips_outliers_and_keeps_dead_channels_exact() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((50, 3, 64)).astype(np.float32)
    values[:, 1] = 0.0  # a dead channel
    values[0, 2, 0] = 40.0  # one outlier: min/max would spend most codes on it
    lo, hi = static_range(values, 2, per_channel=True)
    assert lo.shape == hi.shape == (3,) and (lo < hi).all()
    assert lo[1] == 0.0 and hi[2] < 40.0
    lo, hi = static_range(values, 4, per_channel=False, clip="minmax")
    assert lo.shape == () and hi == 40.0
    # 2 bits over each message's own extremes waste codes on the tails: a static clip wins.
    large = rng.standard_normal((20, 4, 256)).astype(np.float32)
    assert choose_range(CutValues.of(large), 2, per_channel=False) is not None


def test_auto_uses_each_message_range_where_that_is_exact() -> None:
    values = np.random.default_rng(1).standard_normal((50, 16, 1)).astype(np.float32)
    assert choose_range(CutValues.of(values), 4, per_channel=True) is None
    assert choose_range(CutValues.of(values), 4, per_channel=True, clip="mse") is not None
    assert choose_range(CutValues.of(values), 4, per_channel=False, clip="none") is None


def test_a_model_without_preprocessing_calibrates_on_given_samples(tmp_path: Path) -> None:
    onnx.save(chain(), tmp_path / "chain.onnx")
    mv = ModelPool(tmp_path / "pool").add(tmp_path / "chain.onnx", "chain")
    with pytest.raises(UserError, match=r"no image preprocessing.*--config"):
        real_samples(mv, 10, 10)
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((60, 4, 8, 8)).astype(np.float32)
    result = calibrate(mv, Samples(inputs[:30]), Samples(inputs[30:]), [0, 2])
    assert sorted(result.ranges) == ["0", "2"]  # a float input is a feature map too
    assert {row.codec for row in result.rows if row.cut == 0} >= {"raw", "q4c", "q2c+zstd"}
    assert all(row.accuracy is None for row in result.rows)
    assert all(row.agreement == 1.0 for row in result.rows if row.codec in ("raw", "fp16"))


def test_pareto_keeps_rows_nothing_beats() -> None:
    rows = [
        FidelityRow(1, "a", 100, 1, 0.90, None, 200, 0.1, 0.1),
        FidelityRow(1, "b", 200, 1, 0.95, None, 200, 0.1, 0.1),
        FidelityRow(2, "c", 150, 1, 0.99, None, 200, 0.1, 0.1),
        FidelityRow(2, "d", 300, 1, 0.99, None, 200, 0.1, 0.1),
        FidelityRow(0, "e", 50, 1, 0.50, None, 200, 0.1, 0.1),
    ]
    assert [row.codec for row in pareto(rows)] == ["e", "a", "c"]


def _splitmq(*args: str, pool: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, env=cli_env(pool=pool))


def test_cli_json_rows_and_manifest(
    real_pool: ModelPool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("cli")
    _copy(real_pool, "mnist-cnn", root)
    args = ("calibrate", "mnist-cnn", "--samples", "100", "--calibration-samples", "50")
    r = _splitmq(*args, "--cuts", "0,10", "--json", pool=root)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["rows"] and all(set(row) == ROW_KEYS for row in doc["rows"])
    assert {row["cut"] for row in doc["rows"]} == {0, 10}
    assert doc["accuracy"] is not None and doc["samples"]["evaluation"] == 100
    stored = _stored(ModelPool(root).get("mnist-cnn"))
    assert stored["fidelity"] == doc["rows"]
    bad = _splitmq(*args, "--cuts", "12", pool=root)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: cut 12 is the output")


def test_rows_time_the_codecs_and_stop_measuring_clearly_poor_pairs(calibrated) -> None:
    cal = _stored(calibrated)
    rows = {(row["cut"], row["codec"]): row for row in cal["fidelity"]}
    assert all(row["encode_ms"] > 0 and row["decode_ms"] > 0 for row in rows.values())
    # Pixels decode and normalise: JPEG costs more than plain bytes both ways.
    assert rows[(0, "jpeg:85")]["encode_ms"] > rows[(0, "u8")]["encode_ms"]
    for row in rows.values():
        assert EARLY_MIN <= row["samples"] <= 300
        if row["samples"] < 300:  # stopped early: surely poor, or known precisely enough
            low, high = wilson(round(row["agreement"] * row["samples"]), row["samples"])
            assert high < EARLY_BELOW or high - low <= 2 * PRECISE, row
        if "+" in row["codec"]:  # a lossless stage: the base codec's agreement and samples
            base = rows[(row["cut"], row["codec"].split("+")[0])]
            assert (row["agreement"], row["samples"]) == (base["agreement"], base["samples"])
    assert rows[(1, "raw")]["samples"] == 300  # exact: measured on every sample


def test_wilson_interval() -> None:
    assert wilson(0, 32) == pytest.approx((0.0, 0.107), abs=1e-3)
    assert wilson(32, 32)[1] == pytest.approx(1.0)
    assert wilson(25, 32)[1] == pytest.approx(0.890, abs=1e-3)  # 78%: surely < 90%
    assert wilson(28, 32)[1] > EARLY_BELOW  # 87.5% might still be 90%: keep measuring
    low, high = wilson(400, 400)  # 100% on 400: known to ±0.5%
    assert high - low <= 2 * PRECISE < wilson(300, 300)[1] - wilson(300, 300)[0]


def test_exit_curves_on_a_two_exit_model(tmp_path: Path) -> None:
    onnx.save(early_exit(), tmp_path / "ee.onnx")
    mv = ModelPool(tmp_path / "pool").add(tmp_path / "ee.onnx", "ee")
    inputs = np.random.default_rng(3).standard_normal((40, 4, 8, 8)).astype(np.float32)
    (curve,) = exit_curves(mv, Samples(inputs), thresholds=(0.0, 0.5, 0.9, 1.0))
    assert curve.outputs == mv.output_names[:1] and curve.cuts == [4] and curve.samples == 40
    assert curve.exit_rate[0] == 1.0 and curve.exit_rate[-1] == 0.0 and curve.agreement[-1] is None
    assert all(a >= b for a, b in zip(curve.exit_rate, curve.exit_rate[1:]))  # never rises
    # At threshold 0 every sample exits: agreement is how often the head's top-1 is the final's.
    heads = Taps(mv, []).outputs(inputs)
    same = (heads[mv.output_names[0]].argmax(-1) == heads[mv.output_names[-1]].argmax(-1)).mean()
    assert curve.agreement[0] == pytest.approx(same, abs=1e-4)
