"""The overload benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import overload


@pytest.mark.timeout(90)
def test_quick_run_reports_goodput_latency_and_the_limit_per_config(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "overload.json"
    results = overload.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert not list(tmp_path.glob("*.tmp"))
    assert results["quick"] is True
    assert results["benchmark"] == "overload"
    base = results["baseline"]
    for key in ("capacity_per_s", "unloaded_p50_ms", "unloaded_p99_ms", "tuned_limit"):
        assert base[key] > 0, key

    assert set(results["configs"]) == set(overload.QUICK.configs)
    for config, cells in results["configs"].items():
        assert set(cells) == {f"{load:g}x" for load in overload.QUICK.loads}, config
        for load, cell in cells.items():
            assert cell["offered_per_s"] > 0, (config, load)
            assert cell["goodput_per_s"] >= 0, (config, load)
            assert 0 <= cell["rejected_rate"] <= 1, (config, load)
            assert 0 <= cell["deadline_rate"] <= 1, (config, load)
            # The unlimited server has no limit to sample; the adaptive one has.
            assert (cell["limit"] is None) == (config == "none"), (config, load)
    assert results["best_adaptive"] == "gradient2"
    (step,) = results["steps"].values()
    assert step["algorithm"] == "gradient2"
    assert step["limit_series"] and all(limit > 0 for _, limit, _ in step["limit_series"])
    assert {"best_adaptive_goodput", "best_adaptive_p99", "no_limit_goodput_lost",
            "limit_recovery_s_gradient2"} <= set(results["targets"])
    assert sorted(results["plots"]) == sorted(
        f"overload-{name}.png" for name in ("goodput", "p99", "limit-step"))
    for name in results["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "Get under overload" in out.getvalue()
