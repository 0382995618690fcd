"""Opens a WireGuard interface with the right implementation: the kernel's when it has the module, else wireguard-go."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from wardgate.agent.wg.device import Device, DeviceConfig, DeviceState
from wardgate.agent.wg.errors import WireGuardError
from wardgate.agent.wg.names import check_interface_name, require_netns
from wardgate.agent.wg.netlink import KernelDevice, Links, kernel_module_loaded
from wardgate.agent.wg.uapi import UapiDevice, socket_path
from wardgate.agent.wg.wireguard_go import WireGuardGo, socket_is_live

log = logging.getLogger(__name__)

Kind = Literal["auto", "kernel", "userspace"]


class OwnedDevice:
    """A `Device` plus what `open_device` created for it: `close()` closes the device, then undoes the creation."""

    def __init__(self, device: Device, undo: Callable[[], Awaitable[None]] | None = None) -> None:
        self.device = device
        self._undo = undo

    async def state(self) -> DeviceState:
        return await self.device.state()

    async def configure(self, config: DeviceConfig) -> None:
        await self.device.configure(config)

    async def close(self) -> None:
        undo, self._undo = self._undo, None
        try:
            await self.device.close()
        finally:
            if undo is not None:
                await undo()


async def open_device(iface: str, netns: str | None = None, *, kind: Kind = "auto") -> Device:
    """Open WireGuard interface `iface` in `netns` (None: this namespace), creating it if needed.

    `kind="auto"` uses the kernel when /sys/module/wireguard exists, else wireguard-go (started as a
    child process unless one already serves `iface` in `netns`). `close()` on the result deletes the
    interface or stops the process if this call created it, and leaves it alone otherwise.
    """
    check_interface_name(iface)
    require_netns(netns)
    if kind == "kernel" or (kind == "auto" and kernel_module_loaded()):
        return await _open_kernel(iface, netns)
    return await _open_userspace(iface, netns)


async def _open_kernel(iface: str, netns: str | None) -> Device:
    async with Links(netns) as links:
        created = await links.create_wireguard(iface)
    device = KernelDevice(iface, netns)

    async def delete() -> None:
        async with Links(netns) as links:
            await links.delete(iface)

    return OwnedDevice(device, delete if created else None)


async def _open_userspace(iface: str, netns: str | None) -> Device:
    if socket_is_live(socket_path(iface)):
        async with Links(netns) as links:
            if await links.index(iface) is None:
                raise WireGuardError(
                    f"a wireguard-go process serves {iface}, but not in network namespace {netns or '(default)'}: "
                    "its socket directory is shared by all namespaces, so interface names must be unique"
                )
        return UapiDevice(iface)
    process = await WireGuardGo.start(iface, netns=netns)
    return OwnedDevice(UapiDevice(iface), process.stop)
