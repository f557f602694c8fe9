"""RequestContext on its own: which id a call gets, what is bound while it runs, and that
nothing stays bound after it, on both sides, unary and streaming, sync and asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from resilience.core.call import ATTEMPT_KEY, Call, CallKind, attempt_metadata
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware.context import (
    RequestContext,
    parse_attempt,
    rebind_attempt,
    valid_request_id,
)

METHOD = "cache.CacheService/Get"
log = structlog.get_logger("test")


@pytest.fixture
def logs() -> LogCapture:
    """Captured log lines with structlog's contextvars merged in, as resilience.log does."""
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    return capture


def make(handler: Any, side: str = "client", kind: CallKind = CallKind.UNARY_UNARY,
         is_async: bool = False, **values: Any) -> RequestContext:
    options, problems = build_options(RequestContext.Options, values)
    assert not problems
    info = ChainInfo(METHOD, kind, side, "RequestContext", {}, "", is_async)  # type: ignore[arg-type]
    return RequestContext(handler, options, info)  # type: ignore[arg-type]


def call(side: str = "client", metadata: tuple[tuple[str, str], ...] = (),
         kind: CallKind = CallKind.UNARY_UNARY, attempt: int = 1) -> Call:
    return Call(METHOD, kind, side, "request", metadata=metadata, attempt=attempt)  # type: ignore[arg-type]


def bound() -> dict[str, Any]:
    return structlog.contextvars.get_contextvars()


def test_client_makes_an_id_sends_it_and_binds_it_only_during_the_call(logs: LogCapture) -> None:
    seen: list[Call] = []

    def handler(c: Call) -> str:
        seen.append(c)
        log.info("inside")
        return "response"

    mw = make(handler)
    original = call(metadata=(("authorization", "x"),))
    assert mw(original) == "response"
    (sent,) = seen
    sent_ids = [v for k, v in sent.metadata if k == "x-request-id"]
    assert len(sent_ids) == 1 and len(sent_ids[0]) == 32
    assert ("authorization", "x") in sent.metadata
    assert original.metadata == (("authorization", "x"),)  # never mutated
    assert logs.entries[0]["request_id"] == sent_ids[0]
    assert logs.entries[0]["attempt"] == 1
    assert bound() == {}
    mw(call())
    assert [v for k, v in seen[1].metadata if k == "x-request-id"] != sent_ids  # fresh each


def test_client_keeps_the_callers_id_from_metadata_or_context() -> None:
    seen: list[Call] = []
    mw = make(lambda c: seen.append(c))
    given = call(metadata=(("x-request-id", "from-metadata"),))
    mw(given)
    assert seen[0] is given  # already carried: passed down as it is
    with structlog.contextvars.bound_contextvars(request_id="from-context", user="u"):
        mw(call())
        assert bound() == {"request_id": "from-context", "user": "u"}  # restored after
    assert ("x-request-id", "from-context") in seen[1].metadata
    # An unusable id is replaced, and never sent twice.
    mw(call(metadata=(("x-request-id", "bad id\n"),)))
    ids = [v for k, v in seen[2].metadata if k == "x-request-id"]
    assert len(ids) == 1 and ids[0] != "bad id\n"


def test_client_without_keep_caller_id_always_makes_one() -> None:
    seen: list[Call] = []
    mw = make(lambda c: seen.append(c), keep_caller_id=False)
    mw(call(metadata=(("x-request-id", "given"),)))
    ids = [v for k, v in seen[0].metadata if k == "x-request-id"]
    assert len(ids) == 1 and ids[0] != "given"


def test_server_binds_the_clients_id_and_attempt_and_passes_the_attempt_down(
    logs: LogCapture,
) -> None:
    seen: list[Call] = []

    def handler(c: Call) -> None:
        seen.append(c)
        log.info("inside")

    mw = make(handler, side="server")
    mw(call("server", metadata=(("x-request-id", "abc-1"), (ATTEMPT_KEY, "3"))))
    assert seen[0].attempt == 3
    assert (logs.entries[0]["request_id"], logs.entries[0]["attempt"]) == ("abc-1", 3)
    mw(call("server"))  # a client without RequestContext: a fresh id, attempt 1
    assert logs.entries[1]["attempt"] == 1 and len(logs.entries[1]["request_id"]) == 32
    assert bound() == {}


