"""A plan from its parts (cut, codec, tiers, exit), checked against a model version's cut table."""

from __future__ import annotations

from splitmq.shared.codecs import parse_codec
from splitmq.shared.errors import UserError
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.protocol.ids import TIERS
from splitmq.shared.protocol.plan import Plan, check_codec_at
from splitmq.shared.protocol.wire import Hop


def make_plan(
    mv: ModelVersion,
    cut: int,
    codec: str = "raw",
    tier: str = "edge",
    cloud_cut: int | None = None,
    exit_threshold: float | None = None,
    forward_codec: str | None = None,
    reason: str = "static plan",
) -> Plan:
    """Device runs 0 -> cut; ``tier`` continues; with ``cloud_cut`` the edge stops there
    (answering early when an exit head is confident) and the cloud finishes."""
    mv.check_cut(cut)
    _check_codec(codec, cut)
    if tier not in TIERS:
        raise UserError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if cut == mv.last_cut:
        route: tuple[Hop, ...] = ()
    elif cloud_cut is None:
        route = (Hop(tier, None, None),)
    else:
        if tier != "edge":
            raise UserError(f"a cloud cut needs the edge as the first tier, not the {tier}")
        mv.check_cut(cloud_cut)
        if not cut < cloud_cut < mv.last_cut:
            raise UserError(f"the cloud cut must be between {cut + 1} and {mv.last_cut - 1}")
        if exit_threshold is not None and not 0 <= exit_threshold <= 1:
            raise UserError(f"the exit threshold must be in [0, 1], got {exit_threshold}")
        # Input codecs carry pixels: past the edge the tensor is a feature map.
        fwd = forward_codec or ("fp16" if parse_codec(codec).is_input else codec)
        _check_codec(fwd, cloud_cut)
        route = (Hop("edge", cloud_cut, exit_threshold, fwd), Hop("cloud", None, None))
    return Plan(
        model=mv.name,
        version=mv.version,
        cut=cut,
        codec=codec,
        route=route,
        exit=exit_threshold,
        reason=reason,
    )


def _check_codec(codec: str, cut: int) -> None:
    try:
        check_codec_at(codec, cut)
    except ValueError as exc:
        raise UserError(str(exc)) from None
