"""Every fenced code block of README.md and docs/**/*.md is run, one test per block, with
the id PAGE:LINE (the line of the opening fence), so that the documentation works as
written from a clean clone.

Where blocks run. Each page gets a workspace: a temporary directory laid out like a clean
clone (a copy of manage.py and settings/settings.toml, links to apps/, benchmarks/ and
scripts/; no settings/.secrets.toml), and the page's blocks run in it in the page's order,
as a reader follows the page. Files that blocks make (a python block's module, a command's
project) stay for the rest of the page; a test run alone first runs the earlier blocks
that make such files. Pages that import ``shop.protos`` (the docs' "your generated code")
also get a ``shop`` package: an ``Orders`` service generated from SHOP_PROTO, with
``OrdersServicer`` and ``AsyncOrdersServicer``.

```toml`` blocks are settings:
- A line ``# settings/settings.toml`` or ``# settings/.secrets.toml ...`` starts the part
  of the block that goes in that file (the settings file when unsaid). Each part must be
  valid TOML.
- A block with a bare ``[default]`` table and a bare environment table (``[development]``)
  is a whole settings file: it replaces the workspace's settings/settings.toml, for this
  block and the rest of the page.
- Any other block is pasted into a copy of the workspace's settings/settings.toml (the
  workspace's file is left as it was): its tables are appended, so a table the file
  already has is a duplicate and fails, as pasting it would. A table whose header says
  ``# existing ...`` (``[production]   # existing table: set these keys in it``) means
  "put these keys in the table the file has": they replace keys of the same name
  (docs/how-to/troubleshooting.md tells readers so).
- A secrets part is the copy's settings/.secrets.toml.
- Then, so that a block whose tables are silently ignored fails:
  - every top-level table is ``[default]`` or an environment of the file (a table such as
    ``[SERVER_OPTIONS.X]`` would be taken by dynaconf for an environment, and nothing
    applied);
  - ``check`` passes in every environment of the file: no error, and no W003/W070 about
    the block's own options (options that reach no chain);
  - every value of the block is in the loaded settings of its environment (``[default]``'s
    in development, unless the file's [development] sets the same setting);
  - a pasted block changes nothing else (an environment's table replaces [default]'s
    whole unless it says ``dynaconf_merge = true``).
- ``production`` is checked as deployed, with TLS: files from tests/support/certs.py set
  through RESILIENCE_TLS_CERT_FILE, RESILIENCE_TLS_KEY_FILE and RESILIENCE_CLIENT_TLS_CA_FILE,
  unless the block sets TLS itself; its paths under /etc/resilience/tls/ then name
  generated files (server.pem, server.key, ca.pem, clients-ca.pem, client.pem, client.key).

```python`` blocks:
- A first line ``# path/to/module.py`` makes the block that file of the workspace; it is
  imported, and the middleware it defines exercised (below).
- A first-line comment naming a module of the library (``# resilience.limits.base``) makes
  the block an excerpt of it: every class and method it shows must exist there, with the
  same parameters.
- A block of definitions only (imports, classes, functions) is run as a module, and each
  ``Middleware`` subclass in it is exercised: built with resilience.testing's ``build`` on
  each of its sides, sync and (if ``async_capable``) asyncio, over a ``FakeHandler``, and
  called; EXERCISES holds what a given middleware must do, any other must answer or raise
  an RpcStatusError.
- Any other block is a program, run with ``python -`` in the workspace (so ``apps`` and
  settings/settings.toml are the clone's). Addresses: a host ``*.internal`` is loopback;
  a program that serves (``add_insecure_port``) gets a free port for 50051; any other
  program's ``127.0.0.1:50051`` is the module's cache server (``manage.py runserver``,
  testing environment, where key ``k`` holds ``v``). It must exit 0.

```sh`` blocks, line by line (``\\`` continues a line, ``&&`` chains commands, ``#``
starts a comment, ``VAR=value`` prefixes set the environment), in the workspace:
- ``cd DIR`` moves, for the rest of the page; ``$EDITOR FILE`` needs FILE to exist.
- ``python3 -m venv`` and ``pip install`` are not run: the test runs in that venv
  (``.venv/bin/`` and ``../.venv/bin/`` are its bin directory).
- ``manage.py`` and ``resilience-admin`` commands that are fast and safe run and must exit
  0: RUN_COMMANDS, ``bench`` without a name (the list), and ``runclient`` get/store/dump
  (against the module's server: RESILIENCE_CLIENT_TARGET). Any other command (runserver,
  ``runclient load``, ``bench NAME``, an app's ``call_NAME``) and ``python -m
  benchmarks.NAME`` only parse: the command line goes through the program's own argparse,
  which stops it there. ``bench NAME`` must also name a benchmark.
- ``python -m pytest ARGS`` collects (``--collect-only``): the tests must import.
- ``./scripts/NAME`` must be an executable bash script that ``bash -n`` accepts;
  ``mkdocs CMD`` must answer ``--help``.
- Anything else fails: give it a rule here.

Other languages (text diagrams, output samples, JSON log lines) are skipped by their tag.
A block can be skipped with ``<!-- snippet: skip, REASON -->`` on the line before it;
MARKED_SKIPS counts them, so that skips cannot grow silently.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.certs import make_pki
from tests.support.processes import ROOT, environment

pytestmark = pytest.mark.timeout(120)

#: Blocks marked ``<!-- snippet: skip, REASON -->``.
MARKED_SKIPS = 0

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"toml": "toml", "python": "python", "py": "python", "sh": "sh", "bash": "sh",
             "shell": "sh"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<what>.*?)\s*-->\s*$")
#: manage.py / resilience-admin commands that run (the rest only parse).
RUN_COMMANDS = frozenset({"check", "showchain", "startproject", "startapp", "genproto", "help"})
CLIENT_CALLS = frozenset({"get", "store", "dump"})
#: Warnings that mean a block's options reach no chain: the block would do nothing (they
#: fail the block when they name a table it sets).
IGNORED = frozenset({"resilience.W003", "resilience.W070"})
TLS_DIR = "/etc/resilience/tls/"
SHOP_PROTO = """\
syntax = "proto3";
package shop;

