"""splitmq as a library: a device inside an application, and the what-if planner.

A robot or camera application asks for answers in two lines; the device it
embeds follows the planner's plans as ``splitmq device`` does (on the device
alone until a plan arrives), retries, and ends every request as an
``Answer`` or an ``InferenceFailed``::

    import splitmq

    with splitmq.Device("efficientnet-lite0") as device:  # broker, pool: SPLITMQ_* / .env
        answer = device.infer("cat.jpg")
        print(answer.label, answer.score, answer.tier)

``splitmq.plan(...)`` answers what ``splitmq plan`` answers, as a ``Decision``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from splitmq.shared.errors import UserError

if TYPE_CHECKING:
    from splitmq.device.answers import Answer
    from splitmq.device.local import Fallback
    from splitmq.device.runtime import Device as DeviceRuntime
    from splitmq.planner import Decision, Options
    from splitmq.shared.model.pool import ModelVersion
    from splitmq.shared.protocol.plan import Objective, Plan
    from splitmq.shared.protocol.telemetry import Wants
    from splitmq.shared.settings import Settings

#: What ``infer`` and ``submit`` take: a file, its bytes, a PIL image or an HxW(xC) array.
ImageLike = str | Path | bytes | Image.Image | np.ndarray


def _as_named(param: str) -> str:
    """A parameter as errors name it unless the caller says otherwise: its Python name."""
    return param


def wants(
    objective: str = "latency",
    accuracy: float = 0.99,
    slo: str | float | None = None,
    max_bytes: str | int | None = None,
    fps: float | None = None,
    accuracy_target: float | None = None,
    *,
    name_of: Callable[[str], str] = _as_named,
) -> Wants:
    """What a device asks of its plan (``slo`` as ``"100ms"`` or ms, ``max_bytes`` as
    ``"10kB"`` or bytes); errors name each parameter as ``name_of`` spells it, so a
    caller that took the values under other names (the CLI) can have them said so."""
    from splitmq.shared.protocol.telemetry import Wants
    from splitmq.shared.units import parse_bytes, parse_ms

    if objective not in ("latency", "energy", "bytes"):
        raise UserError(
            f"{name_of('objective')} must be latency, energy or bytes, got {objective!r}"
        )
    return Wants(
        objective=cast("Objective", objective),  # one of the three: checked above
        accuracy=accuracy,
        slo_ms=parse_ms(slo, name_of("slo")) if isinstance(slo, str) else slo,
        max_bytes=(
            parse_bytes(max_bytes, name_of("max_bytes"))
            if isinstance(max_bytes, str)
            else max_bytes
        ),
        fps=fps,
        accuracy_target=accuracy_target,
    )


def plan(
    model: str | ModelVersion,
    *,
    uplink: str | float,
    rtt: str | float = "20ms",
    downlink: str | float | None = None,
    device_speed: float = 1.0,
    asked: Wants | None = None,
    battery: float | None = None,
    rate: float = 0.0,
    tiers: Iterable[str] = ("edge", "cloud"),
    edge_threads: int = 2,
    edge_speed: float = 1.0,
    edge_load: float = 0.0,
    cloud_threads: int = 2,
    cloud_speed: float = 1.0,
    cloud_load: float = 0.0,
    cloud_link: str = "100mbit/20ms",
    settings: Settings | None = None,
    name_of: Callable[[str], str] = _as_named,
) -> Decision:
    """The plan the planner would choose for a device in this situation, with its
    alternatives and the fixed strategies it beat. Rates as ``"5mbit"`` or bit/s, times
    as ``"40ms"`` or ms; ``model`` a pool name (``NAME[@VERSION]``) or a ``ModelVersion``;
    loads are the share of a tier's threads other devices keep busy; errors name each
    parameter as ``name_of`` spells it (see ``wants``)."""
    from splitmq.planner import DeviceState, Link, Options, TierState, decide
    from splitmq.shared.model.pool import ModelPool
    from splitmq.shared.units import parse_ms, parse_rate

    up = set(tiers)
    if not up <= {"edge", "cloud"}:
        raise UserError(f"{name_of('tiers')}: expected edge and/or cloud, got {sorted(up)}")
    device = DeviceState(
        speed=device_speed,
        link=Link(
            _rate(uplink, name_of("uplink"), parse_rate), _rate(rtt, name_of("rtt"), parse_ms)
        ),
        downlink_bps=(
            None if downlink is None else _rate(downlink, name_of("downlink"), parse_rate)
        ),
        battery=battery,
        rate_rps=rate,
    )
    states = {
        "edge": TierState("edge", edge_threads, edge_load * edge_threads, speed=edge_speed),
        "cloud": TierState(
            "cloud",
            cloud_threads,
            cloud_load * cloud_threads,
            speed=cloud_speed,
            link=Link.parse(cloud_link, name_of("cloud_link")),
        ),
    }
    live = {t: states[t] for t in up}
    cfg = settings or _settings()
    if isinstance(model, str) and model in ModelPool(cfg.pool).families():
        return _member_plan(model, cfg, lambda o, w: decide(o, device, live, w), asked or wants())
    mv = model if not isinstance(model, str) else _model(model, cfg)
    return decide(Options.of(mv), device, live, asked or wants())


def _member_plan(
    family: str, cfg: Settings, decide: Callable[[Options, Wants], Decision], asked: Wants
) -> Decision:
    """The plan of the family member the planner would run (``planner.members``), with
    every other member's best plan."""
    from splitmq.planner import Options
    from splitmq.planner.members import Member, best_plans, choose
    from splitmq.shared.model.pool import ModelPool

    members = {}
    for mv in ModelPool(cfg.pool).family(family):
        if mv.manifest.quality is None:
            raise UserError(f"{mv.name} is not measured: run `splitmq family measure {family}`")
        members[mv.name] = Member(Options.of(mv), mv.manifest.quality)
    choices = best_plans(members, asked, decide)
    if not choices:
        raise UserError(f"no member of family {family} meets the accuracy floor and limits")
    chosen = choose(choices, None, 0.0)
    best = choices[chosen].decision
    return replace(
        best,
        plan=best.plan.model_copy(update={"family": family}),
        members={n: c.decision.plan for n, c in choices.items() if n != chosen},
    )


