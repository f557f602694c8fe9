"""manage.py: command discovery, help, showchain's output and unknown commands."""

from __future__ import annotations

import asyncio
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from apps.cache.protos import cache_pb2_grpc
from resilience.conf.settings import Settings, load_settings
from resilience.management import CommandError, call_command
from resilience.transport.aio_client import aio_connect
from resilience.transport.client import connect
from tests.support.processes import ROOT, manage

# The commands this project must have; apps and the framework may add more.
COMMANDS = ["check", "genproto", "runclient", "runserver", "showchain"]
GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
DUMP = "cache.CacheService/Dump"
SERVER_STACK = ["Metrics", "RequestContext", "RequestLogging", "ConcurrencyLimit"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RESILIENCE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RESILIENCE_SETTINGS", str(ROOT / "settings" / "settings.toml"))


def showchain(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert call_command("showchain", *args, stdout=out, stderr=err) == 0, err.getvalue()
    return out.getvalue()


def chains(output: str) -> dict[tuple[str, str], list[str]]:
    """{(side, method): [middleware names, in printed order]} from showchain's output."""
    result: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(("client ", "server ")):
            side, method = line.split()[:2]
            assert (side, method) not in result, output
            current = result[(side, method)] = []
        elif line.startswith("  ") and current is not None:
            number, name = line.split()[:2]
            assert number == f"{len(current) + 1}.", output
            current.append(name)
    return result


@pytest.mark.parametrize("args", [["--help"], ["help"], []], ids=str)
def test_help_lists_every_command(args: list[str]) -> None:
    result = manage(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: manage.py COMMAND")
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert set(COMMANDS) <= set(listed), result.stdout
    assert listed == sorted(listed), result.stdout
    assert "Traceback" not in result.stderr


def test_every_command_has_help() -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(COMMANDS, pool.map(lambda c: manage(c, "--help"), COMMANDS),
                           strict=True))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout.startswith(f"usage: manage.py {name}"), (name, result.stdout)
        assert "--settings" in result.stdout and "--env" in result.stdout, name
    assert "{get,store,dump,load}" in results["runclient"].stdout
    assert "--side" in results["showchain"].stdout


def test_unknown_command() -> None:
    result = manage("nosuchcommand")
    assert result.returncode not in (0, None)
    assert "Traceback" not in result.stdout + result.stderr
    assert "unknown command 'nosuchcommand'" in result.stderr
    available = result.stderr.split("available: ", 1)[1].strip().split(", ")
    assert set(COMMANDS) <= set(available), result.stderr
    with pytest.raises(CommandError,
                       match=r"available: .*check, gendocs, genproto, runclient") as info:
        call_command("nosuchcommand", stdout=io.StringIO(), stderr=io.StringIO())
    assert info.value.returncode == 2


def test_check_in_process() -> None:
    out = io.StringIO()
    assert call_command("check", "--env", "testing", stdout=out, stderr=io.StringIO()) == 0
    assert "no errors" in out.getvalue() and "'testing'" in out.getvalue()


def test_showchain_prints_every_chain_outermost_first() -> None:
    found = chains(showchain())
    assert set(found) == {(side, m) for side in ("client", "server") for m in (GET, STORE, DUMP)}
    client = ["Metrics", "RequestContext", "Retry", "Timeout", "CircuitBreaker"]
    assert found[("client", GET)] == client
    assert found[("client", DUMP)] == client
    assert found[("client", STORE)] == ["Metrics", "RequestContext", "Timeout"]
    for method in (GET, STORE, DUMP):
        assert found[("server", method)] == SERVER_STACK


def test_showchain_names_the_setting_and_options() -> None:
    output = showchain("--side", "client")
    lines = output.splitlines()
    assert f"client {GET}  (from CLIENT_MIDDLEWARE)" in lines
    assert f'client {STORE}  (from CLIENT_METHOD_MIDDLEWARE."{STORE}")' in lines
    get = lines.index(f"client {GET}  (from CLIENT_MIDDLEWARE)")
    assert lines[get + 1].startswith("  1. Metrics (resilience.middleware.Metrics)")
    assert lines[get + 2].startswith("  2. RequestContext (resilience.middleware.RequestContext)")
    assert lines[get + 3].startswith("  3. Retry (resilience.middleware.Retry) max_attempts=3,")
    assert "retryable_codes=[UNAVAILABLE]" in lines[get + 3]
    assert lines[get + 4] == "  4. Timeout (resilience.middleware.Timeout) seconds=1.0"
    assert lines[get + 5].startswith("  5. CircuitBreaker (resilience.middleware.CircuitBreaker)")
    store = lines.index(f'client {STORE}  (from CLIENT_METHOD_MIDDLEWARE."{STORE}")')
    assert lines[store + 3] == "  3. Timeout (resilience.middleware.Timeout) seconds=1.0"
    assert lines[store + 4] == ""


def test_showchain_side_filter() -> None:
    client = chains(showchain("--side", "client"))
    server = chains(showchain("--side", "server"))
    assert {side for side, _ in client} == {"client"} and len(client) == 3
    assert {side for side, _ in server} == {"server"} and len(server) == 3


def test_showchain_method_filter() -> None:
    assert chains(showchain(STORE)) == {
        ("client", STORE): ["Metrics", "RequestContext", "Timeout"],
        ("server", STORE): SERVER_STACK,
    }
    assert chains(showchain("--side", "client", GET)) == {
        ("client", GET): ["Metrics", "RequestContext", "Retry", "Timeout", "CircuitBreaker"],
    }


def test_showchain_unknown_method() -> None:
    message = "no installed app serves 'cache.CacheService/Gett'"
    with pytest.raises(CommandError, match=re.escape(message)):
        showchain("cache.CacheService/Gett")
    result = manage("showchain", "cache.CacheService/Gett")
    assert result.returncode == 1
    assert "known methods: cache.CacheService/Dump, cache.CacheService/Get" in result.stderr
    assert "Traceback" not in result.stderr


def test_showchain_bad_side_is_a_usage_error() -> None:
    result = manage("showchain", "--side", "middle")
    assert result.returncode == 2
    assert "invalid choice: 'middle'" in result.stderr
    assert "Traceback" not in result.stderr


def chain_lines(output: str, side: str, method: str) -> dict[str, str]:
    """{middleware name: the rest of its line} of one chain in showchain's output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{side} {method} "))
    found = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        _, name, rest = line.split(maxsplit=2)
        found[name] = rest
    return found


def settings_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(f'[default]\nINSTALLED_APPS = ["apps.cache"]\n{body}\n[development]\n',
                    encoding="utf-8")
    return str(path)


def test_showchain_shows_metrics_while_metrics_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for side, method in [("client", GET), ("server", STORE)]:
        line = chain_lines(showchain(), side, method)["Metrics"]
        assert line == "(resilience.middleware.Metrics) histogram=True", line
    monkeypatch.setenv("RESILIENCE_METRICS_ENABLED", "false")
    line = chain_lines(showchain(), "client", GET)["Metrics"]
    assert line.endswith("(left out of this chain: METRICS_ENABLED is false)"), line


def test_showchain_says_why_a_middleware_left_a_chain(tmp_path: Path) -> None:
    settings = settings_file(tmp_path, f"""
CLIENT_MIDDLEWARE = ["resilience.middleware.Retry", "resilience.middleware.FaultInjection"]
[default.CLIENT_OPTIONS.FaultInjection]
abort_fraction = 0.5
methods = ["{GET}"]
""")
    output = showchain("--settings", settings, "--side", "client")
    store = chain_lines(output, "client", STORE)
    assert store["Retry"].endswith(
        f"(left out of this chain: {STORE} is not marked idempotent)"), store
    assert store["FaultInjection"].endswith(
        f"(left out of this chain: option 'methods' does not list {STORE})"), store
    get = chain_lines(output, "client", GET)
    assert get["Retry"].startswith("(resilience.middleware.Retry) max_attempts=3"), get
    assert "abort_fraction=0.5" in get["FaultInjection"], get


def test_showchain_masks_declared_secrets_only(tmp_path: Path) -> None:
    secret = "never-print-me-0123456789"
    settings = settings_file(tmp_path, f"""
SERVER_MIDDLEWARE = ["resilience.middleware.TokenAuth"]
CLIENT_MIDDLEWARE = ["resilience.middleware.BearerToken", "resilience.middleware.Retry"]
[default.SERVER_OPTIONS.TokenAuth]
tokens = {{ reports = "{secret}" }}
[default.CLIENT_OPTIONS.BearerToken]
token = "{secret}"
""")
    output = showchain("--settings", settings)
    assert secret not in output
    client = chain_lines(output, "client", GET)
    assert client["BearerToken"] == "(resilience.middleware.BearerToken) token='********'"
    # Options whose names merely contain "token" are figures, not secrets.
    assert "budget_max_tokens=10, budget_token_ratio=0.1" in client["Retry"], client
    server = chain_lines(output, "server", GET)
    assert "tokens={'reports': '********'}" in server["TokenAuth"], server


def built_chains(settings: Settings) -> dict[str, list[str]]:
    """{method: the classes in its chain} as a real channel builds them for a stub."""

    def names(channel: Any) -> dict[str, list[str]]:
        cache_pb2_grpc.CacheServiceStub(channel)
        return {method: [type(m).__name__ for m in chain]
                for method, chain in channel.middleware.items()}

    if not settings.ASYNCIO:
        with connect("127.0.0.1:1", settings) as channel:
            return names(channel)

    async def built() -> dict[str, list[str]]:
        async with aio_connect("127.0.0.1:1", settings) as channel:
            return names(channel)

    return asyncio.run(built())


@pytest.mark.parametrize("env", [{}, {"RESILIENCE_METRICS_ENABLED": "false"},
                                 {"RESILIENCE_ASYNCIO": "true"}], ids=str)
def test_showchain_shows_the_chains_a_channel_builds(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    output = showchain("--side", "client")
    built = built_chains(load_settings())
    assert set(built) == {GET, STORE, DUMP}
    for method, chain in built.items():
        shown = chain_lines(output, "client", method)
        taking_part = [name for name, rest in shown.items() if "(left out of" not in rest]
        assert taking_part == chain, (method, output)