service Orders {
  rpc Lookup(LookupReq) returns (Order) { option idempotency_level = NO_SIDE_EFFECTS; }
  rpc Place(Order) returns (Order);
}

message LookupReq { string id = 1; }
message Order { string id = 1; string item = 2; }
"""
SHOP_SERVICER = """\
from shop.protos import orders_pb2, orders_pb2_grpc


class OrdersServicer(orders_pb2_grpc.OrdersServicer):
    def Lookup(self, request, context):
        return orders_pb2.Order(id=request.id, item="a book")

    def Place(self, request, context):
        return request


class AsyncOrdersServicer(orders_pb2_grpc.OrdersServicer):
    async def Lookup(self, request, context):
        return orders_pb2.Order(id=request.id, item="a book")

    async def Place(self, request, context):
        return request
"""


# --- the blocks ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    lang: str
    code: str
    marker: str
    index: int

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract(path: Path) -> list[Snippet]:
    """The fenced blocks of a page, dedented by their fence's indentation."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(ROOT))
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence)
                                        and not lines[end].strip().strip(fence[0])):
            end += 1
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.match(before)
        info = match["info"].strip().split()
        found.append(Snippet(
            page, i + 1, info[0].lower() if info else "",
            "\n".join(line[indent:] if not line[:indent].strip() else line.lstrip()
                      for line in lines[i + 1:end]) + "\n",
            marker["what"] if marker else "", len(found),
        ))
        i = end + 1
    return found


SNIPPETS = [snippet for page in PAGES for snippet in extract(page)]
BY_PAGE: dict[str, list[Snippet]] = {}
for _snippet in SNIPPETS:
    BY_PAGE.setdefault(_snippet.page, []).append(_snippet)


def skip_reason(snippet: Snippet) -> str:
    if snippet.marker.startswith("skip"):
        return snippet.marker.partition(",")[2].strip()
    return ""


def test_skips_are_counted_and_give_a_reason() -> None:
    marked = [s for s in SNIPPETS if s.marker]
    assert all(s.marker.startswith("skip") for s in marked), \
        [f"{s.id}: {s.marker}" for s in marked if not s.marker.startswith("skip")]
    assert all(skip_reason(s) for s in marked), \
        [s.id for s in marked if not skip_reason(s)]  # "skip, WHY"
    assert len(marked) == MARKED_SKIPS, [f"{s.id}: {s.marker}" for s in marked]


def test_every_page_has_its_blocks_found() -> None:
    """The extractor sees the blocks (a regression here would test nothing)."""
    assert len(SNIPPETS) >= 50
    assert {"toml", "python", "sh"} <= {s.lang for s in SNIPPETS}


# --- what the blocks run against -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVING = re.compile(r"^serving cache\.CacheService on (127\.0\.0\.1:\d+) ")


@dataclasses.dataclass
class CacheServer:
    """``manage.py runserver`` of the clone, in the testing environment, on a free port."""

    address: str


