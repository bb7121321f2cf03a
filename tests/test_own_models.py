"""A user's own models through the whole path, as the tutorial (docs/own-model.md) runs
them: ``pool add --config`` -> ``profile`` -> ``calibrate --samples DIR`` -> the planner
plans -> a device follows it, and a device through edge and cloud -> results in the
store. Real models reshaped as exports come (fixed batch 1, [1, 1000, 1, 1] scores,
NHWC, several outputs, a raw task) and a real detector (CenterFace) on real photos,
every answer compared with the unsplit model's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli
from kit import Inbox, eventually
from PIL import Image
from skimage import data
from usermodels import (
    EFFNET_CONFIG,
    centerface_onnx,
    fixed_batch,
    nhwc,
    squeezenet_style,
    with_features_last,
)

from splitmq.cloud.results import Recorder, ResultsStore
from splitmq.device.answers import Answer
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.planner.service import PlannerService
from splitmq.shared.model.detect import agreement, decode
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import mnist_digits, photos
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.telemetry import DeviceTelemetry, parse_telemetry
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.units import Link

pytestmark = pytest.mark.slow

MNIST_INPUT = """
[input]
color = "GRAY"
crop = 28
mean = [33.3285]
std = [78.5655]
"""
CENTERFACE = """
[input]
resize = 256
crop = 256
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
task = "detect"
labels = "labels.txt"

[output.detect]
decoder = "centernet"
heatmap = "heatmap"
size = "scale"
offset = "offset"
stride = 4
size_encoding = "log"
order = "yx"
score = 0.5
iou = 0.3
"""


@dataclass(frozen=True)
class Case:
    """One user model: how to make its file from a real model, its config, its images."""

    make: Callable[[ModelPool, Path], Path]  # (the real pool, a folder) -> the .onnx file
    config: str
    images: Callable[[], list[np.ndarray]]  # at least 16: calibration's folder, and frames


def _mnist(reshape: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Callable:
    def make(real_pool: ModelPool, folder: Path) -> Path:
        model = reshape(onnx.load_from_string(real_pool.get("mnist-cnn").model_bytes))
        onnx.save(model, folder / "model.onnx")
        return folder / "model.onnx"

    return make


def _effnet_1000x1x1(real_pool: ModelPool, folder: Path) -> Path:
    model = squeezenet_style(onnx.load_from_string(real_pool.get("efficientnet-lite0").model_bytes))
    onnx.save(model, folder / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(real_pool.get("efficientnet-lite0").labels or []))
    return folder / "model.onnx"


def _centerface(real_pool: ModelPool, folder: Path) -> Path:
    (folder / "labels.txt").write_text("face\n")
    return centerface_onnx(folder / "model.onnx")


def _digits() -> list[np.ndarray]:
    """Two of each digit, 0 to 9 and again."""
    images, labels = mnist_digits()
    return [images[np.flatnonzero(labels == d)[i]] for i in range(2) for d in range(10)]


def _faces() -> list[np.ndarray]:
    """Real photos with faces (the astronaut, the cameraman) in crops, flips and scales,
    and photos without any."""
    astronaut, camera = data.astronaut(), np.repeat(data.camera()[..., None], 3, axis=2)
    frames = [astronaut, camera]
    for image in (astronaut, camera):
        for top, left, side in ((0, 60, 360), (20, 120, 300), (0, 0, 420), (40, 80, 440)):
            crop = image[top : top + side, left : left + side]
            frames += [crop, crop[:, ::-1].copy()]
    return frames + photos(2, seed=7)


CASES = {
    "fixed-batch-1": Case(
        _mnist(lambda m: fixed_batch(m.SerializeToString(), 1)), MNIST_INPUT, _digits
    ),
    "1000x1x1": Case(
        _effnet_1000x1x1,
        EFFNET_CONFIG + '\nlabels = "labels.txt"\n',
        lambda: photos(16, seed=3),
    ),
    "nhwc": Case(_mnist(nhwc), MNIST_INPUT.replace("[input]", '[input]\nlayout = "NHWC"'), _digits),
    "several-outputs": Case(
        _mnist(with_features_last), MNIST_INPUT + '[output]\ntensor = "logits"\n', _digits
    ),
    "raw": Case(_mnist(with_features_last), MNIST_INPUT + '[output]\ntask = "raw"\n', _digits),
    "detector": Case(_centerface, CENTERFACE, _faces),
}


def unsplit(mv: ModelVersion, frame: np.ndarray) -> dict[str, np.ndarray]:
    """The original model's outputs for ``frame``: the reference every answer meets."""
    pre = mv.manifest.preprocess
    assert pre is not None
    session = make_session(mv.model_bytes)
    return dict(
        zip(
            mv.finals,
            session.run(mv.finals, {mv.cuts[0].name: normalize(to_pixels(frame, pre), pre)}),
        )
    )


