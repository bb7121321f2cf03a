"""`splitmq health URL`: one check a healthcheck (compose, systemd, a shell) runs.

It is in the image with every role, so compose needs no curl. Docker reads a
healthcheck's status: 0 healthy, 1 unhealthy, 2 reserved; so here an unhealthy
answer exits 1 (and only a malformed URL exits 2, as every usage error does).
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from typing import Annotated
from urllib.parse import urlsplit

import typer

from splitmq.cli.output import err, out
from splitmq.cli.root import app, settings

SCHEMES = ("http", "https", "mqtt", "mqtts")


@app.command()
def health(
    url: Annotated[
        str,
        typer.Argument(
            help="A role's http://HOST:PORT/healthz (healthy: 200, i.e. connected to its "
            "broker), or a broker's mqtt://HOST:PORT (healthy: it answers an MQTT CONNECT, "
            "even one it refuses to log in)."
        ),
    ],
    timeout: Annotated[str, typer.Option(help="How long to wait for the answer.")] = "3s",
) -> None:
    """Check a role or a broker: exit 0 when healthy, 1 when not (for healthchecks)."""
    from splitmq.shared.units import parse_ms

    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise typer.BadParameter(f"use {', '.join(s + '://' for s in SCHEMES)}; got {url!r}")
    seconds = parse_ms(timeout, "--timeout") / 1000
    healthy, said = (_http if scheme.startswith("http") else _mqtt)(url, seconds)
    if healthy:
        out.print(said, highlight=False, soft_wrap=True, markup=False)
        return
    err.print(f"unhealthy: {said}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(1)


def _http(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200, answer.read(1024).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:  # 503: up, but not connected to its broker
        body = exc.read(1024).decode(errors="replace").strip()
        return False, f"{url} answered {exc.code} {exc.reason} {body}".strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} not reachable: {reason}"


def _mqtt(url: str, timeout: float) -> tuple[bool, str]:
    """A CONNECT with this environment's login (SPLITMQ_USERNAME, ...); any CONNACK means
    the broker runs, a refused login included."""
    from splitmq.shared.errors import BrokerError, LoginRefused
    from splitmq.shared.transport.mqtt import MqttClient

    cfg = settings(broker=url)
    client = MqttClient(cfg.connection(f"health-{uuid.uuid4().hex[:8]}"))
    try:
        client.connect(timeout)
        return True, f"broker {cfg.where} answers"
    except LoginRefused as exc:
        return True, f"broker {cfg.where} answers (and refused the login: {exc})"
    except BrokerError as exc:
        return False, str(exc)
    finally:
        client.close()
