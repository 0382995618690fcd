"""`wardgate-agent`: keeps the node's WireGuard interface equal to the cluster's connected client sessions.

    cluster admin API ─watch─▶ control.peer_sets() ─▶ reconcile.Desired (peers, their expiry)
    ─▶ reconcile pass: plan(desired, applier.state(), now) ─▶ applier.apply(DeviceConfig) ─▶ wg (uapi|netlink)
       a pass runs on every snapshot, at the next peer expiry, and every resync_interval (which also
       recreates a deleted interface or a killed wireguard-go, with every peer)
    ─▶ dns.DnsServer: <service>.<zone> on the gateway addresses
packet: client wg ──UDP──▶ node wg (peer = the session's key, allowed_ips = its /32 and /128)
        ──▶ the cluster's tunnel listener, which trusts the source address as the session
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import ip_interface, ip_network
from pathlib import Path

from wardgate import __version__
from wardgate.agent.applier import Applier
from wardgate.agent.config import DEFAULT_PATH, AgentConfig, ConfigError, load
from wardgate.agent.control import ControlClient, ControlError
from wardgate.agent.dns import DnsServer, Zone
from wardgate.agent.reconcile import Desired, desired_peers, next_expiry, plan
from wardgate.agent.wg import Device, DeviceConfig, PrivateKey, WireGuardError
from wardgate.agent.wg.backend import open_device
from wardgate.agent.wg.netlink import Links
from wardgate.cluster.resources.wire import NodeRegistration, NodeStatus, PeerSet, PeerStatus, TunnelNetwork

log = logging.getLogger("wardgate.agent")


def load_or_create_key(state_dir: Path) -> PrivateKey:
    """The node's WireGuard key from `state_dir/private.key` (base64, 0600), made on first start."""
    path = state_dir / "private.key"
    if path.exists():
        return PrivateKey.from_base64(path.read_text())
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = PrivateKey.generate()
    fd, temporary = tempfile.mkstemp(dir=state_dir, prefix=".private.key.")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp makes it 0600
            file.write(key.to_base64() + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    log.info("made the node's WireGuard key in %s (public key %s)", path, key.public_key())
    return key


class Agent:
    """The reconcile loop and its inputs; the device itself is the Applier's."""

    def __init__(self, config: AgentConfig, key: PrivateKey, control: ControlClient, dns: DnsServer) -> None:
        self._config = config
        self._control = control
        self._dns = dns
        self.applier = Applier(self._open_device)
        self.desired = Desired(private_key=key, listen_port=config.listen_port)
        self.network: TunnelNetwork | None = None
        self._sessions: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()

    async def _open_device(self) -> Device:
        assert self.network is not None
        iface = self._config.interface
        device = await open_device(iface)
        try:
            async with Links() as links:
                for gateway, prefix in (
                    (self.network.gateway_ipv4, self.network.ipv4_range),
                    (self.network.gateway_ipv6, self.network.ipv6_prefix),
                ):
                    await links.add_address(iface, ip_interface(f"{gateway}/{ip_network(prefix).prefixlen}"))
                await links.set_up(iface)
        except BaseException:
            await device.close()
            raise
        self._dns.nudge()  # the DNS listener rebinds to the new interface now, not at its next poll
        log.info("WireGuard interface %s is up (gateway %s)", iface, self.network.gateway_ipv4)
        return device

    async def follow(self) -> None:
        """Take every snapshot the cluster sends; wake the reconcile loop."""
        registration = NodeRegistration(
            wg_public_key=self.desired.private_key.public_key().to_base64(),
            listen_port=self._config.listen_port,
            endpoint=self._config.endpoint,
        )
        async for network, peer_set in self._control.peer_sets(registration):
            self._take(network, peer_set)

    def _take(self, network: TunnelNetwork, peer_set: PeerSet) -> None:
        if self.network is not None and network != self.network:
            log.error("the tunnel network changed (%s): restart the agent to readdress the interface", network)
        self.network = self.network or network
        peers = desired_peers(peer_set)
        self._sessions.update({str(p.public_key): p.session for p in peers})  # removed peers keep their name
        self.desired = replace(self.desired, peers=peers)
        self._dns.zone = Zone(
            name=network.dns_zone,
            services=frozenset(peer_set.services),
            ipv4=network.gateway_ipv4,
            ipv6=network.gateway_ipv6,
        )
        self._ready.set()
        self._wake.set()

    async def reconcile(self) -> None:
        await self._ready.wait()
        failures = 0
        while True:
            self._wake.clear()
            delay = self._config.resync_interval
            try:
                await self._pass()
                failures = 0
            except (WireGuardError, OSError) as exc:
                failures += 1
                delay = min(0.1 * 2**failures, delay)
                log.warning("reconcile failed (%s); retrying in %.1f s", exc, delay)
            expiry = next_expiry(self.desired, datetime.now(UTC))
            if expiry is not None:
                delay = min(delay, max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _pass(self) -> None:
        observed = await self.applier.state()
        change = plan(self.desired, observed, datetime.now(UTC))
        if change == DeviceConfig():
            return
        await self.applier.apply(change)
        for peer in change.peers:
            session = self._sessions.get(str(peer.public_key), "-")
            log.info("peer %s %s (session %s)", peer.public_key, "removed" if peer.remove else "set", session)

    async def report(self) -> None:
        """Every `report_interval`, tell the cluster what the device sees (its /metrics shows it)."""
        await self._ready.wait()
        while True:
            try:
                observed = await self.applier.state()
                peers = [
                    PeerStatus(
                        public_key=peer.public_key.to_base64(),
                        session=self._sessions.get(str(peer.public_key)),
                        last_handshake=peer.last_handshake,
                        rx_bytes=peer.rx_bytes,
                        tx_bytes=peer.tx_bytes,
                    )
                    for peer in observed.peers
                ]
                await self._control.report(NodeStatus(peers=peers))
            except (WireGuardError, OSError, ControlError) as exc:
                log.warning("peer status report failed: %s", exc)
            await asyncio.sleep(self._config.report_interval)

    async def teardown(self) -> None:
        """Fail closed on a clean stop: the interface goes, and with it every peer."""
        await self.applier.close()
        with contextlib.suppress(WireGuardError):
            async with Links() as links:
                await links.delete(self._config.interface)


async def serve(config: AgentConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    key = load_or_create_key(config.state_dir)
    dns = DnsServer(config.interface, config.dns.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ControlClient(config.cluster, config.node) as control:
        agent = Agent(config, key, control, dns)
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(agent.applier.run()),
                    tasks.create_task(agent.follow()),
                    tasks.create_task(agent.reconcile()),
                    tasks.create_task(agent.report()),
                ]
                if config.dns.enabled:
                    running.append(tasks.create_task(dns.run()))
                log.info("node %s: interface %s, port %d", config.node, config.interface, config.listen_port)
                await stop.wait()
                for task in running:
                    task.cancel()
        finally:
            await agent.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wardgate-agent", description="Wardgate node agent")
    parser.add_argument("--config", default=str(DEFAULT_PATH), help=f"settings file (default {DEFAULT_PATH})")
    parser.add_argument("--version", action="version", version=f"wardgate-agent {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load(Path(args.config))
        asyncio.run(serve(config))
    except (ConfigError, ControlError, OSError) as exc:
        print(f"wardgate-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
