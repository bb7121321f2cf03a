"""Start and stop a real mosquitto for tests, the demo and ``splitmq broker``.

The project's ``mosquitto.conf`` (package data: a wheel finds it with
:mod:`importlib.resources`) is the single source of broker settings. The launcher
writes a copy with the listener, the data directory and the user filled in, runs
``mosquitto -c <copy>``, and waits until the port accepts TCP connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from splitmq.broker.bridge import Bridge
from splitmq.broker.ownership import (
    BRIDGE_CA,
    append_log,
    broker_user,
    check_data_dir,
    copy_for,
    drops_root,
    fresh_dir,
    give,
    hand_over,
    write_new,
)
from splitmq.broker.secure import BROKER_FILES, SecureDir
from splitmq.shared.errors import BrokerError
from splitmq.shared.settings import Settings

__all__ = [
    "DEFAULT_CONFIG",
    "INSTALL_HINT",
    "Broker",
    "find_mosquitto",
    "free_port",
    "render_config",
]

log = logging.getLogger(__name__)

#: The config shipped as package data of ``splitmq.broker`` (a plain ``Path`` unless the
#: package is imported from a zip). Only read, never handed to mosquitto as is.
DEFAULT_CONFIG: Traversable = resources.files("splitmq.broker").joinpath("mosquitto.conf")
INSTALL_HINT = (
    "install it with `apt-get install mosquitto mosquitto-clients` "
    "(`make demo` and `make test` install it for you)"
)
_FALLBACK_PATHS = (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto"))
_LISTENER = re.compile(r"^\s*listener\s+\S+.*$", re.MULTILINE)
_PERSISTENCE_LOCATION = re.compile(r"^\s*persistence_location\s+.*$", re.MULTILINE)
_USER = re.compile(r"^\s*user\s+.*$", re.MULTILINE)
_ANONYMOUS = re.compile(r"^\s*allow_anonymous\s+.*$", re.MULTILINE)
_PORT_ATTEMPTS = 3


def find_mosquitto() -> Path:
    """Locate the mosquitto binary on PATH or in sbin (not on a user's PATH on Debian)."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in _FALLBACK_PATHS:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"mosquitto not found on PATH or in /usr/sbin: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port (another process may take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(
    template: str, *, port: int, host: str | None, data_dir: Path, user: str | None = None
) -> str:
    """Return ``template`` with its listener, persistence location and user filled in.

    The template must have exactly one ``listener`` line, so a test never
    opens a second port (such as 1883) by accident.
    """
    listeners = _LISTENER.findall(template)
    if len(listeners) != 1:
        raise BrokerError(
            f"mosquitto config must have exactly one `listener` line, found {len(listeners)}"
        )
    listener = f"listener {port} {host}" if host else f"listener {port}"
    text = _LISTENER.sub(listener, template)
    text = _set_option(text, _PERSISTENCE_LOCATION, f"persistence_location {data_dir}/")
    # mosquitto switches to this user right after reading its config (only as root)
    return _set_option(text, _USER, f"user {user or broker_user().pw_name}")


def _set_option(text: str, pattern: re.Pattern[str], line: str) -> str:
    if pattern.search(text):
        return pattern.sub(line, text)
    return f"{text.rstrip()}\n{line}\n"


