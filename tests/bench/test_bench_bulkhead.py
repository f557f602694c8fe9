"""The bulkhead benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import bulkhead


@pytest.mark.timeout(60)
def test_quick_run_reports_get_latency_alone_and_during_the_flood(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "bulkhead.json"
    results = bulkhead.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert not list(tmp_path.glob("*.tmp"))
    assert results["quick"] is True
    assert results["benchmark"] == "bulkhead"
    for key in ("cpu_count", "python", "grpcio", "date"):
        assert results["machine"][key], key

    assert set(results["servers"]) == {"plain", "bulkhead"}
    for name, runs in results["servers"].items():
        for run in ("alone", "flood"):
            figures = runs[run]
            assert figures["calls"] > 0, (name, run)
            for key in ("p50_us", "p99_us", "max_us"):
                assert figures[key] > 0, (name, run, key)
        assert sum(runs["dumps"].values()) > 0, name
    # The bulkhead's rejections reach the flood; the plain server has none to give.
    assert results["servers"]["bulkhead"]["dumps"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert "RESOURCE_EXHAUSTED" not in results["servers"]["plain"]["dumps"]
    assert set(results["judgement"]["p99_flood_vs_alone"]) == {"plain", "bulkhead"}
    assert "Get during a Dump flood" in out.getvalue()
