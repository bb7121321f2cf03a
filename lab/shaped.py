"""Devices on a real shaped link (issue 25): a rig for the link bench and its tests.

``ShapedRig`` puts a broker (plain mosquitto) on the host's end of a ``netns.ShapedWan``
(a network namespace, a veth pair shaped by ``tc tbf`` on both ends, a relay in the
namespace adding the RTT), an edge worker, and optionally a cloud worker and the
planner, in this process. ``ShapedRig.device`` starts devices in the namespace
(``lab.shaped_devices`` under ``ip netns exec``), which connect to the relay there: their
uplink crosses one shaper, their results the other. They run a fixed plan, device-only
or follow the planner, and print a JSON line per device every ``--every`` s: the
estimates, the prober's bytes, requests answered and failed, the plan in force and each
change of plan with its unix time.

``run`` reads the lines through phases of link rates (``Phase``), each line within a
deadline (a child that dies or stays silent is an error that shows its stderr), and
changes the rate on the fly at each boundary. ``ShapedRig.close`` stops the child, the
roles, the broker and the namespace, whatever failed. Root only (``netns.why_not``).
"""

from __future__ import annotations

import contextlib
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from splitmq.broker.launcher import Broker, free_port
from splitmq.edge.worker import edge_worker
from splitmq.lab.netns import ShapedWan
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.errors import WireError
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.transport.mqtt import Message, MqttClient

EFFNET, MNIST = "efficientnet-lite0", "mnist-cnn"
#: A line from the child is due every ``--every`` s; longer than this silent is an error.
SILENCE_S = 15.0
#: How long a device child may take to load its model and connect.
READY_S = 90.0


@dataclass(frozen=True)
class Phase:
    """``seconds`` at ``rate_mbit`` (at most, when ``until(rows of this phase)`` ends it)."""

    rate_mbit: float
    seconds: float
    until: Callable[[list[dict]], bool] | None = None


@dataclass
class Run:
    """The stamped lines (``phase``, ``rate``, ``into``: seconds into it) and when each
    phase began (unix time; the rate changed then)."""

    rows: list[dict]
    starts: list[float]
    rates: list[float]
    drops: tuple[int, int] = (-1, -1)
    ends: list[float] = field(default_factory=list)
    heard: list[dict] = field(default_factory=list)  # the devices' telemetry, as it arrived

    def telemetry_lag_s(self, phase: int, dev: int = 0) -> float | None:
        """The longest a telemetry document of ``dev`` sent during ``phase`` took to reach
        the host (the planner hears the estimate that late; None: none arrived)."""
        start, end = self.starts[phase], self.ends[phase]
        lags = [h["lag_s"] for h in self.heard if h["dev"] == dev and start <= h["ts"] < end]
        return round(max(lags), 2) if lags else None

    def of(self, phase: int, dev: int = 0, last_s: float | None = None) -> list[dict]:
        """Device ``dev``'s lines of ``phase`` (its last ``last_s`` seconds only)."""
        rows = [r for r in self.rows if r["phase"] == phase and r.get("dev", 0) == dev]
        if last_s is not None and rows:
            rows = [r for r in rows if r["at"] >= self.ends[phase] - last_s]
        return rows

    def estimate(self, phase: int, last_s: float, dev: int = 0) -> float | None:
        """The median uplink estimate (Mbit/s) over the last ``last_s`` s of ``phase``."""
        ups = [r["up_mbit"] for r in self.of(phase, dev, last_s) if r["up_mbit"] is not None]
        return round(statistics.median(ups), 3) if ups else None

    def events(self, dev: int = 0) -> list[dict]:
        """Device ``dev``'s changes of plan, in order (``at``: unix time, ``to``: words)."""
        seen = [e for r in self.rows if r.get("dev", 0) == dev for e in r.get("events", ())]
        return sorted(seen, key=lambda e: e["at"])

    def switches(self, phase: int, dev: int = 0) -> list[dict]:
        """The changes of plan during ``phase`` (by their own time)."""
        end = self.ends[phase]
        return [e for e in self.events(dev) if self.starts[phase] <= e["at"] < end]

    def reaction_s(self, phase: int, dev: int = 0) -> float | None:
        """Seconds from ``phase``'s start to the first change of plan in it (None: none)."""
        seen = self.switches(phase, dev)
        return round(seen[0]["at"] - self.starts[phase], 2) if seen else None

    def probe_share(self, phase: int, dev: int = 0) -> float | None:
        """The prober's bytes over ``phase``, in % of what the link carries meanwhile."""
        rows = self.of(phase, dev)
        if len(rows) < 2 or rows[-1]["at"] <= rows[0]["at"]:
            return None
        sent = rows[-1]["probe_bytes"] - rows[0]["probe_bytes"]
        bps = 8 * sent / (rows[-1]["at"] - rows[0]["at"])
        return round(100 * bps / (self.rates[phase] * 1e6), 2)

    def series(self, dev: int = 0) -> str:
        """The lines in brief, for a failure's message."""
        return "\n".join(
            f"  {r['phase']} rate={r['rate']:g} +{r['into']:5.1f}s up={r['up_mbit']} "
            f"rtt={r['rtt_ms']} n={r['n']} plan={r.get('plan')}"
            for r in self.rows
            if r.get("dev", 0) == dev
        )


