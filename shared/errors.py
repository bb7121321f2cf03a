"""The one exception hierarchy of splitmq.

Foreign errors (onnx, onnxruntime, msgpack, paho, OS) are translated where
they enter with ``raise SomeError(...) from exc`` so callers catch only these.
A ``UserError`` is a mistake the user can fix; the CLI prints its message as
one line and exits with status 2.
"""


class SplitMQError(Exception):
    """Base of every error splitmq raises on purpose."""


class UserError(SplitMQError):
    """Bad input from a user: a path, a flag, a model name, a cut index."""


class ModelError(UserError):
    """A file is not a usable ONNX model, or a model has no such cut."""


class PoolError(UserError):
    """The model pool is missing something or holds a corrupted file."""


class CodecError(SplitMQError):
    """A tensor cannot be encoded or decoded with the requested codec."""


class WireError(SplitMQError):
    """A message on the wire is malformed; the message names the field."""


class BrokerError(SplitMQError):
    """The MQTT broker cannot be started, reached or used."""


class PayloadTooLarge(BrokerError):
    """A publish would exceed the broker's packet size limit."""
