"""LocalCounters: all-or-nothing charges, windows that end, and exactness across processes sharing the file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from wardgate.cluster.usage.counters import Charge, LocalCounters


def test_a_charge_is_all_or_nothing(tmp_path: Path) -> None:
    counters = LocalCounters(tmp_path / "counters", slots=64)
    ok = counters.charge_now([Charge("a", 1, 2, 60), Charge("b", 5, 10, 60)])
    assert ok.refused is None and ok.values == [1, 5]
    refused = counters.charge_now([Charge("a", 1, 2, 60), Charge("b", 6, 10, 60)])
    assert refused.refused == 1 and refused.values == [1, 5]
    assert counters.read_now(["a", "b"]) == [1, 5]
    counters.adjust_now([("b", -3, 60), ("a", 10, 60)])
    assert counters.read_now(["a", "b", "missing"]) == [11, 2, 0]


def test_an_ended_window_counts_from_zero_and_its_slot_is_reused(tmp_path: Path) -> None:
    counters = LocalCounters(tmp_path / "counters", slots=2)
    counters.charge_now([Charge("old", 3, 10, -2)])  # already past its end (ttl + 1 s grace)
    assert counters.read_now(["old"]) == [0]
    counters.charge_now([Charge("x", 1, 10, 60), Charge("y", 1, 10, 60)])
    assert counters.read_now(["x", "y"]) == [1, 1]


def _hammer(path: str, tries: int, passed: multiprocessing.Queue[int]) -> None:
    counters = LocalCounters(Path(path))
    passed.put(sum(counters.charge_now([Charge("shared", 1, 500, 60)]).refused is None for _ in range(tries)))


def test_exact_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "counters")
    LocalCounters(Path(path))
    passed: multiprocessing.Queue[int] = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_hammer, args=(path, 300, passed)) for _ in range(4)]
    for w in workers:
        w.start()
    total = sum(passed.get(timeout=30) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    assert total == 500
    assert LocalCounters(Path(path)).read_now(["shared"]) == [500]
