"""A request as a worker thread holds it between reading it and running its hop.

A worker reads and checks each request it takes (``read_request``), claims it
against replays, and only then runs the hops of what it took together
(``HopExecutor.execute``): the pieces of that first step that need no worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitmq.shared.errors import RequestFailed, WireError
from splitmq.shared.protocol.ids import Tier
from splitmq.shared.protocol.results import Result, pack_result
from splitmq.shared.protocol.topics import Topics
from splitmq.shared.protocol.wire import CONTENT_TYPE_REQUEST, Request, pack_request, unpack_request
from splitmq.shared.runtime.dedupe import Reply
from splitmq.shared.runtime.executor import Job
from splitmq.shared.transport.messages import Message


@dataclass(frozen=True)
class Taken:
    """A request read, checked and claimed by a worker thread, its hop still to run."""

    msg: Message
    t_recv: float
    topics: Topics
    device: str
    request: Request
    key: tuple[str, str, int]  # its replay key
    job: Job


def read_request(msg: Message, topics: Topics, max_bytes: int) -> tuple[str, Request]:
    """The request a device sent, and its device, checked against the topic."""
    try:
        route = topics.parse_request(msg.topic)
    except WireError as exc:  # told to the device the topic names, if it names one
        raise RequestFailed("bad_route", str(exc)) from exc
    request = unpack_request(msg.payload, max_bytes)
    if (request.model, request.cut, request.device) != (route.model, route.cut, route.device):
        raise RequestFailed(
            "bad_route",
            f"topic {msg.topic} does not match the request "
            f"({request.model}, cut {request.cut}, {request.device})",
        )
    return route.device, request


def job_for(request: Request, tier: Tier) -> Job:
    """What the executor runs for ``tier``'s hop of ``request``."""
    hop = request.current
    if hop.tier != tier:
        raise RequestFailed("bad_route", f"hop {request.hop} is for {hop.tier}, this is {tier}")
    return Job(
        request.model, request.version, request.cut, hop.to, request.tensor, hop.exit, hop.codec
    )


def reply_to(made: Result | Request, msg: Message, topics: Topics) -> Reply:
    """The message that ends a hop: the result, or the request for the next tier."""
    corr = made.id.encode()
    if isinstance(made, Result):
        # Never msg.response_topic: replies go only where the ACL-checked device id says.
        topic = topics.result(made.device)
        return Reply(topic, pack_result(made), {"correlation_data": corr, "json": True})
    return Reply(
        topics.request(made.current.tier, made.model, made.cut, made.device),
        pack_request(made),
        {
            "correlation_data": corr,
            "response_topic": msg.response_topic,
            "content_type": CONTENT_TYPE_REQUEST,
        },
        deadline=made.deadline,
    )
