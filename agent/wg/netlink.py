"""Kernel WireGuard through pyroute2: `KernelDevice` (the generic-netlink family) and `Links` (rtnetlink).

    DeviceConfig ─▶ set_calls() (pure) ─▶ [SetCall] ─▶ WireGuard.set(iface, **call.arguments()), one peer each
    WireGuard.info(iface) ─▶ [message] ─▶ state_from_messages() (pure) ─▶ DeviceState

This is the only module that imports pyroute2. pyroute2 creates a namespace that does not exist when given
its name, so every entry point checks the name first (`names.require_netns`) and opens sockets with flags=0.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface, ip_network
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias

from pyroute2 import AsyncIPRoute, AsyncWireGuard  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, IPNetwork, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError, KernelError
from wardgate.agent.wg.keys import KEY_LENGTH, PresharedKey, PrivateKey, PublicKey
from wardgate.agent.wg.names import check_interface_name, require_netns

MODULE_PATH = Path("/sys/module/wireguard")
_ZERO_PSK = PresharedKey(bytes(KEY_LENGTH))

IPInterface: TypeAlias = IPv4Interface | IPv6Interface


def kernel_module_loaded() -> bool:
    """True when the kernel has WireGuard (built in or loaded), so `KernelDevice` can work."""
    return MODULE_PATH.exists()


@dataclass(frozen=True, slots=True)
class SetCall:
    """One `WireGuard.set` call: device fields and at most one peer.

    `reset` makes the peer's unset fields fall back to their defaults (no preshared key, no keepalive,
    only the listed allowed IPs), as if the peer had just been created.
    """

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peer: PeerConfig | None = None
    reset: bool = False

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments for `WireGuard.set(iface, **arguments)`; keys are base64 (this holds secrets)."""
        arguments: dict[str, Any] = {}
        if self.private_key is not None:
            arguments["private_key"] = self.private_key.to_base64()
        if self.listen_port is not None:
            arguments["listen_port"] = self.listen_port
        if self.fwmark is not None:
            arguments["fwmark"] = self.fwmark
        if self.peer is not None:
            arguments["peer"] = peer_arguments(self.peer, reset=self.reset)
        return arguments


def peer_arguments(peer: PeerConfig, *, reset: bool = False) -> dict[str, Any]:
    """The `peer` dict pyroute2's WireGuard family takes for one `PeerConfig`."""
    arguments: dict[str, Any] = {"public_key": peer.public_key.to_base64()}
    if peer.remove:
        arguments["remove"] = True
        return arguments
    if peer.update_only and not reset:
        arguments["update_only"] = True
    preshared_key = peer.preshared_key if peer.preshared_key is not None or not reset else _ZERO_PSK
    if preshared_key is not None:
        arguments["preshared_key"] = preshared_key.to_base64()
    if peer.endpoint is not None:
        arguments["endpoint_addr"] = str(peer.endpoint.host)
        arguments["endpoint_port"] = peer.endpoint.port
    keepalive = peer.persistent_keepalive if peer.persistent_keepalive is not None or not reset else 0
    if keepalive is not None:
        arguments["persistent_keepalive"] = keepalive
    if peer.replace_allowed_ips or reset:
        arguments["replace_allowed_ips"] = True
    if peer.allowed_ips:
        arguments["allowed_ips"] = [str(network) for network in peer.allowed_ips]
    return arguments


def set_calls(config: DeviceConfig, current_peers: Collection[PublicKey] = ()) -> list[SetCall]:
    """Translate a `DeviceConfig` into `WireGuard.set` calls: the device fields, then one call per peer.

    pyroute2 cannot send `replace_peers`, so it is emulated with `current_peers` (the device's peers now):
    peers the config does not end up with are removed, and a surviving peer is reset on its first mention
    instead of being recreated, which keeps its session and endpoint (the one difference from the kernel's
    own replace: an endpoint the config leaves unset is kept).
    """
    calls: list[SetCall] = []
    if config.private_key is not None or config.listen_port is not None or config.fwmark is not None:
        calls.append(SetCall(config.private_key, config.listen_port, config.fwmark))
    if not config.replace_peers:
        calls.extend(SetCall(peer=peer) for peer in config.peers)
        return calls
    final = _replay_peers(config.peers)
    on_device = set(current_peers) & final
    calls.extend(SetCall(peer=PeerConfig(key, remove=True)) for key in current_peers if key not in final)
    wanted: set[PublicKey] = set()  # the peers the kernel's own replace would have at this point
    for peer in config.peers:
        key = peer.public_key
        if peer.remove:
            if key in on_device:
                calls.append(SetCall(peer=peer))
            wanted.discard(key)
            on_device.discard(key)
        elif key in wanted:
            calls.append(SetCall(peer=peer))
        elif not peer.update_only:
            calls.append(SetCall(peer=peer, reset=key in on_device))
            wanted.add(key)
            on_device.add(key)
    return calls


