"""What every command prints with: the consoles, numbers for humans, JSON, progress bars."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

out = Console(highlight=False)
err = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def phases(bar: Progress, subject: str) -> Callable[[str, int, int], None]:
    """A ``progress(phase, done, total)`` callback: one bar per phase of a long job."""
    tasks: dict[str, TaskID] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(f"{phase} {subject}", total=total)
        bar.update(tasks[phase], completed=done)

    return progress


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=1))
