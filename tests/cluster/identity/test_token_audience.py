"""Tokens bound to one resource (RFC 8707): good only where used for that resource, never elsewhere."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from wardgate.cluster.errors import Unauthenticated
from wardgate.cluster.identity.tokens import SigningKey, TokenService

ISSUER = "https://wardgate.test"
DOCS = "https://docs-mcp.wardgate.test/mcp"


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SigningKey(ed25519.Ed25519PrivateKey.generate()), ISSUER)


def test_a_cluster_token_is_good_everywhere(tokens: TokenService) -> None:
    token, _ = tokens.issue("s1", "alice", 60)
    assert tokens.verify(token).audience is None
    assert tokens.verify(token, resource=DOCS).user == "alice"


def test_a_resource_token_is_good_only_at_its_resource(tokens: TokenService) -> None:
    token, _ = tokens.issue("s1", "alice", 60, audience=DOCS)
    for _ in range(2):  # verified, then from the cache of verified tokens
        assert tokens.verify(token, resource=DOCS).audience == DOCS
        with pytest.raises(Unauthenticated, match="not for this resource"):
            tokens.verify(token)
        with pytest.raises(Unauthenticated, match="not for this resource"):
            tokens.verify(token, resource="https://other-mcp.wardgate.test/mcp")
