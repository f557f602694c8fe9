"""genproto: the committed stubs are what it generates (CI's no-diff check), imports are
package paths, errors are one clear line; the check that stubs are not older than protos;
IDEMPOTENT_METHODS must name served methods."""

from __future__ import annotations

import importlib
import io
import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from resilience.conf.validation import run_checks
from resilience.core.errors import ImproperlyConfigured
from resilience.management import CommandError, call_command
from resilience.protos import (
    STALE_AFTER_SECONDS,
    app_location,
    app_protos,
    generate,
    generated_files,
    out_of_date,
    stale,
)
from tests.support.processes import ROOT
from tests.support.servers import make_settings

CACHE = ROOT / "apps" / "cache"
SETTINGS = str(ROOT / "settings" / "settings.toml")


def genproto(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = call_command("genproto", "--settings", SETTINGS, *args, stdout=out,
                          stderr=io.StringIO())
    return status, out.getvalue()


def test_committed_cache_stubs_are_what_genproto_generates() -> None:
    """CI's "regenerating gives no diff": generate into a temporary folder and compare byte
    for byte. The dev extra pins grpcio-tools, whose version the generated code embeds."""
    committed = (CACHE / "protos" / "cache_pb2_grpc.py").read_text(encoding="utf-8")
    embedded = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", committed)
    assert embedded is not None
    assert version("grpcio-tools") == embedded.group(1), (
        f"grpcio-tools {version('grpcio-tools')} is installed but the stubs were made by "
        f"{embedded.group(1)}: install the dev extra's pinned version"
    )
    assert out_of_date(app_protos(CACHE), ROOT) == []
    assert genproto("--check") == (0, "genproto --check: the generated code is up to date\n")


def test_generated_imports_are_package_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two protos of one app, one importing the other: every generated import of a sibling
    is by package path, never a bare ``import x_pb2``, and the modules import."""
    protos = tmp_path / "pkg_gp" / "thing" / "protos"
    protos.mkdir(parents=True)
    for init in (tmp_path / "pkg_gp", tmp_path / "pkg_gp" / "thing", protos):
        (init / "__init__.py").write_text("")
    (protos / "common.proto").write_text(
        'syntax = "proto3";\npackage gp_thing;\nmessage Word { string text = 1; }\n'
    )
    (protos / "thing.proto").write_text(
        'syntax = "proto3";\npackage gp_thing;\nimport "pkg_gp/thing/protos/common.proto";\n'
        "message Said { Word word = 1; }\nservice Things { rpc Say(Word) returns (Said); }\n"
    )
    generate(app_protos(protos.parent), tmp_path)
    for proto in app_protos(protos.parent):
        for module in generated_files(proto):
            text = module.read_text(encoding="utf-8")
            assert not re.search(r"^import \w+_pb2", text, re.M), (module.name, text)
    grpc_module = (protos / "thing_pb2_grpc.py").read_text(encoding="utf-8")
    assert "from pkg_gp.thing.protos import thing_pb2 as" in grpc_module
    assert "from pkg_gp.thing.protos import common_pb2 as" in grpc_module
    assert "from pkg_gp.thing.protos import common_pb2 as" in (
        protos / "thing_pb2.py").read_text(encoding="utf-8")
    assert "from pkg_gp.thing.protos import common_pb2" in (
        protos / "thing_pb2.pyi").read_text(encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("pkg_gp.thing.protos.thing_pb2_grpc")
    assert module.ThingsStub and module.add_ThingsServicer_to_server


def test_protoc_failure_is_one_clear_error(tmp_path: Path) -> None:
    protos = tmp_path / "app" / "protos"
    protos.mkdir(parents=True)
    (protos / "bad.proto").write_text('syntax = "proto3";\nimport "other.proto";\n')
    with pytest.raises(ImproperlyConfigured) as info:
        generate(app_protos(protos.parent), tmp_path)
    message = str(info.value)
    assert "protoc failed" in message and "app/protos/bad.proto" in message
    assert 'import "apps/NAME/protos/other.proto"' in message
    assert not list(protos.glob("*_pb2*"))


def test_generate_into_another_folder_leaves_the_app_alone(tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in generated_files(CACHE / "protos" / "cache.proto")}
    generate(app_protos(CACHE), ROOT, tmp_path)
    written = sorted(p.name for p in (tmp_path / "apps" / "cache" / "protos").iterdir())
    assert written == ["cache_pb2.py", "cache_pb2.pyi", "cache_pb2_grpc.py"]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_out_of_date_names_changed_and_missing_files(tmp_path: Path) -> None:
    protos = tmp_path / "app" / "protos"
    protos.mkdir(parents=True)
    proto = protos / "svc.proto"
    proto.write_text('syntax = "proto3";\npackage gp_svc;\nmessage A { string a = 1; }\n')
    generate([proto], tmp_path)
    assert out_of_date([proto], tmp_path) == []
    proto.write_text('syntax = "proto3";\npackage gp_svc;\nmessage A { string b = 1; }\n')
    pb2, pyi, grpc_py = generated_files(proto)
    grpc_py.unlink()
    assert out_of_date([proto], tmp_path) == [pb2, pyi, grpc_py]


def test_stale_compares_modification_times(tmp_path: Path) -> None:
    proto = tmp_path / "svc.proto"
    proto.write_text("")
    modules = generated_files(proto)
    for module in modules:
        module.write_text("")
    now = proto.stat().st_mtime
    # A fresh clone writes files in any order: a proto a little newer is not stale.
    for module in modules:
        os.utime(module, (now - STALE_AFTER_SECONDS / 2, now - STALE_AFTER_SECONDS / 2))
    assert stale([proto]) == []
    os.utime(modules[2], (now - 60, now - 60))
    modules[1].unlink()
    assert stale([proto]) == [
        (proto, "svc_pb2.pyi is missing"),
        (proto, "it is newer than svc_pb2_grpc.py"),
    ]


def test_genproto_names_an_unknown_app() -> None:
    assert app_location("apps.cache") == (CACHE, ROOT)
    with pytest.raises(CommandError, match=r"'nosuch' is not in INSTALLED_APPS: apps\.cache"):
        genproto("nosuch")
    with pytest.raises(ImproperlyConfigured, match=r"'apps\.nosuch' is not an importable"):
        app_location("apps.nosuch")


def test_genproto_check_then_generate_one_app_by_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an app in a temporary folder (genproto writes next to the protos, and the
    committed stubs must never be rewritten by a test)."""
    package = tmp_path / "gp_proj" / "gp_app"
    (package / "protos").mkdir(parents=True)
    for init in (package.parent, package, package / "protos"):
        (init / "__init__.py").write_text("")
    proto = package / "protos" / "gp_app.proto"
    proto.write_text('syntax = "proto3";\npackage gp_app;\nmessage A {}\n')
    settings = tmp_path / "settings.toml"
    settings.write_text('[default]\nINSTALLED_APPS = ["gp_proj.gp_app"]\n[testing]\n')
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(*args: str) -> str:
        out = io.StringIO()
        assert call_command("genproto", "--settings", str(settings), "--env", "testing",
                            *args, stdout=out, stderr=io.StringIO()) == 0
        return out.getvalue()

    with pytest.raises(CommandError, match=r"out of date: gp_proj/gp_app/protos/gp_app_pb2\.py, "
                                           r".*; run 'manage\.py genproto'"):
        run("--check")
    assert not list(proto.parent.glob("*_pb2*"))
    assert run("gp_app") == "generated stubs for gp_proj/gp_app/protos/gp_app.proto\n"
    assert run("--check").startswith("genproto --check: the generated code is up to date")


@pytest.mark.parametrize(
    ("listed", "flagged"),
    [
        (["cache.CacheService/Store"], []),
        (["cache.CacheService"], []),
        (["cache.CacheService/Nope", "nocache.Svc"], ["cache.CacheService/Nope", "nocache.Svc"]),
    ],
)
def test_idempotent_methods_must_be_served(listed: list[str], flagged: list[str]) -> None:
    _, messages = run_checks(make_settings(IDEMPOTENT_METHODS=listed))
    found = [m for m in messages if m.id == "resilience.E050"]
    assert [m.msg.split("'")[1] for m in found] == flagged
    for message in found:
        assert message.setting == "IDEMPOTENT_METHODS" and message.is_error
        assert "cache.CacheService/Get" in message.hint


def test_the_cache_app_is_not_stale() -> None:
    _, messages = run_checks(make_settings())
    assert not [m for m in messages if m.id == "resilience.W050"], messages
