"""Retry's budget, server pushback and idempotency rule, against fake handlers (no network).

The sync path is driven directly; the asyncio path through ``asyncio.run`` with an
injected ``asleep``, to show both loops take the same decisions.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.core.call import Call, CallKind
from resilience.core.chain import MiddlewareSpec, build_chain
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.limits.retry_budget import SHARED_KEY, RetryBudget, shared_budget
from resilience.middleware.retry import Retry, pushback_of

METHOD = "cache.CacheService/Get"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class Clock:
    """A fake monotonic clock; ``sleep`` and ``asleep`` record the wait and move time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Script:
    """A terminal that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.attempts: list[int] = []

    def __call__(self, call: Call) -> Any:
        self.attempts.append(call.attempt)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class AsyncScript(Script):
    async def run(self, call: Call) -> Any:
        return Script.__call__(self, call)


def make(handler: Any, *, idempotent: bool = True, shared: dict[str, Any] | None = None,
         is_async: bool = False, kind: CallKind = CallKind.UNARY_UNARY,
         **options: Any) -> tuple[Retry, Clock]:
    info = ChainInfo(METHOD, kind, "client", "Retry", {} if shared is None else shared,
                     "cache:50051", is_async=is_async, idempotent=idempotent)
    retry = Retry(handler, Retry.Options(**options), info)
    clock = Clock()
    retry.clock = clock
    retry.sleep = clock.sleep
    retry.asleep = clock.asleep
    retry.rng = random.Random(7)
    return retry, clock


def call(deadline: float | None = None) -> Call:
    return Call(METHOD, CallKind.UNARY_UNARY, "client", b"key", deadline=deadline)


def pushback(value: str, code: grpc.StatusCode = EXHAUSTED) -> RpcStatusError:
    return RpcStatusError(code, "slow down",
                          trailing_metadata=(("other", "x"), ("grpc-retry-pushback-ms", value)))


EXHAUSTED_RETRYABLE = frozenset({UNAVAILABLE, EXHAUSTED})


# --- the budget --------------------------------------------------------------------------


def test_shared_budget_is_one_per_shared_dict() -> None:
    shared: dict[str, Any] = {}
    first = shared_budget(shared, 10, 0.1)
    assert shared[SHARED_KEY] is first
    assert shared_budget(shared, 99, 0.5) is first  # the first chain's numbers stand
    assert shared_budget({}, 10, 0.1) is not first


def test_chains_of_one_channel_share_the_budget() -> None:
    shared: dict[str, Any] = {}
    get, _ = make(Script(), shared=shared)
    dump, _ = make(Script(), shared=shared, kind=CallKind.UNARY_STREAM)
    assert get.budget is dump.budget is shared[SHARED_KEY]
    off, _ = make(Script(), shared={}, budget=False)
    assert off.budget is None


def test_each_attempt_is_recorded() -> None:
    handler = Script(RpcStatusError(UNAVAILABLE), RpcStatusError(UNAVAILABLE))
    retry, _ = make(handler, budget_token_ratio=0.5)
    assert retry(call()) == "ok"
    assert retry.budget is not None
    # Two failed attempts take 2, the successful third gives back 0.5.
    assert retry.budget.milli_tokens == 8500


def test_non_retryable_errors_count_as_neither() -> None:
    handler = Script(RpcStatusError(grpc.StatusCode.NOT_FOUND),
                     RpcStatusError(UNAVAILABLE, "breaker open", retryable=False))
    retry, _ = make(handler)
    for _ in range(2):
        with pytest.raises(RpcStatusError):
            retry(call())
    assert retry.budget is not None and retry.budget.tokens == 10


def test_a_drained_budget_stops_retries_at_once() -> None:
    shared: dict[str, Any] = {}
    handler = Script(*[RpcStatusError(UNAVAILABLE, f"down {n}") for n in range(100)])
    retry, clock = make(handler, shared=shared, max_attempts=3, jitter="none")
    attempts_per_call = []
    with capture_logs() as logs:
        for _ in range(6):
            before = len(handler.attempts)
            with pytest.raises(RpcStatusError):
                retry(call())
            attempts_per_call.append(len(handler.attempts) - before)
    # Tokens 10 -> 9 -> 8 -> 7 (call 1, 3 attempts), 6 -> 5 (call 2: at 5, no more retries),
    # then one attempt per call.
    assert attempts_per_call == [3, 2, 1, 1, 1, 1]
    assert retry.throttled == 5
    assert retry.retries == 3
    assert len(clock.sleeps) == 3
    throttled = [e for e in logs if e["event"] == "retry_throttled"]
    # The clock does not move between calls here, so one line stands for all five.
    assert throttled == [{"event": "retry_throttled", "log_level": "info", "method": METHOD,
                          "code": "UNAVAILABLE", "refused": 1}]


def test_throttle_log_says_how_many_were_refused_since_the_last_line() -> None:
    handler = Script(*[RpcStatusError(UNAVAILABLE) for _ in range(100)])
    retry, clock = make(handler, max_attempts=2)
    with capture_logs() as logs:
        for _ in range(12):
            with pytest.raises(RpcStatusError):
                retry(call())
        clock.now += 1.5
        with pytest.raises(RpcStatusError):
            retry(call())
    refused = [e["refused"] for e in logs if e["event"] == "retry_throttled"]
    assert sum(refused) == retry.throttled
    assert refused == [1, retry.throttled - 1]


def test_successes_refill_the_budget_and_retries_resume() -> None:
    shared: dict[str, Any] = {}
    retry, _ = make(Script(*[RpcStatusError(UNAVAILABLE) for _ in range(5)]),
                    shared=shared, max_attempts=2, budget_token_ratio=1.0)
    for _ in range(3):
        with pytest.raises(RpcStatusError):
            retry(call())
    assert retry.budget is not None and not retry.budget.allows_retry()
    # Calls 1 and 2 fail twice each (10 -> 6); call 3 fails once (5) and is refused.
    # Two successes bring 7, so the next failure (6) is retried.
    handler = Script()
    retry.handler = handler
    retry(call())
    retry(call())
    handler.errors = [RpcStatusError(UNAVAILABLE)]
    assert retry(call()) == "ok"
    assert handler.attempts == [1, 1, 1, 2]


def test_budget_off_retries_every_time() -> None:
    handler = Script(*[RpcStatusError(UNAVAILABLE) for _ in range(30)])
    retry, _ = make(handler, max_attempts=3, budget=False)
    for _ in range(10):
        with pytest.raises(RpcStatusError):
            retry(call())
    assert len(handler.attempts) == 30
    assert retry.throttled == 0


def test_async_path_draws_on_the_same_budget() -> None:
    shared: dict[str, Any] = {}
    script = AsyncScript(*[RpcStatusError(UNAVAILABLE) for _ in range(100)])
    retry, _ = make(script.run, shared=shared, is_async=True, jitter="none")

    async def main() -> list[int]:
        counts = []
        for _ in range(4):
            before = len(script.attempts)
            with pytest.raises(RpcStatusError):
                await retry.acall(call())
            counts.append(len(script.attempts) - before)
        return counts

    assert asyncio.run(main()) == [3, 2, 1, 1]
    assert shared[SHARED_KEY].tokens == 3


# --- pushback ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((), None),
        ((("grpc-retry-pushback-ms", "300"),), 0.3),
        ((("grpc-retry-pushback-ms", "0"),), 0.0),
        ((("grpc-retry-pushback-ms", b"25"),), 0.025),
        ((("grpc-retry-pushback-ms", "-1"),), -1.0),
        ((("grpc-retry-pushback-ms", "soon"),), -1.0),
        ((("grpc-retry-pushback-ms", "1.5"),), -1.0),
        ((("grpc-retry-pushback-ms", ""),), -1.0),
    ],
)
def test_pushback_values(metadata: tuple[tuple[str, Any], ...], expected: float | None) -> None:
    assert pushback_of(RpcStatusError(EXHAUSTED, trailing_metadata=metadata)) == expected


def test_pushback_from_an_error_without_trailers() -> None:
    class Bare(grpc.RpcError):
        pass

    assert pushback_of(Bare()) is None


def test_pushback_replaces_the_backoff_exactly() -> None:
    handler = Script(pushback("300"), RpcStatusError(EXHAUSTED))
    retry, clock = make(handler, retryable_codes=EXHAUSTED_RETRYABLE, jitter="none",
                        initial_backoff=0.05)
    with capture_logs() as logs:
        assert retry(call()) == "ok"
    # The pushed-back wait is exact (no jitter); the next one restarts the backoff
    # sequence at initial_backoff (A6), rather than taking the second term (0.1).
    assert clock.sleeps == [0.3, 0.05]
    assert handler.attempts == [1, 2, 3]
    assert logs[0] == {"event": "retrying", "log_level": "warning", "method": METHOD,
                       "attempt": 1, "code": "RESOURCE_EXHAUSTED", "backoff_ms": 300.0,
                       "pushback": True}


def backoff_after_pushback_script(factory: type[Script]) -> Script:
    """Two ordinary failures, a pushed-back one, then two ordinary ones again."""
    plain = RpcStatusError(EXHAUSTED, "busy")
    return factory(plain, plain, pushback("500"), plain, plain)


# initial 0.01, doubling: 0.01, 0.02, then the pushback's 0.5, then 0.01, 0.02 again. Without
# the reset the last two were the sequence's 4th and 5th terms, 0.08 and 0.16.
AFTER_PUSHBACK = [0.01, 0.02, 0.5, 0.01, 0.02]


def test_the_backoff_sequence_restarts_after_a_pushback_wait() -> None:
    """A6: "For subsequent retries, the delay period will be reset to the initialBackoff
    setting"; grpc-core resets its BackOff when it honours a pushback."""
    handler = backoff_after_pushback_script(Script)
    retry, clock = make(handler, retryable_codes=EXHAUSTED_RETRYABLE, jitter="none",
                        initial_backoff=0.01, multiplier=2.0, max_attempts=6, budget=False)
    assert retry(call()) == "ok"
    assert clock.sleeps == pytest.approx(AFTER_PUSHBACK)
    assert handler.attempts == [1, 2, 3, 4, 5, 6]


