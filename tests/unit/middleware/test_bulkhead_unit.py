"""Bulkhead against fake handlers, sync and asyncio: group resolution, waits bounded by
``max_wait`` and by the deadline, release on every exit path, executors, validation."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware import Bulkhead

GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
DUMP = "cache.CacheService/Dump"
UNARY = CallKind.UNARY_UNARY
STREAM = CallKind.UNARY_STREAM
GROUPS = {"reports": (DUMP,), "updates": (GET, STORE)}
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

pytestmark = pytest.mark.timeout(30)


def make(handler: Any, method: str = GET, kind: CallKind = UNARY, *, side: str = "server",
         shared: dict[str, Any] | None = None, is_async: bool = False, **options: Any
         ) -> Bulkhead:
    info = ChainInfo(method, kind, side, "Bulkhead", {} if shared is None else shared,
                     "127.0.0.1:50051", is_async)
    return Bulkhead(handler, Bulkhead.Options(**options), info)


def make_call(method: str = GET, kind: CallKind = UNARY, deadline: float | None = None,
              context: Any = None) -> Call:
    return Call(method, kind, "server", "req", deadline=deadline, context=context)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class Blocker:
    """A sync handler that holds its slot until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []

    def __call__(self, call: Call) -> str:
        self.threads.append(threading.current_thread().name)
        assert self.release.wait(10)
        return "ok"


@pytest.fixture
def blocker() -> Iterator[Blocker]:
    handler = Blocker()
    yield handler
    handler.release.set()


def occupy(mw: Bulkhead, n: int, method: str = GET) -> list[threading.Thread]:
    threads = [threading.Thread(target=mw, args=(make_call(method),), daemon=True)
               for _ in range(n)]
    for thread in threads:
        thread.start()
    wait_until(lambda: mw.in_flight == n)
    return threads


