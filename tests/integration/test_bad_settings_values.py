"""Bad values, each named: numbers that are not finite, addresses grpc would bend, TLS
files that cannot work, values set by environment variables and the secrets file, and
secrets that must never be printed.

Every mistake is its own test, but not its own process: mistakes on different settings
share an environment (a section) of one settings file, and ``manage.py check --env ROUND``
runs once per round, a few at a time. Each test then finds its one message in its round's
output: the id, the setting, the environment, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from resilience.conf.addresses import AddressError, parse_target
from resilience.conf.chains import ChainResolver
from resilience.conf.global_settings import GlobalSettings
from resilience.conf.settings import load_settings
from resilience.core.options import MASK, build_options, is_secret, redact
from resilience.middleware import BearerToken, TokenAuth
from tests.support.certs import Pki, make_pki
from tests.support.processes import manage

pytestmark = pytest.mark.timeout(120)

SECRET = "tok-NEVER-PRINT-4f9a2c"
OTHER_SECRET = "tok-NEVER-PRINT-77b1e0"
GET = "cache.CacheService/Get"
TOKEN_CHAINS = """\
SERVER_MIDDLEWARE = ["resilience.middleware.TokenAuth"]
CLIENT_MIDDLEWARE = ["resilience.middleware.BearerToken", "resilience.middleware.Timeout"]
"""


@dataclasses.dataclass(frozen=True)
class Mistake:
    id: str
    round: str  # the environment of the settings file that holds it
    setting: str  # how the message names the setting
    code: str  # the check id
    says: tuple[str, ...]  # what the message (or its hint) must say: value, expectation


def m(id: str, round: str, setting: str, code: str, *says: str) -> Mistake:
    return Mistake(id, round, setting, code, says)


FINITE = "expected a finite number (not nan or inf)"
BIND = "expected HOST:PORT such as '127.0.0.1:50051'"
TARGET = "expected one of 'HOST:PORT', '[IPV6]:PORT', 'dns:///HOST:PORT'"
METRICS = "expected HOST:PORT such as '127.0.0.1:9464'"

MISTAKES = [
    # Numbers that are not finite, in settings and in middleware options.
    m("grace-nan", "numbers", "SERVER_GRACE_PERIOD", "E001", "is nan", FINITE),
    m("saturation-inf", "numbers", "HEALTH_SATURATION_SECONDS", "E001", "is inf", FINITE),
    m("redis-timeout-minus-inf", "numbers", "REDIS_TIMEOUT", "E001", "is -inf", FINITE),
    m("redis-retry-nan", "numbers", "REDIS_RETRY_INTERVAL", "E001", "is nan", FINITE),
    m("timeout-nan", "numbers", "CLIENT_OPTIONS.Timeout", "E005",
      "option 'seconds' is nan", FINITE),
    m("backoff-nan", "numbers", "CLIENT_OPTIONS.Retry", "E005",
      "option 'initial_backoff' is nan", FINITE),
    m("breaker-reset-inf", "numbers", "CLIENT_OPTIONS.CircuitBreaker", "E005",
      "option 'reset_timeout' is inf", FINITE),
    m("per-method-timeout-minus-inf", "addresses5",
      'CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timeout', "E005",
      "option 'seconds' is -inf", FINITE),
    # Addresses: ports out of range, missing ports and hosts, forms grpc does not take.
    m("server-port-70000", "addresses1", "SERVER_ADDRESS", "E001",
      "is '127.0.0.1:70000'", "port 70000 is out of range", BIND),
    m("target-port-99999", "addresses1", "CLIENT_TARGET", "E001",
      "is '127.0.0.1:99999'", "port 99999 is out of range", TARGET),
    m("metrics-server-port-65536", "addresses1", "METRICS_SERVER_ADDRESS", "E001",
      "is '127.0.0.1:65536'", "port 65536 is out of range", METRICS),
    m("metrics-client-no-port", "addresses1", "METRICS_CLIENT_ADDRESS", "E001",
      "is 'localhost'", "has no port", METRICS),
    m("server-no-port", "addresses2", "SERVER_ADDRESS", "E001",
      "is 'localhost'", "has no port: write 'localhost:PORT' (grpc would take port 443)", BIND),
    m("target-dns-no-port", "addresses2", "CLIENT_TARGET", "E001",
      "is 'dns:///cache.internal'", "has no port", TARGET),
    m("metrics-server-no-host", "addresses2", "METRICS_SERVER_ADDRESS", "E001",
      "is ':9464'", "has no host before the port", METRICS),
    m("metrics-client-port-name", "addresses2", "METRICS_CLIENT_ADDRESS", "E001",
      "is '127.0.0.1:http'", "its port 'http' is not a number", METRICS),
    m("server-ipv6-unbracketed", "addresses3", "SERVER_ADDRESS", "E001",
      "is '::1:50051'", "IPv6 address without brackets: write '[ADDR]:PORT'", BIND),
    m("target-ipv4-list-has-ipv6", "addresses3", "CLIENT_TARGET", "E001",
      "is 'ipv4:127.0.0.1:50051,[::1]:50051'", "'[::1]:50051' is not an IPv4 address and port",
      TARGET),
    m("metrics-server-bad-ipv4", "addresses3", "METRICS_SERVER_ADDRESS", "E001",
      "is '256.1.1.1:9464'", "'256.1.1.1' is not an IPv4 address", METRICS),
    m("metrics-client-unclosed-bracket", "addresses3", "METRICS_CLIENT_ADDRESS", "E001",
      "is '[::1:9465'", "is not a bracketed IPv6 address", METRICS),
    m("server-unix-socket", "addresses4", "SERVER_ADDRESS", "E001",
      "is 'unix:/tmp/cache.sock'", "runserver binds TCP addresses only"),
    m("target-unknown-scheme", "addresses4", "CLIENT_TARGET", "E001",
      "is 'http://cache:50051'", "its scheme 'http' is not one grpc resolves here", TARGET),
    m("metrics-server-empty", "addresses4", "METRICS_SERVER_ADDRESS", "E001",
      "is ''", "is empty", METRICS),
    m("metrics-client-host-bad", "addresses4", "METRICS_CLIENT_ADDRESS", "E001",
      "is 'metrics host:9465'", "'metrics host' is not a host name or an IP address"),
    m("target-port-zero", "addresses5", "CLIENT_TARGET", "E001",
      "is '127.0.0.1:0'", "port 0 is out of range: ports go from 1 to 65535", TARGET),
    m("server-address-spaces", "addresses5", "SERVER_ADDRESS", "E001",
      "is ' 127.0.0.1:50051'", "has spaces around it", BIND),
    m("target-unix-no-path", "addresses6", "CLIENT_TARGET", "E001",
      "is 'unix:'", "'unix:' names no socket", TARGET),
    m("server-name-with-port", "addresses6", "CLIENT_TLS_SERVER_NAME", "E001",
      "is 'cache.internal:443'", "has a port, but a certificate names a host only",
      "expected the host name the server's certificate carries"),
    # Tables that hold secrets: named by entry and kind, their values never quoted.
    m("bearer-options-not-a-table", "tables1", "CLIENT_OPTIONS", "E001",
      "entry 'BearerToken' is a string; expected a table"),
    m("tokens-not-a-table", "tables1", "SERVER_OPTIONS.TokenAuth", "E005",
      "option 'tokens' is a string (not shown: a secret)",
      "expected a table whose values are a string"),
    m("per-method-bearer-not-a-table", "tables1", "CLIENT_METHOD_OPTIONS", "E001",
      "entry '\"cache.CacheService/Get\".BearerToken' is a string; expected a table"),
    m("token-a-number", "tables2", "CLIENT_OPTIONS.BearerToken", "E005",
      "option 'token' is a whole number (not shown: a secret)", "expected a string"),
    m("tokens-entry-a-number", "tables2", "SERVER_OPTIONS.TokenAuth", "E005",
      "option 'tokens' entry 'admin' is a whole number (not shown: a secret)",
      "expected a string"),
    m("server-options-a-string", "tables3", "SERVER_OPTIONS", "E001",
      "is a string; expected a table of tables"),
    # Values from environment variables: the message names the variable.
    m("env-server-port", "envvars", "SERVER_ADDRESS", "E001",
      "set by environment variable RESILIENCE_SERVER_ADDRESS", "is '127.0.0.1:70000'",
      "fix the environment variable RESILIENCE_SERVER_ADDRESS"),
    m("env-timeout-nan", "envvars", "CLIENT_OPTIONS.Timeout", "E005",
      "set by environment variable RESILIENCE_CLIENT_OPTIONS__TIMEOUT__SECONDS",
      "option 'seconds' is nan", FINITE),
    m("env-grace-inf", "envvars", "SERVER_GRACE_PERIOD", "E001",
      "set by environment variable RESILIENCE_SERVER_GRACE_PERIOD", "is inf", FINITE),
    m("env-token-a-number", "envvars", "CLIENT_OPTIONS.BearerToken", "E005",
      "set by environment variable RESILIENCE_CLIENT_OPTIONS__BEARERTOKEN__TOKEN",
      "option 'token' is a whole number (not shown: a secret)"),
    m("env-metrics-no-port", "envvars", "METRICS_SERVER_ADDRESS", "E001",
      "set by environment variable RESILIENCE_METRICS_SERVER_ADDRESS", "has no port"),
    m("env-cert-missing", "envvars", "TLS_CERT_FILE", "E032",
      "set by environment variable RESILIENCE_TLS_CERT_FILE", "nope-cert.pem",
      "cannot be read (No such file or directory)"),
    # Values from the secrets file: the message names it.
    m("secrets-target-port", "fromsecrets", "CLIENT_TARGET", "E001",
      ".secrets.toml", "is '127.0.0.1:99999'", "port 99999 is out of range"),
    m("secrets-token-a-number", "fromsecrets", "CLIENT_OPTIONS.BearerToken", "E005",
      ".secrets.toml", "option 'token' is a whole number (not shown: a secret)"),
    # TLS files: each of a side's files reported, read, parsed and matched.
    m("cert-file-missing", "tls1", "TLS_CERT_FILE", "E032",
      "missing-server.pem", "cannot be read (No such file or directory)",
      "point TLS_CERT_FILE at a readable PEM file"),
    m("key-file-missing-too", "tls1", "TLS_KEY_FILE", "E032",
      "missing-server.key", "cannot be read (No such file or directory)"),
    m("client-ca-not-pem", "tls1", "TLS_CLIENT_CA_FILE", "E033",
      "junk.pem", "it has no '-----BEGIN ...-----' line, so it is not PEM"),
    m("ca-is-der", "tls1", "CLIENT_TLS_CA_FILE", "E033",
      "ca.der", "it is binary (DER), not PEM", "openssl x509 -inform der"),
    m("client-cert-is-a-key", "tls1", "CLIENT_TLS_CERT_FILE", "E035",
      "client.key", "holds a private key and no certificate",
      "are the certificate and key files swapped?"),
    m("client-key-is-a-cert", "tls1", "CLIENT_TLS_KEY_FILE", "E035",
      "client.pem", "holds no private key", "are the certificate and key files swapped?"),
    m("server-key-not-its-cert", "tls2", "TLS_KEY_FILE", "E034",
      "client.key", "is not the private key of the certificate in TLS_CERT_FILE",
      "server.pem"),
    m("client-ca-is-a-key", "tls2", "TLS_CLIENT_CA_FILE", "E035",
      "server.key", "holds a private key and no certificate",
      "a PEM bundle of CA certificates"),
    m("ca-file-empty", "tls2", "CLIENT_TLS_CA_FILE", "E033", "empty.pem", "it is empty"),
    m("client-cert-cut-short", "tls2", "CLIENT_TLS_CERT_FILE", "E033",
      "cut.pem", "has no matching '-----END ...-----' line"),
    m("server-key-encrypted", "tls3", "TLS_KEY_FILE", "E035",
      "encrypted.key", "holds an encrypted private key", "openssl pkey"),
    m("client-ca-bad-base64", "tls3", "TLS_CLIENT_CA_FILE", "E033",
      "bad-base64.pem", "is not valid base64"),
    m("ca-certificate-corrupt", "tls3", "CLIENT_TLS_CA_FILE", "E033",
      "bad-der.pem", "has a certificate that cannot be parsed: number 1 of 1"),
    m("client-key-a-directory", "tls3", "CLIENT_TLS_KEY_FILE", "E032",
      "cannot be read (Is a directory)"),
    m("cert-relative-path", "tls4", "TLS_CERT_FILE", "E032",
      "'no-such-dir/server.pem' (relative to the working directory"),
    m("client-ca-without-require", "tls4", "TLS_CLIENT_CA_FILE", "E032",
      "TLS_REQUIRE_CLIENT_CERT is false"),
    m("client-cert-without-key", "tls4", "CLIENT_TLS_KEY_FILE", "E032",
      "is not set; a client certificate needs both"),
    m("ca-is-an-encrypted-key", "tls4", "CLIENT_TLS_CA_FILE", "E035",
      "encrypted.key", "holds a private key and no certificate"),
]


def rounds(pki: Pki, files: Path) -> dict[str, str]:
    """Each round's section of the settings file: its mistakes, on different settings."""
    return {
        "numbers": """
SERVER_GRACE_PERIOD = nan
HEALTH_SATURATION_SECONDS = inf
REDIS_TIMEOUT = -inf
REDIS_RETRY_INTERVAL = nan
[numbers.CLIENT_OPTIONS.Timeout]
seconds = nan
[numbers.CLIENT_OPTIONS.Retry]
initial_backoff = nan
[numbers.CLIENT_OPTIONS.CircuitBreaker]
reset_timeout = inf
""",
        "addresses1": """
SERVER_ADDRESS = "127.0.0.1:70000"
CLIENT_TARGET = "127.0.0.1:99999"
METRICS_SERVER_ADDRESS = "127.0.0.1:65536"
METRICS_CLIENT_ADDRESS = "localhost"
""",
        "addresses2": """
SERVER_ADDRESS = "localhost"
CLIENT_TARGET = "dns:///cache.internal"
METRICS_SERVER_ADDRESS = ":9464"
METRICS_CLIENT_ADDRESS = "127.0.0.1:http"
""",
        "addresses3": """
SERVER_ADDRESS = "::1:50051"
CLIENT_TARGET = "ipv4:127.0.0.1:50051,[::1]:50051"
METRICS_SERVER_ADDRESS = "256.1.1.1:9464"
METRICS_CLIENT_ADDRESS = "[::1:9465"
""",
        "addresses4": """
SERVER_ADDRESS = "unix:/tmp/cache.sock"
CLIENT_TARGET = "http://cache:50051"
METRICS_SERVER_ADDRESS = ""
METRICS_CLIENT_ADDRESS = "metrics host:9465"
""",
        "addresses5": """
CLIENT_TARGET = "127.0.0.1:0"
SERVER_ADDRESS = " 127.0.0.1:50051"
[addresses5.CLIENT_METHOD_OPTIONS."cache.CacheService/Get".Timeout]
seconds = -inf
""",
        "addresses6": """
CLIENT_TARGET = "unix:"
CLIENT_TLS_SERVER_NAME = "cache.internal:443"
""",
        "tables1": TOKEN_CHAINS + f"""
[tables1.CLIENT_OPTIONS]
BearerToken = "{SECRET}"
[tables1.SERVER_OPTIONS.TokenAuth]
tokens = "{SECRET}"
[tables1.CLIENT_METHOD_OPTIONS."cache.CacheService/Get"]
BearerToken = "{OTHER_SECRET}"
""",
        "tables2": TOKEN_CHAINS + f"""
[tables2.CLIENT_OPTIONS.BearerToken]
token = 12345678
[tables2.SERVER_OPTIONS.TokenAuth]
tokens = {{ reports = "{SECRET}", admin = 12345678 }}
""",
        "tables3": TOKEN_CHAINS + f"""
SERVER_OPTIONS = "{SECRET}"
[tables3.CLIENT_OPTIONS.BearerToken]
token = "{OTHER_SECRET}"
""",
        "envvars": TOKEN_CHAINS + f"""
TLS_KEY_FILE = "{pki.server_key}"
[envvars.SERVER_OPTIONS.TokenAuth]
tokens = {{ reports = "{SECRET}" }}
""",
        "tls1": f"""
TLS_CERT_FILE = "{files / 'missing-server.pem'}"
TLS_KEY_FILE = "{files / 'missing-server.key'}"
TLS_CLIENT_CA_FILE = "{files / 'junk.pem'}"
TLS_REQUIRE_CLIENT_CERT = true
CLIENT_TLS_CA_FILE = "{files / 'ca.der'}"
CLIENT_TLS_CERT_FILE = "{pki.client_key}"
CLIENT_TLS_KEY_FILE = "{pki.client_cert}"
""",
        "tls2": f"""
TLS_CERT_FILE = "{pki.server_cert}"
TLS_KEY_FILE = "{pki.client_key}"
TLS_CLIENT_CA_FILE = "{pki.server_key}"
TLS_REQUIRE_CLIENT_CERT = true
CLIENT_TLS_CA_FILE = "{files / 'empty.pem'}"
CLIENT_TLS_CERT_FILE = "{files / 'cut.pem'}"
CLIENT_TLS_KEY_FILE = "{pki.client_key}"
""",
        "tls3": f"""
TLS_CERT_FILE = "{pki.server_cert}"
TLS_KEY_FILE = "{files / 'encrypted.key'}"
TLS_CLIENT_CA_FILE = "{files / 'bad-base64.pem'}"
TLS_REQUIRE_CLIENT_CERT = true
CLIENT_TLS_CA_FILE = "{files / 'bad-der.pem'}"
CLIENT_TLS_CERT_FILE = "{pki.client_cert}"
CLIENT_TLS_KEY_FILE = "{files}"
""",
        "tls4": f"""
TLS_CERT_FILE = "no-such-dir/server.pem"
TLS_KEY_FILE = "{pki.server_key}"
TLS_CLIENT_CA_FILE = "{pki.ca}"
CLIENT_TLS_CA_FILE = "{files / 'encrypted.key'}"
CLIENT_TLS_CERT_FILE = "{pki.client_cert}"
""",
    }