def test_the_backoff_sequence_restarts_after_a_pushback_on_the_async_path() -> None:
    script = backoff_after_pushback_script(AsyncScript)
    retry, clock = make(script.run, is_async=True, retryable_codes=EXHAUSTED_RETRYABLE,
                        jitter="none", initial_backoff=0.01, max_attempts=6, budget=False)
    assert asyncio.run(retry.acall(call())) == "ok"
    assert clock.sleeps == pytest.approx(AFTER_PUSHBACK)


@pytest.mark.parametrize("is_async", [False, True])
def test_the_backoff_sequence_restarts_after_a_pushback_in_a_stream(is_async: bool) -> None:
    """Response streams retry before their first message through the same decision."""
    errors = [RpcStatusError(EXHAUSTED, "busy"), pushback("500"), RpcStatusError(EXHAUSTED)]
    attempts: list[int] = []

    def start(c: Call) -> Any:
        attempts.append(c.attempt)
        error = errors.pop(0) if errors else None

        def responses() -> Any:
            if error is not None:
                raise error
            yield "item"

        async def aresponses() -> Any:
            if error is not None:
                raise error
            yield "item"

        return aresponses() if is_async else responses()

    retry, clock = make(start, is_async=is_async, kind=CallKind.UNARY_STREAM,
                        retryable_codes=EXHAUSTED_RETRYABLE, jitter="none",
                        initial_backoff=0.01, max_attempts=5, budget=False)
    stream_call = Call(METHOD, CallKind.UNARY_STREAM, "client", b"key")
    if is_async:
        async def read() -> list[Any]:
            return [item async for item in retry.acall(stream_call)]

        assert asyncio.run(read()) == ["item"]
    else:
        assert list(retry(stream_call)) == ["item"]
    assert attempts == [1, 2, 3, 4]
    assert clock.sleeps == pytest.approx([0.01, 0.5, 0.01])


