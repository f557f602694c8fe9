"""The README documents every setting, every built-in middleware and every option."""

from __future__ import annotations

import dataclasses

import pytest

import resilience.middleware
from resilience.conf.global_settings import GlobalSettings
from tests.support.processes import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GlobalSettings)])
def test_every_setting_is_in_the_settings_reference(name: str) -> None:
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("name", resilience.middleware.__all__)
def test_every_middleware_and_option_is_in_the_middleware_reference(name: str) -> None:
    cls = getattr(resilience.middleware, name)
    section = README.split(f"### {name} (", 1)
    assert len(section) == 2, f"no '### {name} (...)' section"
    body = section[1].split("\n### ", 1)[0]
    for field in dataclasses.fields(cls.Options):
        assert f"| `{field.name}` |" in body, f"{name}.{field.name} is not documented"
