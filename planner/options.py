"""Every option the planner weighs for one model version, built once from its manifest.

An option is where the device cuts, what it sends and the route after it:

- **device**: the whole model on the device (the last cut, nothing sent);
- **edge** / **cloud**: the device runs 0 -> a, sends cut a with a codec, and
  that tier runs a -> the outputs ("edge to the end", "cloud direct");
- **edge+cloud**: the edge runs a -> b, answers there when an exit head inside
  a -> b reaches the threshold, and otherwise forwards cut b with a second
  codec to the cloud, which finishes.

What the device can send at a cut is what the calibration table measured
there (bytes, top-1 agreement, encode and decode time). At each cut only the
codecs no other codec beats on all four at once are kept (the Pareto set):
every cost the planner computes grows with each of them, so a dropped codec
can never be the best choice under any state or objective, and the search
stays exhaustive over what can win. Columns are numpy arrays, one entry per
option, so evaluating every option for a device state is a few vector
operations (``cost.evaluate``).

Profiles are per execution provider: the device's head and, by default, every
tier are priced with the CPU profile; a tier whose workers run on another
provider (``cuda``) is priced with that provider's profile where the manifest
has one (``tier_segment_ms``), else with the CPU one (logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitmq.planner.envelope import request_overhead, result_bytes
from splitmq.shared.errors import UserError
from splitmq.shared.model.calibration import CalibrationTable, ExitCurve, FidelityRow
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.profile import Profile
from splitmq.shared.protocol.plan import Option
from splitmq.shared.protocol.wire import Hop

log = logging.getLogger(__name__)

DEVICE, EDGE, CLOUD, SPLIT = 0, 1, 2, 3
#: Route kinds by their code in ``Options.kind``.
KINDS = ("device", "edge", "cloud", "edge+cloud")
#: Cut-0 codecs every plan is compared with (``fixed``): kept whatever the Pareto rule says.
FIXED_INPUTS = ("jpeg:85", "u8")


class NotReady(UserError):
    """The model version lacks what the planner reads (a profile or a calibration)."""


@dataclass(frozen=True)
class Sends:
    """The (cut, codec) pairs a tensor can travel as: measured, Pareto-kept."""

    cut: np.ndarray
    codec: tuple[str, ...]
    bytes: np.ndarray  # tensor bytes per request (data and codec params)
    encode_ms: np.ndarray
    decode_ms: np.ndarray
    disagree: np.ndarray  # 1 - measured top-1 agreement

    @classmethod
    def from_rows(cls, rows: list[FidelityRow]) -> Sends:
        return cls(
            np.array([r.cut for r in rows], dtype=np.int64),
            tuple(r.codec for r in rows),
            np.array([r.bytes for r in rows]),
            np.array([r.encode_ms for r in rows]),
            np.array([r.decode_ms for r in rows]),
            np.array([1 - r.agreement for r in rows]),
        )

    def index(self, cut: int, codec: str) -> int | None:
        return next(
            (i for i, (c, k) in enumerate(zip(self.cut, self.codec)) if c == cut and k == codec),
            None,
        )


def pareto_rows(
    rows: list[FidelityRow], keep: frozenset[tuple[int, str]] = frozenset()
) -> list[FidelityRow]:
    """Per cut, the rows no other row of that cut matches or beats on bytes, encode and
    decode time and agreement at once (of equal rows the first stays); rows in ``keep``
    stay regardless."""
    by_cut: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_cut.setdefault(row.cut, []).append(i)
    costs = [(r.bytes, r.encode_ms, r.decode_ms, -r.agreement) for r in rows]
    kept = []
    for i, row in enumerate(rows):
        beaten = any(
            j != i
            and all(o <= m for o, m in zip(costs[j], costs[i]))
            and (costs[j] != costs[i] or j < i)
            for j in by_cut[row.cut]
        )
        if not beaten or (row.cut, row.codec) in keep:
            kept.append(row)
    return kept


@dataclass(frozen=True)
class ExitGroup:
    """The exit heads a hop a -> b holds, with their measured curve."""

    curve: ExitCurve

    def at(self, threshold: float) -> tuple[float, float, float]:
        """(exit rate, disagreement of the exited answers, delivered accuracy on labelled
        samples or NaN) at a curve threshold."""
        c = self.curve
        i = c.thresholds.index(threshold)
        agreement = c.agreement[i]
        accuracy = np.nan if c.accuracy is None else c.accuracy[i]
        return c.exit_rate[i], 0.0 if agreement is None else 1 - agreement, accuracy


class Options:
    """Every option of a model version (see module docstring); static columns only.

    Rows are the device-only option, then one row per (send, tier) to the
    end, then one per (send, b, threshold) of edge+cloud. The forward codec
    of an edge+cloud row is left open: what it costs depends on the state,
    so ``cost.evaluate`` picks, per row, the forward codec that is cheapest
    within the accuracy floor (exactly what enumerating them all would find:
    the rest of the row does not depend on it).
    """

    #: The device-only option's row (it is enumerated first).
    DEVICE_ONLY = 0

    def __init__(
        self,
        mv: ModelVersion,
        profile: Profile,
        table: CalibrationTable,
        prune: bool = True,
        profiles: Sequence[Profile] = (),
    ) -> None:
        """``profile`` prices the device and tiers; ``profiles``, those of tiers that run
        on another execution provider (the newest of each provider counts)."""
        self.model, self.version, self.last = mv.name, mv.version, mv.last_cut
        self.profile = profile
        newest = sorted([*profiles, profile], key=lambda p: p.measured_at)
        self._profiles = {p.provider: p for p in newest} | {profile.provider: profile}
        keep = frozenset((0, codec) for codec in FIXED_INPUTS)
        rows = list(table.fidelity)
        self.sends = Sends.from_rows(pareto_rows(rows, keep) if prune else rows)
        self.head_ms = np.asarray(profile.device_heads_ms)  # cold: a device runs after a gap
        self.segment_ms = _segment_matrix(profile)
        self._segments = {profile.provider: self.segment_ms}
        self.result_bytes = result_bytes(mv.name, mv.version, mv.labels, 1)
        self.result_bytes_split = result_bytes(mv.name, mv.version, mv.labels, 2)
        self.request_overhead = request_overhead(mv.name, mv.version, (Hop("edge"),), 0)
        split_route = (Hop("edge", 2, 0.5, "int8"), Hop("cloud"))
        self.split_overhead = request_overhead(mv.name, mv.version, split_route, 0)
        self.forward_overhead = request_overhead(mv.name, mv.version, split_route, 1)
        columns = _enumerate(self.sends, self.last, _exit_groups(table.exits, self.last))
        (
            self.kind,
            self.send,
            self.stop,
            self.threshold,
            self.p_exit,
            self.exit_disagree,
            self.exit_accuracy,  # delivered on labelled samples (NaN: not measured, no exit)
        ) = columns
        # Forward candidates: every send past cut 0, ordered by (cut, disagreement).
        order = np.lexsort((self.sends.disagree, self.sends.cut))
        self.forwards = order[self.sends.cut[order] > 0]

    def __len__(self) -> int:
        return len(self.kind)

    def tier_segment_ms(self, provider: str) -> np.ndarray:
        """ms[a, b] on a tier whose workers run on ``provider`` (``cpu``, ``cuda``): its own
        profile's where measured, else ``segment_ms`` (logged once)."""
        found = self._segments.get(provider)
        if found is None:
            measured = self._profiles.get(provider)
            if measured is None:
                log.warning(
                    "%s@%s has no %s profile: a tier running on %s is priced with the %s "
                    "one (run `splitmq profile %s@%s --providers %s` on it)",
                    *(self.model, self.version, provider, provider, self.profile.provider),
                    *(self.model, self.version, provider),
                )
            found = self.segment_ms if measured is None else _segment_matrix(measured)
            self._segments[provider] = found
        return found

    @classmethod
    def of(cls, mv: ModelVersion, prune: bool = True) -> Options:
        """The options of ``mv``, from its newest CPU profile (the newest of any provider
        if none) and the newest of every other provider, and its calibration table
        (``prune=False``: every measured codec, not only the Pareto set)."""
        manifest = mv.manifest
        ref = f"{mv.name}@{mv.version}"
        if not manifest.profiles:
            raise NotReady(
                f"{ref} has no profile: run `splitmq profile {ref}` (about 30 s) and plan again"
            )
        if manifest.calibration is None or not manifest.calibration.fidelity:
            raise NotReady(
                f"{ref} is not calibrated, so the planner knows no codec's bytes or agreement: "
                f"run `splitmq calibrate {ref}` (a few minutes) and plan again"
            )
        cpu = [p for p in manifest.profiles if p.provider == "cpu"] or manifest.profiles
        profile = max(cpu, key=lambda p: p.measured_at)
        return cls(mv, profile, manifest.calibration, prune, manifest.profiles)

    def route(self, i: int, forward: int) -> tuple[Hop, ...]:
        """The source route of option ``i`` (``forward``: its forward send, edge+cloud)."""
        kind = int(self.kind[i])
        if kind == DEVICE:
            return ()
        if kind in (EDGE, CLOUD):
            return (Hop("edge" if kind == EDGE else "cloud"),)
        threshold = None if np.isnan(self.threshold[i]) else float(self.threshold[i])
        return (Hop("edge", int(self.stop[i]), threshold, self.sends.codec[forward]), Hop("cloud"))

    def cut(self, i: int) -> int:
        return self.last if self.kind[i] == DEVICE else int(self.sends.cut[self.send[i]])

    def codec(self, i: int) -> str:
        return "raw" if self.kind[i] == DEVICE else self.sends.codec[int(self.send[i])]

    def locate(self, option: Option) -> int | None:
        """The row of a plan's option (its forward codec aside); None if it is not one."""
        if option.device_only:
            return self.DEVICE_ONLY if option.cut == self.last else None
        tiers = option.tiers
        if tiers in (("edge",), ("cloud",)):
            return self.find(EDGE if tiers == ("edge",) else CLOUD, option.cut, option.codec)
        s = self.sends.index(option.cut, option.codec)
        hop = option.route[0]
        if tiers != ("edge", "cloud") or s is None or hop.to is None:
            return None
        threshold = np.isnan(self.threshold) if hop.exit is None else self.threshold == hop.exit
        hits = np.flatnonzero(
            (self.kind == SPLIT) & (self.send == s) & (self.stop == hop.to) & threshold
        )
        return int(hits[0]) if len(hits) else None

    def find(self, kind: int, cut: int, codec: str) -> int | None:
        """The option sending ``codec`` at ``cut`` to the tier of ``kind``, to the end."""
        s = self.sends.index(cut, codec)
        if s is None:
            return None
        hits = np.flatnonzero((self.kind == kind) & (self.send == s))
        return int(hits[0]) if len(hits) else None


