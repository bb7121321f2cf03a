"""Emulating a device slower than this host (``splitmq device --speed``)."""

from __future__ import annotations

import time


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
