"""``splitmq secure``: users, passwords, the ACL and TLS files for a secure broker.

A secure directory holds everything mosquitto and the roles need::

    ca.crt  ca.key            the private CA (clients pin ca.crt; keep ca.key offline)
    server.crt  server.key    the broker's TLS certificate for the names given
    passwd                    users, hashed in mosquitto's own $7$ (PBKDF2-SHA512) format
    acl                       written from the topic contract (shared.protocol.access)
    secure.json               topic prefix and each user's role, to rewrite the ACL
    clients/<user>.env        SPLITMQ_* settings of one user (0600), for ``.env``

Passwords are random, stored in clear only in the user's own ``clients`` file
and hashed for mosquitto. A device's user name is its id, so the ACL can pin
it to its own topics; the service roles are one user each (``edge``, ``cloud``,
``planner``, ``monitor``). Mosquitto rereads ``passwd`` and ``acl`` on SIGHUP,
so ``add-device`` needs no broker restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from splitmq.broker import pki
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.access import SERVICE_ROLES, Role, grants
from splitmq.shared.protocol.ids import ID_RULE, is_id
from splitmq.shared.protocol.topics import DEFAULT_PREFIX, Topics
from splitmq.shared.settings import Settings

#: mosquitto_passwd's own choices for ``$7$`` (PBKDF2-SHA512) hashes.
HASH_ITERATIONS = 101
SALT_BYTES = 12
TLS_PORT = 8883


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<salt>$<hash>`` as ``mosquitto_passwd`` writes it."""
    salt = salt or os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${HASH_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def render_acl(topics: Topics, users: dict[str, Role]) -> str:
    """One ``user`` block per user with exactly its role's grants; nothing else."""
    lines = [
        "# Written by `splitmq secure` from the topic contract; do not edit by hand:",
        "# `splitmq secure add-device` rewrites it. Anything not granted is denied.",
    ]
    for user, role in sorted(users.items()):
        lines += ["", f"# {role}", f"user {user}"]
        lines += [f"topic {g.access} {g.topic}" for g in grants(topics, role, user)]
    return "\n".join(lines) + "\n"


@dataclass
class SecureDir:
    """A directory made by ``splitmq secure init`` (see the module docstring)."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def client_env(self, user: str) -> Path:
        return self.root / "clients" / f"{user}.env"

    def _registry(self) -> dict:
        try:
            return json.loads((self.root / "secure.json").read_text())
        except FileNotFoundError:
            raise UserError(
                f"{self.root} is not a secure directory: run `splitmq secure init {self.root}`"
            ) from None

    @property
    def users(self) -> dict[str, Role]:
        return dict(self._registry()["users"])

    @property
    def prefix(self) -> str:
        return str(self._registry()["prefix"])

    @classmethod
    def init(
        cls,
        root: Path,
        hosts: list[str] | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        devices: list[str] | None = None,
        broker: str | None = None,
    ) -> SecureDir:
        """A new CA, server certificate, the service users and ``devices``."""
        sd = cls(root)
        if (root / "secure.json").exists():
            raise UserError(f"{root} already holds a secure setup; add devices with add-device")
        Topics(prefix)  # a bad prefix fails before any file is written
        names = ["localhost", "127.0.0.1", socket.gethostname(), *(hosts or [])]
        (root / "clients").mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca()
        pki.write(ca, sd.ca, root / "ca.key")
        pki.write(pki.server_cert(ca, names), root / "server.crt", root / "server.key")
        broker = broker or f"mqtts://{names[0]}:{TLS_PORT}"
        sd._save({"prefix": prefix, "broker": broker, "hosts": names, "users": {}}, {})
        for role in SERVICE_ROLES:
            sd._add(role, role)
        for device in devices or []:
            sd.add_device(device)
        return sd

    def add_device(self, device: str) -> Path:
        """A user for ``device`` (its id), allowed only the device's own topics."""
        if not is_id(device):
            raise UserError(f"invalid device id {device!r}: use {ID_RULE}")
        if device in SERVICE_ROLES:
            raise UserError(f"{device!r} is a service role's user; name the device otherwise")
        return self._add(device, "device")

    def _add(self, user: str, role: Role) -> Path:
        registry = self._registry()
        if user in registry["users"]:
            raise UserError(f"user {user!r} exists already in {self.root}")
        password = secrets.token_urlsafe(24)
        registry["users"][user] = role
        self._save(registry, {user: hash_password(password)})
        env = {
            "SPLITMQ_BROKER": registry["broker"],
            "SPLITMQ_USERNAME": user,
            "SPLITMQ_PASSWORD": password,
            "SPLITMQ_CA_FILE": str(self.ca.resolve()),
            "SPLITMQ_TOPIC_PREFIX": registry["prefix"],
        }
        path = self.client_env(user)
        pki.write_secret(path, "".join(f"{k}={v}\n" for k, v in env.items()).encode())
        return path

    def _save(self, registry: dict, new_hashes: dict[str, str]) -> None:
        """Registry, password file (existing hashes kept) and ACL, all rewritten together."""
        passwd = self.root / "passwd"
        lines = passwd.read_text().splitlines() if passwd.exists() else []
        lines += [f"{user}:{digest}" for user, digest in new_hashes.items()]
        pki.write_secret(passwd, ("\n".join(lines) + "\n").encode() if lines else b"")
        acl = render_acl(Topics(registry["prefix"]), registry["users"])
        pki.write_secret(self.root / "acl", acl.encode())
        (self.root / "secure.json").write_text(json.dumps(registry, indent=2) + "\n")

    def settings(self, user: str, broker: str, **overrides: object) -> Settings:
        """The settings of ``user`` against ``broker`` (a URL): its clients file, read as
        the ``.env`` it is meant to be, with the CA and broker given here on top."""
        return Settings(
            _env_file=self.client_env(user),
            broker=broker,
            ca_file=self.ca,
            **overrides,  # type: ignore[arg-type]
        )

    def mosquitto_lines(self, tls_port: int, tls_host: str | None) -> str:
        """The lines ``splitmq broker --secure`` adds: auth for all listeners, then TLS."""
        r = self.root.resolve()
        listener = f"listener {tls_port} {tls_host}" if tls_host else f"listener {tls_port}"
        return "\n".join(
            [
                "# --- added by splitmq broker --secure ---",
                "per_listener_settings false",
                "allow_anonymous false",
                f"password_file {r / 'passwd'}",
                f"acl_file {r / 'acl'}",
                listener,
                f"cafile {r / 'ca.crt'}",
                f"certfile {r / 'server.crt'}",
                f"keyfile {r / 'server.key'}",
                "tls_version tlsv1.2",
                "",
            ]
        )