def _replay_peers(peers: Iterable[PeerConfig]) -> set[PublicKey]:
    """The peers an empty device has after applying `peers` in order."""
    present: set[PublicKey] = set()
    for peer in peers:
        if peer.remove:
            present.discard(peer.public_key)
        elif not peer.update_only or peer.public_key in present:
            present.add(peer.public_key)
    return present


class _Attrs(Protocol):
    def get_attr(self, name: str, default: Any = None) -> Any: ...


def state_from_messages(messages: Iterable[_Attrs]) -> DeviceState:
    """Build a `DeviceState` from the decoded replies of `WireGuard.info` (a big device spans several)."""
    private_key: PrivateKey | None = None
    listen_port = fwmark = 0
    peers: list[PeerState] = []
    for message in messages:
        if (raw_key := message.get_attr("WGDEVICE_A_PRIVATE_KEY")) is not None:
            private_key = PrivateKey.from_base64(_text(raw_key))
        listen_port = message.get_attr("WGDEVICE_A_LISTEN_PORT", listen_port)
        fwmark = message.get_attr("WGDEVICE_A_FWMARK", fwmark)
        for attrs in message.get_attr("WGDEVICE_A_PEERS", None) or ():
            peer = _peer_state(attrs)
            if peers and peers[-1].public_key == peer.public_key:
                # The kernel continues a peer's allowed IPs in the next message when they do not fit.
                previous = peers.pop()
                peer = replace(previous, allowed_ips=previous.allowed_ips + peer.allowed_ips)
            peers.append(peer)
    if private_key is not None and private_key == PrivateKey(bytes(KEY_LENGTH)):
        private_key = None
    return DeviceState(private_key=private_key, listen_port=listen_port, fwmark=fwmark, peers=tuple(peers))


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _peer_state(attrs: _Attrs) -> PeerState:
    preshared = attrs.get_attr("WGPEER_A_PRESHARED_KEY")
    psk = PresharedKey.from_base64(_text(preshared)) if preshared is not None else None
    endpoint = None
    if (raw_endpoint := attrs.get_attr("WGPEER_A_ENDPOINT")) is not None and raw_endpoint["port"]:
        endpoint = Endpoint(ip_address(raw_endpoint["addr"]), raw_endpoint["port"])
    last_handshake = None
    if (handshake := attrs.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")) is not None and handshake["tv_sec"]:
        last_handshake = datetime.fromtimestamp(handshake["tv_sec"], tz=UTC) + timedelta(
            microseconds=handshake["tv_nsec"] // 1000
        )
    allowed: list[IPNetwork] = [
        ip_network(entry["addr"], strict=False) for entry in attrs.get_attr("WGPEER_A_ALLOWEDIPS", None) or ()
    ]
    return PeerState(
        public_key=PublicKey.from_base64(_text(attrs.get_attr("WGPEER_A_PUBLIC_KEY"))),
        preshared_key=None if psk == _ZERO_PSK else psk,
        endpoint=endpoint,
        allowed_ips=tuple(allowed),
        last_handshake=last_handshake,
        rx_bytes=attrs.get_attr("WGPEER_A_RX_BYTES", 0),
        tx_bytes=attrs.get_attr("WGPEER_A_TX_BYTES", 0),
        persistent_keepalive=attrs.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0),
    )


def _kernel_error(action: str, error: NetlinkError) -> KernelError:
    return KernelError(error.code, f"{action}: {error}")


