"""The one exception hierarchy of splitmq, each class with its wire error code.

Foreign errors (onnx, onnxruntime, msgpack, paho, OS) are translated where
they enter with ``raise SomeError(...) from exc`` so callers catch only these.
A ``UserError`` is a mistake the user can fix; the CLI prints its message as
one line and exits with status 2. A worker reports any of these to the device
as ``{"code": exc.code, ...}`` on ``error/<device>``: the code lives on the
class, so no except-ladder maps errors to codes.
"""

from __future__ import annotations

#: Every ``code`` an error document may carry (docs/wire-format.md, Errors).
ERROR_CODES = frozenset(
    {
        "bad_payload",
        "unknown_model",
        "unknown_cut",
        "bad_tensor",
        "bad_image",
        "bad_route",
        "expired",
        "busy",
        "no_worker",
        "internal",
    }
)


class SplitMQError(Exception):
    """Base of every error splitmq raises on purpose."""

    code = "internal"


class UserError(SplitMQError):
    """Bad input from a user: a path, a flag, a model name, a cut index."""


class ModelError(UserError):
    """A file is not a usable ONNX model, or a model has no such cut."""

    code = "unknown_cut"


class PoolError(UserError):
    """The model pool is missing something or holds a corrupted file."""

    code = "unknown_model"


class ImageError(UserError):
    """Bytes that should be a JPEG or PNG image are not one, or are too big."""

    code = "bad_image"


class CodecError(SplitMQError):
    """A tensor cannot be encoded or decoded with the requested codec."""

    code = "bad_tensor"


class WireError(SplitMQError):
    """A message on the wire is malformed; the message names the field."""

    code = "bad_payload"


class RequestFailed(SplitMQError):
    """A request a worker cannot serve, with the wire code that says why."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code


class BrokerError(SplitMQError):
    """The MQTT broker cannot be started, reached or used."""


class LoginRefused(BrokerError):
    """The broker refused the connection: credentials, or a client id they may not use."""


class PayloadTooLarge(BrokerError):
    """A publish would exceed the broker's packet size limit."""
