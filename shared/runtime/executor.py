"""The hop executor: run one segment of a model per job and say what came of it.

The shape of Triton's Python backend: ``execute(jobs) -> outcomes``, one
outcome per job, in order: an answer (the final output, or an exit head that
was confident enough), a tensor encoded for the next hop, or a failure that
carries its wire error code. No MQTT and no threads here, so edge and cloud
workers and the device's own head all run through the same code, and a hop
is testable without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from splitmq.shared.codecs import EncodedTensor, decode, encode, parse_codec
from splitmq.shared.errors import ModelError, RequestFailed, SplitMQError
from splitmq.shared.model.outputs import answer, read
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import normalize
from splitmq.shared.protocol.results import Box, RawOutput, TopK
from splitmq.shared.runtime.sessions import SessionCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Run ``model`` from cut ``cut`` to cut ``to`` (None: to the outputs) on ``tensor``.

    ``tensor`` is what arrived (decoded and checked here) or, on the device, the
    model input as an array. ``exit_threshold`` lets a confident exit head inside
    the segment answer; ``forward_codec`` encodes the tensor at ``to`` when
    nothing answered (None: the codec the tensor arrived in).
    """

    model: str
    version: int | None
    cut: int
    to: int | None
    tensor: EncodedTensor | np.ndarray
    exit_threshold: float | None = None
    forward_codec: str | None = None


@dataclass(frozen=True)
class Answered:
    output: str  # the output that answered: an exit head or the (first) final output
    top: tuple[TopK, ...]  # a classifier's answer
    boxes: tuple[Box, ...] = ()  # a detector's
    outputs: tuple[RawOutput, ...] = ()  # a raw task's


@dataclass(frozen=True)
class Outcome:
    """What a job produced: exactly one of ``answer``, ``forward`` and ``error``.

    Times are unix seconds: compute ran from ``t_start`` to ``t_done``; ``t_end``
    is after encoding the forwarded tensor.
    """

    job: Job
    answer: Answered | None = None
    forward: EncodedTensor | None = None
    error: SplitMQError | None = None
    mv: ModelVersion | None = None
    t_start: float = 0.0
    t_done: float = 0.0
    t_end: float = 0.0
    rows: int = 1  # jobs that ran in the same call (a batch): they shared its compute

    @property
    def compute_ms(self) -> float:
        """How long the run took: what this job waited for."""
        return (self.t_done - self.t_start) * 1000

    @property
    def service_ms(self) -> float:
        """This job's share of the run: what the tier spent on it (its capacity)."""
        return self.compute_ms / self.rows


