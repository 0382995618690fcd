"""PluginChain semantics: order, answers skip the rest, response hooks, conditions, fail open/closed."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from tests.cluster.plugins.helpers import make_flow
from wardgate.cluster.plugins.flow import HttpFlow, Response
from wardgate.cluster.plugins.manager import Entry, PluginChain, PluginError
from wardgate.cluster.policy.engine import ConditionError, EvalInput


class Recorder:
    def __init__(self, name: str, log: list[str], answer: int | None = None, fail: bool = False) -> None:
        self.name, self.log, self.answer, self.fail = name, log, answer, fail

    async def request(self, flow: HttpFlow) -> None:
        self.log.append(f"{self.name}.request")
        flow.request.headers["x-last"] = self.name
        flow.request.body += self.name.encode()
        if self.fail:
            raise RuntimeError("boom")
        if self.answer is not None:
            flow.response = Response(self.answer, CIMultiDict(), b"")

    def response_headers(self, flow: HttpFlow) -> None:
        self.log.append(f"{self.name}.response_headers")


class Buffering(Recorder):
    def response(self, flow: HttpFlow) -> None:
        self.log.append(f"{self.name}.response")
        assert flow.response is not None
        flow.response.body = (flow.response.body or b"") + self.name.encode()


def run(chain: PluginChain, ctx: dict[str, Any] | None = None) -> Any:
    return chain.begin(EvalInput(ctx or {}))


async def test_request_hooks_run_in_order_and_response_hooks_for_those_that_ran() -> None:
    log: list[str] = []
    chain = PluginChain([Entry(n, Recorder(n, log)) for n in ("a", "b", "c")])
    flow = make_flow(body=b"")
    r = run(chain)
    await r.request(flow)
    assert flow.request.body == b"abc" and flow.request.headers["x-last"] == "c"
    assert not r.wants_response_body
    flow.response = Response(200, CIMultiDict(), None)
    await r.response_headers(flow)
    assert log == [
        "a.request",
        "b.request",
        "c.request",
        "a.response_headers",
        "b.response_headers",
        "c.response_headers",
    ]


async def test_an_answer_skips_later_plugins_but_not_the_response_phase() -> None:
    log: list[str] = []
    chain = PluginChain(
        [Entry("a", Buffering("a", log)), Entry("b", Recorder("b", log, answer=429)), Entry("c", Buffering("c", log))]
    )
    flow = make_flow(body=b"")
    r = run(chain)
    await r.request(flow)
    assert r.answered_by == "b" and flow.response is not None and flow.response.status == 429
    assert r.wants_response_body
    await r.response_headers(flow)
    await r.response(flow)
    assert log == ["a.request", "b.request", "a.response_headers", "b.response_headers", "a.response"]
    assert flow.response.body == b"a"


async def test_conditions_pick_plugins_and_a_failing_condition_fails_closed() -> None:
    log: list[str] = []

    def broken(inp: EvalInput) -> bool:
        raise ConditionError("no such key")

    chain = PluginChain(
        [
            Entry("never", Recorder("never", log), condition=lambda inp: False),
            Entry("always", Recorder("always", log), condition=lambda inp: inp.ctx["go"] is True),
        ]
    )
    await run(chain, {"go": True}).request(make_flow())
    assert log == ["always.request"]
    with pytest.raises(PluginError, match="failed in condition: no such key"):
        await run(PluginChain([Entry("x", Recorder("x", log), condition=broken)])).request(make_flow())
    r = run(PluginChain([Entry("x", Recorder("x", log), condition=broken, fail_open=True)]))
    await r.request(make_flow())
    assert "failOpen" in r.notes[0]


async def test_a_failure_fails_closed_unless_fail_open_which_restores_the_request() -> None:
    log: list[str] = []
    chain = PluginChain([Entry("a", Recorder("a", log)), Entry("bad", Recorder("bad", log, fail=True))])
    with pytest.raises(PluginError, match="plugin 'bad' failed in request: boom"):
        await run(chain).request(make_flow(body=b""))
    chain = PluginChain(
        [
            Entry("a", Recorder("a", log)),
            Entry("bad", Recorder("bad", log, fail=True), fail_open=True),
            Entry("c", Recorder("c", log)),
        ]
    )
    flow = make_flow(body=b"")
    r = run(chain)
    await r.request(flow)
    assert flow.request.body == b"ac" and flow.request.headers["x-last"] == "c"
    assert r.notes and "boom" in r.notes[0]
