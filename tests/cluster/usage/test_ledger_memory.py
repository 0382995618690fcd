"""The SQLite ledger's memory stays flat whatever the batch lengths: sqlite3 caches a prepared statement per
distinct SQL text (128 of them), and a multi-row INSERT per batch length kept up to 128 large statements,
tens of MiB (the gateway's RSS rose by ~75 MiB over its first minutes under load)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from wardgate.cluster.usage.ledger import LedgerRow, SQLiteLedger


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _row(i: int) -> LedgerRow:
    return LedgerRow(time.time(), f"user{i % 7}", ("dev", "ops"), "cred", None, "svc", "default", "gpt-4o-mini",
                     12, 20, 0, 0, 0.0001, False, 200, f"req-{i}")  # fmt: skip


def test_batches_of_every_length_keep_the_ledger_s_memory_flat(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "store.db")
    rows = [_row(i) for i in range(1000)]
    for length in (1, 300, 700):  # warm-up: the allocator and the page cache settle
        ledger.write(rows[:length])
    before = _rss_kib()
    lengths = list(range(200, 800, 3))
    random.Random(7).shuffle(lengths)
    for length in lengths:  # 200 batch lengths, each a distinct multi-row INSERT before
        ledger.write(rows[:length])
    grown = _rss_kib() - before
    ledger.close()
    assert grown < 8 * 1024, f"RSS grew {grown} KiB over 200 batches"
