"""Hedging against fake handlers gated per attempt, sync and asyncio; no network.

A sync fake attempt starts its "RPC" through the terminal's ``on_start`` hook, as the real
sync terminal does, and ends when its gate opens or when the RPC is cancelled through the
hook; an async one is a task that records the CancelledError it gets when it loses.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.conf.chains import ChainResolver
from resilience.core.call import Call, CallKind
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo, Middleware
from resilience.core.options import build_options
from resilience.limits.retry_budget import shared_budget
from resilience.middleware import Hedging
from resilience.transport.client import CallOptions
from tests.support.servers import make_settings

pytestmark = pytest.mark.timeout(30)

METHOD = "cache.CacheService/Get"
UNARY = CallKind.UNARY_UNARY
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_FOUND = grpc.StatusCode.NOT_FOUND
NEVER = 10.0  # a gate that is never opened: the attempt ends only when cancelled


def make(handler: Any, *, is_async: bool = False, kind: CallKind = UNARY,
         idempotent: bool = True, shared: dict[str, Any] | None = None,
         **options: Any) -> Hedging:
    info = ChainInfo(METHOD, kind, "client", "Hedging", {} if shared is None else shared,
                     "cache:50051", is_async=is_async, idempotent=idempotent)
    return Hedging(handler, Hedging.Options(**options), info)


class FakeRpc:
    """Stands in for the grpc future the sync terminal hands to ``on_start``."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


class Gates:
    """A sync terminal: attempt n waits ``plans[n][0]`` seconds (or until cancelled), then
    returns ``plans[n][1]`` or raises it if it is an exception."""

    def __init__(self, plans: dict[int, tuple[float, Any]]) -> None:
        self.plans = plans
        self.started: dict[int, float] = {}
        self.rpcs: dict[int, FakeRpc] = {}
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> Any:
        rpc = FakeRpc()
        with self.lock:
            self.started[call.attempt] = time.monotonic()
            self.rpcs[call.attempt] = rpc
        call.context.on_start(rpc)
        wait, outcome = self.plans[call.attempt]
        if rpc.cancelled.wait(wait):
            raise RpcStatusError(grpc.StatusCode.CANCELLED, "cancelled")
        if isinstance(outcome, BaseException):
            raise outcome
        call.context.grpc_call = f"rpc-{call.attempt}"
        return outcome

    def wait_cancelled(self, attempt: int) -> bool:
        return self.rpcs[attempt].cancelled.wait(5)


def unavailable(n: int) -> RpcStatusError:
    return RpcStatusError(UNAVAILABLE, f"attempt {n} unavailable")


def make_call(deadline: float | None = None, context: Any = None) -> Call:
    return Call(METHOD, UNARY, "client", "req", deadline=deadline, context=context)


# --- sync --------------------------------------------------------------------------------


def test_a_hedge_starts_after_the_delay_wins_and_the_loser_is_cancelled() -> None:
    gates = Gates({1: (NEVER, "slow"), 2: (0.0, "fast")})
    hedging = make(gates, delay=0.05)
    with capture_logs() as logs:
        assert hedging(make_call()) == "fast"
    assert gates.started[2] - gates.started[1] >= 0.045
    assert gates.wait_cancelled(1)
    assert sorted(gates.started) == [1, 2]
    assert (hedging.hedges, hedging.hedge_wins) == (1, 1)
    won = [e for e in logs if e["event"] == "hedge_won"]
    assert won == [{"event": "hedge_won", "log_level": "info", "method": METHOD,
                    "attempt": 2, "attempts_sent": 2}]
    sent = [e for e in logs if e["event"] == "hedge_sent"]
    assert [(e["log_level"], e["attempt"], e["reason"]) for e in sent] == [("debug", 2, "delay")]


def test_an_answer_before_the_delay_sends_no_hedge() -> None:
    gates = Gates({1: (0.01, "first")})
    hedging = make(gates, delay=0.5)
    assert hedging(make_call()) == "first"
    assert list(gates.started) == [1]
    assert hedging.hedges == 0