ENVVARS = {
    "RESILIENCE_SERVER_ADDRESS": "127.0.0.1:70000",
    "RESILIENCE_CLIENT_OPTIONS__TIMEOUT__SECONDS": "nan",
    "RESILIENCE_SERVER_GRACE_PERIOD": "inf",
    "RESILIENCE_CLIENT_OPTIONS__BEARERTOKEN__TOKEN": "12345678",
    "RESILIENCE_METRICS_SERVER_ADDRESS": "localhost",
}


def bad_tls_files(pki: Pki, files: Path) -> None:
    """TLS files that are wrong in every way the corpus needs."""
    files.mkdir(parents=True, exist_ok=True)
    (files / "junk.pem").write_text("this is not a certificate\n")
    (files / "empty.pem").write_text("")
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    (files / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    (files / "cut.pem").write_bytes(pki.client_cert.read_bytes()[:200])
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    (files / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ))
    (files / "bad-base64.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n")
    (files / "bad-der.pem").write_text(
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n")


def settings_text(sections: dict[str, str]) -> str:
    body = "".join(f"\n[{name}]\n{text.strip()}\n" for name, text in sections.items())
    return f'[default]\nINSTALLED_APPS = ["apps.cache"]\n\n[development]\n{body}'


@dataclasses.dataclass
class Corpus:
    path: Path  # the settings file of every round but "fromsecrets"
    secrets_path: Path  # a settings file with a .secrets.toml beside it
    results: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """``check`` of every round, a few processes at a time; plus runserver and runclient
    of two rounds, which must refuse with the same messages."""
    base = tmp_path_factory.mktemp("values")
    pki = make_pki(base)
    bad_tls_files(pki, base / "files")
    sections = rounds(pki, base / "files")
    path = base / "settings" / "settings.toml"
    path.parent.mkdir()
    path.write_text(settings_text(sections), encoding="utf-8")
    secrets_dir = base / "with-secrets"
    secrets_dir.mkdir()
    secrets_path = secrets_dir / "settings.toml"
    secrets_path.write_text(settings_text({"fromsecrets": TOKEN_CHAINS}), encoding="utf-8")
    (secrets_dir / ".secrets.toml").write_text(
        '[fromsecrets]\nCLIENT_TARGET = "127.0.0.1:99999"\n'
        f'[fromsecrets.SERVER_OPTIONS.TokenAuth]\ntokens = {{ reports = "{SECRET}" }}\n'
        "[fromsecrets.CLIENT_OPTIONS.BearerToken]\ntoken = 5\n",
        encoding="utf-8",
    )
    runs: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
        name: (("check", "--settings", str(path), "--env", name),
               ENVVARS | {"RESILIENCE_TLS_CERT_FILE": str(base / "nope-cert.pem")}
               if name == "envvars" else {})
        for name in sections
    }
    runs["fromsecrets"] = (("check", "--settings", str(secrets_path), "--env", "fromsecrets"),
                           {})
    for name in ("addresses1", "tls1"):
        runs[f"runserver:{name}"] = (
            ("runserver", "--settings", str(path), "--env", name), {})
        runs[f"runclient:{name}"] = (
            ("runclient", "--settings", str(path), "--env", name, "get", "k"), {})
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(manage, *args, timeout=60, **env)
                   for name, (args, env) in runs.items()}
        results = {name: future.result() for name, future in futures.items()}
    return Corpus(path, secrets_path, results)


