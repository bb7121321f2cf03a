"""An emulated WAN between a site broker's bridge and the cloud broker, on loopback.

``WanRelay`` is a TCP relay: the bridge connects to it, it connects on to the cloud
broker. Each direction delays every chunk by half the RTT (a delay line: order and
pacing kept) and, with a rate, paces the bytes to it. ``cut()`` is an outage as a
site sees one when its uplink drops: every connection is reset and new ones are
refused (the port is closed) until ``restore()`` opens it again. (Accepting and
closing at once instead hangs mosquitto 2.0.11's TLS bridge: measured, its broker
stopped answering its own clients within seconds.) Tests and benchmarks use it where no network
namespace with ``tc`` is at hand (not root); the serving path never imports it.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
import struct
import threading
import time
from types import TracebackType

CHUNK = 65536
#: Bytes a direction holds, at most, before it stops reading (a router's buffer): the
#: sender's TCP then feels the slow link, as over a real one.
BUFFER = 1 << 20


class WanRelay:
    """A relay on ``127.0.0.1:<port>`` to ``target`` (see module docstring)."""

    def __init__(
        self,
        target: tuple[str, int],
        rtt_ms: float = 0.0,
        bps: float | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ):
        self.target, self.rtt_ms, self.bps = target, rtt_ms, bps
        self.host, self.port = listen
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def cut(self) -> None:
        """The WAN goes: reset every connection, refuse new ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            socks, self._socks = self._socks, set()
        if listener is not None:  # shutdown wakes the accept() blocked on it; close alone not
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in socks:  # shutdown wakes its readers (and says so to the peer), then a reset
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """The WAN is back (or up at first): connections are accepted again."""
        with self._lock:
            if self._listener is not None:
                return
            self._listener = socket.create_server((self.host, self.port))
            self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> WanRelay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # cut or closed
            try:
                far = socket.create_connection(self.target, timeout=5)
            except OSError:
                near.close()
                continue
            far.settimeout(None)
            for s in (near, far):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if listener is not self._listener:  # cut meanwhile
                    near.close()
                    far.close()
                    continue
                self._socks |= {near, far}
            for a, b in ((near, far), (far, near)):
                _Direction(a, b, self.rtt_ms / 2000, self.bps).start()


class _Direction:
    """One way of one connection: each chunk leaves once the link has serialised it (at
    ``bps``, after the chunks before it) and the one-way delay has passed."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float, bps: float | None):
        self.src, self.dst, self.delay_s, self.bps = src, dst, delay_s, bps
        self._due: list[tuple[float, int, bytes]] = []
        self._ready = threading.Condition()
        self._seq = 0
        self._held = 0  # bytes read, not yet sent
        self._eof = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            sent = 0.0  # when the link has serialised what it took so far
            while data := self.src.recv(CHUNK):
                sent = max(sent, time.monotonic()) + (len(data) * 8 / self.bps if self.bps else 0)
                with self._ready:
                    self._seq += 1
                    self._held += len(data)
                    heapq.heappush(self._due, (sent + self.delay_s, self._seq, data))
                    self._ready.notify_all()
                    self._ready.wait_for(lambda: self._held <= BUFFER or self._eof)
        except OSError:
            pass
        with self._ready:
            self._eof = True
            self._ready.notify()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._due and not self._eof:
                    self._ready.wait()
                if not self._due:
                    break
                due, _, data = heapq.heappop(self._due)
                self._held -= len(data)
                self._ready.notify_all()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self.dst.sendall(data)
            except OSError:
                break
        with self._ready:  # a reader held back by a full buffer: nothing more goes out
            self._eof = True
            self._ready.notify_all()
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)


def main() -> None:
    """``python -m splitmq.lab.wan LISTEN_HOST:PORT TARGET_HOST:PORT RTT_MS``: a relay in
    its own process (e.g. inside a network namespace whose veth ``tc`` shapes); SIGUSR1
    cuts the WAN, SIGUSR2 restores it, SIGTERM ends it; prints ``ready`` once it listens."""
    import signal
    import sys

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        return host, int(port)

    relay = WanRelay(address(sys.argv[2]), float(sys.argv[3]), listen=address(sys.argv[1]))
    signal.signal(signal.SIGUSR1, lambda *_: relay.cut())
    signal.signal(signal.SIGUSR2, lambda *_: relay.restore())
    print("ready", flush=True)
    while True:
        signal.pause()  # the handlers run between pauses


if __name__ == "__main__":
    main()
