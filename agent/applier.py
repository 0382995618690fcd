"""Applier: the single task that touches the node's WireGuard device (habit 8).

Reads and writes are submitted as (operation, future) on a queue and performed in order by `run()`.
The device is opened lazily, by the `open` callable main provides (which also puts the gateway addresses
on the interface); when it turns out to be gone (`DeviceUnavailableError`: wireguard-go killed, the
interface deleted) the handle is dropped and the next operation opens a new one, so the reconciler's next
pass restores the key, the port and every peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wardgate.agent.wg import Device, DeviceConfig, DeviceState, DeviceUnavailableError

log = logging.getLogger(__name__)

Opener = Callable[[], Awaitable[Device]]


@dataclass(slots=True)
class _Operation:
    config: DeviceConfig | None  # None: read the state
    done: asyncio.Future[DeviceState | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Applier:
    """Owns the `Device`; `state()` and `apply()` may be called from any task, `run()` runs in exactly one."""

    def __init__(self, open_device: Opener) -> None:
        self._open = open_device
        self._device: Device | None = None
        self._queue: asyncio.Queue[_Operation] = asyncio.Queue()
        self.opened = 0
        """How many times a device was opened (1 at start; more after recoveries)."""

    async def state(self) -> DeviceState:
        result = await self._submit(_Operation(None))
        assert result is not None
        return result

    async def apply(self, config: DeviceConfig) -> None:
        await self._submit(_Operation(config))

    async def _submit(self, operation: _Operation) -> DeviceState | None:
        await self._queue.put(operation)
        return await operation.done

    async def run(self) -> None:
        while True:
            operation = await self._queue.get()
            if operation.done.cancelled():
                continue
            try:
                result = await self._perform(operation.config)
            except Exception as exc:
                if not operation.done.cancelled():
                    operation.done.set_exception(exc)
            else:
                if not operation.done.cancelled():
                    operation.done.set_result(result)

    async def _perform(self, config: DeviceConfig | None) -> DeviceState | None:
        if self._device is None:
            self._device = await self._open()
            self.opened += 1
        try:
            if config is None:
                return await self._device.state()
            await self._device.configure(config)
            return None
        except DeviceUnavailableError:
            device, self._device = self._device, None
            with contextlib.suppress(Exception):
                await device.close()
            log.warning("the WireGuard device is gone; it will be recreated")
            raise

    async def close(self) -> None:
        """Close the device (stopping wireguard-go if this agent started it). Call after `run()` has ended."""
        device, self._device = self._device, None
        if device is not None:
            await device.close()
