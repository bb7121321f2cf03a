"""The result documents of a detector and a raw task as docs/wire-format.md shows them:
the page's test vectors unpack to what the page says and pack back to the same bytes,
and a reader takes the optional keys absent or empty, but nothing else."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from splitmq.shared.errors import WireError
from splitmq.shared.protocol.results import Box, pack_result, unpack_result

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"


def vector(name: str) -> bytes:
    """The fenced block after ``<!-- test-vector: name -->`` in docs/wire-format.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test-vector: {re.escape(name)} -->\s*```\w*\n(.*?)\n```", text, re.S)
    assert found, f"test vector {name!r} is missing from {DOC}"
    return found.group(1).encode()


def test_the_detect_vector_is_what_the_page_says():
    payload = vector("result-detect json")
    result = unpack_result(payload)
    assert (result.top, result.outputs) == ((), ())
    assert result.boxes == (
        Box(0, "face", 0.93, (91.0, 29.0, 135.0, 89.0)),
        Box(0, "face", 0.71, (10.0, 12.0, 40.0, 52.5)),
    )
    x0, y0, x1, y1 = result.boxes[0].box  # the page's reading of the first box
    assert (x1 - x0, y1 - y0, x0, y0) == (44.0, 60.0, 91.0, 29.0)
    assert pack_result(result) == payload


def test_the_raw_vector_is_what_the_page_says():
    payload = vector("result-raw json")
    result = unpack_result(payload)
    assert (result.top, result.boxes) == ((), ())
    (out,) = result.outputs
    data = base64.b64decode(out.data, validate=True)
    assert data.hex() == "0000003f000080bf00000040"  # the bytes the page names
    values = np.frombuffer(data, np.dtype(out.dtype).newbyteorder("<")).reshape(out.shape)
    assert values.tolist() == [[0.5, -1.0, 2.0]]
    assert (out.min, out.max, out.mean) == (values.min(), values.max(), values.mean())
    assert pack_result(result) == payload


def test_optional_keys_may_be_empty_but_not_unknown():
    doc = json.loads(vector("result-detect json"))
    empty = unpack_result(json.dumps({**doc, "boxes": [], "outputs": []}).encode())
    assert (empty.boxes, empty.outputs) == ((), ())
    assert b'"boxes"' not in pack_result(empty)  # written only when there is a box
    without = {k: v for k, v in doc.items() if k != "boxes"}
    assert unpack_result(json.dumps(without).encode()).boxes == ()
    with pytest.raises(WireError, match="masks"):
        unpack_result(json.dumps({**doc, "masks": []}).encode())
    backwards = {**doc, "boxes": [{**doc["boxes"][0], "box": [135.0, 29.0, 91.0, 89.0]}]}
    with pytest.raises(WireError, match="corner before its origin"):
        unpack_result(json.dumps(backwards).encode())
