"""The hedging benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import hedging


@pytest.mark.timeout(60)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "hedging.json"
    results = hedging.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert results["quick"] is True
    assert results["hedging_delay_ms"] > 0
    for key in ("without_hedging", "hedging_never_fires", "with_hedging"):
        figures = results[key]
        for name in ("p50_ms", "p95_ms", "p99_ms", "p99_over_p50", "attempts_per_call"):
            assert figures[name] > 0, (key, name)
        assert figures["errors"] == 0
        assert figures["server"]["attempts"] >= figures["calls"]
    assert results["without_hedging"]["hedges_sent"] == 0
    assert results["hedging_never_fires"]["hedges_sent"] == 0
    assert isinstance(results["targets"]["p99_over_p50_with_hedging"]["passed"], bool)
    assert "hedging" in out.getvalue()
