"""The layers hold at import time: middleware and core load no settings machinery, no Redis
client and no Prometheus client (the import-linter contracts in pyproject.toml hold the
import graph itself; see docs/design.md, "Three layers")."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("dynaconf", "redis", "prometheus_client")


def loaded_after(statement: str) -> set[str]:
    """The top-level packages of ``HEAVY`` that ``statement`` loads, in a fresh interpreter."""
    code = (f"import sys\n{statement}\n"
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("statement", [
    "import resilience",
    "import resilience.core.chain, resilience.core.loading, resilience.core.options",
    "import resilience.middleware",
    "from resilience.middleware import Retry, Timeout, Hedging, RateLimit, RequestContext",
])
def test_core_and_middleware_load_no_settings_redis_or_prometheus(statement: str) -> None:
    assert loaded_after(statement) == set()


def test_metrics_middleware_loads_prometheus_alone() -> None:
    assert loaded_after("from resilience.middleware import Metrics") == {"prometheus_client"}
