"""Decide from samples when a limiter has been saturated for too long: the pure half of the
health saturation monitor (``resilience.transport.health``).

A limiter is saturated while its calls in flight reach its limit. One saturated sample says
little (a burst fills the limit for a moment); saturation that lasts ``seconds`` means the
server cannot keep up, and a balancer had better send new calls elsewhere until it can.
Time is passed in, so the decisions can be checked against exact sequences.
"""

from __future__ import annotations


class SaturationTracker:
    """Turns (saturated, now) samples into "report NOT_SERVING" / "report SERVING" changes.

    The report turns to NOT_SERVING once every sample for at least ``seconds`` was
    saturated, and back as soon as one sample is not. Saturation between two samples that
    both say otherwise is not seen, so sample well within ``seconds``.
    """

    __slots__ = ("_since", "overloaded", "seconds")

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        self.seconds = seconds
        self._since: float | None = None
        self.overloaded = False

    def update(self, saturated: bool, now: float) -> bool | None:
        """Record one sample; return the new ``overloaded`` value when it changes, else None."""
        if not saturated:
            self._since = None
            if self.overloaded:
                self.overloaded = False
                return False
            return None
        if self._since is None:
            self._since = now
        if not self.overloaded and now - self._since >= self.seconds:
            self.overloaded = True
            return True
        return None
