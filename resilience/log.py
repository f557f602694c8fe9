"""Configure structlog for the whole process: readable on a terminal, JSON in production."""

from __future__ import annotations

import os
import sys
from typing import Literal, TextIO

import structlog


def colours_wanted(stream: TextIO) -> bool:
    """Colour codes only for a person at a terminal: a log written to a file or a pipe
    stays plain text, and NO_COLOR (no-color.org) turns them off everywhere."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(level: str = "INFO", fmt: Literal["console", "json"] = "console") -> None:
    """Send structlog output at ``level`` and above to stderr, rendered as ``fmt``
    (``console`` in colour only when stderr is a terminal).

    Loggers are not cached, so calling this again (as tests do) takes effect everywhere.
    """
    renderers: list[structlog.typing.Processor]
    stream = sys.stderr
    if fmt == "console":
        renderers = [structlog.dev.ConsoleRenderer(colors=colours_wanted(stream))]
    elif fmt == "json":
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        raise ValueError(f"log format {fmt!r} is not supported; use 'console' or 'json'")
    try:
        wrapper_class = structlog.make_filtering_bound_logger(level.lower())
    except KeyError:
        raise ValueError(
            f"log level {level!r} is not supported; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        ) from None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=wrapper_class,
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
