"""The session id a client of a one-upstream MCP Service holds: a sealed Pin that any worker opens."""

from __future__ import annotations

import os

from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.proxy.mcp import Pin, SessionPins

KEY = os.urandom(32)
PIN = Pin("alice", "http://10.0.0.7:8000/mcp", "0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def test_a_pin_opens_on_another_worker_and_hides_the_upstream_session() -> None:
    sid = SessionPins(SealedValues(KEY, "mcp session")).seal("docs-mcp", PIN)
    assert SessionPins(SealedValues(KEY, "mcp session")).open("docs-mcp", sid) == (PIN, "")
    assert PIN.session not in sid and "alice" not in sid and "10.0.0.7" not in sid


def test_a_pin_of_another_service_another_cluster_or_altered_does_not_open() -> None:
    pins = SessionPins(SealedValues(KEY, "mcp session"))
    sid = pins.seal("docs-mcp", PIN)
    assert pins.open("other-mcp", sid)[0] is None
    assert SessionPins(SealedValues(os.urandom(32), "mcp session")).open("docs-mcp", sid)[0] is None
    altered = sid[:10] + ("A" if sid[10] != "A" else "B") + sid[11:]
    pin, why = pins.open("docs-mcp", altered)
    assert pin is None and "forged" in why
    assert pins.open("docs-mcp", PIN.session) == (None, "sealed value malformed (unknown format)")


def test_a_session_id_of_a_multi_server_service_is_not_a_pin() -> None:
    sealed = SealedValues(KEY, "mcp session")
    sid = sealed.seal({"user": "alice", "sessions": {"gh": "1"}}, "docs-mcp", 60)
    assert SessionPins(sealed).open("docs-mcp", sid) == (
        None,
        "sealed value is not a session of a one-upstream Service",
    )
