"""The worker board with real processes: settle waits for every live worker, names a stuck one, skips the dead."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.store.workers import BoardPropagation, WorkerBoard

# A worker that applies revision N only when nudged (SIGUSR1), as a real worker polls the store when nudged.
WORKER = """
import signal, sys, time
from pathlib import Path
from wardgate.cluster.store.workers import WorkerBoard
board = WorkerBoard(Path(sys.argv[1]), int(sys.argv[2]))
board.claim()
target, mode = int(sys.argv[3]), sys.argv[4]
if mode == "on-nudge":
    signal.signal(signal.SIGUSR1, lambda *_: board.publish(target))
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def start(children: list[subprocess.Popen[str]], path: Path, slot: int, target: int, mode: str) -> int:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), str(slot), str(target), mode], stdout=subprocess.PIPE, text=True
    )
    children.append(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child.pid


async def test_settle_waits_for_every_worker_and_nudges_them(
    tmp_path: Path, spawn: list[subprocess.Popen[str]]
) -> None:
    path = tmp_path / "workers"
    board = WorkerBoard.create(path, 3)
    board.claim()
    board.publish(7)
    for slot in (1, 2):
        start(spawn, path, slot, 7, "on-nudge")
    assert len(board.behind(7)) == 2
    started = time.monotonic()
    await BoardPropagation(board, timeout=5).settle(7)
    assert time.monotonic() - started < 1
    assert board.behind(7) == []
    assert {revision for _, revision in board.read()} == {7}


async def test_a_stuck_worker_is_named_after_the_bound(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    path = tmp_path / "workers"
    board = WorkerBoard.create(path, 2)
    board.claim()
    board.publish(3)
    stuck = start(spawn, path, 1, 3, "never")
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"pid {stuck}.*revision 3"):
        await BoardPropagation(board, timeout=0.3).settle(3)
    assert 0.3 <= time.monotonic() - started < 2


async def test_dead_and_free_slots_are_skipped(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    path = tmp_path / "workers"
    board = WorkerBoard.create(path, 3)
    board.claim()
    board.publish(5)
    start(spawn, path, 1, 5, "never")
    spawn[0].kill()
    spawn[0].wait()
    await asyncio.wait_for(BoardPropagation(board, timeout=5).settle(5), 1)  # slot 1 dead, slot 2 free


async def test_a_released_board_slot_frees_the_writers(tmp_path: Path) -> None:
    path = tmp_path / "workers"
    board = WorkerBoard.create(path, 2)
    board.claim()
    other = WorkerBoard(path, 1)
    other.claim()
    assert board.behind(1) != []
    other.close()
    assert board.behind(0) == []
    board.publish(1)
    assert board.behind(1) == []


def test_the_board_refuses_a_slot_it_does_not_have(tmp_path: Path) -> None:
    path = tmp_path / "workers"
    WorkerBoard.create(path, 2)
    with pytest.raises(ValueError, match="slot 2"):
        WorkerBoard(path, 2)
    with pytest.raises(ValueError, match="between 1 and"):
        WorkerBoard.create(path, 0)
