"""``splitmq secure``: users, passwords, the ACL and TLS files for a secure broker.

A secure directory (0700, whatever the umask) holds everything mosquitto and the
roles need::

    ca.crt  ca.key            the private CA (clients pin ca.crt; keep ca.key offline)
    server.crt  server.key    the broker's TLS certificate for the names given
    dynamic-security.json     users (hashed passwords) and their ACLs, written from the
                              topic contract for mosquitto's dynamic security plugin
    secure.json               topic prefix and each user's role
    clients/<user>.env        SPLITMQ_* settings of one user (0600), for ``.env``

Passwords are random, stored in clear only in the user's own ``clients`` file
and hashed for mosquitto. A device's user name is its id, and the plugin binds
it to that client id too; the service roles are one user each (``edge``,
``cloud``, ``planner``, ``monitor``, ``operator``, ``admin``). The plugin reads
its file only when mosquitto starts, so ``add-device`` also adds the device to a
running broker through the plugin's control topic, as ``admin``.
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from splitmq.broker import dynsec, pki
from splitmq.shared.errors import BrokerError, UserError
from splitmq.shared.protocol.access import CONTROL, SERVICE_ROLES, Role
from splitmq.shared.protocol.ids import ID_RULE, is_id
from splitmq.shared.protocol.topics import DEFAULT_PREFIX, Topics
from splitmq.shared.settings import Settings
from splitmq.shared.transport.messages import Message
from splitmq.shared.transport.mqtt import MqttClient

TLS_PORT = 8883
DYNSEC = "dynamic-security.json"
#: What the broker reads: staged into its data directory, which its own user owns.
BROKER_FILES = (DYNSEC, "ca.crt", "server.crt", "server.key")
CONTROL_TIMEOUT_S = 5.0


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) and set it 0700: a umask of 000 must not
    leave keys in a directory anyone can list or swap files in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:  # a read-only or missing parent, /proc, a file in the way
        raise UserError(f"cannot make the directory {path}: {exc.strerror or exc}") from None


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

    @property
    def broker(self) -> str:
        """The URL written into the clients' settings files."""
        return str(self._registry()["broker"])

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
        private_dir(root)
        private_dir(root / "clients")
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

    def add_device(self, device: str) -> str:
        """A user for ``device`` (its id), allowed only the device's own topics; returns
        its password, for :meth:`tell_broker`."""
        return self._add(self._named(device, "device"), "device")

    def add_site(self, site: str) -> str:
        """A user for the bridge of ``site`` (its name): on this, the cloud broker, it may
        only carry what crosses to and from the site's own tree
        (``shared.protocol.sites``); returns its password, for :meth:`tell_broker`."""
        return self._add(self._named(site, "site"), "site")

    def _named(self, name: str, role: Role) -> str:
        if not is_id(name):
            raise UserError(f"invalid {role} id {name!r}: use {ID_RULE}")
        if name in SERVICE_ROLES:
            raise UserError(f"{name!r} is a service role's user; name the {role} otherwise")
        return name

    def _add(self, user: str, role: Role) -> str:
        registry = self._registry()
        if user in registry["users"]:
            raise UserError(f"user {user!r} exists already in {self.root}")
        password = secrets.token_urlsafe(24)
        registry["users"][user] = role
        self._save(registry, {user: dynsec.hash_password(password)})
        env = {
            "SPLITMQ_BROKER": registry["broker"],
            "SPLITMQ_USERNAME": user,
            "SPLITMQ_PASSWORD": password,
            "SPLITMQ_CA_FILE": str(self.ca.resolve()),
            "SPLITMQ_TOPIC_PREFIX": registry["prefix"],
        }
        path = self.client_env(user)
        pki.write_secret(path, "".join(f"{k}={v}\n" for k, v in env.items()).encode())
        return password

    def _save(self, registry: dict, new_passwords: dict[str, dynsec.Doc]) -> None:
        """Registry and the plugin's config (existing hashes kept), rewritten together."""
        path = self.root / DYNSEC
        old = json.loads(path.read_text())["clients"] if path.exists() else []
        passwords = {c["username"]: {k: c[k] for k in dynsec.PASSWORD_FIELDS} for c in old}
        passwords.update(new_passwords)
        doc = dynsec.config(Topics(registry["prefix"]), registry["users"], passwords)
        pki.write_secret(path, _json(doc))
        pki.write_secret(self.root / "secure.json", _json(registry))

    def missing(self, name: str) -> str:
        """Why the broker cannot start from this directory: ``name`` is not there."""
        if name == DYNSEC and (self.root / "passwd").exists():
            return (
                f"{self.root} was made by an older splitmq (passwd and acl, no {DYNSEC}): "
                f"run `splitmq secure upgrade --dir {self.root}` once"
            )
        return f"{self.root / name} is missing: {self.root} is not a whole secure directory"

    def upgrade(self) -> list[Role]:
        """Turn an older directory (``passwd`` with mosquitto's ``$7$`` hashes, ``acl``)
        into this one: the same users and passwords in the plugin's file, plus the users
        of roles added since (returned, e.g. ``admin``). A directory with the plugin's
        file gets its ACLs written again from this release's topic contract (a grant
        added since, such as a device's own results), its users and passwords kept."""
        passwd = self.root / "passwd"
        if (self.root / DYNSEC).exists() and not passwd.exists():
            self._save(self._registry(), {})
            return []
        if not passwd.exists():
            raise UserError(f"{self.root} is no secure directory: it has no {DYNSEC}, no passwd")
        passwords = {}
        for line in passwd.read_text().splitlines():
            user, _, digest = line.partition(":")
            parts = digest.split("$")  # "", "7", iterations, salt, hash
            if len(parts) != 5 or parts[1] != "7":
                raise UserError(f"{passwd}: {user!r} has no $7$ hash: add the user again")
            passwords[user] = {"password": parts[4], "salt": parts[3], "iterations": int(parts[2])}
        registry = self._registry()
        self._save(registry, passwords)
        added = [role for role in SERVICE_ROLES if role not in registry["users"]]
        for role in added:
            self._add(role, role)
        passwd.unlink()
        (self.root / "acl").unlink(missing_ok=True)
        return added

    def tell_broker(self, user: str, password: str, broker: str | None = None) -> None:
        """Add ``user`` (a device or a site) to the broker running at ``broker`` (default:
        the URL in the clients' files) now, through the plugin's control topic as ``admin``.

        BrokerError when the broker cannot be reached or the plugin refuses."""
        kind = self.users[user]
        commands = dynsec.add_user_commands(Topics(self.prefix), user, kind, password)
        answered: queue.Queue[Message] = queue.Queue()
        login = self.settings("admin", broker or self.broker)
        client = MqttClient(login.connection(f"admin-{uuid.uuid4().hex[:8]}"))
        try:
            client.connect(timeout=CONTROL_TIMEOUT_S)
            client.subscribe(f"{CONTROL}/response", answered.put, qos=1)
            client.publish_json(CONTROL, {"commands": commands}, qos=1, wait=CONTROL_TIMEOUT_S)
            reply = answered.get(timeout=CONTROL_TIMEOUT_S)
        except queue.Empty:
            raise BrokerError(
                f"the broker did not answer on {CONTROL}/response within "
                f"{CONTROL_TIMEOUT_S:g} s: is its dynamic security plugin loaded?"
            ) from None
        finally:
            client.close()
        failed = [r for r in reply.json().get("responses", []) if r.get("error")]
        if failed:
            raise BrokerError(f"the broker refused {failed[0]['command']}: {failed[0]['error']}")

    def settings(self, user: str, broker: str, **overrides: object) -> Settings:
        """The settings of ``user`` against ``broker`` (a URL): the login in its clients
        file, which no SPLITMQ_* variable of the shell overrides, with the CA on top."""
        path = self.client_env(user)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise UserError(f"{path} is missing: {self.root} has no user {user!r}") from None
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        login = {
            "username": env["SPLITMQ_USERNAME"],
            "password": env["SPLITMQ_PASSWORD"],
            "topic_prefix": env["SPLITMQ_TOPIC_PREFIX"],
        }
        return Settings(
            _env_file=None,
            broker=broker,
            ca_file=self.ca,
            **{**login, **overrides},  # type: ignore[arg-type]
        )

    def mosquitto_lines(self, staged: Path, tls_port: int, tls_host: str | None) -> str:
        """The lines ``splitmq broker --secure`` adds: the plugin for all listeners (it
        authenticates and checks every publish, delivery and subscription), then TLS.
        ``staged``: the broker's own copies of :data:`BROKER_FILES`."""
        listener = f"listener {tls_port} {tls_host}" if tls_host else f"listener {tls_port}"
        return "\n".join(
            [
                "# --- added by splitmq broker --secure ---",
                "per_listener_settings false",
                "allow_anonymous false",
                f"plugin {dynsec.find_plugin()}",
                f"plugin_opt_config_file {staged / DYNSEC}",
                listener,
                f"cafile {staged / 'ca.crt'}",
                f"certfile {staged / 'server.crt'}",
                f"keyfile {staged / 'server.key'}",
                "tls_version tlsv1.2",
                "",
            ]
        )


def _json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()
