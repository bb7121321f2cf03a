"""The dashboard's picture of the running system, built only from validated documents.

Everything is bounded: the latest telemetry of at most ``ROLES_KEPT`` processes
and ``PLANS_KEPT`` retained plans (the least recently heard go first), and the
last ``RESULTS_KEPT`` results, ``ERRORS_KEPT`` errors and ``SWITCHES_KEPT`` plan
switches. A plan switch is what the device itself reports: its telemetry's
``plan`` changed (a planner's plan taken, or a fallback of its own). Every change
bumps ``version``; the page's event stream waits on it and sends the snapshot,
which is built once per version however many pages watch.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from typing import Any

from splitmq.shared.protocol.plan import Plan
from splitmq.shared.protocol.results import Box, ErrorReport, HopLatency, Result, TopK
from splitmq.shared.protocol.telemetry import DeviceTelemetry, Offline, TelemetryDoc

ROLES_KEPT = 1000
PLANS_KEPT = 1000
RESULTS_KEPT = 300
ERRORS_KEPT = 100
SWITCHES_KEPT = 200
REJECTIONS_KEPT = 10


def hop_ms(hop: HopLatency) -> float:
    """All the time one hop accounts for: transfer, queue, compute and encode."""
    return (hop.transfer_ms or 0.0) + (hop.queue_ms or 0.0) + hop.compute_ms + hop.encode_ms


def result_row(result: Result, seen: float) -> dict[str, Any]:
    """A result as the page charts and lists it. ``latency_ms`` is the sum of the hops'
    times: from the device starting the frame to the answering worker sending the
    answer (the parts telescope; the way back to the device is not in it). The answer
    is summed up whatever the task: the top-1 class; a detector's box count and best
    box; a raw task's output names and shapes (never its values)."""
    first = result.top[0] if result.top else None
    best = max(result.boxes, key=lambda b: b.score, default=None)
    return {
        "t": result.t_sent,
        "seen": seen,
        "id": result.id,
        "device": result.device,
        "model": result.model,
        "version": result.version,
        "tier": result.tier,
        "exit": result.exit,
        "top": _class(first),
        "boxes": len(result.boxes),
        "best_box": _class(best),
        "outputs": [{"name": o.name, "shape": list(o.shape)} for o in result.outputs],
        "latency_ms": round(sum(hop_ms(h) for h in result.latency), 3),
        "bytes": result.bytes,
        "hops": [{"tier": h.tier, "id": h.id, "ms": round(hop_ms(h), 3)} for h in result.latency],
    }


def _class(entry: TopK | Box | None) -> dict[str, Any] | None:
    return (
        None
        if entry is None
        else {"index": entry.index, "label": entry.label, "score": entry.score}
    )


