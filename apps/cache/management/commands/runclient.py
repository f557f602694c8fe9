"""``manage.py runclient``: call the cache service through the client chains."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.core.errors import ImproperlyConfigured, status_of
from resilience.loadgen import LoadResult, run_load, run_load_async
from resilience.management.base import (
    BaseCommand,
    CommandError,
    add_asyncio_option,
    add_target_option,
    subcommand_options,
)
from resilience.middleware import CircuitBreaker, Retry
from resilience.transport.aio_client import aio_connect
from resilience.transport.client import ChainedChannel, connect
from resilience.transport.exposition import MetricsEndpoint, serve_metrics

METHODS = {"get": "Get", "store": "Store"}
SERVICE = "cache.CacheService"
VALUE = b"x" * 64


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


class Command(BaseCommand):
    help = "Call the cache: get KEY | store KEY VALUE | dump | load (a paced load test)."
    requires_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_target_option(parser)
        add_asyncio_option(parser)
        sub = parser.add_subparsers(dest="action", required=True)
        # The common options work after the subcommand too: runclient get k --target X.
        common = [subcommand_options()]
        get = sub.add_parser("get", help="print the value of KEY", parents=common)
        get.add_argument("key")
        store = sub.add_parser("store", help="store VALUE under KEY", parents=common)
        store.add_argument("key")
        store.add_argument("value")
        sub.add_parser("dump", help="print every key and value", parents=common)
        load = sub.add_parser("load", help="drive load and print a summary", parents=common)
        load.add_argument("--method", choices=["get", "store"], default="get")
        load.add_argument("--rate", type=float, default=200.0, help="calls per second")
        load.add_argument("--duration", type=float, default=5.0, help="seconds")
        load.add_argument("--concurrency", type=int, default=8,
                          help="client threads (asyncio tasks with --asyncio)")
        load.add_argument("--keys", type=int, default=100, help="distinct keys to use")
        load.add_argument("--metrics-hold", type=float, default=0.0, metavar="SECONDS",
                          help="keep /metrics up this long after the summary, for a last scrape")

    def handle(self, **options: Any) -> int:
        self.refuse_insecure("client")  # plaintext refused, or TLS settings that cannot work
        target = options["target"] or self.settings.CLIENT_TARGET
        metrics = self._serve_metrics() if options["action"] == "load" else None
        try:
            if self.settings.ASYNCIO:
                asyncio.run(self._handle_async(target, options))
            else:
                self._handle(target, options)
            if metrics is not None and options["metrics_hold"] > 0:
                self.write(f"metrics held at {metrics.url} for {options['metrics_hold']:g} s")
                self.stdout.flush()
                time.sleep(options["metrics_hold"])
        except grpc.RpcError as exc:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise CommandError(f"{status_of(exc).name}: {details}") from None
        finally:
            if metrics is not None:
                metrics.stop()
        return 0

    def _serve_metrics(self) -> MetricsEndpoint | None:
        """Serve /metrics at METRICS_CLIENT_ADDRESS while the load runs, if enabled."""
        if not self.settings.METRICS_ENABLED:
            return None
        try:
            endpoint = serve_metrics(self.settings.METRICS_CLIENT_ADDRESS,
                                     "METRICS_CLIENT_ADDRESS")
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        self.write(f"metrics at {endpoint.url}")
        self.stdout.flush()
        return endpoint

    def _handle(self, target: str, options: dict[str, Any]) -> None:
        with connect(target, self.settings) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            action = options["action"]
            if action == "get":
                self._write_value(stub.Get(cache_pb2.GetReq(key=options["key"])))
            elif action == "store":
                stub.Store(self._store_request(options))
                self.write(f"stored {options['key']}")
            elif action == "dump":
                for item in stub.Dump(cache_pb2.DumpReq()):
                    self._write_item(item)
            else:
                pace = self._pace(options)
                method, send, prefill = self._load_plan(stub, options)
                used = used_methods(method, prefill)
                before = dict(breaker_states(channel, used))
                try:
                    for request in prefill:
                        stub.Store(request)
                except grpc.RpcError as exc:
                    self._prefill_failed(exc)
                with self._progress(channel, method, used, options) as progress:
                    result = run_load(send, **pace, progress=progress)
                self._write_summary(channel, method, used, before, result)

    async def _handle_async(self, target: str, options: dict[str, Any]) -> None:
        async with aio_connect(target, self.settings) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            action = options["action"]
            if action == "get":
                self._write_value(await stub.Get(cache_pb2.GetReq(key=options["key"])))
            elif action == "store":
                await stub.Store(self._store_request(options))
                self.write(f"stored {options['key']}")
            elif action == "dump":
                async for item in stub.Dump(cache_pb2.DumpReq()):
                    self._write_item(item)
            else:
                pace = self._pace(options)
                method, send, prefill = self._load_plan(stub, options)
                used = used_methods(method, prefill)
                before = dict(breaker_states(channel, used))
                try:
                    for request in prefill:
                        await stub.Store(request)
                except grpc.RpcError as exc:
                    self._prefill_failed(exc)
                with self._progress(channel, method, used, options) as progress:
                    result = await run_load_async(send, **pace, progress=progress)
                self._write_summary(channel, method, used, before, result)

    def _prefill_failed(self, exc: grpc.RpcError) -> None:
        """A load against a failing server is worth running: say so, and go on."""
        self.stderr.write(
            f"could not store the load's keys first ({status_of(exc).name}); "
            f"running the load anyway\n"
        )

    def _write_value(self, reply: cache_pb2.GetResp) -> None:
        self.write(reply.value.decode("utf-8", "replace"))

    def _write_item(self, item: cache_pb2.DumpItem) -> None:
        self.write(f"{item.key}\t{item.val.decode('utf-8', 'replace')}")

    @staticmethod
    def _store_request(options: dict[str, Any]) -> cache_pb2.StoreReq:
        return cache_pb2.StoreReq(key=options["key"], value=options["value"].encode())

    @staticmethod
    def _pace(options: dict[str, Any]) -> dict[str, Any]:
        if options["rate"] <= 0 or options["duration"] <= 0 or options["concurrency"] < 1:
            raise CommandError("--rate and --duration must be > 0 and --concurrency >= 1")
        return {key: options[key] for key in ("rate", "duration", "concurrency")}

    @staticmethod
    def _load_plan(
        stub: cache_pb2_grpc.CacheServiceStub, options: dict[str, Any]
    ) -> tuple[str, Callable[[int], Any], list[cache_pb2.StoreReq]]:
        """The method under load, ``send(i)`` for it (a call on a sync stub, an awaitable on
        an asyncio one), and the Stores that must come first so that every Get finds its key.
        """
        keys = [f"key-{n}" for n in range(max(1, options["keys"]))]
        method = METHODS[options["method"]]
        if method == "Get":

            def send(i: int) -> Any:
                return stub.Get(cache_pb2.GetReq(key=keys[i % len(keys)]))

            return method, send, [cache_pb2.StoreReq(key=key, value=VALUE) for key in keys]

        def send_store(i: int) -> Any:
            return stub.Store(cache_pb2.StoreReq(key=keys[i % len(keys)], value=VALUE))

        return method, send_store, []

    @contextlib.contextmanager
    def _progress(
        self, channel: ChainedChannel, method: str, used: set[str], options: dict[str, Any]
    ) -> Iterator[Callable[[LoadResult], None]]:
        """A live progress line, with the breaker state of each method the load calls,
        while the load runs; it goes when the run ends."""
        total = int(options["rate"] * options["duration"])
        with Live(console=Console(file=self.stdout), transient=True,
                  refresh_per_second=4) as live:
            yield lambda r: live.update(progress_line(method, total, r, channel, used))

    def _write_summary(self, channel: ChainedChannel, method: str, used: set[str],
                       before: dict[str, str], result: LoadResult) -> None:
        table = self._summary(channel, f"{SERVICE}/{method}", used, before, result)
        Console(file=self.stdout).print(table)

    def _summary(self, channel: ChainedChannel, method: str, used: set[str],
                 before: dict[str, str], result: LoadResult) -> Table:
        """The load's figures, and the breakers of the methods it called (only those: a
        stub builds every method's chain, but a Get load says nothing of Dump's breaker),
        with the state each had before the load when it changed."""
        table = Table(title=f"runclient load: {method}", show_header=False)
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("calls", str(result.calls))
        table.add_row("successes", str(result.successes))
        for code, count in sorted(result.codes.items()):
            if code != "OK":
                table.add_row(f"errors {code}", str(count))
        table.add_row("throughput", f"{result.calls / max(result.elapsed, 1e-9):.1f} calls/s")
        for p in (50, 90, 99):
            table.add_row(f"p{p} latency", _ms(result.percentile(p)))
        chain = channel.middleware.get(method, [])
        retries = sum(m.retries for m in chain if isinstance(m, Retry))
        table.add_row("retries", str(retries))
        for name, state in breaker_states(channel, used):
            was = before.get(name, state)
            table.add_row(f"breaker {name}", state if was == state else f"{was} → {state}")
        return table


def used_methods(method: str, prefill: list[Any]) -> set[str]:
    """The full names of the methods a load calls: the one under load, and Store when
    the load stores its keys first."""
    return {f"{SERVICE}/{method}"} | ({f"{SERVICE}/Store"} if prefill else set())


def breaker_states(channel: ChainedChannel,
                   methods: Collection[str] | None = None) -> list[tuple[str, str]]:
    """(method, state) of every circuit breaker on ``channel`` (of ``methods`` only, if
    given), live, sorted by method."""
    return [
        (name, m.state)
        for name, chain in sorted(channel.middleware.items())
        if methods is None or name in methods
        for m in chain
        if isinstance(m, CircuitBreaker)
    ]


def progress_line(method: str, total: int, result: LoadResult, channel: ChainedChannel,
                  methods: Collection[str] | None = None) -> str:
    """The live view of a load: progress, and the breaker state of each method in
    ``methods`` (default: every method on the channel) right now."""
    line = f"{method}: {result.calls}/{total} calls, {result.successes} ok"
    if states := breaker_states(channel, methods):
        line += "; breakers: " + ", ".join(
            f"{name.rpartition('/')[2]} {state}" for name, state in states
        )
    return line
