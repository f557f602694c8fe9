"""Authentication: the server checks who calls (a bearer token or an mTLS certificate) and
what they may call; the client attaches its token.

Tokens are compared with ``hmac.compare_digest`` against every configured token, without
stopping at a match, so that timing reveals neither a token nor which identity matched.
Tokens and metadata values are never logged or put in a message.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any

import grpc

from resilience.core.call import Call
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.spelling import did_you_mean

AUTHORIZATION = "authorization"
SCHEME = "bearer"
#: Services that need no credentials by default: probes and tooling must reach them.
DEFAULT_EXEMPT = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
#: Where grpc's auth context keeps a verified client certificate's names.
PEER_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def _token_problem(noun: str, token: str) -> str | None:
    """Why ``token`` cannot travel as a bearer token, or None; never quotes the token."""
    if not token:
        return f"{noun} is empty"
    if not token.isascii() or not token.isprintable() or " " in token:
        return f"{noun} has characters other than visible ASCII (no spaces)"
    return None


def _text(value: str | bytes) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class TokenAuth(Middleware):
    """Admit calls with a known bearer token or an accepted mTLS identity; UNAUTHENTICATED
    for anyone else, PERMISSION_DENIED for a known identity calling outside its
    permissions."""

    sides = frozenset({"server"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        tokens: dict[str, str] | None = option(
            None,
            "Identity name -> its bearer token (keep them in settings/.secrets.toml).",
            secret=True,
        )
        peers: tuple[str, ...] = option(
            (),
            "mTLS identities admitted without a token: a verified client certificate's "
            "subject CN or a SAN; the name is the identity.",
        )
        permissions: dict[str, tuple[str, ...]] | None = option(
            None,
            "Identity -> the 'package.Service' or 'package.Service/Method' it may call; an "
            "identity not listed may call everything.",
        )
        exempt: tuple[str, ...] = option(
            DEFAULT_EXEMPT, "Services or full method names that need no credentials."
        )

        def method_names(self) -> list[tuple[str, str]]:
            names = [("exempt", target) for target in self.exempt]
            return names + [("permissions", target)
                            for allowed in (self.permissions or {}).values()
                            for target in allowed]

        def validate(self) -> list[str]:
            problems = []
            tokens = self.tokens or {}
            if not tokens and not self.peers:
                problems.append(
                    "options 'tokens' and 'peers' are both empty, so every call would be "
                    "refused; give tokens (identity = \"token\", in settings/.secrets.toml) "
                    "or peers (mTLS identities)"
                )
            for identity, token in tokens.items():
                problem = _token_problem(f"option 'tokens': the token of '{identity}'", token)
                if problem:
                    problems.append(f"{problem}; expected visible ASCII, such as what "
                                    f"`python -c 'import secrets; print(secrets.token_urlsafe"
                                    f"(32))'` prints")
            if len(set(tokens.values())) < len(tokens):
                problems.append(
                    "option 'tokens' gives two identities the same token, so a caller's "
                    "identity would be ambiguous; give each identity its own token"
                )
            known = set(tokens) | set(self.peers)
            for identity, allowed in (self.permissions or {}).items():
                if identity not in known:
                    problems.append(
                        f"option 'permissions' names identity '{identity}', which is in "
                        f"neither 'tokens' nor 'peers'{did_you_mean(identity, known)}; add "
                        f"it there or fix the name"
                    )
                for target in allowed:
                    if "." not in target.partition("/")[0]:
                        problems.append(
                            f"option 'permissions': '{identity}' lists '{target}'; expected "
                            f"'package.Service' or 'package.Service/Method'"
                        )
            return problems

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = self.options
        service = info.method.partition("/")[0]
        if info.method in opts.exempt or service in opts.exempt:
            raise MiddlewareNotUsed(f"option 'exempt' lists {info.method} or its service")
        self._tokens = tuple(
            (identity, token.encode("ascii")) for identity, token in (opts.tokens or {}).items()
        )
        self._peers = frozenset(opts.peers)
        permissions = opts.permissions or {}
        # Identities denied this method; everyone else who authenticates may call it.
        self._denied = frozenset(
            identity for identity, allowed in permissions.items()
            if info.method not in allowed and service not in allowed
        )

    def __call__(self, call: Call) -> Any:
        self._authorize(call)
        return self.handler(call)

    def acall(self, call: Call) -> Any:
        """The asyncio path: checking awaits nothing, so the handler's result passes on."""
        self._authorize(call)
        return self.handler(call)

    def _authorize(self, call: Call) -> None:
        identity = self._identify(call)
        if identity in self._denied:
            raise RpcStatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"identity '{identity}' may not call {call.method}",
                retryable=False,
            )

    def _identify(self, call: Call) -> str:
        """The caller's identity from its bearer token, else from its mTLS certificate."""
        header = [value for key, value in call.metadata if key == AUTHORIZATION]
        if header:
            return self._token_identity(header)
        if self._peers and call.context is not None:
            for name in self._peer_names(call.context):
                if name in self._peers:
                    return name
        raise _unauthenticated(
            "missing credentials: send 'authorization: Bearer <token>' metadata"
            + (" or an accepted client certificate" if self._peers else "")
        )

    def _token_identity(self, header: list[str | bytes]) -> str:
        if len(header) != 1:
            raise _unauthenticated("more than one 'authorization' metadata entry")
        scheme, _, token = _text(header[0]).strip().partition(" ")
        token = token.strip()
        if scheme.lower() != SCHEME or not token:
            raise _unauthenticated("malformed 'authorization' metadata: expected 'Bearer <token>'")
        given = token.encode("utf-8", "replace")
        found = None
        for identity, expected in self._tokens:  # all of them: no early exit
            if hmac.compare_digest(given, expected):
                found = identity
        if found is None:
            raise _unauthenticated("unknown bearer token")
        return found

    @staticmethod
    def _peer_names(context: Any) -> list[str]:
        """The verified client certificate's CN and SANs (empty without mTLS)."""
        auth = context.auth_context() or {}
        return [_text(name) for key in PEER_NAME_KEYS for name in auth.get(key, ())]


def _unauthenticated(details: str) -> RpcStatusError:
    return RpcStatusError(grpc.StatusCode.UNAUTHENTICATED, details, retryable=False)


class BearerToken(Middleware):
    """Attach ``authorization: Bearer <token>`` to every call, for a server's TokenAuth.

    A call that already carries ``authorization`` metadata keeps its own.
    """

    sides = frozenset({"client"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        token: str = option(
            "", "The bearer token (keep it in settings/.secrets.toml).", secret=True
        )

        def validate(self) -> list[str]:
            problem = _token_problem("option 'token'", self.token)
            if problem:
                return [
                    f"{problem}; expected the token the server's TokenAuth knows for this "
                    f"client; set it under CLIENT_OPTIONS.BearerToken in "
                    f"settings/.secrets.toml"
                ]
            return []

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self._entry = (AUTHORIZATION, f"Bearer {self.options.token}")

    def __call__(self, call: Call) -> Any:
        metadata = call.metadata
        for key, _ in metadata:
            if key == AUTHORIZATION:
                return self.handler(call)
        return self.handler(call.replace(metadata=(*metadata, self._entry)))

    acall = __call__
