"""What each (cut, codec) pair costs in bytes, codec time and agreement, on real samples.

A pair is measured the way it runs: every sample's tensor at the cut is
encoded alone (batch 1, as a device sends it), decoded, and the rest of the
model runs on the decoded tensor; its answer is compared with the
uncompressed model's (agreement: the same top-1, or a detector's matched
boxes, see ``outputs.agreements``) and with the label where there is one
(accuracy). At cut 0 of a model with preprocessing the sample is the uint8
pixels: ``u8`` and ``jpeg:Q`` are decoded and normalised, as the receiving
tier does. Encode and decode times (the planner's codec cost) are the median
over the first ``TIMED`` samples of each pair; a lossless stage (``+zstd``)
leaves the decoded tensor as its base codec's, so its agreement is the
base's and only its bytes are measured, over the first ``STAGED_SAMPLES``.

Measuring every cut of a large model must stay affordable, so:

- a pair stops once its agreement is known well enough: when, after at
  least ``EARLY_MIN`` samples, even the optimistic end of its 95% Wilson
  interval is under ``EARLY_BELOW`` (clearly poor), or the interval is at
  most ±``PRECISE`` wide (a small model's 2,000 digits pin a 100% pair down
  after about 400); its row keeps what those samples measured (``samples``
  says how many);
- cuts are measured ``CHUNK`` at a time, each chunk with one run of the full
  model per batch and its own tail sessions, so memory does not grow with
  the number of cuts.

Samples run ``BATCH`` at a time (larger batches are no faster per sample
here), in pieces the model takes (``graph.run_batched``): one at a time
through a model exported with batch 1, and its partitions keep that batch.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import numpy as np
import onnx
import onnxruntime as ort

from splitmq.shared.codecs import decode, encode
from splitmq.shared.codecs.base import FLOAT_DTYPES
from splitmq.shared.model.calibration import FidelityRow
from splitmq.shared.model.graph import make_session, run_batched
from splitmq.shared.model.outputs import agreements, class_of
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import normalize
from splitmq.shared.offline.samples import Samples

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
    "raw+zstd": "raw",  # a quantised model's uint8 cuts (floats barely compress)
}
#: Row order: each codec followed by its lossless-stage variant.
_ORDER = [
    name
    for base in (*INPUT_CANDIDATES, *FEATURE_CODECS)
    for name in (base, *(staged for staged, of in STAGED.items() if of == base))
]
BATCH = 8
CHUNK = 8
TIMED = 16
STAGED_SAMPLES = 64
EARLY_MIN = 32
EARLY_BELOW = 0.9
PRECISE = 0.005

#: The final outputs of a batch of samples, by name.
Finals = dict[str, np.ndarray]
#: (cut, codec) -> the params to encode with (None: the codec's own default).
ParamsFor = Callable[[int, str], dict | None]
Progress = Callable[[int, int], None]


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
        self.finals = mv.finals
        names = [*mv.output_names, *(mv.cuts[c].name for c in self.cuts)]
        self.names = list(dict.fromkeys(names))
        self.threads = threads
        self.batch = mv.graph.batch
        self.session = make_session(_with_outputs(mv.graph.model, self.names), threads)
        self._tails: dict[int, ort.InferenceSession] = {}

    def outputs(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every model output and tapped tensor, by name."""
        feed = self.mv.cuts[0].name
        return dict(
            zip(self.names, run_batched(self.session, self.names, feed, inputs, self.batch))
        )

    def run(self, inputs: np.ndarray) -> tuple[Finals, dict[int, np.ndarray]]:
        """The final outputs and the tensor at every tapped cut (cut 0: the inputs)."""
        values = self.outputs(inputs)
        tensors = {c: values[self.mv.cuts[c].name] for c in self.cuts}
        return {f: values[f] for f in self.finals}, {0: inputs, **tensors}

    def tail(self, cut: int, x: np.ndarray) -> Finals:
        """The final outputs computed from the tensor ``x`` at ``cut``."""
        if cut not in self._tails:
            self._tails[cut] = make_session(self.mv.segment(cut, None), self.threads)
        feed = self.mv.cuts[cut].name
        values = run_batched(self._tails[cut], self.finals, feed, x, self.batch)
        return dict(zip(self.finals, values, strict=True))


def codecs_at(mv: ModelVersion, cut: int, pixels: bool) -> tuple[list[str], list[str]]:
    """The codecs measured at ``cut``: (those needing a tail run, lossless-stage variants)."""
    if cut == 0 and pixels:
        return list(INPUT_CANDIDATES), ["u8+zstd"]
    if mv.cuts[cut].dtype not in FLOAT_DTYPES:
        return ["raw"], ["raw+zstd"]
    # Per-channel codecs need a channel axis (axis 1) besides the batch.
    codecs = [c for c in FEATURE_CODECS if len(mv.cuts[cut].shape) > 1 or c not in PER_CHANNEL]
    return codecs, [name for name, base in STAGED.items() if base in codecs and base != "raw"]


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return (centre - spread) / scale, (centre + spread) / scale


