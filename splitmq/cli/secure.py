"""``splitmq secure``: set up users, the ACL and TLS for a broker others can reach."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from splitmq.cli.output import out, print_json
from splitmq.cli.root import JsonOption, PrefixOption, app

secure_app = typer.Typer(
    help="Users, per-device ACLs and TLS certificates for `splitmq broker --secure`.",
    no_args_is_help=True,
)
app.add_typer(secure_app, name="secure")

DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="SPLITMQ_SECURE_DIR",
        help="The directory `secure init` made \\[env: SPLITMQ_SECURE_DIR].",
    ),
]


def _report(sd, users: list[str], as_json: bool, live: dict | None = None) -> None:
    from splitmq.shared.protocol.access import PURPOSE

    roles = sd.users
    rows = [{"user": u, "role": roles[u], "settings": str(sd.client_env(u))} for u in users]
    if as_json:
        print_json({"dir": str(sd.root), "ca": str(sd.ca), "users": rows, "live": live})
        return
    table = Table("user", "role", "may", "settings file (keep secret)")
    for row in rows:
        table.add_row(row["user"], row["role"], PURPOSE[roles[row["user"]]], row["settings"])
    out.print(table)
    if live is not None:
        out.print(_live_line(live, ", ".join(users)))
        return
    out.print(
        f"Run the broker with `splitmq broker --secure {sd.root} --host ADDRESS`; give each "
        "process its settings file as its .env (or export its lines). Clients pin "
        f"{sd.ca}; keep {sd.root / 'ca.key'} off the broker host once done."
    )


@secure_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the CA, keys, users, ACL.")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Another name or IP clients reach the broker at (repeat)."),
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device id to add now (repeat).")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="The URL clients use, written into their settings files."),
    ] = None,
    topic_prefix: PrefixOption = None,
    as_json: JsonOption = False,
) -> None:
    """A CA, the broker's certificate, users for every role and an ACL from the topic contract."""
    from splitmq.broker.secure import SecureDir
    from splitmq.shared.connection import BrokerUrl
    from splitmq.shared.protocol.topics import DEFAULT_PREFIX

    if broker is not None:
        try:
            BrokerUrl.parse(broker)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--broker") from exc
    sd = SecureDir.init(
        directory,
        host or [],
        prefix=topic_prefix or DEFAULT_PREFIX,
        devices=device or [],
        broker=broker,
    )
    _report(sd, list(sd.users), as_json)


BrokerToTell = Annotated[
    str | None,
    typer.Option(
        help="The running broker to add it to now, as the admin user; by default the "
        "URL in the clients' settings files."
    ),
]


@secure_app.command("add-device")
def add_device(
    device_id: Annotated[str, typer.Argument(help="The device's id: its user name too.")],
    directory: DirOption = Path("secure"),
    broker: BrokerToTell = None,
    as_json: JsonOption = False,
) -> None:
    """A user for one more device, allowed only its own topics; a running broker gets it
    at once, one that is down at its next start."""
    _add_named(directory, device_id, "device", broker, as_json)


@secure_app.command("add-site")
def add_site(
    site: Annotated[str, typer.Argument(help="The site's name: its bridge's user name too.")],
    directory: DirOption = Path("secure"),
    broker: BrokerToTell = None,
    as_json: JsonOption = False,
) -> None:
    """On the cloud broker's directory: a user for one site's bridge, allowed only what
    crosses to and from the site's own tree (docs/operations.md, sites). Give its
    clients/<site>.env to `splitmq broker --site SITE --bridge-login FILE` at the site."""
    _add_named(directory, site, "site", broker, as_json)


def _add_named(directory: Path, name: str, kind: str, broker: str | None, as_json: bool) -> None:
    from splitmq.broker.secure import SecureDir
    from splitmq.shared.connection import BrokerUrl
    from splitmq.shared.errors import BrokerError

    if broker is not None:
        try:
            BrokerUrl.parse(broker)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--broker") from exc
    sd = SecureDir(directory)
    password = sd.add_site(name) if kind == "site" else sd.add_device(name)
    url = broker or sd.broker
    try:
        sd.tell_broker(name, password, url)
        live = {"broker": url, "added": True, "why": None}
    except BrokerError as exc:
        live = {"broker": url, "added": False, "why": str(exc)}
    _report(sd, [name], as_json, live)


def _live_line(live: dict, who: str) -> str:
    if live["added"]:
        return f"The broker at {live['broker']} lets {who} in now."
    return (
        f"Not added to a running broker at {live['broker']} ({live['why']}); a broker "
        f"started from this directory lets {who} in from its start."
    )


@secure_app.command("upgrade")
def upgrade(directory: DirOption = Path("secure")) -> None:
    """Bring a directory an older splitmq made up to this one: the same users and
    passwords (from passwd, acl: for mosquitto's dynamic security plugin), any new role's
    user, and every role's ACL as this release's topic contract grants it."""
    from splitmq.broker.secure import SecureDir

    added = SecureDir(directory).upgrade()
    more = f"; new users: {', '.join(added)}" if added else ""
    out.print(f"{directory}: upgraded{more}. Restart the broker with it.")
