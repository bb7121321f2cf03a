"""Settings, loaded once from flags, ``SPLITMQ_*`` environment variables and ``.env``.

Every role takes a ``Settings`` object in its constructor; nothing reads the
environment anywhere else. The broker is a URL (``mqtt://host:1883``,
``mqtts://user:pass@host:8883``) or a bare ``host:port``; credentials may also
come from their own settings, so a password need never sit in a URL or on a
command line (``SPLITMQ_PASSWORD_FILE``). The password is a ``SecretStr``, and
``where`` (what logs and errors print) leaves it out of the address. An MQTT
client takes the :class:`Connection` that ``connection()`` builds, not these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitmq.shared.codecs import DEFAULT_MAX_BYTES
from splitmq.shared.connection import DEFAULT_KEEPALIVE_S, BrokerUrl, Connection
from splitmq.shared.errors import UserError
from splitmq.shared.protocol.topics import DEFAULT_PREFIX, Topics
from splitmq.shared.units import parse_ms

#: The pool ``make`` builds in a checkout, found from that directory without settings.
PROJECT_POOL = Path(".pool")
#: The longest a short batch may wait for more requests: beyond it devices time out.
MAX_QUEUE_DELAY_MS = 1000.0


def default_pool() -> Path:
    """``./.pool`` where one exists (a checkout after ``make``), else the user's cache."""
    if PROJECT_POOL.is_dir():
        return PROJECT_POOL.resolve()
    return Path.home() / ".cache" / "splitmq" / "pool"


class Settings(BaseSettings):
    """Every knob of splitmq; ``splitmq config`` prints the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITMQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    pool: Path = Field(
        default_factory=default_pool,
        description="model pool directory (default: ./.pool if present, else the user's cache)",
    )
    broker: str = Field(
        "127.0.0.1:1883",
        repr=False,  # may hold a password
        description="MQTT broker: mqtt://host:port, mqtts://user:pass@host:8883 or host:port",
    )
    username: str | None = Field(None, description="MQTT user name (or the URL's user)")
    password: SecretStr | None = Field(None, description="MQTT password (or the URL's)")
    password_file: Path | None = Field(None, description="file holding the MQTT password")
    ca_file: Path | None = Field(None, description="CA certificate that signed the broker's")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="the client certificate's private key")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="prefix of every topic")
    threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads")
    providers: str = Field(
        "cpu",
        description="ONNX Runtime execution providers in order of preference, e.g. cuda,cpu "
        "(cpu, cuda, tensorrt, openvino, coreml, dml, rocm); a missing one is an error "
        "unless a later one is listed, which is then used and logged",
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=256,
        description="a worker's dynamic batch: requests for one segment run as one call "
        "(1: never batch; unset: batch only on an accelerator, where it pays)",
    )
    max_queue_delay: str = Field(
        "0",
        description="how long a worker's batch waits for more requests while short, e.g. "
        "2ms (0: it takes what is queued and runs at once)",
    )
    max_payload_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=1024, description="largest message splitmq sends or accepts"
    )
    frame_topics: str | None = Field(
        None,
        description="cameras' own topics the edge takes as frames: FILTER=MODEL[,...], "
        "e.g. frigate/+/+/snapshot=efficientnet-lite0 (device id: the wildcard levels)",
    )
    results: str | None = Field(
        None,
        description="results store: a SQLite file path (sqlite:///PATH or PATH) or "
        "postgresql://user@host/db; unset keeps no store",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics on this port (0: any free)"
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the metrics and /healthz server binds (0.0.0.0: every interface)",
    )
    connect_timeout: str | None = Field(
        None,
        description="how long a role waits for its broker at start, e.g. 30s or 2min "
        "(unset: forever, retrying with backoff)",
    )

    site: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the site a process runs at (docs/operations.md, sites): `splitmq broker` "
        "bridges it to the cloud broker, an edge probes its WAN, the planner watches the bridge",
    )
    bridge: str | None = Field(
        None, description="the cloud broker a site bridges to: mqtts://host:8883"
    )
    bridge_login: Path | None = Field(
        None,
        description="the site's login on the cloud broker: the clients/<site>.env that "
        "`splitmq secure add-site` wrote",
    )

    @field_validator("connect_timeout")
    @classmethod
    def _check_connect_timeout(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_ms(value, "connect timeout")
            except UserError as exc:  # pydantic reports a ValueError with the field's name
                raise ValueError(str(exc)) from None
        return value

    @field_validator("max_queue_delay")
    @classmethod
    def _check_queue_delay(cls, value: str) -> str:
        try:
            ms = parse_ms(value, "max queue delay")
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if ms > MAX_QUEUE_DELAY_MS:
            raise ValueError(f"{value!r}: at most {MAX_QUEUE_DELAY_MS:g} ms (requests expire)")
        return value

    @property
    def max_queue_delay_s(self) -> float:
        """Seconds a worker may hold a request to batch it (``max_queue_delay``)."""
        return parse_ms(self.max_queue_delay, "max queue delay") / 1000

    @property
    def connect_timeout_s(self) -> float | None:
        """Seconds a role waits for its broker at start; None: until it comes."""
        if self.connect_timeout is None:
            return None
        return parse_ms(self.connect_timeout, "connect timeout") / 1000

    @classmethod
    def given(cls, **overrides: Any) -> Settings:
        """Settings from env/.env with ``overrides`` (None: not given) on top; a bad value
        is a ``UserError`` naming the setting and the reason, not pydantic's page of it."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            reason = str(error["msg"]).removeprefix("Value error, ")
            raise UserError(f"{where}: {reason}" if where else reason) from None

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        BrokerUrl.parse(value)
        return value

    @property
    def topics(self) -> Topics:
        """The topic tree under ``topic_prefix``."""
        return Topics(self.topic_prefix)

    @property
    def user(self) -> str | None:
        """The MQTT user name these settings log in as (the URL's, else ``username``),
        read without the password: a device's default id."""
        return BrokerUrl.parse(self.broker).username or self.username

    @property
    def broker_url(self) -> BrokerUrl:
        """The broker with the credentials to use: the URL's, else the settings'."""
        url = BrokerUrl.parse(self.broker)
        password = url.password
        if password is None and self.password is not None:
            password = self.password.get_secret_value()
        if password is None and self.password_file is not None:
            password = _read_secret(self.password_file)
        tls = url.tls or self.ca_file is not None
        return BrokerUrl(url.host, url.port, tls, url.username or self.username, password)

    def connection(
        self, client_id: str | None = None, keepalive: int = DEFAULT_KEEPALIVE_S
    ) -> Connection:
        """What an MQTT client named ``client_id`` (None: a fresh id) needs from here."""
        return Connection(
            self.broker_url,
            client_id,
            self.ca_file,
            self.cert_file,
            self.key_file,
            keepalive,
            self.max_payload_bytes,
        )

    @property
    def where(self) -> str:
        """The broker address as logs and errors show it: never with a password."""
        return str(self.broker_url)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the password file {path}: {exc.strerror}") from exc