def test_hedges_go_every_delay_up_to_max_attempts() -> None:
    gates = Gates({1: (NEVER, "1"), 2: (NEVER, "2"), 3: (0.3, "third")})
    hedging = make(gates, delay=0.05, max_attempts=3)
    assert hedging(make_call()) == "third"
    assert sorted(gates.started) == [1, 2, 3]
    assert gates.started[3] - gates.started[2] >= 0.045
    assert gates.wait_cancelled(1) and gates.wait_cancelled(2)
    assert not gates.rpcs[3].cancelled.is_set()


def test_a_fatal_status_ends_the_call_at_once_and_cancels_the_rest() -> None:
    gates = Gates({1: (NEVER, "slow"), 2: (0.0, RpcStatusError(NOT_FOUND, "gone"))})
    hedging = make(gates, delay=0.02, max_attempts=3)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        hedging(make_call())
    assert info.value.code() == NOT_FOUND
    assert time.monotonic() - start < 0.5
    assert gates.wait_cancelled(1)
    time.sleep(0.1)  # attempt 3 would have gone 0.02 s after attempt 2
    assert sorted(gates.started) == [1, 2]


def test_a_non_fatal_failure_sends_the_next_hedge_at_once() -> None:
    gates = Gates({1: (0.0, unavailable(1)), 2: (0.0, "second")})
    hedging = make(gates, delay=5.0)
    start = time.monotonic()
    assert hedging(make_call()) == "second"
    assert time.monotonic() - start < 1.0


def test_all_attempts_failing_non_fatally_raise_the_last_error_and_drain_the_budget() -> None:
    shared: dict[str, Any] = {}
    gates = Gates({n: (0.0, unavailable(n)) for n in (1, 2, 3)})
    hedging = make(gates, shared=shared, delay=5.0, max_attempts=3)
    with pytest.raises(grpc.RpcError) as info:
        hedging(make_call())
    assert info.value.details() == "attempt 3 unavailable"
    assert sorted(gates.started) == [1, 2, 3]
    assert shared["retry_budget"].tokens == 7.0


def test_the_winning_success_refills_the_budget() -> None:
    shared: dict[str, Any] = {}
    budget = shared_budget(shared, 10, 0.5)
    budget.record_failure()
    hedging = make(Gates({1: (0.0, "ok")}), shared=shared)
    assert hedging(make_call()) == "ok"
    assert budget.tokens == 9.5


def test_an_exhausted_budget_sends_no_hedges() -> None:
    shared: dict[str, Any] = {}
    budget = shared_budget(shared, 10, 0.1)
    for _ in range(5):
        budget.record_failure()
    assert not budget.allows_retry()
    gates = Gates({1: (0.2, "only")})
    hedging = make(gates, shared=shared, delay=0.01)
    assert hedging(make_call()) == "only"
    assert list(gates.started) == [1]
    assert hedging.hedges == 0


def test_without_the_budget_hedges_ignore_it() -> None:
    shared: dict[str, Any] = {}
    budget = shared_budget(shared, 10, 0.1)
    for _ in range(5):
        budget.record_failure()
    gates = Gates({1: (NEVER, "slow"), 2: (0.0, "fast")})
    assert make(gates, shared=shared, delay=0.01, budget=False)(make_call()) == "fast"


def test_the_deadline_ends_the_call_even_if_attempts_ignore_it() -> None:
    gates = Gates({1: (NEVER, "1"), 2: (NEVER, "2"), 3: (NEVER, "3")})
    hedging = make(gates, delay=0.05)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        hedging(make_call(deadline=start + 0.2))
    elapsed = time.monotonic() - start
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.15 < elapsed < 1.0
    for n in gates.rpcs:
        assert gates.wait_cancelled(n)


def test_no_hedge_starts_after_the_deadline() -> None:
    gates = Gates({1: (0.0, unavailable(1))})
    hedging = make(gates, delay=0.01)
    with pytest.raises(grpc.RpcError) as info:
        hedging(make_call(deadline=time.monotonic() - 1))
    assert info.value.code() == UNAVAILABLE
    assert list(gates.started) == [1]