def agrees(mv: ModelVersion, answer: Answer, reference: dict[str, np.ndarray]) -> float:
    """How far ``answer`` agrees with the unsplit model's outputs (1.0: the same)."""
    task = mv.manifest.output
    if task.detect is not None:
        return agreement(decode(task.detect, reference, mv.labels), answer.boxes)
    if task.task == "raw":
        got = answer.tensors
        return float(
            all(np.allclose(got[k], v, rtol=1e-3, atol=1e-3) for k, v in reference.items())
        )
    return float(answer.top1 == int(reference[mv.finals[0]].argmax()))


@pytest.mark.parametrize("case", list(CASES))
def test_a_users_model_from_its_file_to_results_in_the_store(
    case, real_pool, tmp_path, settings, make_client
) -> None:
    spec = CASES[case]
    folder = tmp_path / "user"
    folder.mkdir()
    path = spec.make(real_pool, folder)
    (folder / "model.toml").write_text(spec.config)
    images = spec.images()
    samples = folder / "images"
    samples.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(samples / f"{i:02d}.png")
    pool = ModelPool(tmp_path / "pool")
    env = cli_env(pool=pool.root)

    def cli(*args: str) -> None:
        r = run_cli(*args, env=env)
        assert r.returncode == 0, r.stderr

    cli(
        "pool",
        "add",
        str(path),
        "--name",
        "mine",
        "--config",
        str(folder / "model.toml"),
        "--no-announce",
    )
    mv = pool.get("mine")
    a, b = mv.last_cut // 3, 2 * mv.last_cut // 3
    cli("profile", "mine", "--repeats", "3")
    cli("calibrate", "mine", "--samples", str(samples), "--cuts", f"0,{a},{b}")
    mv = pool.get("mine")
    assert mv.manifest.calibration is not None
    frames = images[:4]
    references = [unsplit(mv, frame) for frame in frames]
    cfg = settings.model_copy(
        update={"pool": pool.root, "results": f"sqlite:///{tmp_path / 'r.db'}"}
    )
    plans, told = Inbox("plans"), Inbox("telemetry with a link estimate")
    observer = make_client("observer")
    observer.subscribe(
        cfg.topics.plan("dev-own", mv.name), lambda m: m.payload and plans(Plan.parse(m.payload))
    )

    def measured(msg) -> None:
        doc = parse_telemetry(msg.payload) if msg.payload else None
        if isinstance(doc, DeviceTelemetry) and doc.link.uplink_bps is not None:
            told(doc)

    observer.subscribe(cfg.topics.telemetry("device", "dev-own"), measured)
    with (
        Recorder(cfg.results) as recorder,
        edge_worker(cfg, "own-edge", on_result=recorder.add),
        Worker(cfg, "cloud", "own-cloud", on_result=recorder.add),
        PlannerService(cfg, "own-pl", period_s=0.2, min_gap_s=0.0, settle_s=0.0) as planner,
    ):
        # A camera far slower than this host, on a 20 Mbit/s link: the planner weighs
        # offloading it once the device's probes have measured the link.
        slow = Emulated(Link.parse("20mbit/5ms"), speed=0.05, battery=None)
        with Device(
            cfg, "dev-own", local_plan(mv), conditions=slow, follow=True, telemetry_period_s=0.5
        ) as dev:
            told.wait(1, timeout=20)
            rounds = planner.replans
            eventually(lambda: planner.replans > rounds + 1, "a round of planning after it", 20)
            planned = plans.wait(1, timeout=20)[-1]
            assert planned.objective is not None, planned.reason  # planned, not refused
            eventually(lambda: dev.plans.plan == plans.items[-1], "the device to follow", 20)
            answers = [dev.infer(frame) for frame in frames]
        mean = np.mean([agrees(mv, ans, ref) for ans, ref in zip(answers, references)])
        assert mean >= 0.75, planned.words  # the plan keeps to the accuracy floor
        offloaded = sorted(ans.id for ans in answers if ans.tier != "device")
        route = make_plan(mv, a, "raw", "edge", cloud_cut=b)
        with Device(cfg, "dev-route", route) as dev:
            routed = [dev.infer(frame) for frame in frames]
    assert all(ans.tier == "cloud" for ans in routed)
    assert [agrees(mv, ans, ref) for ans, ref in zip(routed, references)] == [1.0] * len(frames)
    with ResultsStore(cfg.results) as db:
        rows = db.query(device="dev-route")
        # What the planned device had answered by a worker is in the store as well.
        assert sorted(r["request_id"] for r in db.query(device="dev-own")) == offloaded
    assert sorted(r["request_id"] for r in rows) == sorted(ans.id for ans in routed)
    assert {(r["model"], r["tier"]) for r in rows} == {("mine", "cloud")}
    if mv.manifest.output.task == "detect":
        by_id = {ans.id: ans for ans in routed}
        assert sum(len(ans.boxes) for ans in routed) >= 2  # the frames hold faces
        for r in rows:
            want = [
                {"index": b.index, "label": b.label, "score": b.score, "box": list(b.box)}
                for b in by_id[r["request_id"]].boxes
            ]
            assert r["boxes"] == want