class FakeContext:
    """The server context's termination callbacks, run by ``terminate``."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[..., None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(lambda: callback(self))

    def terminate(self) -> None:
        for callback in self.callbacks:
            callback()


# --- groups ------------------------------------------------------------------------------


def test_methods_of_a_group_share_one_compartment_and_others_have_their_own() -> None:
    shared: dict[str, Any] = {}
    get = make(str, GET, shared=shared, groups=GROUPS, max_concurrent=3)
    store = make(str, STORE, shared=shared, groups=GROUPS, max_concurrent=3)
    dump = make(str, DUMP, STREAM, shared=shared, groups=GROUPS, max_concurrent=3)
    other = make(str, "cache.CacheService/Other", shared=shared, groups=GROUPS)
    assert get.compartment is store.compartment
    assert (get.group, dump.group) == ("updates", "reports")
    assert other.group == "cache.CacheService/Other"  # in no group: a group of its own
    assert dump.compartment is not get.compartment
    # Another server (another shared dict) has compartments of its own.
    assert make(str, GET, groups=GROUPS).compartment is not get.compartment


def test_limits_override_max_concurrent_per_group_or_method() -> None:
    limits = {"reports": 2, "cache.CacheService/Other": 7}
    assert make(str, DUMP, groups=GROUPS, limits=limits).limit == 2
    assert make(str, GET, groups=GROUPS, limits=limits, max_concurrent=5).limit == 5
    assert make(str, "cache.CacheService/Other", groups=GROUPS, limits=limits).limit == 7


def test_a_full_group_rejects_its_methods_but_not_another_groups(blocker: Blocker) -> None:
    shared: dict[str, Any] = {}
    dump = make(blocker, DUMP, shared=shared, groups=GROUPS, limits={"reports": 2})
    get = make(lambda call: "got", GET, shared=shared, groups=GROUPS)
    occupy(dump, 2, DUMP)
    with pytest.raises(RpcStatusError) as rejected:
        dump(make_call(DUMP))
    assert rejected.value.code() == EXHAUSTED
    assert rejected.value.details() == (
        "bulkhead 'reports' is full: 2 calls in flight; retry later"
    )
    assert get(make_call()) == "got"
    blocker.release.set()
    wait_until(lambda: dump.in_flight == 0)


def test_store_and_get_share_their_groups_slots(blocker: Blocker) -> None:
    shared: dict[str, Any] = {}
    get = make(blocker, GET, shared=shared, groups=GROUPS, max_concurrent=1)
    store = make(lambda call: "stored", STORE, shared=shared, groups=GROUPS, max_concurrent=1)
    occupy(get, 1)
    with pytest.raises(RpcStatusError, match="bulkhead 'updates' is full"):
        store(make_call(STORE))
    blocker.release.set()
    wait_until(lambda: get.in_flight == 0)
    assert store(make_call(STORE)) == "stored"


# --- waiting (sync) ----------------------------------------------------------------------


def test_waits_up_to_max_wait_then_rejects(blocker: Blocker) -> None:
    mw = make(blocker, max_concurrent=1, max_wait=0.3)
    occupy(mw, 1)
    start = time.monotonic()
    with pytest.raises(RpcStatusError) as rejected:
        mw(make_call())
    elapsed = time.monotonic() - start
    assert 0.28 <= elapsed < 2.0
    assert "after waiting 0.3s" in rejected.value.details()
    assert mw.in_flight == 1


def test_a_slot_freed_during_the_wait_admits_the_call(blocker: Blocker) -> None:
    mw = make(blocker, max_concurrent=1, max_wait=5.0)
    occupy(mw, 1)
    threading.Timer(0.2, blocker.release.set).start()
    start = time.monotonic()
    assert mw(make_call()) == "ok"
    assert time.monotonic() - start < 3.0
    wait_until(lambda: mw.in_flight == 0)


def test_the_deadline_bounds_the_wait(blocker: Blocker) -> None:
    mw = make(blocker, max_concurrent=1, max_wait=5.0)
    occupy(mw, 1)
    start = time.monotonic()
    with pytest.raises(RpcStatusError) as rejected:
        mw(make_call(deadline=start + 0.2))
    assert 0.15 <= time.monotonic() - start < 2.0
    assert rejected.value.code() == EXHAUSTED
    # A deadline already past: no wait at all.
    start = time.monotonic()
    with pytest.raises(RpcStatusError) as late:
        mw(make_call(deadline=start - 1))
    assert time.monotonic() - start < 0.1
    assert late.value.details() == "bulkhead 'cache.CacheService/Get' is full: 1 calls in " \
                                   "flight; retry later"


def test_max_wait_zero_rejects_at_once(blocker: Blocker) -> None:
    mw = make(blocker, max_concurrent=1)
    occupy(mw, 1)
    start = time.monotonic()
    with pytest.raises(RpcStatusError):
        mw(make_call(deadline=start + 10))
    assert time.monotonic() - start < 0.1


# --- release on every exit path (sync) ---------------------------------------------------


def test_released_after_return_and_after_error() -> None:
    def fail(call: Call) -> Any:
        raise RpcStatusError(grpc.StatusCode.INTERNAL, "boom")

    mw = make(fail, max_concurrent=1)
    for _ in range(3):
        with pytest.raises(RpcStatusError, match="boom"):
            mw(make_call())
        assert mw.in_flight == 0
    ok = make(lambda call: "ok", max_concurrent=1)
    assert [ok(make_call()) for _ in range(3)] == ["ok"] * 3
    assert ok.in_flight == 0


def numbers(n: int, fail_at: int | None = None) -> Callable[[Call], Iterator[int]]:
    def handler(call: Call) -> Iterator[int]:
        for i in range(n):
            if i == fail_at:
                raise RpcStatusError(grpc.StatusCode.INTERNAL, "stream broke")
            yield i

    return handler


def test_stream_holds_its_slot_until_it_ends() -> None:
    mw = make(numbers(3), DUMP, STREAM, max_concurrent=1)
    responses = mw(make_call(DUMP, STREAM))
    assert mw.in_flight == 1
    with pytest.raises(RpcStatusError):
        mw(make_call(DUMP, STREAM))
    assert next(responses) == 0
    assert mw.in_flight == 1
    assert list(responses) == [1, 2]
    assert mw.in_flight == 0


def test_stream_released_on_error_close_drop_and_termination() -> None:
    mw = make(numbers(5, fail_at=2), DUMP, STREAM, max_concurrent=1)
    responses = mw(make_call(DUMP, STREAM))
    with pytest.raises(RpcStatusError, match="stream broke"):
        list(responses)
    assert mw.in_flight == 0

    closed = mw(make_call(DUMP, STREAM))
    next(closed)
    closed.close()
    assert mw.in_flight == 0

    mw(make_call(DUMP, STREAM))  # never iterated, dropped
    gc.collect()
    assert mw.in_flight == 0

    context = FakeContext()
    abandoned = mw(make_call(DUMP, STREAM, context=context))
    next(abandoned)
    context.terminate()  # the client went away; grpc runs the callbacks
    assert mw.in_flight == 0
    abandoned.close()  # releasing twice must not free a second slot
    assert mw.in_flight == 0


def test_stream_released_when_the_handler_raises_at_once() -> None:
    def broken(call: Call) -> Iterator[int]:
        raise RpcStatusError(grpc.StatusCode.INTERNAL, "no stream")

    mw = make(broken, DUMP, STREAM, max_concurrent=1)
    with pytest.raises(RpcStatusError, match="no stream"):
        mw(make_call(DUMP, STREAM))
    assert mw.in_flight == 0


# --- executors (sync server) -------------------------------------------------------------


def test_a_groups_handlers_run_on_its_own_threads_with_the_callers_context() -> None:
    seen: list[tuple[str, str]] = []

    def handler(call: Call) -> str:
        seen.append((threading.current_thread().name, REQUEST_ID.get()))
        return "ok"

    def stream(call: Call) -> Iterator[int]:
        for i in range(3):
            seen.append((threading.current_thread().name, REQUEST_ID.get()))
            yield i

    shared: dict[str, Any] = {}
    options = {"groups": GROUPS, "executor_threads": {"reports": 10, "updates": 10}}
    get = make(handler, GET, shared=shared, **options)
    dump = make(stream, DUMP, STREAM, shared=shared, **options)
    REQUEST_ID.set("r-1")
    assert get(make_call()) == "ok"
    assert list(dump(make_call(DUMP, STREAM))) == [0, 1, 2]
    assert seen[0][0].startswith("bulkhead-updates")
    assert all(name.startswith("bulkhead-reports") for name, _ in seen[1:])
    assert {request_id for _, request_id in seen} == {"r-1"}
    assert get.in_flight == dump.in_flight == 0
    assert get.compartment.executor is not dump.compartment.executor


def test_executor_stream_closed_early_closes_the_handlers_stream() -> None:
    closed = threading.Event()

    def stream(call: Call) -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    mw = make(stream, DUMP, STREAM, groups=GROUPS, executor_threads={"reports": 10})
    responses = mw(make_call(DUMP, STREAM))
    assert next(responses) == 0
    responses.close()
    assert closed.is_set()
    assert mw.in_flight == 0


def test_no_executor_on_a_client_nor_in_an_asyncio_chain() -> None:
    options = {"groups": GROUPS, "executor_threads": {"reports": 10}}
    with capture_logs() as logs:
        shared: dict[str, Any] = {}
        aio = make(str, DUMP, STREAM, shared=shared, is_async=True, **options)
        make(str, GET, shared=shared, is_async=True, **options)
        client = make(str, DUMP, STREAM, side="client", **options)
    assert aio.compartment.executor is None
    assert client.compartment.executor is None
    assert [(e["event"], e["where"]) for e in logs] == [
        ("bulkhead_executor_threads_unused", "the asyncio server"),  # once per server
        ("bulkhead_executor_threads_unused", "a client"),
    ]


# --- the asyncio path --------------------------------------------------------------------


class AsyncBlocker:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, call: Call) -> str:
        await self.release.wait()
        return "ok"


async def aoccupy(mw: Bulkhead, n: int) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.create_task(mw.acall(make_call())) for _ in range(n)]
    async with asyncio.timeout(5):
        while mw.in_flight < n:
            await asyncio.sleep(0)
    return tasks


def test_async_rejects_waits_and_admits() -> None:
    async def main() -> None:
        blocker = AsyncBlocker()
        mw = make(blocker, max_concurrent=2, max_wait=0.3, is_async=True)
        tasks = await aoccupy(mw, 2)
        start = time.monotonic()
        with pytest.raises(RpcStatusError) as rejected:
            await mw.acall(make_call())
        assert 0.28 <= time.monotonic() - start < 2.0
        assert rejected.value.details() == (
            "bulkhead 'cache.CacheService/Get' is full: 2 calls in flight after waiting "
            "0.3s; retry later"
        )
        # The deadline bounds the wait; one already past does not wait at all.
        start = time.monotonic()
        with pytest.raises(RpcStatusError):
            await mw.acall(make_call(deadline=start + 0.1))
        assert 0.08 <= time.monotonic() - start < 0.25
        start = time.monotonic()
        with pytest.raises(RpcStatusError):
            await mw.acall(make_call(deadline=start - 1))
        assert time.monotonic() - start < 0.05
        # A slot freed during the wait admits the waiter.
        waiter = asyncio.create_task(mw.acall(make_call()))
        await asyncio.sleep(0.05)
        blocker.release.set()
        assert await waiter == "ok"
        assert await asyncio.gather(*tasks) == ["ok", "ok"]
        assert mw.in_flight == 0

    asyncio.run(main())


def test_async_waiting_never_blocks_the_loop() -> None:
    async def main() -> None:
        blocker = AsyncBlocker()
        mw = make(blocker, max_concurrent=1, max_wait=0.5, is_async=True)
        tasks = await aoccupy(mw, 1)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(RpcStatusError):
            await mw.acall(make_call())
        ticker.cancel()
        assert ticks >= 20  # the loop kept running while the call waited 0.5 s
        blocker.release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_async_released_after_error_and_cancellation() -> None:
    async def main() -> None:
        async def fail(call: Call) -> Any:
            raise RpcStatusError(grpc.StatusCode.INTERNAL, "boom")

        mw = make(fail, max_concurrent=1, is_async=True)
        with pytest.raises(RpcStatusError, match="boom"):
            await mw.acall(make_call())
        assert mw.in_flight == 0

        blocker = AsyncBlocker()
        held = make(blocker, max_concurrent=1, max_wait=10.0, is_async=True)
        [running] = await aoccupy(held, 1)
        waiting = asyncio.create_task(held.acall(make_call()))
        await asyncio.sleep(0.05)
        waiting.cancel()  # cancelled while waiting for a slot: takes none
        running.cancel()  # cancelled while holding one: gives it back
        await asyncio.gather(waiting, running, return_exceptions=True)
        assert held.in_flight == 0
        blocker.release.set()
        assert await held.acall(make_call()) == "ok"

    asyncio.run(main())


def anumbers(n: int, fail_at: int | None = None) -> Callable[[Call], AsyncIterator[int]]:
    async def handler(call: Call) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            if i == fail_at:
                raise RpcStatusError(grpc.StatusCode.INTERNAL, "stream broke")
            yield i

    return handler


def test_async_stream_holds_its_slot_until_it_ends_however_it_ends() -> None:
    async def main() -> None:
        mw = make(anumbers(3), DUMP, STREAM, max_concurrent=1, is_async=True)
        responses = mw.acall(make_call(DUMP, STREAM))
        assert await anext(responses) == 0
        assert mw.in_flight == 1
        with pytest.raises(RpcStatusError, match="is full"):
            await anext(mw.acall(make_call(DUMP, STREAM)))
        assert [i async for i in responses] == [1, 2]
        assert mw.in_flight == 0

        broken = make(anumbers(5, fail_at=1), DUMP, STREAM, max_concurrent=1, is_async=True)
        with pytest.raises(RpcStatusError, match="stream broke"):
            _ = [i async for i in broken.acall(make_call(DUMP, STREAM))]
        assert broken.in_flight == 0

        closed = mw.acall(make_call(DUMP, STREAM))
        await anext(closed)
        await closed.aclose()
        assert mw.in_flight == 0

        context = FakeContext()
        abandoned = mw.acall(make_call(DUMP, STREAM, context=context))
        await anext(abandoned)
        context.terminate()  # grpc.aio's done callback: the RPC ended, read or not
        assert mw.in_flight == 0
        await abandoned.aclose()
        assert mw.in_flight == 0

        slow = make(anumbers(100), DUMP, STREAM, max_concurrent=1, is_async=True)

        async def read(responses: AsyncIterator[int]) -> None:
            async for _ in responses:
                await asyncio.sleep(0.01)

        reader = asyncio.create_task(read(slow.acall(make_call(DUMP, STREAM))))
        await asyncio.sleep(0.05)
        assert slow.in_flight == 1
        reader.cancel()  # while the reader, not the stream, awaits: the stream is dropped
        await asyncio.gather(reader, return_exceptions=True)
        del reader  # its traceback holds the reader's frame, which holds the stream
        gc.collect()
        async with asyncio.timeout(5):  # asyncio closes a dropped async generator on the loop
            while slow.in_flight:
                await asyncio.sleep(0)

        never_read = mw.acall(make_call(DUMP, STREAM))
        assert mw.in_flight == 0  # the slot is taken on the first read, not before
        await never_read.aclose()

    asyncio.run(main())


# --- validation --------------------------------------------------------------------------


def problems(**values: Any) -> list[str]:
    options, found = build_options(Bulkhead.Options, values)
    assert (options is None) == bool(found)
    return found


def test_valid_options_and_defaults() -> None:
    assert problems() == []
    assert problems(groups={"reports": [DUMP], "updates": [GET, STORE]}, max_concurrent=10,
                    limits={"reports": 5, GET: 3}, max_wait=0.5,
                    executor_threads={"reports": 5}) == []
    defaults = Bulkhead.Options()
    assert (defaults.groups, defaults.max_concurrent, defaults.limits, defaults.max_wait,
            defaults.executor_threads) == (None, 10, None, 0.0, None)


def test_validation_messages_name_the_option_the_value_and_the_fix() -> None:
    assert problems(groups=GROUPS, limits={"report": 3}) == [
        "option 'limits' names group 'report', which is not in 'groups' (groups: reports, "
        "updates) (did you mean 'reports'?); name a group from 'groups', or a full method "
        "name for a method's own group"
    ]
    assert problems(groups={"a": [GET], "b": [GET, DUMP]}) == [
        f"option 'groups' puts {GET} in both 'a' and 'b'; a method belongs to one group: "
        "remove it from one"
    ]
    assert problems(groups=GROUPS, limits={"reports": -1}) == [
        "option 'limits' gives group 'reports' -1; expected a whole number >= 1"
    ]
    assert problems(groups=GROUPS, executor_threads={"reports": 0}) == [
        "option 'executor_threads' gives group 'reports' 0; expected a whole number >= 1"
    ]
    assert problems(max_wait=-1) == ["option 'max_wait' is -1.0; expected a value >= 0"]
    assert problems(max_concurrent=0) == ["option 'max_concurrent' is 0; expected a value >= 1"]
    assert problems(groups={"x": ["Get"]}) == [
        "option 'groups': group 'x' lists 'Get'; expected a full method name "
        "'package.Service/Method'"
    ]
    assert problems(groups={"a/b": [GET], "empty": []}) == [
        "option 'groups' has a group named 'a/b'; a '/' marks a method's own group, so group "
        "names must not contain one; rename it",
        "option 'groups': group 'empty' lists no methods; list full method names such as "
        "'cache.CacheService/Dump', or remove it",
    ]
    assert problems(groups=GROUPS, executor_threads={"reports": 4}, max_concurrent=10) == [
        "option 'executor_threads' gives group 'reports' 4 threads for 10 calls in flight: "
        "admitted calls would queue for a thread with no bound on the wait; give it at least "
        "10 threads or lower its limit"
    ]
    assert problems(limits=[3]) == [
        "option 'limits' is [3]; expected a table whose values are a whole number "
        "(or leave unset)"
    ]
