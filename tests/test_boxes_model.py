"""A tiny real detector for the tests of boxes, and where its boxes land on an image.

``squares()`` is a CenterNet-style ONNX graph built here with onnx.helper: grey
pixels, 4x4 cells, a heatmap that is high where a cell is white, a constant one-cell
box size and no offset. A white square of 4x4 model-input pixels on a cell is one box
exactly on it, so where the dashboard says a box lies on the uploaded image can be
checked against where the square was drawn, whatever the resize and crop did. Other
tests (results, dashboard) import the model and its configs from here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from splitmq.dashboard.tryout import Tryout
from splitmq.shared.model.config import ModelConfig
from splitmq.shared.model.pool import ModelPool

SIDE = 32  # the model input's side, in pixels
STRIDE = 4  # input pixels per heatmap cell: a box is one cell
#: Images 0..255 become 0..1, shorter side resized to 48, centre 32x32 crop.
DETECT_TOML = """
[input]
color = "RGB"
resize = 48
crop = 32
mean = 0
std = 255
[output]
task = "detect"
labels = "labels.txt"
[output.detect]
heatmap = "heatmap"
size = "size"
offset = "offset"
stride = 4
"""
#: The same graph as a raw task: its heatmap and sizes as tensors.
RAW_TOML = """
[input]
crop = 32
mean = 0
std = 255
[output]
task = "raw"
tensor = ["heatmap", "size"]
"""


def squares() -> onnx.ModelProto:
    """The detector (see module docstring): heatmap [1, 1, 8, 8], size and offset
    [1, 2, 8, 8], from a [1, 3, 32, 32] input."""
    weights = {
        "grey_w": np.full((1, 3, 1, 1), 1 / 3, np.float32),
        "grey_b": np.zeros(1, np.float32),
        "gain": np.array(20.0, np.float32),  # a white cell: sigmoid(10); a black one: sigmoid(-10)
        "bias": np.array(-10.0, np.float32),
        "zeros": np.zeros((1, 2, 1, 1), np.float32),
        "ones": np.ones((1, 2, 1, 1), np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "grey_w", "grey_b"], ["grey"], name="grey"),
        node("Relu", ["grey"], ["bright"], name="bright"),
        node("AveragePool", ["bright"], ["cells"], name="cells", kernel_shape=[STRIDE] * 2,
             strides=[STRIDE] * 2),
        node("Mul", ["cells", "gain"], ["scaled"], name="scaled"),
        node("Add", ["scaled", "bias"], ["logit"], name="logit"),
        node("Sigmoid", ["logit"], ["heatmap"], name="heatmap"),
        node("Mul", ["cells", "zeros"], ["offset"], name="offset"),
        node("Add", ["offset", "ones"], ["size"], name="size"),
    ]  # fmt: skip
    grid = SIDE // STRIDE
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "squares",
        [info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [
            info("heatmap", TensorProto.FLOAT, [1, 1, grid, grid]),
            info("size", TensorProto.FLOAT, [1, 2, grid, grid]),
            info("offset", TensorProto.FLOAT, [1, 2, grid, grid]),
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def square_files(root: Path, toml: str = DETECT_TOML) -> tuple[Path, Path, Path]:
    """The model, its config and its labels file, as a user would upload them."""
    root.mkdir(parents=True, exist_ok=True)
    model, config, labels = root / "squares.onnx", root / "squares.toml", root / "labels.txt"
    onnx.save(squares(), model)
    config.write_text(toml)
    labels.write_text("square\n")
    return model, config, labels


def add_squares(pool: ModelPool, root: Path, name: str = "squares", toml: str = DETECT_TOML):
    """The detector in ``pool`` under ``name``, added with its config as `pool add` does."""
    model, config, _ = square_files(root, toml)
    return pool.add(model, name, config=ModelConfig.load(config, {}))


def frame(
    width: int, height: int, squares_at: list[tuple[int, int, int, int]], grey: int = 255
) -> np.ndarray:
    """A black HxWx3 image with rectangles (x0, y0, x1, y1) of ``grey`` on it."""
    image = np.zeros((height, width, 3), np.uint8)
    for x0, y0, x1, y1 in squares_at:
        image[y0:y1, x0:x1] = grey
    return image


def picture(
    width: int, height: int, squares_at: list[tuple[int, int, int, int]], grey: int = 255
) -> bytes:
    """The same as a PNG file."""
    out = io.BytesIO()
    Image.fromarray(frame(width, height, squares_at, grey)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def square_pool(tmp_path_factory: pytest.TempPathFactory) -> ModelPool:
    root = tmp_path_factory.mktemp("squares")
    pool = ModelPool(root / "pool")
    add_squares(pool, root)
    stretched = DETECT_TOML.replace("resize = 48\n", "")  # resized to 32x32 whatever its shape
    add_squares(pool, root, "stretched", stretched)
    add_squares(pool, root, "raw-squares", RAW_TOML)
    return pool


@pytest.mark.parametrize(
    ("model", "width", "height", "drawn"),
    [
        # scaled by 1/2 to 64x48, then 16 px cropped off the left and 8 off the top
        ("squares", 128, 96, [(56, 32, 64, 40)]),
        # portrait: to 48x64, 8 px off the left, 16 off the top; two squares
        ("squares", 96, 128, [(40, 56, 48, 64), (64, 40, 72, 48)]),
        # no resize: stretched to 32x32, so 4x wide and 2x high cells
        ("stretched", 128, 64, [(16, 8, 32, 16)]),
    ],
)
def test_the_boxes_land_where_the_squares_were_drawn(square_pool, model, width, height, drawn):
    """Through the split and the unsplit model: corners in the model input's pixels, and
    mapped back onto the uploaded image exactly where its squares are."""
    tryout = Tryout(square_pool, 1, 10**8)
    mv = square_pool.get(model)
    for cut, codec in ((0, "u8"), (2, "int8"), (mv.last_cut, "raw")):
        answer = tryout.run(model, cut, codec, picture(width, height, drawn))
        assert answer["task"] == "detect" and answer["top"] == []
        assert answer["image"] == {"width": width, "height": height}
        found = sorted(tuple(b["image"]) for b in answer["boxes"])
        assert found == sorted(drawn), (cut, codec, answer["boxes"])
        assert all(b["label"] == "square" and b["score"] > 0.99 for b in answer["boxes"])
        for b in answer["boxes"]:  # one cell of the model's input each
            x0, y0, x1, y1 = b["box"]
            assert (x1 - x0, y1 - y0) == (STRIDE, STRIDE) and 0 <= x0 < x1 <= SIDE
        assert sorted(tuple(b["image"]) for b in answer["unsplit"]["boxes"]) == found
        assert (answer["agreement"], answer["agrees"]) == (1.0, True)


def test_nothing_found_agrees_with_nothing_found(square_pool):
    answer = Tryout(square_pool, 1, 10**8).run("squares", 2, "int8", picture(128, 96, []))
    assert (answer["boxes"], answer["unsplit"]["boxes"]) == ([], [])
    assert (answer["agreement"], answer["agrees"]) == (1.0, True)


def test_a_codec_that_loses_the_boxes_disagrees(square_pool):
    """jpeg:1 at cut 0 averages each 8x8 block: squares of one cell, a light grey, fade
    below the heatmap's threshold, so the unsplit model's boxes are not matched."""
    tryout = Tryout(square_pool, 1, 10**8)
    image = picture(32, 32, [(12, 8, 16, 12), (4, 4, 8, 8), (24, 20, 28, 24)], grey=150)
    kept = tryout.run("stretched", 0, "jpeg:50", image)
    assert len(kept["unsplit"]["boxes"]) == len(kept["boxes"]) == 3 and kept["agrees"]
    lost = tryout.run("stretched", 0, "jpeg:1", image)
    assert (len(lost["unsplit"]["boxes"]), lost["boxes"]) == (3, [])
    assert (lost["agreement"], lost["agrees"]) == (0.0, False)


def test_a_raw_task_answers_with_its_tensors_summaries(square_pool):
    answer = Tryout(square_pool, 1, 10**8).run(
        "raw-squares", 2, "int8", picture(64, 64, [(16, 16, 24, 24)])
    )
    assert (answer["task"], answer["top"], answer["boxes"]) == ("raw", [], [])
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["heatmap"]["shape"] == [1, 1, 8, 8] and by_name["size"]["shape"] == [1, 2, 8, 8]
    assert by_name["size"]["min"] == by_name["size"]["max"] == 1.0
    assert by_name["heatmap"]["max"] > 0.99 and by_name["heatmap"]["min"] < 0.01
    assert all("data" not in o for o in answer["outputs"])
    assert (answer["agreement"], answer["agrees"]) == (1.0, True)
