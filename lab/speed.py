"""Emulated speed: a device or a server slower than this host.

``splitmq device --speed`` and ``splitmq edge --speed`` emulate hardware the
planner must plan for on one machine. The device's runtime takes ``emulate``
through its conditions; a worker takes ``slowed(speed)`` as its executor, so its
measured service times, which its telemetry reports, are the slower server's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

from splitmq.shared.errors import UserError
from splitmq.shared.runtime.executor import ExecutorFactory, HopExecutor, Job, Outcome
from splitmq.shared.runtime.sessions import SessionCache


def emulate(speed: float, t_start: float, cpu_start: float, *stamps: float) -> tuple[float, ...]:
    """A device ``speed`` times as fast as this host takes 1/speed as long for all its
    work since ``t_start`` (preprocessing, head, encoding): wait out the difference and
    return ``stamps`` as that device's clock would read them.

    The work is this thread's CPU time since ``cpu_start`` (``time.thread_time``), not
    the wall time: emulated devices share the host's cores (and one interpreter), and a
    wait for them must not be stretched 1/speed times as if it were computing.
    """
    wall = stamps[-1] - t_start
    if speed >= 1 or wall <= 0:
        return stamps
    cpu = time.thread_time() - cpu_start
    scale = min(cpu, wall) / wall / speed if cpu > 0 else 1 / speed
    scaled = tuple(t_start + (t - t_start) * scale for t in stamps)
    extra = scaled[-1] - time.time()
    if extra > 0:
        time.sleep(extra)
    return scaled


class SlowedExecutor(HopExecutor):
    """The hop executor of a server ``speed`` times as fast as this host: each hop's
    CPU time 1/speed times over, waited out before the outcome returns."""

    def __init__(self, sessions: SessionCache, max_bytes: int, speed: float) -> None:
        if not 0 < speed <= 1:
            raise UserError(f"a worker's speed must be in (0, 1] (1 = this host), got {speed}")
        super().__init__(sessions, max_bytes)
        self.speed = speed

    def execute(self, jobs: Sequence[Job]) -> list[Outcome]:
        """One job at a time: the emulation scales each hop's own CPU time (no batches)."""
        return [self.execute_one(job) for job in jobs]

    def execute_one(self, job: Job) -> Outcome:
        cpu_start = time.thread_time()
        outcome = super().execute_one(job)
        if outcome.error is not None:
            return outcome
        t_done, t_end = emulate(
            self.speed, outcome.t_start, cpu_start, outcome.t_done, outcome.t_end
        )
        return replace(outcome, t_done=t_done, t_end=t_end)


def slowed(speed: float) -> ExecutorFactory:
    """A worker's executor (``Worker(executor=...)``) on a server ``speed`` times as fast."""
    return partial(SlowedExecutor, speed=speed)
