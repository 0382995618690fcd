"""The access log: one JSON object per line, to a file and optionally stdout. Never bodies or secrets."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import orjson

from wardgate.cluster.observability.record import AccessRecord


class AccessLog:
    """Append-only JSON-lines writer of access records (or, from the cluster's own endpoints, JSON-ready dicts)."""

    def __init__(self, path: Path | None, stdout: bool = False) -> None:
        self._file: TextIO | None = path.open("a", buffering=1) if path is not None else None
        self._stdout = stdout
        self._lock = threading.Lock()

    def write(self, entry: AccessRecord | dict[str, Any]) -> None:
        if isinstance(entry, AccessRecord):
            values = entry.as_dict()
        else:
            values = {k: v for k, v in entry.items() if v is not None}
        line = orjson.dumps(values).decode() + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
            if self._stdout:
                sys.stdout.write(line)
                sys.stdout.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
