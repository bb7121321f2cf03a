"""Opening a paho client for a :class:`Connection`: login, TLS, the will, CONNECT options.

Split from ``mqtt``: this is what is fixed before the first CONNECT, the
client there keeps what changes while it runs (subscriptions, acks, state).
"""

from __future__ import annotations

import logging

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from splitmq.shared.connection import Connection
from splitmq.shared.errors import BrokerError
from splitmq.shared.transport.lean import LeanPaho
from splitmq.shared.transport.messages import Will, json_payload


class DropLastLoopNoise(logging.Filter):
    """paho 2.2 logs an ERROR from its last loop pass after every clean disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected.")


paho_log = logging.getLogger("splitmq.shared.transport.mqtt.paho")
paho_log.addFilter(DropLastLoopNoise())


def new_paho(
    connection: Connection,
    client_id: str,
    *,
    manual_ack: bool,
    will: Will | None,
    reconnect_delay: tuple[float, float],
) -> paho.Client:
    """A paho MQTT v5 client (``LeanPaho``), logged in, its will set; the caller wires the
    callbacks."""
    client = LeanPaho(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    _login(client, connection)
    client.enable_logger(paho_log)
    client.suppress_exceptions = True  # second line of defence behind the client's @_logged
    client.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]  # floats work
    if will is not None:
        payload, props = json_payload(will.topic, will.payload, PacketTypes.WILLMESSAGE)
        client.will_set(will.topic, payload, will.qos, will.retain, properties=props)
    return client


def _login(client: paho.Client, connection: Connection) -> None:
    """Credentials from the URL; TLS with the connection's CA (and client certificate)."""
    url = connection.url
    if url.username is not None:
        client.username_pw_set(url.username, url.password)
    if not url.tls:
        return
    files = connection.ca_file, connection.cert_file, connection.key_file
    ca, cert, key = (str(path) if path else None for path in files)
    try:
        client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    except (OSError, ValueError) as exc:  # a missing or unreadable CA/cert/key file
        raise BrokerError(f"cannot set up TLS for {url}: {exc}") from exc


def connect_properties(
    receive_maximum: int | None, session_expiry_s: int | None
) -> Properties | None:
    """CONNECT's properties: a Receive Maximum and a durable session, when asked for."""
    if receive_maximum is None and session_expiry_s is None:
        return None
    props = Properties(PacketTypes.CONNECT)
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    if session_expiry_s is not None:
        props.SessionExpiryInterval = session_expiry_s
    return props
