"""wg-quick configuration files: our own small reader and writer (the `wgconfig` package is AGPL-3.0).

Reads what `wg showconf` and wg-quick write (sections, `Key = value`, `#` comments, comma lists); refuses
the hook keys (PreUp, PostUp, ...) rather than silently dropping commands a user expects to run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path
from typing import TypeAlias

from wardgate.agent.wg.device import DeviceConfig, Endpoint, IPNetwork, PeerConfig
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey

IPInterface: TypeAlias = IPv4Interface | IPv6Interface


@dataclass(frozen=True, slots=True)
class QuickPeer:
    """A `[Peer]` section. `endpoint` is `host:port` and may name a host (wg-quick resolves it)."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: str | None = None
    persistent_keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class QuickConfig:
    """A whole wg-quick file: the `[Interface]` section and its peers."""

    private_key: PrivateKey | None = None
    addresses: tuple[IPInterface, ...] = ()
    listen_port: int | None = None
    fwmark: int | None = None
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    peers: tuple[QuickPeer, ...] = ()

    def device_config(self) -> DeviceConfig:
        """The `DeviceConfig` that makes a device match this file (`replace_peers`); endpoints must be IPs."""
        return DeviceConfig(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            replace_peers=True,
            peers=tuple(
                PeerConfig(
                    public_key=peer.public_key,
                    preshared_key=peer.preshared_key,
                    endpoint=Endpoint.parse(peer.endpoint) if peer.endpoint is not None else None,
                    persistent_keepalive=peer.persistent_keepalive,
                    replace_allowed_ips=True,
                    allowed_ips=peer.allowed_ips,
                )
                for peer in self.peers
            ),
        )


def dumps(config: QuickConfig) -> str:
    """The file text for `config` (it holds the private key: write it with `save`, mode 0600)."""
    lines = ["[Interface]"]
    if config.private_key is not None:
        lines.append(f"PrivateKey = {config.private_key.to_base64()}")
    if config.addresses:
        lines.append(f"Address = {', '.join(map(str, config.addresses))}")
    if config.listen_port is not None:
        lines.append(f"ListenPort = {config.listen_port}")
    if config.fwmark is not None:
        lines.append(f"FwMark = {config.fwmark}")
    if config.dns:
        lines.append(f"DNS = {', '.join(config.dns)}")
    if config.mtu is not None:
        lines.append(f"MTU = {config.mtu}")
    for peer in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {peer.preshared_key.to_base64()}")
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(map(str, peer.allowed_ips))}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def _int(value: str) -> int:
    number = int(value, 16) if value.lower().startswith("0x") else int(value)
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def _off_or_int(value: str) -> int:
    return 0 if value.lower() == "off" else _int(value)


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 0xFFFF:
        raise ValueError(f"endpoint {value!r}: expected host:port")
    return value


# Scalar keys (lower case) -> parser; list keys accumulate across repeated lines.
_INTERFACE_SCALARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "privatekey": ("private_key", PrivateKey.from_base64),
    "listenport": ("listen_port", _int),
    "fwmark": ("fwmark", _off_or_int),
    "mtu": ("mtu", _int),
}
_PEER_SCALARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "publickey": ("public_key", PublicKey.from_base64),
    "presharedkey": ("preshared_key", PresharedKey.from_base64),
    "endpoint": ("endpoint", _endpoint),
    "persistentkeepalive": ("persistent_keepalive", _off_or_int),
}
_LISTS: dict[str, tuple[str, Callable[[str], object]]] = {
    "address": ("addresses", ip_interface),
    "dns": ("dns", str),
    "allowedips": ("allowed_ips", lambda v: ip_network(v, strict=False)),
}
_SECTION_LISTS = {"interface": {"address", "dns"}, "peer": {"allowedips"}}


def loads(text: str) -> QuickConfig:
    """Parse a wg-quick file; raises ValueError naming the line on anything it does not understand."""
    sections: list[tuple[str, dict[str, object]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            if line.startswith("[") and line.endswith("]"):
                sections.append(_start_section(line[1:-1].strip().lower(), not sections))
                continue
            if not sections:
                raise ValueError("a key outside any section")
            _parse_line(line, *sections[-1])
        except ValueError as e:
            raise ValueError(f"wg-quick file, line {number}: {e}") from e
    if not sections:
        raise ValueError("wg-quick file: no [Interface] section")
    interface, *peers = (values for _, values in sections)
    built_peers = []
    for values in peers:
        if "public_key" not in values:
            raise ValueError("wg-quick file: a [Peer] without PublicKey")
        built_peers.append(QuickPeer(**values))  # type: ignore[arg-type]
    return QuickConfig(**interface, peers=tuple(built_peers))  # type: ignore[arg-type]


def _start_section(name: str, first: bool) -> tuple[str, dict[str, object]]:
    if name not in ("interface", "peer"):
        raise ValueError(f"unknown section [{name}]")
    if (name == "interface") != first:
        raise ValueError("the file starts with the one [Interface] section, then [Peer] sections")
    return name, {}


def _parse_line(line: str, section: str, values: dict[str, object]) -> None:
    key, sep, value = line.partition("=")
    key, value = key.strip().lower(), value.strip()
    if not sep or not key:
        raise ValueError(f"expected Key = value, got {line!r}")
    scalars = _INTERFACE_SCALARS if section == "interface" else _PEER_SCALARS
    if key in scalars:
        name, parse = scalars[key]
        if name in values:
            raise ValueError(f"{key} is given twice")
        values[name] = parse(value)
    elif key in _SECTION_LISTS[section]:
        name, parse = _LISTS[key]
        existing = values.get(name, ())
        assert isinstance(existing, tuple)
        values[name] = existing + tuple(parse(item) for item in _items(value))
    else:
        raise ValueError(f"unsupported key {key!r} in [{section.capitalize()}]")


def save(path: Path, config: QuickConfig) -> None:
    """Write `config` to `path` atomically, readable by its owner only (it holds the private key)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(dumps(config))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path) -> QuickConfig:
    return loads(path.read_text())
