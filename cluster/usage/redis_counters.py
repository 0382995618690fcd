"""Quota counters in Redis, exact across every worker of every node: each operation is one server-side Lua
script (EVALSHA; redis-py loads it again after a Redis restart), so a check and its increments are atomic.

A Redis that does not answer within `timeout` is Unavailable: the Quota's failMode decides (closed: 503;
open: the request goes through and the miss is counted)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from wardgate.cluster.errors import Unavailable
from wardgate.cluster.usage.counters import Charge, Charged, Counters

KEY_PREFIX = "wardgate:quota:"

_CHARGE = """
local n = #KEYS
local values = {}
for i = 1, n do
  values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, n do
  local amount = tonumber(ARGV[3 * i - 2])
  if amount > 0 and values[i] + amount > tonumber(ARGV[3 * i - 1]) then
    return {i, values}
  end
end
for i = 1, n do
  local amount = tonumber(ARGV[3 * i - 2])
  if amount ~= 0 then
    values[i] = redis.call('INCRBY', KEYS[i], amount)
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
end
return {0, values}
"""

_ADJUST = """
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local delta = tonumber(ARGV[2 * i - 1])
  if value ~= 0 or delta > 0 then
    local after = value + delta
    if after < 0 then after = 0 end
    redis.call('SET', KEYS[i], after, 'PX', ARGV[2 * i])
  end
end
return 0
"""


def _ttl_ms(ttl: float) -> int:
    return int(ttl * 1000) + 1000


class RedisCounters:
    """Counters in one Redis (see the module docstring)."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._charge = self._redis.register_script(_CHARGE)
        self._adjust = self._redis.register_script(_ADJUST)

    async def charge(self, charges: Sequence[Charge]) -> Charged:
        keys = [KEY_PREFIX + c.key for c in charges]
        args: list[int] = []
        for c in charges:
            args += [c.amount, c.limit, _ttl_ms(c.ttl)]
        try:
            refused, values = await self._charge(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the quota counters (Redis) are unavailable: {type(exc).__name__}") from exc
        return Charged(int(refused) - 1 if refused else None, [int(v) for v in values])

    async def adjust(self, deltas: Sequence[tuple[str, int, float]]) -> None:
        keys = [KEY_PREFIX + key for key, _, _ in deltas]
        args: list[int] = []
        for _, delta, ttl in deltas:
            args += [delta, _ttl_ms(ttl)]
        try:
            await self._adjust(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the quota counters (Redis) are unavailable: {type(exc).__name__}") from exc

    async def read(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        try:
            values = await self._redis.mget([KEY_PREFIX + key for key in keys])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the quota counters (Redis) are unavailable: {type(exc).__name__}") from exc
        return [int(v) if v is not None else 0 for v in values]

    async def close(self) -> None:
        await self._redis.aclose()


_: Counters = RedisCounters.__new__(RedisCounters)
