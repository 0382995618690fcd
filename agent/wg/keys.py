"""WireGuard keys: X25519 (via `cryptography`), base64 like `wg genkey`/`wg pubkey`, hex for the UAPI.

Private and preshared keys never print their value: `repr`, `str` and f-strings show `<redacted>`;
call `to_base64()` or `to_hex()` where the secret must be written (a wg-quick file, a UAPI `set`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_LENGTH = 32


class _Key:
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LENGTH:
            raise ValueError(f"a WireGuard key is {KEY_LENGTH} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> Self:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except binascii.Error as e:
            raise ValueError(f"{cls.__name__}: not base64") from e
        if len(raw) != KEY_LENGTH:
            raise ValueError(f"{cls.__name__}: base64 of {len(raw)} bytes, expected {KEY_LENGTH}")
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Self:
        if len(text) != 2 * KEY_LENGTH:
            raise ValueError(f"{cls.__name__}: {len(text)} hex digits, expected {2 * KEY_LENGTH}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise ValueError(f"{cls.__name__}: not hex") from e

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def to_hex(self) -> str:
        return self._raw.hex()

    def __bytes__(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Key) or type(other) is not type(self):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))


class _SecretKey(_Key):
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__


class PublicKey(_Key):
    """A peer's Curve25519 public key; safe to log."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"

    def __str__(self) -> str:
        return self.to_base64()


class PrivateKey(_SecretKey):
    """A device's Curve25519 private key, clamped like `wg genkey` output."""

    __slots__ = ()

    @classmethod
    def generate(cls) -> PrivateKey:
        raw = bytearray(os.urandom(KEY_LENGTH))
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        return cls(bytes(raw))

    def public_key(self) -> PublicKey:
        public = X25519PrivateKey.from_private_bytes(self._raw).public_key()
        return PublicKey(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


class PresharedKey(_SecretKey):
    """An optional symmetric key shared by two peers (`wg genpsk`): 32 random bytes."""

    __slots__ = ()

    @classmethod
    def generate(cls) -> PresharedKey:
        return cls(os.urandom(KEY_LENGTH))