def test_server_replaces_unsafe_or_distrusted_ids(logs: LogCapture) -> None:
    mw = make(lambda c: log.info("inside"), side="server")
    mw(call("server", metadata=(("x-request-id", "x" * 500),)))
    mw(call("server", metadata=(("x-request-id", "a\x1b[31mred"),)))
    distrust = make(lambda c: log.info("inside"), side="server", keep_caller_id=False)
    distrust(call("server", metadata=(("x-request-id", "chosen-by-client"),)))
    ids = [e["request_id"] for e in logs.entries]
    assert all(len(i) == 32 and i.isalnum() for i in ids), ids


def test_bindings_are_reset_when_the_handler_raises() -> None:
    def handler(c: Call) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        make(handler)(call())
    assert bound() == {}


def test_stream_is_bound_during_each_step_only(logs: LogCapture) -> None:
    def handler(c: Call) -> Iterator[int]:
        for n in range(3):
            log.info("item", n=n)
            yield n

    mw = make(handler, side="server", kind=CallKind.UNARY_STREAM)
    responses = mw(call("server", metadata=(("x-request-id", "stream-1"),),
                        kind=CallKind.UNARY_STREAM))
    assert next(responses) == 0
    assert bound() == {}  # between items the consumer's thread is clean
    assert list(responses) == [1, 2]
    assert [e["request_id"] for e in logs.entries] == ["stream-1"] * 3


def test_closing_a_stream_early_runs_the_layers_below_with_the_bindings(
    logs: LogCapture,
) -> None:
    def handler(c: Call) -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            log.info("closed")

    mw = make(handler, kind=CallKind.UNARY_STREAM)
    responses = mw(call(metadata=(("x-request-id", "early"),), kind=CallKind.UNARY_STREAM))
    next(responses)
    responses.close()
    assert logs.entries[-1]["request_id"] == "early"
    assert bound() == {}


def test_asyncio_unary_and_stream(logs: LogCapture) -> None:
    async def unary(c: Call) -> str:
        await asyncio.sleep(0)
        log.info("unary")
        return "ok"

    async def stream(c: Call) -> AsyncIterator[int]:
        for n in range(2):
            await asyncio.sleep(0)
            log.info("item")
            yield n

    async def main() -> None:
        mw = make(unary, side="server", is_async=True)
        assert await mw.acall(call("server", metadata=(("x-request-id", "aio-1"),
                                                       (ATTEMPT_KEY, "2")))) == "ok"
        assert bound() == {}
        smw = make(stream, kind=CallKind.UNARY_STREAM, is_async=True)
        responses = smw.acall(call(metadata=(("x-request-id", "aio-2"),),
                                   kind=CallKind.UNARY_STREAM))
        assert await anext(responses) == 0
        assert bound() == {}
        assert [n async for n in responses] == [1]
        assert bound() == {}

    asyncio.run(main())
    assert [(e["request_id"], e["attempt"]) for e in logs.entries] == [
        ("aio-1", 2), ("aio-2", 1), ("aio-2", 1),
    ]


def test_asyncio_cancellation_propagates_and_unbinds() -> None:
    async def slow(c: Call) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        mw = make(slow, is_async=True)
        task = asyncio.ensure_future(mw.acall(call()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bound() == {}

    asyncio.run(main())


def test_rebind_attempt_only_inside_a_request_context(logs: LogCapture) -> None:
    rebind_attempt(2)
    assert bound() == {}  # nothing bound, nothing left behind

    def handler(c: Call) -> None:
        log.info("first")
        rebind_attempt(2)  # what Retry does before its second attempt
        log.info("second")

    make(handler)(call(metadata=(("x-request-id", "r"),)))
    assert [e["attempt"] for e in logs.entries] == [1, 2]
    assert bound() == {}


def test_attempt_metadata_and_parsing() -> None:
    c = call(metadata=(("a", "1"),), attempt=3)
    assert attempt_metadata(c) == (("a", "1"), (ATTEMPT_KEY, "3"))
    assert [parse_attempt(v) for v in ("2", b"4", "x", "", None, "0", "123456")] == [
        2, 4, 1, 1, 1, 1, 1,
    ]
    assert valid_request_id("a" * 128) and valid_request_id("a" * 129) is None


@pytest.mark.parametrize("header", ["X-Request-Id", "trace-bin", "grpc-x", ATTEMPT_KEY, ""])
def test_bad_header_option_is_reported(header: str) -> None:
    options, problems = build_options(RequestContext.Options, {"header": header})
    assert options is None
    assert problems and "header is" in problems[0] and "x-request-id" in problems[0]
