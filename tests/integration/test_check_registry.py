"""Checks are data (issue 14): registered functions with tags and ids, selected by
``check --tag``, listed by ``--list-tags``, judged by ``--fail-level``, silenced by
``SILENCED_CHECKS``; and the interceptors act on messages' fields, never on their text."""

from __future__ import annotations

import dataclasses
import io
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from resilience import ImproperlyConfigured
from resilience.checks import CheckMessage, CheckRegistry, Tags, error, registry, warning
from resilience.conf.settings import load_settings
from resilience.conf.validation import CheckContext, run_checks
from resilience.interceptors import settings as interceptor_settings
from resilience.management import CommandError, call_command
from resilience.management.base import BaseCommand
from tests.support.processes import ROOT, manage
from tests.support.servers import make_settings

CHECKS_PAGE = (ROOT / "docs" / "reference" / "checks.md").read_text(encoding="utf-8")

# One error of each of three tags: a bad value, a misspelled setting, a broken chain.
MIXED = dict(
    SERVER_GRACE_PERIOD=-1.0,  # settings: E001
    SERVER_MIDDLEWARES=["resilience.middleware.RequestLogging"],  # names: E070
    CLIENT_MIDDLEWARE=["resilience.middleware.Retyr"],  # middleware: E002
)
# Only warnings: a setting of the user's own (W001) and options aimed at a method whose
# chain lacks their middleware (W070).
WARNINGS_ONLY = """\
    [testing]
    INSTALLED_APPS = ["apps.cache"]
    MY_OWN_THING = 1
    {extra}
    [testing.CLIENT_METHOD_MIDDLEWARE]
    "cache.CacheService/Store" = ["resilience.middleware.Timeout"]

    [testing.CLIENT_METHOD_OPTIONS."cache.CacheService/Store".Retry]
    max_attempts = 2
"""


def ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(textwrap.dedent(WARNINGS_ONLY).format(extra=extra), encoding="utf-8")
    return path


