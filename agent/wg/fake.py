"""`FakeDevice`: an in-memory `Device` that applies configs with WireGuard's own `set` rules and records them."""

from __future__ import annotations

from dataclasses import replace

from wardgate.agent.wg.device import Device, DeviceConfig, DeviceState, IPNetwork, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError
from wardgate.agent.wg.keys import PublicKey


def apply(state: DeviceState, config: DeviceConfig) -> DeviceState:
    """The state a WireGuard device reaches when `config` is applied to `state` (pure; counters survive)."""
    peers: dict[PublicKey, PeerState] = {} if config.replace_peers else {p.public_key: p for p in state.peers}
    owners = {network: key for key, peer in peers.items() for network in peer.allowed_ips}
    for peer in config.peers:
        if peer.remove:
            removed = peers.pop(peer.public_key, None)
            for network in removed.allowed_ips if removed else ():
                _release(owners, network, peer.public_key)
        elif peer.public_key in peers or not peer.update_only:
            _apply_peer(peers, owners, peer)
    return DeviceState(
        private_key=config.private_key if config.private_key is not None else state.private_key,
        listen_port=config.listen_port if config.listen_port is not None else state.listen_port,
        fwmark=config.fwmark if config.fwmark is not None else state.fwmark,
        peers=tuple(peers.values()),
    )


def _release(owners: dict[IPNetwork, PublicKey], network: IPNetwork, key: PublicKey) -> None:
    if owners.get(network) == key:
        del owners[network]


def _apply_peer(peers: dict[PublicKey, PeerState], owners: dict[IPNetwork, PublicKey], peer: PeerConfig) -> None:
    key = peer.public_key
    current = peers.get(key) or PeerState(key)
    kept = current.allowed_ips
    if peer.replace_allowed_ips:
        for network in kept:
            _release(owners, network, key)
        kept = ()
    for network in peer.allowed_ips:  # an allowed IP belongs to one peer: adding it moves it here
        owner = owners.get(network)
        if owner is not None and owner != key:
            other = peers[owner]
            peers[owner] = replace(other, allowed_ips=tuple(n for n in other.allowed_ips if n != network))
        owners[network] = key
    peers[key] = replace(
        current,
        preshared_key=peer.preshared_key if peer.preshared_key is not None else current.preshared_key,
        endpoint=peer.endpoint if peer.endpoint is not None else current.endpoint,
        persistent_keepalive=(
            peer.persistent_keepalive if peer.persistent_keepalive is not None else current.persistent_keepalive
        ),
        allowed_ips=tuple(dict.fromkeys((*kept, *peer.allowed_ips))),
    )


class FakeDevice:
    """An in-memory `Device`: `configs` lists every applied config, `current` is the state `state()` returns.

    Set `fail_with` to make the next `configure` raise it (the config is then neither recorded nor applied).
    """

    def __init__(self, state: DeviceState | None = None) -> None:
        self.current = state if state is not None else DeviceState()
        self.configs: list[DeviceConfig] = []
        self.fail_with: Exception | None = None
        self.closed = False

    async def state(self) -> DeviceState:
        self._check_open()
        return self.current

    async def configure(self, config: DeviceConfig) -> None:
        self._check_open()
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.configs.append(config)
        self.current = apply(self.current, config)

    async def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise DeviceUnavailableError("the fake device is closed")


_: Device = FakeDevice()
