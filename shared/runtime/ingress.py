"""The seam through which a tier adds its own ways in to the shared worker.

A worker serves its tier's request topics itself; anything else a role takes in
(the edge: frames from plain cameras, ``splitmq.edge.frames``) plugs in as an
``Ingress``, so the worker holds no tier's special cases. An ingress subscribes
its own filters on the worker's client, queues what it takes through ``submit``
(on paho's thread, never waiting) and, on a worker thread, turns each message
into the request a device would have sent: dedupe, the executor, the answer and
every failure then follow the one path of the worker.
"""

from __future__ import annotations

from typing import Any, Protocol

from splitmq.shared.protocol.wire import Request
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.runtime.stats import Stats
from splitmq.shared.transport.messages import Message
from splitmq.shared.transport.mqtt import MqttClient


class Intake(Protocol):
    """What a worker offers its ingress."""

    @property
    def id(self) -> str: ...

    @property
    def client(self) -> MqttClient: ...

    @property
    def sessions(self) -> SessionCache: ...

    @property
    def stats(self) -> Stats[Any]: ...

    @property
    def capacity(self) -> int:
        """Messages the worker holds at once (threads and queue): each ingress may hold
        as many waiting, so the worker's queue never blocks paho's thread."""
        ...

    def submit(self, msg: Message, ingress: Ingress) -> None:
        """Queue ``msg`` for a worker thread (paho's thread: it never waits)."""
        ...

    def fail(self, device: str | None, request_id: str | None, code: str, message: str) -> None:
        """Count a failure and tell ``device`` on ``error/<device>`` (no device: log it)."""
        ...


class Ingress(Protocol):
    """Messages besides devices' requests that a worker serves as requests."""

    def start(self, intake: Intake) -> None:
        """Subscribe its filters on ``intake.client``, submitting what it takes."""
        ...

    def stop(self) -> None:
        """Unsubscribe (the worker then finishes what was submitted)."""
        ...

    def device(self, msg: Message) -> str:
        """Who hears of a failure with ``msg``; a ``SplitMQError`` when it names nobody."""
        ...

    def request(self, msg: Message, t_recv: float) -> Request:
        """The request ``msg`` stands for (a worker thread); ``SplitMQError`` on failure."""
        ...

    def finished(self) -> None:
        """The worker is done with a message that was submitted."""
        ...
