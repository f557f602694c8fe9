"""From nothing to a served, resilient app: a throwaway project in a temporary folder.

The framework is built into a wheel from a copy of this checkout and installed into a
folder of its own (the wheel must hold no ``apps/``); the project's processes see only that
folder, never this repository. ``resilience-admin startproject`` makes the project,
``manage.py startapp`` an app; then check, showchain, runserver (sync and ``--asyncio``),
the app's own client command through a per-method chain with Retry and CircuitBreaker, the
app's own tests, and a proto edit that genproto turns into a served method.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.conf.global_settings import SETTING_NAMES
from resilience.core.errors import ImproperlyConfigured
from resilience.management import CommandError, call_command
from resilience.management.commands import startapp
from resilience.management.commands.startapp import add_installed_app
from tests.support.processes import ROOT, environment

pytestmark = pytest.mark.timeout(120)

ECHO = "orders.OrdersService/Echo"
REPEAT = "orders.OrdersService/Repeat"
RETRY = "resilience.middleware.Retry"
BREAKER = "resilience.middleware.CircuitBreaker"

# Echo gets a chain of its own; the server of the [faulty] environment fails Echo's first
# call (seed 1 draws 0.13 < 0.5, then 0.85), so a call succeeds only by retrying.
SETTINGS_FOR_THE_TEST = f"""
[default.CLIENT_METHOD_MIDDLEWARE]
"{ECHO}" = ["{RETRY}", "{BREAKER}"]

[default.CLIENT_METHOD_OPTIONS."{ECHO}".Retry]
max_attempts = 10
initial_backoff = 0.01
max_backoff = 0.05

[default.CLIENT_METHOD_OPTIONS."{ECHO}".CircuitBreaker]
fail_max = 2
reset_timeout = 60.0

"""
FAULTY = f"""
[faulty]
LOG_LEVEL = "WARNING"
SERVER_GRACE_PERIOD = 1.0
SERVER_MIDDLEWARE = ["resilience.middleware.FaultInjection"]

[faulty.SERVER_OPTIONS.FaultInjection]
abort_fraction = 0.5
seed = 1
methods = ["{ECHO}"]
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The framework as a user gets it: a wheel built from a copy of the checkout (with
    our apps/ beside it, to prove they stay out), installed into a folder of its own."""
    base = tmp_path_factory.mktemp("library")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("resilience", "apps"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(base / "wheel"), str(source)],
        capture_output=True, text=True, timeout=90,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "wheel").glob("resilience-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("apps/")], names
    assert "resilience/conf/project_template/manage.py-tpl" in names
    assert "resilience/conf/app_template/protos/app_name.proto-tpl" in names
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(base / "lib"), str(wheel)],
        capture_output=True, text=True, timeout=90,
    )
    assert installed.returncode == 0, installed.stderr
    return base / "lib"


def run(library: Path, cwd: Path, *args: str, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd`` seeing the installed library and not this checkout;
    stderr without the console log's colours."""
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=environment(PYTHONPATH=str(library), RESILIENCE_ENV="testing", **env),
    )
    result.stderr = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    return result