def messages(output: str) -> list[str]:
    """Each ERROR or WARNING with its HINT line, as one text."""
    found: list[str] = []
    for line in output.splitlines():
        if line.startswith(("ERROR ", "WARNING ")):
            found.append(line)
        elif line.startswith("    HINT: ") and found:
            found[-1] += "\n" + line
    return found


def about(output: str, setting: str, env: str) -> list[str]:
    """The messages of ``output`` about ``setting`` in environment ``env``."""
    header = re.compile(rf"^(ERROR|WARNING) \S+ {re.escape(setting)} \(environment '{env}'[,)]")
    return [text for text in messages(output) if header.match(text)]


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    return output


def test_corpus_is_distinct() -> None:
    assert len(MISTAKES) >= 35
    assert len({mistake.id for mistake in MISTAKES}) == len(MISTAKES)
    # Within a round each mistake is on its own setting, so each has its own message.
    keys = [(mistake.round, mistake.setting) for mistake in MISTAKES]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda mistake: mistake.id)
def test_check_names_the_mistake(mistake: Mistake, corpus: Corpus) -> None:
    result = corpus.results[mistake.round]
    output = assert_clean_failure(result)
    assert result.returncode == 1, output
    found = about(result.stderr, mistake.setting, mistake.round)
    assert len(found) == 1, output  # one clear message, no follow-on ones
    (text,) = found
    assert text.startswith(f"ERROR resilience.{mistake.code} {mistake.setting} "), text
    for fragment in mistake.says:
        assert fragment in text, text
    assert "\n    HINT: " in text, text


