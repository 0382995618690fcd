"""Tunnel addresses: the settings of the tunnel network, the allocator, and who holds an address.

    connect ─▶ AddressAllocator.bind(session, key)
               ─▶ pick a free IPv4 and IPv6 from the cache ─▶ commit [lease(s), Session update] atomically
               ─▶ Propagation.settle: every worker enforces it (the agents see the key on their watch)
               ─▶ Conflict (another commit took the address, or changed the Session) ─▶ catch up, pick again
    tunnel request ─▶ TunnelIdentities.identify(source address) ─▶ the live CLIENT Session holding it

Uniqueness is the store's: an AddressLease is named after its address, so two commits that claim one
address cannot both succeed (WireGuard itself would silently move the address to the newer peer). A lease
is held while its Session lives and is taken over (optimistically, by resourceVersion) once it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wardgate.cluster.errors import Conflict, Forbidden, NotFound, Unauthenticated, Unavailable
from wardgate.cluster.identity.authenticate import Identity
from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.node import AddressLease, lease_name
from wardgate.cluster.resources.session import Session, SessionType
from wardgate.cluster.resources.types import Duration
from wardgate.cluster.resources.user import User
from wardgate.cluster.resources.wire import TunnelNetwork
from wardgate.cluster.store import Create, Op, Store, Update
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.propagation import Propagation

log = logging.getLogger(__name__)

_V6_SEARCH_SPAN = 1 << 24
"""How far into an IPv6 prefix random starting points go (a /64 is far larger than any cluster)."""


class TunnelSettings(BaseModel):
    """`[tunnel]` in cluster.toml: client-based access. The first address of each range is the node's
    gateway address (HTTP on `httpPort`, DNS on 53); clients get the others."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    interface: str = Field(default="wardgate0", min_length=1, max_length=15)
    """The node agent's WireGuard interface: the tunnel listener accepts connections arriving on it only."""
    ipv4_range: IPv4Network = IPv4Network("100.64.0.0/10")
    ipv6_prefix: IPv6Network = IPv6Network("fd77:6172:6467::/64")
    http_port: int = Field(default=80, ge=1, le=65535)
    dns_label: str = Field(default="local", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Private names are `<service>.<dns_label>.<domain>`."""
    session_ttl: Duration = 12 * 3600.0
    """Lifetime of a CLIENT Session made by `wardgate login` (never beyond its credential's expiry)."""
    access_token_ttl: Duration = 3600.0

    @field_validator("ipv4_range")
    @classmethod
    def _private_v4(cls, value: IPv4Network) -> IPv4Network:
        if value.is_global or value.prefixlen > 30:
            raise ValueError(f"{value} must be a non-global range of /30 or larger (default: CGNAT 100.64.0.0/10)")
        return value

    @field_validator("ipv6_prefix")
    @classmethod
    def _ula_v6(cls, value: IPv6Network) -> IPv6Network:
        if not value.subnet_of(IPv6Network("fc00::/7")) or value.prefixlen > 120:
            raise ValueError(f"{value} must be a ULA prefix (inside fc00::/7) of /120 or larger")
        return value

    def network(self, domain: str) -> TunnelNetwork:
        return TunnelNetwork(
            ipv4_range=str(self.ipv4_range),
            ipv6_prefix=str(self.ipv6_prefix),
            gateway_ipv4=str(self.ipv4_range[1]),
            gateway_ipv6=str(self.ipv6_prefix[1]),
            dns_zone=f"{self.dns_label}.{domain}",
            http_port=self.http_port,
        )


def session_is_live(session: Session, now: float | None = None) -> bool:
    return session.spec.expires_at.timestamp() > (now if now is not None else time.time())


def connected_sessions(cache: ResourceCache, now: float | None = None) -> list[Session]:
    """CLIENT Sessions that are live, have a WireGuard key and both addresses, and whose user and
    credential still stand: exactly the Sessions that may have a tunnel."""
    found = []
    for session in cache.list_kind("Session"):
        if not isinstance(session, Session) or session.spec.type is not SessionType.CLIENT:
            continue
        spec = session.spec
        if not (spec.wg_public_key and spec.tunnel_ipv4 and spec.tunnel_ipv6 and session_is_live(session, now)):
            continue
        if _standing_problem(cache, session) is None:
            found.append(session)
    return found


def _standing_problem(cache: ResourceCache, session: Session) -> str | None:
    user = cache.get("User", session.spec.user)
    if not isinstance(user, User):
        return f"user {session.spec.user!r} no longer exists"
    if user.spec.is_disabled:
        return f"user {session.spec.user!r} is disabled"
    if session.spec.credential is not None:
        credential = cache.get("Credential", session.spec.credential)
        if not isinstance(credential, Credential) or credential.spec.is_disabled:
            return f"credential {session.spec.credential!r} of the session was revoked"
    return None


class AddressAllocator:
    """Gives CLIENT Sessions their tunnel addresses and records their WireGuard key (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        cache: ResourceCache,
        propagation: Propagation,
        settings: TunnelSettings,
        attempts: int = 32,
    ) -> None:
        self._store = store
        self._cache = cache
        self._propagation = propagation
        self._settings = settings
        self._attempts = attempts

    async def bind(self, name: str, wg_public_key: str | None) -> Session:
        """Set the Session's WireGuard key (None: disconnected) and, the first time, its two addresses."""
        for attempt in range(self._attempts):
            session = self._cache.get("Session", name)
            if not isinstance(session, Session):
                raise Unauthenticated(f"session {name!r} was revoked or has ended")
            if session.spec.type is not SessionType.CLIENT:
                raise Forbidden(f"session {name!r} is {session.spec.type.value}: only CLIENT sessions get a tunnel")
            if not session_is_live(session):
                raise Unauthenticated(f"session {name!r} expired")
            if wg_public_key is not None and self._key_taken(name, wg_public_key):
                # SECURITY: two peers with one key would merge their allowed IPs (the agent refuses both anyway).
                raise Conflict("this WireGuard key belongs to another session; connect with a fresh key pair")
            ops: list[Op] = []
            spec: dict[str, Any] = {"wg_public_key": wg_public_key}
            if wg_public_key is not None:
                for version, field in ((4, "tunnel_ipv4"), (6, "tunnel_ipv6")):
                    if getattr(session.spec, field) is None:
                        address, op = self._claim(version, session, attempt)
                        spec[field] = address
                        ops.append(op)
            if all(getattr(session.spec, k) == v for k, v in spec.items()):
                return session
            updated = session.model_copy(update={"spec": session.spec.model_copy(update=spec)})
            ops.append(Update(updated.with_metadata(resource_version=session.metadata.resource_version)))
            try:
                results = await self._store.commit(ops)
            except (Conflict, NotFound) as exc:
                log.info("address allocation for session %s raced (%s); retrying", name, exc)
                await self._catch_up(attempt)
                continue
            stored = results[-1]
            assert isinstance(stored, Session)
            await self._propagation.settle(int(stored.metadata.resource_version or 0))
            return stored
        raise Unavailable(f"could not allocate tunnel addresses for session {name!r}: too many concurrent changes")

    def _key_taken(self, name: str, wg_public_key: str) -> bool:
        return any(
            isinstance(other, Session)
            and other.metadata.name != name
            and other.spec.wg_public_key == wg_public_key
            and session_is_live(other)
            for other in self._cache.list_kind("Session")
        )

    async def _catch_up(self, attempt: int) -> None:
        await self._propagation.settle(await self._store.revision())
        await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))

    def _claim(self, version: int, session: Session, attempt: int) -> tuple[str, Op]:
        network: IPv4Network | IPv6Network = self._settings.ipv4_range if version == 4 else self._settings.ipv6_prefix
        leases = {
            lease.spec.address: lease
            for lease in self._cache.list_kind("AddressLease")
            if isinstance(lease, AddressLease) and ip_address(lease.spec.address).version == version
        }
        holders = {s.metadata.name: s.metadata.uid for s in self._cache.list_kind("Session")}
        first, last = _allocatable(network)
        span = last - first + 1
        start = 0 if attempt == 0 else random.randrange(min(span, _V6_SEARCH_SPAN))
        for step in range(min(span, len(leases) + 1)):
            address = str(network[first + (start + step) % span])
            lease = leases.get(address)
            if lease is None:
                return address, Create(_lease(address, session))
            if holders.get(lease.spec.session, "gone") != lease.spec.session_uid:
                taken = _lease(address, session).with_metadata(resource_version=lease.metadata.resource_version)
                return address, Update(taken)
        raise Unavailable(f"the tunnel range {network} has no free address left")


