"""The client's address, the one every per-address limit counts by (our throttles, the agent API, django-allauth).

`X-Forwarded-For` is whatever the client wrote, except for the entries that a proxy of ours appended. So it is
read only when the connection itself comes from a trusted proxy (`TRUSTED_PROXIES`, addresses or networks), and
then from the right: each trusted proxy's entry is skipped, and the first address that is not a trusted proxy
is the client. Entries that are not IP addresses are ignored. With no trusted proxies (the default) the header
is never read, and the client is `REMOTE_ADDR`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An IPv6 client usually holds a whole /64: counting per address would give it 2^64 allowances.
IPV6_RATE_LIMIT_PREFIX = 64


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """`["10.0.0.0/8", "192.0.2.7", "::1"]` -> networks; a bad entry is a ValueError naming it."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: {entry!r} is not an IP address or network") from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _trusted(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return parse_networks(entries)


def parse_address(value: str) -> IPAddress | None:
    """An address as proxies write it (`192.0.2.1`, `192.0.2.1:5678`, `[2001:db8::1]:443`, `2001:db8::1`), or
    None. IPv4-mapped IPv6 addresses are read as the IPv4 address they carry."""
    text = value.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(request: HttpRequest) -> IPAddress | None:
    """The client's address (see the module docstring), or None when the connection has none (a Unix socket)."""
    remote = parse_address(request.META.get("REMOTE_ADDR") or "")
    if remote is None:
        return None
    networks = _trusted(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    if not networks or not _is_trusted(remote, networks):
        return remote
    client = remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR") or ""
    for entry in reversed(forwarded.split(",")):
        address = parse_address(entry)
        if address is None:
            continue
        client = address
        if not _is_trusted(address, networks):
            break
    # Every entry a trusted proxy: the farthest of them is as near to the client as we can tell.
    return client


def client_ip(request: HttpRequest) -> str:
    """The client's address as text; empty when the connection has none."""
    address = client_address(request)
    return str(address) if address is not None else ""


def client_key(request: HttpRequest) -> str:
    """What per-address rate limits count by: the IPv4 address, or the IPv6 address's /64 network."""
    address = client_address(request)
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{IPV6_RATE_LIMIT_PREFIX}", strict=False))
    return str(address)


def from_trusted_proxy(request: HttpRequest) -> bool:
    """Whether the connection itself comes from one of `TRUSTED_PROXIES`."""
    remote = parse_address(request.META.get("REMOTE_ADDR") or "")
    networks = _trusted(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    return remote is not None and bool(networks) and _is_trusted(remote, networks)


FORWARDED_HEADERS = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "HTTP_FORWARDED")


class UntrustedForwardedHeadersMiddleware:
    """`X-Forwarded-Proto` and its kind are a proxy's word: from anyone else they are dropped before Django reads
    them (SECURE_PROXY_SSL_HEADER would otherwise take a client's own claim that it came over HTTPS)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not from_trusted_proxy(request):
            for header in FORWARDED_HEADERS:
                request.META.pop(header, None)
        return self.get_response(request)