def admin(library: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``resilience-admin`` console script the wheel installed."""
    script = library / "bin" / "resilience-admin"
    return run(library, cwd, str(script), *args)


def new_project(library: Path, where: Path, app: str) -> Path:
    made = admin(library, where, "startproject", "shop")
    assert made.returncode == 0, made.stderr
    project = where / "shop"
    made = run(library, project, "manage.py", "startapp", app)
    assert made.returncode == 0, made.stderr
    return project


@pytest.fixture(scope="module")
def project(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = new_project(library, tmp_path_factory.mktemp("project"), "orders")
    settings = project / "settings" / "settings.toml"
    text = settings.read_text(encoding="utf-8")
    assert "\n[development]" in text
    text = text.replace("\n[development]", SETTINGS_FOR_THE_TEST + "[development]", 1)
    settings.write_text(text + FAULTY, encoding="utf-8")
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def runserver(library: Path, project: Path, *args: str) -> Iterator[str]:
    """``manage.py runserver`` on an ephemeral port; yields its address, stops it with
    SIGTERM and expects a clean exit."""
    # Once metrics exist, let each endpoint pick a free port, as the testing env does.
    ports = {f"RESILIENCE_{name}": "127.0.0.1:0" for name in
             ("METRICS_SERVER_ADDRESS", "METRICS_CLIENT_ADDRESS") if name in SETTING_NAMES}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "127.0.0.1:0", *args], cwd=project,
        env=environment(PYTHONPATH=str(library), RESILIENCE_ENV="testing", **ports),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        address = None
        with contextlib.suppress(queue.Empty):
            while (line := lines.get(timeout=30)) is not None:
                if found := re.match(r"serving \S+ on (127\.0\.0\.1:\d+) \(", line):
                    address = found.group(1)
                    break
        assert address, f"runserver did not start: {proc.stderr.read() if proc.stderr else ''}"
        yield address
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_startproject_and_startapp_lay_out_a_project(project: Path) -> None:
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert files == [
        ".gitignore",
        "apps/__init__.py",
        "apps/orders/__init__.py",
        "apps/orders/apps.py",
        "apps/orders/management/__init__.py",
        "apps/orders/management/commands/__init__.py",
        "apps/orders/management/commands/call_orders.py",
        "apps/orders/protos/__init__.py",
        "apps/orders/protos/orders.proto",
        "apps/orders/protos/orders_pb2.py",
        "apps/orders/protos/orders_pb2.pyi",
        "apps/orders/protos/orders_pb2_grpc.py",
        "apps/orders/servicer.py",
        "apps/orders/tests.py",
        "manage.py",
        "pyproject.toml",
        "settings/.secrets.toml.example",
        "settings/settings.toml",
    ]
    assert os.access(project / "manage.py", os.X_OK)
    for path in project.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".toml", ".proto"}:
            assert "{{" not in path.read_text(encoding="utf-8"), path
    settings = tomllib.loads((project / "settings" / "settings.toml").read_text("utf-8"))
    assert {"development", "testing", "production"} <= set(settings)
    assert settings["default"]["INSTALLED_APPS"] == ["apps.orders"]
    stubs = (project / "apps" / "orders" / "protos" / "orders_pb2_grpc.py").read_text("utf-8")
    assert "from apps.orders.protos import orders_pb2 as" in stubs


def test_check_and_showchain_see_the_per_method_chain(library: Path, project: Path) -> None:
    checked = run(library, project, "manage.py", "check")
    assert checked.returncode == 0, checked.stderr
    assert "check: no errors, 0 warning(s) in environment 'testing'" in checked.stdout
    shown = run(library, project, "manage.py", "showchain", "--side", "client")
    assert shown.returncode == 0, shown.stderr
    echo, repeat = shown.stdout.split("\n\n")[:2]
    assert echo.startswith(f'client {ECHO}  (from CLIENT_METHOD_MIDDLEWARE."{ECHO}")')
    assert [line.split()[1] for line in echo.splitlines()[1:]] == ["Retry", "CircuitBreaker"]
    assert "max_attempts=10" in echo and "fail_max=2" in echo
    assert repeat.startswith(f"client {REPEAT}  (from CLIENT_MIDDLEWARE)")
    assert [line.split()[1] for line in repeat.splitlines()[1:]] == [
        "Retry", "Timeout", "CircuitBreaker"]


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_serve_and_call_through_retry_and_breaker(library: Path, project: Path,
                                                  mode: str) -> None:
    flags = ["--asyncio"] if mode == "asyncio" else []
    with runserver(library, project, "--env", "faulty", *flags) as address:
        call = ["manage.py", "call_orders", "--target", address, *flags]
        echoed = run(library, project, *call, "echo", "hello")
        assert (echoed.returncode, echoed.stdout) == (0, "hello\n"), echoed.stderr
        assert echoed.stderr.count("retrying") == 1, echoed.stderr
        # The common options work after the subcommand too.
        repeated = run(library, project, "manage.py", "call_orders", "repeat", "hi",
                       "--times", "3", "--target", address, *flags)
        assert (repeated.returncode, repeated.stdout) == (0, "hi\nhi\nhi\n"), repeated.stderr
    # Nothing listens there: two failed attempts open Echo's breaker, whose fast failure
    # Retry does not retry.
    dead = run(library, project, "manage.py", "call_orders", "--target",
               f"127.0.0.1:{free_port()}", *flags, "echo", "hello")
    assert dead.returncode == 1
    assert dead.stderr.count("retrying") == 2, dead.stderr
    assert re.search(r"breaker_state .*new=open", dead.stderr), dead.stderr
    assert dead.stderr.rstrip().splitlines()[-1].startswith("UNAVAILABLE: "), dead.stderr
    assert "Traceback" not in dead.stderr


def test_production_refuses_plaintext(library: Path, project: Path) -> None:
    """As this repository's own settings do: production serves and calls over TLS only,
    and the hints point at a .secrets.toml.example that exists."""
    assert tomllib.loads((project / "settings" / "settings.toml").read_text("utf-8"))[
        "production"]["ALLOW_PLAINTEXT"] is False
    example = (project / "settings" / ".secrets.toml.example").read_text("utf-8")
    assert "# TLS_CERT_FILE = " in example and "# CLIENT_TLS_CA_FILE = " in example
    served = run(library, project, "manage.py", "runserver", "--env", "production")
    assert served.returncode == 1, served.stdout + served.stderr
    assert "resilience.E030" in served.stderr and "refusing to start" in served.stderr
    assert "see settings/.secrets.toml.example" in served.stderr
    assert "serving" not in served.stdout and "Traceback" not in served.stderr
    called = run(library, project, "manage.py", "call_orders", "echo", "hi", "--env",
                 "production")
    assert called.returncode == 1, called.stdout + called.stderr
    assert "resilience.E031" in called.stderr and "Traceback" not in called.stderr


def test_startapp_without_grpcio_tools_exits_1_and_installs_nothing(
    library: Path, tmp_path: Path
) -> None:
    made = admin(library, tmp_path, "startproject", "shop")
    assert made.returncode == 0, made.stderr
    project = tmp_path / "shop"
    hidden = tmp_path / "hidden" / "grpc_tools"  # shadows the installed grpcio-tools
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    result = subprocess.run(
        [sys.executable, "manage.py", "startapp", "orders"], cwd=project, capture_output=True,
        text=True, timeout=60, env=environment(
            PYTHONPATH=os.pathsep.join([str(hidden.parent), str(library)]),
            RESILIENCE_ENV="testing"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("stubs not generated (Generating protobuf code needs "
                                    "grpcio-tools"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (project / "apps" / "orders").exists()
    assert tomllib.loads((project / "settings" / "settings.toml").read_text("utf-8"))[
        "default"]["INSTALLED_APPS"] == []


def test_the_apps_own_tests_pass(library: Path, project: Path) -> None:
    result = run(library, project, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "apps/orders/tests.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_proto_edit_and_genproto_serve_a_new_method(library: Path, tmp_path: Path) -> None:
    project = new_project(library, tmp_path, "ledger")
    app = project / "apps" / "ledger"
    proto = app / "protos" / "ledger.proto"
    text = proto.read_text(encoding="utf-8")
    proto.write_text(text.replace(
        "  rpc Echo(EchoReq)", "  rpc Shout(EchoReq) returns (EchoResp);\n  rpc Echo(EchoReq)"
    ), encoding="utf-8")
    servicer = app / "servicer.py"
    text = servicer.read_text(encoding="utf-8")
    text = text.replace("\n\nclass AsyncLedgerServicer", (
        "\n    def Shout(self, request, context):\n"
        "        return ledger_pb2.EchoResp(message=request.message.upper())\n"
        "\n\nclass AsyncLedgerServicer"))
    servicer.write_text(text + (
        "\n    async def Shout(self, request, context):\n"
        "        return ledger_pb2.EchoResp(message=request.message.upper())\n"
    ), encoding="utf-8")
    # As if the proto were edited a minute after the stubs were generated.
    stubs = [app / "protos" / f"ledger{suffix}" for suffix in ("_pb2.py", "_pb2.pyi",
                                                             "_pb2_grpc.py")]
    edited = proto.stat().st_mtime
    for stub in stubs:
        os.utime(stub, (edited - 60, edited - 60))
    checked = run(library, project, "manage.py", "check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.count("WARNING resilience.W050") == 3, checked.stderr
    assert "run 'python manage.py genproto apps.ledger'" in checked.stderr
    assert "Shout" not in stubs[2].read_text(encoding="utf-8")

    generated = run(library, project, "manage.py", "genproto", "ledger")
    assert generated.returncode == 0, generated.stderr
    assert "Shout" in stubs[2].read_text(encoding="utf-8")
    assert "def Shout" in stubs[2].read_text(encoding="utf-8")
    checked = run(library, project, "manage.py", "check")
    assert (checked.returncode, checked.stderr) == (0, "")
    shown = run(library, project, "manage.py", "showchain", "ledger.LedgerService/Shout")
    assert "client ledger.LedgerService/Shout  (from CLIENT_MIDDLEWARE)" in shown.stdout

    client = (
        "import sys\n"
        "sys.path.insert(0, '.')\n"
        "from resilience.conf.settings import load_settings\n"
        "from resilience.transport.client import connect\n"
        "from apps.ledger.protos import ledger_pb2, ledger_pb2_grpc\n"
        "settings = load_settings('settings/settings.toml', 'testing')\n"
        "with connect(sys.argv[1], settings) as channel:\n"
        "    stub = ledger_pb2_grpc.LedgerServiceStub(channel)\n"
        "    print(stub.Shout(ledger_pb2.EchoReq(message='hey'), timeout=10).message)\n"
    )
    for flags in ([], ["--asyncio"]):
        with runserver(library, project, *flags) as address:
            shouted = run(library, project, "-c", client, address)
            assert shouted.returncode == 0, shouted.stderr
            assert shouted.stdout.splitlines()[-1] == "HEY", shouted.stdout


def test_check_flags_missing_and_empty_apps_and_unknown_methods(
    library: Path, project: Path
) -> None:
    hollow = project / "apps" / "hollow"
    hollow.mkdir(exist_ok=True)
    (hollow / "__init__.py").write_text("")
    (hollow / "apps.py").write_text(
        "from resilience.apps.config import AppConfig\n\n\n"
        "class HollowConfig(AppConfig):\n    name = 'apps.hollow'\n"
    )
    settings = project / "settings" / "broken.toml"
    settings.write_text(
        '[default]\nINSTALLED_APPS = ["apps.orders", "apps.hollow"]\n'
        'IDEMPOTENT_METHODS = ["orders.OrdersService/Nope"]\n'
        '[default.CLIENT_METHOD_MIDDLEWARE]\n'
        '"orders.OrdersService/Echoo" = ["resilience.middleware.Timeout"]\n'
        "[testing]\n",
        encoding="utf-8",
    )
    checked = run(library, project, "manage.py", "check", "--settings", str(settings))
    assert checked.returncode == 1
    found = {line.split()[1] for line in checked.stderr.splitlines()
             if line.startswith(("ERROR", "WARNING"))}
    assert found == {"resilience.W002", "resilience.E008", "resilience.E050"}, checked.stderr
    assert "app 'apps.hollow' declares no services" in checked.stderr
    assert "'orders.OrdersService/Echoo' names no method" in checked.stderr
    assert "'orders.OrdersService/Nope' names no method" in checked.stderr

    missing = run(library, project, "manage.py", "check", "--settings", str(settings),
                  RESILIENCE_INSTALLED_APPS='["apps.orders", "apps.nosuch"]')
    assert missing.returncode == 1
    assert "ERROR resilience.E007 INSTALLED_APPS" in missing.stderr
    assert "app 'apps.nosuch' cannot be imported" in missing.stderr


# startapp's and startproject's refusals, in this process: one line each, no traceback.


@pytest.fixture
def empty_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "__init__.py").write_text("")
    (tmp_path / "apps" / "taken").mkdir()
    (tmp_path / "settings.toml").write_text(
        '[default]\nINSTALLED_APPS = ["lib.billing"]\n[testing]\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("name", "message"), [
    ("9lives", "'9lives' is not a valid app name; use letters, digits and underscores"),
    ("my-app", "'my-app' is not a valid app name"),
    ("class", "'class' is not a valid app name"),
    ("json", "'json' clashes with the Python module 'json'; choose another name"),
    ("taken", "apps/taken already exists; choose another name"),
    ("billing", "INSTALLED_APPS in settings.toml already has an app named 'billing' "
                "(lib.billing), whose proto package would clash"),
])
def test_startapp_refuses_bad_names(empty_project: Path, name: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        call_command("startapp", name, "--settings", "settings.toml",
                     stdout=io.StringIO(), stderr=io.StringIO())
    assert str(info.value).startswith(message), str(info.value)
    assert sorted(p.name for p in (empty_project / "apps").iterdir()) == ["__init__.py", "taken"]


def test_startapp_needs_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError, match=r"no apps/ package in .*; run startapp from the "
                                           r"project root"):
        call_command("startapp", "orders", stdout=io.StringIO(), stderr=io.StringIO())


def test_startproject_refuses_bad_names_and_full_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, message in [
        (["my-shop"], "'my-shop' is not a valid project name"),
        (["shop", "full"], "'full' already exists and is not an empty directory"),
    ]:
        with pytest.raises(CommandError, match=re.escape(message)):
            call_command("startproject", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


# Adding the app to INSTALLED_APPS: only a plain list in [default] is edited.

PLAIN = '[default]\nINSTALLED_APPS = ["apps.a"]  \nX = 1\n\n[testing]\nY = 2\n'
MULTILINE = '[default]\nINSTALLED_APPS = [\n    "apps.a",\n]\n[testing]\n'


@pytest.mark.parametrize(("before", "after"), [
    (PLAIN, PLAIN.replace('["apps.a"]  ', '["apps.a", "apps.new"]')),
    ('[default]\nINSTALLED_APPS = []\n[testing]\n',
     '[default]\nINSTALLED_APPS = ["apps.new"]\n[testing]\n'),
    (MULTILINE, MULTILINE.replace('"apps.a",\n', '"apps.a",\n    "apps.new",\n')),
    ('[default]\nINSTALLED_APPS = ["apps.a"]\n[default.T]\nINSTALLED_APPS = []\n',
     '[default]\nINSTALLED_APPS = ["apps.a", "apps.new"]\n[default.T]\nINSTALLED_APPS = []\n'),
])
def test_add_installed_app_edits_a_plain_list(tmp_path: Path, before: str, after: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(before, encoding="utf-8")
    assert add_installed_app(path, "apps.new") == (
        f'added "apps.new" to INSTALLED_APPS in [default] of {path}')
    assert path.read_text(encoding="utf-8") == after
    assert add_installed_app(path, "apps.new") == '"apps.new" is in INSTALLED_APPS already'
    assert path.read_text(encoding="utf-8") == after


@pytest.mark.parametrize(("before", "line"), [
    ('[default]\nINSTALLED_APPS = [\n    "apps.a",  # ours\n]\n[testing]\n',
     'INSTALLED_APPS = ["apps.a", "apps.new"]'),
    ('[default]\nX = 1\n[testing]\nINSTALLED_APPS = ["apps.a"]\n', 'INSTALLED_APPS = ["apps.new"]'),
    ('[default]\nINSTALLED_APPS = ["apps]"]\n', 'INSTALLED_APPS = ["apps]", "apps.new"]'),
    ("[default\n", 'INSTALLED_APPS = [..., "apps.new"]'),
])
def test_add_installed_app_prints_the_line_for_anything_else(
    tmp_path: Path, before: str, line: str
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(before, encoding="utf-8")
    message = add_installed_app(path, "apps.new")
    assert message == f'add "apps.new" to INSTALLED_APPS in [default] of {path}: {line}'
    assert path.read_text(encoding="utf-8") == before


def test_add_installed_app_names_environments_with_their_own_list(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nINSTALLED_APPS = []\n[production]\nINSTALLED_APPS = []\n')
    message = add_installed_app(path, "apps.new")
    assert message.endswith("; [production] set INSTALLED_APPS too: add it there as well")


def test_startapp_refusal_is_one_line_without_traceback(library: Path, project: Path) -> None:
    refused = run(library, project, "manage.py", "startapp", "my-app")
    assert refused.returncode == 1
    assert refused.stderr.startswith("'my-app' is not a valid app name; use letters")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr


def test_startapp_without_grpcio_tools_fails_and_installs_nothing(
    empty_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(*args: object) -> None:
        raise ImproperlyConfigured("Generating protobuf code needs grpcio-tools: pip install "
                                   "grpcio-tools")

    monkeypatch.setattr(startapp, "generate", missing)
    settings = (empty_project / "settings.toml").read_text("utf-8")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("startapp", "orders", "--settings", "settings.toml",
                     stdout=out, stderr=err)
    assert info.value.returncode == 1
    assert str(info.value) == (
        "stubs not generated (Generating protobuf code needs grpcio-tools: pip install "
        "grpcio-tools); apps/orders was not created and INSTALLED_APPS is unchanged: run "
        "'python manage.py startapp orders' again once that is fixed")
    assert out.getvalue() == ""
    assert not (empty_project / "apps" / "orders").exists()
    assert (empty_project / "settings.toml").read_text("utf-8") == settings