def _allocatable(network: IPv4Network | IPv6Network) -> tuple[int, int]:
    """Offsets of the client addresses: after the network address and the gateway, before IPv4 broadcast."""
    last = network.num_addresses - (2 if network.version == 4 else 1)
    return 2, last


def _lease(address: str, session: Session) -> AddressLease:
    return AddressLease.model_validate(
        {
            "kind": "AddressLease",
            "metadata": {"name": lease_name(address), "managedBy": "cluster"},
            "spec": {"address": address, "session": session.metadata.name, "sessionUid": session.metadata.uid},
        }
    )


def _normalise(remote: str | None) -> str | None:
    if not remote:
        return None
    try:
        parsed = ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


class TunnelIdentities:
    """Who is behind a tunnel source address: an index over the cache, rebuilt after it changes.

    Trusting the source address is sound only for connections that arrived on the WireGuard interface
    (cryptokey routing drops any packet whose source is not its peer's allowed IP); the tunnel
    listener binds to that interface so nothing else reaches it.
    """

    def __init__(self, cache: ResourceCache) -> None:
        self._cache = cache
        self._index: dict[str, str | None] = {}
        self._stale = True
        cache.add_listener(self._mark)

    def _mark(self, events: Iterable[object]) -> None:
        self._stale = True

    def _rebuild(self) -> None:
        index: dict[str, str | None] = {}
        for session in self._cache.list_kind("Session"):
            if not isinstance(session, Session) or session.spec.type is not SessionType.CLIENT:
                continue
            for address in (session.spec.tunnel_ipv4, session.spec.tunnel_ipv6):
                key = _normalise(address)
                if key is not None:
                    # Two Sessions claiming one address cannot happen through the allocator; if the store was
                    # edited by hand, neither is trusted.
                    index[key] = None if key in index else session.metadata.name
        self._index, self._stale = index, False

    def identify(self, remote: str | None) -> Identity:
        """The Identity of the live, connected CLIENT Session holding `remote`, else Unauthenticated."""
        if self._stale:
            self._rebuild()
        address = _normalise(remote)
        name = self._index.get(address) if address is not None else None
        session = self._cache.get("Session", name) if name else None
        if not isinstance(session, Session):
            raise Unauthenticated(f"no session holds tunnel address {address}")
        if not session_is_live(session):
            raise Unauthenticated(f"session {name!r} expired")
        if not session.spec.wg_public_key:
            raise Unauthenticated(f"session {name!r} is disconnected")
        problem = _standing_problem(self._cache, session)
        if problem is not None:
            raise Unauthenticated(problem)
        user = self._cache.get("User", session.spec.user)
        assert isinstance(user, User)
        credential = self._cache.get("Credential", session.spec.credential) if session.spec.credential else None
        return Identity(user, session, credential if isinstance(credential, Credential) else None)
