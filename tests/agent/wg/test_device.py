"""The value types: endpoint parsing and the checks the frozen dataclasses make on construction."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, PeerConfig, PeerState
from wardgate.agent.wg.keys import PresharedKey, PrivateKey
from wardgate.agent.wg.names import check_interface_name, require_netns

PUBLIC = PrivateKey.generate().public_key()


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("192.0.2.1:51820", "192.0.2.1", 51820),
        ("[2001:db8::1]:1", "2001:db8::1", 1),
        ("[fe80::1]:65535", "fe80::1", 65535),
        ("0.0.0.0:0", "0.0.0.0", 0),
    ],
)
def test_endpoint_parses_and_prints_back(text: str, host: str, port: int) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint == Endpoint(ip_address(host), port)
    assert str(endpoint) == text


@pytest.mark.parametrize(
    "text", ["192.0.2.1", "example.com:51820", "2001:db8::1:51820", "[2001:db8::1]", "1.2.3.4:x", "1.2.3.4:65536", ""]
)
def test_endpoint_refuses_what_wireguard_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: DeviceConfig(listen_port=65536),
        lambda: DeviceConfig(listen_port=-1),
        lambda: DeviceConfig(fwmark=2**32),
        lambda: PeerConfig(PUBLIC, persistent_keepalive=65536),
        lambda: PeerConfig(PUBLIC, remove=True, allowed_ips=(ip_network("10.0.0.0/8"),)),
        lambda: PeerConfig(PUBLIC, remove=True, update_only=True),
        lambda: PeerConfig(PUBLIC, remove=True, preshared_key=PresharedKey.generate()),
    ],
)
def test_invalid_values_are_refused_at_construction(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_configs_are_frozen_and_state_answers_lookups() -> None:
    config = DeviceConfig(listen_port=1)
    with pytest.raises(AttributeError):
        config.listen_port = 2  # type: ignore[misc]
    private = PrivateKey.generate()
    state = DeviceState(private_key=private, peers=(PeerState(PUBLIC),))
    assert state.public_key == private.public_key()
    assert state.peer(PUBLIC) == PeerState(PUBLIC)
    assert state.peer(private.public_key()) is None
    assert DeviceState().public_key is None
    assert "<redacted>" in repr(state) and private.to_base64() not in repr(state)


@pytest.mark.parametrize("name", ["wg0", "a", "x" * 15, "wardgate-client"])
def test_interface_names_linux_accepts(name: str) -> None:
    assert check_interface_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "wg/0", "wg 0", "wg:0", ".", "..", "wg\n"])
def test_interface_names_linux_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        check_interface_name(name)


def test_a_missing_namespace_is_reported_not_created(tmp_path, monkeypatch) -> None:
    from wardgate.agent.wg import names
    from wardgate.agent.wg.errors import DeviceUnavailableError

    monkeypatch.setattr(names, "NETNS_DIR", tmp_path)
    require_netns(None)
    with pytest.raises(DeviceUnavailableError, match="'typo' does not exist"):
        require_netns("typo")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "real").touch()
    require_netns("real")
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            require_netns(bad)
