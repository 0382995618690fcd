"""Per-tool metrics of MCP Services, with labels a caller cannot multiply.

    the upstream's tools/list and prompts/list answers (every item, before the per-caller filter)
        ─▶ learn(): the names this process has seen listed, per Service (at most MAX_NAMES_PER_SERVICE)
    each decided call ─▶ count(): wardgate_mcp_calls{service, method, tool, decision}
    a request of one allowed call ─▶ timed(): wardgate_mcp_call_duration_seconds{service, method, tool}

A method outside the MCP specification's and a name no list of this process carried are labelled "other":
calling random names makes no new series. A worker that has not relayed a list yet labels every name
"other" until it does (each worker learns from the lists it relays).
"""

from __future__ import annotations

from collections.abc import Iterable

from wardgate.cluster.observability.metrics import Metrics

OTHER = "other"
NO_NAME = "-"
MAX_NAMES_PER_SERVICE = 1000
NAMED = frozenset({"tools/call", "prompts/get"})
METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "GET",
        "DELETE",
    }
)
"""Methods counted under their own name (GET and DELETE: the transport's listen and end-session requests)."""


class McpCallMetrics:
    """Counts MCP calls into `metrics` (see the module docstring); `None` counts nothing."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._names: dict[str, set[str]] = {}

    def learn(self, service: str, calls: Iterable[tuple[str, str]]) -> None:
        """Names the upstream listed, as the (method, name) pairs the list filter decides."""
        known = self._names.setdefault(service, set())
        for method, name in calls:
            if method in NAMED and name not in known and len(known) < MAX_NAMES_PER_SERVICE:
                known.add(name)

    def labels(self, service: str, method: str, name: str) -> tuple[str, str]:
        """(method, tool) labels: bounded by the specification's methods and the listed names."""
        if method not in METHODS:
            return OTHER, NO_NAME
        if method not in NAMED:
            return method, NO_NAME
        return method, name if name in self._names.get(service, ()) else OTHER

    def count(self, service: str, method: str, name: str, effect: str) -> None:
        if self._metrics is not None:
            self._metrics.mcp_call(service, *self.labels(service, method, name), effect.lower())

    def timed(self, service: str, method: str, name: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.mcp_call_duration(service, *self.labels(service, method, name), seconds)