def _segment_matrix(profile: Profile) -> np.ndarray:
    """ms[a, b]: the profile's prediction for segment a -> b (0 on and below the diagonal)."""
    last = len(profile.heads_ms) - 1
    ms = np.zeros((last + 1, last + 1))
    for a in range(last):
        for b in range(a + 1, last + 1):
            ms[a, b] = profile.predict_ms(a, b)
    return ms


def _exit_groups(curves: list[ExitCurve], last: int) -> dict[tuple[int, int], ExitGroup]:
    """(a, b) -> the exit heads a hop a -> b computes, where a curve measured that group."""
    heads = sorted({(k, name) for c in curves for k, name in zip(c.cuts, c.outputs)})
    by_outputs = {tuple(c.outputs): c for c in curves}
    groups = {}
    for a in range(last):
        for b in range(a + 1, last):
            inside = [(k, name) for k, name in heads if a < k <= b]
            if not inside:
                continue
            order = next(
                (c.outputs for c in curves if set(c.outputs) == {n for _, n in inside}), None
            )
            if order is not None:
                groups[(a, b)] = ExitGroup(by_outputs[tuple(order)])
    return groups


def _enumerate(
    sends: Sends, last: int, groups: dict[tuple[int, int], ExitGroup]
) -> tuple[np.ndarray, ...]:
    """Columns (kind, send, stop, threshold, exit rate, exit disagreement, exit accuracy)
    of every option."""
    nan = np.nan
    rows: list[tuple[int, int, int, float, float, float, float]] = [
        (DEVICE, -1, last, nan, 0, 0, nan)
    ]
    for s in range(len(sends.cut)):
        rows += [(EDGE, s, last, nan, 0.0, 0.0, nan), (CLOUD, s, last, nan, 0.0, 0.0, nan)]
    cuts_with_sends = set(int(c) for c in sends.cut)
    for s, a in enumerate(sends.cut):
        for b in range(int(a) + 1, last):
            if b not in cuts_with_sends:
                continue  # nothing measured to forward there
            rows.append((SPLIT, s, b, nan, 0.0, 0.0, nan))
            group = groups.get((int(a), b))
            if group is not None:
                rows += [(SPLIT, s, b, t, *group.at(t)) for t in group.curve.thresholds]
    kind, send, stop, threshold, p_exit, d_exit, a_exit = zip(*rows)
    return (
        np.array(kind, dtype=np.int8),
        np.array(send, dtype=np.int64),
        np.array(stop, dtype=np.int64),
        np.array(threshold, dtype=np.float64),
        np.array(p_exit, dtype=np.float64),
        np.array(d_exit, dtype=np.float64),
        np.array(a_exit, dtype=np.float64),
    )
