"""The ``pairing`` fixture: behavioural tests run once per (client mode, server mode)."""

from __future__ import annotations

import pytest
import structlog

from tests.support.servers import PAIRINGS, Pairing


@pytest.fixture(params=PAIRINGS, ids=[p.id for p in PAIRINGS])
def pairing(request: pytest.FixtureRequest) -> Pairing:
    """sync-sync, sync-aio, aio-sync, aio-aio: the client's mode, then the server's."""
    return request.param


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts from structlog's defaults, whatever an earlier test configured
    (commands and benchmarks configure logging for their environment)."""
    structlog.reset_defaults()
