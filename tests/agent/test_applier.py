"""Applier: the single writer; operations in order; a vanished device is reopened on the next operation."""

from __future__ import annotations

import asyncio

import pytest

from wardgate.agent.applier import Applier
from wardgate.agent.wg import DeviceConfig, DeviceUnavailableError, PrivateKey
from wardgate.agent.wg.fake import FakeDevice


async def test_operations_run_in_order_and_a_lost_device_is_reopened() -> None:
    devices: list[FakeDevice] = []

    async def opener() -> FakeDevice:
        devices.append(FakeDevice())
        return devices[-1]

    applier = Applier(opener)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(applier.run())
        key = PrivateKey.generate()
        await asyncio.gather(*(applier.apply(DeviceConfig(listen_port=port)) for port in range(51820, 51830)))
        assert [c.listen_port for c in devices[0].configs] == list(range(51820, 51830))
        await applier.apply(DeviceConfig(private_key=key))
        assert (await applier.state()).private_key == key

        devices[0].fail_with = DeviceUnavailableError("wireguard-go is not running")
        with pytest.raises(DeviceUnavailableError):
            await applier.apply(DeviceConfig(listen_port=1))
        assert devices[0].closed
        fresh = await applier.state()  # the next operation opens a new device
        assert fresh.private_key is None and len(devices) == 2 and applier.opened == 2
        runner.cancel()
    await applier.close()
    assert devices[1].closed
