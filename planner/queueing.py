"""Waiting at a tier: the M/M/c queue, vectorised over candidate service times.

A tier is ``c`` inference threads (all its workers together) fed by every
device that uses it. With offered load ``A`` Erlangs (busy threads on
average, ``arrival rate x service time``), a request waits on average
``C(c, A) / (c - A)`` service times, where ``C`` is Erlang's C formula, the
chance that all threads are busy. At ``A >= c`` the tier is saturated: the
queue grows without bound, so the wait is infinite.
"""

from __future__ import annotations

import numpy as np


def erlang_c(servers: int, load: np.ndarray) -> np.ndarray:
    """Chance an arrival waits, for ``servers`` threads at ``load`` Erlangs (1 if saturated)."""
    load = np.asarray(load, dtype=np.float64)
    # Erlang B by its stable recurrence, then C from B.
    b = np.ones_like(load)
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    rho = load / servers
    with np.errstate(divide="ignore", invalid="ignore"):
        c = b / (1 - rho * (1 - b))
    return np.where(rho >= 1, 1.0, c)


def mmc_wait_ms(servers: int, load: np.ndarray, service_ms: np.ndarray) -> np.ndarray:
    """Mean wait before service in ms: ``C(c, A) * service / (c - A)``; inf when saturated."""
    load = np.asarray(load, dtype=np.float64)
    service_ms = np.asarray(service_ms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = erlang_c(servers, load) * service_ms / (servers - load)
    return np.where(load >= servers, np.inf, np.maximum(wait, 0.0))