@pytest.mark.parametrize("round", sorted({mistake.round for mistake in MISTAKES}))
def test_each_mistake_gives_one_message(round: str, corpus: Corpus) -> None:
    """No follow-on messages: as many messages as the round has mistakes."""
    result = corpus.results[round]
    count = sum(mistake.round == round for mistake in MISTAKES)
    assert len(messages(result.stderr)) == count, result.stderr
    assert f"check found {count} error(s) and 0 warning(s)" in result.stderr, result.stderr


@pytest.mark.parametrize("round", sorted({mistake.round for mistake in MISTAKES}))
def test_no_round_prints_a_secret(round: str, corpus: Corpus) -> None:
    output = corpus.results[round].stdout + corpus.results[round].stderr
    assert SECRET not in output and OTHER_SECRET not in output, output


@pytest.mark.parametrize("round", ["addresses1", "tls1"])
@pytest.mark.parametrize("command", ["runserver", "runclient"])
def test_commands_refuse_with_checks_messages(command: str, round: str, corpus: Corpus
                                              ) -> None:
    check = corpus.results[round]
    result = corpus.results[f"{command}:{round}"]
    output = assert_clean_failure(result)
    assert "refusing to start" in result.stderr, output
    refused = messages(result.stderr)
    checked = messages(check.stderr)
    if round == "tls1":  # runserver checks the server's TLS files, runclient the client's
        prefix = "TLS_" if command == "runserver" else "CLIENT_TLS_"
        checked = [text for text in checked if text.split(" ")[2].startswith(prefix)]
    assert refused == checked, output