class LiveState:
    """Thread-safe and bounded (see module docstring); the MQTT thread writes, pages read."""

    def __init__(self, connected: Any = None) -> None:
        self._cond = threading.Condition()
        self._stopped = False
        self.version = 0
        self._connected = connected  # () -> bool: whether the broker connection is up
        self._roles: dict[tuple[str, str], dict[str, Any]] = {}
        self._running: dict[str, Plan] = {}  # the plan each device last said it runs
        self._plans: dict[tuple[str, str], dict[str, Any]] = {}
        self._results: deque[dict[str, Any]] = deque(maxlen=RESULTS_KEPT)
        self._errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)
        self._switches: deque[dict[str, Any]] = deque(maxlen=SWITCHES_KEPT)
        self._rejected: Counter[str] = Counter()
        self._rejections: deque[dict[str, Any]] = deque(maxlen=REJECTIONS_KEPT)
        self._cached: tuple[int, bytes] | None = None

    # -- what the feed reports -------------------------------------------------------

    def telemetry(self, role: str, role_id: str, doc: TelemetryDoc | None, seen: float) -> None:
        """The retained telemetry of one process, its Last Will (``Offline``), or None: the
        retained document was cleared, the process is gone for good."""
        with self._cond:
            if doc is None:
                self._roles.pop((role, role_id), None)
                if role == "device":
                    self._running.pop(role_id, None)
                self._changed()
                return
            entry = self._roles.get((role, role_id))
            if entry is None:
                _make_room(self._roles, ROLES_KEPT)
                entry = self._roles[(role, role_id)] = {"role": role, "id": role_id, "doc": None}
            entry["seen"] = seen
            if isinstance(doc, Offline):
                entry["status"] = "offline"
            else:
                entry["status"] = "online"
                entry["doc"] = doc.model_dump(mode="json", by_alias=True)
                if isinstance(doc, DeviceTelemetry):
                    entry["doc"]["plan"] = _plan_json(doc.plan)
                    self._device_plan(role_id, doc)
            self._changed()

    def _device_plan(self, device: str, doc: DeviceTelemetry) -> None:
        before = self._running.get(device)
        self._running[device] = doc.plan
        if before is not None and before != doc.plan:
            self._switches.append(
                {
                    "t": doc.ts,
                    "device": device,
                    "from": _plan_json(before),
                    "to": _plan_json(doc.plan),
                    "reason": doc.plan.reason,
                }
            )
        if len(self._running) > ROLES_KEPT:
            self._running.pop(next(iter(self._running)))

    def plan(self, device: str, model: str, plan: Plan | None, seen: float) -> None:
        """A retained plan from the planner; None: the retained plan was cleared."""
        with self._cond:
            if plan is None:
                self._plans.pop((device, model), None)
            else:
                if (device, model) not in self._plans:
                    _make_room(self._plans, PLANS_KEPT)
                self._plans[(device, model)] = {
                    "device": device,
                    "model": model,
                    "seen": seen,
                    "plan": _plan_json(plan),
                }
            self._changed()

    def result(self, result: Result, seen: float) -> None:
        with self._cond:
            self._results.append(result_row(result, seen))
            self._changed()

    def error(self, report: ErrorReport, seen: float) -> None:
        with self._cond:
            self._errors.append(
                {
                    "seen": seen,
                    "id": report.id,
                    "device": report.device,
                    "code": report.code,
                    "message": report.message,
                }
            )
            self._changed()

    def reject(self, kind: str, topic: str, why: str) -> None:
        """A message that failed validation: counted and shown, never used."""
        with self._cond:
            self._rejected[kind] += 1
            self._rejections.append({"seen": time.time(), "kind": kind, "topic": topic, "why": why})
            self._changed()

    @property
    def rejected(self) -> dict[str, int]:
        with self._cond:
            return dict(self._rejected)

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()

    # -- what pages read -----------------------------------------------------------------

    def wait(self, seen: int, timeout: float) -> int:
        """The version, once it differs from ``seen`` (or after ``timeout``, or on stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen or self._stopped, timeout)
            return self.version

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Wake every waiting page: the server is closing."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def snapshot_json(self) -> bytes:
        """The whole picture as JSON, built once per version; the time and the broker
        connection, which change without a new version, are added to each copy."""
        with self._cond:
            if self._cached is None or self._cached[0] != self.version:
                self._cached = (self.version, json.dumps(self._snapshot()).encode())
            body = self._cached[1]
        connected = bool(self._connected()) if self._connected else None
        live = json.dumps({"now": time.time(), "connected": connected}).encode()
        return live[:-1] + b"," + body[1:]

    def snapshot(self) -> dict[str, Any]:
        return json.loads(self.snapshot_json())

    def _snapshot(self) -> dict[str, Any]:
        roles = sorted(self._roles.values(), key=lambda e: (e["role"], e["id"]))
        return {
            "version": self.version,
            "devices": [e for e in roles if e["role"] == "device"],
            "workers": [e for e in roles if e["role"] in ("edge", "cloud")],
            "planners": [e for e in roles if e["role"] == "planner"],
            "plans": sorted(self._plans.values(), key=lambda p: (p["device"], p["model"])),
            "switches": list(self._switches),
            "results": list(self._results),
            "errors": list(self._errors),
            "rejected": dict(self._rejected),
            "rejections": list(self._rejections),
        }


def _plan_json(plan: Plan) -> dict[str, Any]:
    """A plan for the page, with its words (``Option.words``: one definition, in Python)."""
    return {**plan.to_json_dict(), "words": plan.words}


def _make_room(table: dict[Any, dict[str, Any]], kept: int) -> None:
    """Drop the least recently heard entries until one more fits."""
    while len(table) >= kept:
        oldest = min(table, key=lambda key: table[key]["seen"])
        del table[oldest]
