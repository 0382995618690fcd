"""WireGuard device access shared by the node agent and the client; a leaf that imports nothing else of ours.

`open_device` (in `agent.wg.backend`) picks the kernel (`netlink`) or wireguard-go (`uapi`); tests use
`fake.FakeDevice`. This package stays light to import: pyroute2 loads only with `backend`/`netlink`.
"""

from wardgate.agent.wg.device import Device, DeviceConfig, DeviceState, Endpoint, IPNetwork, PeerConfig, PeerState
from wardgate.agent.wg.errors import DeviceUnavailableError, KernelError, UapiError, WireGuardError
from wardgate.agent.wg.keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "Device",
    "DeviceConfig",
    "DeviceState",
    "DeviceUnavailableError",
    "Endpoint",
    "IPNetwork",
    "KernelError",
    "PeerConfig",
    "PeerState",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "UapiError",
    "WireGuardError",
]
