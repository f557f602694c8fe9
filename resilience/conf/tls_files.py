"""Read and match the TLS files the settings name, for ``check``: every file of a side.

grpc reads these files only when a server or channel is made, and says little when one is
wrong (a handshake that fails later, or "PEM lib"). ``check`` reads them first: a file that
cannot be read (E032), is not PEM or has a corrupt certificate (E033), a key that is not
its certificate's (E034), a file that holds the wrong thing: a key where certificates
belong, a certificate where the key belongs, an encrypted key (E035).

This uses the standard library's ``ssl`` (OpenSSL), not ``cryptography``, so that check
works in a plain install: it parses each certificate and matches a key to its certificate,
which is what these checks need. A file's contents are never quoted: a key is a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from resilience.checks import CheckMessage, error

#: Which files each side reads, and what each must hold.
CERTIFICATES, KEY, CA = "certificates", "key", "ca"
SIDE_FILES = {
    "server": {"TLS_CERT_FILE": CERTIFICATES, "TLS_KEY_FILE": KEY, "TLS_CLIENT_CA_FILE": CA},
    "client": {"CLIENT_TLS_CA_FILE": CA, "CLIENT_TLS_CERT_FILE": CERTIFICATES,
               "CLIENT_TLS_KEY_FILE": KEY},
}
PAIRS = {"server": ("TLS_CERT_FILE", "TLS_KEY_FILE"),
         "client": ("CLIENT_TLS_CERT_FILE", "CLIENT_TLS_KEY_FILE")}
KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"})
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_WHERE = "(in settings/.secrets.toml)"


def _shown_path(path: str) -> str:
    """The path as given, and where a relative one is looked for."""
    if Path(path).expanduser().is_absolute():
        return f"'{path}'"
    return f"'{path}' (relative to the working directory {os.getcwd()})"


def _blocks(data: bytes) -> tuple[list[tuple[str, bytes, bool]], str | None]:
    """The PEM blocks of ``data`` as (label, DER, encrypted), or why it is not PEM."""
    found = list(_BLOCK.finditer(data))
    if not found:
        if not data.strip():
            return [], "it is empty"
        if b"-----BEGIN " in data:
            return [], "its PEM block has no matching '-----END ...-----' line (cut short?)"
        if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER, the binary form
            return [], "it is binary (DER), not PEM"
        return [], "it has no '-----BEGIN ...-----' line, so it is not PEM"
    if data.count(b"-----BEGIN ") > len(found):
        return [], "one of its PEM blocks has no matching '-----END ...-----' line"
    blocks = []
    for match in found:
        label = match.group(1).decode("ascii")
        lines = match.group(2).split(b"\n")
        encrypted = any(line.startswith(b"Proc-Type:") and b"ENCRYPTED" in line
                        for line in lines)
        body = b"".join(line.strip() for line in lines if b":" not in line)
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return [], f"its '{label}' block is not valid base64 (the file is damaged)"
        blocks.append((label, der, encrypted or label == "ENCRYPTED PRIVATE KEY"))
    return blocks, None


def _certificate_problem(der: bytes) -> str | None:
    """Why OpenSSL cannot parse this certificate, or ``None``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=der)
    except ssl.SSLError as exc:
        return _reason(exc)
    return None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, without the source location."""
    return exc.reason or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))


def _content_problem(name: str, kind: str, blocks: list[tuple[str, bytes, bool]]
                     ) -> tuple[str, str, str] | None:
    """(id, message, hint) for a PEM file that holds the wrong thing, or ``None``."""
    labels = [label for label, _, _ in blocks]
    certs = [der for label, der, _ in blocks if label == "CERTIFICATE"]
    if kind == KEY:
        if any(encrypted for label, _, encrypted in blocks if "PRIVATE KEY" in label):
            return ("resilience.E035", "holds an encrypted private key: grpc cannot use it "
                    "(it takes no passphrase)",
                    f"write the key unencrypted (openssl pkey -in KEY -out KEY.plain) and "
                    f"keep it readable only by the service's user; point {name} at it")
        if not any(label in KEY_LABELS for label in labels):
            swapped = ("; it holds a certificate: are the certificate and key files swapped?"
                       if certs else "")
            return ("resilience.E035",
                    f"holds no private key (its PEM blocks: {', '.join(labels)}){swapped}",
                    f"point {name} at the PEM private key ('-----BEGIN PRIVATE KEY-----')")
        return None
    if not certs:
        what = "a private key" if any("PRIVATE KEY" in label for label in labels) else (
            ", ".join(labels))
        swapped = ": are the certificate and key files swapped?" if kind == CERTIFICATES else ""
        own = "client's" if name.startswith("CLIENT_") else "server's"
        fix = (f"the PEM certificate chain, the {own} own certificate first"
               if kind == CERTIFICATES else "a PEM bundle of CA certificates")
        return ("resilience.E035", f"holds {what} and no certificate{swapped}",
                f"point {name} at {fix} ('-----BEGIN CERTIFICATE-----')")
    for number, der in enumerate(certs, 1):
        problem = _certificate_problem(der)
        if problem:
            return ("resilience.E033",
                    f"has a certificate that cannot be parsed: number {number} of "
                    f"{len(certs)} ({problem})",
                    f"replace {name} with an intact PEM file (re-export or re-download it)")
    return None


def _file_problems(settings: Any, name: str, kind: str) -> list[CheckMessage]:
    path = getattr(settings, name, "")
    if not path:
        return []
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        return [error("resilience.E032", name,
                      f"is {_shown_path(path)}, which cannot be read ({exc.strerror or exc})",
                      f"point {name} at a readable PEM file {_WHERE}")]
    blocks, not_pem = _blocks(data)
    if not_pem:
        convert = ("; convert it with 'openssl pkey -inform der -in FILE -out FILE.pem'"
                   if kind == KEY else "; convert it with 'openssl x509 -inform der -in "
                   "FILE -out FILE.pem'") if "DER" in not_pem else ""
        return [error("resilience.E033", name, f"is {_shown_path(path)}, but {not_pem}",
                      f"point {name} at a PEM file {_WHERE}{convert}")]
    problem = _content_problem(name, kind, blocks)
    if problem:
        id_, message, hint = problem
        return [error(id_, name, f"is {_shown_path(path)}, which {message}", hint)]
    return []


def _pair_problem(settings: Any, side: str) -> list[CheckMessage]:
    """Whether the side's key belongs to its certificate (the first in the chain)."""
    cert_name, key_name = PAIRS[side]
    cert, key = getattr(settings, cert_name, ""), getattr(settings, key_name, "")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with contextlib.suppress(ssl.SSLError):  # grpc's BoringSSL has no security levels
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        context.load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [error(
                "resilience.E034", key_name,
                f"is '{key}', which is not the private key of the certificate in "
                f"{cert_name} '{cert}'",
                f"point {key_name} at the key {cert_name}'s certificate was issued for; if "
                f"{cert_name} holds a chain, its own certificate must come first",
            )]
        return [error("resilience.E033", key_name,
                      f"is '{key}', which OpenSSL cannot load with {cert_name} '{cert}' "
                      f"({_reason(exc)})",
                      f"point {key_name} at an unencrypted PEM private key {_WHERE}")]
    except OSError:
        return []  # unreadable: already reported
    return []


def tls_file_problems(settings: Any, sides: Iterable[str] = ("server", "client")
                      ) -> list[CheckMessage]:
    """Every problem of every TLS file the given sides name, then each side's key against
    its certificate (when both files are sound)."""
    messages = []
    for side in sides:
        found = {name: _file_problems(settings, name, kind)
                 for name, kind in SIDE_FILES[side].items()}
        messages += [message for problems in found.values() for message in problems]
        cert_name, key_name = PAIRS[side]
        both = getattr(settings, cert_name, "") and getattr(settings, key_name, "")
        if both and not found[cert_name] and not found[key_name]:
            messages += _pair_problem(settings, side)
    return messages
