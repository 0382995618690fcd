"""Short-lived values the gateway hands to a client and must get back unchanged: sealed (AES-256-GCM).

Every node and worker derives the same key (HKDF-SHA256 of the cluster's store key, one key per purpose),
so a value sealed by one worker opens on any other, and no process keeps it in memory. The associated data
binds a value to its purpose and to a `binding` string (a login's `state`, a Service's name): a value of one
login or Service does not open for another. Expiry is wall-clock time, carried inside the ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE = 12
MAX_SEALED_LENGTH = 8192
"""Longer text is refused before it is decoded (a cookie or header is far shorter)."""


class SealedError(Exception):
    """A sealed value did not open: `reason` (for the log) says whether it is malformed, forged or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SealedValues:
    """Seals JSON objects into URL-safe text for one `purpose`, and opens them (see the module docstring)."""

    def __init__(self, cluster_key: bytes, purpose: str, *, clock: Callable[[], float] = time.time) -> None:
        if len(cluster_key) != 32:
            raise ValueError("the cluster key must be 32 bytes")
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"wardgate sealed value: " + purpose.encode()).derive(
            cluster_key
        )
        self._aead = AESGCM(key)
        self._purpose = purpose.encode()
        self._clock = clock

    def _aad(self, binding: str) -> bytes:
        return self._purpose + b"\0" + binding.encode()

    def seal(self, value: dict[str, Any], binding: str, ttl_seconds: float) -> str:
        """`value` (JSON-serialisable), readable only through `open(…, binding)` until `ttl_seconds` pass."""
        plaintext = orjson.dumps({"exp": int(self._clock() + ttl_seconds), "v": value})
        nonce = os.urandom(_NONCE)
        sealed = _VERSION + nonce + self._aead.encrypt(nonce, plaintext, self._aad(binding))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, text: str, binding: str) -> dict[str, Any]:
        """The value sealed for `binding`; SealedError when it is malformed, forged, altered or expired."""
        if not text or len(text) > MAX_SEALED_LENGTH or not text.isascii():
            raise SealedError("sealed value malformed (empty, too long or not ASCII)")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise SealedError("sealed value malformed (not base64url)") from None
        if raw[:1] != _VERSION or len(raw) < 1 + _NONCE + 16:
            raise SealedError("sealed value malformed (unknown format)")
        try:
            plaintext = self._aead.decrypt(raw[1 : 1 + _NONCE], raw[1 + _NONCE :], self._aad(binding))
        except InvalidTag:
            raise SealedError("sealed value forged, altered, or sealed for something else") from None
        document = orjson.loads(plaintext)
        if self._clock() > document["exp"]:
            raise SealedError("sealed value expired")
        value: dict[str, Any] = document["v"]
        return value
