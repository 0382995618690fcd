"""The node agent's endpoints on the admin API: node registration and the peer-set watch stream.

    PUT /agent/v1/nodes/{name}  NodeRegistration ─▶ the Node resource ─▶ TunnelNetwork
    GET /agent/v1/watch         ─▶ NDJSON: a SNAPSHOT (PeerSet) now and after every relevant cache change,
                                   a HEARTBEAT when nothing changed for `heartbeat` seconds

The peer set is computed from the watch-fed cache (never the store): every CLIENT Session that is live,
connected and whose user and credential stand. A revoked Session leaves the next snapshot, which the
agent applies at once; expiry the agent enforces itself from `expiresAt`. Callers are authenticated and
authorized by the admin API's middlewares (an agent's credential needs a policy allowing `/agent/v1/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from wardgate.cluster.api.state import PROPAGATION, STORE
from wardgate.cluster.errors import Invalid, NotFound
from wardgate.cluster.identity.addresses import TunnelSettings, connected_sessions
from wardgate.cluster.resources.meta import NAME_PATTERN
from wardgate.cluster.resources.node import Node
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.wire import NodeRegistration, NodeStatus, PeerEntry, PeerSet, WatchEvent
from wardgate.cluster.store import Create, Event, Update
from wardgate.cluster.store.cache import ResourceCache

log = logging.getLogger(__name__)

WATCHED_KINDS = frozenset({"Session", "User", "Credential", "Service"})


class AgentApi:
    """Routes for node agents; `install(app)` adds them (and the shutdown hook) to the admin application."""

    def __init__(self, cache: ResourceCache, settings: TunnelSettings, domain: str, heartbeat: float = 5.0) -> None:
        self._cache = cache
        self._settings = settings
        self._domain = domain
        self._heartbeat = heartbeat
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._status: dict[str, tuple[float, NodeStatus]] = {}
        cache.add_listener(self._on_change)

    def install(self, app: web.Application) -> None:
        app.router.add_put("/agent/v1/nodes/{name}", self.register)
        app.router.add_get("/agent/v1/watch", self.watch)
        app.router.add_put("/agent/v1/nodes/{name}/status", self.report)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        self._stopping.set()
        self._changed.set()

    def _on_change(self, events: Sequence[Event]) -> None:
        if not events or any(event.resource.kind in WATCHED_KINDS for event in events):
            self._changed.set()
            self._changed = asyncio.Event()

    def peer_set(self) -> PeerSet:
        peers = []
        for s in connected_sessions(self._cache):
            try:
                peers.append(
                    PeerEntry(
                        session=s.metadata.name,
                        user=s.spec.user,
                        wg_public_key=s.spec.wg_public_key or "",
                        allowed_ips=[f"{s.spec.tunnel_ipv4}/32", f"{s.spec.tunnel_ipv6}/128"],
                        expires_at=s.spec.expires_at,
                    )
                )
            except ValidationError:
                log.error("session %s has a malformed WireGuard key; it gets no tunnel", s.metadata.name)
        services = [s.metadata.name for s in self._cache.list_kind("Service") if isinstance(s, Service)]
        return PeerSet(
            revision=self._cache.revision,
            network=self._settings.network(self._domain),
            peers=peers,
            services=services,
        )

    async def register(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not NAME_PATTERN.fullmatch(name):
            raise Invalid(f"node name {name!r} is not a DNS label")
        try:
            body = NodeRegistration.model_validate_json(await request.read())
        except ValidationError as exc:
            raise Invalid(f"invalid node registration: {exc.errors(include_url=False)}") from None
        spec = {"wgPublicKey": body.wg_public_key, "listenPort": body.listen_port, "endpoint": body.endpoint}
        node = Node.model_validate({"kind": "Node", "metadata": {"name": name, "managedBy": "agent"}, "spec": spec})
        store = request.app[STORE]
        try:
            current = await store.get("Node", name)
        except NotFound:
            await store.commit([Create(node)])
        else:
            if current.spec != node.spec:
                await store.commit([Update(node.with_metadata(resource_version=current.metadata.resource_version))])
        revision = await store.revision()
        await request.app[PROPAGATION].settle(revision)
        log.info("node %s registered (WireGuard key %s, port %d)", name, body.wg_public_key, body.listen_port)
        return web.json_response(self._settings.network(self._domain).model_dump(mode="json"))

    async def report(self, request: web.Request) -> web.Response:
        """PUT /agent/v1/nodes/{name}/status: the node's WireGuard peers, kept in memory for /metrics."""
        name = request.match_info["name"]
        if not NAME_PATTERN.fullmatch(name):
            raise Invalid(f"node name {name!r} is not a DNS label")
        try:
            status = NodeStatus.model_validate_json(await request.read())
        except ValidationError as exc:
            raise Invalid(f"invalid node status: {exc.errors(include_url=False)}") from None
        self._status[name] = (time.time(), status)
        return web.json_response({"peers": len(status.peers)})

    def wireguard_status(self, stale_after: float = 60.0) -> dict[str, NodeStatus]:
        """The latest report of every node heard from within `stale_after` seconds."""
        now = time.time()
        return {node: status for node, (at, status) in self._status.items() if now - at <= stale_after}

    async def watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await response.prepare(request)
        last: tuple[object, ...] | None = None
        try:
            while not self._stopping.is_set():
                changed = self._changed
                current = self.peer_set()
                key = (current.network, current.peers, current.services)
                event = WatchEvent(type="SNAPSHOT", peer_set=current) if key != last else WatchEvent(type="HEARTBEAT")
                last = key
                await response.write(event.model_dump_json(exclude_none=True).encode() + b"\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await changed.wait()
        except ConnectionError:
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
