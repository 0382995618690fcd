"""A config's resilience compiled for the request path: its endpoints, what counts as a failure, and the order
in which its fallbacks are tried (expanded once, at build time; the request path only walks a tuple)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from wardgate.cluster.resources.resilience import Fallback
from wardgate.cluster.resources.service import ServiceConfig


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One replica of an upstream, split once. `url` is its key for passive health."""

    url: str
    scheme: str
    netloc: str
    base_path: str
    weight: int
    host: str = ""
    port: int = 0


def endpoints(config: ServiceConfig) -> tuple[Endpoint, ...]:
    out = []
    for url, weight in config.upstream.weighted_urls():
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        out.append(
            Endpoint(url, parts.scheme, parts.netloc, parts.path.rstrip("/"), weight, parts.hostname or "", port)
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retry`, `firstTokenTimeout` and `upstream.health` with the failure list expanded to sets."""

    attempts: int = 1
    statuses: frozenset[int] = frozenset()
    kinds: frozenset[str] = frozenset()
    backoff: float = 0.2
    max_backoff: float = 2.0
    max_retry_after: float = 5.0
    timeout: float | None = None
    first_token_timeout: float | None = None
    attempts_header: bool = False
    resilient: bool = False
    """False: one try, one endpoint, nothing to wait for (the plain relay, headers sent at once)."""
    balance: str = "roundRobin"
    eject_after: int = 3
    cooldown: float = 30.0


def retry_policy(config: ServiceConfig) -> RetryPolicy:
    retry = config.retry
    statuses: set[int] = set()
    kinds: set[str] = set()
    for item in retry.on:
        if isinstance(item, int):
            statuses.add(item)
        elif item in ("4xx", "5xx"):
            base = 400 if item == "4xx" else 500
            statuses.update(range(base, base + 100))
        else:
            kinds.add(item)
    health = config.upstream.health
    return RetryPolicy(
        attempts=retry.attempts,
        statuses=frozenset(statuses),
        kinds=frozenset(kinds),
        backoff=retry.backoff,
        max_backoff=retry.max_backoff,
        max_retry_after=retry.max_retry_after,
        timeout=retry.timeout,
        first_token_timeout=config.first_token_timeout,
        attempts_header=config.attempts_header,
        resilient=config.resilient,
        balance=config.upstream.balance,
        eject_after=health.failures,
        cooldown=health.cooldown,
    )


def fallback_order(start: str, fallbacks: Mapping[str, list[Fallback]]) -> list[tuple[str, str | None]]:
    """The configs tried after `start`, in order, each once, with the model each is sent: depth first (a
    fallback's own fallbacks come right after it), a fallback without `model` keeps the one before it.
    Loops were rejected at apply; `seen` keeps a build safe anyway."""
    order: list[tuple[str, str | None]] = []
    seen = {start}

    def visit(name: str, model: str | None) -> None:
        for fallback in fallbacks.get(name, ()):
            if fallback.config_name in seen:
                continue
            seen.add(fallback.config_name)
            chosen = fallback.model if fallback.model is not None else model
            order.append((fallback.config_name, chosen))
            visit(fallback.config_name, chosen)

    visit(start, None)
    return order
