"""The page's form posts (``multipart/form-data``), parsed with the standard library.

``email`` reads MIME multipart bodies, which is what a form post is; the body's
size was checked before it was read. Every field is named, fields are looked up
by name with a specific error when one is missing, and file fields keep the name
the user's file had, for messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP

from splitmq.shared.errors import UserError

MAX_FIELDS = 16  # the forms have at most six


@dataclass(frozen=True)
class Field:
    name: str
    data: bytes
    filename: str | None  # None: a plain field, not a file


class Form:
    """A parsed form post: ``text(name)``, ``file(name)`` and their optional variants."""

    def __init__(self, fields: dict[str, Field]) -> None:
        self.fields = fields

    @classmethod
    def parse(cls, content_type: str, body: bytes) -> Form:
        if not content_type.lower().startswith("multipart/form-data"):
            raise UserError(f"expected a multipart/form-data post, got {content_type or 'none'!r}")
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        if not isinstance(message, EmailMessage) or not message.is_multipart():
            raise UserError("the form post has no parts (no boundary?)")
        fields: dict[str, Field] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or not name:
                raise UserError("a part of the form post has no field name")
            if len(fields) >= MAX_FIELDS:
                raise UserError(f"the form post has more than {MAX_FIELDS} fields")
            data = part.get_payload(decode=True)
            payload = data if isinstance(data, bytes) else b""
            fields[name] = Field(name, payload, part.get_filename())
        return cls(fields)

    def text(self, name: str) -> str:
        value = self.text_or_none(name)
        if value is None:
            raise UserError(f"the form needs a {name!r} field")
        return value

    def text_or_none(self, name: str) -> str | None:
        """A plain field's text, stripped; None when absent or empty."""
        field = self.fields.get(name)
        if field is None:
            return None
        try:
            text = field.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"the {name!r} field is not UTF-8 text") from None
        return text or None

    def file(self, name: str, what: str) -> Field:
        field = self.file_or_none(name)
        if field is None:
            raise UserError(f"choose {what} to upload")
        return field

    def file_or_none(self, name: str) -> Field | None:
        """A file field with content; None when absent or no file was chosen."""
        field = self.fields.get(name)
        return field if field is not None and field.data else None
