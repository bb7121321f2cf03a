"""Early-exit heads: attach a small classifier to an intermediate tensor of a model.

The head is GlobalAveragePool -> Gemm on the chosen tensor, trained by
distillation: it learns to reproduce the full model's softmax on real
frames (softmax regression with soft targets, Adam, in numpy). The model
keeps the full output as its last output; the exit comes first, which is
how splitmq recognises exit heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from splitmq.shared.errors import ModelError
from splitmq.shared.model.graph import declare_initializers, make_session
from splitmq.shared.model.outputs import softmax


def pooled_features(
    model: onnx.ModelProto, tensor: str, inputs: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Channel means of ``tensor`` and the final logits, for each input."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
    session = make_session(probe)
    final = model.graph.output[-1].name
    input_name = session.get_inputs()[0].name
    feats, logits = [], []
    for x in inputs:
        z, t = session.run([final, tensor], {input_name: x})
        if t.ndim != 4:
            raise ModelError(f"an exit head needs an NCHW tensor; {tensor} has shape {t.shape}")
        feats.append(t.mean(axis=(2, 3))[0])
        logits.append(z[0])
    return np.asarray(feats, np.float64), np.asarray(logits, np.float64)


def distill(
    feats: np.ndarray, teacher_logits: np.ndarray, steps: int = 400, lr: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes x channels) and bias of a linear head matching the teacher."""
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    x = (feats - mean) / std
    target = softmax(teacher_logits)
    w = np.zeros((x.shape[1], target.shape[1]))
    b = np.zeros(target.shape[1])
    m, v = np.zeros_like(w), np.zeros_like(w)
    for step in range(1, steps + 1):
        grad = (softmax(x @ w + b) - target) / len(x)
        gw = x.T @ grad + 1e-4 * w
        m = 0.9 * m + 0.1 * gw
        v = 0.999 * v + 0.001 * gw**2
        w -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        b -= lr * grad.sum(0)
    # Fold the feature normalisation into the weights: one Gemm at run time.
    w_folded = w / std[:, None]
    return w_folded.T.astype(np.float32), (b - mean @ w_folded).astype(np.float32)


def attach_exit_head(
    model: onnx.ModelProto,
    tensor: str,
    weight: np.ndarray,
    bias: np.ndarray,
    name: str = "exit_logits",
) -> onnx.ModelProto:
    """A copy of ``model`` with GAP -> Gemm on ``tensor`` as a new first output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    pooled, flat = f"{name}/pool", f"{name}/flat"
    g.initializer.extend(
        [numpy_helper.from_array(weight, f"{name}/W"), numpy_helper.from_array(bias, f"{name}/b")]
    )
    g.node.extend(
        [
            helper.make_node(
                "GlobalAveragePool", [tensor], [pooled], name=f"{name}/GlobalAveragePool"
            ),
            helper.make_node("Flatten", [pooled], [flat], name=f"{name}/Flatten", axis=1),
            helper.make_node(
                "Gemm", [flat, f"{name}/W", f"{name}/b"], [name], name=f"{name}/Gemm", transB=1
            ),
        ]
    )
    final = list(g.output)
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", weight.shape[0]])
    )
    g.output.extend(final)
    declare_initializers(out)  # IR < 4 lists weights as inputs too
    onnx.checker.check_model(out)
    return out
