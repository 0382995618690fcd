"""The console's data, without a browser: the ledger's history, its series per dimension, the refusals read
back from the access log, and the SVG chart (escaped, one line per key, the rest as `other`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from wardgate.cluster.api.console_data import refusals, series
from wardgate.cluster.api.console_view import chart
from wardgate.cluster.usage.ledger import LedgerRow as Row
from wardgate.cluster.usage.ledger import SQLiteLedger

HOUR = 3600.0
NOW = 1_800_000_000.0 - 1800.0
"""Half past an hour, so the bucket boundaries are known."""


def row(at: float, user: str, groups: tuple[str, ...], model: str, tokens: tuple[int, int], cost: float = 0.0) -> Row:
    return Row(at, user, groups, None, None, "svc", None, model, tokens[0], tokens[1], 0, 0, cost, False, 200, None)


def test_history_buckets_per_user_and_filters_one_user(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "usage.db")
    ledger.write(
        [
            row(NOW - 2 * HOUR, "alice", ("dev", "ops"), "m1", (10, 5)),
            row(NOW - 2 * HOUR + 60, "alice", ("dev", "ops"), "m1", (1, 1), cost=0.5),
            row(NOW - 60, "bob", (), "m2", (3, 4)),
            row(NOW - 30 * HOUR, "bob", (), "m2", (100, 100)),
        ]
    )
    rows = ledger.history(NOW - 24 * HOUR, HOUR)
    assert sorted((r.start, r.user, r.groups, r.requests, r.input_tokens, r.output_tokens) for r in rows) == [
        (NOW - 2 * HOUR - 1800, "alice", ("dev", "ops"), 2, 11, 6),
        (NOW - 1800, "bob", (), 1, 3, 4),
    ]
    (only,) = ledger.history(NOW - 24 * HOUR, HOUR, user="alice")
    assert only.user == "alice" and only.cost == 0.5 and only.model == "m1"
    ledger.close()


def test_series_counts_a_call_for_each_group_and_orders_by_cost(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "usage.db")
    ledger.write([row(NOW - HOUR, "alice", ("dev", "ops"), "m1", (10, 5), 1.0), row(NOW, "bob", (), "m2", (3, 4))])
    rows = ledger.history(NOW - 3 * HOUR, HOUR)
    by_group = series(rows, "group", NOW - 3 * HOUR, HOUR, NOW)
    assert by_group.buckets == [NOW - 3 * HOUR - 1800 + i * HOUR for i in range(4)]
    assert [t["key"] for t in by_group.totals] == ["dev", "ops", "-"]
    assert by_group.points["dev"] == {NOW - HOUR - 1800: 15} and by_group.points["-"] == {NOW - 1800: 7}
    by_model = series(rows, "model", NOW - 3 * HOUR, HOUR, NOW)
    assert {t["key"]: (t["requests"], t["input"], t["output"]) for t in by_model.totals} == {
        "m1": (1, 10, 5),
        "m2": (1, 3, 4),
    }
    ledger.close()


def test_refusals_of_the_last_hour_newest_first(tmp_path: Path) -> None:
    def line(at: float, status: int, reason: str | None) -> bytes:
        entry = {"time": datetime.fromtimestamp(at, UTC).isoformat(), "status": status, "path": f"/{at}"}
        return orjson.dumps({**entry, "reason": reason} if reason else entry) + b"\n"

    log = tmp_path / "access.log"
    log.write_bytes(
        line(NOW - 2 * HOUR, 403, "too old")
        + line(NOW - 50 * 60, 403, "rule-match")
        + b"{not json\n"
        + line(NOW - 40 * 60, 200, None)
        + line(NOW - 30 * 60, 404, "service/x not found")
        + line(NOW - 20 * 60, 502, None)
    )
    found = refusals(log, NOW)
    assert [e["reason"] for e in found] == ["service/x not found", "rule-match"]
    assert refusals(tmp_path / "missing.log", NOW) == [] and refusals(None, NOW) == []


def test_chart_escapes_keys_and_sums_the_rest_as_other(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "usage.db")
    users = ["<script>x</script>", *(f"u{i}" for i in range(6))]
    ledger.write([row(NOW - i * 60, user, (), "m", (i + 1, 0), cost=10.0 - i) for i, user in enumerate(users)])
    data = series(ledger.history(NOW - HOUR, 300), "user", NOW - HOUR, 300, NOW)
    svg = chart("Tokens per user", data)
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg
    assert svg.count("<polyline") == 6 and "<title>other</title>" in svg
    assert 'role="img"' in svg and "aria-label=" in svg and "style=" not in svg
    ledger.close()
