"""Console logs carry colour codes only when they go to a terminal."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import structlog

from resilience.log import colours_wanted, configure_logging

ESC = "\x1b["


def logged(monkeypatch: pytest.MonkeyPatch, stream: io.TextIOBase) -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("INFO", "console")
    structlog.get_logger("test").info("something_happened", key="value")
    stream.flush()


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    configure_logging("WARNING", "console")


def test_a_log_file_gets_plain_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    with open(tmp_path / "server.log", "w", encoding="utf-8") as file:
        logged(monkeypatch, file)
    text = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert "something_happened" in text and "key=value" in text
    assert ESC not in text


def test_a_terminal_gets_colours_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        assert colours_wanted(terminal)
        logged(monkeypatch, terminal)
        text = os.read(leader, 65536).decode()
        assert "something_happened" in text and ESC in text
        monkeypatch.setenv("NO_COLOR", "1")
        assert not colours_wanted(terminal)
    os.close(leader)
    assert not colours_wanted(io.StringIO())
