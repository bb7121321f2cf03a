"""splitmq: split DNN inference between devices, edge and cloud over MQTT.

The public API (``splitmq.api``) loads on first use, so ``import splitmq.shared...``
in a worker stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Answer", "Decision", "Device", "InferenceFailed", "Plan", "plan", "wants"]

if TYPE_CHECKING:
    from splitmq.api import Device, plan, wants
    from splitmq.device.answers import Answer, InferenceFailed
    from splitmq.planner import Decision
    from splitmq.shared.protocol.plan import Plan

_HOMES = {
    "Device": "splitmq.api",
    "plan": "splitmq.api",
    "wants": "splitmq.api",
    "Answer": "splitmq.device.answers",
    "InferenceFailed": "splitmq.device.answers",
    "Decision": "splitmq.planner",
    "Plan": "splitmq.shared.protocol.plan",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'splitmq' has no attribute {name!r}")
