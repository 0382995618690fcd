"""Node and AddressLease: the kinds behind client-based access, written by the cluster, never applied.

A Node is what a node agent registered (its WireGuard public key and where clients reach it). An
AddressLease holds one tunnel address for one Session: its name is derived from the address, so the
store's (kind, name) uniqueness is what keeps two Sessions from ever holding the same address.
"""

from __future__ import annotations

import base64
import binascii
from ipaddress import ip_address
from typing import Annotated

from pydantic import AfterValidator, Field

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource


def check_wg_key(value: str) -> str:
    """A WireGuard public key as `wg pubkey` prints it: base64 of 32 bytes."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a WireGuard key is base64 (as `wg pubkey` prints it)") from None
    if len(raw) != 32:
        raise ValueError(f"a WireGuard key is 32 bytes, this one is {len(raw)}")
    return value


def check_ip(value: str) -> str:
    try:
        return str(ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


WgKey = Annotated[str, AfterValidator(check_wg_key)]
IpAddress = Annotated[str, AfterValidator(check_ip)]


def lease_name(address: str) -> str:
    """`100.64.0.2` -> `ipv4-100-64-0-2`; `fd00::2` -> `ipv6-fd00-0000-...-0002` (always a DNS label)."""
    parsed = ip_address(address)
    if parsed.version == 4:
        return "ipv4-" + str(parsed).replace(".", "-")
    return "ipv6-" + parsed.exploded.replace(":", "-")


class NodeSpec(Model):
    """A node agent's registration. `endpoint` (`host:port`) is what clients dial; when absent, clients
    dial the host they reach the cluster at, on `listenPort`."""

    wg_public_key: WgKey
    listen_port: int = Field(ge=1, le=65535)
    endpoint: str | None = None


class Node(Resource[NodeSpec, EmptyStatus]):
    """A Node resource (registered by `wardgate-agent`)."""

    kind_name = "Node"
    plural = "nodes"
    status: EmptyStatus = Field(default_factory=EmptyStatus)


class AddressLeaseSpec(Model):
    """One tunnel address held by one Session (`sessionUid` tells a Session from a later one of the same name)."""

    address: IpAddress
    session: Name
    session_uid: str | None = None


class AddressLease(Resource[AddressLeaseSpec, EmptyStatus]):
    """An AddressLease resource; free again once its Session is gone."""

    kind_name = "AddressLease"
    plural = "addressleases"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
