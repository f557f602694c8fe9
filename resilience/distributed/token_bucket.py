"""A token bucket in one Redis hash, taken from by one Lua script: the same bucket as
``resilience.limits.token_bucket.TokenBucket``, shared by every process that names it.

The script refills the bucket at ``rate`` tokens per second up to ``burst`` (it starts
full), then takes ``n`` tokens if the wait for them is at most ``max_wait_ms``: 0 takes
only tokens that are there now (``try_take``); more books tokens that are still to come
(``reserve``, the level goes below zero) for a caller prepared to wait. It answers
``{taken, wait_ms}``: whether the tokens were taken, and the milliseconds until they are
(or were) there. Time is Redis's own clock in milliseconds (tests pass ``now_ms``). A key
expires once its bucket would be full again, which is the same as no key.
"""

from __future__ import annotations

from typing import Any

LUA = """
local key = KEYS[1]
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local h = redis.call('HMGET', key, 'tokens', 'ts')
local tokens, ts = tonumber(h[1]), tonumber(h[2])
if not tokens then tokens = burst; ts = now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000); ts = now
end
local wait = 0
-- Less a hair, so that float error never rounds a whole millisecond up.
if tokens < n then wait = math.ceil((n - tokens) * 1000 / rate - 1e-6) end
if wait > max_wait then return {0, wait} end
tokens = tokens - n
redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', ts)
redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {1, wait}
"""


def arguments(
    rate: float, burst: int, n: float = 1, max_wait_ms: float = 0, now_ms: int | None = None
) -> list[Any]:
    """The script's ARGV."""
    return [repr(float(rate)), burst, repr(float(n)), max_wait_ms,
            "" if now_ms is None else now_ms]
