"""Models exported with a fixed batch dim (most are: batch 1) work in every path.

A real pool model is saved again with its input's and outputs' first dim fixed
(1, or 4) and added to a pool of its own, with the original's preprocessing:
profiled, calibrated from a folder of images, served through a cut by a
device and real workers, tried out on the dashboard, its exits measured. The
planner's refusal to plan for it before calibration reaches the device.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli
from kit import Inbox, eventually
from PIL import Image
from usermodels import fixed_batch

from splitmq.dashboard.tryout import Tryout
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.planner.service import PlannerService
from splitmq.shared.model.graph import make_session, run_batched
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.model.split import check_exact, split
from splitmq.shared.offline import exit_report
from splitmq.shared.offline.calibration import calibrate, save
from splitmq.shared.offline.datasets import fashion_mnist, mnist_digits
from splitmq.shared.offline.exit_curves import exit_cuts
from splitmq.shared.offline.profiling import profile
from splitmq.shared.offline.samples import MIN_FOLDER_IMAGES, folder_samples
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.runtime.worker import Worker

pytestmark = pytest.mark.slow

#: (pool name, real model, batch) of every fixed-batch model these tests use.
FIXED = {
    "mnist-b1": ("mnist-cnn", 1),
    "mnist-b4": ("mnist-cnn", 4),
    "fashion-b1": ("fashion-mnist-ee", 1),
}


def add_fixed(real_pool: ModelPool, pool: ModelPool, name: str, tmp: Path, **kwargs) -> None:
    real_name, batch = FIXED[name]
    real = real_pool.get(real_name)
    path = tmp / f"{name}.onnx"
    onnx.save(fixed_batch(real.model_bytes, batch), path)
    kwargs.setdefault("preprocess", real.manifest.preprocess)
    pool.add(path, name, source=f"{real.manifest.source}, batch fixed to {batch}", **kwargs)


@pytest.fixture(scope="module")
def pool(real_pool: ModelPool, tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    """The fixed-batch models, and ``bare``: the batch-1 MNIST CNN without preprocessing."""
    tmp = tmp_path_factory.mktemp("fixed")
    pool = ModelPool(tmp / "pool")
    for name in FIXED:
        add_fixed(real_pool, pool, name, tmp)
    path = tmp / "bare.onnx"
    onnx.save(fixed_batch(real_pool.get("mnist-cnn").model_bytes, 1), path)
    pool.add(path, "bare")
    return pool


def image_folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"{i:03d}.png")
    return path


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 MNIST digits as PNG files (8 fit the clip ranges, 17 are held out), and a note."""
    folder = image_folder(tmp_path_factory.mktemp("digits") / "digits", mnist_digits()[0][:25])
    (folder / "notes.txt").write_text("not an image")
    return folder


def unsplit_top1(real: ModelVersion, images: list[np.ndarray]) -> list[int]:
    pre = real.manifest.preprocess
    assert pre is not None
    session = make_session(real.model_bytes)
    x = normalize(np.concatenate([to_pixels(image, pre) for image in images]), pre)
    return list(session.run([real.output_names[-1]], {real.cuts[0].name: x})[0].argmax(-1))


def test_the_batch_a_model_takes_and_the_partitions_keep_it(pool, real_pool) -> None:
    assert real_pool.get("mnist-cnn").graph.batch is None  # symbolic: any size
    for name, (_, batch) in FIXED.items():
        mv = pool.get(name)
        assert mv.graph.batch == batch
        assert all(cut.shape[0] == 1 for cut in mv.cuts)  # per sample, whatever the batch
        assert mv.graph.sample_input().shape[0] == batch
        head = onnx.load_from_string(mv.segment(0, 3))
        for value in [*head.graph.input[:1], *head.graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_value == batch, value.name
        assert check_exact(mv, split(mv, 3, 9)).ok
    symbolic = onnx.load_from_string(real_pool.get("mnist-cnn").segment(0, 3))
    assert symbolic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_any_number_of_samples_runs_in_pieces_the_model_takes(pool, real_pool) -> None:
    real = real_pool.get("mnist-cnn")
    x = normalize(
        np.concatenate([to_pixels(d, real.manifest.preprocess) for d in mnist_digits()[0][:7]]),
        real.manifest.preprocess,
    )
    want = make_session(real.model_bytes).run(["logits"], {"input": x})[0]
    for name in ("mnist-b1", "mnist-b4"):
        mv = pool.get(name)
        session = make_session(mv.model_bytes)
        with pytest.raises(Exception, match="Got: 7"):  # what calibration did before
            session.run(["logits"], {"input": x})
        got = run_batched(session, ["logits"], "input", x, mv.graph.batch)[0]
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-4), name