def wait_serving(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        if match := SERVING.match(line):
            return match[1]
    return ""


@pytest.fixture(scope="module")
def cache_server() -> Iterator[CacheServer]:
    """Started by the first block that needs it; key ``k`` holds ``v``."""
    from apps.cache.protos import cache_pb2, cache_pb2_grpc

    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "127.0.0.1:0"], cwd=ROOT,
            env=environment(RESILIENCE_ENV="testing"), text=True,
            stdout=subprocess.PIPE, stderr=log)
        try:
            address = wait_serving(proc)
            if not address:
                log.seek(0)
                raise AssertionError(f"runserver did not start:\n{log.read()}")
            with grpc.insecure_channel(address) as channel:
                cache_pb2_grpc.CacheServiceStub(channel).Store(
                    cache_pb2.StoreReq(key="k", value=b"v"), timeout=10, wait_for_ready=True)
            yield CacheServer(address)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@dataclasses.dataclass
class Pki:
    dir: Path
    server_cert: Path
    server_key: Path
    ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("tls")
    made = make_pki(directory)
    shutil.copy(made.ca, directory / "clients-ca.pem")
    return Pki(directory, made.server_cert, made.server_key, made.ca)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``shop`` package: generated ``shop.protos.orders_pb2*`` and ``shop.servicer``."""
    from grpc_tools import protoc

    root = tmp_path_factory.mktemp("shop")
    protos = root / "shop" / "protos"
    protos.mkdir(parents=True)
    for package in (root / "shop", protos):
        (package / "__init__.py").write_text("", encoding="utf-8")
    (protos / "orders.proto").write_text(SHOP_PROTO, encoding="utf-8")
    (root / "shop" / "servicer.py").write_text(SHOP_SERVICER, encoding="utf-8")
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={root}",
                        f"--grpc_python_out={root}", "shop/protos/orders.proto"]) == 0
    return root / "shop"


class Workspace:
    """A page's clean clone; ``cwd`` moves with ``cd``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root
        (root / "settings").mkdir(parents=True)
        shutil.copy(ROOT / "settings" / "settings.toml", root / "settings" / "settings.toml")
        shutil.copy(ROOT / "manage.py", root / "manage.py")
        for name in ("apps", "benchmarks", "scripts"):
            (root / name).symlink_to(ROOT / name)
        #: Block index -> None (ran) or the failure it raised.
        self.done: dict[int, BaseException | None] = {}

    @property
    def foreign(self) -> bool:
        """The current directory is a project with apps of its own (startproject's)."""
        apps = self.cwd / "apps"
        return apps.is_dir() and apps.resolve() != (ROOT / "apps").resolve()

    @property
    def settings_file(self) -> Path:
        return self.cwd / "settings" / "settings.toml"


@dataclasses.dataclass
class Context:
    workspace: Workspace
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    tmp: Path

    def server(self) -> CacheServer:
        return self.request.getfixturevalue("cache_server")

    def pki(self) -> Pki:
        return self.request.getfixturevalue("pki")


@pytest.fixture(scope="module")
def workspaces() -> dict[str, Workspace]:
    return {}


def workspace_for(page: str, workspaces: dict[str, Workspace],
                  request: pytest.FixtureRequest) -> Workspace:
    if page not in workspaces:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        root = factory.mktemp(re.sub(r"\W", "_", page)) / "clone"
        workspaces[page] = Workspace(root)
        if any("shop.protos" in s.code for s in BY_PAGE[page]):
            shutil.copytree(request.getfixturevalue("shop"), root / "shop")
    return workspaces[page]