def test_the_a6_sequence_refuses_the_retry_floats_allowed() -> None:
    """Through Retry: 5 failed calls, 5 successes at 0.2, then a failure: 5 of 10 tokens
    left, not above half, so no retry (as floats, 5.000000000000001 allowed one)."""
    shared: dict[str, Any] = {}
    retry, _ = make(Script(), shared=shared, max_attempts=2, budget_token_ratio=0.2,
                    retryable_codes=frozenset({grpc.StatusCode.INTERNAL}))
    budget = shared[SHARED_KEY]
    for _ in range(5):
        budget.record_failure()
    retry.handler = Script()
    for _ in range(5):
        assert retry(call()) == "ok"
    assert budget.milli_tokens == 6000
    handler = Script(RpcStatusError(grpc.StatusCode.INTERNAL), RpcStatusError(UNAVAILABLE))
    retry.handler = handler
    with pytest.raises(RpcStatusError):
        retry(call())
    assert handler.attempts == [1]
    assert budget.milli_tokens == 5000 and retry.throttled == 1


def test_pushback_on_the_async_path() -> None:
    script = AsyncScript(pushback("300"))
    retry, clock = make(script.run, is_async=True, retryable_codes=EXHAUSTED_RETRYABLE)
    assert asyncio.run(retry.acall(call())) == "ok"
    assert clock.sleeps == [0.3]


