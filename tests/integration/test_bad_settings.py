"""Each configuration mistake is named, with its setting, environment, value and the fix.

Every case is a minimal settings file run through ``manage.py check`` in a real process:
the exit status is an error, there is no traceback, and the message points at the mistake.
"""

from __future__ import annotations

import dataclasses
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.processes import manage


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    body: str  # the settings between [default] and [development]
    setting: str  # how the message names the setting
    value: str  # the offending value as the message shows it
    expected: str  # what the message says was expected
    code: str  # the check id


DEV = "(environment 'development')"

CASES = [
    Case("middleware-not-a-list", 'SERVER_MIDDLEWARE = "not-a-list"',
         "SERVER_MIDDLEWARE", "'not-a-list'", "expected a list of strings", "E001"),
    Case("negative-timeout", "[default.CLIENT_OPTIONS.Timeout]\nseconds = -1",
         "CLIENT_OPTIONS.Timeout", "'seconds' is -1", "expected a value > 0", "E005"),
    Case("zero-attempts", "[default.CLIENT_OPTIONS.Retry]\nmax_attempts = 0",
         "CLIENT_OPTIONS.Retry", "'max_attempts' is 0", "expected a value >= 1", "E005"),
    Case("attempts-not-a-number", '[default.CLIENT_OPTIONS.Retry]\nmax_attempts = "three"',
         "CLIENT_OPTIONS.Retry", "'max_attempts' is 'three'", "expected a whole number", "E005"),
    Case("unknown-option", "[default.CLIENT_OPTIONS.Retry]\nmax_attemps = 3",
         "CLIENT_OPTIONS.Retry", "unknown option 'max_attemps'",
         "valid options: backoff, budget, budget_max_tokens, budget_token_ratio, "
         "initial_backoff, jitter, max_attempts, max_backoff", "E005"),
    Case("middleware-typo", 'CLIENT_MIDDLEWARE = ["resilience.middleware.Retyr"]',
         "CLIENT_MIDDLEWARE", "'resilience.middleware.Retyr'",
         "module 'resilience.middleware' defines no 'Retyr'", "E002"),
    Case("middleware-module-missing", 'CLIENT_MIDDLEWARE = ["nosuch.module.Thing"]',
         "CLIENT_MIDDLEWARE", "'nosuch.module.Thing'", "no module named 'nosuch'", "E002"),
    Case("not-a-middleware", 'CLIENT_MIDDLEWARE = ["os.path.join"]',
         "CLIENT_MIDDLEWARE", "'os.path.join'",
         "expected a subclass of resilience.Middleware", "E003"),
    Case("client-middleware-on-server", 'SERVER_MIDDLEWARE = ["resilience.middleware.Retry"]',
         "SERVER_MIDDLEWARE", "'resilience.middleware.Retry'",
         "is a client middleware and cannot run on the server", "E004"),
    Case("middleware-listed-twice",
         'CLIENT_MIDDLEWARE = ["resilience.middleware.Timeout", "resilience.middleware.Timeout"]',
         "CLIENT_MIDDLEWARE", "'resilience.middleware.Timeout'", "list each middleware once",
         "E006"),
    Case("log-format", 'LOG_FORMAT = "xml"',
         "LOG_FORMAT", "'xml'", "expected one of 'console', 'json'", "E001"),
    Case("log-level", 'LOG_LEVEL = "LOUD"',
         "LOG_LEVEL", "'LOUD'", "expected one of 'DEBUG', 'INFO'", "E001"),
    Case("workers-zero", "SERVER_MAX_WORKERS = 0",
         "SERVER_MAX_WORKERS", "is 0", "expected a value >= 1", "E001"),
    Case("status-code-typo", '[default.CLIENT_OPTIONS.Retry]\nretryable_codes = ["UNAVALABLE"]',
         "CLIENT_OPTIONS.Retry", "['UNAVALABLE']",
         "expected a list of status code names such as ['UNAVAILABLE']", "E005"),
    Case("breaker-counts-not-found",
         '[default.CLIENT_OPTIONS.CircuitBreaker]\nfailure_codes = ["UNAVAILABLE", "NOT_FOUND"]',
         "CLIENT_OPTIONS.CircuitBreaker", "'failure_codes' includes NOT_FOUND", "remove them",
         "E005"),
    Case("fallback-missing",
         '[default.CLIENT_OPTIONS.CircuitBreaker]\nfallback = "apps.cache.fallbacks.nosuch"',
         "CLIENT_OPTIONS.CircuitBreaker", "'apps.cache.fallbacks.nosuch'",
         "expected the dotted path of a function", "E005"),
    Case("method-key-unknown",
         '[default.CLIENT_METHOD_MIDDLEWARE]\n'
         '"cache.CacheService/Gett" = ["resilience.middleware.Timeout"]',
         "CLIENT_METHOD_MIDDLEWARE", "'cache.CacheService/Gett'",
         "known methods: cache.CacheService/Dump, cache.CacheService/Get", "E008"),
    # The entry is named, not the table quoted whole: option tables may hold secrets.
    Case("options-not-a-table", "[default.CLIENT_OPTIONS]\nTimeout = 5",
         "CLIENT_OPTIONS", "entry 'Timeout' is a whole number",
         "expected a table (CLIENT_OPTIONS is a table of tables)", "E001"),
    Case("max-backoff-below-initial",
         "[default.CLIENT_OPTIONS.Retry]\ninitial_backoff = 2.0\nmax_backoff = 0.5",
         "CLIENT_OPTIONS.Retry", "max_backoff 0.5 is below initial_backoff 2.0",
         "raise max_backoff", "E005"),
    Case("app-missing", 'INSTALLED_APPS = ["apps.nosuchapp"]',
         "INSTALLED_APPS", "'apps.nosuchapp'", "a package with an apps.py", "E007"),
    # App settings are checked by the app, under the app's own check ids.
    Case("cache-limit-negative", "CACHE_MAX_VALUE_BYTES = -1",
         "CACHE_MAX_VALUE_BYTES", "is -1", "expected a whole number > 0", "cache.E001"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def bad_file(tmp_path: Path, body: str) -> Path:
    """A settings file with ``body`` in [default] and, unless it says otherwise, the cache
    app installed."""
    apps = "" if "INSTALLED_APPS" in body else 'INSTALLED_APPS = ["apps.cache"]\n'
    return write(tmp_path, f"[default]\n{apps}{body}\n\n[development]\n")


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    return output


def test_cases_are_distinct() -> None:
    assert len(CASES) >= 12
    assert len({c.id for c in CASES}) == len({c.body for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def check_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``manage.py check`` of every case, run a few processes at a time to save time."""
    paths = {case.id: bad_file(tmp_path_factory.mktemp(case.id), case.body) for case in CASES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {id: pool.submit(manage, "check", "--settings", str(path))
                   for id, path in paths.items()}
        return {id: future.result() for id, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_check_names_the_mistake(
    case: Case, check_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = check_results[case.id]
    output = assert_clean_failure(result)
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1, output
    (line,) = errors
    code = case.code if "." in case.code else f"resilience.{case.code}"
    assert line.startswith(f"ERROR {code} {case.setting} {DEV}: "), output
    # The value and what was expected may sit in the message or its hint line.
    message = result.stderr.split(line, 1)[1].split("\nERROR", 1)[0].split("\nWARNING", 1)[0]
    message = line + message
    assert case.value in message, output
    assert case.expected in message, output
    assert "HINT: " in message, output
    # One mistake, one message: no follow-on warnings such as "options for an unlisted
    # middleware" when the middleware is listed but its options are bad.
    assert "check found 1 error(s) and 0 warning(s) in environment 'development'" in (
        result.stderr), output


def test_unknown_environment(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 'LOG_FORMAT = "json"')
    result = manage("check", "--settings", str(path), RESILIENCE_ENV="staging")
    output = assert_clean_failure(result)
    assert "environment 'staging' (from --env or RESILIENCE_ENV)" in output, output
    assert "no [staging] section in" in output, output
    assert "choose one of: development" in output, output
    flag = manage("check", "--settings", str(path), "--env", "staging")
    assert "no [staging] section" in assert_clean_failure(flag)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[default]\nSERVER_MIDDLEWARE = [\n\n[development]\n")
    output = assert_clean_failure(manage("check", "--settings", str(path)))
    assert f"settings file '{path}' is not valid TOML" in output, output
    assert "(at line " in output, output


def test_missing_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "settings.toml"
    output = assert_clean_failure(manage("check", "--settings", str(path)))
    assert f"settings file '{path}' does not exist" in output, output
    assert "RESILIENCE_SETTINGS or --settings" in output, output
    by_variable = manage("check", RESILIENCE_SETTINGS=str(path))
    assert f"settings file '{path}' does not exist" in assert_clean_failure(by_variable)


@pytest.mark.parametrize("command", [["runserver", "127.0.0.1:0"], ["runclient"],
                                     ["showchain"]], ids=lambda c: c[0])
def test_commands_refuse_to_start(tmp_path: Path, command: list[str]) -> None:
    path = bad_file(tmp_path, 'LOG_FORMAT = "xml"')
    check = manage("check", "--settings", str(path))
    expected = next(line for line in check.stderr.splitlines() if line.startswith("ERROR "))
    # runclient's action is a subcommand: its own options go before it.
    args = [*command, "--settings", str(path)] + (["get", "x"] if command == ["runclient"] else [])
    result = manage(*args, timeout=20)
    output = assert_clean_failure(result)
    assert expected in result.stderr.splitlines(), output
    assert "refusing to start: 1 configuration error(s)" in output, output
    assert "serving" not in result.stdout, output


def test_check_lists_every_problem_at_once(tmp_path: Path) -> None:
    path = bad_file(tmp_path, "\n".join([
        'LOG_FORMAT = "xml"',
        'SERVER_MIDDLEWARE = ["resilience.middleware.Retry"]',
        "[default.CLIENT_OPTIONS.Retry]",
        "max_attempts = 0",
    ]))
    result = manage("check", "--settings", str(path))
    output = assert_clean_failure(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 3, output
    assert any(line.startswith("ERROR resilience.E001 LOG_FORMAT") for line in errors), output
    assert any(line.startswith("ERROR resilience.E004 SERVER_MIDDLEWARE") for line in errors)
    assert any(line.startswith("ERROR resilience.E005 CLIENT_OPTIONS.Retry") and
               "'max_attempts' is 0" in line for line in errors), output
    assert "check found 3 error(s)" in result.stderr, output
