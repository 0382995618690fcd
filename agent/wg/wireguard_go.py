"""Runs wireguard-go as a foreground child process serving one interface, optionally inside a network namespace.

wireguard-go creates the TUN interface in the namespace it runs in (`ip netns exec <ns>`), but its UAPI
socket lands in /var/run/wireguard, which every namespace shares: interface names must be unique per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from wardgate.agent.wg.errors import DeviceUnavailableError, WireGuardError
from wardgate.agent.wg.names import check_interface_name, require_netns
from wardgate.agent.wg.uapi import socket_path

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.01


def socket_is_live(path: Path) -> bool:
    """True if something accepts connections on the unix socket `path` (a crashed wireguard-go leaves the file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class WireGuardGo:
    """One running `wireguard-go -f <iface>`; `stop()` (or leaving `async with`) ends it and its socket."""

    def __init__(self, iface: str, process: asyncio.subprocess.Process, output: IO[bytes], path: Path) -> None:
        self.iface = iface
        self.socket_path = path
        self._process = process
        self._output = output
        self._final_output: str | None = None

    @classmethod
    async def start(
        cls,
        iface: str,
        *,
        netns: str | None = None,
        binary: str = "wireguard-go",
        ready_within: float = 10.0,
    ) -> WireGuardGo:
        """Start wireguard-go for `iface` (in `netns` via `ip netns exec`) and wait until its socket answers."""
        check_interface_name(iface)
        require_netns(netns)
        path = socket_path(iface)  # wireguard-go always uses /var/run/wireguard
        executable = shutil.which(binary)
        if executable is None:
            raise DeviceUnavailableError(f"{binary} is not installed (Debian: apt-get install wireguard-go)")
        if socket_is_live(path):
            raise WireGuardError(f"wireguard-go already serves {iface} ({path}); interface names must be unique")
        command = [executable, "-f", iface]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": os.environ.get("LOG_LEVEL", "error")}
        output = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process; stop() closes it)
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, env=env
            )
        except BaseException:
            output.close()
            raise
        running = cls(iface, process, output, path)
        try:
            await running._wait_ready(ready_within)
        except BaseException:
            await running.stop()
            raise
        log.info("wireguard-go %d serves %s%s", process.pid, iface, f" in netns {netns}" if netns else "")
        return running

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the process to exit (a supervisor restarts it); returns its exit status."""
        return await self._process.wait()

    def output(self) -> str:
        """What wireguard-go printed so far (errors only, unless LOG_LEVEL=verbose)."""
        if self._final_output is not None:
            return self._final_output
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    async def _wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        while not socket_is_live(self.socket_path):
            if self._process.returncode is not None:
                raise DeviceUnavailableError(
                    f"wireguard-go for {self.iface} exited with {self._process.returncode}: {self.output().strip()}"
                )
            if time.monotonic() > deadline:
                raise DeviceUnavailableError(f"wireguard-go for {self.iface} did not open its socket in {within} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_INTERVAL):
                    await self._process.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (SIGKILL after `grace` seconds), then remove a socket file left behind if nothing serves it."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                async with asyncio.timeout(grace):
                    await self._process.wait()
            except TimeoutError:
                log.warning("wireguard-go %d ignored SIGTERM; killing it", self._process.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
        if self.socket_path.exists() and not socket_is_live(self.socket_path):
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._final_output is None:
            self._final_output = self.output()
            self._output.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
