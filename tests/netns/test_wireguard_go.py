"""wireguard-go driven through UapiDevice: scale, refusals, a killed process, open_device, and wg(8) interop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from ipaddress import ip_interface, ip_network

import pytest

from tests.netns.lab import Lab, timed
from wardgate.agent.wg import (
    DeviceConfig,
    DeviceUnavailableError,
    Endpoint,
    PeerConfig,
    PresharedKey,
    PrivateKey,
    UapiError,
    WireGuardError,
)
from wardgate.agent.wg.backend import open_device
from wardgate.agent.wg.quick import QuickConfig, QuickPeer, dumps, loads
from wardgate.agent.wg.uapi import UapiDevice, socket_path
from wardgate.agent.wg.wireguard_go import WireGuardGo

pytestmark = pytest.mark.netns


def _peers(count: int) -> tuple[PeerConfig, ...]:
    return tuple(
        PeerConfig(
            PrivateKey.generate().public_key(),
            endpoint=Endpoint.parse(f"172.31.{i // 250}.{i % 250 + 1}:51820"),
            persistent_keepalive=25,
            replace_allowed_ips=True,
            allowed_ips=(ip_network(f"100.64.{i // 256}.{i % 256}/32"), ip_network(f"fd00:1::{i:x}/128")),
        )
        for i in range(count)
    )


async def test_a_thousand_peers_in_one_set_read_back_whole(lab: Lab) -> None:
    process = await lab.wireguard_go(lab.interface_name(), lab.namespace())
    device = UapiDevice(process.iface)
    peers = _peers(1000)
    with timed() as set_time:
        await device.configure(DeviceConfig(private_key=PrivateKey.generate(), replace_peers=True, peers=peers))
    with timed() as get_time:
        state = await device.state()
    print(f"\n1,000 peers: set {set_time[0] * 1000:.0f} ms, get {get_time[0] * 1000:.1f} ms")
    assert len(state.peers) == 1000
    by_key = {peer.public_key: peer for peer in state.peers}
    for wanted in peers:
        got = by_key[wanted.public_key]
        assert set(got.allowed_ips) == set(wanted.allowed_ips)
        assert (got.endpoint, got.persistent_keepalive) == (wanted.endpoint, 25)
    assert set_time[0] < 5 and get_time[0] < 2

    with timed() as again:  # idempotent: the same config again changes nothing
        await device.configure(DeviceConfig(replace_peers=True, peers=peers))
    assert {p.public_key for p in (await device.state()).peers} == set(by_key)
    print(f"1,000 peers again: {again[0] * 1000:.0f} ms")


async def test_refused_set_reports_the_devices_errno_and_is_not_atomic(lab: Lab) -> None:
    netns = lab.namespace()
    first = UapiDevice((await lab.wireguard_go(lab.interface_name(), netns)).iface)
    second = UapiDevice((await lab.wireguard_go(lab.interface_name(), netns)).iface)
    await first.configure(DeviceConfig(listen_port=51999))
    key = PrivateKey.generate()
    with pytest.raises(UapiError) as refused:
        await second.configure(DeviceConfig(private_key=key, listen_port=51999))
    assert refused.value.errno == -98  # wireguard-go: -EADDRINUSE
    assert "EADDRINUSE" in str(refused.value)
    assert (await second.state()).private_key == key  # the line before the error stayed applied
    await second.configure(DeviceConfig(listen_port=0))  # the connection-per-operation client recovers


async def test_concurrent_operations_are_serialised(lab: Lab) -> None:
    device = UapiDevice((await lab.wireguard_go(lab.interface_name(), lab.namespace())).iface)
    peers = _peers(50)
    results = await asyncio.gather(
        *(device.configure(DeviceConfig(peers=(peer,))) for peer in peers), *(device.state() for _ in range(20))
    )
    assert len(results) == 70
    assert len((await device.state()).peers) == 50


async def test_a_killed_wireguard_go_gives_a_clear_error_and_can_be_restarted(lab: Lab) -> None:
    iface, netns = lab.interface_name(), lab.namespace()
    process = await lab.wireguard_go(iface, netns)
    device = UapiDevice(iface)
    await device.state()
    os.kill(process.pid, signal.SIGKILL)
    assert await asyncio.wait_for(process.wait(), 5) == -signal.SIGKILL
    assert socket_path(iface).exists()  # SIGKILL leaves the socket file behind
    with pytest.raises(DeviceUnavailableError, match=f"wireguard-go is not running for {iface}"):
        await device.state()
    restarted = await lab.wireguard_go(iface, netns)  # a stale socket does not block a new process
    assert restarted.pid != process.pid
    assert (await device.state()).peers == ()
    await restarted.stop()
    assert not socket_path(iface).exists()


async def test_missing_socket_and_second_instance(lab: Lab) -> None:
    iface = lab.interface_name()
    with pytest.raises(DeviceUnavailableError, match=f"wireguard-go is not running for {iface}"):
        await UapiDevice(iface).state()
    netns = lab.namespace()
    await lab.wireguard_go(iface, netns)
    with pytest.raises(WireGuardError, match="already serves"):
        await WireGuardGo.start(iface, netns=netns)


async def test_open_device_starts_attaches_and_refuses_other_namespaces(lab: Lab) -> None:
    iface, netns, other = lab.interface_name(), lab.namespace(), lab.namespace()
    owner = await open_device(iface, netns)
    assert socket_path(iface).exists()
    attached = await open_device(iface, netns)
    await attached.configure(DeviceConfig(listen_port=51111))
    await attached.close()  # did not start the process: leaves it running
    assert (await owner.state()).listen_port == 51111
    with pytest.raises(WireGuardError, match="interface names must be unique"):
        await open_device(iface, other)
    await owner.close()
    assert not socket_path(iface).exists()
    with pytest.raises(DeviceUnavailableError, match="does not exist"):
        await open_device(lab.interface_name(), "wardgate-no-such-netns")
    assert not os.path.exists("/var/run/netns/wardgate-no-such-netns")


def _wg(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_wg_quick_files_round_trip_through_wg_tools(lab: Lab, tmp_path) -> None:
    source = UapiDevice((await lab.wireguard_go(lab.interface_name(), lab.namespace())).iface)
    target = UapiDevice((await lab.wireguard_go(lab.interface_name(), lab.namespace())).iface)
    config = QuickConfig(
        private_key=PrivateKey.generate(),
        addresses=(ip_interface("100.64.0.9/32"), ip_interface("fd00:1::9/128")),
        listen_port=51234,
        dns=("100.64.0.1", "wardgate.test"),
        mtu=1380,
        peers=(
            QuickPeer(
                PrivateKey.generate().public_key(),
                preshared_key=PresharedKey.generate(),
                allowed_ips=(ip_network("100.64.0.0/10"), ip_network("fd00:1::/64")),
                endpoint="192.0.2.7:51820",
                persistent_keepalive=25,
            ),
            QuickPeer(PrivateKey.generate().public_key(), allowed_ips=(ip_network("10.9.0.0/16"),)),
        ),
    )
    # Our file -> `wg-quick strip` -> `wg setconf`: wg-quick and wg(8) accept what we write.
    path = tmp_path / f"{target.iface}.conf"
    path.write_text(dumps(config))
    stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=30)
    assert stripped.returncode == 0, stripped.stderr
    _wg("setconf", target.iface, "/dev/stdin", stdin=stripped.stdout)
    # The same file through our own parser -> UapiDevice: both devices end up equal.
    await source.configure(loads(path.read_text()).device_config())
    for device in (source, target):
        state = await device.state()
        assert state.private_key == config.private_key and state.listen_port == 51234
        # wireguard-go lists peers in map order, not in the order they were set.
        by_key = {p.public_key: p for p in state.peers}
        assert set(by_key) == {p.public_key for p in config.peers}
        first = by_key[config.peers[0].public_key]
        assert first.preshared_key == config.peers[0].preshared_key
        assert first.endpoint == Endpoint.parse("192.0.2.7:51820")
    # `wg showconf` (what wg(8) writes) parses with our reader.
    shown = loads(_wg("showconf", source.iface))
    assert shown.private_key == config.private_key and shown.listen_port == 51234
    assert {p.public_key: set(p.allowed_ips) for p in shown.peers} == {
        p.public_key: set(p.allowed_ips) for p in config.peers
    }


async def test_lab_cleans_up_after_a_failing_test() -> None:
    lab = Lab()
    stray = None
    try:
        netns = lab.namespace()
        lab.veth(netns, lab.namespace(), 9)
        await lab.wireguard_go(lab.interface_name(), netns)
        # a process left behind in our namespace
        stray = await asyncio.create_subprocess_exec("ip", "netns", "exec", netns, "sleep", "600")
        await asyncio.sleep(0.1)
        raise RuntimeError("the test failed here")
    except RuntimeError:
        pass
    finally:
        await lab.cleanup()
    assert lab.leftovers() == []
    assert stray is not None and await asyncio.wait_for(stray.wait(), 5) == -signal.SIGKILL
