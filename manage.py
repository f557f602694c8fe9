#!/usr/bin/env python3
"""Run administrative commands for this project: ``python manage.py help``."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    sys.path.insert(0, str(root))
    os.environ.setdefault("RESILIENCE_SETTINGS", str(root / "settings" / "settings.toml"))
    from resilience.management import execute_from_command_line

    sys.exit(execute_from_command_line(sys.argv))
