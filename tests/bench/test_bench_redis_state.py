"""The redis_state benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import redis_state
from tests.support.redis import redis_available


@pytest.mark.timeout(90)
@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "redis_state.json"
    results = redis_state.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert results["quick"] is True
    assert results["benchmark"] == "redis_state"
    variants = set(redis_state.WHAT)
    for mode in ("sync", "asyncio"):
        assert set(results["in_process"]["us_per_call"][mode]) == variants
        assert all(v > 0 for v in results["in_process"]["us_per_call"][mode].values())
        assert set(results["in_process"]["ratio_to_local"][mode]) == set(redis_state.BASE)
    assert set(results["loopback"]["median_us"]) == variants
    assert set(results["loopback"]["ratio_to_local"]) == set(redis_state.BASE)
    assert all(r > 0 for r in results["loopback"]["ratio_to_local"].values())
    assert "redis state cost per call" in out.getvalue()
