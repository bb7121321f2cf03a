"""The cost model: latency, energy and bytes of every option for one device state.

For an option sending ``n`` bytes of cut a to a tier that runs a -> b
(docs/planner.md has the full model and its measured error)::

    latency = (preprocess + T_dev(0->a) + encode + device cpu) / speed_dev
                                                                  device compute
            + device overhead + n / B_up + RTT/2 + broker   uplink
            + tier link(n) + wait + (decode + T(a->b)) / speed_tier
            + P_exit * return(edge)
            + (1 - P_exit) * (encode_fwd + broker + links(n_fwd) + wait_cloud
                              + (decode_fwd + T(b->end)) / speed_cloud + return(cloud))
    return  = tier link(result) + broker + result / B_down + RTT/2
    energy  = P_compute * device compute + P_radio * n / B_up + P_idle * the rest
    bytes   = n (what the device sends)

``T_dev`` is the profile's cold head (a device sends one frame at a time, so
it runs after an idle gap; the warm head where the profile has none), ``device
cpu`` the device's per-request work outside the model (every plan, device-only
included); ``T`` comes from the profile of the execution provider the tier runs on
(or the tier's measured service times, which already include decoding), ``wait``
from the M/M/c queue of the tier under the load of all devices (``queueing``),
``P_exit`` and the agreement from the calibration table. Options through a tier
that is absent or saturated cost infinity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from splitmq.planner.options import CLOUD, DEVICE, SPLIT, Options
from splitmq.planner.queueing import mmc_wait_ms
from splitmq.planner.state import DeviceState, Overheads, TierState
from splitmq.shared.units import Link


@dataclass(frozen=True)
class Costs:
    """Per option: predicted latency (ms), device energy (mJ), bytes sent, agreement,
    and, for edge+cloud options, the forward send chosen (-1 for the others)."""

    latency_ms: np.ndarray
    energy_mj: np.ndarray
    bytes: np.ndarray
    agreement: np.ndarray
    forward: np.ndarray
    edge_ms: np.ndarray  # thread time the option takes of the edge tier per request
    cloud_ms: np.ndarray  # and of the cloud tier (expected: after the exits)

    @property
    def available(self) -> np.ndarray:
        return np.isfinite(self.latency_ms)


def wire_ms(nbytes: np.ndarray | float, bps: float) -> np.ndarray:
    """Time ``nbytes`` occupy a link of ``bps`` bit/s, in ms."""
    return np.asarray(nbytes, dtype=np.float64) * 8000.0 / bps


def _link_ms(link: Link | None, nbytes: np.ndarray | float) -> np.ndarray:
    """A tier's own hop to the broker (none when it sits beside the broker)."""
    if link is None:
        return np.zeros_like(np.asarray(nbytes, dtype=np.float64))
    return wire_ms(nbytes, link.bps) + link.rtt_ms / 2


class _Tier:
    """One tier's part of the model, for the options whose hop it serves."""

    def __init__(self, state: TierState | None, options: Options, over: Overheads) -> None:
        self.state, self.options, self.over = state, options, over

    def service_ms(self, a: np.ndarray, b: np.ndarray, decode_ms: np.ndarray) -> np.ndarray:
        """Decode plus segment a -> b: measured where the tier reported it, else the profile."""
        if self.state is None:
            return np.full(len(a), np.inf)
        segment_ms = self.options.tier_segment_ms(self.state.provider)
        ms = (decode_ms + segment_ms[a, b]) / self.state.speed
        measured: Mapping[tuple[int, int], float] = self.state.service_ms
        if measured:
            for (x, y), value in measured.items():
                ms = np.where((a == x) & (b == y), value, ms)
        return ms

    def wait_ms(self, service_ms: np.ndarray, rate_rps: float) -> np.ndarray:
        """Queueing before service: M/M/c under everyone's load, plus the current backlog."""
        if self.state is None:
            return np.full(len(service_ms), np.inf)
        s = self.state
        known = np.isfinite(service_ms)
        service = np.where(known, service_ms, 0.0)
        load = s.busy + rate_rps * service / 1000
        backlog = s.queued * service / s.servers
        return np.where(known, mmc_wait_ms(s.servers, load, service) + backlog, np.inf)

    def link_ms(self, nbytes: np.ndarray | float) -> np.ndarray:
        return _link_ms(None if self.state is None else self.state.link, nbytes)


