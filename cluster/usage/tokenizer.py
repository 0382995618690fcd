"""Offline token counts for estimates: quicktok's bundled o200k encoding (no download at run time), or about
four bytes a token where quicktok is not installed. Counts made here are marked `estimated`."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD = 4
"""Tokens a chat format adds around a prompt (role markers): a small, deliberate overestimate."""
MAX_COUNTED = 64 * 1024
"""Longer texts are estimated by their length: a tokenizer pass runs on the event loop, and one over a
megabyte of prompt would stall every other request of the worker."""


class _Encoding(Protocol):
    def encode(self, text: str) -> list[int]: ...


class Tokenizer:
    """Counts tokens. The encoding takes seconds and about 70 MiB to load, so it is loaded on first need, in a
    thread beside the request path; until it is loaded, counts are by length. A node whose providers report
    usage and whose Quotas count only requests never loads it."""

    def __init__(self) -> None:
        self._encoding: _Encoding | None = None
        self._loading = threading.Lock()
        self._started = False

    def load(self) -> None:
        try:
            import quicktok

            self._encoding = quicktok.get_encoding("o200k_base")
        except Exception as exc:  # an estimate by length is still an estimate
            log.warning("quicktok unavailable (%s); token estimates use ~4 bytes a token", exc)

    def _load_soon(self) -> None:
        with self._loading:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self.load, name="tokenizer-load", daemon=True).start()

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._encoding is None:
            self._load_soon()
            return len(text.encode()) // 4 + 1
        if len(text) > MAX_COUNTED:
            return len(text.encode()) // 4 + 1
        return len(self._encoding.encode(text))

    def count_prompt(self, text: str) -> int:
        return self.count(text) + MESSAGE_OVERHEAD
