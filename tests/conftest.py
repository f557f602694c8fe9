"""The ``pairing`` fixture: behavioural tests run once per (client mode, server mode).
And each test's marker, from the folder it is in: ``unit``, ``integration`` or ``bench``."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from tests.support.servers import PAIRINGS, Pairing

TESTS = Path(__file__).resolve().parent
#: tests/<folder>/... -> its marker (registered in pyproject.toml): ``pytest -m unit`` runs
#: tests/unit/ alone, ``-m integration`` tests/integration/ and tests/interop/.
MARKER_OF_FOLDER = {"unit": "unit", "integration": "integration", "interop": "integration",
                    "bench": "bench"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unplaced: set[Path] = set()
    for item in items:
        path = Path(item.path).resolve()
        folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
        marker = MARKER_OF_FOLDER.get(folder)
        if marker is not None:
            item.add_marker(marker)
        elif path not in unplaced and path.is_relative_to(TESTS):
            unplaced.add(path)
            item.warn(pytest.PytestWarning(
                f"tests/{path.relative_to(TESTS).as_posix()} is in none of tests/unit, "
                "tests/integration, tests/bench: -m unit, -m integration and -m bench leave "
                "it out; move it to one"))


@pytest.fixture(params=PAIRINGS, ids=[p.id for p in PAIRINGS])
def pairing(request: pytest.FixtureRequest) -> Pairing:
    """sync-sync, sync-aio, aio-sync, aio-aio: the client's mode, then the server's."""
    return request.param


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts from structlog's defaults, whatever an earlier test configured
    (commands and benchmarks configure logging for their environment)."""
    structlog.reset_defaults()