def test_profile_measures_fixed_batch_models(pool) -> None:
    r = run_cli("profile", "mnist-b1", "--repeats", "3", "--json", env=cli_env(pool=pool.root))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["cuts"]) == pool.get("mnist-b1").last_cut + 1 and doc["full_ms"] > 0
    mv = pool.get("mnist-b4")
    measured = profile(mv, repeats=3)
    assert len(measured.heads_ms) == mv.last_cut + 1 and measured.heads_ms[-1] > 0


def test_calibrate_from_a_folder_of_images(pool, digits_dir) -> None:
    env = cli_env(pool=pool.root)
    args = ("calibrate", "mnist-b1", "--samples", str(digits_dir), "--cuts", "0,3,9", "--json")
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["held_out"] == doc["samples"]["evaluation"] == 17
    assert doc["samples"]["calibration"] == 8 and doc["accuracy"] is None  # no labels
    assert doc["folder"]["files"] == 26
    note = f"{digits_dir / 'notes.txt'} is not a JPEG or PNG image (starts 6e6f7420616e2069)"
    assert doc["folder"]["skipped"] == [note]
    assert f"warning: {note}: skipped" in r.stderr
    assert {row["cut"] for row in doc["rows"]} == {0, 3, 9}
    raw = [row for row in doc["rows"] if row["codec"] == "raw"]
    assert raw and all(row["agreement"] == 1.0 and row["samples"] == 17 for row in raw)
    stored = pool.get("mnist-b1").manifest.calibration
    assert stored is not None and stored.samples.evaluation == 17
    # Batch 4: 17 held-out samples run as four full batches and one padded one.
    r = run_cli("calibrate", "mnist-b4", "--samples", str(digits_dir), "--cuts", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert "25 images from" in r.stdout and "8 fit the clip ranges, 17 held out" in r.stdout


def test_calibrate_mistakes_are_one_line(pool, digits_dir, tmp_path) -> None:
    env = cli_env(pool=pool.root)
    few = image_folder(tmp_path / "few", mnist_digits()[0][: MIN_FOLDER_IMAGES - 1])
    r = run_cli("calibrate", "mnist-b1", "--samples", str(few), env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: --samples {few}: 15 JPEG/PNG image(s) in 15 file(s); calibration needs at "
        "least 16 (a third fit the clip ranges, the rest measure agreement)"
    )
    r = run_cli("calibrate", "bare", "--samples", str(digits_dir), env=env)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: bare has no image preprocessing")
    assert len(r.stderr.strip().splitlines()) == 1


def test_exits_of_a_fixed_batch_model(pool, real_pool, tmp_path) -> None:
    mv, real = pool.get("fashion-b1"), real_pool.get("fashion-mnist-ee")
    images, labels = fashion_mnist("test")
    found = folder_samples(mv, image_folder(tmp_path / "fashion", images[:48]))
    result = calibrate(mv, found.calibration, found.evaluation, cuts=[3, 9])
    assert result.exits and all(curve.samples == 32 for curve in result.exits)
    assert {c for curve in result.exits for c in curve.cuts} == set(exit_cuts(mv).values())
    pre = mv.manifest.preprocess
    x = normalize(np.concatenate([to_pixels(i, pre) for i in images[:30]]), pre)
    fixed = exit_report.measure(mv, x, labels[:30], "test 0..29", "-")
    unsplit = exit_report.measure(real, x, labels[:30], "test 0..29", "-")
    assert fixed.final_accuracy == unsplit.final_accuracy
    assert fixed.final_ece == pytest.approx(unsplit.final_ece, abs=1e-4)
    assert [e.ece_after for e in fixed.exits] == pytest.approx(
        [e.ece_after for e in unsplit.exits], abs=1e-4
    )


@pytest.fixture
def cfg(settings, pool):
    return settings.model_copy(update={"pool": pool.root})


@pytest.mark.parametrize("name", ["mnist-b1", "mnist-b4"])
def test_a_device_and_workers_serve_a_fixed_batch_model_through_its_cuts(
    cfg, pool, real_pool, name
) -> None:
    mv = pool.get(name)
    digits = list(mnist_digits()[0][:4])
    want = unsplit_top1(real_pool.get("mnist-cnn"), digits)
    with edge_worker(cfg, f"edge-{name}", threads=1), Worker(cfg, "cloud", f"cloud-{name}"):
        for plan in (make_plan(mv, 3, "int8"), make_plan(mv, 3, "raw", "edge", cloud_cut=9)):
            with Device(cfg, f"dev-{name}", plan) as dev:
                answers = [dev.infer(d) for d in digits]
            assert [a.top1 for a in answers] == want
            assert {a.tier for a in answers} == {plan.tiers[-1]}


def test_an_exit_answers_from_a_fixed_batch_partition(cfg, pool, real_pool) -> None:
    mv = pool.get("fashion-b1")
    images = list(fashion_mnist("test")[0][:3])
    first = exit_cuts(mv)["exit1"]
    plan = make_plan(mv, first - 1, "raw", "edge", first + 1, exit_threshold=0.0)
    with edge_worker(cfg, "edge-ee", threads=1), Device(cfg, "dev-ee", plan) as dev:
        answers = [dev.infer(image) for image in images]
    assert {(a.tier, a.exit) for a in answers} == {("edge", "exit1")}


@pytest.mark.parametrize("name", ["mnist-b1", "mnist-b4"])
def test_the_dashboard_tries_out_a_fixed_batch_model(pool, real_pool, name) -> None:
    tryout = Tryout(pool, 1, 1 << 20)
    digit = mnist_digits()[0][0]
    want = unsplit_top1(real_pool.get("mnist-cnn"), [digit])[0]
    png = io.BytesIO()
    Image.fromarray(digit).save(png, "PNG")
    for cut, codec in ((0, "u8"), (3, "int8"), (pool.get(name).last_cut, "raw")):
        shown = tryout.run(name, cut, codec, png.getvalue())
        assert shown["agrees"] and shown["top"][0]["index"] == want, (cut, codec)


def test_the_planners_refusal_reaches_the_device(
    settings, real_pool, tmp_path, digits_dir, make_client, caplog
) -> None:
    """Profiled, not calibrated: the planner publishes a device-only plan saying why, the
    device warns once; calibrated, the planner plans for it at its next round."""
    pool = ModelPool(tmp_path / "pool")
    add_fixed(real_pool, pool, "mnist-b1", tmp_path)
    mv = pool.get("mnist-b1")
    mv.save_profile(profile(mv, repeats=3))
    cfg = settings.model_copy(update={"pool": pool.root})
    plans = Inbox("plans for dev-r")
    make_client("observer").subscribe(
        cfg.topics.plan("dev-r", mv.name), lambda m: m.payload and plans(Plan.parse(m.payload))
    )
    caplog.set_level(logging.WARNING, logger="splitmq.device.follow")
    with (
        PlannerService(cfg, "pl-r", period_s=0.2, min_gap_s=0.0, settle_s=0.0),
        Device(cfg, "dev-r", local_plan(mv), follow=True) as dev,
    ):
        refusal = plans.wait(1, timeout=20)[0]
        assert refusal.device_only and refusal.objective is None
        assert "mnist-b1@1 is not calibrated" in refusal.reason
        assert "run `splitmq calibrate mnist-b1@1`" in refusal.reason
        eventually(lambda: dev.plans.refused == refusal.reason, "the device to hear it", 20)
        warned = [r for r in caplog.records if r.name == "splitmq.device.follow"]
        assert [(r.levelname, r.getMessage()) for r in warned] == [
            (
                "WARNING",
                "dev-r: the planner cannot plan for mnist-b1 v1, so it runs on the device "
                f"alone: {refusal.reason}",
            )
        ]
        assert dev.plans.switches[-1].source == "planner"
        found = folder_samples(mv, digits_dir)
        save(mv, calibrate(mv, found.calibration, found.evaluation, cuts=[3]))
        planned = plans.wait(2, timeout=20)[1]
        assert planned.objective == "latency" and "not calibrated" not in planned.reason
        eventually(lambda: dev.plans.refused is None, "the device to follow the plan", 20)
