"""Generate Python code from an app's ``.proto`` files, and tell when it is out of date.

protoc runs from the project root with ``-I<root>`` and root-relative proto paths, so the
generated modules import each other by their package path (``from apps.cache.protos import
cache_pb2``), never as a bare ``import cache_pb2`` that only works with the protos folder
on ``sys.path``; they carry no absolute paths, and each proto is registered under a
project-unique name (``apps/cache/protos/cache.proto``), so two apps may both have a
``common.proto``. A proto importing another one names it from the root too:
``import "apps/cache/protos/common.proto";``.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from resilience.core.errors import ImproperlyConfigured

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# A fresh clone writes files in no particular order, so a proto may come out a little
# newer than its stubs; only a bigger gap means someone edited the proto.
STALE_AFTER_SECONDS = 2.0


def app_protos(app_dir: Path) -> list[Path]:
    """The ``.proto`` files of an app, in a stable order."""
    return sorted((app_dir / "protos").glob("*.proto"))


def generated_files(proto: Path) -> list[Path]:
    """The modules protoc writes for ``proto``, next to it."""
    return [proto.with_name(proto.stem + suffix) for suffix in GENERATED_SUFFIXES]


def app_location(app: str) -> tuple[Path, Path]:
    """An app's package directory and the root its dotted name starts from, found without
    running the app's modules (its stubs may be missing or stale)."""
    try:
        spec = importlib.util.find_spec(app)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImproperlyConfigured(f"app '{app}' is not an importable package")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    return package, package.parents[len(app.split(".")) - 1]


def generate(proto_files: list[Path], root: Path, out: Path | None = None) -> None:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for each proto file.

    ``root`` is the directory the package paths start from; every proto file must lie under
    it. The modules go next to each proto, or under ``out`` at the same relative path.
    """
    try:
        # grpcio-tools is a dev dependency; only code generation needs it.
        from grpc_tools import protoc
    except ImportError as exc:
        raise ImproperlyConfigured(
            "Generating protobuf code needs grpcio-tools: pip install grpcio-tools"
        ) from exc

    if not proto_files:
        return
    root = root.resolve()
    relative = []
    for proto in proto_files:
        try:
            relative.append(proto.resolve().relative_to(root).as_posix())
        except ValueError as exc:
            raise ImproperlyConfigured(f"{proto} is not under the root {root}") from exc

    include = Path(protoc.__file__).parent / "_proto"
    target = (out or root).resolve()
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={target}",
        f"--pyi_out={target}",
        f"--grpc_python_out={target}",
        *relative,
    ]
    status, output = _run_capturing_output(protoc.main, args)
    if status != 0:
        hint = (
            "\n(a proto imports another by its path from the project root, such as "
            'import "apps/NAME/protos/other.proto";)'
            if "was not found" in output or "File not found" in output
            else ""
        )
        raise ImproperlyConfigured(
            f"protoc failed (exit status {status}) for {', '.join(relative)}:\n"
            f"{output.strip()}{hint}"
        )


def out_of_date(proto_files: list[Path], root: Path) -> list[Path]:
    """The generated files that regenerating would change or create: empty when the
    committed stubs are exactly what the installed grpcio-tools makes of the protos."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(proto_files, root, Path(scratch))
        return [
            committed
            for proto in proto_files
            for committed in generated_files(proto)
            if not committed.is_file()
            or not filecmp.cmp(
                Path(scratch) / committed.resolve().relative_to(root.resolve()),
                committed,
                shallow=False,
            )
        ]


def stale(proto_files: list[Path]) -> list[tuple[Path, str]]:
    """Protos whose generated modules are missing or older, each with what is wrong; by
    modification time, so it needs no grpcio-tools and costs a few ``stat`` calls."""
    problems = []
    for proto in proto_files:
        edited = proto.stat().st_mtime
        for module in generated_files(proto):
            if not module.is_file():
                problems.append((proto, f"{module.name} is missing"))
            elif edited - module.stat().st_mtime > STALE_AFTER_SECONDS:
                problems.append((proto, f"it is newer than {module.name}"))
    return problems


def _run_capturing_output(main: Callable[[list[str]], int], args: list[str]) -> tuple[int, str]:
    """Run protoc's ``main`` and return its exit status and everything it wrote.

    protoc is C++ and writes its diagnostics to file descriptors 1 and 2 directly, past
    ``sys.stderr``, so the descriptors themselves are pointed at a temporary file.
    """
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            status = main(args)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        sink.seek(0)
        return status, sink.read().decode(errors="replace")
