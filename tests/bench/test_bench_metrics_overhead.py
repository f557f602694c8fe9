"""The metrics-overhead benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import metrics_overhead


@pytest.mark.timeout(60)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "metrics_overhead.json"
    results = metrics_overhead.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert results["quick"] is True and results["benchmark"] == "metrics_overhead"
    lat = results["latency"]
    assert set(lat["median_us"]) == set(metrics_overhead.CLIENTS)
    assert set(lat["round_ratio_median"]) == {"listed_off", "on"}
    assert all(v > 0 for v in lat["median_us"].values())
    assert set(results["in_process"]["ns_per_call"]) == set(metrics_overhead.CLIENTS)
    assert "metrics overhead" in out.getvalue()
