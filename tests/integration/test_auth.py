"""TokenAuth on real servers and BearerToken on real channels, in the four pairings of sync
and asyncio client and server: a known token gets in, a wrong or missing one gets
UNAUTHENTICATED, and a known identity outside its permissions gets PERMISSION_DENIED.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0
READER = "r3ader-token-0123456789abcdef"
ADMIN = "adm1n-token-0123456789abcdef"


def server_settings() -> Any:
    return make_settings(
        SERVER_MIDDLEWARE=["resilience.middleware.TokenAuth"],
        SERVER_OPTIONS={"TokenAuth": {
            "tokens": {"reader": READER, "admin": ADMIN},
            "permissions": {"reader": ["cache.CacheService/Get"]},
        }},
    )


def client_settings(token: str | None) -> Any:
    if token is None:
        return make_settings(CLIENT_MIDDLEWARE=[])
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.BearerToken"],
        CLIENT_OPTIONS={"BearerToken": {"token": token}},
    )


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_tokens_and_permissions(pairing: Pairing) -> None:
    servicer = ScriptedServicer()

    def get(stub: Any, **kwargs: Any) -> Any:
        return lambda: stub.Get(cache_pb2.GetReq(key="k"), timeout=TIMEOUT, **kwargs)

    def dump(stub: Any) -> Any:
        return lambda: list(stub.Dump(cache_pb2.DumpReq(), timeout=TIMEOUT))

    with pairing.server(server_settings(), servicer) as server:
        with pairing.client(client_settings(READER), server.address) as stub:
            assert code_of(get(stub)) is grpc.StatusCode.OK
            assert code_of(dump(stub)) is grpc.StatusCode.PERMISSION_DENIED
            # The caller's own authorization metadata wins over the configured token.
            own = get(stub, metadata=[("authorization", "Bearer not-the-token")])
            assert code_of(own) is grpc.StatusCode.UNAUTHENTICATED
        with pairing.client(client_settings(ADMIN), server.address) as stub:
            assert code_of(get(stub)) is grpc.StatusCode.OK
            assert code_of(dump(stub)) is grpc.StatusCode.OK
        with pairing.client(client_settings(READER + "x"), server.address) as stub:
            assert code_of(get(stub)) is grpc.StatusCode.UNAUTHENTICATED
            assert code_of(dump(stub)) is grpc.StatusCode.UNAUTHENTICATED
        with pairing.client(client_settings(None), server.address) as stub:
            assert code_of(get(stub)) is grpc.StatusCode.UNAUTHENTICATED
            malformed = get(stub, metadata=[("authorization", f"Basic {READER}")])
            assert code_of(malformed) is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                get(stub)()
            assert "missing credentials" in caught.value.details()
            assert READER not in caught.value.details()
    # Rejected calls never reached the servicer: reader's Get and admin's Get only.
    assert servicer.attempts["k"] == 2
