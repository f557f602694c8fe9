"""Every misspelled or missing name gets one clear message (issue 13): settings, options
tables, options, method names, dotted paths and sections.

Each case is one mistake in a settings file run through ``manage.py check`` in a real
process. Mistakes that do not mask each other share a file, checked once (a process costs
about a second); each case then asserts its own message: exactly one message mentions
the offending value, and it names the id, the setting, the environment and the fix.
Modules that fail to import are written to a temporary directory put on PYTHONPATH, so
that the repository holds no broken Python for ruff and pytest to trip over.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from resilience import ImproperlyConfigured
from resilience.conf.settings import load_settings
from resilience.conf.validation import run_checks
from resilience.core.loading import import_string
from resilience.core.spelling import closest, edit_distance
from resilience.interceptors import (
    aio_client_interceptors,
    aio_server_interceptor,
    client_interceptors,
    server_interceptor,
)
from tests.support.processes import ROOT, environment, manage
from tests.support.servers import make_settings

CACHE_PB2 = "apps.cache.protos.cache_pb2"

# Modules that break in each way an import can, and apps built from them.
FIXTURE_MODULES = {
    "names_fx/__init__.py": "",
    "names_fx/syntax_mw.py": "from resilience import Middleware\n\nclass Thing(Middleware)\n",
    "names_fx/deps_mw.py": "import names_fx_missing_dependency\n",
    "names_fx/nameerr_mw.py": (
        "from resilience import Middleware\n\n\nclass Thing(Middleware):\n"
        "    limit = undefined_limit\n"
    ),
    "names_fx/broken_fallbacks.py": "def last(request, error)\n    raise error\n",
    "names_fx/empty_pb2.py": (
        "class _File:\n    services_by_name: dict = {}\n\n\nDESCRIPTOR = _File()\n"
    ),
    "names_fx_brokenapp/__init__.py": "",
    "names_fx_brokenapp/apps.py": (
        "from resilience.apps import AppConfig\n\n\nclass Broken(AppConfig)\n"
        "    name = 'names_fx_brokenapp'\n"
    ),
    "names_fx_depapp/__init__.py": "",
    "names_fx_depapp/apps.py": "import names_fx_missing_dependency\n",
    "names_fx_raisingcheck/__init__.py": "",
    "names_fx_raisingcheck/apps.py": textwrap.dedent("""\
        from resilience.apps import AppConfig


        class Raising(AppConfig):
            name = "names_fx_raisingcheck"

            def check(self, settings):
                raise RuntimeError("boom")
    """),
    "names_fx_cmdapp/__init__.py": "",
    "names_fx_cmdapp/apps.py": (
        "from resilience.apps import AppConfig\n\n\nclass Commands(AppConfig):\n"
        "    name = 'names_fx_cmdapp'\n"
    ),
    "names_fx_cmdapp/management/__init__.py": "",
    "names_fx_cmdapp/management/commands/__init__.py": "",
    "names_fx_cmdapp/management/commands/broken.py": "def handle(self)\n",
    "names_fx_halfasync/__init__.py": "",
    "names_fx_halfasync/apps.py": textwrap.dedent("""\
        from apps.cache.protos import cache_pb2, cache_pb2_grpc
        from apps.cache.servicer import AsyncCacheServicer, CacheServicer
        from resilience.apps import AppConfig, Service


        class HalfAsync(AsyncCacheServicer):
            def Get(self, request, context):  # sync: the asyncio server refuses it
                return None


        class HalfAsyncConfig(AppConfig):
            name = "names_fx_halfasync"
            services = (
                Service(
                    descriptor=cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
                    add_to_server=cache_pb2_grpc.add_CacheServiceServicer_to_server,
                    stub=cache_pb2_grpc.CacheServiceStub,
                    servicer=CacheServicer,
                    async_servicer=HalfAsync,
                ),
            )
    """),
}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    batch: str  # the settings file it shares with other cases
    code: str  # the check id, such as E070
    setting: str  # how the message names the setting
    value: str  # the offending value; exactly one message mentions it
    expected: tuple[str, ...]  # what else the message (or its hint) says: the fix
    level: str = "ERROR"


# Each batch: (environment, settings file). Its mistakes do not hide one another.
BATCHES = {
    # Names one or two edits from a known one: settings, options tables, options, keys.
    "typos": ("development", """
        [default]
        INSTALLED_APPS = ["apps.cache"]
        SERVER_MIDDLEWARES = ["resilience.middleware.RequestLogging"]
        LOG_LEVLE = "DEBUG"
        ASYNCOI = true
        IDEMPOTENT_METHOD = ["cache.CacheService/Store"]
        CACHE_MAX_VALUE_BYTE = 10
        CAHCE_MAX_KEY_BYTES = 10
        IDEMPOTENT_METHODS = ["cache.CacheService/Stor"]

        [default.CLIENT_METHOD_MIDDLEWARE]
        "cache.CacheServce" = ["resilience.middleware.Timeout"]
        "cache.CacheService/Store" = ["resilience.middleware.Timeuot"]

        [default.CLIENT_OPTIONS.Retyr]
        max_attempts = 2

        [default.CLIENT_OPTIONS.circuitbraker]
        fail_max = 3

        [default.CLIENT_OPTIONS.Retry]
        initial_backof = 0.1

        [default.CLIENT_OPTIONS.Hedging]
        max_atempts = 2

        [default.SERVER_OPTIONS.ConcurencyLimit]
        max_in_flight = 10

        [default.SERVER_OPTIONS.Bulkhaed]
        max_concurrent = 4

        [default.SERVER_OPTIONS.Fallbak]
        function = "apps.cache.fallbacks.last_value"

        [default.CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timout]
        seconds = 2.0

        [default.CLIENT_METHOD_OPTIONS."cache.CacheService/Dump".Timeout]
        secnods = 9.0

        [default.CLIENT_METHOD_OPTIONS."cache.CacheService/Stroe".Timeout]
        seconds = 3.0

        [development]
    """),
    # Method names inside options, and options aimed at a chain without the middleware;
    # in [staging], so that the messages name that environment.
    "methods": ("staging", """
        [default]
        INSTALLED_APPS = ["apps.cache"]

        [staging]
        SERVER_MIDDLEWARE = [
            "resilience.middleware.FaultInjection",
            "resilience.middleware.Bulkhead",
            "resilience.middleware.AdaptiveLimit",
            "resilience.middleware.TokenAuth",
        ]
        CLIENT_MIDDLEWARE = [
            "resilience.middleware.FaultInjection", "resilience.middleware.Timeout",
        ]

        [staging.CLIENT_METHOD_MIDDLEWARE]
        "cache.CacheService/Store" = [
            "resilience.middleware.Bulkhead", "resilience.middleware.Timeout",
        ]

        [staging.SERVER_OPTIONS.FaultInjection]
        methods = ["cache.CacheService/Gte"]

        [staging.SERVER_OPTIONS.Bulkhead]
        groups = { reads = ["cache.CacheService/Get", "cache.CacheService/Dupm"] }
        limits = { "cache.CacheService/Stoer" = 3 }

        [staging.SERVER_OPTIONS.AdaptiveLimit]
        partitions = { "cache.CacheService/get" = 0.5 }

        [staging.SERVER_OPTIONS.TokenAuth]
        tokens = { alice = "an-example-token-of-some-length" }
        permissions = { alice = ["cache.CacheSrvice"] }
        exempt = ["grpc.health.v1.Health", "cache.CacheService/Dmp"]

        [staging.CLIENT_OPTIONS.FaultInjection]
        methods = ["cache.CacheService/Gett", "cache.CacheService/Store"]

        [staging.CLIENT_METHOD_OPTIONS."cache.CacheService/Store".FaultInjection]
        abort_fraction = 1.0

        [staging.CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Bulkhead]
        max_concurrent = 2
    """),
    # Dotted paths whose modules fail to import, each in its own way.
    "imports": ("development", """
        [default]
        INSTALLED_APPS = ["apps.cache", "names_fx_raisingcheck"]
        CLIENT_MIDDLEWARE = [
            "resilience.middleware.Fallback",
            "resilience.middleware.Timeout",
            "resilience.middleware.CircuitBreaker",
            "names_fx.syntax_mw.Thing",
        ]
        SERVER_MIDDLEWARE = ["resilience.middleware.RequestLogging", "names_fx.deps_mw.Thing"]
        PROTO_MODULES = [
            "apps.cache.protos.cache_pb2_grpc",
            "names_fx.nosuch_pb2",
            "names_fx.syntax_mw",
            "names_fx.empty_pb2",
        ]

        [default.CLIENT_METHOD_MIDDLEWARE]
        "cache.CacheService/Store" = ["names_fx.nameerr_mw.Thing"]

        [default.CLIENT_OPTIONS.CircuitBreaker]
        fallback = "names_fx.broken_fallbacks.last"

        [default.CLIENT_OPTIONS.Fallback]
        function = "names_fx.deps_mw.last"

        [development]
    """),
    # Apps that cannot be imported: no other check runs without the apps.
    "apps": ("development", """
        [default]
        INSTALLED_APPS = ["apps.cache", "names_fx_brokenapp", "names_fx_depapp"]

        [development]
    """),
    "sections": ("development", """
        [defualt]
        INSTALLED_APPS = ["apps.cache"]

        [development]
    """),
    "asyncio": ("development", """
        [default]
        INSTALLED_APPS = ["names_fx_halfasync"]
        ASYNCIO = true

        [development]
    """),
}

SETTINGS_REF = "settings.toml"
TYPO_HINT = "rename it to"

CASES = [
    # Settings (E070): one or two edits from a known setting.
    Case("setting-plural", "typos", "E070", "SERVER_MIDDLEWARES", "SERVER_MIDDLEWARES",
         ("did you mean 'SERVER_MIDDLEWARE'?", "nothing reads it",
          "rename it to SERVER_MIDDLEWARE")),
    Case("setting-swapped-letters", "typos", "E070", "LOG_LEVLE", "LOG_LEVLE",
         ("did you mean 'LOG_LEVEL'?", TYPO_HINT)),
    Case("setting-asyncio-swapped", "typos", "E070", "ASYNCOI", "ASYNCOI",
         ("did you mean 'ASYNCIO'?", TYPO_HINT)),
    Case("setting-singular", "typos", "E070", "IDEMPOTENT_METHOD", "IDEMPOTENT_METHOD ",
         ("did you mean 'IDEMPOTENT_METHODS'?", TYPO_HINT)),
    Case("app-setting-typo", "typos", "E070", "CACHE_MAX_VALUE_BYTE", "CACHE_MAX_VALUE_BYTE ",
         ("did you mean 'CACHE_MAX_VALUE_BYTES'?",)),
    Case("app-label-typo", "typos", "E070", "CAHCE_MAX_KEY_BYTES", "CAHCE_MAX_KEY_BYTES",
         ("did you mean 'CACHE_MAX_KEY_BYTES'?",)),
    # Options tables (E071) and options (E005): the middleware meant runs on its defaults.
    Case("options-table-client", "typos", "E071", "CLIENT_OPTIONS.Retyr", "'Retyr'",
         ("did you mean 'Retry'?", "rename the table to [CLIENT_OPTIONS.Retry]")),
    Case("options-table-case-and-typo", "typos", "E071", "CLIENT_OPTIONS.circuitbraker",
         "'circuitbraker'", ("did you mean 'CircuitBreaker'?",)),
    Case("options-table-server", "typos", "E071", "SERVER_OPTIONS.ConcurencyLimit",
         "'ConcurencyLimit'", ("did you mean 'ConcurrencyLimit'?",
                               "server chains list: ConcurrencyLimit, RequestLogging")),
    Case("options-table-unlisted-builtin", "typos", "E071", "SERVER_OPTIONS.Bulkhaed",
         "'Bulkhaed'", ("did you mean 'Bulkhead', which no server chain lists either?",)),
    Case("options-table-other-side", "typos", "E071", "SERVER_OPTIONS.Fallbak", "'Fallbak'",
         ("did you mean 'Fallback'", "Fallback is a client middleware: its options go in "
                                     "CLIENT_OPTIONS")),
    Case("options-table-in-method-table", "typos", "E071",
         'CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timout', "'Timout'",
         ("did you mean 'Timeout'?",
          'rename the table to [CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timeout]')),
    Case("option-name", "typos", "E005", "CLIENT_OPTIONS.Retry", "'initial_backof'",
         ("did you mean 'initial_backoff'?", "valid options: backoff")),
    Case("option-name-unlisted-builtin", "typos", "E005", "CLIENT_OPTIONS.Hedging",
         "'max_atempts'", ("did you mean 'max_attempts'?",)),
    Case("option-name-in-method-table", "typos", "E005",
         'CLIENT_METHOD_OPTIONS."cache.CacheService/Dump".Timeout', "'secnods'",
         ("did you mean 'seconds'?",)),
    # Method keys (E008, E050) and middleware paths (E002), with "did you mean".
    Case("method-key-options", "typos", "E008", "CLIENT_METHOD_OPTIONS",
         "'cache.CacheService/Stroe'", ("did you mean 'cache.CacheService/Store'?",
                                        "known methods: cache.CacheService/Dump")),
    Case("service-key-middleware", "typos", "E008", "CLIENT_METHOD_MIDDLEWARE",
         "'cache.CacheServce'", ("did you mean 'cache.CacheService'?",)),
    Case("idempotent-method", "typos", "E050", "IDEMPOTENT_METHODS",
         "'cache.CacheService/Stor'", ("did you mean 'cache.CacheService/Store'?",)),
    Case("middleware-path", "typos", "E002", 'CLIENT_METHOD_MIDDLEWARE."cache.CacheService/Store"',
         "'resilience.middleware.Timeuot'", ("did you mean 'Timeout'?", "check the spelling")),
    # Method names inside options (E072), whatever their distance.
    Case("fault-methods", "methods", "E072", "SERVER_OPTIONS.FaultInjection",
         "'cache.CacheService/Gte'", ("option 'methods'", "did you mean 'cache.CacheService/Get'?",
                                      "the option does nothing for it")),
    Case("bulkhead-groups", "methods", "E072", "SERVER_OPTIONS.Bulkhead",
         "'cache.CacheService/Dupm'",
         ("option 'groups'", "did you mean 'cache.CacheService/Dump'?")),
    Case("bulkhead-limits", "methods", "E072", "SERVER_OPTIONS.Bulkhead",
         "'cache.CacheService/Stoer'", ("option 'limits'",)),
    Case("adaptive-partitions-case", "methods", "E072", "SERVER_OPTIONS.AdaptiveLimit",
         "'cache.CacheService/get'", ("option 'partitions'",
                                      "did you mean 'cache.CacheService/Get'?")),
    Case("auth-permissions-service", "methods", "E072", "SERVER_OPTIONS.TokenAuth",
         "'cache.CacheSrvice'", ("option 'permissions'", "did you mean 'cache.CacheService'?")),
    Case("auth-exempt", "methods", "E072", "SERVER_OPTIONS.TokenAuth",
         "'cache.CacheService/Dmp'", ("option 'exempt'",)),
    Case("client-fault-methods", "methods", "E072", "CLIENT_OPTIONS.FaultInjection",
         "'cache.CacheService/Gett'", ("option 'methods'",)),
    # Options aimed at a method whose own chain lacks the middleware (W070).
    Case("client-fault-method-own-chain", "methods", "W070", "CLIENT_OPTIONS.FaultInjection",
         "names cache.CacheService/Store",
         ('CLIENT_METHOD_MIDDLEWARE."cache.CacheService/Store" (Bulkhead, Timeout)',
          "does not list FaultInjection", "add 'resilience.middleware.FaultInjection'"),
         level="WARNING"),
    Case("method-options-own-chain", "methods", "W070",
         'CLIENT_METHOD_OPTIONS."cache.CacheService/Store".FaultInjection',
         "options for FaultInjection aimed at cache.CacheService/Store",
         ('whose chain CLIENT_METHOD_MIDDLEWARE."cache.CacheService/Store" (Bulkhead, '
          'Timeout) does not list FaultInjection',
          'add FaultInjection to CLIENT_METHOD_MIDDLEWARE."cache.CacheService/Store"'),
         level="WARNING"),
    Case("method-options-default-chain", "methods", "W070",
         'CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Bulkhead',
         "options for Bulkhead aimed at cache.CacheService/Get",
         ("whose chain CLIENT_MIDDLEWARE (FaultInjection, Timeout) does not list Bulkhead",
          "add Bulkhead to CLIENT_MIDDLEWARE"), level="WARNING"),
    # Import failures: the setting, the dotted path and the error's one line.
    Case("middleware-syntax-error", "imports", "E002", "CLIENT_MIDDLEWARE",
         "'names_fx.syntax_mw.Thing'", ("does not import: SyntaxError: expected ':'",
                                        "syntax_mw.py, line 3)", "fix the error in the module")),
    Case("middleware-own-import-error", "imports", "E002", "SERVER_MIDDLEWARE",
         "'names_fx.deps_mw.Thing'",
         ("ModuleNotFoundError: No module named 'names_fx_missing_dependency'",
          "deps_mw.py, line 1)")),
    Case("middleware-name-error", "imports", "E002",
         'CLIENT_METHOD_MIDDLEWARE."cache.CacheService/Store"', "'names_fx.nameerr_mw.Thing'",
         ("NameError: name 'undefined_limit' is not defined", "nameerr_mw.py, line 5)")),
    Case("fallback-syntax-error", "imports", "E005", "CLIENT_OPTIONS.CircuitBreaker",
         "'names_fx.broken_fallbacks.last'",
         ("option 'fallback'", "SyntaxError: expected ':'", "broken_fallbacks.py, line 1)")),
    Case("fallback-function-import-error", "imports", "E005", "CLIENT_OPTIONS.Fallback",
         "'names_fx.deps_mw.last'",
         ("option 'function'", "No module named 'names_fx_missing_dependency'")),
    Case("proto-module-grpc", "imports", "E073", "PROTO_MODULES",
         "'apps.cache.protos.cache_pb2_grpc'",
         ("is not a generated *_pb2 module", "name 'apps.cache.protos.cache_pb2' instead")),
    Case("proto-module-missing", "imports", "E073", "PROTO_MODULES", "'names_fx.nosuch_pb2'",
         ("does not import: no module named 'names_fx.nosuch_pb2'",)),
    Case("proto-module-syntax-error", "imports", "E073", "PROTO_MODULES", "'names_fx.syntax_mw'",
         ("does not import: SyntaxError",)),
    Case("proto-module-without-services", "imports", "W071", "PROTO_MODULES",
         "'names_fx.empty_pb2'", ("declares no services",), level="WARNING"),
    Case("app-check-raises", "imports", "E007", "INSTALLED_APPS",
         "its check() raised RuntimeError: boom",
         ("app 'names_fx_raisingcheck'", "apps.py, line 8)", "fix the app's AppConfig.check")),
    Case("app-syntax-error", "apps", "E007", "INSTALLED_APPS", "'names_fx_brokenapp'",
         ("cannot be imported: SyntaxError: expected ':'", "apps.py, line 4)",
          "or remove 'names_fx_brokenapp' from INSTALLED_APPS")),
    Case("app-own-import-error", "apps", "E007", "INSTALLED_APPS", "'names_fx_depapp'",
         ("cannot be imported: ModuleNotFoundError: No module named "
          "'names_fx_missing_dependency'",)),
    # A section dynaconf takes for an environment.
    Case("default-section", "sections", "E075", "[defualt]", "[defualt]",
         ("did you mean [default]?", "apply only with --env defualt",
          "rename the section (and its sub-tables) to [default]")),
    # What runserver --asyncio refuses, checked under ASYNCIO.
    Case("asyncio-sync-servicer-method", "asyncio", "E074", "INSTALLED_APPS",
         "cache.CacheService/Get",
         ("must be a coroutine function ('async def')", "and ASYNCIO is on",
          "define HalfAsync.Get as 'async def'")),
]


def test_the_corpus_has_thirty_distinct_mistakes() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(c.batch, c.value) for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the broken modules, for PYTHONPATH."""
    root = tmp_path_factory.mktemp("names_fixtures")
    for name, text in FIXTURE_MODULES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def batch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("names_settings")
    files = {}
    for name, (_, text) in BATCHES.items():
        files[name] = root / f"{name}.toml"
        files[name].write_text(textwrap.dedent(text), encoding="utf-8")
    return files