def stateful(snippet: Snippet) -> bool:
    """Blocks whose effects later blocks of the page may rely on."""
    if skip_reason(snippet):
        return False
    if snippet.lang == "sh":
        return True
    if snippet.lang == "python":
        return module_path(snippet.code) is not None
    return snippet.lang == "toml" and is_whole_file(split_parts(snippet.code)["settings.toml"])


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet(snippet: Snippet, workspaces: dict[str, Workspace],
                 request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> None:
    if reason := skip_reason(snippet):
        pytest.skip(reason)
    runner = RUNNERS.get(LANGUAGES.get(snippet.lang, ""))
    if runner is None:
        pytest.skip(f"a {snippet.lang or 'plain text'} block: nothing to run")
    for name in [k for k in os.environ if k.startswith("RESILIENCE_")]:
        monkeypatch.delenv(name)
    ws = workspace_for(snippet.page, workspaces, request)
    # After the clone's own path, so that apps/ is never imported through the links.
    monkeypatch.setattr(sys, "path", [*sys.path, str(ws.root)])
    ctx = Context(ws, request, monkeypatch, tmp_path)
    try:
        for earlier in BY_PAGE[snippet.page][:snippet.index]:
            if not stateful(earlier):
                continue
            if earlier.index not in ws.done:
                run_recorded(earlier, ctx, RUNNERS[LANGUAGES[earlier.lang]])
            if (failure := ws.done[earlier.index]) is not None:
                pytest.fail(f"{earlier.id}, which this block follows, failed: {failure}")
        run_recorded(snippet, ctx, runner)
    finally:
        forget_modules(ws.root)


def run_recorded(snippet: Snippet, ctx: Context,
                 runner: Callable[[Snippet, Context], None]) -> None:
    ctx.workspace.done[snippet.index] = None
    try:
        runner(snippet, ctx)
    except BaseException as exc:
        ctx.workspace.done[snippet.index] = exc
        raise


def forget_modules(root: Path) -> None:
    """Unimport the workspace's own modules (shop, myproject), for the next page's."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(str(root)) and not Path(file).resolve().is_relative_to(ROOT):
            del sys.modules[name]


# --- toml ----------------------------------------------------------------------------------

PART = re.compile(r"^#\s*settings/(?P<file>settings\.toml|\.secrets\.toml)\b")
HEADER = re.compile(r"^\s*\[(?!\[)(?P<name>[^\]#]+)\]\s*(?:#(?P<comment>.*))?$")


def split_parts(code: str) -> dict[str, str]:
    parts = {"settings.toml": [], ".secrets.toml": []}
    current = "settings.toml"
    for line in code.splitlines():
        if match := PART.match(line):
            current = match["file"]
        parts[current].append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in parts.items()}


@dataclasses.dataclass
class Table:
    keys: tuple[str, ...]
    header: str
    comment: str
    body: list[str]

    @property
    def bare(self) -> bool:
        return len(self.keys) == 1

    @property
    def existing(self) -> bool:
        return "existing" in self.comment.lower()


def table_keys(name: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ("a", "b.c", "d"), as TOML reads the header."""
    table: Any = tomllib.loads(f"[{name}]")
    keys: list[str] = []
    while table:
        (key, table), = table.items()
        keys.append(key)
    return tuple(keys)


def tables(text: str) -> tuple[list[str], list[Table]]:
    """The lines before the first table, and each table with its body lines."""
    preamble: list[str] = []
    found: list[Table] = []
    for line in text.splitlines():
        if match := HEADER.match(line):
            found.append(Table(table_keys(match["name"].strip()), line,
                               match["comment"] or "", []))
        elif found:
            found[-1].body.append(line)
        else:
            preamble.append(line)
    return preamble, found


def key_groups(lines: list[str]) -> list[tuple[str, int, int]]:
    """(key, first line, last line) of each key = value in ``lines`` (values may span lines)."""
    groups = []
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        for j in range(i, len(lines)):
            try:
                value = tomllib.loads("\n".join(lines[i:j + 1]))
            except tomllib.TOMLDecodeError:
                continue
            groups.append((next(iter(value)), i, j))
            i = j + 1
            break
        else:
            raise AssertionError(f"cannot read the key at {lines[i]!r}")
    return groups


def is_whole_file(settings_part: str) -> bool:
    _, found = tables(settings_part)
    bare = {t.keys[0].lower() for t in found if t.bare and not t.existing}
    return "default" in bare and len(bare) > 1


def paste(base: str, part: str) -> str:
    """``part`` pasted into the settings file ``base``, as the module docstring says."""
    preamble, found = tables(part)
    loose = [line for line in preamble if line.strip() and not line.lstrip().startswith("#")]
    assert not loose, f"keys outside any table would land in the file's last table: {loose}"
    lines = base.splitlines()
    appended: list[str] = []
    for table in found:
        if not table.existing:
            appended += ["", table.header, *table.body]
            continue
        _, base_tables = tables("\n".join(lines))
        assert any(t.keys == table.keys for t in base_tables), (
            f"{table.header.strip()} says the table exists, but the file has no such table")
        start = next(i for i, line in enumerate(lines)
                     if (m := HEADER.match(line)) and table_keys(m["name"].strip()) == table.keys)
        end = next((i for i in range(start + 1, len(lines)) if HEADER.match(lines[i])),
                   len(lines))
        new = {key for key, _, _ in key_groups(table.body)}
        body = lines[start + 1:end]
        for key, first, last in reversed(key_groups(body)):
            if key in new:
                del body[first:last + 1]
        lines[start + 1:end] = [line for line in table.body if line.strip()] + body
    return "\n".join(lines + appended) + "\n"


def leaves(table: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                               Any]]:
    for key, value in table.items():
        if key.lower() in {"dynaconf_merge", "dynaconf_merge_unique"}:
            continue
        if isinstance(value, dict) and value:
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key), value


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


