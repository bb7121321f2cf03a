"""The one summary of a run: what ``splitmq device``, the demo and its scenarios report.

Every request of a run ends as a row (``device.report``: an answer, or a
visible failure) or not at all (lost). ``Summary`` adds the rows up: counts
by outcome and by answering tier, retries, a few distinct error messages,
accuracy against true labels when a source has them, and p50/p95 over a
bounded window of latencies (``LatencyWindow``: one percentile method for
every report), so a device that streams for days keeps a small summary.
"""

from __future__ import annotations

from concurrent.futures import Future

from splitmq.device.answers import Answer
from splitmq.device.report import answer_row
from splitmq.shared.errors import SplitMQError
from splitmq.shared.runtime.stats import LatencyWindow

#: Distinct error messages a summary keeps.
MESSAGES = 5


class Summary:
    """What a run did, from its rows (see module docstring).

    ``lost`` counts frames submitted that ended with neither an answer nor an error (0
    unless the run was stopped before its requests ended); the percentiles are over
    the last ``LATENCY_WINDOW`` answers.
    """

    LATENCY_WINDOW = 10_000

    def __init__(self, labels: list[int] | None = None) -> None:
        self.answered = self.failed = self.retries = self.retried = 0
        self.correct = self.cloud_bytes = 0
        self.by_tier: dict[str, int] = {}
        self.messages: set[str] = set()
        self._labels = labels
        self._e2e = LatencyWindow(self.LATENCY_WINDOW)

    def add(self, row: dict) -> None:
        if "error" in row:
            self.failed += 1
            if len(self.messages) < 4 * MESSAGES:
                self.messages.add(row["error"])
            return
        self.answered += 1
        self.retries += row["attempts"] - 1
        self.retried += row["attempts"] > 1
        self.by_tier[row["tier"]] = self.by_tier.get(row["tier"], 0) + 1
        self.cloud_bytes += row["cloud_bytes"]
        if self._labels is not None and row["index"] == self._labels[row["frame"]]:
            self.correct += 1
        self._e2e.add(row["e2e_ms"])

    def add_outcome(self, frame: int, outcome: Answer | SplitMQError | None) -> None:
        """A request's end as ``outcome`` returns it; None (no end) adds nothing: lost."""
        if isinstance(outcome, Answer):
            self.add(answer_row(frame, outcome))
        elif outcome is not None:
            self.add({"frame": frame, "error": str(outcome)})

    def counts(self, submitted: int) -> dict:
        """Frames, answers, errors, lost, error messages, p50/p95 and answers by tier."""
        e2e = self._e2e.summary() or {}
        return {
            "frames": submitted,
            "answered": self.answered,
            "errors": self.failed,
            "lost": submitted - self.answered - self.failed,
            "error_messages": sorted(self.messages)[:MESSAGES],
            "p50_ms": e2e.get("p50_ms"),
            "p95_ms": e2e.get("p95_ms"),
            "by_tier": dict(sorted(self.by_tier.items())),
        }

    def to_json(self, submitted: int, answered_after_failure: int = 0) -> dict:
        """The last line ``splitmq device --json`` prints. ``answered_after_failure``:
        answers that came after their request had failed."""
        counts = self.counts(submitted)
        return {
            "summary": True,
            "frames": submitted,
            "answered": self.answered,
            "failed": self.failed,
            "lost": counts["lost"],
            "retries": self.retries,
            "p50_ms": counts["p50_ms"],
            "p95_ms": counts["p95_ms"],
            "answered_after_failure": answered_after_failure,
            "by_tier": counts["by_tier"],
            "cloud_bytes": self.cloud_bytes,
            "accuracy": self.accuracy(),
        }

    def accuracy(self) -> float | None:
        """Right answers over answers, for a labelled source (None without labels)."""
        if self._labels is None or not self.answered:
            return None
        return round(self.correct / self.answered, 4)


def outcome(future: Future) -> Answer | SplitMQError | None:
    """A request's end: its answer, its failure, or None if it had none within a minute."""
    try:
        return future.result(timeout=60)
    except SplitMQError as exc:
        return exc
    except TimeoutError:
        return None