# --- secrets: never printed, in check, showchain or logs, for good and bad files --------

WELL_FORMED = f"""
[default]
INSTALLED_APPS = ["apps.cache"]
SERVER_MIDDLEWARE = ["resilience.middleware.RequestLogging", "resilience.middleware.TokenAuth"]
CLIENT_MIDDLEWARE = ["resilience.middleware.RequestLogging", "resilience.middleware.BearerToken",
                     "resilience.middleware.Timeout"]
CLIENT_TARGET = "127.0.0.1:9"
LOG_LEVEL = "DEBUG"
[default.SERVER_OPTIONS.TokenAuth]
tokens = {{ reports = "{SECRET}", admin = "{OTHER_SECRET}" }}
[default.CLIENT_OPTIONS.BearerToken]
token = "{SECRET}"
[default.CLIENT_OPTIONS.Timeout]
seconds = 0.2
[development]
"""


def _leaks(result: subprocess.CompletedProcess[str]) -> bool:
    output = result.stdout + result.stderr
    return SECRET in output or OTHER_SECRET in output


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tokens")
    good = base / "good" / "settings.toml"
    good.parent.mkdir()
    good.write_text(WELL_FORMED, encoding="utf-8")
    bad = base / "bad" / "settings.toml"
    bad.parent.mkdir()
    bad.write_text(WELL_FORMED.replace(f'token = "{SECRET}"', "token = 5").replace(
        f'admin = "{OTHER_SECRET}"', f'admin = ["{OTHER_SECRET}"]'), encoding="utf-8")
    broken = base / "broken" / "settings.toml"
    broken.parent.mkdir()
    broken.write_text(WELL_FORMED, encoding="utf-8")
    (broken.parent / ".secrets.toml").write_text(
        f'[development]\nCACHE_TOKEN = "{SECRET}\n', encoding="utf-8")  # unclosed string
    return {"good": good, "bad": bad, "broken": broken}