def check(*args: str) -> tuple[int, str, str]:
    """``manage.py check ARGS`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        status = call_command("check", *args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"{exc}\n")
        status = exc.returncode
    return status, out.getvalue(), err.getvalue()


# The registry.
def test_tags_select_the_checks_that_run() -> None:
    settings = make_settings(**MIXED)
    assert ids(run_checks(settings)[1]) == ["resilience.E001", "resilience.E002",
                                            "resilience.E070"]
    assert ids(run_checks(settings, [Tags.settings])[1]) == ["resilience.E001"]
    assert ids(run_checks(settings, ["names"])[1]) == ["resilience.E070"]
    assert ids(run_checks(settings, [Tags.middleware, Tags.settings])[1]) == [
        "resilience.E001", "resilience.E002"]
    assert run_checks(settings, [Tags.redis, Tags.security])[1] == []


def test_an_apps_own_check_runs_under_the_apps_tag() -> None:
    settings = make_settings(CACHE_MAX_KEY_BYTES=0)
    assert ids(run_checks(settings, [Tags.apps])[1]) == ["cache.E001"]
    assert run_checks(settings, [Tags.settings])[1] == []


def test_a_check_that_could_not_look_says_why() -> None:
    # The chains need the apps' methods: with an app that does not import, --tag
    # middleware reports that app's E007 rather than passing on an unchecked chain.
    settings = make_settings(INSTALLED_APPS=["apps.cache", "no_such_app"])
    assert ids(run_checks(settings, [Tags.middleware])[1]) == ["resilience.E007"]
    assert run_checks(settings, [Tags.settings, Tags.security])[1] == []


def test_deployment_checks_run_only_when_asked() -> None:
    settings = make_settings(SERVER_ADDRESS="0.0.0.0:50051")
    assert run_checks(settings, [Tags.security])[1] == []
    found = run_checks(settings, [Tags.security], include_deploy=True)[1]
    assert ids(found) == ["resilience.W030"]
    assert "security" in registry.tags_available()
    deploy_only = {i for c in registry.checks(include_deploy=True) if c.deploy for i in c.ids}
    assert deploy_only == {"resilience.W030", "resilience.W031", "resilience.W032"}


def test_tls_is_checked_for_the_sides_asked() -> None:
    settings = make_settings(ALLOW_PLAINTEXT=False)
    assert ids(run_checks(settings, [Tags.security])[1]) == ["resilience.E030",
                                                             "resilience.E031"]
    assert ids(run_checks(settings, [Tags.security], sides=["client"])[1]) == [
        "resilience.E031"]


def test_a_check_must_declare_the_ids_it_reports() -> None:
    # Declared ids are how SILENCED_CHECKS tells a known id from a typo.
    local = CheckRegistry()

    @local.register("mine", ids=("resilience.W998",))
    def declared(ctx: Any) -> list[CheckMessage]:
        return [warning("resilience.W998", "X", "declared"), error("mine.E001", "X", "own")]

    @local.register("other")
    def undeclared(ctx: Any) -> list[CheckMessage]:
        return [error("resilience.E999", "X", "not declared")]

    assert ids(local.run(None, ["mine"])) == ["resilience.W998", "mine.E001"]
    assert local.tags_available() == {"mine", "other"}
    with pytest.raises(TypeError, match=r"reported resilience\.E999, which its register"):
        local.run(None)
    with pytest.raises(TypeError, match="at least one tag"):
        local.register()


def test_the_docs_list_every_declared_id() -> None:
    table = set(re.findall(r"^\| ([EW]\d{3}) \|", CHECKS_PAGE, re.M)) - {"E000"}  # E000: loading
    declared = {i.removeprefix("resilience.") for i in registry.ids()}
    assert declared == table


def test_the_docs_describe_every_tag() -> None:
    for tag in Tags:
        assert f"| `{tag}` |" in CHECKS_PAGE, tag


def test_every_id_the_code_reports_is_declared() -> None:
    # The registry raises on an undeclared id at run time; this finds one that no test
    # provokes. E000 is the settings file's own, reported before any check can run.
    found = set()
    for path in (ROOT / "resilience").rglob("*.py"):
        found |= set(re.findall(r'"(resilience\.[DIWEC]\d{3})"', path.read_text("utf-8")))
    assert found - {"resilience.E000"} <= registry.ids()


def test_every_message_names_its_setting() -> None:
    settings = make_settings(**MIXED, SILENCED_CHECKS=["resilience.W999"], ASYNCIO=True,
                             CACHE_MAX_KEY_BYTES=0)
    messages = run_checks(settings, include_deploy=True)[1]
    assert len(messages) >= 5
    assert all(m.setting for m in messages), messages


# The command.
def test_check_tag_runs_only_those_checks(tmp_path: Path) -> None:
    path = write(tmp_path)
    status, out, err = check("--settings", str(path), "--env", "testing", "--tag", "settings")
    assert status == 0 and err == "", err
    assert "check (tags: settings): no errors, 0 warning(s)" in out
    status, out, err = check("--settings", str(path), "--env", "testing",
                             "--tag", "names", "-t", "settings")
    assert status == 0
    assert "resilience.W001" in err and "resilience.W070" in err
    assert "check (tags: names, settings): no errors, 2 warning(s)" in out


def test_an_unknown_tag_is_refused_with_did_you_mean() -> None:
    status, _, err = check("--env", "testing", "--tag", "securty")
    assert status == 2
    assert "no check has the tag 'securty' (did you mean 'security'?)" in err
    assert "tags: apps, asyncio, middleware, names, redis, security, settings" in err


def test_list_tags_lists_every_tag_with_its_ids() -> None:
    status, out, _ = check("--env", "testing", "--list-tags")
    assert status == 0
    lines = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert set(lines) == {str(tag) for tag in Tags}
    assert lines["settings"].split() == ["E001", "W034"]
    assert "E002" in lines["middleware"] and "W073" in lines["names"]
    assert "W030" not in lines["security"]
    _, deploy, _ = check("--env", "testing", "--list-tags", "--deploy")
    assert "W030" in dict(line.split(maxsplit=1) for line in deploy.splitlines())["security"]


def test_fail_level_decides_the_exit_status(tmp_path: Path) -> None:
    path = str(write(tmp_path))
    at_error = manage("check", "--settings", path, "--env", "testing")
    assert at_error.returncode == 0, at_error.stderr
    assert "check: no errors, 2 warning(s)" in at_error.stdout
    at_warning = manage("check", "--settings", path, "--env", "testing",
                        "--fail-level", "WARNING")
    assert at_warning.returncode == 1, at_warning.stdout
    assert "check found 0 error(s) and 2 warning(s) (--fail-level WARNING)" in (
        at_warning.stderr)
    assert "Traceback" not in at_warning.stderr


def test_fail_level_critical_passes_errors_and_reports_them(tmp_path: Path) -> None:
    path = write(tmp_path, extra="SERVER_GRACE_PERIOD = -1.0")
    status, out, err = check("--settings", str(path), "--env", "testing",
                             "--fail-level", "CRITICAL")
    assert status == 0 and "resilience.E001" in err
    assert "check: 1 error(s) and 2 warning(s), none at --fail-level CRITICAL" in out
    status, _, err = check("--settings", str(path), "--env", "testing", "--fail-level", "INFO")
    assert status == 1 and "check found 1 error(s) and 2 warning(s) (--fail-level INFO)" in err


# SILENCED_CHECKS.
def test_silenced_checks_leave_check_and_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, extra='SILENCED_CHECKS = ["resilience.W070"]')
    status, out, err = check("--settings", str(path), "--env", "testing",
                             "--fail-level", "WARNING")
    assert status == 1
    assert "resilience.W001" in err and "resilience.W070" not in err
    assert "found 0 error(s) and 1 warning(s)" in err
    assert "; 1 silenced by SILENCED_CHECKS" in err
    both = write(tmp_path, extra='SILENCED_CHECKS = ["resilience.W070", "resilience.W001"]')
    status, out, err = check("--settings", str(both), "--env", "testing",
                             "--fail-level", "WARNING")
    assert status == 0 and err == "", err
    assert "no errors, 0 warning(s)" in out and "2 silenced by SILENCED_CHECKS" in out


@pytest.mark.parametrize(("entry", "meant"), [
    ("W070", "resilience.W070"),  # the prefix left out
    ("resilience.W07", "resilience.W070"),
    ("resilience.w070", "resilience.W070"),  # case
    ("resilience.W074", "resilience.W070"),  # the same level, the longest shared start
    ("cahce.E001", "cache.E001"),  # an installed app's label, misspelled
    ("resilience.E999", "resilience.E009"),
    ("nothing.W001", None),
    ("resilience.X123", None),
])
def test_an_unknown_silenced_id_is_reported(entry: str, meant: str | None) -> None:
    messages = run_checks(make_settings(SILENCED_CHECKS=[entry]))[1]
    [message] = messages
    assert (message.id, message.setting, message.obj) == ("resilience.W073", "SILENCED_CHECKS",
                                                          entry)
    assert f"'{entry}' is the id of no check, so it silences nothing" in message.msg
    assert (f"(did you mean '{meant}'?)" in message.msg) if meant else (
        "did you mean" not in message.msg)


def test_known_and_app_ids_are_taken_as_they_are() -> None:
    # An installed app's own ids cannot be known ahead, so its label is enough.
    silenced = ["resilience.W070", "resilience.W030", "cache.E001", "cache.W123"]
    assert run_checks(make_settings(SILENCED_CHECKS=silenced))[1] == []
    assert run_checks(make_settings(SILENCED_CHECKS=silenced, CACHE_MAX_KEY_BYTES=0))[1] == []


class _Refusing(BaseCommand):
    """A command that requires checks and refuses plaintext, as runserver does."""

    requires_checks = True

    def handle(self, **options: Any) -> int:
        self.refuse_insecure("server")
        self.write("started")
        return 0


def test_silenced_errors_do_not_refuse_a_start(tmp_path: Path) -> None:
    base = '[testing]\nINSTALLED_APPS = ["apps.cache"]\nALLOW_PLAINTEXT = false\n'
    path = tmp_path / "settings.toml"
    path.write_text(base + 'SERVER_MIDDLEWARES = []\n', encoding="utf-8")  # E070
    with pytest.raises(CommandError, match="refusing to start: 1 configuration error"):
        _Refusing(io.StringIO(), io.StringIO()).execute(settings=str(path), env="testing")
    path.write_text(base + 'SERVER_MIDDLEWARES = []\nSILENCED_CHECKS = ["resilience.E070"]\n',
                    encoding="utf-8")
    err = io.StringIO()
    with pytest.raises(CommandError, match="refusing to start"):  # plaintext: E030
        _Refusing(io.StringIO(), err).execute(settings=str(path), env="testing")
    assert "resilience.E030" in err.getvalue() and "E070" not in err.getvalue()
    path.write_text(base + 'SERVER_MIDDLEWARES = []\n'
                    'SILENCED_CHECKS = ["resilience.E070", "resilience.E030"]\n',
                    encoding="utf-8")
    out = io.StringIO()
    assert _Refusing(out, io.StringIO()).execute(settings=str(path), env="testing") == 0
    assert out.getvalue() == "started\n"


# The interceptors.
def _with_text_withheld(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every message's text meaningless: the interceptors must not need it."""
    real = interceptor_settings.run_checks

    def withheld(*args: Any, **kwargs: Any) -> tuple[Any, list[CheckMessage]]:
        apps, messages = real(*args, **kwargs)
        return apps, [dataclasses.replace(m, msg="(withheld)", hint="") for m in messages]

    monkeypatch.setattr(interceptor_settings, "run_checks", withheld)


