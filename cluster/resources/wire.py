"""Bodies on the wire that are not resources: the client's login/connect calls and the agent's peer-set stream.

    wardgate login    POST https://<domain>/v1/client/login    LoginRequest   -> TokenGrant
                      POST .../v1/client/refresh                RefreshRequest -> TokenGrant
    wardgate connect  POST .../v1/client/connect   (Bearer)     ConnectRequest -> ConnectResponse
    wardgate status   GET  .../v1/client/session, /services     -> SessionInfo, ServiceList
    wardgate-agent    POST <admin>/agent/v1/register            NodeRegistration -> TunnelNetwork
                      GET  <admin>/agent/v1/watch               -> one WatchEvent per line (NDJSON)

Shared by cluster, agent and client; field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from wardgate.cluster.resources.meta import Name
from wardgate.cluster.resources.node import IpAddress, WgKey


class Wire(BaseModel):
    """Base of the wire bodies: unknown fields are errors, values are immutable, JSON uses camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )


class LoginRequest(Wire):
    """An AUTH_TOKEN credential's token, exchanged once for a CLIENT Session."""

    auth_token: str = Field(min_length=1, max_length=1024, repr=False)


class RefreshRequest(Wire):
    refresh_token: str = Field(min_length=1, max_length=4096, repr=False)


class TokenGrant(Wire):
    """A Session's tokens: the access token (Bearer, short) and, from login only, the refresh token (the
    Session's lifetime). Revoking the Session invalidates both."""

    session: Name
    user: Name
    session_expires_at: datetime
    access_token: str = Field(repr=False)
    access_token_expires_at: datetime
    refresh_token: str | None = Field(default=None, repr=False)


class TunnelNetwork(Wire):
    """The tunnel's addressing, decided by the cluster: clients get addresses from the ranges; the node
    answers HTTP (Host-based, `<service>.<dnsZone>`) and DNS on the gateway addresses."""

    ipv4_range: str
    ipv6_prefix: str
    gateway_ipv4: IpAddress
    gateway_ipv6: IpAddress
    dns_zone: str
    http_port: int = Field(ge=1, le=65535)


class NodePeer(Wire):
    """A node as a client's WireGuard peer; `endpoint` None means: the host the client reached the cluster at."""

    name: Name
    wg_public_key: WgKey
    listen_port: int = Field(ge=1, le=65535)
    endpoint: str | None = None


class ConnectRequest(Wire):
    """The client's fresh WireGuard public key (its private key never leaves the client)."""

    wg_public_key: WgKey


class ConnectResponse(Wire):
    """The Session's tunnel addresses (kept while it lives), the network, and the nodes to peer with
    (the one that answered first)."""

    session: Name
    user: Name
    expires_at: datetime
    tunnel_ipv4: IpAddress
    tunnel_ipv6: IpAddress
    network: TunnelNetwork
    nodes: list[NodePeer]


class SessionInfo(Wire):
    session: Name
    user: Name
    type: str
    expires_at: datetime
    tunnel_ipv4: str | None = None
    tunnel_ipv6: str | None = None
    wg_public_key: str | None = None
    nodes: list[NodePeer] = Field(default_factory=list)
    """Every node a connected client may move its tunnel to (the answering node first), as in ConnectResponse."""


class ServiceEntry(Wire):
    """A Service as a connected client reaches it: `url` is its private name on the tunnel."""

    name: Name
    url: str
    is_public: bool


class ServiceList(Wire):
    services: list[ServiceEntry]


class NodeRegistration(Wire):
    """What an agent tells the cluster about its node on start (it becomes the Node resource)."""

    wg_public_key: WgKey
    listen_port: int = Field(ge=1, le=65535)
    endpoint: str | None = None


class PeerEntry(Wire):
    """One connected CLIENT Session as a node peer; the agent removes it at `expiresAt` on its own."""

    session: Name
    user: Name
    wg_public_key: WgKey
    allowed_ips: list[str]
    expires_at: datetime


class PeerSet(Wire):
    """Everything a node agent must make true, as of store `revision`: the peers and the Service names
    its DNS answers for."""

    revision: int
    network: TunnelNetwork
    peers: list[PeerEntry]
    services: list[Name]


class WatchEvent(Wire):
    """One line of the watch stream: a full SNAPSHOT when anything changed, else a HEARTBEAT every few seconds."""

    type: Literal["SNAPSHOT", "HEARTBEAT"]
    peer_set: PeerSet | None = None


class PeerStatus(Wire):
    """One WireGuard peer as the node's device reports it."""

    public_key: WgKey
    session: str | None = None
    last_handshake: datetime | None = None
    rx_bytes: int = Field(default=0, ge=0)
    tx_bytes: int = Field(default=0, ge=0)


class NodeStatus(Wire):
    """What an agent reports every few seconds: its device's peers (for metrics and `get nodes`)."""

    peers: list[PeerStatus] = Field(default_factory=list, max_length=100_000)
