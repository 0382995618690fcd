"""Sealed values: they open on any holder of the cluster key, for their purpose and binding, until they expire."""

from __future__ import annotations

import base64
import os

import pytest

from wardgate.cluster.identity.sealed import SealedError, SealedValues

KEY = os.urandom(32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_value_opens_on_another_process_with_the_same_key() -> None:
    sealed = SealedValues(KEY, "browser login").seal({"rd": "https://svc.example/", "n": 1}, "state-1", 600)
    assert SealedValues(KEY, "browser login").open(sealed, "state-1") == {"rd": "https://svc.example/", "n": 1}
    assert "svc.example" not in base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)).decode("latin-1")


@pytest.mark.parametrize(
    ("key", "purpose", "binding"),
    [
        (os.urandom(32), "browser login", "state-1"),  # another cluster
        (KEY, "mcp session", "state-1"),  # another purpose
        (KEY, "browser login", "state-2"),  # another login's state (login CSRF)
    ],
)
def test_a_value_does_not_open_elsewhere(key: bytes, purpose: str, binding: str) -> None:
    sealed = SealedValues(KEY, "browser login").seal({"user": "alice"}, "state-1", 600)
    with pytest.raises(SealedError, match="forged, altered, or sealed for something else"):
        SealedValues(key, purpose).open(sealed, binding)


def test_every_altered_byte_is_refused() -> None:
    values = SealedValues(KEY, "p")
    raw = bytearray(base64.urlsafe_b64decode(values.seal({"user": "alice"}, "b", 60) + "=="))
    for i in range(1, len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 0x01
        with pytest.raises(SealedError):
            values.open(base64.urlsafe_b64encode(altered).rstrip(b"=").decode(), "b")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "malformed"),
        ("x" * 9000, "malformed"),
        ("é", "malformed"),
        ("not*base64", "malformed"),
        ("AAAA", "unknown format"),
        (base64.urlsafe_b64encode(b"\x02" + bytes(40)).decode(), "unknown format"),
    ],
)
def test_malformed_values_are_refused(text: str, reason: str) -> None:
    with pytest.raises(SealedError, match=reason):
        SealedValues(KEY, "p").open(text, "b")


def test_a_value_expires() -> None:
    clock = Clock()
    values = SealedValues(KEY, "p", clock=clock)
    sealed = values.seal({"user": "alice"}, "b", 600)
    clock.now += 600
    assert values.open(sealed, "b") == {"user": "alice"}
    clock.now += 1
    with pytest.raises(SealedError, match="expired"):
        values.open(sealed, "b")


def test_the_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SealedValues(b"short", "p")
