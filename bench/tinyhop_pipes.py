"""The tiny hop's reference pipelines (``bench_tinyhop.py``): plain paho clients.

Each keeps ``WINDOW`` QoS 1 requests in flight from this process to an echo in
its own process (as a worker is), through the same broker, and runs the same
ONNX Runtime work as splitmq's device and worker. They differ in what they do
per message besides:

- ``BarePipeline``: nothing; random bytes of splitmq's sizes each way.
- ``FormatPipeline``: the message format, unchecked: the ``int8`` tensor as
  numpy quantizes it, the request as a msgpack map, the top-5 (softmax and
  argsort) in a result document of splitmq's keys as JSON, each side only
  parsing what it gets.
- ``WirePipeline``: splitmq's own wire code: ``encode``, ``Request`` and
  ``pack_request`` on the device, which reads each result with
  ``unpack_result``; the echo reads the request with ``unpack_request``,
  decodes it, and answers ``pack_result(answer_to(...))``. Every check runs.

None has splitmq's runtime: window, retries, metrics, telemetry, threads. None
sends the MQTT v5 properties splitmq's requests carry, nor checks the topic and
the tensor's shape as a worker does: their costs are lower bounds.

    python bench/tinyhop_pipes.py KIND BROKER POOL REQ RSP REPLY_BYTES  # an echo
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as paho

from splitmq.shared.codecs.core import decode, encode
from splitmq.shared.model.outputs import TOP_K, softmax, top_k
from splitmq.shared.model.plans import Plan
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.protocol.results import pack_result, unpack_result
from splitmq.shared.protocol.wire import (
    DeviceTiming,
    HopTiming,
    Request,
    Timing,
    pack_request,
    unpack_request,
)
from splitmq.shared.runtime.answers import answer_to
from splitmq.shared.runtime.executor import Answered
from splitmq.shared.runtime.sessions import SessionCache
from splitmq.shared.settings import Settings

MODEL, CUT, CODEC, WINDOW = "mnist-cnn", 10, "int8", 32
REPLY_TIMEOUT_S = 30
#: The request's keys ``FormatPipeline`` sends as splitmq's device does (wire.pack_request).
HOP = {"tier": "edge", "to": None, "exit": None, "codec": None}
DEVICE_TIMES = ("t_start", "t_head_done", "t_encoded", "t_sent")
OnMessage = Callable[[paho.Client, Any, paho.MQTTMessage], None]


def bare_client(settings: Settings, name: str, topic: str, on_message) -> paho.Client:
    """A plain paho MQTT v5 client, its network loop running, subscribed to ``topic``."""
    url = settings.broker_url
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    # no Nagle, as splitmq's client: paho leaves it on, which costs ~40 ms a small reply
    client.on_connect = lambda c, *_: c.socket().setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    client.on_message = on_message
    client.connect(url.host, url.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError(f"no SUBACK for {topic}")
    return client


class BarePipeline:
    """A bare paho client keeping ``window`` QoS 1 requests in flight to an echo process."""

    ECHO = "bare"  # which echo the server process runs (``ECHOES``)

    def __init__(self, settings: Settings, reply_bytes: int, window: int, head) -> None:
        self.head = head  # the device's compute: the same segment splitmq's device runs
        self.req, self.rsp = f"bench/{uuid.uuid4().hex}/req", f"bench/{uuid.uuid4().hex}/rsp"
        echo = [self.ECHO, settings.broker, str(settings.pool), self.req, self.rsp]
        self.server = subprocess.Popen(
            [sys.executable, __file__, *echo, str(reply_bytes)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.window, self.out = window, 0
        self.room = threading.Condition()
        try:
            assert self.server.stdout is not None
            if self.server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {self.ECHO} echo did not start")
            name = f"{self.ECHO}-{uuid.uuid4().hex[:6]}"
            self.client = bare_client(settings, name, self.rsp, self._reply)
        except BaseException:
            self.server.kill()
            raise

    def _reply(self, *_: object) -> None:
        with self.room:
            self.out -= 1
            self.room.notify_all()

    def message(self, frame, payload: bytes) -> bytes:
        """What goes out for ``frame``: the head runs, the bytes are ``payload``."""
        self.head.run(frame)
        return payload

    def run(self, frame, payload: bytes, seconds: float) -> float:
        """Answers/s while keeping the window full for ``seconds``, then every one answered."""
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            self._wait(lambda: self.out < self.window)
            with self.room:
                self.out += 1
            self.client.publish(self.req, self.message(frame, payload), qos=1)
            sent += 1
        self._wait(lambda: self.out == 0)
        return sent / (time.monotonic() - start)

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait for ``ready``; a reply that never comes (a callback that raised, an echo
        that died) fails the bench instead of hanging it or counting as an answer."""
        with self.room:
            if not self.room.wait_for(ready, REPLY_TIMEOUT_S):
                raise RuntimeError(f"{self.ECHO}: no reply for {REPLY_TIMEOUT_S} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.server.terminate()
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()


def bare_echo(mv: ModelVersion, sessions: SessionCache, rsp: str, reply_bytes: int) -> OnMessage:
    """The bare responder: runs the tail, replies ``reply_bytes`` random bytes."""
    reply = os.urandom(reply_bytes)
    tail = sessions.segment(mv, CUT, mv.last_cut)
    x = sessions.segment(mv, 0, CUT).run(mv.graph.sample_input())[mv.cuts[CUT].name]

    def answer(client: paho.Client, *_: object) -> None:
        tail.run(x)
        client.publish(rsp, reply, qos=1)

    return answer


class WirePipeline(BarePipeline):
    """The bare pipeline doing splitmq's wire work too (see the module docstring)."""

    ECHO = "wire"

    def __init__(self, settings: Settings, window: int, head, mv: ModelVersion, plan: Plan):
        super().__init__(settings, 0, window, head)  # 0: its echo answers its own document
        self.mv, self.plan = mv, plan
        self.params = mv.codec_params(plan.cut, plan.codec)

    def message(self, frame, payload: bytes) -> bytes:
        t_start = time.time()
        x = self.head.run(frame)[self.mv.cuts[self.plan.cut].name]
        t_head = time.time()
        tensor = encode(x, self.plan.codec, self.params)
        t_encoded = time.time()
        request = Request(
            id=uuid.uuid4().hex,
            device="wire-dev",
            model=self.mv.name,
            version=self.mv.version,
            cut=self.plan.cut,
            route=self.plan.route,
            hop=0,
            tensor=tensor,
            deadline=t_encoded + 30,
            timing=Timing(DeviceTiming(t_start, t_head, t_encoded, t_encoded)),
        )
        return pack_request(request)

    def _reply(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        unpack_result(message.payload)
        super()._reply()


def wire_echo(mv: ModelVersion, sessions: SessionCache, rsp: str, _: int) -> OnMessage:
    """The echo of ``WirePipeline``: reads the request, runs the tail, answers a result."""
    tail = sessions.segment(mv, CUT, mv.last_cut)

    def answer(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        t_recv = time.time()
        request = unpack_request(message.payload)
        (scores,) = tail.run(decode(request.tensor)).values()
        top = top_k(scores[0], mv.labels)
        t_done = time.time()
        record = HopTiming(
            "edge", "wire-edge", t_recv, t_recv, t_done, t_done, len(message.payload)
        )
        timing = request.timing.appended(record)
        result = answer_to(
            request, timing, "edge", mv.name, mv.version, Answered(mv.finals[0], top)
        )
        client.publish(rsp, pack_result(result), qos=1)

    return answer


class FormatPipeline(BarePipeline):
    """The bare pipeline carrying splitmq's message format, unchecked (module docstring)."""

    ECHO = "format"

    def __init__(self, settings: Settings, window: int, head, mv: ModelVersion) -> None:
        super().__init__(settings, 0, window, head)  # 0: its echo answers its own document
        self.name = mv.cuts[CUT].name

    def message(self, frame, payload: bytes) -> bytes:
        t_start = time.time()
        x = self.head.run(frame)[self.name]
        low, high = float(x.min()), float(x.max())  # int8 per tensor, as the codec
        scale = max(high - low, 1e-12) / 255
        zp = round(-128 - low / scale)
        codes = np.clip(np.rint(x / scale) + zp, -128, 127).astype(np.int8)
        tensor = {"dtype": "float32", "shape": list(x.shape), "codec": CODEC}
        tensor |= {"params": {"scale": scale, "zp": zp}, "data": codes.tobytes()}
        doc = {"v": 1, "id": uuid.uuid4().hex, "device": "format-dev", "model": MODEL}
        doc |= {"version": 1, "cut": CUT, "route": [HOP], "hop": 0, "tensor": tensor}
        doc |= {"deadline": t_start + 30, "t": [dict.fromkeys(DEVICE_TIMES, t_start)]}
        return msgpack.packb(doc, use_bin_type=True)

    def _reply(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        json.loads(message.payload)
        super()._reply()


def format_echo(mv: ModelVersion, sessions: SessionCache, rsp: str, _: int) -> OnMessage:
    """The echo of ``FormatPipeline``: dequantizes, runs the tail, answers a JSON document
    of a result's keys and sizes."""
    tail = sessions.segment(mv, CUT, mv.last_cut)

    def answer(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        t_recv = time.time()
        request = msgpack.unpackb(message.payload)
        tensor, params = request["tensor"], request["tensor"]["params"]
        codes = np.frombuffer(tensor["data"], np.int8).astype(np.float32)
        x = ((codes - params["zp"]) * params["scale"]).reshape(tensor["shape"])
        (scores,) = tail.run(x).values()
        probs = softmax(scores.reshape(-1).astype(np.float64))  # as top_k, no TopK checks
        order = np.argsort(-probs)[:TOP_K].tolist()
        top = [
            {"index": i, "label": mv.labels[i] if mv.labels else None, "score": round(p, 6)}
            for i, p in zip(order, probs[order].tolist(), strict=True)
        ]
        t_done = time.time()
        mine = {"tier": "edge", "id": "format-edge", "transfer_ms": 0.5, "queue_ms": 0.1}
        mine |= {"compute_ms": (t_done - t_recv) * 1000, "encode_ms": 0.0, "bytes": 558}
        device = {"tier": "device", "id": request["device"], "transfer_ms": None}
        device |= {"queue_ms": None, "compute_ms": 0.3, "encode_ms": 0.3, "bytes": None}
        doc = {"id": request["id"], "device": request["device"], "model": MODEL, "version": 1}
        doc |= {"top": top, "tier": "edge", "exit": "logits", "latency": [device, mine]}
        doc |= {"bytes": len(message.payload), "t_sent": t_done, "cut": CUT, "codec": CODEC}
        doc |= {"sent_at": request["t"][0]["t_sent"], "route": request["route"]}
        client.publish(rsp, json.dumps(doc, separators=(",", ":")).encode(), qos=1)

    return answer


ECHOES: dict[str, Callable[[ModelVersion, SessionCache, str, int], OnMessage]] = {
    "bare": bare_echo,
    "wire": wire_echo,
    "format": format_echo,
}


def serve_echo(kind: str, broker: str, pool: str, req: str, rsp: str, reply_bytes: int) -> None:
    """An echo of ``kind``, in its own process like a worker, until it is terminated."""
    cfg = Settings(_env_file=None, broker=broker)
    mv = ModelPool(Path(pool)).get(MODEL)
    answer = ECHOES[kind](mv, SessionCache(ModelPool(Path(pool))), rsp, reply_bytes)
    bare_client(cfg, f"{kind}-echo-{uuid.uuid4().hex[:6]}", req, answer)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    serve_echo(*sys.argv[1:6], int(sys.argv[6]))
