"""check tells, before anything starts, which middleware cannot run, or run well, in the
selected mode: sync or asyncio."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import manage

SYNC_ONLY = "tests.support.modes.SyncOnly"
ASYNC_ONLY = "tests.support.modes.AsyncOnly"


def settings_file(tmp_path: Path, middleware: str, *, asyncio: bool) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        "[default]\n"
        f"ASYNCIO = {'true' if asyncio else 'false'}\n"
        f'SERVER_MIDDLEWARE = ["{middleware}"]\n'
        "[development]\n",
        encoding="utf-8",
    )
    return path


def test_sync_only_middleware_in_asyncio_mode_is_a_warning(tmp_path: Path) -> None:
    result = manage("check", "--settings", str(settings_file(tmp_path, SYNC_ONLY, asyncio=True)))
    assert result.returncode == 0, result.stderr
    assert "WARNING resilience.W004 SERVER_MIDDLEWARE (environment 'development')" in result.stderr
    assert f"'{SYNC_ONLY}' is sync-only" in result.stderr
    assert "worker thread" in result.stderr


def test_sync_only_middleware_in_sync_mode_is_fine(tmp_path: Path) -> None:
    result = manage("check", "--settings", str(settings_file(tmp_path, SYNC_ONLY, asyncio=False)))
    assert result.returncode == 0, result.stderr
    assert "W004" not in result.stderr


def test_async_only_middleware_in_sync_mode_is_an_error(tmp_path: Path) -> None:
    path = settings_file(tmp_path, ASYNC_ONLY, asyncio=False)
    result = manage("check", "--settings", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ERROR resilience.E009 SERVER_MIDDLEWARE (environment 'development')" in result.stderr
    assert "cannot run in sync mode" in result.stderr
    assert "set ASYNCIO = true (or pass --asyncio)" in result.stderr
    refused = manage("runserver", "127.0.0.1:0", "--settings", str(path))
    assert refused.returncode == 1
    assert "E009" in refused.stderr and "refusing to start" in refused.stderr


def test_async_only_middleware_is_fine_with_asyncio_on(tmp_path: Path) -> None:
    path = settings_file(tmp_path, ASYNC_ONLY, asyncio=False)
    result = manage("check", "--settings", str(path), RESILIENCE_ASYNCIO="true")
    assert result.returncode == 0, result.stderr
    assert "E009" not in result.stderr
