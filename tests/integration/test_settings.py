"""The shipped settings, environments, overrides and the files settings come from."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from resilience.conf.chains import ChainResolver
from resilience.conf.settings import load_settings
from resilience.management import call_command
from tests.support.processes import ROOT, manage

SHIPPED = ROOT / "settings" / "settings.toml"
GET = "cache.CacheService/Get"


def showchain(*args: str) -> str:
    """``showchain ARGS`` in this process (the environment as the test has set it)."""
    out, err = io.StringIO(), io.StringIO()
    assert call_command("showchain", *args, stdout=out, stderr=err) == 0, err.getvalue()
    return out.getvalue()


def chain_lines(output: str, side: str, method: str) -> list[str]:
    """The numbered lines of one chain in showchain's output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{side} {method} "))
    chain = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        chain.append(line.strip())
    return chain


def entry(chain: list[str], name: str) -> str:
    (line,) = [line for line in chain if line.split(" ")[1] == name]
    return line


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RESILIENCE_"):
            monkeypatch.delenv(key)


# Production refuses plaintext until TLS is configured in .secrets.toml: tests/test_tls_checks.py.
@pytest.mark.parametrize("env", ["development", "testing"])
def test_shipped_settings_pass_check(env: str) -> None:
    result = manage("check", RESILIENCE_ENV=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no errors, 0 warning(s) in environment '{env}'" in result.stdout
    assert "ERROR" not in result.stderr and "WARNING" not in result.stderr


def test_env_flag_selects_environment_too() -> None:
    result = manage("check", "--env", "testing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment 'testing'" in result.stdout


def test_production_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_ENV", "production")
    settings = load_settings(SHIPPED)
    assert settings.env == "production"
    assert settings.problems == []
    assert settings.LOG_FORMAT == "json"
    assert settings.SERVER_GRACE_PERIOD == 15.0
    assert settings.SERVER_MAX_WORKERS == 32
    # dynaconf_merge keeps [default]'s other client options next to the new Timeout.
    assert settings.CLIENT_OPTIONS["Timeout"]["seconds"] == 2.0
    assert settings.CLIENT_OPTIONS["Retry"]["max_attempts"] == 3
    development = load_settings(SHIPPED, "development")
    assert development.LOG_FORMAT == "console"
    assert development.CLIENT_OPTIONS["Timeout"]["seconds"] == 1.0


def test_production_showchain_uses_production_timeout() -> None:
    result = manage("showchain", "--side", "client", GET, RESILIENCE_ENV="production")
    assert result.returncode == 0, result.stdout + result.stderr
    chain = chain_lines(result.stdout, "client", GET)
    assert entry(chain, "Timeout").endswith("seconds=2.0")
    development = showchain("--settings", str(SHIPPED), "--side", "client", GET)
    assert entry(chain_lines(development, "client", GET), "Timeout").endswith("seconds=1.0")


def test_environment_variable_overrides_one_option() -> None:
    base = showchain("--settings", str(SHIPPED), "--side", "client", GET)
    over = manage("showchain", "--side", "client", GET,
                  RESILIENCE_CLIENT_OPTIONS__TIMEOUT__SECONDS="0.5")
    assert over.returncode == 0, over.stdout + over.stderr
    base_chain = chain_lines(base, "client", GET)
    over_chain = chain_lines(over.stdout, "client", GET)
    assert entry(base_chain, "Timeout").endswith("seconds=1.0")
    assert entry(over_chain, "Timeout").endswith("seconds=0.5")
    # Everything else, Retry's options included, is untouched by the override.
    assert "max_attempts=3" in entry(over_chain, "Retry")
    assert entry(over_chain, "Retry") == entry(base_chain, "Retry")
    assert entry(over_chain, "CircuitBreaker") == entry(base_chain, "CircuitBreaker")
    assert len(over_chain) == len(base_chain) == 5


def write_settings(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "settings.toml"
    path.write_text(body, encoding="utf-8")
    return path


OTHER = """
[default]
INSTALLED_APPS = ["apps.cache"]
CLIENT_TARGET = "127.0.0.1:7777"
CLIENT_MIDDLEWARE = ["resilience.middleware.Timeout"]

[default.CLIENT_OPTIONS.Timeout]
seconds = 7.5

[development]
LOG_LEVEL = "DEBUG"

[qa]
LOG_LEVEL = "ERROR"
"""


def test_settings_flag_points_at_another_file(tmp_path: Path) -> None:
    path = write_settings(tmp_path / "settings", OTHER)
    result = manage("showchain", "--settings", str(path), "--side", "client", GET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert chain_lines(result.stdout, "client", GET) == [
        "1. Timeout (resilience.middleware.Timeout) seconds=7.5"
    ]
    check = manage("check", "--settings", str(path), "--env", "qa")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"environment 'qa' ({path})" in check.stdout


def test_settings_variable_points_at_another_file(tmp_path: Path) -> None:
    path = write_settings(tmp_path / "settings", OTHER)
    result = manage("showchain", "--side", "client", GET, RESILIENCE_SETTINGS=str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert entry(chain_lines(result.stdout, "client", GET), "Timeout").endswith("seconds=7.5")
    check = manage("check", RESILIENCE_SETTINGS=str(path), RESILIENCE_ENV="qa")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"environment 'qa' ({path})" in check.stdout



def test_settings_flag_wins_over_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_settings(tmp_path / "settings", OTHER)
    monkeypatch.setenv("RESILIENCE_SETTINGS", str(path))
    assert "seconds=7.5" in showchain("--side", "client", GET)
    assert "seconds=7.5" not in showchain("--settings", str(SHIPPED), "--side", "client", GET)


def test_load_settings_reads_file_from_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_settings(tmp_path / "settings", OTHER)
    monkeypatch.setenv("RESILIENCE_SETTINGS", str(path))
    settings = load_settings()
    assert settings.path == path
    assert settings.CLIENT_TARGET == "127.0.0.1:7777"
    assert settings.LOG_LEVEL == "DEBUG"
    assert load_settings(env="qa").LOG_LEVEL == "ERROR"


def test_secrets_file_next_to_settings_is_read(tmp_path: Path) -> None:
    directory = tmp_path / "settings"
    path = write_settings(directory, OTHER)
    assert load_settings(path).CLIENT_TARGET == "127.0.0.1:7777"
    (directory / ".secrets.toml").write_text(
        '[default]\nCACHE_API_TOKEN = "s3cret"\n\n'
        '[development]\nCLIENT_TARGET = "127.0.0.1:9999"\n',
        encoding="utf-8",
    )
    settings = load_settings(path)
    assert settings.get("CACHE_API_TOKEN") == "s3cret"
    assert settings.CLIENT_TARGET == "127.0.0.1:9999"
    assert settings.LOG_LEVEL == "DEBUG"
    # An app-prefixed secret is no unknown-setting warning, and the file still checks clean.
    result = manage("check", "--settings", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 warning(s)" in result.stdout


PER_METHOD = """
[default]
INSTALLED_APPS = ["apps.cache"]
CLIENT_MIDDLEWARE = ["resilience.middleware.Retry", "resilience.middleware.Timeout"]

[default.CLIENT_OPTIONS.Retry]
max_attempts = 2
initial_backoff = 0.1

[default.CLIENT_OPTIONS.Timeout]
seconds = 1.0

[default.CLIENT_METHOD_OPTIONS."cache.CacheService".Retry]
max_attempts = 4

[default.CLIENT_METHOD_OPTIONS."cache.CacheService".Timeout]
seconds = 3.0

[default.CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timeout]
seconds = 4.0

[default.CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Retry]
initial_backoff = 0.2

[development]
"""


def test_per_method_options_most_specific_wins(tmp_path: Path) -> None:
    path = write_settings(tmp_path / "settings", PER_METHOD)
    resolver = ChainResolver(load_settings(path))
    get = {spec.name: spec.options for spec in resolver.resolve("client", GET)}
    store = {spec.name: spec.options for spec in resolver.resolve("client",
                                                                   "cache.CacheService/Store")}
    assert resolver.problems == []
    # Method key beats service key beats CLIENT_OPTIONS, option by option.
    assert get["Timeout"].seconds == 4.0
    assert get["Retry"].max_attempts == 4
    assert get["Retry"].initial_backoff == 0.2
    assert store["Timeout"].seconds == 3.0
    assert store["Retry"].max_attempts == 4
    assert store["Retry"].initial_backoff == 0.1
    # Options no table sets keep the middleware's defaults.
    assert get["Retry"].max_backoff == 1.0

    result = manage("showchain", "--settings", str(path), "--side", "client")
    assert result.returncode == 0, result.stdout + result.stderr
    get_chain = chain_lines(result.stdout, "client", GET)
    assert entry(get_chain, "Timeout").endswith("seconds=4.0")
    assert "max_attempts=4" in entry(get_chain, "Retry")
    assert "initial_backoff=0.2" in entry(get_chain, "Retry")
    dump_chain = chain_lines(result.stdout, "client", "cache.CacheService/Dump")
    assert entry(dump_chain, "Timeout").endswith("seconds=3.0")
    assert "initial_backoff=0.1" in entry(dump_chain, "Retry")


def test_shipped_per_method_table_gives_dump_longer() -> None:
    resolver = ChainResolver(load_settings(SHIPPED, "development"))
    dump = {s.name: s.options for s in resolver.resolve("client", "cache.CacheService/Dump")}
    get = {s.name: s.options for s in resolver.resolve("client", GET)}
    store = [s.name for s in resolver.resolve("client", "cache.CacheService/Store")]
    assert dump["Timeout"].seconds == 10.0
    assert get["Timeout"].seconds == 1.0
    assert store == ["Metrics", "RequestContext", "Timeout"]