@pytest.mark.parametrize("which", ["good", "bad", "broken"])
def test_check_never_prints_a_token(which: str, token_files: dict[str, Path]) -> None:
    result = manage("check", "--settings", str(token_files[which]))
    assert not _leaks(result), result.stdout + result.stderr
    if which == "good":
        assert result.returncode == 0, result.stderr
    else:
        assert_clean_failure(result)
    if which == "broken":
        assert f"secrets file '{token_files[which].parent / '.secrets.toml'}' is not valid " \
               f"TOML" in result.stderr


@pytest.mark.parametrize("which", ["good", "bad"])
def test_showchain_never_prints_a_token(which: str, token_files: dict[str, Path]) -> None:
    result = manage("showchain", GET, "--settings", str(token_files[which]))
    assert not _leaks(result), result.stdout + result.stderr
    if which == "good":
        assert result.returncode == 0, result.stderr
        assert f"token='{MASK}'" in result.stdout


def test_logs_never_print_a_token(token_files: dict[str, Path]) -> None:
    """A call that fails (nothing listens at CLIENT_TARGET), logged at DEBUG through
    RequestLogging on a chain with BearerToken."""
    result = manage("runclient", "--settings", str(token_files["good"]), "get", "k")
    output = assert_clean_failure(result)
    assert "UNAVAILABLE" in output or "DEADLINE_EXCEEDED" in output, output
    assert not _leaks(result), output


