"""The access log: one JSON object per line, to a file and optionally stdout. Never bodies or secrets."""

from __future__ import annotations

import sys
import threading
from io import FileIO
from pathlib import Path
from typing import Any

import orjson

from wardgate.cluster.observability.record import AccessRecord


class AccessLog:
    """Append-only JSON-lines writer of access records (or, from the cluster's own endpoints, JSON-ready dicts)."""

    def __init__(self, path: Path | None, stdout: bool = False) -> None:
        # Unbuffered bytes: one write() per line, as line buffering did, without a text layer in between.
        self._file: FileIO | None = path.open("ab", buffering=0) if path is not None else None
        self._stdout = stdout
        self._lock = threading.Lock()

    def write(self, entry: AccessRecord | dict[str, Any]) -> None:
        if isinstance(entry, AccessRecord):
            values = entry.as_dict()
        else:
            values = {k: v for k, v in entry.items() if v is not None}
        line = orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._file is not None:
                view = memoryview(line)
                while view:
                    view = view[self._file.write(view) or 0 :]
            if self._stdout:
                sys.stdout.write(line.decode())
                sys.stdout.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