class Device:
    """A device inside an application (see module docstring). Use as a context manager.

    Without ``plan`` it follows the planner's plans for ``model`` (a model family's name:
    the planner chooses which member runs); a ``Plan`` (or a plan
    JSON file, as ``splitmq plan --json`` writes its ``plan``) pins one. ``broker`` and
    ``pool`` default to the settings (``SPLITMQ_BROKER``, ``SPLITMQ_POOL``, ``.env``);
    ``device_id`` to the MQTT user name (``SPLITMQ_USERNAME``), else a random ``app-...``.
    """

    def __init__(
        self,
        model: str = "efficientnet-lite0",
        *,
        broker: str | None = None,
        pool: str | Path | None = None,
        device_id: str | None = None,
        plan: Plan | str | Path | None = None,
        asked: Wants | None = None,
        window: int = 4,
        timeout_s: float = 10.0,
        fallback: Fallback = "local",
        settings: Settings | None = None,
    ) -> None:
        from splitmq.device.follow import starting_plan
        from splitmq.device.runtime import Device as DeviceRuntime
        from splitmq.device.runtime import default_id
        from splitmq.shared.model.pool import ModelPool
        from splitmq.shared.protocol.plan import Plan, load_plan_file

        cfg = settings or _settings(broker=broker, pool=pool)
        if plan is None:
            pinned = None
        elif isinstance(plan, Plan):
            pinned = plan
        else:
            pinned = load_plan_file(Path(plan))
        start, family = (pinned, None) if pinned else starting_plan(ModelPool(cfg.pool), model)
        self.runtime: DeviceRuntime = DeviceRuntime(
            cfg,
            device_id or default_id(cfg, "app"),
            start,
            window=window,
            timeout_s=timeout_s,
            wants=asked or wants(),
            follow=pinned is None,
            family=family,
            fallback=fallback,
        )

    def __enter__(self) -> Device:
        self.runtime.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runtime.close()

    @property
    def id(self) -> str:
        return self.runtime.id

    @property
    def plan(self) -> Plan:
        """The plan in force now (the planner's, once one arrived)."""
        return self.runtime.plan

    def infer(self, image: ImageLike, timeout: float | None = None) -> Answer:
        """The answer for one image; ``InferenceFailed`` when it has none. ``timeout``
        (seconds) is a deadline, outages included: past it the device answers itself
        (``fallback="local"``, the default; ``Answer.fallback`` says why) or the request
        fails as ``deadline`` (``fallback="fail"``)."""
        return self.runtime.infer(as_frame(image), timeout)

    def submit(self, image: ImageLike) -> Future[Answer]:
        """A future of the answer; blocks while the window of requests in flight is full."""
        return self.runtime.submit(as_frame(image))


def as_frame(image: ImageLike) -> np.ndarray:
    """An HxW(xC) array from any ``ImageLike`` (the model's preprocessing does the rest)."""
    from splitmq.shared.model.preprocess import read_image

    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, str | Path):
        try:
            data = Path(image).expanduser().read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read the image {image}: {exc.strerror}") from None
        image = read_image(data, str(image))
    elif isinstance(image, bytes):
        image = read_image(image)
    if not isinstance(image, Image.Image):
        raise UserError(f"an image is a path, bytes, a PIL image or an array, not {image!r}")
    return np.asarray(image.convert("RGB"))


def _settings(**given: Any) -> Settings:
    from splitmq.shared.settings import Settings

    return Settings.given(**given)


def _model(ref: str, cfg: Settings) -> ModelVersion:
    from splitmq.shared.model.pool import ModelPool, parse_ref

    return ModelPool(cfg.pool).get(*parse_ref(ref))


def _rate(value: str | float, what: str, parse: Callable[[str, str], float]) -> float:
    return parse(value, what) if isinstance(value, str) else float(value)
