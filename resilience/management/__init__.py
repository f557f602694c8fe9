"""manage.py: find commands by convention and run them, as Django's management does."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import describe_exception
from resilience.management.base import BaseCommand, CommandError

GLOBAL_OPTIONS = frozenset({"--settings", "--env"})

__all__ = ["BaseCommand", "CommandError", "call_command", "execute_from_command_line"]


def _commands_in(package: str) -> dict[str, str]:
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        return {}
    return {
        info.name: package
        for info in pkgutil.iter_modules(module.__path__)
        if not info.ispkg and not info.name.startswith("_")
    }


def _installed_apps(argv: list[str]) -> tuple[tuple[str, ...], str]:
    """The apps named by the settings that ``argv`` selects, and why they did not load."""
    from resilience.conf.settings import load_settings

    def flag(name: str) -> str | None:
        for i, arg in enumerate(argv):
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    try:
        return load_settings(flag("--settings"), flag("--env")).INSTALLED_APPS, ""
    except ImproperlyConfigured as exc:
        return (), str(exc)


def find_commands(argv: list[str] | None = None) -> tuple[dict[str, str], str]:
    """Command name -> package, and why apps' commands are missing if the settings failed.

    An app's command of the same name overrides the built-in one.
    """
    commands = _commands_in("resilience.management.commands")
    apps, problem = _installed_apps(argv or [])
    for app in apps:
        try:
            commands.update(_commands_in(f"{app}.management.commands"))
        except Exception as exc:  # a broken app: check reports it (E007); others run
            problem = problem or (f"ERROR resilience.E007 INSTALLED_APPS: app '{app}' cannot "
                                  f"be imported: {describe_exception(exc)}")
    return commands, problem


def load_command(name: str, argv: list[str] | None = None, **streams: Any) -> BaseCommand:
    commands, problem = find_commands(argv)
    if name not in commands:
        if problem:
            raise CommandError(problem if problem.startswith("ERROR ")
                               else f"ERROR resilience.E000 settings: {problem}")
        raise CommandError(
            f"unknown command '{name}'; available: {', '.join(sorted(commands))}", 2
        )
    try:
        module = importlib.import_module(f"{commands[name]}.{name}")
    except Exception as exc:  # the command's own code is broken: say where, briefly
        raise CommandError(f"command '{name}' ({commands[name]}.{name}) does not import: "
                           f"{describe_exception(exc)}") from None
    return module.Command(**streams)


def call_command(name: str, *args: str, **streams: Any) -> int:
    """Run a command as from the command line (for tests); return its exit status."""
    command = load_command(name, list(args), **streams)
    options = vars(command.create_parser("manage.py", name).parse_args(list(args)))
    return command.execute(**options)


def _usage(prog: str, argv: list[str]) -> str:
    lines = [f"usage: {prog} COMMAND [options]", "", "commands:"]
    commands, problem = find_commands(argv)
    for name, package in sorted(commands.items()):
        try:
            help_text = importlib.import_module(f"{package}.{name}").Command.help
        except Exception as exc:
            help_text = f"(does not import: {describe_exception(exc)})"
        lines.append(f"  {name:<12} {help_text}")
    lines.append("")
    if problem:
        lines.append(f"(apps' commands are missing: {problem})")
    lines.append(f"'{prog} COMMAND --help' describes a command.")
    return "\n".join(lines)


def _command_first(args: list[str]) -> list[str]:
    """Accept the global options before the command too: ``manage.py --env testing check``."""
    leading: list[str] = []
    while args and args[0].split("=", 1)[0] in GLOBAL_OPTIONS:
        takes = 1 if "=" in args[0] else 2
        leading, args = leading + args[:takes], args[takes:]
    return args[:1] + leading + args[1:] if args else leading


def execute_from_command_line(argv: list[str] | None = None) -> int:
    """Entry point of manage.py: ``manage.py COMMAND [options]``."""
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name
    rest = _command_first(argv[1:])
    if not rest or rest[0] == "help" or rest[0].startswith("-"):
        sys.stdout.write(_usage(prog, rest) + "\n")
        return 0
    try:
        command = load_command(rest[0], rest[1:])
        options = vars(command.create_parser(prog, rest[0]).parse_args(rest[1:]))
        return command.execute(**options)
    except CommandError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.returncode
    except KeyboardInterrupt:
        return 130


def main() -> None:
    """Console entry point (``resilience-admin``)."""
    os.environ.setdefault("RESILIENCE_SETTINGS", str(Path.cwd() / "settings" / "settings.toml"))
    # As manage.py and ``python -m`` do: the project's own modules (PROTO_MODULES, its
    # middleware) import from where the command runs, not only once installed.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    sys.exit(execute_from_command_line(sys.argv))
