"""What a sync stub returns through a chain: grpcio's objects, or objects with exactly
their interfaces, standing for the logical call (every attempt Retry or Hedging made).

Their metadata and status are those of the attempt that decided the outcome: the last
grpc call the terminal started (``CallOptions.grpc_call``), or the chain's own error when
it answered without one (an open breaker, a limit).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from resilience.core.call import Call, CallOptions
from resilience.core.errors import status_of

_OK = grpc.StatusCode.OK


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Ended(grpc.Call, grpc.Future):
    """A unary call that has ended by the time it is handed over: never active, never
    cancellable, done."""

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class Answered(Ended):
    """A unary call that has ended, for ``with_call``: the status and metadata of the
    attempt that answered, or OK and none when no attempt did (a fallback answered)."""

    def __init__(self, response: Any, rpc: Any) -> None:
        self._response = response
        self._rpc = rpc

    def initial_metadata(self) -> Any:
        return () if self._rpc is None else self._rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        return () if self._rpc is None else self._rpc.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return _OK if self._rpc is None else self._rpc.code()

    def details(self) -> str:
        return "" if self._rpc is None else self._rpc.details()

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None


class _Outcome:
    """The Call methods of a logical call that has an error (``_error``) or a current
    attempt (``_opts.grpc_call``); what ``StreamCall`` and ``ChainFuture`` share."""

    _opts: CallOptions
    _error: BaseException | None

    def _wait(self) -> None:
        """Block until the logical call has ended, where grpc's own method would."""

    def initial_metadata(self) -> Any:
        self._wait()
        rpc = self._opts.grpc_call
        if rpc is not None:
            return rpc.initial_metadata()
        return _error_part(self._error, "initial_metadata", ())

    def trailing_metadata(self) -> Any:
        self._wait()
        if self._error is not None:
            return _error_part(self._error, "trailing_metadata", ())
        rpc = self._opts.grpc_call
        return () if rpc is None else rpc.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        self._wait()
        if self._error is not None:
            return status_of(self._error)
        rpc = self._opts.grpc_call
        return _OK if rpc is None else rpc.code()

    def details(self) -> str:
        self._wait()
        if self._error is not None:
            return str(_error_part(self._error, "details", str(self._error)))
        rpc = self._opts.grpc_call
        return "" if rpc is None else rpc.details()


def _error_part(error: BaseException | None, name: str, default: Any) -> Any:
    method = getattr(error, name, None)
    return method() if callable(method) else default


class StreamCall(_Outcome, grpc.Call):
    """A response stream through the chain: an iterator that is also a ``grpc.Call``.

    The chain started the RPC when the stub was called, as grpcio does. An error the chain
    raised before any attempt (an open breaker) is raised by the first ``next()``, as
    grpcio raises a failed RPC's status there.
    """

    __slots__ = ("_deadline", "_ended", "_error", "_opts", "_responses")

    def __init__(self, responses: Iterator[Any] | None, opts: CallOptions,
                 deadline: float | None, error: BaseException | None = None) -> None:
        self._responses = responses
        self._opts = opts
        self._deadline = deadline
        self._error = error
        self._ended = error is not None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._responses is None:
            raise self._error  # type: ignore[misc]
        try:
            return next(self._responses)
        except StopIteration:
            self._ended = True
            raise
        except grpc.RpcError as exc:
            self._ended = True
            self._error = exc
            raise

    def cancel(self) -> bool:
        """Cancel the attempt in flight and start no more; from any thread."""
        if self._ended:
            return False
        scope = self._opts.scope
        if scope is not None:
            scope.cancel()
        return True

    def close(self) -> None:
        """End the stream as a generator's ``close()`` does: the layers below see it
        closed (a limit frees its slot) and the RPC is cancelled."""
        if self._ended:
            return
        self._ended = True
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()
        scope = self._opts.scope
        if scope is not None:
            scope.cancel()

    def is_active(self) -> bool:
        if self._ended:
            return False
        rpc = self._opts.grpc_call
        return rpc is not None and bool(rpc.is_active())

    def time_remaining(self) -> float | None:
        rpc = self._opts.grpc_call
        return _remaining(self._deadline) if rpc is None else rpc.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        rpc = self._opts.grpc_call
        if self._ended or rpc is None:
            return False
        return bool(rpc.add_callback(callback))


class ChainFuture(_Outcome, grpc.Future, grpc.Call):
    """``future()`` through the chain: the whole chain (Retry, Hedging, the breaker) runs
    in a thread of the channel's pool, with the caller's context variables.

    ``cancel()`` cancels the attempt in flight and the terminal starts no more; a future
    still queued for a thread never runs.
    """

    def __init__(self, chain: Callable[[Call], Any], call: Call, opts: CallOptions,
                 pool: concurrent.futures.Executor) -> None:
        self._opts = opts
        self._deadline = call.deadline
        self._error = None
        self._cancelled = False
        self._future = pool.submit(contextvars.copy_context().run, chain, call)

    def _wait(self) -> None:
        concurrent.futures.wait((self._future,))
        if not self._future.cancelled():
            self._error = self._future.exception()

    def cancel(self) -> bool:
        if self._future.done():
            return False
        self._cancelled = True
        if not self._future.cancel():  # already running: cancel its attempt on the wire
            scope = self._opts.scope
            if scope is not None:
                scope.cancel()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self._future.done()

    def done(self) -> bool:
        return self._cancelled or self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        if self._cancelled:
            raise grpc.FutureCancelledError()
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._cancelled:
            raise grpc.FutureCancelledError()
        try:
            return self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def code(self) -> grpc.StatusCode:
        if self._cancelled:
            return grpc.StatusCode.CANCELLED
        return super().code()

    def is_active(self) -> bool:
        return not self.done()

    def time_remaining(self) -> float | None:
        return _remaining(self._deadline)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.done():
            return False
        self._future.add_done_callback(lambda _: callback())
        return True
