"""``manage.py showchain``: each method's chain as it will run, with effective options."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import grpc

from resilience.conf.factory import ChainFactory
from resilience.core.call import Call
from resilience.management.base import BaseCommand, CommandError


def _hidden(value: Any) -> str:
    """A secret option (a token) is never printed, as Django hides secret settings: a
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


def _shown(field: dataclasses.Field[Any], value: Any) -> str:
    """An option's value as printed: masked when its declaration says it is secret
    (``option(..., secret=True)``), whatever its name."""
    return _hidden(value) if field.metadata.get("secret") else _show(value)


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
        kinds = self.apps.methods()
        sides = [options["side"]] if options["side"] else ["client", "server"]
        for side in sides:
            # One factory per side, as one channel (or one server) builds its chains, so a
            # middleware shown "left out" really leaves the chain, for the reason it gave.
            target = (self.settings.CLIENT_TARGET if side == "client"
                      else self.settings.SERVER_ADDRESS)
            factory = ChainFactory(self.settings, side, is_async=self.settings.ASYNCIO,
                                   target=target)
            for method in methods:
                setting, _ = factory.resolver.middleware_setting(side, method)
                self.write(f"{side} {method}  (from {setting})")
                specs = factory.specs(method)
                if not specs:
                    self.write("  (no middleware)")
                left_out: dict[str, str] = {}
                factory.build(method, kinds[method], _unused_terminal, left_out=left_out)
                for position, spec in enumerate(specs, 1):
                    if spec.path in left_out:
                        reason = left_out[spec.path] or "MiddlewareNotUsed, no reason given"
                        shown = f"(left out of this chain: {reason})"
                    else:
                        shown = ", ".join(
                            f"{f.name}={_shown(f, getattr(spec.options, f.name))}"
                            for f in dataclasses.fields(spec.options)
                        )
                    self.write(f"  {position}. {spec.name} ({spec.path}) {shown}".rstrip())
                self.write()
        return 0
