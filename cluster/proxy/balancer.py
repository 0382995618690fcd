"""Which replica of an upstream gets a try, and passive health: per worker, in memory, beside the request path.

A route with one endpoint never comes here. With several: smooth weighted round robin (nginx's: spread by
weight, no bursts) or the fewest tries in flight per unit of weight. An endpoint that fails `failures` tries
in a row (no connection, a timeout, a reset, a 5xx) is left out for `cooldown`; after it, one failure
leaves it out again, one success makes it healthy. When every endpoint is out, the one back soonest is
used anyway (better a try than a certain refusal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from wardgate.cluster.authorize.resilience import Endpoint, RetryPolicy

MAX_ROTATIONS = 4096
"""Round-robin positions kept (one per distinct endpoint list); past it they start afresh."""


@dataclass(slots=True)
class EndpointState:
    in_flight: int = 0
    failures: int = 0
    """Consecutive failed tries."""
    ejected_until: float = 0.0
    ejections: int = 0
    probing: bool = False
    """Back from a cool-down: the next failure ejects it again."""


class Balancer:
    """Endpoint choice and health for every route of one worker (the public and tunnel listeners share it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[str, EndpointState] = {}
        self._rotations: dict[tuple[Endpoint, ...], list[int]] = {}
        self._turn = 0

    def state(self, endpoint: Endpoint) -> EndpointState:
        found = self._states.get(endpoint.url)
        if found is None:
            found = self._states[endpoint.url] = EndpointState()
        return found

    def pick(self, endpoints: tuple[Endpoint, ...], policy: RetryPolicy, avoid: str | None = None) -> Endpoint:
        """The endpoint for the next try; `avoid` (the one that just failed) only when nothing else is up."""
        if len(endpoints) == 1:
            return endpoints[0]
        now = self._clock()
        up = [i for i, e in enumerate(endpoints) if self.state(e).ejected_until <= now and e.url != avoid]
        if not up:
            up = [i for i, e in enumerate(endpoints) if self.state(e).ejected_until <= now]
        if not up:
            return min(endpoints, key=lambda e: self.state(e).ejected_until)
        if policy.balance == "leastInFlight":
            self._turn += 1
            start = self._turn % len(up)
            rotated = up[start:] + up[:start]
            return endpoints[min(rotated, key=lambda i: self.state(endpoints[i]).in_flight / endpoints[i].weight)]
        return endpoints[self._round_robin(endpoints, up)]

    def _round_robin(self, endpoints: tuple[Endpoint, ...], up: list[int]) -> int:
        current = self._rotations.get(endpoints)
        if current is None:
            if len(self._rotations) >= MAX_ROTATIONS:
                self._rotations.clear()
            current = self._rotations[endpoints] = [0] * len(endpoints)
        total = 0
        best = up[0]
        for i in up:
            current[i] += endpoints[i].weight
            total += endpoints[i].weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return best

    def started(self, endpoint: Endpoint) -> EndpointState:
        state = self.state(endpoint)
        state.in_flight += 1
        return state

    def finished(self, endpoint: Endpoint, policy: RetryPolicy, healthy: bool) -> None:
        """One try ended; `healthy` is False for a failure that says the endpoint is in trouble."""
        state = self.state(endpoint)
        state.in_flight = max(0, state.in_flight - 1)
        if healthy:
            state.failures, state.probing = 0, False
            return
        state.failures += 1
        if state.probing or state.failures >= policy.eject_after:
            state.ejected_until = self._clock() + policy.cooldown
            state.ejections += 1
            state.failures, state.probing = 0, True

    def snapshot(self) -> Iterable[tuple[str, bool, int, int]]:
        """(endpoint URL, up now, tries in flight, ejections so far) for every endpoint seen (metrics)."""
        now = self._clock()
        for url, state in sorted(self._states.items()):
            yield url, state.ejected_until <= now, state.in_flight, state.ejections
