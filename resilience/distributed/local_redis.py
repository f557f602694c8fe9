"""A throwaway redis-server on a loopback port, for tests and benchmarks: no persistence,
killed and restarted on the same port at will (a Redis outage, on demand)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import redis

REDIS_SERVER = "redis-server"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRedis:
    """``redis-server --port PORT --save "" --appendonly no`` on 127.0.0.1.

    ``start`` waits until it answers PING; ``kill`` ends it abruptly (SIGKILL), so its data
    is gone as after a crash; ``start`` again brings it back, empty, on the same port.
    """

    def __init__(self, port: int | None = None, executable: str | None = None) -> None:
        found = executable or shutil.which(REDIS_SERVER) or "/usr/bin/redis-server"
        self.executable = found
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRedis:
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.2,
                            socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    probe.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not start"
                        ) from None
                    time.sleep(0.01)
        finally:
            probe.close()

    def kill(self) -> None:
        """End the server at once (SIGKILL) and wait for it to be gone."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a paused server dies at once too
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers, the
        outage that only timeouts can detect."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause`` (SIGCONT)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A plain client, for looking at or changing what middleware stored."""
        return redis.Redis.from_url(self.url, socket_timeout=1, decode_responses=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