@pytest.mark.parametrize("value", ["-1", "never"])
def test_negative_or_unparsable_pushback_means_no_retry(value: str) -> None:
    error = pushback(value)
    handler = Script(error)
    retry, clock = make(handler, retryable_codes=EXHAUSTED_RETRYABLE)
    with capture_logs() as logs, pytest.raises(RpcStatusError) as info:
        retry(call())
    assert info.value is error
    assert handler.attempts == [1]
    assert clock.sleeps == []
    assert [e["event"] for e in logs] == ["retry_pushback_stop"]
    assert retry.budget is not None and retry.budget.tokens == 9  # still a failure for A6


def test_negative_pushback_on_the_async_path() -> None:
    script = AsyncScript(pushback("-1"))
    retry, _ = make(script.run, is_async=True, retryable_codes=EXHAUSTED_RETRYABLE)
    with pytest.raises(RpcStatusError):
        asyncio.run(retry.acall(call()))
    assert script.attempts == [1]


def test_pushback_is_ignored_for_statuses_not_retried() -> None:
    # RESOURCE_EXHAUSTED is not in the default retryable_codes: no retry, whatever it says.
    handler = Script(pushback("10"))
    retry, _ = make(handler)
    with pytest.raises(RpcStatusError):
        retry(call())
    assert handler.attempts == [1]
    assert retry.budget is not None and retry.budget.tokens == 10


def test_pushback_that_does_not_fit_the_deadline_gives_up_at_once() -> None:
    handler = Script(pushback("300"))
    retry, clock = make(handler, retryable_codes=EXHAUSTED_RETRYABLE)
    with pytest.raises(RpcStatusError):
        retry(call(deadline=clock.now + 0.2))
    assert clock.sleeps == []
    assert handler.attempts == [1]


def test_pushback_still_needs_the_budget() -> None:
    shared: dict[str, Any] = {}
    budget = shared_budget(shared, 10, 0.1)
    for _ in range(5):
        budget.record_failure()
    handler = Script(pushback("0"))
    retry, _ = make(handler, shared=shared, retryable_codes=EXHAUSTED_RETRYABLE)
    with pytest.raises(RpcStatusError):
        retry(call())
    assert handler.attempts == [1]
    assert retry.throttled == 1


def test_pushback_does_not_exceed_max_attempts() -> None:
    handler = Script(pushback("1"), pushback("1"), pushback("1"))
    retry, clock = make(handler, retryable_codes=EXHAUSTED_RETRYABLE, max_attempts=2)
    with pytest.raises(RpcStatusError):
        retry(call())
    assert handler.attempts == [1, 2]
    assert clock.sleeps == [0.001]


# --- idempotency -------------------------------------------------------------------------


def test_non_idempotent_method_is_left_alone() -> None:
    with pytest.raises(MiddlewareNotUsed, match="not marked idempotent"):
        make(Script(), idempotent=False)


