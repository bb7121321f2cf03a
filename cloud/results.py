"""The cloud's results store: every answer the cloud gave, one JSON line each.

Appending whole lines under a lock keeps the file readable by `tail -f` and
`jq` while the worker runs; nothing is kept in memory.
"""

from __future__ import annotations

import threading
from pathlib import Path

from splitmq.shared.errors import UserError
from splitmq.shared.protocol.results import Result, pack_result


class ResultsStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        except OSError as exc:
            raise UserError(f"cannot open the results store {path}: {exc.strerror}") from exc
        self._lock = threading.Lock()

    def add(self, result: Result) -> None:
        line = pack_result(result) + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
