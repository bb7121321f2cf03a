"""Option groups: blocks of options several commands take, declared once.

A group is a decorator. It puts its options into the command's signature in place
of one parameter, so ``--help`` lists them there, and calls the command with the
one value they make. typer builds the command from that signature, so the flags,
their help and their checks are the same in every command that takes the group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from splitmq.shared.protocol.telemetry import Wants

Command = Callable[..., None]


def _option(name: str, annotation: Any, default: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


#: What a device asks of its plan (``Wants``): `splitmq plan` and `splitmq device` take them.
_WANTS = (
    _option(
        "objective",
        Annotated[
            str, typer.Option(help="What a plan minimises: latency, energy or bytes (per request).")
        ],
        "latency",
    ),
    _option(
        "accuracy",
        Annotated[
            float, typer.Option(help="Top-1 agreement floor with the unsplit model.", min=0, max=1)
        ],
        0.99,
    ),
    _option(
        "accuracy_target",
        Annotated[
            float | None,
            typer.Option(
                "--accuracy-target",
                help="Top-1 accuracy to deliver on labelled data: exit thresholds are chosen by "
                "their measured accuracy (`splitmq exits`); --accuracy then judges the codecs.",
                min=0,
                max=1,
            ),
        ],
        None,
    ),
    _option("slo", Annotated[str | None, typer.Option(help="Latency SLO, e.g. 100ms.")], None),
    _option(
        "max_bytes",
        Annotated[
            str | None, typer.Option(help="Byte budget per request on the uplink, e.g. 10kB.")
        ],
        None,
    ),
)
#: The frame rate a running device asks for, part of its ``Wants``.
_FPS = _option(
    "fps",
    Annotated[
        float | None,
        typer.Option(help="Frames per second \\[default: as answers come].", min=0.01),
    ],
    None,
)


def flag(param: str) -> str:
    """A parameter as the command line spells it: ``max_bytes`` -> ``--max-bytes``."""
    return "--" + param.replace("_", "-")


def asks(*, fps: bool = False) -> Callable[[Command], Command]:
    """The options saying what a device asks of its plan (with ``fps``: its frame rate too)
    in place of the command's keyword-only ``asked`` parameter, which gets their
    ``Wants``; errors in the values name the flags."""

    def parse(**given: Any) -> Wants:
        from splitmq.api import wants

        return wants(**given, name_of=flag)

    return _group("asked", (*_WANTS, _FPS) if fps else _WANTS, parse)


def _group(
    name: str, options: Sequence[inspect.Parameter], parse: Callable[..., object]
) -> Callable[[Command], Command]:
    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        params = list(signature.parameters.values())
        at = [p.name for p in params].index(name)
        params[at : at + 1] = options

        @functools.wraps(command)
        def run(**given: Any) -> None:
            value = parse(**{p.name: given.pop(p.name) for p in options})
            command(**given, **{name: value})

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
