"""The tries' decisions (Plan) and the balancer, without sockets: table tests on compiled routes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from wardgate.cluster.authorize.state import Route, make_route
from wardgate.cluster.proxy.attempts import FIRST_TOKEN_TIMEOUT, AttemptFailed, Plan, retry_after, with_model
from wardgate.cluster.proxy.balancer import Balancer
from wardgate.cluster.resources.service import ServiceConfig


def route(name: str = "default", **config: Any) -> Route:
    return make_route(name, ServiceConfig.model_validate({"upstream": {"url": "http://u.test"}, **config}))


def plan(primary: Route, *fallbacks: tuple[Route, str | None], body: int = 100, streaming: bool = False) -> Plan:
    p = Plan.start(primary, body, streaming, now=0.0)
    p.hops = tuple(fallbacks)
    p.rng = random.Random(7)
    return p


def test_counted_statuses_retry_with_growing_jittered_backoff() -> None:
    p = plan(route(retry={"attempts": 3, "backoff": "100ms", "maxBackoff": "150ms"}))
    first = p.decide(AttemptFailed("status", 503), 0.0)
    assert first is not None and first.fallback is None and 0.05 <= first.wait <= 0.1
    p.advance(first)
    second = p.decide(AttemptFailed("status", 503), 0.0)
    assert second is not None and 0.075 <= second.wait <= 0.15
    p.advance(second)
    assert p.decide(AttemptFailed("status", 503), 0.0) is None  # three tries made


@pytest.mark.parametrize(
    ("failure", "counts"),
    [
        (AttemptFailed("status", 429), True),
        (AttemptFailed("status", 500), True),
        (AttemptFailed("status", 400), False),
        (AttemptFailed("connect"), True),
        (AttemptFailed("timeout"), False),
        (AttemptFailed("reset"), False),
        (AttemptFailed(FIRST_TOKEN_TIMEOUT), True),
    ],
)
def test_what_counts_by_default(failure: AttemptFailed, counts: bool) -> None:
    assert plan(route(retry={"attempts": 2})).counts(failure) is counts


def test_retry_after_within_the_cap_is_waited_and_beyond_it_moves_on() -> None:
    backup = route("backup")
    p = plan(route(retry={"attempts": 3, "maxRetryAfter": "2s"}), (backup, "m"))
    step = p.decide(AttemptFailed("status", 429, retry_after=1.5), 0.0)
    assert step is not None and step.wait == 1.5 and step.fallback is None
    step = p.decide(AttemptFailed("status", 429, retry_after=30), 0.0)
    assert step is not None and step.wait == 0 and step.fallback == (backup, "m")


def test_fallbacks_in_order_skipping_one_the_body_is_too_large_for() -> None:
    small = route("small", http={"body": {"maxRequestBytes": 10}})
    big = route("big")
    p = plan(route(), (small, None), (big, "gpt-4o-mini"), body=1000)
    step = p.decide(AttemptFailed("connect"), 0.0)
    assert step is not None and step.fallback == (big, "gpt-4o-mini")
    assert step.skipped == (("small", "skipped: body over its maxRequestBytes"),)
    p.advance(step)
    assert p.route is big and p.model == "gpt-4o-mini" and p.decide(AttemptFailed("connect"), 0.0) is None


def test_a_model_rewrite_over_the_parse_limit_is_skipped() -> None:
    tight = route("tight", http={"body": {"maxParsedBytes": 10}})
    p = plan(route(), (tight, "other-model"), body=1000)
    assert p.decide(AttemptFailed("status", 503), 0.0) is None


def test_the_deadline_stops_further_tries() -> None:
    primary = route(retry={"attempts": 5, "timeout": "1s", "backoff": "100ms", "maxBackoff": "100ms"})
    p = plan(primary, (route("backup"), None))
    assert p.deadline == 1.0
    assert p.decide(AttemptFailed("status", 503), 0.96) is not None  # a fallback, no time for a wait
    assert p.decide(AttemptFailed("status", 503), 1.0) is None


def test_first_token_timeout_applies_to_streams_only() -> None:
    primary = route(firstTokenTimeout="2s")
    assert plan(primary, streaming=True).first_token_timeout() == 2.0
    assert plan(primary, streaming=False).first_token_timeout() is None


def test_retry_after_forms() -> None:
    assert retry_after(CIMultiDict({"Retry-After": "3"})) == 3.0
    assert retry_after(CIMultiDict({"retry-after-ms": "250", "Retry-After": "3"})) == 0.25
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    found = retry_after(CIMultiDict({"Retry-After": later}))
    assert found is not None and 15 < found <= 20
    assert retry_after(CIMultiDict({"Retry-After": "soon"})) is None
    assert retry_after(CIMultiDict()) is None


def test_with_model_replaces_only_the_top_level_model() -> None:
    body = orjson.dumps({"model": "gemini-2.5-flash", "messages": [{"model": "inner"}]})
    assert orjson.loads(with_model(body, "gpt-4o-mini")) == {"model": "gpt-4o-mini", "messages": [{"model": "inner"}]}
    assert with_model(b"[1, 2]", "m") == b"[1, 2]" and with_model(b"not json", "m") == b"not json"


def replicas(balance: str = "roundRobin") -> Route:
    return make_route(
        "default",
        ServiceConfig.model_validate(
            {
                "upstream": {
                    "endpoints": [{"url": "http://a.test", "weight": 2}, {"url": "http://b.test"}],
                    "balance": balance,
                    "health": {"failures": 2, "cooldown": "10s"},
                }
            }
        ),
    )


def test_smooth_weighted_round_robin() -> None:
    r, balancer = replicas(), Balancer(clock=lambda: 0.0)
    picks = [balancer.pick(r.endpoints, r.retry).netloc for _ in range(6)]
    assert picks == ["a.test", "b.test", "a.test", "a.test", "b.test", "a.test"]


def test_ejection_cooldown_and_probe() -> None:
    now = [0.0]
    r, balancer = replicas(), Balancer(clock=lambda: now[0])
    a, b = r.endpoints
    for _ in range(2):
        balancer.started(a)
        balancer.finished(a, r.retry, healthy=False)
    assert {balancer.pick(r.endpoints, r.retry).netloc for _ in range(5)} == {"b.test"}
    assert ("http://a.test", False, 0, 1) in list(balancer.snapshot())
    now[0] = 10.0
    assert "a.test" in {balancer.pick(r.endpoints, r.retry).netloc for _ in range(3)}
    balancer.finished(a, r.retry, healthy=False)  # a probe that fails: out again at once
    assert {balancer.pick(r.endpoints, r.retry).netloc for _ in range(3)} == {"b.test"}
    now[0] = 11.0
    for _ in range(2):
        balancer.finished(b, r.retry, healthy=False)
    assert balancer.pick(r.endpoints, r.retry).netloc == "a.test"  # all out: the one back soonest (at 20 s)


def test_least_in_flight_and_avoiding_the_endpoint_that_just_failed() -> None:
    r, balancer = replicas("leastInFlight"), Balancer(clock=lambda: 0.0)
    a, b = r.endpoints
    balancer.started(b)
    assert balancer.pick(r.endpoints, r.retry).netloc == "a.test"
    balancer.started(a)
    balancer.started(a)
    balancer.started(a)
    assert balancer.pick(r.endpoints, r.retry).netloc == "b.test"  # 3/2 in flight per weight against 1/1
    assert balancer.pick(r.endpoints, r.retry, avoid="http://b.test").netloc == "a.test"