class Broker:
    """A mosquitto process on ``host:port``, as a context manager.

    ``port=None`` picks a free port. ``data_dir=None`` uses a temporary
    directory removed by :meth:`close`; a given ``data_dir`` is kept, so
    retained messages survive. :meth:`restart` keeps port and data dir.
    ``echo=True`` lets mosquitto log to our stderr instead of a log file.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        config: Path | None = None,
        data_dir: Path | None = None,
        binary: Path | None = None,
        start_timeout: float = 10.0,
        echo: bool = False,
        secure: Path | None = None,
        tls_port: int | None = None,
        tls_host: str | None = "127.0.0.1",
        bridge: Bridge | None = None,
    ) -> None:
        self.host = host
        # secure: a `splitmq secure init` directory: auth, ACLs, TLS on tls_port (None: a
        # free one) at tls_host (None: every interface); bridge: a site's, to the cloud
        self.secure = SecureDir(secure) if secure else None
        self._tls_port, self.tls_host, self.bridge = tls_port, tls_host, bridge
        self._requested_port = port
        self._port: int | None = port
        self._config: Path | Traversable = Path(config) if config else DEFAULT_CONFIG
        self._given_dir = Path(data_dir) if data_dir else None
        self._binary = binary
        self._start_timeout = start_timeout
        self._echo = echo
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- public API -------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("broker not started yet: no port chosen")
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, the form ``Settings.broker`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def tls_port(self) -> int:
        if self.secure is None or self._tls_port is None:
            raise BrokerError("no TLS listener: the broker is not secure or not started")
        return self._tls_port

    @property
    def tls_url(self) -> str:
        """``mqtts://host:port`` of the TLS listener, the form ``Settings.broker`` takes."""
        return f"mqtts://{self.tls_host or 'localhost'}:{self.tls_port}"

    @property
    def data_dir(self) -> Path:
        if self._dir is None:
            raise BrokerError("broker not started yet: no data directory")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this broker (``.env`` ignored, so tests are hermetic)."""
        return Settings(_env_file=None, broker=self.address, **overrides)

    def user_settings(self, user: str, **overrides: Any) -> Settings:
        """Settings of one user of the secure setup, over TLS."""
        if self.secure is None:
            raise BrokerError("user_settings needs a broker started with secure=DIR")
        return self.secure.settings(user, self.tls_url, **overrides)

    def start(self) -> Broker:
        """Start mosquitto and return once it accepts TCP connections."""
        if self.running:
            return self
        binary = self._binary or find_mosquitto()
        template = self._read_template()
        self._dir = self._prepare_dir()
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or free_port(self.host)
            try:
                self._check_port_free()
                self._launch(binary, template)
                self._wait_ready()
                break
            except BrokerError as exc:
                port_taken = "Address already in use" in str(exc)
                self._terminate()
                if not (port_taken and attempt < attempts):
                    self.close()  # nobody gets a handle to clean up after a failed start
                    raise
                log.info("port %d was taken meanwhile; trying another", self._port)
            except BaseException:  # Ctrl-C or SIGTERM while starting: leave no orphan
                self._terminate()
                self.close()
                raise
        log.info(
            "mosquitto (pid %s) listening on %s, data in %s", self.pid, self.address, self._dir
        )
        return self

    def wait(self) -> int:
        """Block until mosquitto exits (the foreground runner); return its status."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL); keep port and data dir for a restart."""
        self._terminate(timeout)

    def restart(self) -> Broker:
        """Stop and start again on the same port with the same data (and retained messages)."""
        port = self.port
        self.stop()
        self._requested_port = port
        return self.start()

    def close(self) -> None:
        """Stop mosquitto and remove the data dir if we created it."""
        self._terminate()
        if self._dir is not None and self._given_dir is None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of mosquitto's log, for error messages."""
        if self._echo:
            return "(mosquitto logs to stderr: see the output above)"
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, BrokerError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Broker({self.host}:{self._port}, {state})"

    # -- steps --------------------------------------------------------------

    def _read_template(self) -> str:
        try:
            return self._config.read_text()
        except OSError as exc:  # FileNotFoundError also from a zip's Traversable
            raise BrokerError(
                f"cannot read mosquitto config {self._config}: {exc.strerror or exc}; "
                "pass config= pointing at splitmq's mosquitto.conf"
            ) from exc

    def _prepare_dir(self) -> Path:
        if self._dir is not None:
            return self._dir
        if self._given_dir is None:
            return Path(tempfile.mkdtemp(prefix="splitmq-broker-"))
        self._given_dir.mkdir(parents=True, exist_ok=True)
        return self._given_dir

    def _launch(self, binary: Path, template: str) -> None:
        owner = broker_user()
        check_data_dir(self.data_dir)
        hand_over(self.data_dir, owner)
        conf = self.data_dir / "mosquitto.conf"
        text = render_config(
            template, port=self.port, host=self.host, data_dir=self.data_dir, user=owner.pw_name
        )
        if self.secure is not None:
            if self._tls_port is None:
                self._tls_port = free_port(self.tls_host or "0.0.0.0")
            staged = self._stage(self.secure, owner)
            text = _ANONYMOUS.sub("", text) + self.secure.mosquitto_lines(
                staged, self._tls_port, self.tls_host
            )
        if self.bridge is not None:
            ca = copy_for(owner, self.bridge.ca_file, self.data_dir / BRIDGE_CA)
            text += self.bridge.mosquitto_lines(ca)
        write_new(conf, text.encode())  # read before mosquitto drops root
        output: IO[bytes] | None = None
        if not self._echo:
            output = self._log_file = os.fdopen(append_log(self.log_path), "ab")
        try:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {binary}: {exc.strerror}; {INSTALL_HINT}") from exc

    def _stage(self, secure: SecureDir, owner: pwd.struct_passwd) -> Path:
        """The broker's own copies of what it reads from the secure directory (which stays
        its admin's, 0700): users and ACLs as of now, the CA and the server's key pair,
        in a directory made afresh at each start."""
        staged = fresh_dir(self.data_dir / "secure")
        for name in BROKER_FILES:
            if not (secure.root / name).exists():
                raise BrokerError(secure.missing(name))
            copy_for(owner, secure.root / name, staged / name)
        if drops_root(owner):
            give(staged, owner)
        return staged

    def _check_port_free(self) -> None:
        """Refuse a busy port up front: the readiness probe would reach the other server."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise BrokerError(
                    f"cannot start mosquitto on {self.address}: the port is busy ({exc.strerror})"
                ) from exc

    def _wait_ready(self) -> None:
        """Poll the port until it accepts a connection; fail early if mosquitto exits."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._accepts_connections():
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(timeout=0.02)  # doubles as the poll interval
                raise BrokerError(
                    f"mosquitto exited with status {code} while starting on {self.address}:\n"
                    f"{self.log_tail()}"
                )
        raise BrokerError(
            f"mosquitto did not accept connections on {self.address} within "
            f"{self._start_timeout:g} s:\n{self.log_tail()}"
        )

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # lets mosquitto save retained messages
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
