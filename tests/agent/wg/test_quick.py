"""wg-quick files: writing, reading (ours and wg's formatting), refusals, and the DeviceConfig they mean."""

from __future__ import annotations

import stat
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest

from wardgate.agent.wg.device import DeviceConfig, Endpoint, PeerConfig
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey
from wardgate.agent.wg.quick import QuickConfig, QuickPeer, dumps, load, loads, save

PRIVATE = PrivateKey(bytes(range(1, 33)))
A, B = PublicKey(bytes([1]) * 32), PublicKey(bytes([2]) * 32)
PSK = PresharedKey(bytes([3]) * 32)

CONFIG = QuickConfig(
    private_key=PRIVATE,
    addresses=(ip_interface("100.64.0.2/32"), ip_interface("fd00:1::2/128")),
    listen_port=51820,
    fwmark=4919,
    dns=("100.64.0.1", "wardgate.test"),
    mtu=1380,
    peers=(
        QuickPeer(
            A,
            preshared_key=PSK,
            allowed_ips=(ip_network("100.64.0.0/10"), ip_network("fd00:1::/64")),
            endpoint="node.wardgate.test:51820",
            persistent_keepalive=25,
        ),
        QuickPeer(B, allowed_ips=(ip_network("10.0.0.0/8"),), endpoint="[2001:db8::1]:51820"),
    ),
)

TEXT = f"""[Interface]
PrivateKey = {PRIVATE.to_base64()}
Address = 100.64.0.2/32, fd00:1::2/128
ListenPort = 51820
FwMark = 4919
DNS = 100.64.0.1, wardgate.test
MTU = 1380

[Peer]
PublicKey = {A.to_base64()}
PresharedKey = {PSK.to_base64()}
AllowedIPs = 100.64.0.0/10, fd00:1::/64
Endpoint = node.wardgate.test:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {B.to_base64()}
AllowedIPs = 10.0.0.0/8
Endpoint = [2001:db8::1]:51820
"""


def test_dumps_writes_the_wg_quick_layout() -> None:
    assert dumps(CONFIG) == TEXT


def test_loads_reads_back_what_dumps_wrote() -> None:
    assert loads(dumps(CONFIG)) == CONFIG
    assert loads(dumps(QuickConfig())) == QuickConfig()


def test_loads_reads_wg_showconf_style_and_hand_edits() -> None:
    text = f"""
# written by hand
[interface]
privatekey={PRIVATE.to_base64()}   # trailing comment
address = 100.64.0.2/32
Address = fd00:1::2/128
FwMark = 0x1337

[Peer]
PublicKey = {A.to_base64()}
AllowedIPs = 100.64.0.0/10,fd00:1::/64
AllowedIPs = 10.1.2.3/8
PersistentKeepalive = off
"""
    config = loads(text)
    assert config.addresses == (ip_interface("100.64.0.2/32"), ip_interface("fd00:1::2/128"))
    assert config.fwmark == 0x1337
    (peer,) = config.peers
    assert peer.allowed_ips == (ip_network("100.64.0.0/10"), ip_network("fd00:1::/64"), ip_network("10.0.0.0/8"))
    assert peer.persistent_keepalive == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\[Interface\\]"),
        ("PrivateKey = x", "line 1: a key outside any section"),
        ("[Peer]\nPublicKey = " + A.to_base64(), "line 1: the file starts with the one \\[Interface\\]"),
        ("[Interface]\n[Interface]", "line 2: the file starts"),
        ("[Interface]\n[Wat]", "line 2: unknown section"),
        ("[Interface]\nPostUp = iptables -A", "line 2: unsupported key 'postup'"),
        ("[Interface]\nAllowedIPs = 10.0.0.0/8", "line 2: unsupported key 'allowedips' in \\[Interface\\]"),
        ("[Interface]\nListenPort = 1\nListenPort = 2", "line 3: listenport is given twice"),
        ("[Interface]\nListenPort", "line 2: expected Key = value"),
        ("[Interface]\nPrivateKey = short", "line 2"),
        ("[Interface]\nAddress = 300.1.1.1/32", "line 2"),
        ("[Interface]\nMTU = -5", "line 2"),
        ("[Interface]\n[Peer]\nAllowedIPs = 10.0.0.0/8", "a \\[Peer\\] without PublicKey"),
        ("[Interface]\n[Peer]\nPublicKey = " + A.to_base64() + "\nEndpoint = nohost", "line 4: endpoint"),
    ],
)
def test_loads_refuses_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loads(text)


def test_device_config_replaces_the_device_with_the_file() -> None:
    config = QuickConfig(
        private_key=PRIVATE,
        listen_port=1,
        peers=(QuickPeer(A, preshared_key=PSK, allowed_ips=(ip_network("10.0.0.0/8"),), endpoint="192.0.2.1:7"),),
    )
    assert config.device_config() == DeviceConfig(
        private_key=PRIVATE,
        listen_port=1,
        replace_peers=True,
        peers=(
            PeerConfig(
                A,
                preshared_key=PSK,
                endpoint=Endpoint.parse("192.0.2.1:7"),
                replace_allowed_ips=True,
                allowed_ips=(ip_network("10.0.0.0/8"),),
            ),
        ),
    )


def test_device_config_needs_resolved_endpoints() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        CONFIG.device_config()


def test_save_is_owner_only_and_load_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    save(path, CONFIG)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == CONFIG
    save(path, QuickConfig())  # replaces atomically, leaves no temporary files
    assert load(path) == QuickConfig()
    assert [p.name for p in tmp_path.iterdir()] == ["wg0.conf"]
