"""A user's own model with a config: real trained weights in the shapes users bring.

The models are the built-in ones (real weights) re-exported the way other exporters
write them: SqueezeNet-style ``[N, 1000, 1, 1]`` scores, an NHWC input, a second output
after the answer. Each is added with a config as a user would, then answers on a real
broker, on the device and through the edge, the same top-1 as the unsplit original.
"""

from __future__ import annotations

import json
import re
import tomllib

import numpy as np
import onnx
import pytest
from clitools import cli_env, run_cli
from onnx import TensorProto, helper
from PIL import Image
from usermodels import EFFNET_CONFIG, nhwc, squeezenet_style, with_features_last

from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.shared.model.config import ConfigError, ModelConfig, render
from splitmq.shared.model.graph import make_session
from splitmq.shared.model.outputs import class_of
from splitmq.shared.model.plans import make_plan
from splitmq.shared.model.pool import ModelPool
from splitmq.shared.model.preprocess import normalize, to_pixels
from splitmq.shared.offline.datasets import mnist_digits, photos


def top1(mv, frame) -> int:
    """The original model's answer for ``frame``: the reference."""
    pre = mv.manifest.preprocess
    x = normalize(to_pixels(frame, pre), pre)
    name = mv.output_names[-1]
    return int(make_session(mv.model_bytes).run([name], {mv.manifest.input.name: x})[0].argmax())


@pytest.fixture
def user_pool(tmp_path):
    return ModelPool(tmp_path / "pool")


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, path)
    return str(path)


def test_a_1000x1x1_classifier_answers_like_the_original(
    tmp_path, user_pool, real_pool, settings
) -> None:
    original = real_pool.get("efficientnet-lite0")
    path = save(squeezenet_style(onnx.load_from_string(original.model_bytes)), tmp_path / "sq.onnx")
    (tmp_path / "labels.txt").write_text("\n".join(original.labels or []) + "\n")
    (tmp_path / "sq.toml").write_text(EFFNET_CONFIG + 'labels = "labels.txt"\n')
    mv = user_pool.add(path, "sq", config=ModelConfig.load(tmp_path / "sq.toml", {}))
    assert mv.manifest.outputs[-1].shape[1:] == [1000, 1, 1]
    cfg = settings.model_copy(update={"pool": user_pool.root})
    frames = photos(2, seed=0)
    with edge_worker(cfg, "cfg-edge"):
        for plan in (make_plan(mv, mv.last_cut), make_plan(mv, 20, "raw")):
            with Device(cfg, "dev-sq", plan) as dev:
                for frame in frames:
                    answer = dev.infer(frame)
                    assert answer.top[0].index == top1(original, frame)
                    assert answer.top[0].label == original.labels[answer.top[0].index]


def test_an_nhwc_model_answers_like_the_original_on_device_and_from_pixels(
    tmp_path, user_pool, real_pool, settings
) -> None:
    original = real_pool.get("mnist-cnn")
    pre = original.manifest.preprocess
    path = save(nhwc(onnx.load_from_string(original.model_bytes)), tmp_path / "nhwc.onnx")
    flags = {
        "input": {"layout": "NHWC", "color": "GRAY", "crop": 28, "mean": pre.mean, "std": pre.std}
    }
    mv = user_pool.add(path, "nhwc", config=ModelConfig.load(None, flags))
    assert mv.manifest.input.shape[1:] == [28, 28, 1]
    cfg = settings.model_copy(update={"pool": user_pool.root})
    images, _ = mnist_digits()
    with edge_worker(cfg, "nhwc-edge"):  # cut 0 as u8: the edge normalises into NHWC
        for plan in (make_plan(mv, mv.last_cut), make_plan(mv, 0, "u8")):
            with Device(cfg, "dev-nhwc", plan) as dev:
                for frame in images[:4]:
                    assert dev.infer(frame).top[0].index == top1(original, frame)


