"""Generate Python code from an app's ``.proto`` files.

protoc runs from the project root with ``-I<root>`` and root-relative proto paths, so the
generated modules import each other by their package path (``from apps.cache.protos import
cache_pb2``) and carry no absolute paths.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from resilience.core.errors import ImproperlyConfigured


def app_protos(app_dir: Path) -> list[Path]:
    """The ``.proto`` files of an app, in a stable order."""
    return sorted((app_dir / "protos").glob("*.proto"))


def generate(proto_files: list[Path], root: Path) -> None:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` next to each proto file.

    ``root`` is the directory the package paths start from; every proto file must lie under it.
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
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *relative,
    ]
    status, output = _run_capturing_output(protoc.main, args)
    if status != 0:
        raise ImproperlyConfigured(
            f"protoc failed (exit status {status}) for {', '.join(relative)}:\n{output.strip()}"
        )


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