@dataclass
class _Pair:
    """Running totals of one (cut, codec) while the batches go by."""

    size: int = 0  # bytes of every sample encoded
    sent: int = 0
    agree: float = 0.0  # the samples' agreements (0..1 each) summed
    correct: int = 0
    count: int = 0  # samples whose decoded tensor ran through the tail
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    stopped: bool = False

    def judge(self) -> None:
        """Stop measuring once the agreement is surely poor or known to ``PRECISE``."""
        if self.count < EARLY_MIN:
            return
        low, high = wilson(self.agree, self.count)
        self.stopped = high < EARLY_BELOW or high - low <= 2 * PRECISE


@dataclass
class _Measurement:
    mv: ModelVersion
    params: ParamsFor
    only: frozenset[str] | None
    pairs: dict[tuple[int, str], _Pair] = field(default_factory=dict)
    reference_correct: int = 0

    def batch(
        self, taps: Taps, samples: Samples, cut: int, reference: Finals, x: np.ndarray
    ) -> None:
        pixels = cut == 0 and samples.pixels is not None
        source = samples.pixels if pixels else x
        assert source is not None
        codecs, staged = codecs_at(self.mv, cut, pixels)
        if self.only is not None:
            codecs = [c for c in codecs if c in self.only]
            staged = [c for c in staged if c in self.only and STAGED[c] in codecs]
        for codec in codecs:
            pair = self.pairs.setdefault((cut, codec), _Pair())
            if pair.stopped:
                continue
            decoded = [self._send(pair, cut, codec, one[None], pixels, True) for one in source]
            got = taps.tail(cut, np.concatenate([d for d in decoded if d is not None]))
            agree = agreements(self.mv.manifest.output, taps.finals, reference, got)
            pair.agree += float(agree.sum())
            if samples.labels is not None:
                pair.correct += int((class_of(got[taps.finals[0]]) == samples.labels).sum())
            pair.count += len(agree)
            pair.judge()
        for codec in staged:
            pair = self.pairs.setdefault((cut, codec), _Pair())
            base = self.pairs[(cut, STAGED[codec])]
            if pair.sent >= min(base.count, STAGED_SAMPLES):
                continue
            for one in source:
                self._send(pair, cut, codec, one[None], pixels, False)

    def _send(
        self, pair: _Pair, cut: int, codec: str, x: np.ndarray, pixels: bool, needed: bool
    ) -> np.ndarray | None:
        """Encode one sample (counting its bytes); decode it when needed or timed."""
        timed = len(pair.encode_s) < TIMED
        start = time.perf_counter()
        tensor = encode(x, codec, self.params(cut, codec))
        encoded = time.perf_counter()
        pair.size += len(tensor.data) + len(msgpack.packb(tensor.params, use_bin_type=True))
        pair.sent += 1
        if not (needed or timed):
            return None
        value = decode(tensor)
        if pixels:
            assert self.mv.manifest.preprocess is not None
            value = normalize(value, self.mv.manifest.preprocess)
        if timed:
            pair.encode_s.append(encoded - start)
            pair.decode_s.append(time.perf_counter() - encoded)
        return value

    def rows(self, labelled: bool) -> list[FidelityRow]:
        rows = []
        for (cut, codec), pair in self.pairs.items():
            outcome = self.pairs[(cut, STAGED.get(codec, codec))]
            mean = pair.size / pair.sent
            rows.append(
                FidelityRow(
                    cut,
                    codec,
                    round(mean, 1),
                    round(self.mv.cuts[cut].bytes / mean, 3),
                    round(outcome.agree / outcome.count, 4),
                    round(outcome.correct / outcome.count, 4) if labelled else None,
                    outcome.count,
                    round(statistics.median(pair.encode_s) * 1000, 4),
                    round(statistics.median(pair.decode_s) * 1000, 4),
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
    state = _Measurement(mv, params, only)
    total, done = -(-len(samples) // BATCH) * len(cuts), 0
    for first in range(0, len(cuts), CHUNK):
        chunk = cuts[first : first + CHUNK]
        taps = Taps(mv, chunk, threads)
        for batch in samples.batches(BATCH):
            reference, tensors = taps.run(batch.inputs)
            if first == 0 and batch.labels is not None:
                top1 = class_of(reference[taps.finals[0]])
                state.reference_correct += int((top1 == batch.labels).sum())
            for cut in chunk:
                state.batch(taps, batch, cut, reference, tensors[cut])
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
