"""Feature-map and input codecs: how a tensor becomes bytes and back (docs/wire-format.md)."""

from splitmq.shared.codecs.core import (
    CODECS,
    DEFAULT_MAX_BYTES,
    DTYPES,
    INPUT_CODECS,
    MAX_ELEMENTS,
    MAX_RANK,
    STAGES,
    CodecInfo,
    CodecName,
    EncodedTensor,
    check,
    decode,
    encode,
    is_lossless,
    list_codecs,
    parse_codec,
)

__all__ = [
    "CODECS",
    "DEFAULT_MAX_BYTES",
    "DTYPES",
    "INPUT_CODECS",
    "MAX_ELEMENTS",
    "MAX_RANK",
    "STAGES",
    "CodecInfo",
    "CodecName",
    "EncodedTensor",
    "check",
    "decode",
    "encode",
    "is_lossless",
    "list_codecs",
    "parse_codec",
]
