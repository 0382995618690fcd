"""Upstream resilience of a Service config: retries, ordered fallbacks to other configs, endpoint health.

Only the shape and the checks that need one config live here; the checks that need the whole Service
(a fallback naming a config that exists, no loops) are in service.py's ServiceSpec validator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from wardgate.cluster.resources.meta import Model, Name
from wardgate.cluster.resources.types import Duration

FAILURE_KINDS = ("connect", "timeout", "reset")
"""`connect`: no connection (the upstream never saw the request); `timeout`: no answer in time; `reset`: the
connection dropped after the request went out, before the first byte of the answer."""
STATUS_CLASSES = ("4xx", "5xx")
DEFAULT_ON: tuple[int | str, ...] = (429, "5xx", "connect")
"""Failures that never mean the upstream did (and billed) the work. `timeout` and `reset` may, so a user opts in."""
MAX_ATTEMPTS = 10
MAX_FALLBACKS = 8


def _failure(value: object) -> int | str:
    if isinstance(value, bool):
        raise ValueError("a failure is a status (429), a class (5xx) or connect, timeout, reset")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 400 <= value <= 599:
            raise ValueError(f"{value}: only statuses 400-599 can count as failures")
        return value
    if isinstance(value, str) and value.strip().lower() in (*FAILURE_KINDS, *STATUS_CLASSES):
        return value.strip().lower()
    raise ValueError(f"{value!r} is not a status (429), a class (4xx, 5xx) or one of connect, timeout, reset")


Failure = Annotated[int | str, BeforeValidator(_failure)]


class Retry(Model):
    """Tries of one config before the next fallback. `attempts` counts every try, the first included.

    A failure listed in `on` is tried again after `backoff`, doubled per retry up to `maxBackoff`, with
    jitter (half fixed, half random); an upstream's `Retry-After` (or `retry-after-ms`) is honoured when it
    is at most `maxRetryAfter`, and a longer one skips this config's retries. Nothing is tried again once a
    byte of the answer went to the client. `timeout` bounds all tries and fallbacks together, from the
    first try until an answer starts (unset: only the per-try `http.timeouts`)."""

    attempts: int = Field(default=1, ge=1, le=MAX_ATTEMPTS)
    on: list[Failure] = Field(default_factory=lambda: list(DEFAULT_ON), min_length=1, max_length=32)
    backoff: Duration = 0.2
    max_backoff: Duration = 2.0
    max_retry_after: Duration = 5.0
    timeout: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true, which JSON then spells "true".
        if isinstance(data, Mapping) and "on" not in data and any(k is True or k == "true" for k in data):
            return {("on" if k is True or k == "true" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check_budget(self) -> Retry:
        if self.max_backoff < self.backoff:
            raise ValueError(f"maxBackoff ({self.max_backoff:g}s) is shorter than backoff ({self.backoff:g}s)")
        if self.timeout is not None:
            sleeps = self.worst_case_sleeps()
            if sleeps >= self.timeout:
                raise ValueError(
                    f"timeout ({self.timeout:g}s) is not longer than the backoffs alone ({sleeps:g}s for "
                    f"{self.attempts} attempts): the last retries could never run; raise timeout or lower "
                    "attempts/maxBackoff"
                )
        return self

    def worst_case_sleeps(self) -> float:
        """The longest the backoffs alone can take over all retries (jitter at its maximum)."""
        return float(sum(min(self.max_backoff, self.backoff * 2.0**i) for i in range(self.attempts - 1)))


class Fallback(Model):
    """A config of the same Service to try when this one fails; `model` replaces the body's `model` for it
    (and for the fallbacks it names in turn, unless they set their own)."""

    config_name: Name
    model: str | None = Field(default=None, min_length=1, max_length=256)


Fallbacks = Annotated[list[Fallback], Field(max_length=MAX_FALLBACKS)]


def check_fallbacks(configs: Sequence[tuple[str, str, Sequence[Fallback]]]) -> None:
    """(name, field path, fallbacks) of every config of a Service: each fallback names a config of the
    Service, and following fallbacks never comes back to a config already on the way (a loop)."""
    names = {name for name, _, _ in configs}
    edges = {name: [f.config_name for f in fallbacks] for name, _, fallbacks in configs}
    for _, path, fallbacks in configs:
        for i, fallback in enumerate(fallbacks):
            if fallback.config_name not in names:
                known = ", ".join(sorted(names))
                raise ValueError(
                    f"{path}.fallbacks[{i}].configName: {fallback.config_name!r} names no config of this "
                    f"Service (configs: {known})"
                )
    done: set[str] = set()
    for name, path, _ in configs:
        loop = _loop_from(name, edges, [name], done)
        if loop is not None:
            raise ValueError(f"{path}.fallbacks: a fallback loop: {' -> '.join(loop)}")


def _loop_from(name: str, edges: Mapping[str, list[str]], path: list[str], done: set[str]) -> list[str] | None:
    """Depth first; `done` holds configs whose fallbacks were all followed without a loop."""
    if name in done:
        return None
    for target in edges.get(name, ()):
        if target in path:
            return [*path[path.index(target) :], target]
        found = _loop_from(target, edges, [*path, target], done)
        if found is not None:
            return found
    done.add(name)
    return None


class EndpointHealth(Model):
    """Passive health: an endpoint that fails `failures` times in a row (no connection, a timeout, a reset,
    or a 5xx) is left out for `cooldown`, then tried again; one more failure then leaves it out again."""

    failures: int = Field(default=3, ge=1, le=100)
    cooldown: Duration = 30.0


Balance = Literal["roundRobin", "leastInFlight"]
