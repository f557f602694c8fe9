"""A TCP proxy that refuses the first new HTTP/2 streams, for proving grpc-core's
transparent retries with a real network fault instead of a mock.

It sits on 127.0.0.1 between a client and a real server and parses HTTP/2 in both
directions (RFC 9113 §3.4 and §4.1: the client's 24-byte preface, then frames with a
9-byte header of length(3) type(1) flags(1) stream id(4)). For each of the first
``refuse`` new client streams (a HEADERS frame with a new, odd stream id) it:

- forwards the stream's header block (HEADERS and any CONTINUATION) to the server, so
  the server's HPACK decoder stays in step with the client's encoder (§4.3), then sends
  the server RST_STREAM(CANCEL) for it: the server has opened the stream but never gets
  the request message, so a unary handler never runs;
- drops every later client frame of that stream (DATA, WINDOW_UPDATE, ...), crediting
  the client's connection-level send window with a WINDOW_UPDATE for each dropped DATA
  frame, as the server would have on consuming it (§6.9);
- tells the client the stream was never processed, in one of two ways, each inserted at a
  frame boundary of the server->client byte stream:

  ``how="rst_stream"``: RST_STREAM(REFUSED_STREAM = 7), which §8.7 defines as "closed
  prior to any processing having occurred", so that "any request that was sent on the
  reset stream can be safely retried";

  ``how="goaway"``: GOAWAY(NO_ERROR) whose last stream id is the highest stream the proxy
  let through on that connection (§6.8): the refused stream is above it, so it was not
  processed, and the client opens a new connection for later streams.

Frames the server still sends on a refused stream are dropped (the client considers
the stream closed); header blocks are forwarded, to keep the client's HPACK state.

The proxy is bounded: at most ``max_connections`` client connections, every socket has a
short timeout, and the whole proxy stops by itself after ``lifetime`` seconds if nobody
closes it first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_LEN = 9

DATA, HEADERS, RST_STREAM, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x3, 0x7, 0x8, 0x9
END_HEADERS = 0x4
NO_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x7, 0x8

How = Literal["rst_stream", "goaway"]

_POLL_S = 0.1  # how often a blocked socket call wakes up to see whether to stop


@dataclasses.dataclass(frozen=True)
class Frame:
    """One HTTP/2 frame: its header's fields and its payload."""

    type: int
    flags: int
    stream_id: int
    payload: bytes

    def encode(self) -> bytes:
        length = len(self.payload)
        return (
            struct.pack(">BHBBI", length >> 16, length & 0xFFFF, self.type, self.flags,
                        self.stream_id & 0x7FFFFFFF)
            + self.payload
        )


def rst_stream(stream_id: int, code: int) -> Frame:
    return Frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int = NO_ERROR) -> Frame:
    return Frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id & 0x7FFFFFFF, code))


def window_update(stream_id: int, increment: int) -> Frame:
    return Frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment & 0x7FFFFFFF))


class FrameReader:
    """Cuts a byte stream into whole frames, after the client preface if ``preface``."""

    def __init__(self, preface: bool) -> None:
        self._buffer = bytearray()
        self._preface = preface

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """The preface (when it completes with ``data``, else b"") and the frames that
        ``data`` completes, in order."""
        self._buffer += data
        preface = b""
        if self._preface:
            if len(self._buffer) < len(PREFACE):
                return b"", []
            if bytes(self._buffer[: len(PREFACE)]) != PREFACE:
                raise ValueError("not an HTTP/2 client connection preface")
            preface = PREFACE
            del self._buffer[: len(PREFACE)]
            self._preface = False
        frames = []
        while len(self._buffer) >= HEADER_LEN:
            high, low, kind, flags, stream_id = struct.unpack_from(">BHBBI", self._buffer)
            length = high << 16 | low
            if len(self._buffer) < HEADER_LEN + length:
                break
            payload = bytes(self._buffer[HEADER_LEN: HEADER_LEN + length])
            del self._buffer[: HEADER_LEN + length]
            frames.append(Frame(kind, flags, stream_id & 0x7FFFFFFF, payload))
        return preface, frames


