"""A site broker's bridge to the cloud broker: ``splitmq broker --site NAME --bridge URL``.

Mosquitto runs the bridge itself; this writes its config from the topic contract
(``shared.protocol.sites.crossings``: only those topics cross, each one way, the
site's tree mapped to ``<prefix>/site/<site>`` on the cloud broker). Choices, each
for a measured or documented reason (docs/operations.md, sites):

* MQTT v5, so correlation data, response topics and message expiry cross intact;
  QoS 1 both ways; TLS, pinned to the cloud's CA, with the site's user and password
  (``splitmq secure add-site``), its client id bound to that user;
* a durable session on both ends (``cleansession false``): while the WAN is down
  the site broker queues what goes up and the cloud broker what comes down, each
  bounded by ``max_queued_messages``/``max_queued_bytes`` per client (the bridge is
  one client); what they drop counts in ``$SYS/broker/publish/messages/dropped``,
  which the site's planner logs and reports (``splitmq_broker_dropped_messages_total``);
* its state, retained ``1``/``0`` on ``$SYS/broker/connection/<site>/state`` of the
  site broker, which the site's planner reads to stop planning the cloud tier the
  moment the WAN goes, and to plan it again when it is back;
* a short keepalive and restart delay, so a silent WAN is noticed in seconds and a
  returning one used within a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitmq.shared.connection import BrokerUrl
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.ids import ID_RULE, is_id
from splitmq.shared.protocol.sites import Crossing, bridge_state, crossings
from splitmq.shared.protocol.topics import Topics

KEEPALIVE_S = 5
RESTART_S = (1, 5)  # mosquitto's backoff: from 1 s, at most 5 s between attempts
#: What the site's credentials file (``clients/<site>.env``) must hold.
LOGIN_KEYS = ("SPLITMQ_USERNAME", "SPLITMQ_PASSWORD", "SPLITMQ_CA_FILE")


@dataclass(frozen=True)
class Bridge:
    """One site's bridge: where the cloud broker is and how to log in."""

    site: str
    url: BrokerUrl
    username: str
    password: str
    ca_file: Path
    prefix: str

    @classmethod
    def load(cls, site: str, login: Path, url: str | None = None) -> Bridge:
        """The bridge of ``site`` from its credentials file; ``url`` (``mqtts://...``)
        replaces the cloud broker's address the file names."""
        if not is_id(site):
            raise UserError(f"invalid --site {site!r}: use {ID_RULE}")
        try:
            lines = login.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(
                f"cannot read the bridge login {login}: {getattr(exc, 'strerror', None) or exc}; "
                "it is the "
                "clients/<site>.env that `splitmq secure add-site` wrote on the cloud"
            ) from None
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        missing = [k for k in LOGIN_KEYS if not env.get(k)]
        if missing:
            raise UserError(f"{login} has no {', '.join(missing)}: not a site's login file")
        if env["SPLITMQ_USERNAME"] != site:
            raise UserError(
                f"{login} is the login of {env['SPLITMQ_USERNAME']!r}, not of site {site!r}"
            )
        text = url or env.get("SPLITMQ_BROKER", "")
        try:
            parsed = BrokerUrl.parse(text)
        except ValueError as exc:
            raise UserError(f"--bridge {text!r}: {exc}") from None
        if not parsed.tls:
            raise UserError(f"--bridge {text!r}: a bridge crosses the WAN: use mqtts://")
        prefix = env.get("SPLITMQ_TOPIC_PREFIX") or Topics().prefix
        ca = _ca_file(Path(env["SPLITMQ_CA_FILE"]), login)
        return cls(site, parsed, env["SPLITMQ_USERNAME"], env["SPLITMQ_PASSWORD"], ca, prefix)

    def crossings(self) -> list[Crossing]:
        return crossings(Topics(self.prefix), self.site)

    def mosquitto_lines(self, ca_file: Path) -> str:
        """The config lines of this bridge; ``ca_file``: the broker's own copy of the CA."""
        lines = [
            f"# --- bridge of site {self.site}: added by splitmq broker --site ---",
            f"connection {self.site}",
            f"address {self.url.host}:{self.url.port}",
            "bridge_protocol_version mqttv50",
            f"remote_clientid {self.site}",
            f"remote_username {self.username}",
            f"remote_password {self.password}",
            f"local_clientid bridge-{self.site}",
            f"bridge_cafile {ca_file}",
            "bridge_tls_version tlsv1.2",
            "cleansession false",
            "try_private true",
            "notifications true",
            "notifications_local_only true",
            f"notification_topic {bridge_state(self.site)}",
            f"keepalive_interval {KEEPALIVE_S}",
            f"restart_timeout {RESTART_S[0]} {RESTART_S[1]}",
            "start_type automatic",
        ]
        for c in self.crossings():
            lines.append(_topic_line(c))
        return "\n".join(lines) + "\n"


def _ca_file(named: Path, login: Path) -> Path:
    """The cloud's CA: where the login names it (a path on the cloud host, where
    ``add-site`` wrote it), else beside the login file, where a site keeps the two."""
    for ca in (named, login.parent / named.name):
        if ca.is_file():
            return ca
    raise UserError(
        f"the cloud's CA is neither at {named} (as {login} says) nor beside it: copy the "
        f"cloud's {named.name} next to {login.name}"
    )


def _topic_line(c: Crossing) -> str:
    """``topic PATTERN DIRECTION 1 LOCAL_PREFIX REMOTE_PREFIX`` for one crossing: the
    common tail is the pattern, what precedes it on each side its prefix."""
    tail = c.local.split("/")
    if c.local == c.remote:
        return f"topic {c.local} {c.direction} 1"
    common = 0
    remote = c.remote.split("/")
    while common < min(len(tail), len(remote)) and tail[-1 - common] == remote[-1 - common]:
        common += 1
    common = min(common, len(tail) - 1)  # mosquitto wants a non-empty prefix
    pattern = "/".join(tail[-common:])
    local = "/".join(tail[:-common]) + "/"
    far = "/".join(remote[: len(remote) - common]) + "/"
    return f"topic {pattern} {c.direction} 1 {local} {far}"