class ChildFailed(RuntimeError):
    """The device child died, stayed silent or never became ready."""


class Child:
    """A process in the namespace printing JSON lines, read by a thread into a queue."""

    def __init__(self, cmd: list[str]) -> None:
        self._err: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="shaped-child").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout_s: float) -> dict | None:
        """The next JSON line (None: none within ``timeout_s``); ChildFailed once it
        exited."""
        try:
            line = self._lines.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if line is None:
            self.proc.wait()
            raise ChildFailed(f"the device child exited ({self.proc.returncode}): {self.tail()}")
        try:
            row: dict = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ChildFailed(f"the device child printed {line!r}: {self.tail()}") from exc
        return row

    def ready(self, timeout_s: float = READY_S) -> dict:
        row = self.line(timeout_s)
        if row is None or "ready" not in row:
            raise ChildFailed(f"the device child was not ready ({row}): {self.tail()}")
        return row

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(ValueError, OSError):
            self._err.flush()
            self._err.seek(0)
            return self._err.read()[-chars:] or "(no stderr)"
        return "(stderr unreadable)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


class ShapedRig:
    """Broker, edge worker (``edge_threads``), optionally a cloud worker and the planner
    on the host; the WAN shaped to ``rate_mbit`` with a ``burst`` bucket and ``rtt_ms``.
    Use as a context manager, or ``close``."""

    def __init__(
        self,
        pool: str | Path,
        rate_mbit: float,
        *,
        burst: str = "32kb",
        rtt_ms: float = 20.0,
        edge_threads: int = 1,
        cloud: bool = False,
        planner: bool = False,
        dwell_s: float = 5.0,
        tag: str = "shaped",
    ) -> None:
        self.pool, self.burst = str(pool), burst
        self.stack = ExitStack()
        try:
            port = free_port()
            self.wan = ShapedWan(port, rtt_ms, _tc(rate_mbit), burst=burst)
            self.stack.callback(self.wan.close)
            self.broker = self.stack.enter_context(Broker(port=port, host=self.wan.host_side))
            self.settings = self.broker.settings(pool=self.pool)
            self.heard: list[dict] = []
            watch = self.stack.enter_context(MqttClient(self.settings.connection(f"{tag}-watch")))
            watch.subscribe(self.settings.topics.role_filter("device"), self._heard)
            edge = edge_worker(self.settings, f"{tag}-edge", threads=edge_threads)
            self.stack.enter_context(edge)
            if cloud:
                self.stack.enter_context(Worker(self.settings, "cloud", f"{tag}-cloud"))
            if planner:  # as the demo's link-drop scenario plans (lab.scenarios)
                service = PlannerService(
                    self.settings,
                    f"{tag}-planner",
                    control=Control(dwell_s=dwell_s),
                    speeds={"edge": 1.0, "cloud": 1.0},
                )
                self.stack.enter_context(service)
        except BaseException:
            self.stack.close()
            raise

    def _heard(self, msg: Message) -> None:
        """A device's telemetry, stamped on arrival (``dev``: the k of ``cam<k>``)."""
        with contextlib.suppress(WireError, ValueError, KeyError, TypeError):
            doc, now = msg.json(), time.time()
            bps = doc["link"]["uplink_bps"]
            dev = int(msg.topic.rsplit("/", 1)[1].removeprefix("cam"))
            self.heard.append(
                {
                    "dev": dev,
                    "ts": doc["ts"],
                    "lag_s": round(now - doc["ts"], 3),
                    "up_mbit": None if bps is None else round(bps / 1e6, 3),
                }
            )

    def set_rate(self, rate_mbit: float) -> None:
        self.wan.set_rate(_tc(rate_mbit))

    def child(self, argv: list[str]) -> Child:
        """``python *argv --broker <the relay> --pool <pool>`` in the namespace, stopped
        on ``close``."""
        cmd = ["ip", "netns", "exec", self.wan.ns, sys.executable, *argv]
        cmd += ["--broker", f"{self.wan.host}:{self.wan.port}", "--pool", self.pool]
        child = Child(cmd)
        self.stack.callback(child.stop)
        return child

    def device(self, *args: str) -> Child:
        """Devices in the namespace: ``lab.shaped_devices`` with ``args``."""
        return self.child(["-m", "splitmq.lab.shaped_devices", *args])

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> ShapedRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tc(rate_mbit: float) -> str:
    return f"{int(rate_mbit * 1e6)}bit"


