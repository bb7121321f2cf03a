"""Int8 static quantisation of a float ONNX model, with ONNX Runtime's quantiser.

Weights are int8 per output channel; activations are uint8 with one scale per
tensor, fitted (min/max) on real inputs from the model's training side
(``calibration_inputs``), never on the images evaluations draw. The result is
in QDQ form: each quantised tensor passes through a QuantizeLinear/
DequantizeLinear pair, which ONNX Runtime fuses into integer kernels when it
loads the graph, and the graph keeps its input, its outputs (exit heads too)
and its metadata (an exporter's temperatures). Its uint8 tensors between a
pair are cuts a quarter the size of the float ones, and split exactly.
uint8 activations with int8 weights run 1.4-2.4x faster than float on an
x86 CPU (1 thread, docs/benchmarks.md); int8 activations quantise to the same
grid, but ONNX Runtime does not fuse them there, so they run no faster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.offline import samples
from splitmq.shared.offline.datasets import fashion_mnist, photos

METHOD = "static QDQ, per-channel int8 weights, uint8 activations, min/max"
#: Inputs per calibration batch: for EfficientNet-Lite0, 8 take 1.9 GB and 6 s, 32 take
#: 5.4 GB and 10 s.
BATCH = 8
#: Photo crops for the ranges come from this seed: seeds from 1000 fit models (1000
#: distils the exit head), those below calibrate codecs and evaluate.
PHOTO_SEED = 1001
#: Calibration inputs: Fashion-MNIST training images (the first ones, trained on) or
#: photo crops. More min/max samples only widen the ranges: 100 crops agree better
#: with the float model than 300 (0.88 and 0.86 top-1 on EfficientNet-Lite0).
COUNTS = {"fashion": 500, "photos": 100}


def calibration_inputs(mv: ModelVersion) -> np.ndarray:
    """Model inputs to fit ``mv``'s activation ranges on: images from its training side,
    through its own preprocessing."""
    pre = mv.manifest.preprocess
    assert pre is not None, f"{mv.name} has no preprocessing"
    if samples.FASHION_SOURCE in mv.manifest.source:
        images = list(fashion_mnist("train")[0][: COUNTS["fashion"]])
    else:
        images = photos(COUNTS["photos"], seed=PHOTO_SEED)
    return samples.from_images(images, pre)[1]


def quantize(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """``model`` quantised to int8, its activation ranges fitted on ``calibration``
    (model inputs, N first)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feed = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (
                calibration[i : i + BATCH] for i in range(0, len(calibration), BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {feed: batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / f"{n}.onnx" for n in ("float", "pre", "int8"))
        onnx.save(model, src)
        # Shapes, and the exporter's padding and shape arithmetic folded into the
        # convolutions: EfficientNet-Lite0 quantised runs 1.45x faster than without it.
        quant_pre_process(src, pre)
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        result = onnx.load(out)
    onnx.helper.set_model_props(result, {p.key: p.value for p in model.metadata_props})
    return result
