"""wireguard-go's configuration protocol (UAPI): pure `encode_set`/`parse_get`, and `UapiDevice` over its socket.

    encode_set(DeviceConfig) ─▶ "set=1\\n key=value ... \\n\\n" ─▶ socket ─▶ "errno=N\\n\\n" ─▶ check_set_reply
    "get=1\\n\\n" ─▶ socket ─▶ "key=value ... errno=0\\n\\n" ─▶ parse_get ─▶ DeviceState

Keys are hex here (base64 everywhere else). wireguard-go reads a request line by line and stops at the
first bad line, leaving the rest unread: so each connection carries exactly one operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path

from wardgate.agent.wg.device import DeviceConfig, DeviceState, Endpoint, IPNetwork, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError, UapiError
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey
from wardgate.agent.wg.names import check_interface_name

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
GET_REQUEST = "get=1\n\n"
# A `get` reply is ~200 bytes per peer; asyncio's 64 KiB default stream limit breaks near 1,000 peers.
READ_LIMIT = 64 * 1024 * 1024
_ZERO_KEY = "0" * 64
_UINT16 = 0xFFFF
_UINT32 = 0xFFFF_FFFF
_UINT64 = 0xFFFF_FFFF_FFFF_FFFF


def socket_path(iface: str, socket_dir: Path = SOCKET_DIR) -> Path:
    """Where wireguard-go listens for `iface` (one directory shared by every network namespace)."""
    return socket_dir / f"{check_interface_name(iface)}.sock"


def encode_set(config: DeviceConfig) -> str:
    """The complete `set` request for `config`, ending with the blank line that submits it."""
    lines = ["set=1"]
    if config.private_key is not None:
        lines.append(f"private_key={config.private_key.to_hex()}")
    if config.listen_port is not None:
        lines.append(f"listen_port={config.listen_port}")
    if config.fwmark is not None:
        lines.append(f"fwmark={config.fwmark}")
    if config.replace_peers:
        lines.append("replace_peers=true")
    for peer in config.peers:
        _encode_peer(peer, lines)
    return "\n".join(lines) + "\n\n"


def _encode_peer(peer: PeerConfig, lines: list[str]) -> None:
    lines.append(f"public_key={peer.public_key.to_hex()}")
    if peer.remove:
        lines.append("remove=true")
        return
    if peer.update_only:
        lines.append("update_only=true")
    if peer.preshared_key is not None:
        lines.append(f"preshared_key={peer.preshared_key.to_hex()}")
    if peer.endpoint is not None:
        lines.append(f"endpoint={peer.endpoint}")
    if peer.persistent_keepalive is not None:
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
    if peer.replace_allowed_ips:
        lines.append("replace_allowed_ips=true")
    lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)


def _malformed(message: str) -> UapiError:
    return UapiError(errno.EPROTO, f"malformed UAPI reply: {message}")


def _reply_lines(reply: str, operation: str) -> list[str]:
    """Check the `errno=N` trailer (raising on N != 0) and return the lines before it."""
    if not reply.endswith("\n\n"):
        raise _malformed("it does not end with a blank line")
    lines = reply[:-2].split("\n")
    key, _, value = lines.pop().partition("=")
    if key != "errno":
        raise _malformed("it does not end with errno=N")
    digits = value.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise _malformed(f"errno={value!r} is not an integer")
    code = int(value)
    if code != 0:
        raise UapiError(code, f"wireguard-go refused the {operation}")
    if "" in lines:
        raise _malformed("blank line inside the reply")
    return lines


def check_set_reply(reply: str) -> None:
    """Raise `UapiError` unless `reply` is exactly `errno=0` and its blank line."""
    if _reply_lines(reply, "set"):
        raise _malformed("a set reply carries only errno=N")


def _uint(value: str, top: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > top:
        raise ValueError(f"{value!r} is not an integer in 0..{top}")
    return int(value)


@dataclass(slots=True)
class _PeerDraft:
    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0

    def build(self) -> PeerState:
        last_handshake = None
        if self.handshake_sec or self.handshake_nsec:
            if self.handshake_nsec >= 1_000_000_000:
                raise ValueError(f"last_handshake_time_nsec={self.handshake_nsec} is not below 10^9")
            try:
                base = datetime.fromtimestamp(self.handshake_sec, tz=UTC)
            except (OverflowError, OSError) as e:
                raise ValueError(f"last_handshake_time_sec={self.handshake_sec} is out of range") from e
            last_handshake = base + timedelta(microseconds=self.handshake_nsec // 1000)
        return PeerState(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            last_handshake=last_handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            persistent_keepalive=self.persistent_keepalive,
        )


def _apply_peer_line(peer: _PeerDraft, key: str, value: str) -> None:
    match key:
        case "preshared_key":
            peer.preshared_key = None if value == _ZERO_KEY else PresharedKey.from_hex(value)
        case "endpoint":
            peer.endpoint = Endpoint.parse(value)
        case "allowed_ip":
            peer.allowed_ips.append(ip_network(value, strict=False))
        case "last_handshake_time_sec":
            peer.handshake_sec = _uint(value, _UINT64)
        case "last_handshake_time_nsec":
            peer.handshake_nsec = _uint(value, _UINT64)
        case "rx_bytes":
            peer.rx_bytes = _uint(value, _UINT64)
        case "tx_bytes":
            peer.tx_bytes = _uint(value, _UINT64)
        case "persistent_keepalive_interval":
            peer.persistent_keepalive = _uint(value, _UINT16)
        case "protocol_version":
            _uint(value, _UINT32)


_PEER_KEYS = frozenset(
    {
        "preshared_key",
        "endpoint",
        "allowed_ip",
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive_interval",
        "protocol_version",
    }
)


def parse_get(reply: str) -> DeviceState:
    """Parse a whole `get` reply (through `errno=0` and the blank line) into a `DeviceState`.

    Raises `UapiError` with the device's errno if it refused, or `EPROTO` if the reply is malformed.
    Unknown keys are ignored, as newer wireguard-go versions may add some.
    """
    private_key: PrivateKey | None = None
    listen_port = fwmark = 0
    peers: list[_PeerDraft] = []
    for number, line in enumerate(_reply_lines(reply, "get"), 1):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise _malformed(f"line {number} is not key=value")  # not echoed: it could hold a key
        try:
            if key == "public_key":
                peers.append(_PeerDraft(PublicKey.from_hex(value)))
            elif key in _PEER_KEYS:
                if not peers:
                    raise ValueError("peer field before any public_key")
                _apply_peer_line(peers[-1], key, value)
            elif key in ("private_key", "listen_port", "fwmark"):
                if peers:
                    raise ValueError("device field after a peer")
                if key == "private_key":
                    private_key = None if value == _ZERO_KEY else PrivateKey.from_hex(value)
                elif key == "listen_port":
                    listen_port = _uint(value, _UINT16)
                else:
                    fwmark = _uint(value, _UINT32)
            else:
                log.debug("ignoring unknown UAPI key %r", key)
        except ValueError as e:
            raise _malformed(f"line {number} ({key}): {e}") from e
    try:
        built = tuple(peer.build() for peer in peers)
    except ValueError as e:
        raise _malformed(str(e)) from e
    return DeviceState(private_key=private_key, listen_port=listen_port, fwmark=fwmark, peers=built)


class UapiDevice:
    """A `Device` served by wireguard-go: one connection per operation, one operation in flight at a time."""

    def __init__(self, iface: str, *, socket_dir: Path = SOCKET_DIR, timeout: float = 10.0) -> None:
        self.iface = iface
        self.path = socket_path(iface, socket_dir)
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._closed = False

    async def state(self) -> DeviceState:
        return parse_get(await self._request(GET_REQUEST, "get"))

    async def configure(self, config: DeviceConfig) -> None:
        check_set_reply(await self._request(encode_set(config), "set"))

    async def close(self) -> None:
        self._closed = True

    async def _request(self, request: str, operation: str) -> str:
        async with self._lock:
            if self._closed:
                raise DeviceUnavailableError(f"the UAPI device for {self.iface} is closed")
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._exchange(request.encode())
            except TimeoutError as e:
                raise DeviceUnavailableError(
                    f"wireguard-go for {self.iface} did not answer a {operation} within {self._timeout} s"
                ) from e
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise DeviceUnavailableError(
                        f"wireguard-go for {self.iface} closed the connection without answering the {operation}"
                    ) from e
                raise _malformed(f"connection closed after {len(e.partial)} bytes of the {operation} reply") from e
            except asyncio.LimitOverrunError as e:
                raise _malformed(f"{operation} reply longer than {READ_LIMIT} bytes") from e
            except UnicodeDecodeError as e:
                raise _malformed(f"{operation} reply is not UTF-8") from e
            except ConnectionError as e:
                raise DeviceUnavailableError(f"wireguard-go for {self.iface} dropped the connection: {e}") from e

    async def _exchange(self, request: bytes) -> str:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=READ_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DeviceUnavailableError(
                f"wireguard-go is not running for {self.iface} (no listener on {self.path})"
            ) from e
        except PermissionError as e:
            raise DeviceUnavailableError(f"permission denied on {self.path}: WireGuard control needs root") from e
        try:
            writer.write(request)
            await writer.drain()
            reply = await reader.readuntil(b"\n\n")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return reply.decode()