class _Side:
    """One socket of a proxied connection; whole frames are written under one lock, so
    frames from two threads interleave only at frame boundaries."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, *chunks: bytes | Frame) -> None:
        data = b"".join(c.encode() if isinstance(c, Frame) else c for c in chunks)
        if data:
            with self.lock:
                self.sock.sendall(data)


@dataclasses.dataclass
class Refusal:
    """One refused stream: which connection (numbered from 1) and which stream id."""

    connection: int
    stream_id: int


class RefusingProxy:
    """Proxies ``target`` at ``.address`` and refuses the first ``refuse`` new client
    streams (across all connections) as the module says. ``refusals`` lists them;
    ``streams`` counts every new client stream seen, ``connections`` every connection."""

    def __init__(
        self,
        target: str,
        refuse: int = 1,
        *,
        how: How = "rst_stream",
        lifetime: float = 30.0,
        max_connections: int = 8,
    ) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host or "127.0.0.1", int(port))
        self._refuse = refuse
        self.how: How = how
        self._max_connections = max_connections
        self._deadline = time.monotonic() + lifetime
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.refusals: list[Refusal] = []
        self.streams = 0
        self.connections = 0
        self.dropped_server_frames = 0
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept, "refuse-accept")

    # --- lifecycle --------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Stop accepting, close every socket and join the threads."""
        self._stop.set()
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> RefusingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def refused(self) -> int:
        with self._lock:
            return len(self.refusals)

    # --- connections ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self.connections >= self._max_connections:
                    client.close()
                    self.errors.append("too many connections")
                    continue
                self.connections += 1
                number = self.connections
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError as exc:
                client.close()
                self.errors.append(f"connect to server: {exc}")
                continue
            for sock in (client, server):
                sock.settimeout(_POLL_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            _Connection(self, number, _Side(client), _Side(server)).start()

    def _claim_refusal(self, connection: int, stream_id: int) -> bool:
        """Count a new client stream; True if it is one of the first ``refuse``."""
        with self._lock:
            self.streams += 1
            if len(self.refusals) >= self._refuse:
                return False
            self.refusals.append(Refusal(connection, stream_id))
            return True

    def _count_dropped_server_frame(self) -> None:
        with self._lock:
            self.dropped_server_frames += 1


class _Connection:
    """One client connection and its server connection: a pump thread each way."""

    def __init__(self, proxy: RefusingProxy, number: int, client: _Side, server: _Side) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server = server
        self.refused: set[int] = set()
        self.max_stream_id = 0
        self.last_accepted = 0  # the highest client stream let through to the server
        self._block: int | None = None  # the stream whose header block is unfinished
        self._block_refused = False

    def start(self) -> None:
        self.proxy._spawn(self._pump, f"refuse-c2s-{self.number}", True)
        self.proxy._spawn(self._pump, f"refuse-s2c-{self.number}", False)

    def _pump(self, from_client: bool) -> None:
        source, sink = (self.client, self.server) if from_client else (self.server, self.client)
        reader = FrameReader(preface=from_client)
        try:
            while not self.proxy._stopping():
                try:
                    data = source.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                preface, frames = reader.feed(data)
                sink.send(preface)
                for frame in frames:
                    if from_client:
                        self._from_client(frame)
                    else:
                        self._from_server(frame)
        except (OSError, ValueError) as exc:
            if not self.proxy._stopping():
                self.proxy.errors.append(f"connection {self.number}: {exc!r}")
        finally:
            # One side gone: let the other see end of stream too.
            for side in (self.client, self.server):
                with contextlib.suppress(OSError):
                    side.sock.shutdown(socket.SHUT_RDWR)

    def _from_client(self, frame: Frame) -> None:
        if self._block is not None:  # only CONTINUATION may follow an open header block
            self.server.send(frame)
            if frame.flags & END_HEADERS:
                stream_id, self._block = self._block, None
                if self._block_refused:
                    self._refuse(stream_id)
            return
        stream_id = frame.stream_id
        if frame.type == HEADERS and stream_id % 2 == 1 and stream_id > self.max_stream_id:
            self.max_stream_id = stream_id
            refuse = self.proxy._claim_refusal(self.number, stream_id)
            if refuse:
                self.refused.add(stream_id)
            else:
                self.last_accepted = stream_id
            self.server.send(frame)
            if frame.flags & END_HEADERS:
                if refuse:
                    self._refuse(stream_id)
            else:
                self._block, self._block_refused = stream_id, refuse
            return
        if stream_id in self.refused:
            if frame.type in (HEADERS, CONTINUATION):
                self.server.send(frame)  # never from a gRPC client; keeps HPACK in step
                if not frame.flags & END_HEADERS:
                    self._block, self._block_refused = stream_id, False
            elif frame.type == DATA and frame.payload:
                # Flow control counts the whole payload, padding included (§6.9.1).
                self.client.send(window_update(0, len(frame.payload)))
            return
        self.server.send(frame)

    def _refuse(self, stream_id: int) -> None:
        """The stream's header block has reached the server: cancel it there, then tell
        the client it was never processed."""
        self.server.send(rst_stream(stream_id, CANCEL))
        if self.proxy.how == "goaway":
            self.client.send(goaway(self.last_accepted))
        else:
            self.client.send(rst_stream(stream_id, REFUSED_STREAM))

    def _from_server(self, frame: Frame) -> None:
        if frame.stream_id in self.refused and frame.type not in (HEADERS, CONTINUATION):
            self.proxy._count_dropped_server_frame()
            return
        self.client.send(frame)


@contextlib.contextmanager
def refusing_proxy(
    target: str, refuse: int = 1, *, how: How = "rst_stream", lifetime: float = 30.0
) -> Iterator[RefusingProxy]:
    """A started ``RefusingProxy`` in front of ``target``, closed after."""
    proxy = RefusingProxy(target, refuse, how=how, lifetime=lifetime)
    try:
        yield proxy
    finally:
        proxy.close()
