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


def server_setting_problem(settings: Any) -> str | None:
    """Why the server's TLS settings cannot work together, from which are set (no file is
    read), or ``None``. The text starts with the setting it is about."""
    client_ca = bool(_setting(settings, "TLS_CLIENT_CA_FILE"))
    require = bool(_setting(settings, "TLS_REQUIRE_CLIENT_CERT", False))
    if not server_tls_enabled(settings):
        if client_ca or require:
            name = "TLS_CLIENT_CA_FILE" if client_ca else "TLS_REQUIRE_CLIENT_CERT"
            return (f"{name} is set but TLS_CERT_FILE and TLS_KEY_FILE are not; mutual TLS "
                    f"needs the server's own certificate and key too")
        return None
    if not _setting(settings, "TLS_CERT_FILE") or not _setting(settings, "TLS_KEY_FILE"):
        missing = "TLS_KEY_FILE" if _setting(settings, "TLS_CERT_FILE") else "TLS_CERT_FILE"
        return f"{missing} is not set; TLS needs both TLS_CERT_FILE and TLS_KEY_FILE"
    if require and not client_ca:
        return ("TLS_REQUIRE_CLIENT_CERT is true but TLS_CLIENT_CA_FILE is not set; mutual TLS "
                "needs the CA that signs client certificates")
    if client_ca and not require:
        # grpcio asks for a client certificate only when it requires one.
        return ("TLS_CLIENT_CA_FILE is set but TLS_REQUIRE_CLIENT_CERT is false, so clients "
                "would never be asked for a certificate; set TLS_REQUIRE_CLIENT_CERT = true for "
                "mutual TLS, or remove TLS_CLIENT_CA_FILE")
    return None


def client_setting_problem(settings: Any) -> str | None:
    """Why the client's TLS settings cannot work together (no file is read), or ``None``."""
    cert = bool(_setting(settings, "CLIENT_TLS_CERT_FILE"))
    if client_tls_enabled(settings) and cert != bool(_setting(settings, "CLIENT_TLS_KEY_FILE")):
        missing = "CLIENT_TLS_KEY_FILE" if cert else "CLIENT_TLS_CERT_FILE"
        return (f"{missing} is not set; a client certificate needs both CLIENT_TLS_CERT_FILE "
                f"and CLIENT_TLS_KEY_FILE")
    return None


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS credentials for the server, or ``None`` to serve plaintext (if ALLOW_PLAINTEXT).

    With TLS_REQUIRE_CLIENT_CERT and TLS_CLIENT_CA_FILE, every client must present a
    certificate signed by that CA (mutual TLS).
    """
    if problem := server_setting_problem(settings):
        raise ImproperlyConfigured(problem)
    if not server_tls_enabled(settings):
        refuse_plaintext(settings, "server")
        return None
    cert = read_pem(settings, "TLS_CERT_FILE")
    key = read_pem(settings, "TLS_KEY_FILE")
    client_ca = read_pem(settings, "TLS_CLIENT_CA_FILE")
    require = bool(_setting(settings, "TLS_REQUIRE_CLIENT_CERT", False))
    assert cert is not None and key is not None, "server_setting_problem checked both"
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
    if problem := client_setting_problem(settings):
        raise ImproperlyConfigured(problem)
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(settings, "CLIENT_TLS_CA_FILE"),
        private_key=read_pem(settings, "CLIENT_TLS_KEY_FILE"),
        certificate_chain=read_pem(settings, "CLIENT_TLS_CERT_FILE"),
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
