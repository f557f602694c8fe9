"""Parse the addresses settings give: where a server binds, where a client connects.

grpc takes a port above 65535 modulo 65536 (``127.0.0.1:70000`` listens on 4464) and a
host without a port as port 443, and prometheus' HTTP server raises OverflowError: so
every address setting is parsed here, once, by ``build_options`` (through the ``check`` of
its option), and a mistake is a sentence saying what is wrong, never a surprise port.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

MAX_PORT = 65535
#: A host name: dot-separated labels of letters, digits, '-' and '_' (container names).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
#: The target schemes ``parse_target`` knows, as grpc writes them.
TARGET_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
TARGET_FORMS = ("'HOST:PORT', '[IPV6]:PORT', 'dns:///HOST:PORT', 'ipv4:ADDR:PORT,...', "
                "'ipv6:[ADDR]:PORT,...', 'unix:PATH' or 'unix-abstract:NAME'")


class AddressError(ValueError):
    """Why an address cannot work; the text completes "is 'VALUE'; ..."."""


@dataclasses.dataclass(frozen=True)
class HostPort:
    host: str  # without brackets
    port: int


@dataclasses.dataclass(frozen=True)
class Target:
    """A client target: its resolver scheme and the addresses (host and port) it names;
    ``unix`` and ``unix-abstract`` targets name a path instead."""

    scheme: str
    addresses: tuple[HostPort, ...] = ()
    path: str = ""


def _port(text: str, *, lowest: int) -> int:
    if not text:
        raise AddressError("has no port after the ':'")
    if not text.isdigit() or not text.isascii():
        raise AddressError(f"its port '{text}' is not a number")
    port = int(text)
    if not lowest <= port <= MAX_PORT:
        raise AddressError(f"its port {port} is out of range: ports go from {lowest} to "
                           f"{MAX_PORT}")
    return port


def _host(text: str) -> str:
    if not text:
        raise AddressError("has no host before the port")
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", text):
        raise AddressError(f"'{text}' is not an IPv4 address")
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"'{text}' is not a host name or an IP address")
    return text


def parse_host_port(text: str, *, port_zero: bool) -> HostPort:
    """``HOST:PORT``, ``[IPV6]:PORT``; a port of 0 (pick a free one) only if ``port_zero``."""
    if not isinstance(text, str) or not text.strip():
        raise AddressError("is empty")
    if text != text.strip():
        raise AddressError("has spaces around it")
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        try:
            if not sep or not isinstance(ipaddress.ip_address(inside), ipaddress.IPv6Address):
                raise ValueError
        except ValueError:
            raise AddressError(f"'[{inside}{sep}' is not a bracketed IPv6 address") from None
        if not rest.startswith(":"):
            raise AddressError("has no port: write '[ADDR]:PORT'")
        return HostPort(inside, _port(rest[1:], lowest=0 if port_zero else 1))
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(f"has no port: write '{text}:PORT' (grpc would take port 443)")
    if ":" in host:
        raise AddressError("is an IPv6 address without brackets: write '[ADDR]:PORT'")
    return HostPort(_host(host), _port(port, lowest=0 if port_zero else 1))


def bind_address_problem(value: str) -> str | None:
    """Why ``value`` cannot be a server's bind address (SERVER_ADDRESS), or ``None``."""
    if isinstance(value, str) and value.startswith("unix:"):
        return ("expected HOST:PORT; runserver binds TCP addresses only, such as "
                "'127.0.0.1:50051' or '[::]:50051'")
    try:
        parse_host_port(value, port_zero=True)
    except AddressError as exc:
        return (f"{exc}; expected HOST:PORT such as '127.0.0.1:50051', '0.0.0.0:50051' or "
                f"'[::]:50051' (port 0 picks a free port)")
    return None


def http_address_problem(value: str) -> str | None:
    """Why ``value`` cannot be where /metrics is served (METRICS_*_ADDRESS), or ``None``."""
    try:
        parse_host_port(value, port_zero=True)
    except AddressError as exc:
        return (f"{exc}; expected HOST:PORT such as '127.0.0.1:9464' (port 0 picks a free "
                f"port)")
    return None


def parse_target(text: str) -> Target:
    """A client target in any form grpc resolves that this framework supports.

    The one parser of targets: a new form (a resolver scheme) is added here. Like grpc, a
    text whose scheme is not known is taken as ``HOST:PORT`` for the dns resolver.
    """
    if not isinstance(text, str) or not text.strip():
        raise AddressError("is empty")
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in TARGET_SCHEMES:
        if "://" in text:
            raise AddressError(f"its scheme '{text.partition('://')[0]}' is not one grpc "
                               f"resolves here")
        return Target("dns", (parse_host_port(text, port_zero=False),))
    if scheme == "dns":
        # dns:HOST:PORT, dns:///HOST:PORT, or dns://AUTHORITY/HOST:PORT (a DNS server).
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise AddressError("is 'dns://' without the '/' before HOST:PORT: write "
                                   "'dns:///HOST:PORT'")
            if authority:
                parse_host_port(authority, port_zero=False)
        return Target("dns", (parse_host_port(rest, port_zero=False),))
    if scheme in ("ipv4", "ipv6"):
        addresses = []
        for part in rest.split(","):
            address = parse_host_port(part, port_zero=False)
            version = ipaddress.ip_address(address.host).version if _is_ip(address.host) else 0
            if version != int(scheme[-1]):
                raise AddressError(f"'{part}' is not an IPv{scheme[-1]} address and port")
            addresses.append(address)
        return Target(scheme, tuple(addresses))
    path = rest.removeprefix("//") if scheme == "unix" else rest
    if not path:
        raise AddressError(f"'{scheme}:' names no socket")
    return Target(scheme, path=path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def target_problem(value: str) -> str | None:
    """Why ``value`` cannot be a client target (CLIENT_TARGET), or ``None``."""
    try:
        parse_target(value)
    except AddressError as exc:
        return f"{exc}; expected one of {TARGET_FORMS}, such as '127.0.0.1:50051'"
    return None


def server_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be the name a server's certificate must carry
    (CLIENT_TLS_SERVER_NAME), or ``None``; empty means the target's own host."""
    if not value:
        return None
    try:
        if ":" in value and not _is_ip(value):
            raise AddressError("has a port, but a certificate names a host only")
        _host(value)
    except AddressError as exc:
        return f"{exc}; expected the host name the server's certificate carries, such as " \
               f"'cache.internal'"
    return None