def test_the_config_names_which_of_several_outputs_answers(
    tmp_path, user_pool, real_pool, settings
) -> None:
    original = real_pool.get("mnist-cnn")
    model = with_features_last(onnx.load_from_string(original.model_bytes))
    path = save(model, tmp_path / "two.onnx")
    env = cli_env(pool=user_pool.root)
    refused = run_cli("pool", "add", path, "--name", "two", "--no-announce", env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "output.tensor" in refused.stderr and len(refused.stderr.strip().splitlines()) <= 3
    final = original.output_names[-1]
    added = run_cli(
        "pool", "add", path, "--name", "two", "--tensor", final, "--color", "GRAY",
        "--crop", "28", "--mean", str(original.manifest.preprocess.mean[0]),
        "--std", str(original.manifest.preprocess.std[0]), "--no-announce", "--json", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = run_cli("pool", "show", "two", env=env)
    assert f'tensor = "{final}"' in shown.stdout and 'color = "GRAY"' in shown.stdout
    assert json.loads(added.stdout)["config"].endswith("config.toml")
    mv = user_pool.get("two")
    assert mv.output_names == [final]
    cfg = settings.model_copy(update={"pool": user_pool.root})
    images, _ = mnist_digits()
    with edge_worker(cfg, "two-edge"), Device(cfg, "dev-two", make_plan(mv, 2, "raw")) as dev:
        for frame in images[:4]:
            assert dev.infer(frame).top[0].index == top1(original, frame)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[input]\nlayout = "NCWH"\ncrop = 28\nmean = 1\nstd = 1\n', "input.layout"),
        ('[input]\ncolor = "RGBA"\ncrop = 28\nmean = 1\nstd = 1\n', "input.color"),
        ("[input]\ncrop = 0\nmean = 1\nstd = 1\n", "input.crop"),
        ("[input]\ncrop = [28, 28, 1]\nmean = 1\nstd = 1\n", "input.crop"),
        ("[input]\ncrop = 28\nmean = [1, 2]\nstd = 1\n", "input.mean"),
        ("[input]\ncrop = 28\nmean = 1\nstd = 0\n", "input.std"),
        ("[input]\ncrop = 28\nmean = 1\n", "input.std"),
        ("[input]\nresize = 20\ncrop = 28\nmean = 1\nstd = 1\n", "input.resize"),
        ('[output]\ntask = "segment"\n', "output.task"),
        ("[output]\nlabels = 'missing.txt'\n", "output.labels"),
        ("[output]\nscale = 2\n", "output.scale"),
        ("[model]\nname = 'x'\n", "[model]"),
        ("[input\n", "not TOML"),
    ],
)
def test_every_bad_config_names_its_field(tmp_path, toml, field) -> None:
    (tmp_path / "bad.toml").write_text(toml)
    with pytest.raises(ConfigError) as bad:
        ModelConfig.load(tmp_path / "bad.toml", {})
    assert field in str(bad.value) and "\n" not in str(bad.value)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"input": {"layout": "NHWC"}}, "input.layout"),  # 1 channel read where RGB is 3
        ({"input": {"crop": 32}}, "input.crop"),
        ({"output": {"tensor": "nope"}}, "output.tensor"),
        ({"output": {"task": "detect"}}, "output.detect"),
    ],
)
def test_a_config_that_does_not_fit_the_model_fails_at_pool_add(
    tmp_path, user_pool, real_pool, flags, field
) -> None:
    original = real_pool.get("mnist-cnn")
    base = {"input": {"color": "GRAY", "crop": 28, "mean": 33.0, "std": 78.0}, "output": {}}
    for section, fields in flags.items():
        base[section] = {**base[section], **fields}
    if flags.get("input", {}).get("layout"):
        base["input"]["color"] = "RGB"
    path = save(onnx.load_from_string(original.model_bytes), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        user_pool.add(path, "m", config=ModelConfig.load(None, base))
    assert user_pool.versions("m") == []


def test_labels_must_match_the_classes(tmp_path, user_pool, real_pool) -> None:
    original = real_pool.get("mnist-cnn")
    path = save(onnx.load_from_string(original.model_bytes), tmp_path / "m.onnx")
    (tmp_path / "labels.txt").write_text("zero\none\n")
    (tmp_path / "m.toml").write_text('[output]\nlabels = "labels.txt"\n')
    with pytest.raises(ConfigError, match=r"output\.labels has 2 labels for the 10 classes"):
        user_pool.add(path, "m", config=ModelConfig.load(tmp_path / "m.toml", {}))


def test_the_built_in_models_are_described_the_same_way(real_pool) -> None:
    """Their config, as `pool show` prints it, reads back as what they run with."""
    for name in ("efficientnet-lite0", "mnist-cnn"):
        m = real_pool.get(name).manifest
        text = render(m.preprocess, m.output, None)
        again = ModelConfig.parse(tomllib.loads(text), real_pool.root, f"{name}'s config")
        assert (again.preprocess, again.output) == (m.preprocess, m.output)


def test_bgr_reverses_the_channels_the_model_gets(real_pool) -> None:
    pre = real_pool.get("efficientnet-lite0").manifest.preprocess
    bgr = pre.model_copy(update={"channels": "BGR"})
    frame = photos(1, seed=0)[0]
    assert np.array_equal(to_pixels(frame, bgr), to_pixels(frame, pre)[:, ::-1])


def test_the_class_of_each_sample_reads_through_singleton_dims() -> None:
    scores = np.zeros((2, 5, 1, 1), np.float32)
    scores[0, 3], scores[1, 1] = 1.0, 2.0
    assert class_of(scores).tolist() == [3, 1]


def test_a_1000x1x1_classifier_calibrates_from_a_folder_of_photos(tmp_path, real_pool) -> None:
    original = real_pool.get("efficientnet-lite0")
    path = save(squeezenet_style(onnx.load_from_string(original.model_bytes)), tmp_path / "sq.onnx")
    (tmp_path / "sq.toml").write_text(EFFNET_CONFIG)
    pool = ModelPool(tmp_path / "pool")
    pool.add(path, "sq", config=ModelConfig.load(tmp_path / "sq.toml", {}))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, frame in enumerate(photos(18, seed=3)):
        Image.fromarray(frame).save(folder / f"{i:02d}.jpg", quality=90)
    run = run_cli(
        "calibrate", "sq", "--samples", str(folder), "--cuts", "30", "--json",
        env=cli_env(pool=pool.root),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {r["codec"]: r for r in json.loads(run.stdout)["rows"] if r["cut"] == 30}
    assert rows["raw"]["agreement"] == 1.0 and rows["raw"]["samples"] == 12
    # 2 bits change some answers: agreement is over the 1000 classes, not a singleton axis
    assert rows["q2"]["agreement"] < 0.9


def test_scores_without_a_batch_dim_are_refused_at_pool_add(tmp_path, user_pool, real_pool):
    """Squeezed to [10]: one sample serves, but nothing runs samples together (calibration)."""
    model = onnx.load_from_string(real_pool.get("mnist-cnn").model_bytes)
    graph = model.graph
    final = graph.output[-1].name
    graph.node.append(helper.make_node("Flatten", [final], ["flat"], axis=0))
    graph.initializer.append(helper.make_tensor("ten", TensorProto.INT64, [1], [10]))
    graph.node.append(helper.make_node("Reshape", ["flat", "ten"], ["scores"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [10]))
    path = save(model, tmp_path / "squeezed.onnx")
    with pytest.raises(ConfigError, match=r"does not start with the batch dim"):
        user_pool.add(path, "squeezed")


def test_the_same_file_with_another_config_is_a_new_version(tmp_path, user_pool, real_pool):
    original = real_pool.get("mnist-cnn")
    path = save(onnx.load_from_string(original.model_bytes), tmp_path / "m.onnx")
    pre = original.manifest.preprocess
    grey = {"input": {"color": "GRAY", "crop": 28, "mean": pre.mean, "std": pre.std}}
    bare = user_pool.add(path, "m")
    configured = user_pool.add(path, "m", config=ModelConfig.load(None, grey))
    again = user_pool.add(path, "m", config=ModelConfig.load(None, grey))
    assert (bare.version, configured.version, again.version) == (1, 2, 2)
    assert bare.manifest.preprocess is None and configured.manifest.preprocess is not None
    assert user_pool.add(path, "m").version == 1  # no config given: the file's first version


def test_an_input_section_needs_a_float_input(tmp_path, user_pool, real_pool) -> None:
    """[input] makes float32 images: a model taking uint8 (as TFLite exports do) would
    fail every request, so pool add says so."""
    model = onnx.load_from_string(real_pool.get("mnist-cnn").model_bytes)
    graph = model.graph
    old = graph.input[0]
    graph.node.insert(0, helper.make_node("Cast", ["bytes"], [old.name], to=TensorProto.FLOAT))
    new = helper.make_tensor_value_info("bytes", TensorProto.UINT8, ["N", 1, 28, 28])
    del graph.input[:]
    graph.input.append(new)
    path = save(model, tmp_path / "u8.onnx")
    flags = {"input": {"color": "GRAY", "crop": 28, "mean": 0, "std": 1}}
    with pytest.raises(ConfigError, match=r"input 'bytes' takes uint8"):
        user_pool.add(path, "u8", config=ModelConfig.load(None, flags))


@pytest.mark.parametrize(
    ("doc", "flags", "field"),
    [
        ("input = 5\n", {"input": {"crop": 28}}, "[input] must be a table"),
        ("[output]\nlabels = 5\n", {}, "output.labels must be a file name"),
        ("[input]\nresize = 100000000\ncrop = 28\nmean = 1\nstd = 1\n", {}, "input.resize"),
        ("[input]\ncrop = 9000\nmean = 1\nstd = 1\n", {}, "input.crop"),
    ],
)
def test_odd_values_are_one_line_errors(tmp_path, doc, flags, field) -> None:
    (tmp_path / "odd.toml").write_text(doc)
    with pytest.raises(ConfigError, match=re.escape(field)):
        ModelConfig.load(tmp_path / "odd.toml", flags)
