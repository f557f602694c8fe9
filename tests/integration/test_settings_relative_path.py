"""A relative settings path is read from the working directory, wherever the running
script lives (docs/how-to/existing-grpcio-app.md runs `resilience-admin check --settings
settings/settings.toml` from a project's root, with the venv in another checkout)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT, environment

SCRIPT = """\
from resilience.conf.settings import load_settings
print(load_settings("settings/settings.toml", "development").SERVER_ADDRESS)
"""


def settings(directory: Path, address: str) -> None:
    (directory / "settings").mkdir(parents=True)
    (directory / "settings" / "settings.toml").write_text(
        f'[default]\nSERVER_ADDRESS = "{address}"\n\n[development]\n', encoding="utf-8")


def test_a_relative_path_is_not_looked_up_next_to_the_script(tmp_path: Path) -> None:
    # dynaconf looks for a relative file next to the invoked script and in its parents
    # first: a console script in a checkout's .venv/bin found the checkout's settings.
    checkout, project = tmp_path / "checkout", tmp_path / "project"
    settings(checkout, "127.0.0.1:50001")
    settings(project, "127.0.0.1:50002")
    script = checkout / ".venv" / "bin" / "tool.py"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=project, capture_output=True,
                          text=True, timeout=60, env=environment(PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "127.0.0.1:50002"
