"""A WAN shaped by ``tc tbf`` in a network namespace, where one runs as root.

The namespace holds only a WAN relay (``python -m splitmq.lab.wan``, which adds the
delay: this kernel has no netem); a veth pair with link-local addresses (a /30 of its
own per instance) joins it to the host, and ``tc tbf`` shapes both ends. The site's
bridge connects to the relay in the namespace, the relay on to the cloud broker on the
host: every byte of the WAN crosses the shaped veth. Elsewhere (not root, no ``ip``),
``why_not`` says why not and ``lab.sites`` uses the loopback relay instead.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import uuid

#: tbf's bucket by default: small next to the probes (1-64 kB), so they time the rate,
#: not a burst (``ShapedWan(burst=...)`` for a bursty link, as issue 25 measures).
BURST = "4kb"
#: How long tbf lets a packet wait in its queue before it drops it.
LATENCY = "100ms"


def why_not() -> str | None:
    """Why this host cannot shape a WAN (None: it can)."""
    if os.geteuid() != 0:
        return "not root: no network namespace"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "no ip/tc (iproute2)"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class ShapedWan:
    """A relay at ``host:port`` (in the namespace) to ``target_port`` at ``host_side`` (the
    host's end of the veth), shaped to ``rate`` (tc's form: ``10mbit``) with a bucket of
    ``burst`` (None: ``BURST``) on both ends; ``set_rate`` changes them on the fly."""

    def __init__(
        self, target_port: int, rtt_ms: float, rate: str = "10mbit", burst: str | None = None
    ) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns, self.veth = f"smq-{tag}", f"smq{tag}"
        net = f"169.254.{random.randint(1, 254)}.{4 * random.randint(0, 63)}"
        base = net.rsplit(".", 1)
        self.host_side = f"{base[0]}.{int(base[1]) + 1}"
        self.host = f"{base[0]}.{int(base[1]) + 2}"  # where the bridge connects
        # BURST read now, not when the module loaded: a caller may have set it
        self.port, self.rate, self.burst = 0, rate, burst or BURST
        _run("ip", "netns", "add", self.ns)
        try:
            self._wire(rate)
            self._proc = self._start(target_port, rtt_ms)
        except BaseException:
            self._unwire()
            raise

    def _wire(self, rate: str) -> None:
        inner, ns = f"{self.veth}n", ("ip", "netns", "exec", self.ns)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_side}/30", "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        _run(*ns, "ip", "addr", "add", f"{self.host}/30", "dev", inner)
        _run(*ns, "ip", "link", "set", inner, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run("tc", "qdisc", "add", "dev", self.veth, *self._tbf(rate, self.burst))
        _run(*ns, "tc", "qdisc", "add", "dev", inner, *self._tbf(rate, self.burst))

    @staticmethod
    def _tbf(rate: str, burst: str) -> tuple[str, ...]:
        return ("root", "tbf", "rate", rate, "burst", burst, "latency", LATENCY)

    def set_rate(self, rate: str, burst: str | None = None) -> None:
        """Both ends' tbf to ``rate`` (tc's form) on the fly; ``burst``: the bucket too
        (None: as it is)."""
        burst = burst or self.burst
        tbf = self._tbf(rate, burst)
        _run("tc", "qdisc", "change", "dev", self.veth, *tbf)
        _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "change", "dev", f"{self.veth}n", *tbf)
        self.rate, self.burst = rate, burst

    def drops(self) -> tuple[int, int]:
        """Packets each tbf (host end, namespace end) has dropped so far: a queue longer
        than its latency (-1: unreadable)."""
        out = []
        for pre, dev in (((), self.veth), (("ip", "netns", "exec", self.ns), f"{self.veth}n")):
            text = subprocess.run(
                [*pre, "tc", "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True
            ).stdout
            word = text.split("dropped", 1)[1].split(",")[0] if "dropped" in text else "-1"
            out.append(int(word.strip()) if word.strip().lstrip("-").isdigit() else -1)
        return out[0], out[1]

    def _start(self, target_port: int, rtt_ms: float) -> subprocess.Popen[str]:
        from splitmq.broker.launcher import free_port

        self.port = free_port()  # a free number; the namespace's ports are all free
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-m",
                "splitmq.lab.wan",
                f"{self.host}:{self.port}",
                f"{self.host_side}:{target_port}",
                str(rtt_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise RuntimeError("the WAN relay in the namespace did not start")
        return proc

    def cut(self) -> None:
        self._proc.send_signal(signal.SIGUSR1)

    def restore(self) -> None:
        self._proc.send_signal(signal.SIGUSR2)

    def close(self) -> None:
        try:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        finally:
            self._unwire()

    def _unwire(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
