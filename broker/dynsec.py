"""The topic contract as mosquitto's dynamic security plugin takes it.

Mosquitto 2.0's ``acl_file`` checks reads only when it delivers a message: any
user may *subscribe* to anything. A device could then join a worker group's
shared subscription (``$share/edge/...``); mosquitto deals it other devices'
requests, which it may not read, so they are dropped and never answered. The
dynamic security plugin that Debian's mosquitto ships checks the SUBSCRIBE
itself, and can bind a user to one client id. So a secure broker runs it, with
a config written here from ``shared.protocol.access.grants``:

* a read grant allows exactly one subscription filter (``Grant.subscription``)
  and the delivery of what matches the topic; a write grant, publishing there;
  nothing else is allowed (``defaultACLAccess`` all false but unsubscribing);
* a device is bound to its id as client id: nobody can connect in its place
  with its credentials, and its credentials cannot connect as anyone else.

Passwords are hashed as the plugin does: PBKDF2-SHA512, 64 bytes, a 12-byte
salt, 101 rounds (mosquitto's ``PW_DEFAULT_ITERATIONS``).
"""

from __future__ import annotations

import base64
import hashlib
import os
from glob import glob
from pathlib import Path
from typing import Any

from splitmq.shared.errors import BrokerError
from splitmq.shared.protocol.access import NAMED_ROLES, Grant, Role, grants
from splitmq.shared.protocol.topics import Topics

ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_FIELDS = ("password", "salt", "iterations")
#: Where mosquitto packages put the plugin (Debian multiarch, Alpine/eclipse image, source).
PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)

Doc = dict[str, Any]


def find_plugin() -> Path:
    """The plugin's shared object, or a BrokerError saying how to get it."""
    for pattern in PLUGIN_GLOBS:
        for found in sorted(glob(pattern)):
            return Path(found)
    raise BrokerError(
        "mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is not "
        "installed: `splitmq broker --secure` needs it; Debian's mosquitto package ships it"
    )


def hash_password(password: str, salt: bytes | None = None) -> Doc:
    """The plugin's password fields for ``password``: ``password``, ``salt``, ``iterations``."""
    salt = salt or os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    b64 = base64.b64encode
    return {"password": b64(digest).decode(), "salt": b64(salt).decode(), "iterations": ITERATIONS}


def acls(granted: list[Grant]) -> list[Doc]:
    """One plugin ACL entry per right a grant gives; the plugin denies all the rest."""
    out: list[Doc] = []
    for g in granted:
        if g.access == "write":
            out.append(_acl("publishClientSend", g.topic))
        else:
            out.append(_acl("publishClientReceive", g.topic))
            out.append(_acl("subscribePattern", g.subscription))
    return out


def _acl(kind: str, topic: str) -> Doc:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def role_name(user: str, role: Role) -> str:
    """A device's (or site's) ACL names its id, so each has its own plugin role."""
    return f"{role}-{user}" if role in NAMED_ROLES else role


def client(user: str, role: Role, password: Doc) -> Doc:
    """The plugin's record of ``user``: a device (or a site's bridge) may only connect
    as its id."""
    bound = {"clientid": user} if role in NAMED_ROLES else {}
    return {"username": user, **bound, **password, "roles": [{"rolename": role_name(user, role)}]}


def role(topics: Topics, user: str, role: Role) -> Doc:
    return {"rolename": role_name(user, role), "acls": acls(grants(topics, role, user))}


def config(topics: Topics, users: dict[str, Role], passwords: dict[str, Doc]) -> Doc:
    """The plugin's whole config: every user, one role per device and per service role."""
    roles = {role_name(u, r): role(topics, u, r) for u, r in sorted(users.items())}
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [client(u, r, passwords[u]) for u, r in sorted(users.items())],
        "groups": [],
        "roles": list(roles.values()),
    }


def add_user_commands(topics: Topics, user: str, kind: Role, password: str) -> list[Doc]:
    """The control commands that add a device or site to a running broker (the plugin
    hashes)."""
    return [
        {"command": "createRole", **role(topics, user, kind)},
        {"command": "createClient", **client(user, kind, {"password": password})},
    ]
