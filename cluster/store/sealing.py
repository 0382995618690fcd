"""Encryption at rest for stored documents of secret-bearing kinds (AES-256-GCM, key in the cluster home)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_KINDS = frozenset({"Secret"})
_VERSION = b"\x01"


class Sealer:
    """Seals and opens byte strings; the associated data binds a ciphertext to its kind and name."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the store key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        return cls(path.read_bytes())

    @staticmethod
    def generate(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed format")
        return self._aead.decrypt(sealed[1:13], sealed[13:], aad)
