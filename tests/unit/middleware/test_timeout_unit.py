import time

import pytest

from resilience.core.call import Call, CallKind
from resilience.core.middleware import ChainInfo
from resilience.middleware.timeout import Timeout

METHOD = "cache.CacheService/Get"


def make(seconds: float) -> tuple[Timeout, list[Call]]:
    seen: list[Call] = []

    def handler(call: Call) -> str:
        seen.append(call)
        return "ok"

    info = ChainInfo(
        method=METHOD, kind=CallKind.UNARY_UNARY, side="client", name="Timeout", shared={}
    )
    return Timeout(handler, Timeout.Options(seconds=seconds), info), seen


def test_sets_deadline_seconds_from_now():
    timeout, seen = make(0.5)
    before = time.monotonic()
    assert timeout(Call(METHOD, CallKind.UNARY_UNARY, "client", b"")) == "ok"
    after = time.monotonic()
    assert before + 0.5 <= seen[0].deadline <= after + 0.5


def test_never_extends_an_earlier_caller_deadline():
    timeout, seen = make(5.0)
    caller_deadline = time.monotonic() + 0.1
    call = Call(METHOD, CallKind.UNARY_UNARY, "client", b"", deadline=caller_deadline)
    timeout(call)
    assert seen[0] is call
    assert seen[0].deadline == caller_deadline


def test_tightens_a_later_caller_deadline():
    timeout, seen = make(0.2)
    call = Call(METHOD, CallKind.UNARY_UNARY, "client", b"", deadline=time.monotonic() + 10)
    timeout(call)
    assert seen[0].deadline == pytest.approx(time.monotonic() + 0.2, abs=0.05)
    assert call.deadline > seen[0].deadline


def test_options_reject_non_positive_seconds():
    from resilience.core.options import build_options

    options, problems = build_options(Timeout.Options, {"seconds": 0})
    assert options is None
    assert problems == ["option 'seconds' is 0.0; expected a value > 0"]