def evaluate(
    options: Options,
    device: DeviceState,
    tiers: Mapping[str, TierState],
    accuracy: float = 0.0,
    over: Overheads | None = None,
    exits_by_labels: bool = False,
) -> Costs:
    """Costs of every option for ``device`` with these ``tiers``; edge+cloud options
    forward with the cheapest codec that keeps them at ``accuracy`` (when one can).

    ``exits_by_labels``: the exit heads' answers are judged by their accuracy on
    labelled data (``Options.exit_accuracy``, against an accuracy target) instead,
    so their disagreement with the unsplit model does not count in ``agreement``,
    which then measures what the codecs keep."""
    over = over or Overheads()
    o, sends = options, options.sends
    exit_disagree = np.zeros(len(o)) if exits_by_labels else o.exit_disagree
    n = len(o)
    s = np.where(o.send >= 0, o.send, 0)  # device-only reads send 0, then is masked
    dev_only = o.kind == DEVICE
    a = np.where(dev_only, o.last, sends.cut[s])
    encode = np.where(dev_only, 0.0, sends.encode_ms[s])
    work = device.preprocess_ms + o.head_ms[a] + encode + over.device_cpu_ms
    compute = work / device.speed
    sent = np.where(dev_only, 0.0, sends.bytes[s])
    disagree = np.where(dev_only, 0.0, sends.disagree[s])
    forward = np.full(n, -1)
    edge_ms, cloud_ms = np.zeros(n), np.zeros(n)
    latency = np.where(dev_only, compute, np.inf)
    radio = np.zeros(n)
    if device.link is not None:
        up, down = device.link, device.down_bps or device.link.bps
        edge = _Tier(tiers.get("edge"), o, over)
        cloud = _Tier(tiers.get("cloud"), o, over)
        split = o.kind == SPLIT
        payload = sent + np.where(split, o.split_overhead, o.request_overhead)
        radio = np.where(dev_only, 0.0, wire_ms(payload, up.bps))
        uplink = over.device_ms + radio + up.rtt_ms / 2 + _broker_ms(payload, over)

        def back(tier: _Tier, result: int) -> float:
            one = tier.link_ms(result) + _broker_ms(result, over) + wire_ms(result, down)
            return float(one) + up.rtt_ms / 2

        in_cloud = o.kind == CLOUD
        decode = sends.decode_ms[s]
        svc = np.where(
            in_cloud, cloud.service_ms(a, o.stop, decode), edge.service_ms(a, o.stop, decode)
        )
        wait = np.where(
            in_cloud, cloud.wait_ms(svc, device.rate_rps), edge.wait_ms(svc, device.rate_rps)
        )
        link = np.where(in_cloud, cloud.link_ms(payload), edge.link_ms(payload))
        reach = compute + uplink + link + wait + svc
        ret = np.where(in_cloud, back(cloud, o.result_bytes), back(edge, o.result_bytes))
        latency = np.where(dev_only, latency, reach + ret)
        edge_ms = np.where(dev_only | in_cloud, 0.0, svc)
        cloud_ms = np.where(in_cloud, svc, 0.0)
        if split.any():
            rows = np.flatnonzero(split)
            tail, f, d, svc2 = _onward(
                o, rows, disagree[rows], exit_disagree[rows], accuracy, (edge, cloud), device, over
            )
            p = o.p_exit[rows]
            exit_ret = back(edge, o.result_bytes_split)
            with np.errstate(invalid="ignore"):  # p = 1 never reaches an unreachable tail
                after = np.where(p >= 1, exit_ret, p * exit_ret + (1 - p) * tail)
                cloud_ms[rows] = np.where(p >= 1, 0.0, (1 - p) * svc2)
            latency[rows] = reach[rows] + after
            forward[rows] = f
            disagree[rows] = np.minimum(1.0, disagree[rows] + p * exit_disagree[rows] + (1 - p) * d)
    idle = np.maximum(latency - compute - radio, 0.0)
    with np.errstate(invalid="ignore"):
        energy = np.where(
            np.isfinite(latency),
            device.power.energy_mj(compute / 1000, radio / 1000, idle / 1000),
            np.inf,
        )
    return Costs(latency, energy, sent, 1 - disagree, forward, edge_ms, cloud_ms)


def _onward(
    o: Options,
    rows: np.ndarray,
    disagree: np.ndarray,
    exit_disagree: np.ndarray,
    accuracy: float,
    tiers: tuple[_Tier, _Tier],
    device: DeviceState,
    over: Overheads,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For edge+cloud rows: the cost after the edge's segment when it forwards, the
    forward send chosen, its disagreement and the cloud's service time.

    Per row, the cheapest forward codec at its cut whose disagreement still
    fits the floor (``accuracy``) after the first codec and the exit heads
    took their share; where none fits, the most faithful one (the row then
    fails the floor). The cloud's queue counts the device's whole rate, an
    upper bound when exits answer some requests at the edge.
    """
    (edge, cloud), sends, f = tiers, o.sends, o.forwards
    cut_f = sends.cut[f]
    nbytes = sends.bytes[f] + o.forward_overhead
    svc = cloud.service_ms(cut_f, np.full(len(f), o.last), sends.decode_ms[f])
    result = o.result_bytes_split
    back = (
        cloud.link_ms(result) + _broker_ms(result, over) + wire_ms(result, device.down_bps or 1.0)
    )
    cost = (
        sends.encode_ms[f] / (edge.state.speed if edge.state else 1.0)
        + _broker_ms(nbytes, over)
        + edge.link_ms(nbytes)
        + cloud.link_ms(nbytes)
        + cloud.wait_ms(svc, device.rate_rps)
        + svc
        + back
        + (device.link.rtt_ms / 2 if device.link else 0.0)
    )
    # Within each cut (forwards are ordered by cut, then disagreement) the cheapest
    # codec among the first k, and which one it is.
    which = np.arange(len(f))
    for b in np.unique(cut_f):
        seg = np.flatnonzero(cut_f == b)
        before = np.concatenate([[np.inf], np.minimum.accumulate(cost[seg])[:-1]])
        which[seg] = np.maximum.accumulate(np.where(cost[seg] < before, seg, seg[0]))
    p = o.p_exit[rows]
    stop = o.stop[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        budget = (1 - accuracy - disagree - p * exit_disagree) / (1 - p)
    budget = np.where(p >= 1, 1.0, budget)
    keys = cut_f * 2.0 + sends.disagree[f]
    pos = np.searchsorted(keys, stop * 2.0 + np.clip(budget, -0.5, 1.0) + 1e-12, side="right") - 1
    start = np.searchsorted(keys, stop * 2.0, side="left")
    choice = np.where(pos >= start, which[np.maximum(pos, start)], start)
    return cost[choice], f[choice], sends.disagree[f[choice]], svc[choice]


def _broker_ms(nbytes: np.ndarray | float, over: Overheads) -> np.ndarray:
    return over.broker_ms + np.asarray(nbytes, dtype=np.float64) * over.broker_ms_per_mb / 1e6
