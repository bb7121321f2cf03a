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

#: tbf's bucket: small next to the probes (1-64 kB), so they time the rate, not a burst
#: (bursty links are issue [18]'s to measure).
BURST = "4kb"


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
    host's end of the veth), shaped to ``rate`` (tc's form: ``10mbit``)."""

    def __init__(self, target_port: int, rtt_ms: float, rate: str = "10mbit") -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns, self.veth = f"smq-{tag}", f"smq{tag}"
        net = f"169.254.{random.randint(1, 254)}.{4 * random.randint(0, 63)}"
        base = net.rsplit(".", 1)
        self.host_side = f"{base[0]}.{int(base[1]) + 1}"
        self.host = f"{base[0]}.{int(base[1]) + 2}"  # where the bridge connects
        self.port, self.rate = 0, rate
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
        tbf = ("root", "tbf", "rate", rate, "burst", BURST, "latency", "100ms")
        _run("tc", "qdisc", "add", "dev", self.veth, *tbf)
        _run(*ns, "tc", "qdisc", "add", "dev", inner, *tbf)

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
