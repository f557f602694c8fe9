"""scripts/demo end to end: its session runs against the server it started, or not at all.

The demo runs from a copy of ``scripts/`` whose ``_venv.sh`` only enters the checkout:
this checkout's ``.venv`` is set up already, and the tests must not reinstall it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.support.processes import ROOT, environment

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                       reason="the demo runs .venv/bin/python; make .venv first"),
]


def demo(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(ROOT / "scripts" / "demo", scripts / "demo")
    (scripts / "_venv.sh").write_text(f"set -euo pipefail\ncd '{ROOT}'\n", encoding="utf-8")
    return subprocess.run(
        ["bash", str(scripts / "demo")], capture_output=True, text=True, timeout=80,
        # Its metrics endpoint on a free port, so that a server running here does not
        # stop the demo (that case is the one below, for the gRPC port).
        env=environment(PORT=str(port), RESILIENCE_METRICS_SERVER_ADDRESS="127.0.0.1:0"),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_demo_says_only_what_happened(tmp_path: Path) -> None:
    port = free_port()
    result = demo(tmp_path, port)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"started the server on 127.0.0.1:{port}" in out
    load = out.split("load --method get --rate 300", 1)[1].split("stopping the server", 1)[0]
    gone = out.split("with the server gone:", 1)[1]
    # A Get load reports Get's breaker only, though the stub built Dump's chain too.
    assert "breaker cache.CacheService/Get" in load and "closed" in load, load
    assert "breaker cache.CacheService/Dump" not in out
    assert "each method's breaker" not in out
    assert gone.startswith(" Get's retries back off, then Get's breaker opens"), gone
    assert "UNAVAILABLE (local)" in gone and "closed → open" in gone, gone


def test_the_demo_stops_when_its_server_does_not_start(tmp_path: Path) -> None:
    """Another grpcio server on the port (SO_REUSEPORT on, as grpcio's default is): the
    demo's server refuses the port, and the demo stops before any client step."""
    occupant = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = occupant.add_insecure_port("127.0.0.1:0")
    occupant.start()
    try:
        result = demo(tmp_path, port)
    finally:
        occupant.stop(0)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"demo: the server did not start on 127.0.0.1:{port}" in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr
    assert "runclient" not in result.stdout
