"""What an asyncio stub returns through a chain: objects with grpc.aio's call interfaces,
started when the stub is called, standing for the logical call.

Their metadata and status are those of the attempt that decided the outcome (the last
grpc call the terminal started, ``CallOptions.grpc_call``), or of the chain's own error.
Our own statuses (``RpcStatusError``) reach the caller as ``grpc.aio.AioRpcError``, the
type grpc.aio code catches.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import types
from collections.abc import Callable, Generator
from typing import Any

import grpc
import grpc.aio

from resilience.core.call import CallOptions
from resilience.core.errors import RpcStatusError, status_of

_OK = grpc.StatusCode.OK


class AioStatusError(grpc.aio.AioRpcError, RpcStatusError):
    """One of our statuses as an asyncio caller sees it: a ``grpc.aio.AioRpcError``, the
    type grpc.aio code catches, that is still an ``RpcStatusError`` (``retryable``)."""

    def __init__(self, error: RpcStatusError) -> None:
        # Both bases' __init__ call super() with their own arguments: set the fields.
        Exception.__init__(self, *error.args)
        self._code = error.code()
        self._details = error.details()
        self._initial_metadata = grpc.aio.Metadata(*error.initial_metadata())
        self._trailing_metadata = grpc.aio.Metadata(*error.trailing_metadata())
        self._debug_error_string = None
        self.retryable = error.retryable


def aio_error(error: BaseException) -> BaseException:
    """Our status as grpc.aio's error type; any other error as it is."""
    if not isinstance(error, RpcStatusError) or isinstance(error, grpc.aio.AioRpcError):
        return error
    return AioStatusError(error)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished call's error as seen: a call nobody awaits may fail unobserved, as
    grpc.aio's own calls do, without an "exception was never retrieved" line."""
    if not task.cancelled():
        task.exception()


