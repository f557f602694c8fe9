"""The base of every management command, modelled on Django's BaseCommand."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TextIO

from resilience.apps.registry import Apps
from resilience.checks import CheckMessage, Tags
from resilience.conf.settings import Settings, load_settings
from resilience.conf.validation import run_checks
from resilience.core.call import Side
from resilience.core.errors import ImproperlyConfigured
from resilience.log import configure_logging


def global_options(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """``--settings`` and ``--env``, as a parent parser. Subcommands add it with the default
    SUPPRESS, so the options work after a subcommand's name too without resetting them."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--settings", default=default, help="settings file (default: "
                        "$RESILIENCE_SETTINGS or settings/settings.toml)")
    parser.add_argument("--env", default=default,
                        help="environment (default: $RESILIENCE_ENV or development)")
    return parser


def add_asyncio_option(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """``--asyncio``; ``execute`` turns it into ASYNCIO = true for the run. Subcommands add
    it with the default SUPPRESS, as ``global_options``."""
    parser.add_argument("--asyncio", action="store_true", default=default,
                        help="use grpc.aio for this run (as ASYNCIO = true does)")


def add_target_option(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """``--target HOST:PORT`` of a client command. Subcommands add it with the default
    SUPPRESS, as ``global_options``, so ``runclient get k --target X`` works too."""
    parser.add_argument("--target", default=default, help="HOST:PORT (default: CLIENT_TARGET)")


def subcommand_options() -> argparse.ArgumentParser:
    """The options every subcommand of a client command takes after its name as well as
    before it: ``--settings``, ``--env``, ``--target`` and ``--asyncio``; a parent parser."""
    parser = global_options()
    add_target_option(parser, argparse.SUPPRESS)
    add_asyncio_option(parser, argparse.SUPPRESS)
    return parser


class CommandError(Exception):
    """Stops a command with a message and no traceback; ``returncode`` is the exit status."""

    def __init__(self, message: str, returncode: int = 1) -> None:
        super().__init__(message)
        self.returncode = returncode


class BaseCommand:
    """Subclass as ``Command`` in ``<app>/management/commands/<name>.py``.

    ``requires_checks`` makes the command refuse to start while ``check`` finds errors;
    ``requires_settings = False`` runs it without loading settings (``startproject`` runs
    where there are none yet).
    """

    help = ""
    requires_checks = False
    requires_settings = True

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.settings: Settings
        self.apps: Apps | None = None

    def create_parser(self, prog: str, name: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=f"{prog} {name}", description=self.help, parents=[global_options(None)]
        )
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's own arguments."""

    def handle(self, **options: Any) -> int | None:
        raise NotImplementedError

    def write(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def report(self, messages: list[CheckMessage]) -> None:
        for message in messages:
            self.stderr.write(message.format(self.settings.env) + "\n")

    def refuse_insecure(self, *sides: Side) -> None:
        """Refuse to serve or call in plaintext where ALLOW_PLAINTEXT is false, or with TLS
        settings that cannot work (E030-E035), with the messages ``check`` prints; a command
        that serves or connects calls this before it does (``connect()`` would raise)."""
        _, messages = run_checks(self.settings, [Tags.security], sides=sides)
        if errors := [m for m in messages if m.is_error]:
            self.report(errors)
            raise CommandError(f"refusing to start: {len(errors)} configuration error(s); "
                               f"run 'manage.py check' for the full list")

    def execute(self, **options: Any) -> int:
        """Load settings, run checks if required, then ``handle``; return the exit status."""
        if not self.requires_settings:
            return self.handle(**options) or 0
        try:
            self.settings = load_settings(options.get("settings"), options.get("env"))
        except ImproperlyConfigured as exc:
            raise CommandError(f"ERROR resilience.E000 settings: {exc}") from None
        if options.get("asyncio"):
            self.settings.core = dataclasses.replace(self.settings.core, ASYNCIO=True)
        configure_logging(self.settings.LOG_LEVEL, self.settings.LOG_FORMAT)
        if self.requires_checks:
            # TLS is each command's own: refuse_insecure checks the sides it uses.
            self.apps, messages = run_checks(self.settings, sides=())
            errors = [m for m in messages if m.is_error]
            if errors:
                self.report(errors)
                raise CommandError(
                    f"refusing to start: {len(errors)} configuration error(s); "
                    f"run 'manage.py check' for the full list"
                )
        return self.handle(**options) or 0
