"""Decide which calls get an injected fault: the pure half of ``FaultInjection``.

Randomness is injected (a ``random.Random``), so a seeded decider makes the same decisions
in the same order on every run, and the fractions can be checked against exact sequences.
Parsing the metadata a caller may send to ask for a fault lives here too, as Envoy's
``x-envoy-fault-*`` headers: it is pure and worth testing on its own.

Like Envoy's fault filter, a call may be both delayed and aborted: the delay comes first,
then the abort, and the two draws are independent.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import grpc

_CODES_BY_NAME = {code.name: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK}
_CODES_BY_NUMBER = {
    code.value[0]: code for code in grpc.StatusCode if code is not grpc.StatusCode.OK
}


class Fault(NamedTuple):
    """What to do to one call: wait ``delay`` seconds (0 for none), then fail with ``abort``
    (``None`` to let the call through). ``requested`` says the caller asked for it in
    metadata rather than the dice choosing it."""

    delay: float
    abort: grpc.StatusCode | None
    requested: bool = False

    @property
    def kind(self) -> str:
        """'delay', 'abort' or 'delay+abort', for logs."""
        if self.delay and self.abort is not None:
            return "delay+abort"
        return "abort" if self.abort is not None else "delay"


class FaultDecider:
    """Draws, per call, whether to delay it (and for how long) and whether to abort it.

    ``delay_min == delay_max`` is a fixed delay; otherwise the delay is uniform in
    [delay_min, delay_max]. A fraction of 0 draws nothing, so a decider that only aborts
    makes exactly one draw per call, and the sequence of decisions depends only on the
    seed and the options.
    """

    __slots__ = ("abort_code", "abort_fraction", "delay_fraction", "delay_max", "delay_min", "rng")

    def __init__(
        self,
        *,
        rng: random.Random,
        abort_fraction: float = 0.0,
        abort_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        delay_fraction: float = 0.0,
        delay_min: float = 0.0,
        delay_max: float = 0.0,
    ) -> None:
        if not 0.0 <= abort_fraction <= 1.0 or not 0.0 <= delay_fraction <= 1.0:
            raise ValueError("fractions must be between 0 and 1")
        if not 0.0 <= delay_min <= delay_max:
            raise ValueError("need 0 <= delay_min <= delay_max")
        if abort_code is grpc.StatusCode.OK:
            raise ValueError("cannot abort with OK")
        self.rng = rng
        self.abort_fraction = abort_fraction
        self.abort_code = abort_code
        self.delay_fraction = delay_fraction
        self.delay_min = delay_min
        self.delay_max = delay_max

    def decide(
        self, abort: grpc.StatusCode | None = None, delay: float | None = None
    ) -> Fault | None:
        """The fault for one call, or ``None`` for none.

        ``abort`` and ``delay`` are what the caller asked for in metadata, if anything; a
        request replaces the draw of its kind (a requested delay of 0 means no delay).
        """
        requested = abort is not None or delay is not None
        if delay is None:
            delay = 0.0
            if self.delay_fraction and self.rng.random() < self.delay_fraction:
                low, high = self.delay_min, self.delay_max
                delay = low if low == high else self.rng.uniform(low, high)
        if abort is None and self.abort_fraction and self.rng.random() < self.abort_fraction:
            abort = self.abort_code
        if not delay and abort is None:
            return None
        return Fault(delay, abort, requested)


def parse_status(value: str | bytes) -> grpc.StatusCode:
    """A status from a name (``NOT_FOUND``, any case) or its number (``5``); never OK.

    Raises ``ValueError`` with a message saying what was expected.
    """
    text = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).strip()
    if text.isascii() and text.isdigit():
        code = _CODES_BY_NUMBER.get(int(text))
    else:
        code = _CODES_BY_NAME.get(text.upper())
    if code is None:
        raise ValueError(
            f"{text!r} is not a status to abort with; expected a status name such as "
            f"'UNAVAILABLE' or its number (1-16), not OK"
        )
    return code


def parse_delay_ms(value: str | bytes) -> float:
    """Seconds from a whole number of milliseconds (``200`` -> 0.2); raises ``ValueError``."""
    text = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{text!r} is not a delay; expected whole milliseconds such as '200'")
    return int(text) / 1000.0
