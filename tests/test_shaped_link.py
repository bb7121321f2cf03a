"""Issue 25 over a real shaped link: what the device's link estimate reads, and what the
planner does with it when the link drops and recovers.

``lab.shaped.ShapedRig``: the broker, an edge worker (and a cloud worker and the planner
where a test follows it) on the host's end of a veth pair, the device in a network
namespace on the other, ``tc tbf`` (32 kB bucket) on both ends and a relay adding 20 ms
of RTT. Root only: elsewhere every test here is skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from splitmq.lab.netns import why_not
from splitmq.lab.shaped import EFFNET, MNIST, Phase, Run, ShapedRig, device_args, run
from splitmq.shared.model.pool import ModelPool

if (_why := why_not()) is not None:
    pytest.skip(f"no shaped link here: {_why}", allow_module_level=True)

pytestmark = pytest.mark.slow

#: The estimate's tolerance of the link's rate.
WITHIN = 0.25


def _near(r: Run, phase: int, last_s: float) -> tuple[float | None, bool]:
    est, rate = r.estimate(phase, last_s), r.rates[phase]
    return est, est is not None and abs(est - rate) <= WITHIN * rate


def test_the_estimate_reads_1_10_and_50_mbit_s(real_pool: ModelPool) -> None:
    """A device-only device (its prober alone feeds the estimate), the link stepped
    50 -> 10 -> 1 Mbit/s: each phase's estimate, its median over its last 4 s, is
    within 25% of the rate."""
    phases = [Phase(50, 8), Phase(10, 8), Phase(1, 8)]
    with ShapedRig(real_pool.root, 50, burst="32kb") as rig:
        r = run(rig, rig.device(*device_args(EFFNET, "local")), phases)
    read = [_near(r, i, 4) for i in range(len(phases))]
    assert all(ok for _, ok in read), (
        f"estimates {[est for est, _ in read]} Mbit/s for {r.rates} (±25%):\n{r.series()}"
    )


def _offloading_for(seconds: float) -> Callable[[list[dict]], bool]:
    """A phase's end: the plan has offloaded for ``seconds`` (lines every 0.5 s)."""

    def until(rows: list[dict]) -> bool:
        tail = rows[-int(2 * seconds) :]
        return len(tail) >= 2 * seconds and all(x["plan"] != "device-only" for x in tail)

    return until


def test_a_drop_and_a_recovery_move_the_plan_once_each_in_time(real_pool: ModelPool) -> None:
    """EfficientNet-Lite0 at a tenth of this host's speed follows the planner (edge and
    cloud on the host) with no link given: the estimate is all it knows of the link. At
    50 Mbit/s it offloads; at the drop to 1 Mbit/s its plan changes within 2 s, and
    back at 50 Mbit/s it offloads again within 5 s; one change of plan per change of
    link at most."""
    opts = device_args(EFFNET, "follow", fps=5.0, speed=0.1, window=4, timeout_s=5.0)
    phases = [Phase(50, 20, _offloading_for(5)), Phase(1, 12), Phase(50, 12)]
    with ShapedRig(
        real_pool.root, 50, burst="32kb", edge_threads=2, cloud=True, planner=True
    ) as rig:
        r = run(rig, rig.device(*opts), phases)
    said = (
        f"changes of plan {r.events()}, phases from {r.starts}, the longest the device's "
        f"telemetry took to arrive per phase {[r.telemetry_lag_s(i) for i in range(3)]} s:"
        f"\n{r.series()}"
    )
    before = r.of(0)[-1]["plan"] if r.of(0) else None
    assert before not in (None, "device-only"), f"no offloading at 50 Mbit/s: {said}"
    drop, back = r.reaction_s(1), r.reaction_s(2)
    flaps = [len(r.switches(i)) for i in (1, 2)]
    wrong = []
    if drop is None or drop > 2.0:
        wrong.append(f"the drop moved the plan after {drop} s (2 at most)")
    if back is None or back > 5.0:
        wrong.append(f"the recovery moved it after {back} s (5 at most)")
    elif r.switches(2)[0]["to"] == "device-only":
        wrong.append("the recovery did not offload")
    if max(flaps) > 1:
        wrong.append(f"{flaps} changes of plan after the drop, the recovery (1 each at most)")
    assert not wrong, f"{'; '.join(wrong)}: {said}"


def test_small_requests_on_a_fast_link_read_its_rate(real_pool: ModelPool) -> None:
    """mnist-cnn cut 10 ``int8`` (553 B requests) at 20 frames/s on 50 Mbit/s: the
    estimate, its median over 6 s after 4 s, is within 25% of 50 Mbit/s."""
    opts = device_args(MNIST, "fixed", cut=10, codec="int8", fps=20.0)
    with ShapedRig(real_pool.root, 50, burst="32kb") as rig:
        r = run(rig, rig.device(*opts), [Phase(50, 10)])
    est, ok = _near(r, 0, 6)
    answered = r.rows[-1]["answered"] if r.rows else 0
    assert answered, f"no request answered:\n{r.series()}"
    assert ok, f"the estimate read {est} Mbit/s of 50 (±25%):\n{r.series()}"