def test_secret_options_are_declared() -> None:
    """The flag, never a guess from the name: showchain and others use is_secret/redact."""
    secret = {(cls.__name__, f.name) for cls in (TokenAuth, BearerToken)
              for f in dataclasses.fields(cls.Options) if is_secret(f)}
    assert secret == {("TokenAuth", "tokens"), ("BearerToken", "token")}
    assert is_secret(GlobalSettings.__dataclass_fields__["REDIS_URL"])
    assert SECRET not in repr(BearerToken.Options(token=SECRET))
    assert redact(TokenAuth.Options, "tokens", {"a": SECRET}) == {"a": MASK}
    assert redact(BearerToken.Options, "token", SECRET) == MASK
    assert redact(BearerToken.Options, "token", "") == ""
    assert redact(GlobalSettings, "REDIS_URL", f"redis://:{SECRET}@h:6379/0") == (
        "redis://:***@h:6379/0")
    assert redact(TokenAuth.Options, "peers", ("a",)) == ("a",)
    _, problems = build_options(BearerToken.Options, {"token": [SECRET]})
    assert problems and SECRET not in "".join(problems)


# --- the documented .secrets.toml recipe, with no SERVER_OPTIONS in [default] ---------------

RECIPE = f"""
[production.SERVER_OPTIONS]
dynaconf_merge = true
[production.SERVER_OPTIONS.TokenAuth]
tokens = {{ reports-job = "{SECRET}", admin = "{OTHER_SECRET}" }}

[production.CLIENT_OPTIONS]
dynaconf_merge = true
[production.CLIENT_OPTIONS.BearerToken]
token = "{SECRET}"
"""


