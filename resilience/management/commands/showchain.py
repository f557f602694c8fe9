"""``manage.py showchain``: each method's chain as it will run, with effective options."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import grpc

from resilience.conf.chains import ChainResolver
from resilience.core.call import Call, CallKind, Side
from resilience.core.chain import MiddlewareSpec, build_chain
from resilience.management.base import BaseCommand, CommandError


def _hidden(value: Any) -> str:
    """Secret options (tokens) are never printed, as Django hides secret settings: a
    table keeps its keys (identities), a string shows only whether it is set."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: '********'" for k in value) + "}"
    return "'********'" if value else "''"


def _show(value: Any) -> str:
    if isinstance(value, grpc.StatusCode):
        return repr(value.name)
    if isinstance(value, frozenset | tuple | list):
        items = sorted(v.name if isinstance(v, grpc.StatusCode) else str(v) for v in value)
        return "[" + ", ".join(items) + "]"
    return repr(value)


def _unused_terminal(call: Call) -> None:
    """showchain builds chains to see which middleware take part; it never calls them."""


class Command(BaseCommand):
    help = "Print each method's resolved chain, outermost first, with its effective options."
    requires_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--side", choices=["client", "server"], help="only this side")
        parser.add_argument("method", nargs="?", help="only this method (package.Service/Method)")

    def handle(self, **options: Any) -> int:
        assert self.apps is not None
        methods = sorted(self.apps.methods())
        if options["method"]:
            if options["method"] not in methods:
                raise CommandError(
                    f"no installed app serves '{options['method']}'; "
                    f"known methods: {', '.join(methods)}"
                )
            methods = [options["method"]]
        resolver = ChainResolver(self.settings)
        kinds = self.apps.methods()
        sides = [options["side"]] if options["side"] else ["client", "server"]
        for side in sides:
            for method in methods:
                setting, _ = resolver.middleware_setting(side, method)
                self.write(f"{side} {method}  (from {setting})")
                specs = resolver.resolve(side, method)
                if not specs:
                    self.write("  (no middleware)")
                built = self._built(resolver, specs, side, method, kinds[method])
                for position, spec in enumerate(specs, 1):
                    fields = dataclasses.fields(spec.options)
                    shown = ", ".join(
                        f"{f.name}={_hidden(getattr(spec.options, f.name))}"
                        if "token" in f.name else
                        f"{f.name}={_show(getattr(spec.options, f.name))}"
                        for f in fields
                    )
                    if spec.factory not in built:
                        shown = "(left out of this chain: MiddlewareNotUsed for this method)"
                    self.write(f"  {position}. {spec.name} ({spec.path}) {shown}".rstrip())
                self.write()
        return 0

    def _built(self, resolver: ChainResolver, specs: list[MiddlewareSpec], side: Side,
               method: str, kind: CallKind) -> set[type]:
        """The classes that really take part when the chain is built: a middleware may
        leave a method's chain at build time (Retry on a method not marked idempotent)."""
        _, used = build_chain(
            specs, _unused_terminal, method=method, kind=kind, side=side,
            shared={"settings": resolver.settings},
            is_async=resolver.is_async, idempotent=resolver.is_idempotent(method),
        )
        # A factory may build a subclass (CircuitBreaker with storage = "redis").
        return {cls for instance in used for cls in type(instance).__mro__}