def test_call_options_are_carried_and_with_call_gets_the_winners_rpc() -> None:
    gates = Gates({1: (NEVER, "slow"), 2: (0.0, "fast")})
    seen: list[Any] = []

    def handler(call: Call) -> Any:
        seen.append(call.context.wait_for_ready)
        return gates(call)

    original = CallOptions(None, True, None, capture=True)
    assert make(handler, delay=0.02)(make_call(context=original)) == "fast"
    assert seen == [True, True]
    assert original.grpc_call == "rpc-2"
    assert original.on_start is None


def test_a_cancel_before_the_rpc_starts_cancels_it_when_it_starts() -> None:
    from resilience.middleware.hedging import _SyncAttempt

    attempt = _SyncAttempt(2, CallOptions(None, None, None))
    attempt.cancel()
    rpc = FakeRpc()
    attempt.started(rpc)
    assert rpc.cancelled.is_set()


# --- where Hedging takes part --------------------------------------------------------------


@pytest.mark.parametrize("kind", [CallKind.UNARY_STREAM, CallKind.STREAM_UNARY,
                                  CallKind.STREAM_STREAM])
def test_streaming_methods_are_left_out(kind: CallKind) -> None:
    with pytest.raises(MiddlewareNotUsed, match="only unary-response methods"):
        make(Gates({}), kind=kind)


def test_non_idempotent_methods_are_left_out_unless_asked() -> None:
    with pytest.raises(MiddlewareNotUsed, match="not marked idempotent"):
        make(Gates({}), idempotent=False)
    assert isinstance(make(Gates({}), idempotent=False, non_idempotent=True), Hedging)


def test_one_attempt_leaves_hedging_out() -> None:
    with pytest.raises(MiddlewareNotUsed):
        make(Gates({}), max_attempts=1)


@pytest.mark.parametrize(("values", "message"), [
    ({"max_attempts": 6}, "max_attempts 6 is above 5 (gRFC A6's limit); use a value from 1 to 5"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"delay": -0.1}, "delay"),
    ({"budget_max_tokens": 2000}, "budget_max_tokens 2000 is above 1000"),
    ({"budget_max_tokens": 20.5}, "expected a whole number"),
    ({"budget_token_ratio": 0}, "budget_token_ratio"),
    ({"non_fatal_codes": ["NOPE"]}, "non_fatal_codes"),
])
def test_bad_options_are_reported(values: dict[str, Any], message: str) -> None:
    _, problems = build_options(Hedging.Options, values)
    assert any(message in p for p in problems), problems


def test_default_options_are_valid() -> None:
    options, problems = build_options(Hedging.Options, {})
    assert problems == []
    assert (options.max_attempts, options.delay) == (3, 0.05)
    assert options.non_fatal_codes == frozenset({UNAVAILABLE})


def resolve(**values: Any) -> list[Any]:
    resolver = ChainResolver(make_settings(**values))
    resolver.resolve("client", METHOD)
    return [p for p in resolver.problems if p.id == "resilience.E011"]


def test_retry_and_hedging_on_one_method_is_an_error() -> None:
    [problem] = resolve(CLIENT_MIDDLEWARE=["resilience.middleware.Retry",
                                           "resilience.middleware.Hedging"])
    assert problem.is_error
    assert problem.setting == "CLIENT_MIDDLEWARE"
    assert METHOD in problem.msg and "Retry" in problem.msg and "Hedging" in problem.msg
    assert f'CLIENT_METHOD_MIDDLEWARE."{METHOD}"' in problem.hint


def test_retry_and_hedging_in_a_method_chain_names_that_setting() -> None:
    [problem] = resolve(CLIENT_METHOD_MIDDLEWARE={METHOD: [
        "resilience.middleware.Hedging", "resilience.middleware.Timeout",
        "resilience.middleware.retry.Retry",
    ]})
    assert problem.setting == f'CLIENT_METHOD_MIDDLEWARE."{METHOD}"'


class Repeater(Middleware):
    """A user's own middleware that sends calls again, declared with the class flag."""

    sides = frozenset({"client"})
    repeats_calls = True


def test_any_two_middleware_that_repeat_calls_are_an_error() -> None:
    [problem] = resolve(CLIENT_MIDDLEWARE=[f"{__name__}.Repeater",
                                           "resilience.middleware.Retry"])
    assert f"{__name__}.Repeater" in problem.msg and "Retry" in problem.msg
    assert resolve(CLIENT_MIDDLEWARE=[f"{__name__}.Repeater"]) == []


