"""Measuring what each part of a model costs on this host.

Every head (input -> cut) and tail (cut -> outputs) runs as its own ONNX
Runtime session (warm-up, repeats, median): measuring them whole keeps the
operator fusions and cache effects that summing tiny segments would miss.
Any other partition is predicted from them (``Profile.predict_ms``).
Heads are also timed cold, each run after an idle gap, as a device sending
one frame at a time runs them (``cold_heads_ms``). Every session runs on the
execution providers asked for (ONNX Runtime's names, ``model.providers.resolve``):
the profile records the one that ran (``Profile.provider``).
``bench/bench_profile_accuracy.py`` checks the prediction against measured
partitions.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from splitmq.shared.model.graph import make_session
from splitmq.shared.model.partition import DTYPE_TO_ONNX, extract_segment
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.profile import Boundary, HostInfo, Profile
from splitmq.shared.model.providers import CPU, short_name

#: Idle time before each cold run: past ~50 ms a head's time stops growing
#: (docs/planner.md), and a device sending one frame at a time idles longer.
COLD_GAP_S = 0.05
#: Cold runs per head at the default 8 turns of warm runs (scaled with them: a quick
#: ``--repeats 3`` profile times 4): members of a family can differ by a few percent cold.
COLD_REPEATS = 12


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info(threads: int) -> HostInfo:
    return HostInfo(
        cpu=cpu_model(), cores=os.cpu_count() or 1, ort_version=ort.__version__, threads=threads
    )


def median_ms(run: Callable[[], object], warmup: int = 3, repeats: int = 15) -> float:
    """Median wall time of ``run`` in milliseconds, after warm-up runs."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cut_values(mv: ModelVersion, x: np.ndarray) -> list[np.ndarray]:
    """The tensor at every cut for the model input ``x``, from one run of the full model."""
    session = make_session(_with_outputs(mv.graph.model, [c.name for c in mv.cuts[1:]]))
    return [x, *session.run([c.name for c in mv.cuts[1:]], {mv.cuts[0].name: x})]


