"""``manage.py runclient``: call the cache service through the client chains."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.core.errors import status_of
from resilience.loadgen import LoadResult, run_load
from resilience.management.base import BaseCommand, CommandError, global_options
from resilience.middleware import CircuitBreaker, Retry
from resilience.transport.client import ResilientChannel, connect

METHODS = {"get": "Get", "store": "Store", "dump": "Dump"}
SERVICE = "cache.CacheService"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


class Command(BaseCommand):
    help = "Call the cache: get KEY | store KEY VALUE | dump | load (a paced load test)."
    requires_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", help="HOST:PORT (default: CLIENT_TARGET)")
        sub = parser.add_subparsers(dest="action", required=True)
        common = [global_options()]
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
        load.add_argument("--concurrency", type=int, default=8, help="client threads")
        load.add_argument("--keys", type=int, default=100, help="distinct keys to use")

    def handle(self, **options: Any) -> int:
        target = options["target"] or self.settings.CLIENT_TARGET
        with connect(target, self.settings) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            try:
                if options["action"] == "load":
                    self._load(channel, stub, options)
                else:
                    self._once(stub, options)
            except grpc.RpcError as exc:
                details = exc.details() if hasattr(exc, "details") else str(exc)
                raise CommandError(f"{status_of(exc).name}: {details}") from None
        return 0

    def _once(self, stub: cache_pb2_grpc.CacheServiceStub, options: dict[str, Any]) -> None:
        action = options["action"]
        if action == "get":
            self.write(stub.Get(cache_pb2.GetReq(key=options["key"])).value.decode("utf-8",
                                                                                    "replace"))
        elif action == "store":
            stub.Store(cache_pb2.StoreReq(key=options["key"], value=options["value"].encode()))
            self.write(f"stored {options['key']}")
        else:
            for item in stub.Dump(cache_pb2.DumpReq()):
                self.write(f"{item.key}\t{item.val.decode('utf-8', 'replace')}")

    def _load(
        self, channel: ResilientChannel, stub: cache_pb2_grpc.CacheServiceStub,
        options: dict[str, Any],
    ) -> None:
        if options["rate"] <= 0 or options["duration"] <= 0 or options["concurrency"] < 1:
            raise CommandError("--rate and --duration must be > 0 and --concurrency >= 1")
        keys = [f"key-{n}" for n in range(max(1, options["keys"]))]
        method = METHODS[options["method"]]
        if method == "Get":
            for key in keys:
                stub.Store(cache_pb2.StoreReq(key=key, value=b"x" * 64))

            def send(i: int) -> object:
                return stub.Get(cache_pb2.GetReq(key=keys[i % len(keys)]))
        else:

            def send(i: int) -> object:
                return stub.Store(cache_pb2.StoreReq(key=keys[i % len(keys)], value=b"x" * 64))

        console = Console(file=self.stdout)
        total = int(options["rate"] * options["duration"])
        with Live(console=console, transient=True, refresh_per_second=4) as live:
            result = run_load(
                send, rate=options["rate"], duration=options["duration"],
                concurrency=options["concurrency"],
                progress=lambda r: live.update(
                    f"{method}: {r.calls}/{total} calls, {r.successes} ok"
                ),
            )
        console.print(self._summary(channel, f"{SERVICE}/{method}", result))

    def _summary(self, channel: ResilientChannel, method: str, result: LoadResult) -> Table:
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
        for name, chain in sorted(channel.middleware.items()):
            for m in chain:
                if isinstance(m, CircuitBreaker):
                    table.add_row(f"breaker {name}", m.state)
        return table
