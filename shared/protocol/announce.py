"""The retained announcement of a model's newest version, on ``model/<name>``.

Adding a version to the pool changes files on one host; workers and the planner
elsewhere learn of it from this document, so they can load it and move devices
to it without a restart. It names the version and its hash: a reader checks the
hash against its own pool before trusting the version it names.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from splitmq.shared.errors import WireError
from splitmq.shared.protocol.document import Document
from splitmq.shared.protocol.ids import MAX_VERSION, MODEL_RULE, is_model_name
from splitmq.shared.protocol.topics import Topics


class ModelAnnouncement(Document):
    name: str
    version: int = Field(ge=1, le=MAX_VERSION)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ts: float = Field(ge=0)  # unix time of the announcement

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError(f"use {MODEL_RULE}")
        return value


def parse_announcement(topics: Topics, topic: str, payload: bytes) -> ModelAnnouncement | None:
    """The announcement received on ``topic`` (None: a cleared retained one); WireError
    when the topic or the document is bad, or they name different models."""
    name = topics.parse_model(topic)
    if not payload:
        return None
    news = ModelAnnouncement.parse(payload, topic)
    if news.name != name:
        raise WireError(f"{topic}: the document names model {news.name!r}")
    return news
