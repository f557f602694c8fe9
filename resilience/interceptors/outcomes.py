"""What a sync intercepted call returns: the grpc.Call (and grpc.Future, for unary
responses) that grpcio's intercepted multicallables hand back, for a call the chain
answered, failed or streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from resilience.core.call import Call
from resilience.core.errors import status_of
from resilience.interceptors.chains import CONTINUATION
from resilience.transport.calls import Ended
from resilience.transport.client import CallOptions


class Failed(grpc.RpcError, Ended):
    """A call the chain failed with a status of its own (an open breaker, a limit): raises
    it from ``result()`` and from iteration, as grpc's failed calls do."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self._error = error

    def initial_metadata(self) -> Any:
        return self._error.initial_metadata()  # type: ignore[attr-defined]

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()  # type: ignore[attr-defined]

    def code(self) -> grpc.StatusCode:
        return status_of(self._error)

    def details(self) -> str:
        return self._error.details()  # type: ignore[attr-defined,no-any-return]

    def result(self, timeout: float | None = None) -> Any:
        raise self._error

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        return self._error.__traceback__

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise self._error


def failed(error: grpc.RpcError) -> Any:
    """grpc's own failed calls are already Call and Future; wrap ours."""
    return error if isinstance(error, grpc.Future) else Failed(error)


class Stream(grpc.Call):
    """A response stream through the chain, with the Call methods of its current attempt.

    Each ``next()`` runs with the continuation in context, since the chain's layers (and
    so the terminal) are generators that start on the first read.
    """

    def __init__(self, responses: Iterator[Any], call: Call,
                 continuation: Callable[..., Any]) -> None:
        self._responses = responses
        self._opts: CallOptions = call.context
        self._continuation = continuation

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        token = CONTINUATION.set(self._continuation)
        try:
            return next(self._responses)
        finally:
            CONTINUATION.reset(token)

    def _rpc(self) -> Any:
        return self._opts.grpc_call

    def cancel(self) -> bool:
        """Cancel the attempt in flight; safe from another thread than the reader's."""
        rpc = self._rpc()
        if rpc is None:
            close = getattr(self._responses, "close", None)
            if close is not None:
                close()
            return True
        return bool(rpc.cancel())

    def is_active(self) -> bool:
        rpc = self._rpc()
        return rpc is not None and bool(rpc.is_active())

    def time_remaining(self) -> float | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        rpc = self._rpc()
        return rpc is not None and bool(rpc.add_callback(callback))

    def initial_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else rpc.trailing_metadata()

    def code(self) -> grpc.StatusCode | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.code()

    def details(self) -> str | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.details()
