"""Give client calls a deadline.

The deadline is absolute, so where Timeout sits in the chain decides what it bounds:

* outside Retry it bounds all attempts together, backoff sleeps included, and Retry
  stops early rather than sleep past it;
* inside Retry it bounds each attempt on its own, since every attempt passes through it
  afresh.

It only ever tightens: a caller's earlier deadline is kept, never extended. The terminal
handler turns the deadline into grpc's ``timeout=``, so no thread, timer or task is needed
here, in either mode.
"""

from __future__ import annotations

import dataclasses
from time import monotonic
from typing import Any, cast

from resilience.core.call import Call, new_call
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option


class Timeout(Middleware):
    """Set ``call.deadline`` to ``seconds`` from now unless the call already ends sooner."""

    sides = frozenset({"client"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        seconds: float = option(
            1.0, "Seconds the call may take from the moment it reaches this layer.", gt=0
        )

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self.seconds = cast(Timeout.Options, options).seconds

    def __call__(self, call: Call) -> Any:
        deadline = monotonic() + self.seconds
        if call.deadline is None or deadline < call.deadline:
            # call.replace(deadline=deadline), spelled out: no frame for it on every call.
            new = new_call(Call)
            new.method = call.method
            new.kind = call.kind
            new.side = call.side
            new.request = call.request
            new.metadata = call.metadata
            new.deadline = deadline
            new.attempt = call.attempt
            new.context = call.context
            return self.handler(new)
        return self.handler(call)

    # Nothing here waits on the outcome, so one body serves both modes: in an asyncio chain
    # it hands back the awaitable or async iterator of the layer below unchanged.
    acall = __call__
