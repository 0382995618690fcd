"""The tries of one request: after a failed try, whether another follows, on which config, after what wait.

    try ─▶ failure counted by the config's `retry.on`? ──no──▶ it goes to the client as it is
             │yes
             ├─ tries left on this config, wait (backoff + jitter, or Retry-After ≤ maxRetryAfter) inside
             │  `retry.timeout` ─▶ the same config again (another endpoint when it has several)
             ├─ a fallback left (depth first; one whose body limit the request exceeds is skipped) ─▶ its own
             │  request: the client's headers cleaned by its rules, its secret, its plugins, the body with its
             │  `model` ─▶ try
             └─ nothing left ─▶ the last failure goes to the client
Decisions are pure (Plan.decide); upstream.py does the I/O and asks. Nothing is tried again once a byte went
to the client: upstream.py reads the first byte of an answer before it sends the status line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from time import time as wall_clock

import orjson

from wardgate.cluster.authorize.state import Route
from wardgate.cluster.plugins.flow import HttpFlow
from wardgate.cluster.plugins.flow import Request as FlowRequest
from wardgate.cluster.plugins.manager import ChainRun
from wardgate.cluster.proxy.exchange import Exchange
from wardgate.cluster.proxy.headers import upstream_request_headers

FIRST_TOKEN_TIMEOUT = "first token timeout"


@dataclass(frozen=True, slots=True)
class Step:
    """What follows a failed try: a wait, then the same config again, or the next fallback."""

    wait: float = 0.0
    fallback: tuple[Route, str | None] | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    """(config, why) of fallbacks passed over on the way to `fallback`."""


class AttemptFailed(Exception):
    """A try that failed before any byte went to the client. `kind` is `status`, `connect`, `timeout`,
    `reset` or FIRST_TOKEN_TIMEOUT; `step` is set when another try follows."""

    def __init__(self, kind: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(kind if status is None else f"status {status}")
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.step: Step | None = None

    @property
    def reason(self) -> str:
        return str(self)

    @property
    def healthy(self) -> bool:
        """Whether the endpoint still looks well (a 4xx is an answer; 5xx and no answer are trouble)."""
        return self.status is not None and self.status < 500


def retry_after(headers: object) -> float | None:
    """Seconds the upstream asks to wait: `retry-after-ms` (OpenAI), else `Retry-After` (seconds or a date)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    raw_ms = get("retry-after-ms")
    try:
        if raw_ms is not None:
            return max(0.0, float(raw_ms) / 1000)
        raw = get("Retry-After")
        if raw is None:
            return None
        raw = raw.strip()
        if raw[:1].isdigit():
            return max(0.0, float(raw))
        return max(0.0, parsedate_to_datetime(raw).timestamp() - wall_clock())
    except (ValueError, TypeError, OverflowError):
        return None


@dataclass(slots=True)
class Plan:
    """Where the tries of one request stand. Times are the event loop's clock."""

    route: Route
    model: str | None
    hops: tuple[tuple[Route, str | None], ...]
    body_bytes: int
    streaming: bool
    deadline: float | None
    tries: int = 1
    next_hop: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def start(cls, route: Route, body_bytes: int, streaming: bool, now: float) -> Plan:
        timeout = route.retry.timeout
        return cls(route, None, route.fallbacks, body_bytes, streaming, None if timeout is None else now + timeout)

    def first_token_timeout(self) -> float | None:
        return self.route.retry.first_token_timeout if self.streaming else None

    def counts(self, failure: AttemptFailed) -> bool:
        policy = self.route.retry
        if failure.status is not None:
            return failure.status in policy.statuses
        return failure.kind == FIRST_TOKEN_TIMEOUT or failure.kind in policy.kinds

    def decide(self, failure: AttemptFailed, now: float) -> Step | None:
        """The next try after `failure`, or None: the failure is the answer."""
        if not self.counts(failure) or (self.deadline is not None and now >= self.deadline):
            return None
        wait = self._retry_wait(failure)
        if wait is not None and (self.deadline is None or now + wait < self.deadline):
            return Step(wait=wait)
        skipped: list[tuple[str, str]] = []
        for route, model in self.hops[self.next_hop :]:
            why = self._unusable(route, model)
            if why is None:
                return Step(fallback=(route, model), skipped=tuple(skipped))
            skipped.append((route.name, why))
        return None

    def _retry_wait(self, failure: AttemptFailed) -> float | None:
        policy = self.route.retry
        if self.tries >= policy.attempts:
            return None
        if failure.kind == FIRST_TOKEN_TIMEOUT and "timeout" not in policy.kinds:
            return None
        step = min(policy.max_backoff, policy.backoff * 2.0 ** (self.tries - 1))
        wait = step / 2 + self.rng.uniform(0, step / 2)
        if failure.retry_after is not None:
            if failure.retry_after > policy.max_retry_after:
                return None
            wait = max(wait, failure.retry_after)
        return wait

    def _unusable(self, route: Route, model: str | None) -> str | None:
        body = route.config.http.body
        if self.body_bytes > body.max_request_bytes:
            return "skipped: body over its maxRequestBytes"
        if (model is not None or route.plugins) and self.body_bytes > body.max_parsed_bytes:
            return "skipped: body over its maxParsedBytes (its model or plugins need it parsed)"
        return None

    def advance(self, step: Step) -> None:
        if step.fallback is None:
            self.tries += 1
            return
        self.next_hop += len(step.skipped) + 1
        self.route, model = step.fallback
        self.model = model if model is not None else self.model
        self.tries = 1


def with_model(body: bytes, model: str) -> bytes:
    """The body with its top-level `model` replaced (a body that is not a JSON object is left as it is)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(value, dict):
        return body
    value["model"] = model
    return orjson.dumps(value)


async def hop_request(ex: Exchange, route: Route, model: str | None) -> tuple[FlowRequest, ChainRun | None]:
    """A fallback's own request, built from the client's (never from another config's, which carries that
    config's secret and its plugins' edits), then its plugins' request phase (PluginError propagates). When a
    plugin answers, `ex.flow.response` is set."""
    facts, admission = ex.facts, ex.admission
    assert facts is not None and admission is not None
    header = route.config.http.header
    headers = upstream_request_headers(ex.request.headers, route.remove_request_headers, header.pass_identity_headers)
    for name, value in route.add_request_headers:
        headers[name] = value
    body = facts.body if model is None else with_model(facts.body, model)
    outgoing = FlowRequest(ex.request.method, facts.raw_path, ex.request.rel_url.raw_query_string, headers, body)
    if ex.chain is not None:
        ex.spans.extend(ex.plugin_spans())
    ex.flow = ex.chain = None
    if not route.plugins:
        return outgoing, None
    record = ex.record
    flow = ex.flow = HttpFlow(record.service or "", ex.request_id, outgoing, admission.inp.ctx)
    run = ex.chain = route.plugins.begin(admission.inp)
    record.plugins = [*(record.plugins or ()), *route.plugins.names]
    try:
        await run.request(flow)
    finally:
        record.notes.extend(run.notes)
    return flow.request, run