def profile(
    mv: ModelVersion,
    threads: int = 1,
    repeats: int = 8,
    chunk: int = 8,
    progress: Callable[[int, int], None] | None = None,
    providers: Sequence[str] = CPU,
) -> Profile:
    """Measure every head, tail and segment of ``mv`` on this host (see Profile).

    Cuts are measured a chunk at a time, runs going round-robin over the
    chunk's partitions and the full model, so a burst of load from a noisy
    neighbour spreads over all of them; each chunk is scaled by its own
    measurement of the full model, which keeps chunks comparable.
    """
    last = mv.last_cut
    values = cut_values(mv, mv.graph.sample_input())
    full_run = Runner(mv, 0, last, values[0], threads, providers)
    heads, tails, segments = [0.0] * (last + 1), [0.0] * (last + 1), [0.0] * last
    fulls = []
    for start in range(1, last + 1, chunk):
        cuts = range(start, min(start + chunk, last + 1))
        parts = [(0, c) for c in cuts] + [(c - 1, last) for c in cuts] + [(c - 1, c) for c in cuts]
        runs: list[Callable[[], object]] = [full_run]
        runs += (Runner(mv, a, b, values[a], threads, providers) for a, b in parts)
        medians = round_robin_ms(runs, repeats)
        fulls.append(medians[0])
        for (a, b), ms in zip(parts, medians[1:]):
            scaled = ms * fulls[0] / medians[0]
            if a == 0:
                heads[b] = scaled
            if b == last:
                tails[a] = scaled
            if b == a + 1:
                segments[a] = scaled
        if progress:
            progress(cuts[-1], last)
    heads, tails = _monotonic(heads), _monotonic(tails[::-1])[::-1]
    cold = cold_heads_ms(
        mv, values[0], threads, max(3, COLD_REPEATS * repeats // 8), providers=providers
    )
    overhead = run_overhead_ms(values[0], threads, providers)
    work, boundary = fit_additive(
        heads, tails, segments, [c.bytes / 1e6 for c in mv.cuts], overhead
    )
    return Profile(
        host=host_info(threads),
        provider=full_run.provider,
        heads_ms=heads,
        tails_ms=tails,
        segments_ms=segments,
        overhead_ms=overhead,
        work_ms=work,
        boundary=boundary,
        measured_at=time.time(),
        cold_heads_ms=cold,
    )


def cold_heads_ms(
    mv: ModelVersion,
    x: np.ndarray,
    threads: int,
    repeats: int,
    gap_s: float = COLD_GAP_S,
    providers: Sequence[str] = CPU,
) -> list[float]:
    """Median thread CPU ms of every head run after ``gap_s`` idle, in turns over the heads.

    A device answering one frame at a time runs its head cold: caches and
    branch predictors lost to whatever ran meanwhile, the core maybe asleep.
    Each turn runs every head once (its own session, warmed up first), each
    after an idle gap; kept monotonic in the cut like the warm heads. Thread
    CPU time (ONNX Runtime with one thread runs in the caller's), not wall
    time: what a neighbour preempts is not the head's, and the emulated
    device (``lab.speed.emulate``) stretches the same clock.
    """
    last = mv.last_cut
    runs = [Runner(mv, 0, b, x, threads, providers) for b in range(1, last + 1)]
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, ts in zip(runs, times):
            time.sleep(gap_s)
            start = time.thread_time()
            run()
            ts.append((time.thread_time() - start) * 1000)
    return _monotonic([0.0, *(statistics.median(ts) for ts in times)])


def fit_additive(
    heads: list[float],
    tails: list[float],
    segments: list[float],
    cut_mb: list[float],
    overhead: float,
) -> tuple[list[float], Boundary]:
    """Least-squares fit of per-segment work and boundary costs (see ``Profile``).

    Every measured run is ``input(a) + work[a:b] + output(b) + overhead`` with
    input/output linear in the bytes at the cut; relative errors are
    minimised, so short runs count as much as long ones.
    """
    last = len(heads) - 1
    mb = np.asarray(cut_mb)
    runs = (
        [(0, b, heads[b]) for b in range(1, last + 1)]
        + [(a, last, tails[a]) for a in range(last)]
        + [(a, a + 1, segments[a]) for a in range(last)]
    )
    design = np.zeros((len(runs), last + 3))
    target = np.zeros(len(runs))
    for row, (a, b, ms) in enumerate(runs):
        design[row, a:b] = 1.0
        design[row, last:] = mb[a], mb[b], 1.0
        target[row] = ms - overhead
    weight = 1 / np.maximum(target, 0.01)
    solution, *_ = np.linalg.lstsq(design * weight[:, None], target * weight, rcond=None)
    work = [float(w) for w in solution[:last]]
    k_in, k_out, fixed = (float(v) for v in solution[last:])
    return work, Boundary(
        input_ms_per_mb=k_in, output_ms_per_mb=k_out, fixed_ms=fixed, cut_mb=[float(m) for m in mb]
    )


def round_robin_ms(runs: list[Callable[[], object]], repeats: int, burst: int = 3) -> list[float]:
    """Median ms of each run, timed in turns of ``burst`` back-to-back runs.

    Turns spread bursts of load from noisy neighbours over all runs; within a
    turn the first run warms the caches and only the rest are timed, as a
    worker serving one partition runs warm.
    """
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, ts in zip(runs, times):
            run()
            for _ in range(burst - 1):
                start = time.perf_counter()
                run()
                ts.append((time.perf_counter() - start) * 1000)
    return [statistics.median(ts) for ts in times]


class Runner:
    """Partition a -> b of a model in its own session, on a fixed input: call it to run."""

    def __init__(
        self,
        mv: ModelVersion,
        a: int,
        b: int,
        x: np.ndarray,
        threads: int,
        providers: Sequence[str],
    ) -> None:
        model = extract_segment(mv.graph, mv.cuts, a, None if b == mv.last_cut else b)
        self.session = make_session(model, threads, providers)
        self.feeds = {mv.cuts[a].name: x}

    def __call__(self) -> object:
        return self.session.run(None, self.feeds)

    @property
    def provider(self) -> str:
        """The execution provider it runs on (``cpu``, ``cuda``)."""
        return short_name(self.session.get_providers()[0])


def _monotonic(values: list[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=n) for n in names if n not in {o.name for o in model.graph.output}
    )
    return probe


def run_overhead_ms(x: np.ndarray, threads: int = 1, providers: Sequence[str] = CPU) -> float:
    """Cost of one session run that does no work: an Identity on a tensor like ``x``."""
    shape: list[int | str] = ["N", *x.shape[1:]]
    vi_in = helper.make_tensor_value_info("x", DTYPE_TO_ONNX[str(x.dtype)], shape)
    vi_out = helper.make_tensor_value_info("y", DTYPE_TO_ONNX[str(x.dtype)], shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity", [vi_in], [vi_out]
    )
    session = make_session(helper.make_model(graph), threads, providers)
    return median_ms(lambda: session.run(None, {"x": x}), repeats=50)
