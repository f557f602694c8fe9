"""A circuit breaker's state in one Redis hash, read and changed by one Lua script.

The script does one of two things, atomically, and answers with the state after it:

* ``admit``: asked only when the caller's cached state is not closed. An open breaker
  whose ``reset_timeout`` has passed turns half-open; a half-open breaker hands out the
  single trial (a probe id, valid for another ``reset_timeout``) or rejects.
* ``record``: one outcome. While closed, a failure counts and ``fail_max`` of them open
  the breaker; a success resets the count. The trial's outcome (matched by probe id)
  closes the breaker after ``success_threshold`` successes or opens it again. Outcomes of
  calls admitted while closed are ignored once the breaker has left the closed state,
  as in the local breaker.

Timestamps are milliseconds of Redis's own clock (``TIME``), so every process agrees on
when a breaker opened, whatever its own clock says; tests pass their own ``now_ms``.
A breaker that is closed with nothing counted is the same as no key, so keys expire
(``ttl_ms`` after their last change).
"""

from __future__ import annotations

import dataclasses
from typing import Any

LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local fail_max, reset_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local threshold, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local h = redis.call('HMGET', key, 'state', 'failures', 'successes', 'opened_at', 'probe',
                     'probe_until')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local successes = tonumber(h[3]) or 0
local opened_at = tonumber(h[4]) or 0
local probe = h[5] or ''
local probe_until = tonumber(h[6]) or 0
local verdict = 'pass'
local changed = false
if ARGV[1] == 'admit' then
  if state == 'open' and now >= opened_at + reset_ms then
    state = 'half-open'; successes = 0; probe = ''; changed = true
  end
  if state == 'open' then
    verdict = 'reject'
  elseif state == 'half-open' then
    if probe ~= '' and now < probe_until then
      verdict = 'reject'
    else
      probe = ARGV[2]; probe_until = now + reset_ms; verdict = 'trial'; changed = true
    end
  end
else
  local ok = ARGV[1] == 'success'
  if ARGV[2] ~= '' then
    if state == 'half-open' and probe == ARGV[2] then
      probe = ''; changed = true
      if ok then
        successes = successes + 1
        if successes >= threshold then state = 'closed'; failures = 0; successes = 0 end
      else
        state = 'open'; opened_at = now; successes = 0
      end
    end
  elseif state == 'closed' then
    if ok then
      if failures > 0 then failures = 0; changed = true end
    else
      failures = failures + 1; changed = true
      if failures >= fail_max then state = 'open'; opened_at = now; failures = 0 end
    end
  end
end
if changed then
  redis.call('HSET', key, 'state', state, 'failures', failures, 'successes', successes,
             'opened_at', opened_at, 'probe', probe, 'probe_until', probe_until)
  redis.call('PEXPIRE', key, ttl)
end
local wait = 0
if state == 'open' then
  wait = opened_at + reset_ms - now
  if wait < 0 then wait = 0 end
end
return {state, failures, wait, verdict}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerReply:
    """The script's answer: the shared state after the operation.

    ``open_ms`` is how long an open breaker stays open (0 otherwise); ``verdict`` is
    ``admit``'s decision ("pass", "trial" or "reject"), "pass" for ``record``.
    """

    state: str
    failures: int
    open_ms: int
    verdict: str

    @classmethod
    def parse(cls, reply: Any) -> BreakerReply:
        state, failures, open_ms, verdict = reply
        return cls(_text(state), int(failures), int(open_ms), _text(verdict))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def arguments(
    operation: str, probe: str, fail_max: int, reset_ms: int, success_threshold: int,
    ttl_ms: int, now_ms: int | None = None,
) -> list[Any]:
    """The script's ARGV. ``operation``: "admit", "success" or "failure"; ``probe``: the
    trial's id (a new one for "admit"; "" for an outcome of a call that was no trial)."""
    return [operation, probe, "" if now_ms is None else now_ms, fail_max, reset_ms,
            success_threshold, ttl_ms]
