"""The access log: one JSON object per line, to a file and optionally stdout. Never bodies or secrets."""

from __future__ import annotations

import sys
import threading
from io import BufferedWriter
from pathlib import Path
from typing import Any

import orjson

from wardgate.cluster.observability.record import AccessRecord


class AccessLog:
    """Append-only JSON-lines writer of access records (or, from the cluster's own endpoints, JSON-ready dicts)."""

    def __init__(self, path: Path | None, stdout: bool = False) -> None:
        # Bytes, flushed per line (one write() each, as line buffering did), without a text layer in between.
        self._file: BufferedWriter | None = path.open("ab") if path is not None else None
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
                self._file.write(line)
                self._file.flush()
            if self._stdout:
                sys.stdout.write(line.decode())
                sys.stdout.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
