"""Run one image through a split, here: what a device and a tier would do, in one process.

The same steps as serving, through the same code: the model's preprocessing
(``model_input``), the device's head 0 → cut and the codec at the cut (the hop
executor, as ``Device`` runs it; an input codec at cut 0 encodes the pixels),
then the tail cut → outputs from the decoded tensor (the hop executor, as a
worker runs it). The unsplit model answers the same image for comparison, as
its task compares answers: the same top-1 class, a detector's boxes matched
(``detect.agreement``), a raw task's tensors within ``RAW_TOLERANCE``. A
detector's boxes come back in the uploaded image's pixels too, so the page
draws them on it. The plan comes from ``make_plan``, so the cut and codec are
checked as ``splitmq device --cut --codec`` checks them.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from splitmq.dashboard.models import find
from splitmq.shared.codecs import EncodedTensor, encode, parse_codec
from splitmq.shared.errors import UserError
from splitmq.shared.model import preprocess
from splitmq.shared.model.detect import agreement
from splitmq.shared.model.manifest import Preprocess
from splitmq.shared.model.outputs import RAW_TOLERANCE
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.model.preprocess import framing, model_input
from splitmq.shared.protocol.results import Box, RawOutput, TopK
from splitmq.shared.runtime.executor import Answered, HopExecutor, Job, Outcome
from splitmq.shared.runtime.sessions import SessionCache

#: (model, cut) pairs tried before the sessions start afresh (see Tryout).
MAX_TRIED = 8


def read_image(data: bytes, channels: str, what: str = "the image") -> np.ndarray:
    """A JPEG or PNG as an HxW(xC) uint8 array in ``channels`` (``RGB`` or ``L``)."""
    return np.asarray(preprocess.read_image(data, what).convert(channels))


def _top(tops: tuple[TopK, ...]) -> list[dict[str, Any]]:
    return [{"index": t.index, "label": t.label, "score": t.score} for t in tops]


def in_image(
    boxes: Sequence[Box], pre: Preprocess, height: int, width: int
) -> list[dict[str, Any]]:
    """Boxes with their corners in the model input's pixels (``box``) and in the pixels of
    the ``height`` x ``width`` image it was made from (``image``): the centre crop's
    offset added back, then the resize undone, as ``preprocess.to_pixels`` made it."""
    resized, left, top = framing(pre, width, height)
    sx, sy = width / resized[0], height / resized[1]
    return [
        {
            "index": b.index,
            "label": b.label,
            "score": b.score,
            "box": list(b.box),
            "image": [
                round((b.box[0] + left) * sx, 2),
                round((b.box[1] + top) * sy, 2),
                round((b.box[2] + left) * sx, 2),
                round((b.box[3] + top) * sy, 2),
            ],
        }
        for b in boxes
    ]


def _summaries(outputs: Sequence[RawOutput]) -> list[dict[str, Any]]:
    """A raw answer as the page lists it: each tensor's summary, not its values."""
    return [
        {"name": o.name, "shape": list(o.shape), "dtype": o.dtype, "min": o.min, "max": o.max,
         "mean": o.mean}
        for o in outputs
    ]  # fmt: skip


def _values(output: RawOutput) -> np.ndarray:
    data = base64.b64decode(output.data, validate=True)
    dtype = np.dtype(output.dtype).newbyteorder("<")
    return np.frombuffer(data, dtype).astype(np.float64).reshape(-1)