# The application's own service, which no installed app declares.
OWN = dict(
    CLIENT_METHOD_MIDDLEWARE={"shop.Orders/Place": ["resilience.middleware.Hedging"]},
    CLIENT_METHOD_OPTIONS={"shop.Orders/Place": {"Hedging": {"max_attempts": 2}}},
    CLIENT_OPTIONS={"Hedging": {"max_attempts": 2}},  # listed by Place's chain alone
    IDEMPOTENT_METHODS=["shop.Orders/Place"],
    SERVER_OPTIONS={"FaultInjection": {"methods": ["shop.Orders/Place"]}},
    SERVER_MIDDLEWARE=["resilience.middleware.FaultInjection"],
)


def test_interceptors_keep_their_adjustments_without_the_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # check itself refuses these names (E008, E050, E072) and calls Hedging's options
    # unused (W003); the interceptors serve the application's methods and pass them.
    settings = make_settings(**OWN)
    assert {"resilience.E008", "resilience.E050", "resilience.E072", "resilience.W003"} <= set(
        ids(run_checks(settings)[1]))
    _with_text_withheld(monkeypatch)
    with capture_logs() as logs:
        interceptor_settings.load(settings)
    # Only the interceptors' own word that those names went unchecked.
    assert [log["id"] for log in logs if log["event"] == "settings_warning"] == [
        "resilience.W072"]
    # A method that an installed app's service lacks is still refused, by its name field.
    bad = make_settings(IDEMPOTENT_METHODS=["cache.CacheService/Gett"])
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E050 IDEMPOTENT_METHODS"):
        interceptor_settings.load(bad)