class _AioOutcome:
    """The grpc.aio Call methods of a logical call, from its current attempt or error."""

    _opts: CallOptions
    _deadline: float | None
    #: Read by grpc.aio's intercepted calls before they pass on a ``write()``.
    _done_writing_flag = False

    def _error(self) -> BaseException | None:
        raise NotImplementedError

    async def _settled(self) -> None:
        """Wait until the logical call has ended, where grpc.aio's method would."""

    def time_remaining(self) -> float | None:
        rpc = self._opts.grpc_call
        if rpc is not None:
            return rpc.time_remaining()
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def _started(self) -> Any:
        """The grpc call of the current attempt, waiting for the chain to start one."""
        opts = self._opts
        if opts.grpc_call is None:
            if opts.waiter is None:
                opts.waiter = asyncio.get_running_loop().create_future()
            await self._until_started(opts.waiter)
        if opts.grpc_call is None:
            raise grpc.aio.UsageError("the call ended before it was sent")
        return opts.grpc_call

    async def _until_started(self, waiter: asyncio.Future[Any]) -> None:
        await waiter

    async def initial_metadata(self) -> Any:
        rpc = self._opts.grpc_call
        if rpc is None:
            await self._settled()
            rpc = self._opts.grpc_call
        if rpc is not None:
            return await rpc.initial_metadata()
        error = self._error()
        return error.initial_metadata() if isinstance(error, grpc.aio.AioRpcError) else (
            grpc.aio.Metadata()
        )

    async def trailing_metadata(self) -> Any:
        await self._settled()
        error = self._error()
        if isinstance(error, grpc.aio.AioRpcError):
            return error.trailing_metadata()
        rpc = self._opts.grpc_call
        return grpc.aio.Metadata() if rpc is None else await rpc.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        await self._settled()
        error = self._error()
        if isinstance(error, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        if error is not None:
            return status_of(error)
        rpc = self._opts.grpc_call
        return _OK if rpc is None else await rpc.code()

    async def details(self) -> str:
        await self._settled()
        error = self._error()
        if isinstance(error, grpc.aio.AioRpcError):
            return error.details() or ""
        if error is not None:
            return "Locally cancelled by application!" if isinstance(
                error, asyncio.CancelledError) else str(error)
        rpc = self._opts.grpc_call
        return "" if rpc is None else await rpc.details()

    async def debug_error_string(self) -> str:
        await self._settled()
        error = self._error()
        if isinstance(error, grpc.aio.AioRpcError):
            return error.debug_error_string() or ""
        rpc = self._opts.grpc_call
        return "" if rpc is None else await rpc.debug_error_string()

    async def wait_for_connection(self) -> None:
        await (await self._started()).wait_for_connection()

    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()


async def as_coroutine(awaitable: Any) -> Any:
    """Any awaitable as a coroutine, which a call object steps."""
    return await awaitable


_COROUTINE = types.CoroutineType


class AioUnaryCall(CallOptions, _AioOutcome, grpc.aio.UnaryUnaryCall,
                   grpc.aio.StreamUnaryCall):
    """A unary-response call through the chain, started when the stub is called.

    The chain's coroutine is stepped as a task steps one, in a context of its own, but
    without a task: its first step runs in the stub call (so the RPC starts there), and
    after that the task awaiting this call steps it directly, so ``await stub.M(req)``
    costs no event-loop turn and no callback more than grpc.aio's own call. A call that
    is not awaited steps itself from callbacks once something asks for its outcome
    (``done()``, ``add_done_callback()``, ``code()``...); one that nothing ever asks about
    has made its first attempt, and its layers see it end (closed) when it is collected.

    On a channel the call is its own ``CallOptions`` (one object per call, not two), made
    field by field by the multicallable; ``AioUnaryCall(coroutine, opts, deadline)``
    serves callers whose options are their own (the plain interceptors).
    """

    # Defaults for what the per-call path does not set.
    _driven = False  # an awaiting task or the call's own callbacks step the chain
    _outcome: tuple[bool, Any] | None = None
    _completion: asyncio.Future[None] | None = None
    _callbacks: list[Callable[[Any], None]] | tuple[()] = ()
    _waiting: Any = None

    _options: CallOptions | None = None  # options that are another object

    @property
    def _opts(self) -> CallOptions:  # type: ignore[override]
        """The options the terminal reports to: this call's own, unless it was given some
        (a property, not ``self._opts = self``: a reference cycle per call)."""
        return self if self._options is None else self._options

    def __init__(self, coroutine: Any, opts: CallOptions, deadline: float | None) -> None:
        self._options = opts
        self._deadline = deadline
        if type(coroutine) is not _COROUTINE:  # another awaitable: a coroutine awaiting it
            coroutine = as_coroutine(coroutine)
        self._coroutine = coroutine
        self._context = context = contextvars.copy_context()
        try:
            self._waiting = context.run(coroutine.send, None)
        except StopIteration as stop:
            self._finish(True, stop.value)
        except BaseException as exc:
            self._finish(False, exc)

    def _step(self, value: Any, error: BaseException | None) -> bool:
        """Run the chain to its next wait; False once it has ended."""
        try:
            if error is None:
                self._waiting = self._context.run(self._coroutine.send, value)
            else:
                self._waiting = self._context.run(self._coroutine.throw, error)
        except StopIteration as stop:
            self._finish(True, stop.value)
            return False
        except BaseException as exc:  # the call's outcome, for its awaiter
            self._finish(False, exc)
            return False
        return True

    def _finish(self, ok: bool, value: Any) -> None:
        self._outcome = (ok, value)
        self._coroutine = self._waiting = None
        if self._completion is not None and not self._completion.done():
            self._completion.set_result(None)
        callbacks, self._callbacks = self._callbacks, ()
        if callbacks:
            loop = asyncio.get_running_loop()
            for callback in callbacks:
                loop.call_soon(callback, self)

    def _drive(self) -> None:
        """Step the chain from callbacks, as a task would: its outcome is wanted and no
        task awaits it."""
        if self._outcome is None and not self._driven:
            self._driven = True
            self._resume_when_ready()

    def _resume_when_ready(self) -> None:
        waiting = self._waiting
        if waiting is None:  # a bare yield (sleep(0)): step again on the next turn
            asyncio.get_running_loop().call_soon(self._resume, None)
        else:
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(self._resume)

    def _resume(self, _: Any) -> None:
        if self._outcome is None and self._step(None, None):
            self._resume_when_ready()

    def __await__(self) -> Generator[Any, None, Any]:
        if self._outcome is None and not self._driven:
            self._driven = True
            # _step inlined: this loop is the per-call path of every awaited call.
            run = self._context.run
            coroutine = self._coroutine
            waiting = self._waiting
            while True:
                try:
                    value = yield waiting
                except BaseException as exc:  # the awaiting task was cancelled
                    if not self._step(None, exc):
                        break
                    waiting = self._waiting
                    continue
                try:
                    waiting = self._waiting = run(coroutine.send, value)
                except StopIteration as stop:
                    if self._completion is None and not self._callbacks:
                        # _finish, inlined for the usual call: nobody else is waiting.
                        self._coroutine = self._waiting = None
                        self._outcome = (True, stop.value)
                        return stop.value
                    self._finish(True, stop.value)
                    break
                except BaseException as exc:
                    self._finish(False, exc)
                    break
        elif self._outcome is None:
            yield from self._settled().__await__()
        ok, value = self._outcome  # type: ignore[misc]
        if ok:
            return value
        raise aio_error(value)

    def _error(self) -> BaseException | None:
        if self._outcome is None or self._outcome[0]:
            return None
        error = self._outcome[1]
        return error if isinstance(error, asyncio.CancelledError) else aio_error(error)

    async def _settled(self) -> None:
        if self._outcome is None:
            self._drive()
            if self._completion is None:
                self._completion = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._completion)

    async def _until_started(self, waiter: asyncio.Future[Any]) -> None:
        settled = asyncio.ensure_future(self._settled())
        await asyncio.wait((waiter, settled), return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()

    def cancel(self) -> bool:
        """Cancel what the chain waits on (the attempt in flight, or a backoff), as
        cancelling a task would; the chain's layers then see CancelledError."""
        if self._outcome is not None:
            return False
        if self._waiting is not None:
            self._waiting.cancel()
        rpc = self._opts.grpc_call
        if rpc is not None:
            rpc.cancel()
        self._drive()  # the layers see the cancellation even if nobody awaits the call
        return True

    def cancelled(self) -> bool:
        return self.done() and isinstance(self._outcome[1],  # type: ignore[index]
                                          asyncio.CancelledError)

    def done(self) -> bool:
        """Also steps a call nobody drives as far as what it waited on has finished."""
        while self._outcome is None and not self._driven and (
            self._waiting is None or self._waiting.done()
        ) and self._step(None, None):
            pass
        return self._outcome is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._outcome is not None:
            asyncio.get_running_loop().call_soon(callback, self)
        else:
            self._callbacks = [*self._callbacks, callback]
            self._drive()


class AioStreamCall(_AioOutcome, grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
    """A response stream through the chain: ``read()``, async iteration, ``write()`` and
    ``done_writing()``, as grpc.aio's stream calls.

    The chain starts the RPC when the stub is called. A layer that must wait before it
    starts (an injected delay, a client rate limit's wait) is driven to its first response
    by a task made here, so such a call starts without waiting for the first read too.
    """

    def __init__(self, responses: Any, opts: CallOptions, deadline: float | None,
                 error: BaseException | None = None) -> None:
        self._opts = opts
        self._deadline = deadline
        self._responses = None if responses is None else aiter(responses)
        self._failure = None if error is None else aio_error(error)
        self._ended = error is not None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._first: asyncio.Future[Any] | None = None
        self._reading = False
        if self._responses is not None and opts.grpc_call is None:
            self._first = asyncio.ensure_future(self._read_first())
            self._first.add_done_callback(_retrieve)

    async def _read_first(self) -> Any:
        return await anext(self._responses)  # type: ignore[arg-type]

    def __aiter__(self) -> AioStreamCall:
        return self

    async def __anext__(self) -> Any:
        if self._responses is None:
            raise self._failure  # type: ignore[misc]
        self._reading = True
        try:
            first = self._first
            if first is not None:
                self._first = None
                return await first
            return await anext(self._responses)
        except StopAsyncIteration:
            self._end(None)
            raise
        except asyncio.CancelledError:
            self._end(None)
            raise
        except Exception as exc:
            error = aio_error(exc)
            self._end(error)
            if error is exc:
                raise
            raise error from None
        finally:
            self._reading = False

    async def read(self) -> Any:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    def _end(self, error: BaseException | None) -> None:
        self._ended = True
        if error is not None:
            self._failure = error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _error(self) -> BaseException | None:
        if self._failure is not None:
            return self._failure
        return asyncio.CancelledError() if self._cancelled else None

    async def _settled(self) -> None:
        first = self._first
        if first is not None and not self._ended:
            # The chain is being driven to its first response: it may fail before it
            # starts an RPC (a deadline already passed), and then that is the outcome.
            await asyncio.wait((first,))
            if not first.cancelled() and (error := first.exception()) is not None:
                self._end(aio_error(error))
        rpc = self._opts.grpc_call
        if not self._ended and rpc is not None:
            await rpc.code()

    async def _until_started(self, waiter: asyncio.Future[Any]) -> None:
        pending = {waiter} if self._first is None else {waiter, self._first}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        scope = self._opts.scope
        if scope is not None:
            scope.cancel()
        if self._first is not None:
            self._first.cancel()
        elif not self._reading:
            # Nobody is reading to see the cancellation: close the layers now, so that a
            # limit frees its slot without waiting for garbage collection.
            aclose = getattr(self._responses, "aclose", None)
            if aclose is not None:
                asyncio.ensure_future(aclose()).add_done_callback(_retrieve)
        return True

    def cancelled(self) -> bool:
        rpc = self._opts.grpc_call
        return self._cancelled or (rpc is not None and bool(rpc.cancelled()))

    def done(self) -> bool:
        rpc = self._opts.grpc_call
        return self._ended or (rpc is not None and bool(rpc.done()))

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        rpc = self._opts.grpc_call
        if rpc is not None:
            rpc.add_done_callback(lambda _: callback(self))
        elif self._ended:
            callback(self)
        else:
            self._callbacks.append(callback)
