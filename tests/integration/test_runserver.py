"""``manage.py runserver`` and ``runclient`` as real processes talking real gRPC on loopback."""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import processes
from tests.support.processes import ROOT

GRACE = 5.0  # SERVER_GRACE_PERIOD of the testing environment
SHORT_GRACE = 2.0  # set through the environment where a test waits out the grace period
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING_LINE = re.compile(r"^serving cache\.CacheService on 127\.0\.0\.1:(\d+) \(")
METRICS_LINE = re.compile(r"^metrics at (http://\S+)$")

pytestmark = pytest.mark.timeout(60)


def environment(**overrides: str) -> dict[str, str]:
    return processes.environment(**{"RESILIENCE_ENV": "testing", **overrides})


class RunningServer:
    """A ``manage.py runserver`` process; ``stdout`` lines arrive on a queue."""

    def __init__(self, proc: subprocess.Popen[str], stderr: tempfile._TemporaryFileWrapper[str]):
        self.proc = proc
        self.stderr_file = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.address = ""
        #: The /metrics endpoint's URL, as runserver reports it (METRICS_SERVER_ADDRESS).
        self.metrics_url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_serving(self, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if metrics := METRICS_LINE.match(line):
                self.metrics_url = metrics.group(1)
            match = SERVING_LINE.match(line)
            if match:
                assert "environment 'testing'" in line, line
                self.address = f"127.0.0.1:{match.group(1)}"
                return self.address
        raise AssertionError(f"runserver did not report serving; stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        self.stderr_file.flush()
        return Path(self.stderr_file.name).read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def runserver(*args: str, **env: str) -> Iterator[RunningServer]:
    with tempfile.NamedTemporaryFile("w+", suffix=".log", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "127.0.0.1:0", *args],
            cwd=ROOT, env=environment(**env), text=True, stdout=subprocess.PIPE, stderr=stderr,
        )
        try:
            server = RunningServer(proc, stderr)
            server.wait_serving()
            yield server
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def runclient(address: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return processes.manage(
        "runclient", "--target", address, *args, timeout=timeout, RESILIENCE_ENV="testing"
    )


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with runserver() as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cache.CacheService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == SERVING, service
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in reply.list_services_response.service}
    assert "cache.CacheService" in names
    assert "grpc.health.v1.Health" in names


def test_runclient_store_get_dump(server: RunningServer) -> None:
    stored = runclient(server.address, "store", "k", "v")
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.strip() == "stored k"
    got = runclient(server.address, "get", "k")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "v\n"
    dumped = runclient(server.address, "dump")
    assert dumped.returncode == 0, dumped.stderr
    assert "k\tv" in dumped.stdout.splitlines()


def test_runclient_takes_common_options_after_the_subcommand(server: RunningServer) -> None:
    stored = processes.manage("runclient", "store", "after", "v2", "--target", server.address,
                              "--env", "testing")
    assert (stored.returncode, stored.stdout) == (0, "stored after\n"), stored.stderr
    got = processes.manage("runclient", "get", "after", "--target", server.address,
                           "--asyncio", RESILIENCE_ENV="testing")
    assert (got.returncode, got.stdout) == (0, "v2\n"), got.stderr


def test_runclient_get_missing(server: RunningServer) -> None:
    result = runclient(server.address, "get", "missing")
    assert result.returncode not in (0, None)
    assert "Traceback" not in result.stdout + result.stderr
    assert "NOT_FOUND" in result.stderr
    assert "key 'missing' not found" in result.stderr


def test_runclient_load_summary(server: RunningServer) -> None:
    result = runclient(server.address, "load", "--method", "get", "--rate", "200",
                       "--duration", "1", "--concurrency", "4", timeout=40)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    for measure in ("calls", "successes", "p50 latency", "p90 latency", "p99 latency",
                    "retries"):
        assert measure in rows, out
    assert int(rows["calls"]) >= 100, out  # 200/s for 1 s, with a wide margin
    assert int(rows["successes"]) == int(rows["calls"]), out
    assert int(rows["retries"]) == 0, out
    for p in (50, 90, 99):
        assert rows[f"p{p} latency"].endswith(" ms"), out
    assert rows["breaker cache.CacheService/Get"] == "closed", out
    # The stub built Dump's chain too, but a Get load says nothing of Dump's breaker.
    assert [m for m in rows if m.startswith("breaker ")] == ["breaker cache.CacheService/Get"]


@pytest.mark.parametrize("how", ["argument", "setting"])
def test_runserver_refuses_an_address_in_use(how: str) -> None:
    """grpcio's servers set SO_REUSEPORT, so a second one on a taken port would bind
    silently and share it; runserver refuses the port, naming it and where it came from."""
    occupant = grpc.server(ThreadPoolExecutor(max_workers=1))  # grpcio's default options
    port = occupant.add_insecure_port("127.0.0.1:0")
    occupant.start()
    try:
        address = f"127.0.0.1:{port}"
        if how == "argument":
            args, env, source = [address], {}, "runserver's HOST:PORT"
        else:  # and on the asyncio server
            args, env, source = ["--asyncio"], {"RESILIENCE_SERVER_ADDRESS": address}, \
                "SERVER_ADDRESS"
        result = processes.manage("runserver", *args, timeout=30, RESILIENCE_ENV="testing",
                                  RESILIENCE_LOG_LEVEL="INFO", **env)
    finally:
        occupant.stop(0)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"cannot start the server: cannot listen on {address} ({source}): the address "
            f"is already in use") in result.stderr
    assert "serving cache.CacheService" not in result.stdout
    assert "Traceback" not in result.stderr
    # Its log went to a pipe: plain text, no colour codes.
    assert "metrics_serving" in result.stderr
    assert "\x1b[" not in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_loads_at_once_each_serve_their_metrics(server: RunningServer) -> None:
    """runclient load's /metrics picks a free port unless METRICS_CLIENT_ADDRESS says one
    (the first load runs in development, the environment a person runs two loads in)."""
    explicit = f"127.0.0.1:{free_port()}"
    load = ["runclient", "--target", server.address, "load", "--rate", "40",
            "--duration", "1", "--concurrency", "2", "--keys", "5"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [
            pool.submit(processes.manage, *load, timeout=40, RESILIENCE_ENV="development"),
            pool.submit(processes.manage, *load, timeout=40, RESILIENCE_ENV="testing",
                        RESILIENCE_METRICS_CLIENT_ADDRESS=explicit),
        ]
        results = [run.result() for run in runs]
    urls = []
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        (url,) = [m.group(1) for line in result.stdout.splitlines()
                  if (m := METRICS_LINE.match(line))]
        urls.append(url)
    assert urls[1] == f"http://{explicit}/metrics"
    assert urls[0] != urls[1] and urls[0].startswith("http://127.0.0.1:")


def test_load_refuses_a_metrics_address_in_use(server: RunningServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = processes.manage(
            "runclient", "--target", server.address, "load", "--duration", "1", timeout=30,
            RESILIENCE_ENV="testing", RESILIENCE_METRICS_CLIENT_ADDRESS=address,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"cannot serve metrics on {address} (METRICS_CLIENT_ADDRESS): Address already "
            f"in use") in result.stderr
    assert "Traceback" not in result.stderr


def watch_health(address: str, statuses: queue.Queue[object], ready: threading.Event) -> None:
    """Stream Watch("") statuses onto ``statuses`` until the stream ends; errors go too."""
    try:
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30):
                statuses.put(reply.status)
                ready.set()
    except grpc.RpcError as exc:
        statuses.put(exc.code())
    finally:
        ready.set()
        statuses.put(None)


def drain(statuses: queue.Queue[object], timeout: float) -> list[object]:
    seen: list[object] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            item = statuses.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            break
        if item is None:
            break
        seen.append(item)
        if item == NOT_SERVING:
            break
    return seen


# Shutdown is the same on the asyncio server (ASYNCIO from the environment here; the
# --asyncio flag is covered in test_aio_smoke).
MODES = pytest.mark.parametrize("mode", [{}, {"RESILIENCE_ASYNCIO": "true"}],
                                ids=["sync", "asyncio"])


@MODES
def test_sigterm_reports_not_serving_and_exits_zero(mode: dict[str, str]) -> None:
    # The open Watch stream is an in-flight call, so the server waits out its grace period;
    # a shorter one (an environment override) keeps the test quick.
    with runserver(RESILIENCE_SERVER_GRACE_PERIOD=str(SHORT_GRACE), **mode) as server:
        statuses: queue.Queue[object] = queue.Queue()
        ready = threading.Event()
        watcher = threading.Thread(
            target=watch_health, args=(server.address, statuses, ready), daemon=True
        )
        watcher.start()
        assert ready.wait(10), "the health Watch stream sent nothing"
        assert statuses.get(timeout=1) == SERVING
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        seen = drain(statuses, timeout=SHORT_GRACE + 5)
        assert NOT_SERVING in seen, (seen, server.stderr())
        # Health goes NOT_SERVING first, while in-flight calls (this Watch) still run.
        assert server.proc.poll() is None, "NOT_SERVING arrived only after the exit"
        returncode = server.proc.wait(timeout=SHORT_GRACE + 10)
        elapsed = time.monotonic() - started
        assert returncode == 0, server.stderr()
        assert elapsed < SHORT_GRACE + 5, elapsed
        assert "Traceback" not in server.stderr()
        watcher.join(timeout=10)
        assert not watcher.is_alive()


@MODES
def test_sigint_exits_zero(mode: dict[str, str]) -> None:
    with runserver(**mode) as server:
        with grpc.insecure_channel(server.address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            assert reply.status == SERVING
        started = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=GRACE + 10) == 0, server.stderr()
        assert time.monotonic() - started < GRACE + 5
        assert "Traceback" not in server.stderr()