def test_hedging_without_retry_is_fine() -> None:
    assert resolve(CLIENT_MIDDLEWARE=["resilience.middleware.Hedging",
                                      "resilience.middleware.Timeout"]) == []
    assert resolve(CLIENT_MIDDLEWARE=["resilience.middleware.Hedging"],
                   CLIENT_METHOD_MIDDLEWARE={"cache.CacheService/Store": [
                       "resilience.middleware.Retry"]}) == []


# --- asyncio -----------------------------------------------------------------------------


class AsyncGates:
    """An async terminal: attempt n sleeps ``plans[n][0]`` seconds, then returns or raises
    ``plans[n][1]``; a cancelled attempt is recorded in ``cancelled``."""

    def __init__(self, plans: dict[int, tuple[float, Any]]) -> None:
        self.plans = plans
        self.started: dict[int, float] = {}
        self.cancelled: list[int] = []

    async def __call__(self, call: Call) -> Any:
        self.started[call.attempt] = time.monotonic()
        wait, outcome = self.plans[call.attempt]
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            self.cancelled.append(call.attempt)
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def test_async_first_success_wins_and_the_loser_sees_cancellation() -> None:
    async def main() -> None:
        gates = AsyncGates({1: (NEVER, "slow"), 2: (0.0, "fast")})
        hedging = make(gates, is_async=True, delay=0.05)
        assert await hedging.acall(make_call()) == "fast"
        assert gates.started[2] - gates.started[1] >= 0.045
        await until(lambda: gates.cancelled == [1])
        assert hedging.hedge_wins == 1

    asyncio.run(main())


def test_async_fatal_status_returns_at_once_and_cancels_the_rest() -> None:
    async def main() -> None:
        gates = AsyncGates({1: (NEVER, "1"), 2: (NEVER, "2"),
                            3: (0.0, RpcStatusError(NOT_FOUND, "gone"))})
        hedging = make(gates, is_async=True, delay=0.02)
        with pytest.raises(grpc.RpcError) as info:
            await hedging.acall(make_call())
        assert info.value.code() == NOT_FOUND
        await until(lambda: sorted(gates.cancelled) == [1, 2])

    asyncio.run(main())


def test_async_non_fatal_failures_hedge_at_once_then_raise_the_last() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {}
        gates = AsyncGates({n: (0.0, unavailable(n)) for n in (1, 2)})
        hedging = make(gates, is_async=True, shared=shared, delay=5.0, max_attempts=2)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            await hedging.acall(make_call())
        assert info.value.details() == "attempt 2 unavailable"
        assert time.monotonic() - start < 1.0
        assert shared["retry_budget"].tokens == 8.0

    asyncio.run(main())


def test_async_exhausted_budget_sends_no_hedges() -> None:
    async def main() -> None:
        shared: dict[str, Any] = {}
        budget = shared_budget(shared, 10, 0.1)
        for _ in range(5):
            budget.record_failure()
        gates = AsyncGates({1: (0.1, "only")})
        hedging = make(gates, is_async=True, shared=shared, delay=0.01)
        assert await hedging.acall(make_call()) == "only"
        assert list(gates.started) == [1]

    asyncio.run(main())


def test_async_deadline_ends_the_call_and_cancels_every_attempt() -> None:
    async def main() -> None:
        gates = AsyncGates({n: (NEVER, str(n)) for n in (1, 2, 3)})
        hedging = make(gates, is_async=True, delay=0.05)
        with pytest.raises(grpc.RpcError) as info:
            await hedging.acall(make_call(deadline=time.monotonic() + 0.2))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: sorted(gates.cancelled) == [1, 2, 3])

    asyncio.run(main())


def test_async_cancelled_caller_cancels_every_attempt() -> None:
    async def main() -> None:
        gates = AsyncGates({n: (NEVER, str(n)) for n in (1, 2, 3)})
        hedging = make(gates, is_async=True, delay=0.01)
        task = asyncio.create_task(hedging.acall(make_call()))
        await until(lambda: len(gates.started) == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: sorted(gates.cancelled) == [1, 2, 3])

    asyncio.run(main())
