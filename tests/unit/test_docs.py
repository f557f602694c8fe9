"""The documentation site documents every setting, every built-in middleware and every
option, from the declarations themselves (scripts/test also builds it: mkdocs --strict)."""

from __future__ import annotations

import dataclasses

import pytest

import resilience.middleware
from resilience.conf.global_settings import GlobalSettings
from resilience.conf.reference import regenerate
from tests.support.processes import ROOT

DOCS = ROOT / "docs"
SETTINGS_PAGE = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GlobalSettings)])
def test_every_setting_is_in_the_settings_reference(name: str) -> None:
    assert f"| `{name}` |" in SETTINGS_PAGE


@pytest.mark.parametrize("name", resilience.middleware.__all__)
def test_every_middleware_has_a_page_with_its_options(name: str) -> None:
    page = DOCS / "reference" / "middleware" / f"{name.lower()}.md"
    assert page.is_file(), f"no page {page.relative_to(ROOT)}"
    body = page.read_text(encoding="utf-8")
    assert f"<!-- generated: options {name} -->" in body
    for field in dataclasses.fields(getattr(resilience.middleware, name).Options):
        assert f"| `{field.name}` |" in body, f"{name}.{field.name} is not documented"


def test_the_generated_reference_matches_the_code() -> None:
    stale = [str(page.relative_to(ROOT)) for page in sorted(DOCS.rglob("*.md"))
             if regenerate(text := page.read_text(encoding="utf-8")) != text]
    assert not stale, f"run 'manage.py gendocs': {stale}"


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