def test_retry_off_is_logged_once_per_method() -> None:
    info = ChainInfo("test.Once/Write", CallKind.UNARY_UNARY, "client", "Retry", {})
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(MiddlewareNotUsed):
                Retry(Script(), Retry.Options(), info)
    assert len(logs) == 1
    assert logs[0]["event"] == "retry_off" and logs[0]["log_level"] == "info"
    assert logs[0]["method"] == "test.Once/Write"
    assert "not marked idempotent" in logs[0]["reason"]
    assert "non_idempotent" in logs[0]["reason"]


def test_non_idempotent_option_retries_anyway() -> None:
    handler = Script(RpcStatusError(UNAVAILABLE))
    retry, _ = make(handler, idempotent=False, non_idempotent=True)
    assert retry(call()) == "ok"
    assert handler.attempts == [1, 2]


def test_build_chain_leaves_retry_out_of_a_non_idempotent_chain() -> None:
    options, problems = build_options(Retry.Options, {})
    assert problems == [] and options is not None
    spec = MiddlewareSpec("resilience.middleware.Retry", Retry, "Retry", options)
    for idempotent, expected in ((False, []), (True, [Retry])):
        _, used = build_chain([spec], Script(), method=METHOD, kind=CallKind.UNARY_UNARY,
                              side="client", shared={}, idempotent=idempotent)
        assert [type(m) for m in used] == expected


# --- options -----------------------------------------------------------------------------


def test_budget_option_defaults_follow_a6() -> None:
    options = Retry.Options()
    assert (options.budget, options.budget_max_tokens, options.budget_token_ratio) == (
        True, 10, 0.1)
    assert options.non_idempotent is False


@pytest.mark.parametrize(
    "values, message",
    [
        ({"budget_max_tokens": 0}, "option 'budget_max_tokens' is 0; expected a value > 0"),
        ({"budget_max_tokens": 5000},
         "budget_max_tokens 5000 is above 1000, gRFC A6's limit for maxTokens; use a whole "
         "number from 1 to 1000"),
        ({"budget_max_tokens": 10.5},
         "option 'budget_max_tokens' is 10.5; expected a whole number"),
        ({"budget_token_ratio": 0}, "option 'budget_token_ratio' is 0.0; expected a value > 0"),
        ({"budget_token_ratio": 0.0004},
         "budget_token_ratio 0.0004 is 0 read to three decimals, as gRFC A6 reads "
         "tokenRatio; use 0.001 or more"),
        ({"budget_token_ratio": float("inf")},
         "option 'budget_token_ratio' is inf; expected a finite number (not nan or inf)"),
        ({"budget": "yes"}, "option 'budget' is 'yes'; expected true or false"),
        ({"non_idempotent": 1}, "option 'non_idempotent' is 1; expected true or false"),
    ],
)
def test_option_validation_messages(values: dict[str, Any], message: str) -> None:
    options, problems = build_options(Retry.Options, values)
    assert options is None
    assert problems == [message]


def test_options_at_the_limits_are_accepted() -> None:
    options, problems = build_options(
        Retry.Options, {"BUDGET_MAX_TOKENS": 1000, "budget_token_ratio": 1, "budget": False,
                        "non_idempotent": True})
    assert problems == []
    assert options is not None
    assert (options.budget_max_tokens, options.budget_token_ratio) == (1000, 1.0)
    assert options.budget is False and options.non_idempotent is True


@pytest.mark.parametrize("ratio", [1.5, 25.0, 0.001, 0.5466])
def test_any_ratio_above_zero_is_accepted(ratio: float) -> None:
    """A6 asks only that tokenRatio be above 0 (grpc-core has no upper bound either); digits
    past the third are ignored, not refused."""
    options, problems = build_options(Retry.Options, {"budget_token_ratio": ratio})
    assert problems == [] and options is not None
    assert options.budget_token_ratio == ratio


def test_budget_arithmetic_matches_the_module() -> None:
    # The budget Retry holds is the pure RetryBudget, with the options' numbers.
    retry, _ = make(Script(), budget_max_tokens=4, budget_token_ratio=0.25)
    assert isinstance(retry.budget, RetryBudget)
    assert (retry.budget.max_milli_tokens, retry.budget.milli_token_ratio) == (4000, 250)
    assert (retry.budget.max_tokens, retry.budget.token_ratio) == (4, 0.25)
