"""The benchmarks run end to end; their figures are measured, never asserted, and the
exit status of ``manage.py bench`` agrees with the targets it prints."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import aio_overhead
from resilience.management import CommandError, call_command
from tests.support.processes import ROOT, environment


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


def agrees(result: subprocess.CompletedProcess[str], results: dict[str, Any]) -> None:
    """A quick run's output and exit status say the same: it ran (exit 0), it enforced no
    target (no FAIL line), and it names exactly the targets it missed."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr
    missed = sorted(name for name, target in results["targets"].items() if not target["passed"])
    for name in results["targets"]:
        mark = "miss" if name in missed else "pass"
        assert re.search(rf"^{mark} {name}: ", result.stdout, re.M), (name, result.stdout)
    if missed:
        assert (f"quick run: {len(missed)} target(s) missed ({', '.join(missed)}), not "
                f"enforced") in result.stdout
    else:
        assert "target(s) missed" not in result.stdout


def quick(tmp_path: Path, *command: str) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, Any]]:
    """Run a benchmark ``--quick`` from the command line, as a person does; its figures
    come from the JSON it wrote."""
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, *command, "--quick", "--output", str(output)], cwd=ROOT,
        capture_output=True, text=True, timeout=90,
        env=environment(RESILIENCE_ENV="testing", COLUMNS="200"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob("*.tmp"))
    return result, json.loads(output.read_text(encoding="utf-8"))


@pytest.mark.timeout(100)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    result, results = quick(tmp_path, "manage.py", "bench", "chain_overhead")
    agrees(result, results)
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
    assert "chain overhead" in result.stdout


@pytest.mark.timeout(100)
def test_aio_quick_run_reports_every_figure(tmp_path: Path) -> None:
    result, results = quick(tmp_path, "-m", "benchmarks.aio_overhead")
    agrees(result, results)
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
    assert "aio chain overhead" in result.stdout


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


FAKE_BENCHMARK = """
def run(*, quick=False, stdout=None, output=None):
    targets = {"fast_enough": {"passed": True}, "small_enough": {"passed": %s}}
    for name, target in targets.items():
        mark = "pass" if target["passed"] else ("miss" if quick else "FAIL")
        print(f"{mark} {name}", file=stdout)
    return {"quick": quick, "targets": targets}
"""


def fake_project(tmp_path: Path, passed: bool) -> Path:
    """A project whose only benchmark, ``fake``, meets its targets or misses one."""
    project = tmp_path / "project"
    (project / "benchmarks").mkdir(parents=True)
    (project / "benchmarks" / "__init__.py").write_text("")
    (project / "benchmarks" / "fake.py").write_text(FAKE_BENCHMARK % passed)
    (project / "settings").mkdir()
    (project / "settings" / "settings.toml").write_text(
        "[default]\nINSTALLED_APPS = []\n[development]\n")
    shutil.copy(ROOT / "manage.py", project / "manage.py")
    return project


def bench(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "bench", "fake", *args], cwd=project,
                          capture_output=True, text=True, timeout=60, env=environment())


def test_a_full_run_that_misses_a_target_exits_1(tmp_path: Path) -> None:
    result = bench(fake_project(tmp_path, passed=False))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL small_enough" in result.stdout
    assert result.stderr == "1 target(s) failed: small_enough\n"


def test_a_quick_run_reports_its_misses_and_exits_0(tmp_path: Path) -> None:
    result = bench(fake_project(tmp_path, passed=False), "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "miss small_enough" in result.stdout
    assert result.stdout.endswith(
        "quick run: 1 target(s) missed (small_enough), not enforced: quick figures are "
        "rough; a full run enforces them\n")


@pytest.mark.parametrize("args", [[], ["--quick"]], ids=["full", "quick"])
def test_a_run_that_meets_its_targets_exits_0(tmp_path: Path, args: list[str]) -> None:
    result = bench(fake_project(tmp_path, passed=True), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "pass fast_enough\npass small_enough\n"
    assert result.stderr == ""
