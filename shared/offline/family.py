"""How good each member of a model family is: measured on the same images, never assumed.

Every member runs unsplit on the same images, each through its own preprocessing
(members may take different input sizes). With labels, a member's accuracy is
measured and the most accurate member is the family's reference; without, the
reference is the member with the most multiply-accumulates (the largest network),
and every member's agreement with it is what is known of its quality. Each
member's manifest keeps the result (``Quality``), naming the reference, so the
planner can spend part of the accuracy floor on a cheaper member.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from splitmq.shared.errors import UserError
from splitmq.shared.model.graph import make_session, run_batched
from splitmq.shared.model.manifest import Quality
from splitmq.shared.model.outputs import class_of
from splitmq.shared.model.pool import ModelPool, ModelVersion
from splitmq.shared.offline import samples
from splitmq.shared.offline.samples import Samples

EVALUATION = 2000  # samples (or all a folder holds)


def members_of(pool: ModelPool, family: str) -> list[ModelVersion]:
    """The family's members, checked to be classifiers that can be compared."""
    members = pool.family(family)
    for mv in members:
        if mv.manifest.output.task != "classify":
            raise UserError(
                f"family {family}: {mv.name} is a {mv.manifest.output.task} model; members "
                "are compared by their top-1 class, so a family holds classifiers"
            )
    return members


def measure(
    members: list[ModelVersion],
    sample: Callable[[ModelVersion], Samples],
    threads: int = 1,
) -> dict[str, Quality]:
    """Each member's ``Quality`` on the samples ``sample(member)`` gives it (the same
    images, in each member's own preprocessing)."""
    answers: dict[str, np.ndarray] = {}
    labels, data = None, ""
    for mv in members:
        found = sample(mv)
        session = make_session(mv.model_bytes, threads)
        final = mv.finals[0]
        scores = run_batched(session, [final], mv.cuts[0].name, found.inputs, mv.graph.batch)[0]
        answers[mv.name] = class_of(scores)
        labels, data = found.labels, found.source
    accuracy = {
        name: None if labels is None else float((top1 == labels).mean())
        for name, top1 in answers.items()
    }
    size = {mv.name: mv.cuts[-1].macs_before for mv in members}
    reference = max(answers, key=lambda n: (accuracy[n] or 0.0, size[n]))
    return {
        name: Quality(
            reference=reference,
            agreement=round(float((top1 == answers[reference]).mean()), 4),
            accuracy=None if (right := accuracy[name]) is None else round(right, 4),
            samples=len(top1),
            data=data,
        )
        for name, top1 in answers.items()
    }


def real(count: int = EVALUATION) -> Callable[[ModelVersion], Samples]:
    """The held-out real samples ``splitmq calibrate`` evaluates a member on."""
    return lambda mv: samples.real_samples(mv, 1, count)[1]


def folder(path: Path) -> Callable[[ModelVersion], Samples]:
    """A user's folder of images: all of them, unlabelled."""

    def sample(mv: ModelVersion) -> Samples:
        found = samples.folder_samples(mv, path)
        both = (found.calibration, found.evaluation)
        pixels = [s.pixels for s in both if s.pixels is not None]
        return Samples(
            np.concatenate([s.inputs for s in both]),
            np.concatenate(pixels) if pixels else None,
            None,
            f"images in {path}",
        )

    return sample


def save(members: list[ModelVersion], quality: dict[str, Quality]) -> None:
    for mv in members:
        mv.update(_setting("quality", quality[mv.name].model_dump()))


def _setting(key: str, value: object) -> Callable[[dict], None]:
    return lambda raw: raw.__setitem__(key, value)


def measure_families(pool: ModelPool, threads: int = 1) -> dict[str, str]:
    """Measure every family of classifiers in ``pool`` whose members are all calibrated
    and one of which is not measured yet (a new member changes what the others are held
    against); returns each measured family's reference."""
    measured = {}
    for name in pool.families():
        members = pool.family(name)
        ready = all(mv.manifest.calibration is not None for mv in members)
        if ready and any(mv.manifest.quality is None for mv in members):
            quality = measure(members_of(pool, name), real(), threads)
            save(members, quality)
            measured[name] = next(iter(quality.values())).reference
    return measured
