"""Per-tool MCP metrics: labels come from the specification's methods and the names the upstream listed."""

from __future__ import annotations

from wardgate.cluster.observability.metrics import Metrics
from wardgate.cluster.proxy.mcp_metrics import MAX_NAMES_PER_SERVICE, McpCallMetrics


def _series(metrics: Metrics) -> dict[tuple[str, ...], float]:
    found: dict[tuple[str, ...], float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "wardgate_mcp_calls_total":
                labels = sample.labels
                found[(labels["service"], labels["method"], labels["tool"], labels["decision"])] = sample.value
    return found


def test_listed_names_are_labelled_and_others_are_not() -> None:
    metrics = Metrics()
    calls = McpCallMetrics(metrics)
    calls.learn("tools", [("tools/call", "search"), ("prompts/get", "greet"), ("resources/read", "file:///x")])
    calls.count("tools", "tools/call", "search", "ALLOW")
    calls.count("tools", "tools/call", "search", "DENY")
    calls.count("tools", "prompts/get", "greet", "ALLOW")
    for i in range(50):
        calls.count("tools", "tools/call", f"random-{i}", "DENY")
        calls.count("tools", f"made/up/{i}", "x", "DENY")
    calls.count("other-service", "tools/call", "search", "ALLOW")  # learned for "tools" only
    calls.count("tools", "tools/list", "", "ALLOW")
    assert _series(metrics) == {
        ("tools", "tools/call", "search", "allow"): 1,
        ("tools", "tools/call", "search", "deny"): 1,
        ("tools", "prompts/get", "greet", "allow"): 1,
        ("tools", "tools/call", "other", "deny"): 50,
        ("tools", "other", "-", "deny"): 50,
        ("other-service", "tools/call", "other", "allow"): 1,
        ("tools", "tools/list", "-", "allow"): 1,
    }


def test_an_upstream_cannot_list_unbounded_names() -> None:
    calls = McpCallMetrics(None)
    calls.learn("tools", [("tools/call", f"t{i}") for i in range(MAX_NAMES_PER_SERVICE + 10)])
    assert calls.labels("tools", "tools/call", "t0") == ("tools/call", "t0")
    assert calls.labels("tools", "tools/call", f"t{MAX_NAMES_PER_SERVICE + 5}") == ("tools/call", "other")
