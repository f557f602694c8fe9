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
from resilience.metrics.recorder import recorder_for


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
        resolver = ChainResolver(self.settings)
        kinds = self.apps.methods()
        sides = [options["side"]] if options["side"] else ["client", "server"]
        for side in sides:
            # One dict per side, as one channel (or one server) shares it between methods.
            shared: dict[str, Any] = {"settings": self.settings}
            for method in methods:
                setting, _ = resolver.middleware_setting(side, method)
                self.write(f"{side} {method}  (from {setting})")
                specs = resolver.resolve(side, method)
                if not specs:
                    self.write("  (no middleware)")
                left_out = self._left_out(resolver, specs, side, method, kinds[method], shared)
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

    def _left_out(self, resolver: ChainResolver, specs: list[MiddlewareSpec], side: Side,
                  method: str, kind: CallKind, shared: dict[str, Any]) -> dict[str, str]:
        """Build the chain as the client's channel or the server's interceptor builds it
        (same idempotency, same metrics recorder, same mode) and return the paths that left
        it (``MiddlewareNotUsed``) with their reasons: Retry leaves a method not marked
        idempotent, Metrics every chain while METRICS_ENABLED is false."""
        left_out: dict[str, str] = {}
        target = self.settings.CLIENT_TARGET if side == "client" else self.settings.SERVER_ADDRESS
        build_chain(
            specs, _unused_terminal, method=method, kind=kind, side=side, shared=shared,
            target=target, is_async=resolver.is_async,
            idempotent=resolver.is_idempotent(method),
            metrics=recorder_for(self.settings, side, method), left_out=left_out,
        )
        return left_out
