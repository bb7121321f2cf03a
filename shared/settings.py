"""Settings, loaded once from flags, ``SPLITMQ_*`` environment variables and ``.env``.

Every role takes a ``Settings`` object in its constructor; nothing reads the
environment anywhere else.
"""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitmq.shared.codecs import DEFAULT_MAX_BYTES
from splitmq.shared.protocol.topics import DEFAULT_PREFIX, Topics


def default_pool() -> Path:
    return Path.home() / ".cache" / "splitmq" / "pool"


class Settings(BaseSettings):
    """Every knob of splitmq; ``splitmq config`` prints the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITMQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    pool: Path = Field(default_factory=default_pool, description="model pool directory")
    broker: str = Field("127.0.0.1:1883", description="MQTT broker as host:port")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="prefix of every topic")
    threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads")
    max_payload_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=1024, description="largest message splitmq sends or accepts"
    )

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"broker must be host:port, got {value!r}")
        return value

    @property
    def topics(self) -> Topics:
        """The topic tree under ``topic_prefix``."""
        return Topics(self.topic_prefix)

    @property
    def broker_host(self) -> str:
        return self.broker.rpartition(":")[0]

    @property
    def broker_port(self) -> int:
        return int(self.broker.rpartition(":")[2])
