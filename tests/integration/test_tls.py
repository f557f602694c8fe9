"""TLS and mutual TLS between real servers and channels, with certificates made in the test
run (``tests.support.certs``), in the four pairings of sync and asyncio client and server.

A failed handshake never reaches a handler: the call fails with UNAVAILABLE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from resilience.conf.credentials import channel_credentials, server_credentials
from resilience.conf.settings import Settings
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.serving import Server
from tests.support.certs import Pki, pki  # noqa: F401  (the session fixture)
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings, scripted_apps

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0


def server_settings(pki: Pki, *, mtls: bool = False, **values: Any) -> Settings:  # noqa: F811
    if mtls:
        values.update(TLS_CLIENT_CA_FILE=str(pki.ca), TLS_REQUIRE_CLIENT_CERT=True)
    return make_settings(
        TLS_CERT_FILE=str(pki.server_cert), TLS_KEY_FILE=str(pki.server_key),
        SERVER_MIDDLEWARE=values.pop("SERVER_MIDDLEWARE", []), **values,
    )


def client_settings(ca: Path | None, cert: Path | None = None, key: Path | None = None,
                    **values: Any) -> Settings:
    files = {"CLIENT_TLS_CA_FILE": ca, "CLIENT_TLS_CERT_FILE": cert, "CLIENT_TLS_KEY_FILE": key}
    values.update({name: str(path) for name, path in files.items() if path is not None})
    return make_settings(CLIENT_MIDDLEWARE=[], **values)


def get(stub: Any, key: str = "k") -> str:
    return stub.Get(cache_pb2.GetReq(key=key), timeout=TIMEOUT).value.decode()


def assert_unavailable(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        get(stub)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()


def test_tls_serves_a_client_that_trusts_the_ca(pairing: Pairing, pki: Pki) -> None:  # noqa: F811
    servicer = ScriptedServicer()
    with pairing.server(server_settings(pki), servicer) as server:
        with pairing.client(client_settings(pki.ca), server.address) as stub:
            assert get(stub, "hello") == "hello"
            assert [item.key for item in stub.Dump(cache_pb2.DumpReq(), timeout=TIMEOUT)]
        # A client that does not trust the server's CA, and a plaintext client, never get in.
        with pairing.client(client_settings(pki.other_ca), server.address) as stub:
            assert_unavailable(stub)
        with pairing.client(make_settings(CLIENT_MIDDLEWARE=[]), server.address) as stub:
            assert_unavailable(stub)
    assert servicer.attempts["k"] == 0


def test_mtls_rejects_clients_without_an_accepted_certificate(
    pairing: Pairing, pki: Pki  # noqa: F811
) -> None:
    servicer = ScriptedServicer()
    with pairing.server(server_settings(pki, mtls=True), servicer) as server:
        with pairing.client(client_settings(pki.ca), server.address) as stub:
            assert_unavailable(stub)  # no certificate
        stranger = client_settings(pki.ca, pki.stranger_cert, pki.stranger_key)
        with pairing.client(stranger, server.address) as stub:
            assert_unavailable(stub)  # a certificate from another CA
        with pairing.client(client_settings(pki.ca, pki.client_cert, pki.client_key),
                            server.address) as stub:
            assert get(stub, "mine") == "mine"
    assert servicer.attempts["k"] == 0
    assert servicer.attempts["mine"] == 1


def test_token_auth_admits_an_mtls_peer_by_its_certificate_name(
    pairing: Pairing, pki: Pki  # noqa: F811
) -> None:
    settings = server_settings(
        pki, mtls=True, SERVER_MIDDLEWARE=["resilience.middleware.TokenAuth"],
        SERVER_OPTIONS={"TokenAuth": {
            "peers": [Pki.client_name],
            "permissions": {Pki.client_name: ["cache.CacheService/Get"]},
        }},
    )
    client = client_settings(pki.ca, pki.client_cert, pki.client_key)
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(client, server.address) as stub:
        assert get(stub, "peer") == "peer"
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Dump(cache_pb2.DumpReq(), timeout=TIMEOUT))
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert Pki.client_name in caught.value.details()


@pytest.mark.parametrize("mode", ["sync", "aio"])
def test_server_name_override_is_what_the_certificate_must_carry(
    mode: str, pki: Pki  # noqa: F811
) -> None:
    pairing = Pairing(mode, "sync")  # type: ignore[arg-type]
    with pairing.server(server_settings(pki), ScriptedServicer()) as server:
        good = client_settings(pki.ca, CLIENT_TLS_SERVER_NAME="localhost")
        with pairing.client(good, server.address) as stub:
            assert get(stub) == "k"
        wrong = client_settings(pki.ca, CLIENT_TLS_SERVER_NAME="cache.elsewhere.example")
        with pairing.client(wrong, server.address) as stub:
            assert_unavailable(stub)


def test_unreadable_files_name_the_setting_and_the_path(tmp_path: Path, pki: Pki  # noqa: F811
                                                         ) -> None:
    missing = tmp_path / "nope.pem"
    settings = make_settings(TLS_CERT_FILE=str(missing), TLS_KEY_FILE=str(pki.server_key))
    with pytest.raises(ImproperlyConfigured, match=r"TLS_CERT_FILE is '.*nope\.pem'"):
        server_credentials(settings)
    with pytest.raises(ImproperlyConfigured, match=r"CLIENT_TLS_CA_FILE is '.*nope\.pem'"):
        channel_credentials(make_settings(CLIENT_TLS_CA_FILE=str(missing)))
    half = make_settings(TLS_CERT_FILE=str(pki.server_cert))
    with pytest.raises(ImproperlyConfigured, match="TLS_KEY_FILE is not set"):
        server_credentials(half)
    ca_only = server_settings(pki, TLS_CLIENT_CA_FILE=str(pki.ca))
    with pytest.raises(ImproperlyConfigured, match="TLS_REQUIRE_CLIENT_CERT is false"):
        server_credentials(ca_only)


def test_plaintext_is_refused_unless_allowed() -> None:
    assert server_credentials(make_settings()) is None  # ALLOW_PLAINTEXT defaults to true
    assert channel_credentials(make_settings()) is None
    strict = make_settings(ALLOW_PLAINTEXT=False)
    with pytest.raises(ImproperlyConfigured, match=r"ALLOW_PLAINTEXT is false.*E030"):
        Server(strict, scripted_apps(ScriptedServicer()), "127.0.0.1:0")
    with pytest.raises(ImproperlyConfigured, match=r"ALLOW_PLAINTEXT is false.*E031"):
        channel_credentials(strict)
    assert channel_credentials(make_settings(ALLOW_PLAINTEXT=False, CLIENT_TLS=True))
