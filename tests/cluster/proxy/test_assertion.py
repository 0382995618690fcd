"""AssertionSigner: the claims, and one signature per caller and audience while it is fresh."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from wardgate.cluster.identity.tokens import SigningKey
from wardgate.cluster.proxy.assertion import LIFETIME, REFRESH_BEFORE, AssertionSigner

ISSUER = "https://wardgate.example.com"
NOW = 1_800_000_000.0


def test_the_assertion_verifies_with_the_cluster_key_and_names_the_caller() -> None:
    key = SigningKey(ed25519.Ed25519PrivateKey.generate())
    token = AssertionSigner(key, ISSUER).assertion("alice", "s1", ("dev", "ml"), "api", now=NOW)
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    claims = jwt.decode(
        token,
        key.public,
        algorithms=["EdDSA"],
        audience="api",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "alice" and claims["sid"] == "s1" and claims["groups"] == ["dev", "ml"]
    assert claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + LIFETIME and claims["jti"]


def test_no_session_no_sid() -> None:
    key = SigningKey(ed25519.Ed25519PrivateKey.generate())
    token = AssertionSigner(key, ISSUER).assertion("bot", None, (), "api", now=NOW)
    claims = jwt.decode(
        token, key.public, algorithms=["EdDSA"], audience="api", options={"verify_exp": False, "verify_iat": False}
    )
    assert "sid" not in claims and claims["groups"] == []


def test_a_fresh_assertion_is_reused_and_renewed_before_it_expires() -> None:
    signer = AssertionSigner(SigningKey(ed25519.Ed25519PrivateKey.generate()), ISSUER)
    first = signer.assertion("alice", "s1", ("dev",), "api", now=NOW)
    assert signer.assertion("alice", "s1", ("dev",), "api", now=NOW + LIFETIME - REFRESH_BEFORE - 1) == first
    assert signer.assertion("alice", "s1", ("dev",), "api", now=NOW + LIFETIME - REFRESH_BEFORE) != first
    assert signer.assertion("alice", "s1", ("dev",), "other", now=NOW) != first
    assert signer.assertion("alice", "s2", ("dev",), "api", now=NOW) != first
    assert signer.assertion("alice", "s1", ("dev", "ops"), "api", now=NOW) != first
