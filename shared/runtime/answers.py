"""The result document a tier publishes for a request it answered."""

from __future__ import annotations

from splitmq.shared.protocol.ids import Tier
from splitmq.shared.protocol.results import Result, latency_breakdown
from splitmq.shared.protocol.wire import Request, Timing
from splitmq.shared.runtime.executor import Answered


def answer_to(
    request: Request, timing: Timing, tier: Tier, model: str, version: int, answer: Answered
) -> Result:
    """The result of ``request``, whose hops' records ``timing`` holds: the answer, and
    for every reader what the device sent (``Request.sent``) and the route it took."""
    sent = request.sent
    return Result(
        id=request.id,
        device=request.device,
        model=model,
        version=version,
        top=answer.top,
        tier=tier,
        exit=answer.output,
        latency=latency_breakdown(request.device, timing),
        bytes=sum(r.bytes for r in timing.hops),
        t_sent=timing.hops[-1].t_sent,
        boxes=answer.boxes,
        outputs=answer.outputs,
        cut=sent.cut if sent else None,
        codec=sent.codec if sent else None,
        route=request.route,
        sent_at=timing.device.t_sent,
    )