def test_dynaconf_merge_recipe_without_default_tables(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"""
[default]
INSTALLED_APPS = ["apps.cache"]
{TOKEN_CHAINS}
[development]
[production]
ALLOW_PLAINTEXT = true
""", encoding="utf-8")
    (tmp_path / ".secrets.toml").write_text(RECIPE, encoding="utf-8")
    settings = load_settings(path, "production")
    assert settings.problems == []
    assert settings.SERVER_OPTIONS == {
        "TokenAuth": {"tokens": {"reports-job": SECRET, "admin": OTHER_SECRET}}}
    assert settings.CLIENT_OPTIONS == {"BearerToken": {"token": SECRET}}
    resolver = ChainResolver(settings)
    (auth,) = resolver.resolve("server", GET)
    assert auth.options.tokens == {"reports-job": SECRET, "admin": OTHER_SECRET}
    assert resolver.problems == []
    # Merged into a [default] table that exists, the recipe still merges.
    path.write_text(path.read_text().replace(
        "[development]", "[default.SERVER_OPTIONS.RequestLogging]\n[development]"))
    merged = load_settings(path, "production")
    assert set(merged.SERVER_OPTIONS) == {"RequestLogging", "TokenAuth"}
    result = manage("check", "--settings", str(path), "--env", "production")
    assert not re.search(r"ERROR resilience\.E00[15]", result.stderr), result.stderr
    assert not _leaks(result)


def test_unread_secrets_are_named(tmp_path: Path) -> None:
    """W034: a section of .secrets.toml that no environment reads, or a key outside any."""
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nINSTALLED_APPS = ["apps.cache"]\n[development]\n'
                    '[production]\n', encoding="utf-8")
    (tmp_path / ".secrets.toml").write_text(
        f'STRAY_TOKEN = "{SECRET}"\n[prodution]\nCACHE_TOKEN = "{SECRET}"\n',
        encoding="utf-8")
    result = manage("check", "--settings", str(path))
    assert result.returncode == 0, result.stderr
    (stray,) = about(result.stderr, "STRAY_TOKEN", "development")
    assert stray.startswith("WARNING resilience.W034 ") and "outside any section" in stray
    (typo,) = about(result.stderr, "[prodution]", "development")
    assert "no environment of" in typo and "default, development, global, production" in typo
    assert not _leaks(result)


# --- the target parser: every form grpc takes that the framework supports -----------------

@pytest.mark.parametrize("target", [
    "127.0.0.1:50051", "localhost:50051", "cache.internal:443", "[::1]:50051",
    "dns:///cache.internal:50051", "dns:cache.internal:50051",
    "dns://8.8.8.8:53/cache.internal:50051", "ipv4:127.0.0.1:1,127.0.0.2:2",
    "ipv6:[::1]:50051,[::2]:50052", "unix:/tmp/cache.sock", "unix:///tmp/cache.sock",
    "unix:relative.sock", "unix-abstract:cache",
])
def test_target_forms_accepted(target: str) -> None:
    parse_target(target)


@pytest.mark.parametrize("target", [
    "127.0.0.1", "dns:///host", "ipv4:[::1]:1", "ipv6:127.0.0.1:1", "unix-abstract:",
    "xds:///cache", "127.0.0.1:65536", "host name:1", "dns://8.8.8.8/",
])
def test_target_forms_refused(target: str) -> None:
    with pytest.raises(AddressError):
        parse_target(target)


def test_finite_numbers_in_tables_too() -> None:
    """A float inside a table (AdaptiveLimit's partitions) gets the same check."""
    from resilience.middleware import AdaptiveLimit

    _, problems = build_options(AdaptiveLimit.Options, {"partitions": {"a": math.nan}})
    assert any("entry 'a' is nan; expected a finite number" in p for p in problems), problems
