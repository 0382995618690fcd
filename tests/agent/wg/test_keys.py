"""Keys: codecs, redaction, and byte compatibility with the real `wg genkey` / `wg pubkey` / `wg genpsk`."""

from __future__ import annotations

import pickle
import subprocess

import pytest

from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey


def wg(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize("round_", range(5))
def test_our_public_key_matches_wg_pubkey(round_: int) -> None:
    private = PrivateKey.generate()
    assert wg("pubkey", stdin=private.to_base64() + "\n") == private.public_key().to_base64()


def test_wg_genkey_output_is_read_and_derived_identically() -> None:
    text = wg("genkey")
    private = PrivateKey.from_base64(text + "\n")
    assert private.to_base64() == text
    assert private.public_key() == PublicKey.from_base64(wg("pubkey", stdin=text))


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    for _ in range(20):
        raw = bytes(PrivateKey.generate())
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


def test_wg_genpsk_output_is_a_preshared_key() -> None:
    text = wg("genpsk")
    assert PresharedKey.from_base64(text).to_base64() == text


def test_hex_and_base64_round_trip() -> None:
    private = PrivateKey.generate()
    public = private.public_key()
    assert PrivateKey.from_hex(private.to_hex()) == private
    assert PublicKey.from_hex(public.to_hex()) == public
    assert PublicKey.from_base64(public.to_base64()) == public
    assert len(public.to_hex()) == 64 and len(public.to_base64()) == 44


@pytest.mark.parametrize("cls", [PrivateKey, PresharedKey])
def test_secrets_never_print(cls: type[PrivateKey] | type[PresharedKey]) -> None:
    key = cls.generate()
    for shown in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        assert key.to_base64() not in shown and key.to_hex() not in shown
        assert "<redacted>" in shown


def test_public_keys_print_as_base64() -> None:
    public = PrivateKey.generate().public_key()
    assert str(public) == public.to_base64()
    assert repr(public) == f"PublicKey({public.to_base64()!r})"


def test_equality_and_hashing_are_by_type_and_value() -> None:
    raw = bytes(range(32))
    assert PublicKey(raw) == PublicKey(raw) and hash(PublicKey(raw)) == hash(PublicKey(raw))
    assert PublicKey(raw) != PrivateKey(raw)
    assert PresharedKey(raw) != PrivateKey(raw)
    assert len({PublicKey(raw), PublicKey(raw), PublicKey(bytes(32))}) == 2


def test_keys_survive_pickling() -> None:
    private = PrivateKey.generate()
    assert pickle.loads(pickle.dumps(private)) == private


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 32"),
        ("not base64!", "not base64"),
        ("AAAA", "base64 of 3 bytes"),
        ("A" * 48, "base64 of 36 bytes"),
        ("A" * 42 + "==", "base64 of 31 bytes"),
    ],
)
def test_bad_base64_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PublicKey.from_base64(text)


@pytest.mark.parametrize("text", ["", "00" * 31, "00" * 33, "zz" * 32, "0" * 63])
def test_bad_hex_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PrivateKey.from_hex(text)


def test_raw_length_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        PublicKey(bytes(31))
