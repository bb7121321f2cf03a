"""The device's own part of a frame: preprocess it, run the head, encode the cut's tensor.

``Head.run`` turns a frame into what the plan sends (the encoded tensor at
the cut, or the encoded input at cut 0) or, under a device-only plan, the
answer itself. It stamps each step on the device's clock (``Conditions``:
an emulated slower device takes longer) and keeps this device's recent own
times per frame, which its telemetry reports and the planner corrects its
profile with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from splitmq.device.conditions import Conditions
from splitmq.shared.codecs import EncodedTensor, encode, parse_codec
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.model.preprocess import model_input
from splitmq.shared.protocol.plan import Plan
from splitmq.shared.runtime.executor import Answered, HopExecutor, Job
from splitmq.shared.runtime.stats import Stats


@dataclass(frozen=True)
class Work:
    """A frame's device-side work: a tensor to send or a local answer, and its times."""

    t_start: float
    t_head: float  # the head finished (= the input read, at cut 0)
    t_encoded: float
    tensor: EncodedTensor | None = None  # to send; None: answered here
    answer: Answered | None = None


class Head:
    """Runs plans' heads for one device (see module docstring)."""

    def __init__(self, executor: HopExecutor, conditions: Conditions) -> None:
        self.executor, self.conditions = executor, conditions
        self.timing: Stats[str] = Stats(window=32)  # this device's own work, recent frames

    def run(self, frame: np.ndarray, plan: Plan, mv: ModelVersion) -> Work:
        t_start, cpu_start = time.time(), time.thread_time()
        x = model_input(frame, mv, pixels=plan.cut == 0 and parse_codec(plan.codec).is_input)
        t_input = time.time()
        if plan.cut == 0:  # nothing to run here: send the input
            tensor = encode(x, plan.codec, mv.codec_params(0, plan.codec))
            t_pre, t_head, t_encoded = self.conditions.computed(
                t_start, cpu_start, t_input, t_input, time.time()
            )
            self._measured(t_start, t_pre, t_encoded)
            return Work(t_start, t_head, t_encoded, tensor=tensor)
        to = None if plan.device_only else plan.cut
        outcome = self.executor.execute_one(
            Job(mv.name, mv.version, 0, to, x, forward_codec=plan.codec)
        )
        if outcome.error is not None:
            raise outcome.error
        t_pre, t_head, t_encoded = self.conditions.computed(
            t_start, cpu_start, t_input, outcome.t_done, outcome.t_end
        )
        self._measured(t_start, t_pre, t_encoded)
        return Work(t_start, t_head, t_encoded, outcome.forward, outcome.answer)

    def forget(self) -> None:
        """The plan changed: the head's recent times measured the old one."""
        self.timing.forget("head")

    def _measured(self, t_start: float, t_pre: float, t_done: float) -> None:
        self.timing.latency("preprocess", (t_pre - t_start) * 1000)
        self.timing.latency("head", (t_done - t_pre) * 1000)