class KernelDevice:
    """A `Device` backed by the kernel's WireGuard, over generic netlink (one request in flight at a time)."""

    def __init__(self, iface: str, netns: str | None = None) -> None:
        self.iface = check_interface_name(iface)
        self.netns = netns
        self._socket: AsyncWireGuard | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> AsyncWireGuard:
        if self._socket is not None:
            return self._socket
        if not kernel_module_loaded():
            raise DeviceUnavailableError("the kernel has no WireGuard module: use wireguard-go (open_device does)")
        require_netns(self.netns)
        wg = AsyncWireGuard(netns=self.netns, flags=0)
        try:
            await wg.setup_endpoint()
        except NetlinkError as e:
            wg.close()
            raise DeviceUnavailableError(f"the WireGuard netlink family is unavailable: {e}") from e
        self._socket = wg
        return wg

    async def state(self) -> DeviceState:
        async with self._lock:
            return await self._read()

    async def _read(self) -> DeviceState:
        wg = await self._connect()
        try:
            messages = [message async for message in await wg.info(self.iface)]
        except NetlinkError as e:
            raise self._error("read", e) from e
        return state_from_messages(messages)

    async def configure(self, config: DeviceConfig) -> None:
        async with self._lock:
            current = [peer.public_key for peer in (await self._read()).peers] if config.replace_peers else []
            wg = await self._connect()
            for call in set_calls(config, current):
                try:
                    await wg.set(self.iface, **call.arguments())
                except NetlinkError as e:
                    raise self._error("configure", e) from e

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _error(self, action: str, error: NetlinkError) -> Exception:
        if error.code in (errno.ENODEV, errno.ENOENT):
            return DeviceUnavailableError(f"no WireGuard interface {self.iface} ({error})")
        return _kernel_error(f"{action} {self.iface}", error)


class Links:
    """Interfaces, addresses and routes in one namespace (rtnetlink); works for kernel and TUN interfaces.

    Use as `async with Links(netns) as links:`; every change is idempotent.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: AsyncIPRoute | None = None

    async def __aenter__(self) -> Self:
        require_netns(self.netns)
        self._ipr = AsyncIPRoute(netns=self.netns, flags=0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def _route(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise RuntimeError("use Links inside `async with`")
        return self._ipr

    async def index(self, iface: str) -> int | None:
        """The interface's index, or None if it does not exist in this namespace."""
        found = await self._route.link_lookup(ifname=check_interface_name(iface))
        return int(found[0]) if found else None

    async def _require(self, iface: str) -> int:
        index = await self.index(iface)
        if index is None:
            where = f"network namespace {self.netns}" if self.netns else "this network namespace"
            raise DeviceUnavailableError(f"no interface {iface} in {where}")
        return index

    async def create_wireguard(self, iface: str) -> bool:
        """Create a kernel WireGuard interface; False if it already existed."""
        if await self.index(iface) is not None:
            return False
        await self._call(f"create {iface}", self._route.link, "add", ifname=iface, kind="wireguard")
        return True

    async def delete(self, iface: str) -> None:
        """Delete the interface if it exists."""
        index = await self.index(iface)
        if index is not None:
            await self._call(f"delete {iface}", self._route.link, "del", index=index, ignore=(errno.ENODEV,))

    async def set_up(self, iface: str, mtu: int | None = None) -> None:
        index = await self._require(iface)
        settings: dict[str, Any] = {"index": index, "state": "up"}
        if mtu is not None:
            settings["mtu"] = mtu
        await self._call(f"bring up {iface}", self._route.link, "set", **settings)

    async def add_address(self, iface: str, address: IPInterface) -> None:
        """Add `address` (with its prefix, e.g. 100.64.0.2/32) unless the interface has it already."""
        index = await self._require(iface)
        await self._call(
            f"add {address} to {iface}",
            self._route.addr,
            "add",
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
            ignore=(errno.EEXIST,),
        )

    async def addresses(self, iface: str) -> list[IPInterface]:
        index = await self._require(iface)
        found: list[IPInterface] = []
        async for message in await self._route.addr("dump", index=index):
            local = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
            found.append(ip_interface(f"{local}/{message['prefixlen']}"))
        return found

    async def add_route(self, iface: str, destination: IPNetwork) -> None:
        """Route `destination` through `iface` (replacing any route to the same prefix)."""
        index = await self._require(iface)
        await self._call(
            f"route {destination} via {iface}",
            self._route.route,
            "replace",
            dst=str(destination),
            oif=index,
            family=socket.AF_INET6 if destination.version == 6 else socket.AF_INET,
        )

    async def _call(
        self, action: str, method: Callable[..., Any], *args: Any, ignore: tuple[int, ...] = (), **kwargs: Any
    ) -> None:
        try:
            await method(*args, **kwargs)
        except NetlinkError as e:
            if e.code in ignore:
                return
            raise _kernel_error(action, e) from e