UNSET = _Unset()


def lookup(raw: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` (keys compared without case), or UNSET."""
    value: Any = raw
    for key in path:
        if not isinstance(value, dict):
            return UNSET
        folded = {str(k).lower(): k for k in value}
        if key.lower() not in folded:
            return UNSET
        value = value[folded[key.lower()]]
    return value


def check_messages(ctx: Context, settings: Path, env: str, extra: dict[str, str]) -> list[str]:
    """``manage.py check`` of ``settings`` in ``env``: its ERROR and WARNING lines, and
    its exit status as the last item ("exit N")."""
    ws = ctx.workspace
    if ws.foreign:  # another project's apps: its own manage.py, in a process of its own
        proc = subprocess.run(
            [sys.executable, "manage.py", "check", "--settings", str(settings), "--env", env],
            cwd=ws.cwd, env=environment(**extra), capture_output=True, text=True, timeout=60)
        output, status = proc.stdout + proc.stderr, proc.returncode
    else:
        from resilience.management import CommandError, call_command

        for name, value in extra.items():
            ctx.monkeypatch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        try:
            status = call_command("check", "--settings", str(settings), "--env", env,
                                  stdout=out, stderr=err)
        except CommandError as exc:
            err.write(f"{exc}\n")
            status = exc.returncode
        finally:
            for name in extra:
                ctx.monkeypatch.delenv(name)
        output = out.getvalue() + err.getvalue()
    found = [line for line in output.splitlines() if line.startswith(("ERROR ", "WARNING "))]
    return [*found, f"exit {status}"]


def aims_at(setting: str, read: dict[str, dict[str, Any]]) -> bool:
    """Whether the block sets values under ``setting`` (as check names it:
    ``SERVER_OPTIONS.TokenAuth``, ``CLIENT_METHOD_OPTIONS."pkg.S/M".Timeout``)."""
    wanted = setting.replace('"', "").lower()
    return any(".".join(path).lower().startswith(wanted)
               for part in read.values() for table in part.values()
               for path, _ in leaves(table))


def assert_nothing_else_changes(before_file: Path, after_file: Path,
                                read: dict[str, dict[str, Any]], environments: list[str]) -> None:
    """Pasting changes only what the block sets: a table in an environment replaces
    [default]'s whole unless it says ``dynaconf_merge = true``, which drops the rest."""
    from resilience.conf.settings import load_settings

    lost = []
    for env in environments:
        mine = [tuple(k.lower() for k in path) for part in read.values()
                for section, table in part.items() if section.lower() in {"default", env}
                for path, _ in leaves(table)]
        after = load_settings(after_file, env).raw
        for path, value in leaves(load_settings(before_file, env).raw):
            folded = tuple(k.lower() for k in path)
            if any(folded[:len(m)] == m for m in mine) or lookup(after, path) == value:
                continue
            lost.append(f"{env}: {'.'.join(path)} = {value!r} becomes "
                        f"{lookup(after, path)!r}")
    assert not lost, ("the block changes settings it does not set (an environment's table "
                      "replaces [default]'s unless it says dynaconf_merge = true):\n  "
                      + "\n  ".join(lost))


def run_toml(snippet: Snippet, ctx: Context) -> None:
    ws = ctx.workspace
    code = snippet.code
    sets_tls = bool(re.search(r"^\s*(CLIENT_)?TLS_", code, re.M))
    code = code.replace(TLS_DIR, f"{ctx.pki().dir}/") if TLS_DIR in code else code
    parts = split_parts(code)
    read: dict[str, dict[str, Any]] = {}
    for name, text in parts.items():
        try:
            read[name] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"the {name} part is not valid TOML: {exc}")
    whole = is_whole_file(parts["settings.toml"])
    base = ws.settings_file.read_text(encoding="utf-8")
    where = ws.settings_file.relative_to(ws.root)
    if whole:
        text = parts["settings.toml"]
    else:
        try:
            text = paste(base, parts["settings.toml"])
        except AssertionError as exc:
            pytest.fail(f"cannot be pasted into {where}: {exc}")
    try:
        sections = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"pasted into {where} it is not valid TOML any more ({exc}): a table the "
                    f"file already has? Use a dotted table that is new, or say '# existing "
                    f"table: ...' on its header")
    environments = sorted(k.lower() for k in (sections if whole else tomllib.loads(base))
                          if k.lower() not in {"default", "global"})
    unknown = [name for part in read.values() for name in part
               if name.lower() not in {"default", "global", *environments}
               or re.fullmatch(r"[A-Z][A-Z0-9_]*", name)]
    assert not unknown, (f"[{unknown[0]}] is no environment of the file: dynaconf takes it "
                         f"for an environment of its own and applies nothing; prefix the "
                         f"table with its environment ([default.{unknown[0]}...])")
    copy = ctx.tmp / "settings" / "settings.toml"
    copy.parent.mkdir(parents=True)
    copy.write_text(text, encoding="utf-8")
    if read[".secrets.toml"]:
        copy.with_name(".secrets.toml").write_text(parts[".secrets.toml"], encoding="utf-8")
    assert_check_passes(ctx, copy, read, environments, tls=not sets_tls)
    assert_applied(copy, sections, read, environments)
    if whole:
        ws.settings_file.write_text(text, encoding="utf-8")
    else:
        assert_nothing_else_changes(ws.settings_file, copy, read, environments)


def assert_check_passes(ctx: Context, settings: Path, read: dict[str, dict[str, Any]],
                        environments: list[str], tls: bool) -> None:
    """``check`` in every environment: no error, and no warning that the block's options
    reach no chain. Production gets the test's TLS files when ``tls``."""
    problems = []
    for env in environments:
        extra = {}
        if env == "production" and tls:
            pki = ctx.pki()
            extra = {"RESILIENCE_TLS_CERT_FILE": str(pki.server_cert),
                     "RESILIENCE_TLS_KEY_FILE": str(pki.server_key),
                     "RESILIENCE_CLIENT_TLS_CA_FILE": str(pki.ca)}
        *lines, status = check_messages(ctx, settings, env, extra)
        bad = [line for line in lines
               if line.startswith("ERROR ") or (line.split()[1] in IGNORED
                                                and aims_at(line.split()[2], read))]
        if bad or status != "exit 0":
            problems.append(f"check --env {env} ({status}):\n  " + "\n  ".join(bad or lines))
    assert not problems, "\n".join(problems)


def assert_applied(settings: Path, sections: dict[str, Any], read: dict[str, dict[str, Any]],
                   environments: list[str]) -> None:
    """Every value of the block is in the loaded settings of its environment."""
    from resilience.conf.settings import load_settings

    default_env = "development" if "development" in environments else environments[0]
    own = {k.upper() for k in sections.get(default_env, {})}
    missing = []
    for part in read.values():
        for section, table in part.items():
            env = default_env if section.lower() in {"default", "global"} else section.lower()
            raw = load_settings(settings, env).raw
            for path, value in leaves(table):
                if env == default_env and section.lower() != env and path[0].upper() in own:
                    continue  # [development] sets this setting itself
                if lookup(raw, path) != value:
                    missing.append(f"[{section}] {'.'.join(path)} = {value!r} is not in the "
                                   f"{env} settings (they have {lookup(raw, path)!r})")
    assert not missing, "\n".join(missing)


# --- python --------------------------------------------------------------------------------

MODULE_FILE = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)\s*$")
LIBRARY_MODULE = re.compile(r"#\s*(?P<module>resilience(?:\.\w+)+)\s*$")


def module_path(code: str) -> str | None:
    match = MODULE_FILE.match(code.splitlines()[0]) if code.strip() else None
    return match["path"] if match else None


def definitions_only(tree: ast.Module) -> bool:
    allowed = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef,
               ast.AsyncFunctionDef, ast.Expr)
    return all(isinstance(node, allowed) and not (
        isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant))
        for node in tree.body)


def run_python(snippet: Snippet, ctx: Context) -> None:
    code = snippet.code
    tree = ast.parse(code, filename=snippet.id)
    first = code.splitlines()[0]
    if library := LIBRARY_MODULE.search(first):
        return check_excerpt(tree, importlib.import_module(library["module"]))
    if path := module_path(code):
        target = ctx.workspace.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        for package in target.relative_to(ctx.workspace.root).parents:
            init = ctx.workspace.root / package / "__init__.py"
            if package != Path(".") and not init.exists():
                init.write_text("", encoding="utf-8")
        target.write_text(code, encoding="utf-8")
        name = ".".join(Path(path).with_suffix("").parts)
        importlib.invalidate_caches()
        return exercise_module(vars(importlib.import_module(name)), name)
    if definitions_only(tree):
        namespace: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(tree, snippet.id, "exec"), namespace)
        return exercise_module(namespace, "snippet")
    run_program(snippet, ctx)


def check_excerpt(tree: ast.Module, module: Any) -> None:
    """The classes and functions shown exist in ``module`` with the parameters shown."""
    def params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
        args = node.args
        return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]

    def compare(shown: ast.AST, real: Any, where: str) -> None:
        for node in getattr(shown, "body", []):
            if isinstance(node, ast.ClassDef):
                assert hasattr(real, node.name), f"{where} has no {node.name}"
                compare(node, getattr(real, node.name), f"{where}.{node.name}")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                member = inspect.getattr_static(real, node.name, None)
                assert member is not None, f"{where} has no {node.name}"
                function = member.fget if isinstance(member, property) else member
                function = getattr(function, "__func__", function)
                real_params = list(inspect.signature(function).parameters)
                assert real_params == params(node), (
                    f"{where}.{node.name} takes {real_params}, the docs show {params(node)}")

    compare(tree, module, module.__name__)


def run_program(snippet: Snippet, ctx: Context) -> None:
    code = re.sub(r"\b[\w-]+(?:\.[\w-]+)*\.internal:50051", "127.0.0.1:50051", snippet.code)
    if "add_insecure_port" in code:
        code = code.replace(":50051", f":{free_port()}")
    elif "127.0.0.1:50051" in code:
        code = code.replace("127.0.0.1:50051", ctx.server().address)
    proc = subprocess.run([sys.executable, "-"], input=code, cwd=ctx.workspace.cwd,
                          env=environment(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout}"
                                  f"\n--- stderr\n{proc.stderr}")


def invoke(layer: Any, call: Any, is_async: bool) -> Any:
    if not is_async:
        return layer(call)

    async def run() -> Any:
        result = layer.acall(call)
        return await result if inspect.isawaitable(result) else result

    return asyncio.run(run())


def exercise_require_tenant(cls: type, side: str, is_async: bool) -> None:
    from resilience import MiddlewareNotUsed, RpcStatusError
    from resilience.testing import FakeHandler, build, call_for

    handler = FakeHandler(result="ok")
    layer = build(cls, handler.acall if is_async else handler, side=side, is_async=is_async)
    with pytest.raises(RpcStatusError) as refused:
        invoke(layer, call_for(side=side), is_async)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert handler.calls == []
    assert invoke(layer, call_for(side=side, metadata=[("x-tenant", "acme")]), is_async) == "ok"
    if "exempt" in {f.name for f in dataclasses.fields(cls.Options)}:
        with pytest.raises(MiddlewareNotUsed):
            build(cls, handler, side=side, options={"exempt": ["test.Service/Method"]})


#: Middleware name -> what it must do, given (class, side, is_async).
EXERCISES: dict[str, Callable[[type, str, bool], None]] = {
    "RequireTenant": exercise_require_tenant,
}


def exercise_generic(cls: type, side: str, is_async: bool) -> None:
    from resilience import MiddlewareNotUsed, RpcStatusError
    from resilience.testing import FakeHandler, build, call_for

    handler = FakeHandler(result="ok")
    try:
        layer = build(cls, handler.acall if is_async else handler, side=side,
                      is_async=is_async)
    except MiddlewareNotUsed:
        return
    with contextlib.suppress(RpcStatusError):
        assert invoke(layer, call_for(side=side), is_async) == "ok"


def exercise_module(namespace: dict[str, Any], module: str) -> None:
    from resilience import Middleware

    classes = [value for value in namespace.values()
               if isinstance(value, type) and issubclass(value, Middleware)
               and value is not Middleware and value.__module__ == module]
    for cls in classes:
        modes = [mode for mode, able in ((False, cls.sync_capable), (True, cls.async_capable))
                 if able]
        for side in sorted(cls.sides):
            for is_async in modes:
                EXERCISES.get(cls.__name__, exercise_generic)(cls, side, is_async)


# --- sh ------------------------------------------------------------------------------------

#: Runs command lines (a JSON list of [how, program, *args], how being "-m" for a module
#: or "path" for a script) each through its own argparse, stopped right after a parse that
#: succeeded; prints a JSON list with "" for each that parsed, else what went wrong.
PARSE_ONLY = """\
import argparse, contextlib, io, json, runpy, sys

class Parsed(BaseException):
    pass

real = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    real(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_only
results = []
for how, target, *argv in json.loads(sys.argv[1]):
    sys.argv = [target, *argv]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if how == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        results.append("it never parsed its command line: " + out.getvalue())
    except Parsed:
        results.append("")
    except SystemExit as exc:
        results.append(f"exit {exc.code}: {out.getvalue()}{err.getvalue()}")
print(json.dumps(results))
"""


@dataclasses.dataclass(frozen=True)
class Parse:
    """A command line to parse only: ``how`` ("-m" or "path"), the program, its args."""

    argv: tuple[str, ...]
    line: str
    env: tuple[tuple[str, str], ...]


def command_lines(code: str) -> Iterator[list[str]]:
    """Each command of a block as words: continuations joined, comments dropped, split at &&."""
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            yield words[:cut]
            words = words[cut + 1:]


def run_sh(snippet: Snippet, ctx: Context) -> None:
    """Each command in order; consecutive parse-only ones share one process."""
    pending: list[Parse] = []
    for words in command_lines(snippet.code):
        planned = plan(words, ctx)
        if pending and not (isinstance(planned, Parse) and planned.env == pending[0].env):
            parse_all(ctx, pending)
            pending = []
        if isinstance(planned, Parse):
            pending.append(planned)
        elif planned is not None:
            planned()
    if pending:
        parse_all(ctx, pending)


def plan(words: list[str], ctx: Context) -> Parse | Callable[[], object] | None:
    """What to do for one command: parse it, run something, or nothing (done here)."""
    ws = ctx.workspace
    bindir = Path(sys.executable).parent
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    line = shlex.join(words)
    program, *args = words
    if program == "cd":
        ws.cwd = (ws.cwd / args[0]).resolve()
        assert ws.cwd.is_dir(), f"cd {args[0]}: no such directory"
        return None
    if program == "$EDITOR":
        assert (ws.cwd / args[0]).is_file(), f"{line}: {args[0]} does not exist"
        return None
    name = Path(program).name
    if (program.endswith("/.venv/bin/" + name) or program.startswith(".venv/bin/")
            or (program == name and (bindir / name).is_file())):
        program = str(bindir / name)
    if name == "pip" or (name.startswith("python") and args[:2] == ["-m", "venv"]):
        return None  # the venv this test runs in
    if program.startswith("./scripts/"):
        script = ws.cwd / program
        assert script.is_file() and os.access(script, os.X_OK), f"{program} is not executable"
        return lambda: expect_success(ctx, ["bash", "-n", str(script)], line, env)
    if name == "mkdocs":
        return lambda: expect_success(ctx, [program, *args[:1], "--help"], line, env)
    if name.startswith("python") and args[:1] == ["manage.py"]:
        return plan_manage(ctx, [program, "manage.py"], args[1:], line, env)
    if name == "resilience-admin":
        return plan_manage(ctx, [program], args, line, env)
    if name.startswith("python") and args[:2] == ["-m", "pytest"]:
        return lambda: expect_success(ctx, [program, *args, "--collect-only", "-q"], line, env)
    if name.startswith("python") and args[:1] == ["-m"] and args[1].startswith("benchmarks."):
        assert (ROOT / "benchmarks" / f"{args[1].split('.', 1)[1]}.py").is_file(), line
        return Parse(tuple(args), line, tuple(sorted(env.items())))
    pytest.fail(f"no rule for the command {line!r}: add one to {Path(__file__).name}")


def plan_manage(ctx: Context, program: list[str], args: list[str], line: str,
                env: dict[str, str]) -> Parse | Callable[[], object]:
    positional = [a for a in args if not a.startswith("-")]
    command = positional[0] if positional else "help"
    rest = positional[1:]
    if command == "runclient" and rest and rest[0] in CLIENT_CALLS:
        return lambda: expect_success(ctx, [*program, *args], line, {
            "RESILIENCE_CLIENT_TARGET": ctx.server().address, **env})
    if command in RUN_COMMANDS or (command == "bench" and not rest):
        return lambda: expect_success(ctx, [*program, *args], line, env)
    if command == "bench":
        assert (ROOT / "benchmarks" / f"{rest[0]}.py").is_file(), f"{line}: no such benchmark"
    # manage.py as a script; resilience-admin, a console script, as one too
    return Parse(("path", program[-1], *args), line, tuple(sorted(env.items())))


def parse_all(ctx: Context, lines: list[Parse]) -> None:
    argv = [sys.executable, "-c", PARSE_ONLY, json.dumps([p.argv for p in lines])]
    proc = expect_success(ctx, argv, "; ".join(p.line for p in lines), dict(lines[0].env))
    results = json.loads(proc.stdout.splitlines()[-1])
    failed = [f"{p.line}: {why}" for p, why in zip(lines, results, strict=True) if why]
    assert not failed, "\n".join(failed)


def expect_success(ctx: Context, argv: list[str], line: str,
                   env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=ctx.workspace.cwd, env=environment(**env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (f"{line}: exit {proc.returncode}\n--- stdout\n"
                                  f"{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


RUNNERS: dict[str, Callable[[Snippet, Context], None]] = {
    "toml": run_toml, "python": run_python, "sh": run_sh,
}