def manage_with(fixture_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return manage(*args, PYTHONPATH=str(fixture_path), **env)


@pytest.fixture(scope="module")
def check_results(
    batch_files: dict[str, Path], fixture_path: Path
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``manage.py check`` of every batch, two processes at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(manage_with, fixture_path, "check", "--settings", str(path),
                              "--env", BATCHES[name][0])
            for name, path in batch_files.items()
        }
        return {name: future.result() for name, future in futures.items()}


def blocks(output: str) -> list[str]:
    """The check messages in ``output``: each ERROR/WARNING line with its HINT line."""
    found: list[str] = []
    for line in output.splitlines():
        if line.startswith(("ERROR ", "WARNING ")):
            found.append(line)
        elif line.startswith("    HINT: ") and found:
            found[-1] += "\n" + line
    return found


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    return output


def assert_message(case: Case, env: str, output: str) -> str:
    """The one message about ``case``'s value, checked; returned for further checks."""
    about = [b for b in blocks(output) if case.value in b]
    assert len(about) == 1, f"{case.id}: {len(about)} messages mention {case.value!r}\n{output}"
    (message,) = about
    head = f"{case.level} resilience.{case.code} {case.setting} (environment '{env}'): "
    assert message.startswith(head), f"{case.id}: expected {head!r}\n{output}"
    for text in case.expected:
        assert text in message, f"{case.id}: {text!r} missing from\n{message}"
    assert "\n    HINT: " in message, message
    return message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_check_names_the_mistake(
    case: Case, check_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = check_results[case.batch]
    output = assert_clean_failure(result)
    assert result.returncode == 1, output
    assert_message(case, BATCHES[case.batch][0], output)


# --- the same messages when runserver and runclient refuse to start ------------------------


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    output = assert_clean_failure(result)
    assert "refusing to start" in output, output
    assert "serving" not in result.stdout, output
    return output


def test_runserver_refuses_with_checks_typo_messages(
    batch_files: dict[str, Path], fixture_path: Path,
    check_results: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    output = refusal(manage_with(fixture_path, "runserver", "127.0.0.1:0", "--settings",
                                 str(batch_files["typos"]), timeout=20))
    checked = blocks(check_results["typos"].stderr)
    errors = [b for b in checked if b.startswith("ERROR ")]
    assert errors and all(b.splitlines()[0] in output for b in errors), output


def test_runclient_refuses_with_the_import_error_message(
    batch_files: dict[str, Path], fixture_path: Path
) -> None:
    output = refusal(manage_with(fixture_path, "runclient", "--settings",
                                 str(batch_files["imports"]), "get", "k", timeout=20))
    case = next(c for c in CASES if c.id == "middleware-syntax-error")
    assert_message(case, "development", output)


def test_asyncio_check_matches_what_runserver_asyncio_refuses(
    tmp_path: Path, fixture_path: Path
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nINSTALLED_APPS = ["names_fx_halfasync"]\n[development]\n',
                    encoding="utf-8")
    # Sync mode serves the sync servicer: nothing to report.
    sync = manage_with(fixture_path, "check", "--settings", str(path))
    assert sync.returncode == 0, sync.stdout + sync.stderr
    case = next(c for c in CASES if c.id == "asyncio-sync-servicer-method")
    checked = manage_with(fixture_path, "check", "--asyncio", "--settings", str(path))
    message = assert_message(case, "development", assert_clean_failure(checked))
    served = refusal(manage_with(fixture_path, "runserver", "127.0.0.1:0", "--asyncio",
                                 "--settings", str(path), timeout=20))
    assert message in served, served


def test_a_command_module_that_does_not_import_is_one_line(
    tmp_path: Path, fixture_path: Path
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nINSTALLED_APPS = ["names_fx_cmdapp"]\n[development]\n',
                    encoding="utf-8")
    result = manage_with(fixture_path, "broken", "--settings", str(path))
    output = assert_clean_failure(result)
    assert ("command 'broken' (names_fx_cmdapp.management.commands.broken) does not import: "
            "SyntaxError: expected ':'") in output, output
    assert "broken.py, line 1)" in output, output


# --- an existing grpcio application: PROTO_MODULES ---------------------------------------


EXISTING_APP = """
[default]
INSTALLED_APPS = []
{protos}
IDEMPOTENT_METHODS = ["cache.CacheService/Get"]

[default.CLIENT_METHOD_MIDDLEWARE]
"cache.CacheService/Store" = ["resilience.middleware.Timeout"]

[default.CLIENT_METHOD_OPTIONS."{key}".Timeout]
seconds = 2.0

[development]
"""


def existing_app(tmp_path: Path, key: str, protos: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "settings.toml"
    lines = f'PROTO_MODULES = ["{CACHE_PB2}"]' if protos else ""
    path.write_text(EXISTING_APP.format(protos=lines, key=key), encoding="utf-8")
    return path


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    """``resilience-admin ARGS`` from the project root, as an existing application runs it."""
    script = Path(sys.executable).with_name("resilience-admin")
    return subprocess.run([str(script), *args], cwd=ROOT, env=environment(), text=True,
                          capture_output=True, timeout=30, check=False)


def test_resilience_admin_check_validates_keys_against_proto_modules(tmp_path: Path) -> None:
    good = admin("check", "--settings", str(existing_app(tmp_path / "good", "cache.CacheService")))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "no errors, 0 warning(s)" in good.stdout, good.stdout + good.stderr
    bad_file = existing_app(tmp_path / "bad", "cache.CacheService/Gte")
    bad = admin("check", "--settings", str(bad_file))
    output = assert_clean_failure(bad)
    case = Case("proto-key", "", "E008", "CLIENT_METHOD_OPTIONS", "'cache.CacheService/Gte'",
                ("of an installed app or of PROTO_MODULES",
                 "did you mean 'cache.CacheService/Get'?",
                 "known methods: cache.CacheService/Dump, cache.CacheService/Get"))
    assert_message(case, "development", output)
    assert "check found 1 error(s) and 0 warning(s)" in bad.stderr, output


def test_without_proto_modules_method_keys_are_one_warning_not_errors(tmp_path: Path) -> None:
    path = existing_app(tmp_path, "cache.CacheService/Gte", protos=False)
    _, messages = run_checks(load_settings(path))
    assert [m.id for m in messages] == ["resilience.W072"], messages
    (message,) = messages
    assert "'cache.CacheService/Gte'" in message.msg and "not checked" in message.msg
    assert 'PROTO_MODULES = ["myproject.protos.orders_pb2"]' in message.hint


def interceptor_settings(**values: Any) -> Any:
    values.setdefault("INSTALLED_APPS", [])
    values.setdefault("SERVER_MIDDLEWARE", [])
    values.setdefault("CLIENT_MIDDLEWARE", ["resilience.middleware.Timeout"])
    return make_settings(**values)


MISSPELT_KEY = {"cache.CacheService/Gett": {"Timeout": {"seconds": 2.0}}}


@pytest.mark.parametrize("factory", [client_interceptors, aio_client_interceptors],
                         ids=lambda f: f.__name__)
def test_interceptors_reject_a_misspelled_method_key_with_proto_modules(factory: Any) -> None:
    settings = interceptor_settings(PROTO_MODULES=[CACHE_PB2], CLIENT_METHOD_OPTIONS=MISSPELT_KEY)
    with pytest.raises(ImproperlyConfigured) as info:
        factory(settings)
    message = str(info.value)
    assert "ERROR resilience.E008 CLIENT_METHOD_OPTIONS (environment 'testing')" in message
    assert "did you mean 'cache.CacheService/Get'?" in message
    # The right name passes.
    factory(interceptor_settings(PROTO_MODULES=[CACHE_PB2], CLIENT_METHOD_OPTIONS={
        "cache.CacheService/Get": {"Timeout": {"seconds": 2.0}}}))


@pytest.mark.parametrize("factory", [server_interceptor, aio_server_interceptor],
                         ids=lambda f: f.__name__)
def test_server_interceptors_reject_a_misspelled_method_in_options(factory: Any) -> None:
    settings = interceptor_settings(
        PROTO_MODULES=[CACHE_PB2], SERVER_MIDDLEWARE=["resilience.middleware.FaultInjection"],
        SERVER_OPTIONS={"FaultInjection": {"methods": ["cache.CacheService/Gte"]}},
    )
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E072 SERVER_OPTIONS"
                                                   r"\.FaultInjection .*'cache\.CacheService/Gte'"):
        factory(settings)


def test_interceptors_without_proto_modules_say_what_went_unchecked() -> None:
    with capture_logs() as logs:
        client_interceptors(interceptor_settings(CLIENT_METHOD_OPTIONS=MISSPELT_KEY))
    unchecked = [e for e in logs if e.get("id") == "resilience.W072"]
    assert len(unchecked) == 1, logs
    assert "'cache.CacheService/Gett'" in unchecked[0]["message"]


# --- the rules themselves, in this process ------------------------------------------------


def test_the_typo_rule() -> None:
    assert edit_distance("retyr", "retry") == 1  # a swap is one edit
    assert closest("Retyr", ["Retry", "Timeout"]) == "Retry"
    assert closest("TIMOUT", ["Timeout"]) == "Timeout"  # case is ignored
    assert closest("SERVER_MIDDLE", ["SERVER_MIDDLEWARE"]) is None  # four edits away
    assert closest("ab", ["xy"]) is None  # two edits turn any two letters into any other
    assert closest("MY_OWN_SETTING", ["SERVER_MIDDLEWARE", "LOG_LEVEL"]) is None


def test_a_syntax_error_in_a_middleware_module_is_one_line(fixture_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.syspath_prepend(str(fixture_path))
    with pytest.raises(ImproperlyConfigured) as info:
        import_string("names_fx.syntax_mw.Thing")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("'names_fx.syntax_mw.Thing' does not import: SyntaxError: ")
    assert f"{os.sep}syntax_mw.py, line 3)" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_shipped_readme_snippet_for_store_is_no_longer_a_no_op() -> None:
    """The docs' FaultInjection example for Store lists it in Store's own chain."""
    snippet = (ROOT / "docs" / "reference" / "middleware" / "faultinjection.md").read_text(
        encoding="utf-8")
    assert '"cache.CacheService/Store" = ["resilience.middleware.FaultInjection"' in snippet
