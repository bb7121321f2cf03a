"""Who owns the broker's files: root starts it, mosquitto drops to its own user.

Started as root, mosquitto switches to the ``mosquitto`` user right after reading its
config and opens everything else (persistence, the plugin's file, TLS keys) as that
user, so the launcher hands it its data directory. That directory is then writable by
a less trusted user, and root comes back at every start: so root never follows a link
there, never writes through one, and hands over only the names that are the broker's
own (its database and the staged secure files), each opened without following links
and refused when it is not a plain, singly linked file or directory.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
from pathlib import Path

from splitmq.shared.errors import BrokerError

log = logging.getLogger(__name__)

#: What may be in a data directory: the broker's own names. A directory holding
#: anything else is someone else's, and is not handed to mosquitto.
#: A site broker's copy of the cloud's CA, for its bridge (``broker.bridge``).
BRIDGE_CA = "bridge-ca.crt"
OWN_NAMES = (
    "mosquitto.conf",
    "mosquitto.log",
    "mosquitto.db",
    "mosquitto.db.new",
    "secure",
    BRIDGE_CA,
)
_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def broker_user() -> pwd.struct_passwd:
    """Who mosquitto runs as: started as root, it drops to ``mosquitto`` (Debian's package
    makes that user); otherwise it stays whoever started it."""
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam("mosquitto")
        except KeyError:
            log.warning("no `mosquitto` user on this host: mosquitto will run as root")
    return pwd.getpwuid(os.geteuid())


def drops_root(owner: pwd.struct_passwd) -> bool:
    return os.geteuid() == 0 and owner.pw_uid != 0


def check_data_dir(path: Path) -> None:
    """Refuse a data directory that holds what is not the broker's (``--data-dir /srv``
    would otherwise hand /srv to mosquitto) or that is a link."""
    if path.is_symlink():
        raise BrokerError(f"the data directory {path} is a symbolic link: give the real one")
    strangers = sorted(p.name for p in path.iterdir() if p.name not in OWN_NAMES)
    if strangers:
        raise BrokerError(
            f"the data directory {path} holds {', '.join(strangers[:3])}, which are not the "
            "broker's: give mosquitto a directory of its own"
        )


def hand_over(path: Path, owner: pwd.struct_passwd) -> None:
    """Make the data directory ``path`` and its database ``owner``'s (0700, 0600), after
    checking ``owner`` can reach it at all (the staged secure files: ``fresh_dir``)."""
    if not drops_root(owner):
        return  # it runs as us: nothing to hand over
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for parent in path.resolve().parents:
        st = parent.stat()
        passes = (
            st.st_uid == owner.pw_uid
            or (st.st_gid in groups and st.st_mode & 0o010)
            or st.st_mode & 0o001
        )
        if not passes:
            raise BrokerError(
                f"mosquitto runs as {owner.pw_name} and cannot reach {path}: {parent} is "
                f"mode {st.st_mode & 0o777:o}; choose a data directory it can reach, "
                "such as /var/lib/splitmq/broker"
            )
    give(path, owner)
    if os.path.lexists(path / "mosquitto.db"):  # a root-run mosquitto's, before
        give(path / "mosquitto.db", owner)


def give(path: Path, owner: pwd.struct_passwd) -> None:
    """chown/chmod one file or directory through a descriptor opened without following a
    link: a link planted there is refused, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise BrokerError(f"{path}: not handed to {owner.pw_name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        plain = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        if not (plain or stat.S_ISDIR(st.st_mode)):
            raise BrokerError(
                f"{path}: not a plain file or directory of the broker (a link?): remove it"
            )
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.fchmod(fd, 0o700 if stat.S_ISDIR(st.st_mode) else 0o600)
    finally:
        os.close(fd)


def fresh_dir(path: Path) -> Path:
    """``path`` as a new, empty, root-made 0700 directory (what was there, even a link
    to elsewhere, is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    return path


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` (whatever was there, a link included, is
    replaced, never written through)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def copy_for(owner: pwd.struct_passwd, source: Path, target: Path) -> Path:
    """A new copy of ``source`` at ``target`` that ``owner`` (the broker's user) can read."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise BrokerError(f"cannot read {source}: {exc.strerror or exc}") from None
    write_new(target, data)
    if drops_root(owner):
        give(target, owner)
    return target


def append_log(path: Path) -> int:
    """A descriptor appending to the log at ``path``: a link or a hard-linked file there
    is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise BrokerError(f"{path}: not a plain file (a link?): remove it")
    return fd
