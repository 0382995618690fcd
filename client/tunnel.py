"""The client's tunnel: bring it up from a ConnectResponse, keep it while the Session stands, take it down.

    connect ─▶ new key pair ─▶ api.connect(public key) ─▶ open_device(iface) (kernel WireGuard, else wireguard-go)
            ─▶ private key + the first node as the only peer (allowed IPs: the gateway /32 and /128, keepalive 25 s)
            ─▶ our addresses on iface, routes to the gateway ─▶ resolver.configure(zone ─▶ gateway)
            ─▶ connection.json ─▶ stay: every few seconds the Session must still stand (else exit 3), and
               failover.Failover probes the node, moving the peer to the next node when it stops answering
    SIGTERM/SIGINT, or the Session revoked ─▶ resolver.restore ─▶ device closed, iface deleted ─▶ api.disconnect

The private key lives in this process only: a new connect makes a new key (the cluster swaps the peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network

from wardgate.agent.wg import Device, DeviceConfig, DeviceUnavailableError, Endpoint, PrivateKey, WireGuardError
from wardgate.agent.wg.backend import open_device
from wardgate.agent.wg.netlink import KernelDevice, Links, kernel_module_loaded
from wardgate.agent.wg.uapi import UapiDevice
from wardgate.client import resolver
from wardgate.client.errors import ClientError
from wardgate.client.failover import DEFAULT_PROBE, Failover, ProbeSettings, peer_of, resolve_endpoint, tcp_probe
from wardgate.client.state import ConnectionState, LoginState, StateFiles
from wardgate.client.user_api import SessionEnded, UserApi
from wardgate.cluster.resources.wire import ConnectResponse, NodePeer

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


def _gateways(answer: ConnectResponse) -> tuple[IPv4Network | IPv6Network, ...]:
    return ip_network(f"{answer.network.gateway_ipv4}/32"), ip_network(f"{answer.network.gateway_ipv6}/128")


async def bring_up(interface: str, key: PrivateKey, answer: ConnectResponse, api_host: str) -> tuple[Device, Endpoint]:
    node = answer.nodes[0]
    endpoint = await resolve_endpoint(node, api_host)
    gateways = _gateways(answer)
    device = await open_device(interface)
    try:
        peer = peer_of(node, endpoint, gateways)
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
    probe: ProbeSettings = DEFAULT_PROBE,
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

        def moved(node: NodePeer, at: Endpoint) -> None:
            nonlocal connection
            connection = connection.model_copy(
                update={
                    "node": node.name,
                    "endpoint": str(at),
                    "moved_from": connection.node,
                    "moved_at": datetime.now(UTC),
                }
            )
            files.write_connection(connection)

        failover = Failover(
            device,
            answer.nodes,
            answer.nodes[0].name,
            _gateways(answer),
            tcp_probe(network.gateway_ipv4, network.http_port, probe.timeout),
            api.host,
            moved,
            probe,
        )
        code = await _stay(api, login, refresh, device, check_interval, failover)
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


async def _stay(
    api: UserApi, login: LoginState, refresh: Refresh, device: Device, interval: float, failover: Failover
) -> int:
    """Until a signal (0), the Session's end (EXIT_SESSION_ENDED) or the interface's (1); meanwhile the
    failover keeps the tunnel on a node that answers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(_watch(api, login, refresh, device, interval, failover))
            mover = tasks.create_task(failover.run())
            stopper = tasks.create_task(stop.wait())
            await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (watcher, mover, stopper):
                task.cancel()
        return watcher.result() if watcher.done() and not watcher.cancelled() else 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _watch(
    api: UserApi, login: LoginState, refresh: Refresh, device: Device, interval: float, failover: Failover
) -> int:
    """Every `interval`: the Session must still stand (its answer also lists the cluster's nodes, which the
    failover takes), and the interface must still exist."""
    while True:
        await asyncio.sleep(interval)
        try:
            login = await refresh(login)
            info = await api.session()
        except SessionEnded as exc:
            print(f"wardgate: disconnected: {exc}", file=sys.stderr, flush=True)
            return EXIT_SESSION_ENDED
        except ClientError as exc:
            print(f"wardgate: warning: {exc} (the tunnel stays up)", file=sys.stderr, flush=True)
        else:
            if info.nodes:
                failover.nodes = info.nodes
        try:
            await device.state()
        except DeviceUnavailableError as exc:
            print(f"wardgate: disconnected: the WireGuard interface went away ({exc})", file=sys.stderr)
            return 1
