"""How a resource is stored: a JSON document, sealed (AES-GCM, bound to kind/name) for secret-bearing kinds.

Shared by the SQLite and PostgreSQL stores, so a document means the same in both.
"""

from __future__ import annotations

from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.resources.kinds import AnyResource, from_document, to_document
from wardgate.cluster.store.sealing import SEALED_KINDS, Sealer


def encode(resource: AnyResource, sealer: Sealer | None) -> tuple[bool, bytes]:
    """(sealed, body) for a row."""
    body = orjson.dumps(to_document(resource, reveal=True))
    if resource.kind in SEALED_KINDS:
        if sealer is None:
            raise Unavailable(f"the store has no key to seal {resource.kind} data")
        return True, sealer.seal(body, f"{resource.kind}/{resource.metadata.name}".encode())
    return False, body


def decode(kind: str, name: str, sealed: bool, body: bytes, sealer: Sealer | None) -> AnyResource:
    if sealed:
        if sealer is None:
            raise Unavailable(f"the store has no key to open {kind} data")
        try:
            body = sealer.open(body, f"{kind}/{name}".encode())
        except (InvalidTag, ValueError) as exc:
            raise Unavailable(f"cannot open sealed {kind}/{name}: wrong store key or damaged data") from exc
    doc: dict[str, Any] = orjson.loads(body)
    return from_document(doc)