def _agreement(task: str, reference: Answered, got: Answered) -> float:
    """How far the split's answer agrees with the unsplit model's (0..1), as calibration
    measures it for the task: the top-1 class; the boxes matched; every raw tensor
    within ``RAW_TOLERANCE`` (relative L2 error)."""
    if task == "detect":
        return agreement(reference.boxes, got.boxes)
    if task == "raw":
        close = [
            np.linalg.norm(_values(g) - _values(r))
            <= RAW_TOLERANCE * max(float(np.linalg.norm(_values(r))), 1e-12)
            for r, g in zip(reference.outputs, got.outputs, strict=True)
        ]
        return float(all(close))
    return float(reference.top[0].index == got.top[0].index)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Tryout:
    """Runs images through splits of pool models (see module docstring); thread-safe.

    Each (model, cut) tried loads up to three sessions (head, tail, the unsplit
    model); after ``MAX_TRIED`` of them the sessions start afresh, so a page
    clicking through every cut of a large model never holds them all.
    """

    def __init__(self, pool: ModelPool, threads: int, max_bytes: int) -> None:
        self.pool, self.threads, self.max_bytes = pool, threads, max_bytes
        self._lock = threading.Lock()
        self._tried: set[tuple[str, int, int]] = set()
        self._executor = HopExecutor(SessionCache(pool, threads), max_bytes)

    def _executor_for(self, mv: ModelVersion, cut: int) -> HopExecutor:
        with self._lock:
            self._tried.add((mv.name, mv.version, cut))
            if len(self._tried) > MAX_TRIED:
                self._tried = {(mv.name, mv.version, cut)}
                self._executor = HopExecutor(SessionCache(self.pool, self.threads), self.max_bytes)
            return self._executor

    def run(self, ref: str, cut: int, codec: str, image: bytes) -> dict[str, Any]:
        mv = find(self.pool, ref)
        plan = make_plan(mv, cut, codec, reason="dashboard")
        pre = mv.manifest.preprocess
        if pre is None:
            raise UserError(
                f"{mv.name} v{mv.version} has no image preprocessing: upload it again with "
                "its input's mean and std to run images through it"
            )
        frame = read_image(image, pre.channels)
        height, width = frame.shape[:2]
        run = _Run(self._executor_for(mv, plan.cut), mv)
        unsplit = run.hop(0, None, model_input(frame, mv))
        assert unsplit.answer is not None
        ms: dict[str, float] = {}
        if plan.device_only:
            answer, sent = unsplit.answer, None
            ms["device"] = _ms(unsplit.t_done - unsplit.t_start)
        else:
            pixels = plan.cut == 0 and parse_codec(plan.codec).is_input
            sent = run.head(plan.cut, plan.codec, model_input(frame, mv, pixels=pixels), ms)
            tail = run.hop(plan.cut, None, sent)
            assert tail.answer is not None
            answer = tail.answer
            ms["tail"] = _ms(tail.t_done - tail.t_start)
        at = mv.cuts[plan.cut]
        table = mv.manifest.calibration
        row = None if table is None or sent is None else table.row(plan.cut, plan.codec)
        task = mv.manifest.output.task
        agrees = _agreement(task, unsplit.answer, answer)
        return {
            "model": mv.name,
            "version": mv.version,
            "task": task,
            "cut": plan.cut,
            "codec": None if plan.device_only else plan.codec,
            "tensor": {"name": at.name, "shape": at.shape, "dtype": at.dtype, "bytes": at.bytes},
            "sent_bytes": None if sent is None else len(sent.data),
            "input_bytes": mv.manifest.input.bytes,
            "image": {"width": width, "height": height},
            "output": answer.output,
            "top": _top(answer.top),
            "boxes": in_image(answer.boxes, pre, height, width),
            "outputs": _summaries(answer.outputs),
            "unsplit": {
                "top": _top(unsplit.answer.top[:1]),
                "boxes": in_image(unsplit.answer.boxes, pre, height, width),
                "outputs": _summaries(unsplit.answer.outputs),
            },
            "agreement": agrees,
            "agrees": agrees == 1.0,
            "ms": ms,
            "calibrated": None if row is None else row.to_json(),
        }


class _Run:
    """The hops of one tryout, on one executor."""

    def __init__(self, executor: HopExecutor, mv: ModelVersion) -> None:
        self.executor, self.mv = executor, mv

    def head(self, cut: int, codec: str, x: np.ndarray, ms: dict[str, float]) -> EncodedTensor:
        """The device's part: head 0 → cut and the codec (the input itself at cut 0)."""
        if cut == 0:
            t0 = time.time()
            sent = encode(x, codec, self.mv.codec_params(0, codec))
            ms["encode"] = _ms(time.time() - t0)
            return sent
        head = self.hop(0, cut, x, forward_codec=codec)
        assert head.forward is not None  # no exit threshold: only the last cut answers
        ms["head"] = _ms(head.t_done - head.t_start)
        ms["encode"] = _ms(head.t_end - head.t_done)
        return head.forward

    def hop(
        self,
        cut: int,
        to: int | None,
        tensor: np.ndarray | EncodedTensor,
        forward_codec: str | None = None,
    ) -> Outcome:
        job = Job(self.mv.name, self.mv.version, cut, to, tensor, forward_codec=forward_codec)
        outcome = self.executor.execute_one(job)
        if outcome.error is not None:
            raise outcome.error
        return outcome
