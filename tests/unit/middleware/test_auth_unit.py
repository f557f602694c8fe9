"""TokenAuth and BearerToken without a network: constant-time comparison against every
token, the rejections, the option checks (which never quote a token), and both paths."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import grpc
import pytest

from resilience.core.call import Call, CallKind
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware import BearerToken, TokenAuth

GET = "cache.CacheService/Get"
SECRET = "s3cret-token-value-0123456789"


def info(method: str = GET, side: str = "server", is_async: bool = False) -> ChainInfo:
    return ChainInfo(method, CallKind.UNARY_UNARY, side, "X", {}, is_async=is_async)  # type: ignore[arg-type]


def options(cls: Any, **values: Any) -> Any:
    built, problems = build_options(cls.Options, values)
    assert not problems, problems
    return built


def token_auth(method: str = GET, is_async: bool = False, **values: Any) -> TokenAuth:
    values.setdefault("tokens", {"a": "token-a-0123456789", "b": SECRET, "c": "token-c-012345"})
    return TokenAuth(lambda call: ("ok", call), options(TokenAuth, **values),
                     info(method, is_async=is_async))


def server_call(*metadata: tuple[str, str]) -> Call:
    return Call(GET, CallKind.UNARY_UNARY, "server", None, metadata=metadata)


def code(middleware: Any, call: Call) -> grpc.StatusCode:
    try:
        middleware(call)
    except RpcStatusError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_every_token_is_compared_in_constant_time_without_stopping_at_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = token_auth()
    assert code(auth, server_call(("authorization", "Bearer token-a-0123456789"))) is (
        grpc.StatusCode.OK
    )
    assert len(compared) == 3  # the first token matched; the other two were compared too
    compared.clear()
    assert code(auth, server_call(("authorization", "Bearer wrong"))) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert [given for given, _ in compared] == [b"wrong"] * 3


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer"),),
    (("authorization", f"Basic {SECRET}"),),
    (("authorization", f"Bearer {SECRET}x"),),
    (("authorization", f"Bearer {SECRET}"), ("authorization", f"Bearer {SECRET}")),
])
def test_missing_malformed_unknown_or_repeated_tokens_are_unauthenticated(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(RpcStatusError) as caught:
        token_auth()(server_call(*metadata))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.retryable is False
    assert SECRET not in caught.value.details()


def test_identity_comes_from_the_token_and_permissions_bound_it() -> None:
    auth = token_auth(permissions={"b": ["cache.CacheService/Dump"], "a": ["cache.CacheService"]})
    assert code(auth, server_call(("authorization", "bearer token-a-0123456789"))) is (
        grpc.StatusCode.OK  # the scheme is case-insensitive; a service grants its methods
    )
    with pytest.raises(RpcStatusError) as caught:
        auth(server_call(("authorization", f"Bearer {SECRET}")))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == f"identity 'b' may not call {GET}"
    # 'c' has no entry in permissions: it may call everything.
    assert code(auth, server_call(("authorization", "Bearer token-c-012345"))) is (
        grpc.StatusCode.OK
    )


def test_exempt_methods_leave_the_chain() -> None:
    with pytest.raises(MiddlewareNotUsed):
        token_auth("grpc.health.v1.Health/Check")
    with pytest.raises(MiddlewareNotUsed):
        token_auth(GET, exempt=["cache.CacheService"])


def test_asyncio_path_checks_then_passes_the_awaitable_on() -> None:
    async def handler(call: Call) -> str:
        return "answered"

    auth = TokenAuth(handler, options(TokenAuth, tokens={"b": SECRET}), info(is_async=True))

    async def main() -> None:
        good = server_call(("authorization", f"Bearer {SECRET}"))
        assert await auth.acall(good) == "answered"
        with pytest.raises(RpcStatusError) as caught:
            await auth.acall(server_call())
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_token_auth_options_are_checked_without_quoting_tokens() -> None:
    _, problems = build_options(TokenAuth.Options, {})
    assert problems == [
        "options 'tokens' and 'peers' are both empty, so every call would be refused; give "
        "tokens (identity = \"token\", in settings/.secrets.toml) or peers (mTLS identities)"
    ]
    _, problems = build_options(TokenAuth.Options, {
        "tokens": {"a": SECRET, "b": SECRET, "c": "has space"},
        "permissions": {"ghost": ["cache.CacheService"], "a": ["Get"]},
    })
    text = "\n".join(problems)
    assert SECRET not in text and "has space" not in text
    assert "the token of 'c' has characters other than visible ASCII" in text
    assert "gives two identities the same token" in text
    assert "names identity 'ghost', which is in neither 'tokens' nor 'peers'" in text
    assert "'a' lists 'Get'; expected 'package.Service' or 'package.Service/Method'" in text


def test_bearer_token_adds_its_metadata_unless_the_call_has_its_own() -> None:
    seen: list[Call] = []
    bearer = BearerToken(lambda call: seen.append(call), options(BearerToken, token=SECRET),
                         info(side="client"))
    base = Call(GET, CallKind.UNARY_UNARY, "client", None, metadata=(("x-tenant", "t"),))
    bearer(base)
    assert seen[-1].metadata == (("x-tenant", "t"), ("authorization", f"Bearer {SECRET}"))
    assert base.metadata == (("x-tenant", "t"),)  # never mutated
    own = base.replace(metadata=(("authorization", "Bearer mine"),))
    bearer(own)
    assert seen[-1].metadata == (("authorization", "Bearer mine"),)
    assert BearerToken.acall is BearerToken.__call__


def test_bearer_token_rejects_an_empty_token() -> None:
    _, problems = build_options(BearerToken.Options, {})
    assert problems == [
        "option 'token' is empty; expected the token the server's TokenAuth knows for this "
        "client; set it under CLIENT_OPTIONS.BearerToken in settings/.secrets.toml"
    ]
