"""System checks as data: each problem is a message with a hint, a stable id and a setting.

``manage.py check`` prints them all at once; runserver and runclient refuse to start on
any error. Ids are stable so that docs and users can refer to them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Level = Literal["ERROR", "WARNING"]
#: The prefix of the environment variables dynaconf reads as settings.
ENVVAR_PREFIX = "RESILIENCE_"


@dataclasses.dataclass(frozen=True)
class CheckMessage:
    """One problem. ``origin`` says where the value came from when it was not the settings
    file (an environment variable, the secrets file), so the fix is made where it belongs;
    ``with_origins`` in resilience.conf.validation fills it in for every message."""

    level: Level
    id: str
    setting: str
    msg: str
    hint: str = ""
    origin: str = ""

    @property
    def is_error(self) -> bool:
        return self.level == "ERROR"

    def format(self, env: str) -> str:
        where = f"environment '{env}'"
        if self.origin:
            where += (f", set by environment variable {self.origin}"
                      if self.origin.startswith(ENVVAR_PREFIX) else f", set in {self.origin}")
        text = f"{self.level} {self.id} {self.setting} ({where}): {self.msg}"
        return f"{text}\n    HINT: {self.hint}" if self.hint else text


def error(id: str, setting: str, msg: str, hint: str = "") -> CheckMessage:
    return CheckMessage("ERROR", id, setting, msg, hint)


def warning(id: str, setting: str, msg: str, hint: str = "") -> CheckMessage:
    return CheckMessage("WARNING", id, setting, msg, hint)


def unique(messages: list[CheckMessage]) -> list[CheckMessage]:
    """Drop repeats: one bad option shows up once, not once per method."""
    return list(dict.fromkeys(messages))
