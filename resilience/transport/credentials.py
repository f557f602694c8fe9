"""gRPC transport credentials from settings: TLS and mutual TLS for servers and channels.

File paths come from settings (put them in the git-ignored ``settings/.secrets.toml``);
the files are read when a server or channel is made, so a renewed certificate is picked
up on the next start. ``None`` means plaintext, which only ``ALLOW_PLAINTEXT`` permits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from resilience.core.errors import ImproperlyConfigured

CLIENT_FILES = ("CLIENT_TLS_CA_FILE", "CLIENT_TLS_CERT_FILE", "CLIENT_TLS_KEY_FILE")


def _setting(settings: Any, name: str, default: Any = "") -> Any:
    """A setting by name; objects that predate it (or fakes) give the default."""
    return getattr(settings, name, default)


def read_pem(settings: Any, name: str) -> bytes | None:
    """The bytes of the file named by setting ``name``, or ``None`` if the setting is empty.

    An unreadable file is a configuration error naming the setting and the path.
    """
    path = _setting(settings, name)
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{name} is '{path}', which cannot be read ({exc.strerror or exc}); point it at "
            f"a readable PEM file (in settings/.secrets.toml)"
        ) from None


def server_tls_enabled(settings: Any) -> bool:
    """Whether the server is configured to serve TLS (a certificate or a key is set)."""
    return bool(_setting(settings, "TLS_CERT_FILE") or _setting(settings, "TLS_KEY_FILE"))


def client_tls_enabled(settings: Any) -> bool:
    """Whether channels made from settings use TLS: ``CLIENT_TLS`` or any CLIENT_TLS_*
    setting."""
    return bool(
        _setting(settings, "CLIENT_TLS", False)
        or any(_setting(settings, name) for name in (*CLIENT_FILES, "CLIENT_TLS_SERVER_NAME"))
    )


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS credentials for the server, or ``None`` to serve plaintext (if ALLOW_PLAINTEXT).

    With TLS_REQUIRE_CLIENT_CERT and TLS_CLIENT_CA_FILE, every client must present a
    certificate signed by that CA (mutual TLS).
    """
    client_ca = read_pem(settings, "TLS_CLIENT_CA_FILE")
    require = bool(_setting(settings, "TLS_REQUIRE_CLIENT_CERT", False))
    if not server_tls_enabled(settings):
        if client_ca is not None or require:
            name = "TLS_CLIENT_CA_FILE" if client_ca is not None else "TLS_REQUIRE_CLIENT_CERT"
            raise ImproperlyConfigured(
                f"{name} is set but TLS_CERT_FILE and TLS_KEY_FILE are not; mutual TLS "
                f"needs the server's own certificate and key too"
            )
        refuse_plaintext(settings, "server")
        return None
    cert = read_pem(settings, "TLS_CERT_FILE")
    key = read_pem(settings, "TLS_KEY_FILE")
    if cert is None or key is None:
        missing = "TLS_KEY_FILE" if cert is not None else "TLS_CERT_FILE"
        raise ImproperlyConfigured(
            f"{missing} is not set; TLS needs both TLS_CERT_FILE and TLS_KEY_FILE"
        )
    if require and client_ca is None:
        raise ImproperlyConfigured(
            "TLS_REQUIRE_CLIENT_CERT is true but TLS_CLIENT_CA_FILE is not set; mutual TLS "
            "needs the CA that signs client certificates"
        )
    if client_ca is not None and not require:
        # grpcio asks for a client certificate only when it requires one.
        raise ImproperlyConfigured(
            "TLS_CLIENT_CA_FILE is set but TLS_REQUIRE_CLIENT_CERT is false, so clients would "
            "never be asked for a certificate; set TLS_REQUIRE_CLIENT_CERT = true for mutual "
            "TLS, or remove TLS_CLIENT_CA_FILE"
        )
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=require
        )
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"TLS_CERT_FILE/TLS_KEY_FILE are not usable: {exc}") from None


def channel_credentials(settings: Any) -> grpc.ChannelCredentials | None:
    """TLS credentials for channels made from settings, or ``None`` for plaintext (if
    ALLOW_PLAINTEXT).

    Without CLIENT_TLS_CA_FILE the system's root certificates are trusted; with
    CLIENT_TLS_CERT_FILE and CLIENT_TLS_KEY_FILE the channel presents a client certificate.
    """
    if not client_tls_enabled(settings):
        refuse_plaintext(settings, "client")
        return None
    cert = read_pem(settings, "CLIENT_TLS_CERT_FILE")
    key = read_pem(settings, "CLIENT_TLS_KEY_FILE")
    if (cert is None) != (key is None):
        missing = "CLIENT_TLS_KEY_FILE" if cert is not None else "CLIENT_TLS_CERT_FILE"
        raise ImproperlyConfigured(
            f"{missing} is not set; a client certificate needs both CLIENT_TLS_CERT_FILE "
            f"and CLIENT_TLS_KEY_FILE"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(settings, "CLIENT_TLS_CA_FILE"),
        private_key=key,
        certificate_chain=cert,
    )


def channel_options(settings: Any) -> tuple[tuple[str, Any], ...]:
    """Channel options the TLS settings add: the target-name override, if any."""
    name = _setting(settings, "CLIENT_TLS_SERVER_NAME")
    if name:
        return (("grpc.ssl_target_name_override", name),)
    return ()


def plaintext_refusal(side: str) -> str:
    """The one message for plaintext that ALLOW_PLAINTEXT does not permit."""
    if side == "server":
        return (
            "the server would serve plaintext: TLS_CERT_FILE and TLS_KEY_FILE are not set "
            "and ALLOW_PLAINTEXT is false"
        )
    return (
        "channels would connect in plaintext: no CLIENT_TLS_* setting is set and "
        "ALLOW_PLAINTEXT is false"
    )


def refuse_plaintext(settings: Any, side: str) -> None:
    """Raise unless ALLOW_PLAINTEXT: the backstop for code that builds servers and channels
    without going through ``check`` (runserver and runclient check first)."""
    if not _setting(settings, "ALLOW_PLAINTEXT", True):
        code = "resilience.E030" if side == "server" else "resilience.E031"
        raise ImproperlyConfigured(f"{plaintext_refusal(side)} ({code})")