class HopExecutor:
    """Runs jobs on the sessions of a ``SessionCache``; see module docstring."""

    def __init__(self, sessions: SessionCache, max_bytes: int) -> None:
        self.sessions = sessions
        self.max_bytes = max_bytes

    def execute(self, jobs: Sequence[Job]) -> list[Outcome]:
        """One outcome per job, in order. Jobs for the same segment run as one ONNX Runtime
        call (a dynamic batch), each row then answered or forwarded on its own; a job that
        cannot run (a bad tensor, an unknown model) fails alone, and should the batch's run
        fail, its jobs run one by one so that a failure stays with its own request."""
        if len(jobs) == 1:  # nothing to batch: the common case without load
            return [self.execute_one(jobs[0])]
        outcomes: dict[int, Outcome] = {}
        batches: dict[tuple[str, int, int, int], list[tuple[int, np.ndarray]]] = {}
        models: dict[tuple[str, int, int, int], tuple[ModelVersion, int]] = {}
        for i, job in enumerate(jobs):
            try:
                mv, end = self._segment(job)
                x, key = self._input(mv, job), (mv.name, mv.version, job.cut, end)
                batches.setdefault(key, []).append((i, x))
                models[key] = (mv, end)
            except Exception as exc:
                outcomes[i] = self._failed(job, exc)
        for key, rows in batches.items():
            mv, end = models[key]
            for i, outcome in zip((i for i, _ in rows), self._batch(jobs, rows, mv, end)):
                outcomes[i] = outcome
        return [outcomes[i] for i in range(len(jobs))]

    def execute_one(self, job: Job) -> Outcome:
        """The outcome of one job; it never raises: a failure is the outcome's ``error``."""
        try:
            mv, end = self._segment(job)
            t_start = time.time()  # decoding the tensor is part of the hop's compute
            x = self._input(mv, job)
            outputs = self.sessions.segment(mv, job.cut, end).run(x)
            return self._concluded(job, mv, end, outputs, t_start, time.time())
        except Exception as exc:
            return self._failed(job, exc)

    def _batch(
        self, jobs: Sequence[Job], rows: list[tuple[int, np.ndarray]], mv: ModelVersion, end: int
    ) -> list[Outcome]:
        """The outcomes of the jobs in ``rows`` (index, checked input), one run for all; one
        by one where the segment cannot take a batch or the batch's run fails."""
        try:
            segment = self.sessions.segment(mv, jobs[rows[0][0]].cut, end)
            if len(rows) == 1 or not segment.batches:
                return [self.execute_one(jobs[i]) for i, _ in rows]
            t_start = time.time()
            outputs = segment.run(np.concatenate([x for _, x in rows]))
            t_done = time.time()
            if any(np.shape(v)[:1] != (len(rows),) for v in outputs.values()):
                raise ModelError("its outputs do not have one row per sample")
        except Exception as exc:  # which row broke the run? each then fails (or not) alone
            log.warning(
                "a batch of %d on %s %d-%d failed (%s); running it one by one",
                *(len(rows), mv.name, jobs[rows[0][0]].cut, end, exc),
            )
            return [self.execute_one(jobs[i]) for i, _ in rows]
        concluded = []
        for r, (i, _) in enumerate(rows):
            mine = {name: v[r : r + 1] for name, v in outputs.items()}
            try:
                done = self._concluded(jobs[i], mv, end, mine, t_start, t_done)
                concluded.append(replace(done, rows=len(rows)))
            except Exception as exc:
                concluded.append(self._failed(jobs[i], exc))
        return concluded

    def _failed(self, job: Job, exc: Exception) -> Outcome:
        if isinstance(exc, SplitMQError):
            return Outcome(job, error=exc)
        # a bug or a runtime failure: still one outcome per job
        log.error(
            "unexpected failure running %s %d -> %s", job.model, job.cut, job.to, exc_info=exc
        )
        return Outcome(job, error=RequestFailed("internal", f"{type(exc).__name__}: {exc}"))

    def _segment(self, job: Job) -> tuple[ModelVersion, int]:
        """The model version a job names and the cut its segment ends at, checked."""
        mv = self._model(job)
        end = mv.last_cut if job.to is None else job.to
        if not job.cut < end <= mv.last_cut:
            raise RequestFailed(
                "unknown_cut",
                f"{mv.name} v{mv.version} has cuts 0..{mv.last_cut}; cannot run {job.cut} -> {end}",
            )
        return mv, end

    def _concluded(
        self,
        job: Job,
        mv: ModelVersion,
        end: int,
        outputs: dict[str, np.ndarray],
        t_start: float,
        t_done: float,
    ) -> Outcome:
        """What a job's outputs make: an answer, or the tensor at ``end`` to forward."""
        threshold = job.exit_threshold if job.to is not None else None
        found = answer(mv.exits, mv.finals, outputs, threshold)
        if found is not None:
            name, values = found
            answered = Answered(name, *read(mv.manifest.output, mv.labels, values))
            return Outcome(job, answered, mv=mv, t_start=t_start, t_done=t_done, t_end=t_done)
        if job.to is None:
            raise RequestFailed("internal", "the last hop produced no model output")
        codec = job.forward_codec or _codec_of(job.tensor)
        tensor = encode(outputs[mv.cuts[end].name], codec, mv.codec_params(end, codec))
        return Outcome(
            job, forward=tensor, mv=mv, t_start=t_start, t_done=t_done, t_end=time.time()
        )

    def _model(self, job: Job) -> ModelVersion:
        try:
            return self.sessions.model(job.model, job.version)
        except SplitMQError as exc:
            raise RequestFailed("unknown_model", str(exc)) from exc

    def _input(self, mv: ModelVersion, job: Job) -> np.ndarray:
        """Decode the tensor and check it fits the segment (normalising input codecs)."""
        cut = mv.cuts[job.cut]
        if isinstance(job.tensor, np.ndarray):
            x = job.tensor
        else:
            x = decode(job.tensor, self.max_bytes)
            if parse_codec(job.tensor.codec).is_input:
                pre = mv.manifest.preprocess
                if job.cut != 0 or pre is None:
                    raise RequestFailed(
                        "bad_tensor",
                        f"codec {job.tensor.codec} is for the input "
                        "(cut 0) of a model with image preprocessing",
                    )
                x = normalize(x, pre)
        # One sample per request: a result holds one answer, so a batch would be answered
        # for its first sample only.
        # (dtypes compared as dtypes: numpy spells a dtype out in slow Python code)
        if list(x.shape[1:]) != cut.shape[1:] or x.dtype != np.dtype(cut.dtype) or x.shape[0] != 1:
            raise RequestFailed(
                "bad_tensor",
                f"cut {cut.index} of {mv.name} takes one sample, "
                f"[1, {', '.join(map(str, cut.shape[1:]))}] {cut.dtype}, got "
                f"{list(x.shape)} {x.dtype}",
            )
        return x


#: How a worker makes its executor from its sessions and the payload limit: this one,
#: or an emulation's (a slower server's, ``splitmq.lab.speed.slowed``).
ExecutorFactory = Callable[[SessionCache, int], HopExecutor]


def _codec_of(tensor: EncodedTensor | np.ndarray) -> str:
    if isinstance(tensor, EncodedTensor):
        return tensor.codec
    raise RequestFailed("internal", "a tensor to forward needs a codec")
