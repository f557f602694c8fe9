"""The rate-limit benchmark runs end to end; its figures are measured, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import rate_limit


@pytest.mark.timeout(60)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "rate_limit.json"
    results = rate_limit.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert results["quick"] is True
    assert results["benchmark"] == "rate_limit"
    for key in ("cpu_count", "python", "grpcio", "date"):
        assert results["machine"][key], key

    runs = results["accuracy"]
    assert [(r["server"], r["rate"], r["burst"]) for r in runs] == [
        (kind, rate, burst) for kind in rate_limit.QUICK.servers
        for rate, burst in rate_limit.QUICK.limits
    ]
    for r in runs:
        assert r["accepted"] > 0
        assert r["expected"] == r["rate"] * r["seconds"] + r["burst"]
        assert r["offered_per_s"] > 0
        assert r["other_errors"] == 0
        assert r["rejected_without_pushback"] == 0
        if r["rejected"]:
            assert r["pushback_ms"]["min"] >= 1

    ns = results["in_process"]["ns_per_call"]
    assert set(ns) == {"bare_call", "admitted", "admitted_per_tenant", "bare_raise",
                       "rejected", "aio_bare_await", "aio_admitted"}
    assert all(value > 0 for value in ns.values())
    assert set(results["targets"]) == {"accuracy", "load_above_rate"}
    for target in results["targets"].values():
        assert isinstance(target["passed"], bool)
    assert "rate limit accuracy" in out.getvalue()


def test_quick_run_without_output_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results_file = tmp_path / "results" / "rate_limit.json"
    monkeypatch.setattr(rate_limit, "RESULTS", results_file)
    monkeypatch.setattr(rate_limit, "QUICK", rate_limit.Plan(
        limits=((100.0, 5),), seconds=0.2, threads=2, servers=("sync",),
        inproc_number=100, inproc_repeat=1,
    ))
    results = rate_limit.run(quick=True, stdout=io.StringIO())
    assert "output" not in results
    assert not results_file.exists()
