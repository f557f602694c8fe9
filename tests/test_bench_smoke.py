"""The benchmarks run end to end; their figures are measured, never asserted."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import aio_overhead, chain_overhead
from resilience.management import CommandError, call_command

ROOT = Path(__file__).resolve().parents[1]


def positive(values: dict[str, float], names: set[str]) -> None:
    assert set(values) == names, values
    for name, value in values.items():
        assert isinstance(value, int | float) and value > 0, (name, value)


def chain_vs_bare(case: dict[str, Any]) -> None:
    """A case measured like latency by the bare client and the chain."""
    for key in ("median_us", "p90_us", "p99_us", "client_cpu_us_per_call"):
        positive(case[key], {"bare", "chain"})
    positive(case["ratio"], {"chain"})
    positive(case["round_ratio_median"], {"chain"})


@pytest.mark.timeout(60)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "chain_overhead.json"
    results = chain_overhead.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert not list(tmp_path.glob("*.tmp"))
    assert results["quick"] is True
    for key in ("cpu_count", "python", "grpcio", "date"):
        assert results["machine"][key], key

    latency = results["latency"]
    clients = {"bare", "bare_timeout", "chain", "tenacity"}
    for key in ("median_us", "p90_us", "p99_us", "client_cpu_us_per_call"):
        positive(latency[key], clients)
    positive(latency["ratio"], clients - {"bare"})
    positive(latency["round_ratio_median"], clients - {"bare"})

    stream = results["stream"]
    assert (stream["method"], stream["items"]) == ("cache.CacheService/Dump", 5)
    chain_vs_bare(stream)
    chain_vs_bare(results["future"])

    in_process = results["in_process"]["ns_per_call"]
    positive(in_process, {"bare_call", "chain", "chain_stub", "tenacity", "pybreaker_call"})

    throughput = results["throughput"]
    clients = {"bare", "bare_timeout", "chain", "tenacity", "pybreaker_call"}
    positive(throughput["calls_per_s"], clients)
    positive(throughput["ratio"], clients - {"bare"})
    positive(throughput["round_ratio_median"], clients - {"bare"})
    assert throughput["errors"] == dict.fromkeys(clients, 0)

    assert set(results["targets"]) == {
        "latency_ratio", "throughput_ratio", "cheaper_than_tenacity",
        "latency_ratio_vs_bare_with_deadline", "throughput_ratio_vs_bare_with_deadline",
    }
    for target in results["targets"].values():
        assert isinstance(target["passed"], bool)
    assert "chain overhead" in out.getvalue()


@pytest.mark.timeout(60)
def test_aio_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "aio_overhead.json"
    results = aio_overhead.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert not list(tmp_path.glob("*.tmp"))
    assert results["quick"] is True
    assert results["benchmark"] == "aio_overhead"
    assert "AioServer" in results["server"]
    for key in ("cpu_count", "python", "grpcio", "date"):
        assert results["machine"][key], key

    latency = results["latency"]
    clients = {"bare", "bare_timeout", "chain", "sync_bare", "sync_chain"}
    for key in ("median_us", "p90_us", "p99_us", "client_cpu_us_per_call"):
        positive(latency[key], clients)
    positive(latency["ratio"], clients - {"bare"})
    positive(latency["round_ratio_median"], clients - {"bare"})
    positive(latency["aio_vs_sync"], {"bare", "chain"})
    stream = results["stream"]
    assert (stream["method"], stream["items"]) == ("cache.CacheService/Dump", 5)
    chain_vs_bare(stream)

    in_process = results["in_process"]["ns_per_call"]
    positive(in_process, {"bare_await", "chain", "chain_stub"})

    throughput = results["throughput"]
    assert throughput["tasks"] == 64
    clients = {"bare", "bare_timeout", "chain"}
    positive(throughput["calls_per_s"], clients)
    positive(throughput["client_cpu_us_per_call"], clients)
    positive(throughput["ratio"], clients - {"bare"})
    positive(throughput["round_ratio_median"], clients - {"bare"})
    assert throughput["errors"] == dict.fromkeys(clients, 0)

    assert set(results["targets"]) == {
        "latency_ratio", "throughput_ratio",
        "latency_ratio_vs_bare_with_deadline", "throughput_ratio_vs_bare_with_deadline",
    }
    for target in results["targets"].values():
        assert isinstance(target["passed"], bool)
    assert "aio chain overhead" in out.getvalue()


def test_aio_quick_run_without_output_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results_file = tmp_path / "results" / "aio_overhead.json"
    monkeypatch.setattr(aio_overhead, "RESULTS", results_file)
    monkeypatch.setattr(aio_overhead, "QUICK", dataclasses.replace(
        aio_overhead.QUICK, latency_rounds=1, latency_calls=5, warmup_calls=5,
        inproc_number=100, inproc_repeat=1, throughput_seconds=0.05,
    ))
    results = aio_overhead.run(quick=True, stdout=io.StringIO())
    assert "output" not in results
    assert not results_file.exists()


@pytest.fixture
def settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESILIENCE_ENV", raising=False)
    monkeypatch.setenv("RESILIENCE_SETTINGS", str(ROOT / "settings" / "settings.toml"))


@pytest.mark.usefixtures("settings_file")
def test_bench_lists_benchmarks() -> None:
    out = io.StringIO()
    assert call_command("bench", "--env", "testing", stdout=out, stderr=io.StringIO()) == 0
    assert "chain_overhead" in out.getvalue()
    assert "aio_overhead" in out.getvalue()


@pytest.mark.usefixtures("settings_file")
def test_bench_unknown_name() -> None:
    with pytest.raises(CommandError, match="unknown benchmark 'nope'; available: ") as info:
        call_command("bench", "nope", "--env", "testing", stdout=io.StringIO(),
                     stderr=io.StringIO())
    listed = str(info.value).split("available: ", 1)[1].split(", ")
    assert listed == sorted(listed)
    assert {"aio_overhead", "chain_overhead"} <= set(listed)


@pytest.mark.usefixtures("settings_file")
def test_bench_without_benchmarks_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # makes the import fail
    with pytest.raises(CommandError, match="no 'benchmarks' package"):
        call_command("bench", "--env", "testing", stdout=io.StringIO(), stderr=io.StringIO())
