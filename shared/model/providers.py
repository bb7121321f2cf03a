"""ONNX Runtime execution providers by the short names splitmq's settings use.

A role lists the providers it wants in order of preference (``--providers
cuda,cpu``, setting ``providers``). ``resolve`` turns that list into ONNX
Runtime's names, checked against what this onnxruntime build offers, once, at
start-up: an unknown name, or a missing provider with nothing available listed
after it, is a ``UserError`` that says what to install or list; a missing one
with an available one after it is a logged fallback (once per process), never
a silent CPU run. ``graph.make_session`` checks that the session then really
runs on the first of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import onnxruntime as ort

from splitmq.shared.errors import UserError

log = logging.getLogger(__name__)

#: Short name -> ONNX Runtime's name. Order: how ``known`` lists them.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "qnn": "QNNExecutionProvider",
}
SHORT: dict[str, str] = {ort_name: short for short, ort_name in PROVIDERS.items()}
#: What to install for a provider the running onnxruntime build lacks.
INSTALL: dict[str, str] = {
    "cuda": "install onnxruntime-gpu (and CUDA 12, cuDNN 9)",
    "tensorrt": "install onnxruntime-gpu and TensorRT",
    "openvino": "install onnxruntime-openvino",
    "dml": "install onnxruntime-directml (Windows)",
    "coreml": "use the macOS build of onnxruntime",
    "rocm": "install onnxruntime-rocm",
    "migraphx": "install onnxruntime-migraphx",
    "qnn": "install onnxruntime-qnn",
}
CPU: tuple[str, ...] = (PROVIDERS["cpu"],)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def short_name(ort_name: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (an unlisted one keeps ONNX Runtime's name)."""
    return SHORT.get(ort_name, ort_name)


def available() -> list[str]:
    """Short names of the providers this onnxruntime build offers, in its order."""
    return [short_name(p) for p in ort.get_available_providers() if p in SHORT]


def resolve(wanted: str) -> list[str]:
    """ONNX Runtime's names of the available providers in ``wanted`` (``"cuda,cpu"``), in
    its order; see the module docstring for what is an error and what a fallback."""
    names = [n.strip().lower() for n in wanted.split(",")]
    if not all(names):
        raise UserError(f"providers {wanted!r}: a comma-separated list, e.g. cpu or cuda,cpu")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise UserError(
            f"unknown execution provider {unknown[0]!r} (known: {', '.join(PROVIDERS)})"
        )
    offered = set(ort.get_available_providers())
    usable = [PROVIDERS[n] for n in names if PROVIDERS[n] in offered]
    have = ", ".join(available()) or "none"
    if not usable:
        first = names[0]
        hint = INSTALL.get(first, "install an onnxruntime build with it")
        raise UserError(
            f"{first} is not available in this onnxruntime build (available: {have}); "
            f"{hint} or list a fallback: --providers {first},cpu"
        )
    missing = names[: names.index(short_name(usable[0]))]
    if missing:
        warn_once(
            wanted,
            "%s not available in this onnxruntime build (available: %s): running on %s",
            ", ".join(missing),
            have,
            short_name(usable[0]),
        )
    return usable


def warn_once(key: str, message: str, *args: object) -> None:
    """Log a fallback WARNING the first time ``key`` falls back in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


def check_used(wanted: Sequence[str], used: Sequence[str]) -> str:
    """The short name of the provider a session runs on (``used``: its ``get_providers()``),
    given the ``wanted`` ONNX Runtime names: a fallback to a later one of them is logged
    once, one to a provider not wanted (ONNX Runtime's own CPU) is a ``UserError``."""
    runs = next((p for p in wanted if p in used), None)
    if runs is None:
        raise UserError(
            f"ONNX Runtime could not start {short_name(wanted[0])} (it offered "
            f"{', '.join(short_name(p) for p in used)}): check that its libraries load, or "
            f"list a fallback: --providers {short_name(wanted[0])},cpu"
        )
    if runs != wanted[0]:
        warn_once(
            "session:" + ",".join(wanted),
            "ONNX Runtime could not start %s (check that its libraries load): running on %s",
            short_name(wanted[0]),
            short_name(runs),
        )
    return short_name(runs)
