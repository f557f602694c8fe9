"""Acceptance: during ``runclient load``, the client's /metrics endpoint counts exactly
what the load's own summary reports: calls, and errors by code.

The load runs as a real ``manage.py`` process (sync and ``--asyncio``) against an
in-process server; ``--metrics-hold`` keeps the endpoint up after the summary so that the
test scrapes after the last call.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import processes
from tests.support.scripted import ScriptedServicer
from tests.support.servers import make_settings, running_server

pytestmark = pytest.mark.timeout(60)

SETTINGS = """
[default]
INSTALLED_APPS = ["apps.cache"]
METRICS_CLIENT_ADDRESS = "127.0.0.1:0"
CLIENT_MIDDLEWARE = ["resilience.middleware.Metrics", "resilience.middleware.FaultInjection"]
[default.CLIENT_METHOD_MIDDLEWARE]
"cache.CacheService/Store" = []
[default.CLIENT_OPTIONS.FaultInjection]
abort_fraction = 0.2
abort_code = "UNAVAILABLE"
seed = 7
[testing]
LOG_LEVEL = "WARNING"
"""
ROW = re.compile(r"^│\s*(calls|errors [A-Z_]+(?: \(local\))?)\s*│\s*(\d+)\s*│$")
HELD = re.compile(r"^metrics held at (http://\S+) for")


def scrape(url: str) -> Counter[str]:
    """grpc_client_handled_total of Get on the endpoint, by code."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "grpc_client_handled_total"
                    and sample.labels["grpc_method"] == "Get"):
                counts[sample.labels["grpc_code"]] += int(sample.value)
    return counts


@pytest.mark.parametrize("mode", [[], ["--asyncio"]], ids=["sync", "asyncio"])
def test_scraped_counts_match_the_load_summary(tmp_path: Path, mode: list[str]) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(SETTINGS, encoding="utf-8")
    # The server answers some Gets NOT_FOUND, so the summary has a remote error code too.
    server_settings = make_settings(
        SERVER_MIDDLEWARE=["resilience.middleware.FaultInjection"],
        SERVER_OPTIONS={"FaultInjection": {
            "abort_fraction": 0.2, "abort_code": "NOT_FOUND", "seed": 3,
            "methods": ["cache.CacheService/Get"],
        }},
    )
    with running_server(server_settings, ScriptedServicer()) as server:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runclient", "--target", server.address, *mode,
             "load", "--rate", "300", "--duration", "1", "--concurrency", "4",
             "--metrics-hold", "20"],
            cwd=processes.ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=processes.environment(RESILIENCE_SETTINGS=str(settings_file),
                                      RESILIENCE_ENV="testing"),
        )
        try:
            summary: dict[str, int] = {}
            url = None
            assert proc.stdout is not None
            for line in proc.stdout:  # ends when the process does: bounded by the hold
                line = line.rstrip("\n")
                if match := ROW.match(line):
                    summary[match.group(1)] = int(match.group(2))
                elif match := HELD.match(line):
                    url = match.group(1)
                    break
            assert url is not None, proc.stderr.read() if proc.stderr else ""
            scraped = scrape(url)
        finally:
            proc.kill()
            proc.communicate()
    errors = {k.removeprefix("errors ").removesuffix(" (local)"): v
              for k, v in summary.items() if k.startswith("errors ")}
    assert summary["calls"] == 300
    assert set(errors) == {"UNAVAILABLE", "NOT_FOUND"}, summary
    assert sum(scraped.values()) == summary["calls"]
    assert {code: n for code, n in scraped.items() if code != "OK"} == errors
    assert scraped["OK"] == summary["calls"] - sum(errors.values())
