"""What a device spends per request: its cold heads and its per-request CPU, on every plan."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from graphs import chain
from planning import NO_OVERHEAD, add, profile_of, row, table

from splitmq.planner import DeviceState, Link, Options, TierState, evaluate
from splitmq.planner.options import EDGE
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.profile import Profile
from splitmq.shared.offline import profiling

BARE = replace(NO_OVERHEAD, device_cpu_ms=0.0)


@pytest.fixture
def tiny(tmp_path: Path) -> ModelVersion:
    return add(tmp_path, chain(), "chain")


def _options(mv: ModelVersion, profile: Profile) -> Options:
    return Options(mv, profile, table([row(0, "u8", 100, 1.0), row(2, "int8", 1000, 1.0)]))


def test_device_cpu_is_charged_to_every_plan_at_the_devices_speed(tiny: ModelVersion) -> None:
    options = _options(tiny, profile_of([1.0] * 6))
    tiers = {"edge": TierState("edge")}
    for speed in (1.0, 0.25):
        device = DeviceState(speed=speed, link=Link(8e6, 10.0))
        bare = evaluate(options, device, tiers, 0.99, BARE)
        costs = evaluate(options, device, tiers, 0.99, replace(BARE, device_cpu_ms=0.3))
        rows = [options.DEVICE_ONLY, options.find(EDGE, 0, "u8"), options.find(EDGE, 2, "int8")]
        for i in rows:
            assert i is not None
            assert costs.latency_ms[i] - bare.latency_ms[i] == pytest.approx(0.3 / speed)
            assert costs.energy_mj[i] > bare.energy_mj[i]  # it is compute


def test_a_device_runs_the_cold_heads_and_the_tiers_the_warm_ones(tiny: ModelVersion) -> None:
    warm = profile_of([1.0] * 6)
    cold = warm.model_copy(update={"cold_heads_ms": [3 * h for h in warm.heads_ms]})
    options = _options(tiny, cold)
    assert np.allclose(options.head_ms, cold.cold_heads_ms)
    assert np.allclose(options.segment_ms, _options(tiny, warm).segment_ms)  # tiers: warm
    device = DeviceState(speed=0.5)
    costs = evaluate(options, device, {}, 0.99, BARE)
    assert costs.latency_ms[options.DEVICE_ONLY] == pytest.approx(3 * 6 / 0.5)


def test_a_profile_without_cold_heads_loads_and_falls_back_to_warm() -> None:
    warm = profile_of([1.0] * 6)
    old = warm.model_dump(exclude={"cold_heads_ms"})
    assert "cold_heads_ms" not in old
    loaded = Profile.parse(old)
    assert loaded.cold_heads_ms is None
    assert loaded.device_heads_ms == loaded.heads_ms
    assert b"cold_heads_ms" not in loaded.to_json()  # an older reader still reads it


def test_profiling_times_the_heads_cold_too(tiny: ModelVersion) -> None:
    prof = profiling.profile(tiny, repeats=3)
    cold = prof.cold_heads_ms
    assert cold is not None and len(cold) == len(prof.heads_ms)
    assert cold[0] == 0.0 and all(b >= a for a, b in pairwise(cold)) and cold[-1] > 0
    assert prof.device_heads_ms == cold
