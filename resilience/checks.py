"""System checks as data: each problem is a message with a hint, a stable id and a setting.

``manage.py check`` prints them all at once; runserver and runclient refuse to start on
any error. Ids are stable so that docs and users can refer to them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Level = Literal["ERROR", "WARNING"]


@dataclasses.dataclass(frozen=True)
class CheckMessage:
    level: Level
    id: str
    setting: str
    msg: str
    hint: str = ""

    @property
    def is_error(self) -> bool:
        return self.level == "ERROR"

    def format(self, env: str) -> str:
        text = f"{self.level} {self.id} {self.setting} (environment '{env}'): {self.msg}"
        return f"{text}\n    HINT: {self.hint}" if self.hint else text


def error(id: str, setting: str, msg: str, hint: str = "") -> CheckMessage:
    return CheckMessage("ERROR", id, setting, msg, hint)


def warning(id: str, setting: str, msg: str, hint: str = "") -> CheckMessage:
    return CheckMessage("WARNING", id, setting, msg, hint)


def unique(messages: list[CheckMessage]) -> list[CheckMessage]:
    """Drop repeats: one bad option shows up once, not once per method."""
    return list(dict.fromkeys(messages))
