"""The client's tunnel: bring it up from a ConnectResponse, keep it while the Session stands, take it down.

    connect ─▶ new key pair ─▶ api.connect(public key) ─▶ open_device(iface) (kernel WireGuard, else wireguard-go)
            ─▶ private key + the node as the only peer (allowed IPs: the gateway /32 and /128, keepalive 25 s)
            ─▶ our addresses on iface, routes to the gateway ─▶ resolver.configure(zone ─▶ gateway)
            ─▶ connection.json ─▶ stay: every few seconds the Session must still stand (else exit 3)
    SIGTERM/SIGINT, or the Session revoked ─▶ resolver.restore ─▶ device closed, iface deleted ─▶ api.disconnect

The private key lives in this process only: a new connect makes a new key (the cluster swaps the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import ip_address, ip_interface, ip_network

from agent.wg import (
    Device,
    DeviceConfig,
    DeviceUnavailableError,
    Endpoint,
    PeerConfig,
    PrivateKey,
    PublicKey,
    WireGuardError,
)
from agent.wg.backend import open_device
from agent.wg.netlink import KernelDevice, Links, kernel_module_loaded
from agent.wg.uapi import UapiDevice
from client import resolver
from client.errors import ClientError
from client.state import ConnectionState, LoginState, StateFiles
from client.user_api import SessionEnded, UserApi, split_address
from cluster.resources.wire import ConnectResponse, NodePeer

KEEPALIVE = 25
EXIT_SESSION_ENDED = 3


def preflight() -> None:
    """Refuse early, saying what to do, when this process cannot make a WireGuard interface."""
    if os.geteuid() != 0:
        raise ClientError(
            "`wardgate connect` must run as root: it creates a WireGuard interface, addresses and routes "
            "(run `sudo wardgate connect`)"
        )
    if not kernel_module_loaded() and shutil.which("wireguard-go") is None:
        raise ClientError(
            "WireGuard is not available: this kernel has no wireguard module and wireguard-go is not installed. "
            "Install wireguard-go (Debian/Ubuntu: `sudo apt-get install wireguard-go`) or load the module "
            "(`sudo modprobe wireguard`)"
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attach(interface: str) -> Device:
    """The running interface, without creating anything (for status)."""
    return KernelDevice(interface) if kernel_module_loaded() else UapiDevice(interface)


async def _endpoint(node: NodePeer, api_host: str) -> Endpoint:
    host, port = split_address(node.endpoint) if node.endpoint else (api_host, node.listen_port)
    port = port or node.listen_port
    try:
        return Endpoint(ip_address(host), port)
    except ValueError:
        pass
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ClientError(f"cannot resolve the node's endpoint {host!r}: {exc}") from None
    return Endpoint(ip_address(found[0][4][0]), port)


async def bring_up(interface: str, key: PrivateKey, answer: ConnectResponse, api_host: str) -> tuple[Device, Endpoint]:
    node = answer.nodes[0]
    endpoint = await _endpoint(node, api_host)
    gateways = (ip_network(f"{answer.network.gateway_ipv4}/32"), ip_network(f"{answer.network.gateway_ipv6}/128"))
    device = await open_device(interface)
    try:
        peer = PeerConfig(
            PublicKey.from_base64(node.wg_public_key),
            endpoint=endpoint,
            persistent_keepalive=KEEPALIVE,
            replace_allowed_ips=True,
            allowed_ips=gateways,
        )
        await device.configure(DeviceConfig(private_key=key, replace_peers=True, peers=(peer,)))
        async with Links() as links:
            await links.add_address(interface, ip_interface(f"{answer.tunnel_ipv4}/32"))
            await links.add_address(interface, ip_interface(f"{answer.tunnel_ipv6}/128"))
            await links.set_up(interface)
            for gateway in gateways:
                await links.add_route(interface, gateway)
    except BaseException:
        await device.close()
        with contextlib.suppress(WireGuardError):
            await remove_interface(interface)
        raise
    return device, endpoint


async def remove_interface(interface: str) -> None:
    async with Links() as links:
        await links.delete(interface)


async def cleanup(files: StateFiles, connection: ConnectionState) -> list[str]:
    """Undo what a connect that is no longer running left behind; returns warnings."""
    warnings = []
    warning = resolver.restore(connection.resolver)
    if warning:
        warnings.append(warning)
    try:
        await remove_interface(connection.interface)
    except WireGuardError as exc:
        warnings.append(f"could not delete interface {connection.interface}: {exc}")
    files.delete_connection()
    return warnings


Refresh = Callable[[LoginState], Awaitable[LoginState]]


async def clear_previous(files: StateFiles) -> None:
    """Refuse if a connect is running; clean up after one that died."""
    existing = files.read_connection()
    if existing is not None:
        if pid_alive(existing.pid):
            raise ClientError(
                f"already connected (pid {existing.pid}, interface {existing.interface}): `wardgate disconnect` first"
            )
        await cleanup(files, existing)


async def connect(
    files: StateFiles,
    api: UserApi,
    login: LoginState,
    refresh: Refresh,
    interface: str,
    dns: resolver.Mode,
    ready: Callable[[ConnectionState], None],
    check_interval: float = 5.0,
) -> int:
    """Connect and stay connected until a signal (0) or the Session ends (EXIT_SESSION_ENDED)."""
    key = PrivateKey.generate()
    answer = await api.connect(key.public_key().to_base64())
    try:
        device, endpoint = await bring_up(interface, key, answer, api.host)
    except BaseException as exc:
        with contextlib.suppress(ClientError, TimeoutError):  # the node need not keep a peer that never comes
            async with asyncio.timeout(5):
                await api.disconnect()
        if isinstance(exc, WireGuardError):
            raise ClientError(f"cannot bring up WireGuard interface {interface}: {exc}") from None
        raise
    change = None
    code = 1
    try:
        network = answer.network
        change = resolver.configure(dns, interface, network.dns_zone, [network.gateway_ipv4, network.gateway_ipv6])
        connection = ConnectionState(
            pid=os.getpid(),
            interface=interface,
            netns=resolver.current_netns(),
            session=answer.session,
            tunnel_ipv4=answer.tunnel_ipv4,
            tunnel_ipv6=answer.tunnel_ipv6,
            node=answer.nodes[0].name,
            endpoint=str(endpoint),
            gateway_ipv4=network.gateway_ipv4,
            gateway_ipv6=network.gateway_ipv6,
            dns_zone=network.dns_zone,
            resolver=change,
            connected_at=datetime.now(UTC),
        )
        files.write_connection(connection)
        ready(connection)
        code = await _stay(api, login, refresh, device, check_interval)
    finally:
        if change is not None and (warning := resolver.restore(change)):
            print(f"wardgate: {warning}", file=sys.stderr)
        await device.close()
        with contextlib.suppress(WireGuardError):
            await remove_interface(interface)
        files.delete_connection()
        if code != EXIT_SESSION_ENDED:
            with contextlib.suppress(ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    await api.disconnect()
    return code


async def _stay(api: UserApi, login: LoginState, refresh: Refresh, device: Device, interval: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if stop.is_set():
                return 0
            try:
                login = await refresh(login)
                await api.session()
            except SessionEnded as exc:
                print(f"wardgate: disconnected: {exc}", file=sys.stderr, flush=True)
                return EXIT_SESSION_ENDED
            except ClientError as exc:
                print(f"wardgate: warning: {exc} (the tunnel stays up)", file=sys.stderr, flush=True)
            try:
                await device.state()
            except DeviceUnavailableError as exc:
                print(f"wardgate: disconnected: the WireGuard interface went away ({exc})", file=sys.stderr)
                return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
