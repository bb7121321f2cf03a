"""Where the broker is and how one client logs in: the value the MQTT client takes.

``Settings.connection`` builds a :class:`Connection`; the transport reads
nothing else of the settings, so a client needs no loaded settings
(``MqttClient.at`` in tests and benchmarks). The broker is a URL
(``mqtt://host:1883``, ``mqtts://user:pass@host:8883``) or a bare
``host:port``; printing a :class:`BrokerUrl` never shows its password.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from splitmq.shared.codecs import DEFAULT_MAX_BYTES

#: The port of each scheme when a URL names none (IANA's MQTT and MQTT over TLS).
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
#: Seconds between keepalive pings, unless a role needs the broker to notice sooner.
DEFAULT_KEEPALIVE_S = 30


@dataclass(frozen=True)
class BrokerUrl:
    """Where the broker is and how to log in: the parsed ``broker`` setting."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        """``mqtt[s]://[user[:pass]@]host[:port]`` or ``host:port``; ValueError says why not."""
        if "://" not in text:
            host, sep, port = text.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"broker must be mqtt://host:port, mqtts://host:port or host:port, got {text!r}"
                )
            return cls(host, _port(int(port), text))
        parts = urlsplit(text)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"broker URL scheme must be mqtt or mqtts, got {parts.scheme!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"broker URL takes no path or query: {cls._redact(text)!r}")
        try:
            given = parts.port
        except ValueError:
            raise ValueError(f"broker URL has a bad port: {cls._redact(text)!r}") from None
        if not parts.hostname:
            raise ValueError(f"broker URL names no host: {cls._redact(text)!r}")
        return cls(
            parts.hostname,
            _port(given or DEFAULT_PORTS[parts.scheme], text),
            parts.scheme == "mqtts",
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password is not None else None,
        )

    @staticmethod
    def _redact(text: str) -> str:
        head, at, tail = text.rpartition("@")
        return f"{head.split(':')[0]}:***@{tail}" if at and ":" in head.split("//")[-1] else text

    def __str__(self) -> str:
        """The address with its user but never its password (safe for logs)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"BrokerUrl({self})"


def _port(port: int, text: str) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"broker port must be 1-65535, got {port} in {BrokerUrl._redact(text)!r}")
    return port


@dataclass(frozen=True)
class Connection:
    """What one MQTT client needs: the broker and its login, TLS files, id, keepalive, limit.

    ``url`` carries the user name and password to log in with; TLS is on when
    the URL says ``mqtts``. ``client_id`` None gives each client built from this
    value an id of its own.
    """

    url: BrokerUrl
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None  # mutual TLS: the client's certificate and key
    key_file: Path | None = None
    keepalive: int = DEFAULT_KEEPALIVE_S
    max_payload_bytes: int = DEFAULT_MAX_BYTES  # the client refuses to publish more
