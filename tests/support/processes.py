"""Run manage.py in a subprocess with a clean environment, never hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def environment(**env: str) -> dict[str, str]:
    """This process's environment without any RESILIENCE_* variable, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
    environ.update(env)
    return environ


def manage(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py ARGS`` in a clean environment plus ``env``; kill it at ``timeout``."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment(**env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