def test_interceptors_read_no_message_text() -> None:
    source = Path(interceptor_settings.__file__).read_text(encoding="utf-8")
    assert "import re" not in source and "re.search" not in source
    # The one use of a message's text is to log it.
    assert source.count(".msg") == 1 and "message=message.msg" in source


def test_interceptors_honour_silenced_checks() -> None:
    settings = make_settings(MY_OWN_THING=1)
    with capture_logs() as logs:
        interceptor_settings.load(settings)
    assert [log["id"] for log in logs] == ["resilience.W001"]
    with capture_logs() as logs:
        interceptor_settings.load(make_settings(MY_OWN_THING=1,
                                                SILENCED_CHECKS=["resilience.W001"]))
    assert logs == []
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E002"):
        interceptor_settings.load(make_settings(CLIENT_MIDDLEWARE=["x.Nope"]))
    interceptor_settings.load(make_settings(CLIENT_MIDDLEWARE=["x.Nope"],
                                            SILENCED_CHECKS=["resilience.E002"]))


def test_the_context_is_computed_once_per_run() -> None:
    ctx = CheckContext(load_settings(ROOT / "settings" / "settings.toml", "testing"))
    assert ctx.resolver is ctx.resolver and ctx.apps is ctx.loaded_apps
    assert ctx.methods is not None and "cache.CacheService/Get" in ctx.methods