def run(rig: ShapedRig, child: Child, phases: list[Phase], silence_s: float = SILENCE_S) -> Run:
    """The child's lines through ``phases``, the first at the rig's rate already, each
    next one's rate set on the fly as it begins (after the child's ``ready``)."""
    child.ready()
    out = Run([], [], [p.rate_mbit for p in phases])
    for i, phase in enumerate(phases):
        if i:
            rig.set_rate(phase.rate_mbit)
        start = time.time()
        out.starts.append(start)
        end, heard, mine = start + phase.seconds, start, []
        while (now := time.time()) < end:
            row = child.line(min(end, heard + silence_s) - now)
            if row is None:
                if time.time() >= heard + silence_s:
                    raise ChildFailed(f"no line from the device child for {silence_s} s")
                continue
            heard = time.time()
            at = row.setdefault("at", heard)
            row |= {"phase": i, "rate": phase.rate_mbit, "into": round(at - start, 2)}
            out.rows.append(row)
            mine.append(row)
            if phase.until is not None and phase.until(mine):
                break
        out.ends.append(time.time())
    out.drops, out.heard = rig.wan.drops(), list(rig.heard)
    return out


def device_args(
    model: str = EFFNET,
    mode: str = "local",
    *,
    cut: int = 0,
    codec: str = "u8",
    fps: float = 0.0,
    speed: float = 0.1,
    devices: int = 1,
    every: float = 0.5,
    window: int = 4,
    timeout_s: float = 10.0,
) -> list[str]:
    """The child's arguments (``mode``: ``fixed`` at ``cut``/``codec``, ``local``:
    device-only, ``follow``: the planner, from device-only, at ``speed``)."""
    return [
        *("--model", model, "--mode", mode, "--cut", str(cut), "--codec", codec),
        *("--fps", str(fps), "--speed", str(speed), "--devices", str(devices)),
        *("--every", str(every), "--window", str(window), "--timeout-s", str(timeout_s)),
    ]
