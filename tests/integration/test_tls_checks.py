"""The TLS and authentication checks through manage.py: production refuses plaintext
(runserver E030, runclient E031, no traceback), ``check --deploy`` warns about servers open
in plaintext or to anyone (W030-W032), and showchain never prints a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.certs import Pki, pki  # noqa: F401  (the session fixture)
from tests.support.processes import manage

pytestmark = pytest.mark.timeout(120)

SECRET = "never-print-me-0123456789"


def settings_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(f'[default]\nINSTALLED_APPS = ["apps.cache"]\n{body}\n[development]\n',
                    encoding="utf-8")
    return str(path)


def ids(text: str) -> set[str]:
    return {word for word in text.split() if word.startswith("resilience.")}


def test_production_refuses_plaintext_with_a_configuration_error() -> None:
    checked = manage("check", RESILIENCE_ENV="production")
    assert checked.returncode == 1
    assert {"resilience.E030", "resilience.E031", "resilience.W030"} <= ids(checked.stderr)
    assert "HINT: set TLS_CERT_FILE and TLS_KEY_FILE" in checked.stderr

    server = manage("runserver", RESILIENCE_ENV="production", timeout=30)
    assert server.returncode == 1, server.stdout + server.stderr
    assert ids(server.stderr) == {"resilience.E030"}
    assert "the server would serve plaintext" in server.stderr
    assert "refusing to start" in server.stderr and "Traceback" not in server.stderr

    client = manage("runclient", "get", "k", RESILIENCE_ENV="production", timeout=30)
    assert client.returncode == 1, client.stdout + client.stderr
    assert ids(client.stderr) == {"resilience.E031"}
    assert "Traceback" not in client.stderr


def test_deploy_checks(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    open_plaintext = settings_file(tmp_path, 'SERVER_ADDRESS = "0.0.0.0:50051"\n'
                                   'CLIENT_MIDDLEWARE = ["resilience.middleware.BearerToken"]\n'
                                   f'CLIENT_OPTIONS = {{BearerToken = {{token = "{SECRET}"}}}}\n')
    plain = manage("check", "--settings", open_plaintext)
    assert plain.returncode == 0, plain.stderr
    assert not ids(plain.stderr) & {"resilience.W030", "resilience.W032"}
    deploy = manage("check", "--deploy", "--settings", open_plaintext)
    assert deploy.returncode == 0, deploy.stderr
    assert {"resilience.W030", "resilience.W032"} <= ids(deploy.stderr)
    assert "'0.0.0.0:50051' accepts connections beyond this machine" in deploy.stderr

    tls_for_anyone = settings_file(
        tmp_path,
        f'SERVER_ADDRESS = "[::]:50051"\nTLS_CERT_FILE = "{pki.server_cert}"\n'
        f'TLS_KEY_FILE = "{pki.server_key}"\nCLIENT_TLS_CA_FILE = "{tmp_path / "gone.pem"}"\n',
    )
    result = manage("check", "--deploy", "--settings", tls_for_anyone)
    assert result.returncode == 1
    found = ids(result.stderr)
    assert "resilience.W031" in found and "resilience.W030" not in found
    assert "ERROR resilience.E032 CLIENT_TLS_CA_FILE" in result.stderr
    assert "gone.pem" in result.stderr


def test_showchain_hides_tokens(tmp_path: Path) -> None:
    path = settings_file(
        tmp_path,
        'SERVER_MIDDLEWARE = ["resilience.middleware.TokenAuth"]\n'
        'CLIENT_MIDDLEWARE = ["resilience.middleware.BearerToken"]\n'
        f'SERVER_OPTIONS = {{TokenAuth = {{tokens = {{reports = "{SECRET}"}}}}}}\n'
        f'CLIENT_OPTIONS = {{BearerToken = {{token = "{SECRET}"}}}}\n',
    )
    result = manage("showchain", "cache.CacheService/Get", "--settings", path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "tokens={'reports': '********'}" in result.stdout
    assert "token='********'" in result.stdout
