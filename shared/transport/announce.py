"""Telling workers and the planner that the pool has a new model version.

The pool is files; the roles that serve and plan may run elsewhere. After a
version is added (or calibrated), ``announce`` publishes it, retained, on
``model/<name>``: workers read that model's manifests again, and the planner
moves the model's devices to the new version. A broker that cannot be
reached is a ``BrokerError``: the version is in the pool all the same, and
``splitmq pool announce`` can say it later.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from splitmq.shared.connection import Connection
from splitmq.shared.protocol.announce import ModelAnnouncement
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.transport.mqtt import MqttClient


def announce(
    connection: Connection,
    topics: Topics,
    name: str,
    version: int,
    sha256: str,
    timeout: float = 5.0,
) -> ModelAnnouncement:
    """Publish ``name`` v``version`` as the newest, retained; wait for the broker's ack.

    A connection without a client id gets a fresh ``announce-...`` one.
    """
    news = ModelAnnouncement(name=name, version=version, sha256=sha256, ts=time.time())
    if connection.client_id is None:
        connection = dataclasses.replace(connection, client_id=f"announce-{uuid.uuid4().hex[:8]}")
    with MqttClient(connection).connect(timeout) as client:
        client.publish(
            topics.model(name),
            news.to_json(),
            qos=1,
            retain=True,
            json=True,
            wait=timeout,
        )
    return news
