"""The worker board: how the workers of one node agree that a write is enforced before it is acknowledged.

    primary: WorkerBoard.create(path, N) ─▶ a small shared file, one slot per worker: (pid, applied revision)
    each worker: claims its slot before loading its cache; publishes "applied ≥ R" once its cache and its
        gateway state serve revision R (authorize/holder.py)
    a writer (any worker): store.commit ─▶ BoardPropagation.settle(R): nudges the others (SIGUSR1: poll the
        store now) ─▶ waits until every live slot shows ≥ R ─▶ acknowledges; a worker that stays behind for
        `timeout` is named in an Unavailable error (the write is stored, its enforcement is not certain)

A slot whose process is gone (crashed, or stopped) is skipped: a dead worker serves nobody. A worker that
is starting claims its slot at revision 0 first, so a write made while it loads waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import signal
import struct
import time
from pathlib import Path

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.store.propagation import SETTLE_TIMEOUT, Propagation

_SLOT = struct.Struct("<qq")
"""pid (0: free), applied revision."""
MAX_WORKERS = 64
NUDGE = signal.SIGUSR1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerBoard:
    """A memory-mapped file of worker slots, shared by the processes of one node."""

    def __init__(self, path: Path, slot: int) -> None:
        self.path = path
        self.slot = slot
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self.slots = size // _SLOT.size
            if not 0 <= slot < self.slots:
                raise ValueError(f"worker slot {slot} is outside the board's {self.slots} slots")
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, path: Path, workers: int) -> WorkerBoard:
        """Make (or reset) the board for `workers` processes; the caller takes slot 0."""
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_bytes(bytes(_SLOT.size * workers))
        tmp.chmod(0o600)
        tmp.replace(path)
        return cls(path, 0)

    def claim(self) -> None:
        """Take this process's slot at revision 0: writers wait for it from now on."""
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, os.getpid(), 0)

    def publish(self, revision: int) -> None:
        offset = self.slot * _SLOT.size
        _SLOT.pack_into(self._map, offset, os.getpid(), revision)

    def release(self) -> None:
        with contextlib.suppress(ValueError):
            _SLOT.pack_into(self._map, self.slot * _SLOT.size, 0, 0)

    def read(self) -> list[tuple[int, int]]:
        """(pid, applied revision) per slot."""
        return [_SLOT.unpack_from(self._map, i * _SLOT.size) for i in range(self.slots)]

    def behind(self, revision: int) -> list[int]:
        """The pids of live workers that have not applied `revision` yet."""
        return [pid for pid, applied in self.read() if pid and applied < revision and _alive(pid)]

    def close(self) -> None:
        self.release()
        self._map.close()


class BoardPropagation:
    """`Propagation` across the workers of a node, through the board."""

    def __init__(self, board: WorkerBoard, timeout: float = SETTLE_TIMEOUT) -> None:
        self._board = board
        self._timeout = timeout

    def _nudge(self, pids: list[int]) -> None:
        me = os.getpid()
        for pid in pids:
            if pid != me:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, NUDGE)

    async def settle(self, revision: int) -> None:
        behind = self._board.behind(revision)
        if not behind:
            return
        self._nudge(behind)
        deadline = time.monotonic() + self._timeout
        pause = 0.0005
        while True:
            await asyncio.sleep(pause)
            behind = self._board.behind(revision)
            if not behind:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"pid {pid}" for pid in behind)
                raise Unavailable(
                    f"worker {names} has not applied revision {revision} within {self._timeout:g} s (stuck?); "
                    "the write is stored but may not be enforced by that worker yet"
                )
            pause = min(pause * 2, 0.01)
            if pause >= 0.01:
                self._nudge(behind)


_: Propagation = BoardPropagation.__new__(BoardPropagation)
