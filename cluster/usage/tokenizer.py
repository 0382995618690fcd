"""Offline token counts for estimates: quicktok's bundled o200k encoding (no download at run time), or about
four bytes a token where quicktok is not installed. Counts made here are marked `estimated`."""

from __future__ import annotations

import logging
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
    """Counts tokens. The encoding takes about a second to load: `load()` runs once per process, in a thread
    beside the request path (the meter's task); until it is loaded, counts are by length."""

    def __init__(self) -> None:
        self._encoding: _Encoding | None = None

    def load(self) -> None:
        try:
            import quicktok

            self._encoding = quicktok.get_encoding("o200k_base")
        except Exception as exc:  # an estimate by length is still an estimate
            log.warning("quicktok unavailable (%s); token estimates use ~4 bytes a token", exc)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._encoding is None or len(text) > MAX_COUNTED:
            return len(text.encode()) // 4 + 1
        return len(self._encoding.encode(text))

    def count_prompt(self, text: str) -> int:
        return self.count(text) + MESSAGE_OVERHEAD
