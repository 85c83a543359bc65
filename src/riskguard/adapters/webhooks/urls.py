"""Which webhook target URLs riskguard will call (server-side request forgery defence).

A subscription's URL is supplied by a tenant, and the dispatcher calls it from inside the
operator's network, so the URL must not reach what the tenant could not reach itself:

- the scheme is ``https`` (``http`` only in development, or to a loopback address when
  loopback targets are explicitly allowed), no user name or password in the URL, no fragment;
- the host is resolved and *every* address it resolves to must be allowed: never link-local
  (169.254.0.0/16, fe80::/10, which hold the cloud metadata services 169.254.169.254 and
  fd00:ec2::254), unspecified, multicast, reserved or otherwise not globally routable; loopback
  and private ranges (RFC 1918, CGNAT, unique-local IPv6) only when the policy allows them.
  IPv4 addresses embedded in IPv6 ones (mapped, NAT64, 6to4) are judged as IPv4;
- ``allowed_networks`` are the operator's explicit exceptions (a partner on a private link).

The check runs when a subscription is created or changed (a clear 422) and again before every
delivery, where the connection is then made to the addresses just checked
(:mod:`riskguard.adapters.webhooks.transport`): a host that re-resolves to an internal address
after validation (DNS rebinding) is refused rather than called.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_S = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}

# always refused unless an allowed_networks entry covers them
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_ULA = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class UnsafeUrlError(ValueError):
    """A target URL the policy refuses; the message says why (safe to show the tenant)."""


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """What targets may be: ``require_https`` outside development; loopback and private
    addresses only when allowed; ``allowed_networks`` as explicit exceptions."""

    require_https: bool = True
    allow_loopback: bool = False
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def for_environment(cls, env: str, *, allow_loopback: bool | None = None) -> UrlPolicy:
        """Production: https to public addresses only. Development: http too, and loopback
        and private targets (a receiver on the developer's machine or a local container)."""
        development = env == "development"
        return cls(
            require_https=not development,
            allow_loopback=development if allow_loopback is None else allow_loopback,
            allow_private=development,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the addresses its host resolved to, which are the ones to call."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host, IPv6 without brackets: what the connection pool sees
    port: int
    addresses: tuple[str, ...]


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def address_problem(address: IPAddress, policy: UrlPolicy) -> str | None:
    """Why ``address`` may not be called under ``policy``, or None when it may."""
    if any(address in network for network in policy.allowed_networks):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_v4(address)
        if inner is not None:
            return address_problem(inner, policy)
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return None if policy.allow_loopback else "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    private = (
        any(address in n for n in _PRIVATE_V4) or address in _CGNAT
        if isinstance(address, ipaddress.IPv4Address)
        else address in _ULA
    )
    if private:
        return None if policy.allow_private else "a private address"
    if not address.is_global:
        return "a reserved or non-routable address"
    return None


def parse_url(url: str, policy: UrlPolicy) -> tuple[httpx.URL, str, int]:
    """The syntax checks (no DNS): the parsed URL, its ASCII host and its port."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise UnsafeUrlError(f"the URL must be 1 to {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise UnsafeUrlError("not a valid URL") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise UnsafeUrlError("the URL must use https (or http where allowed)")
    if policy.require_https and parsed.scheme != "https" and not policy.allow_loopback:
        raise UnsafeUrlError("the URL must use https")
    if parsed.userinfo:
        raise UnsafeUrlError("credentials in the URL are not allowed (sign with the secret)")
    if parsed.fragment:
        raise UnsafeUrlError("the URL must not have a fragment")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UnsafeUrlError("the URL has no host")
    return parsed, host, parsed.port or _DEFAULT_PORTS[parsed.scheme]


async def _resolve(host: str, port: int, timeout_s: float) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise UnsafeUrlError(f"the host {host!r} does not resolve") from None
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%", 1)[0], None)  # drop an IPv6 zone id
    if not seen:
        raise UnsafeUrlError(f"the host {host!r} does not resolve")
    return list(seen)


async def resolve_target(
    url: str, policy: UrlPolicy, *, timeout_s: float = RESOLVE_TIMEOUT_S
) -> Target:
    """Check ``url`` under ``policy`` and resolve its host (within ``timeout_s``); every
    address must be allowed. Raises :class:`UnsafeUrlError`."""
    parsed, host, port = parse_url(url, policy)
    addresses = await _resolve(host, port, timeout_s)
    parsed_addresses: Sequence[IPAddress] = [ipaddress.ip_address(a) for a in addresses]
    for address in parsed_addresses:
        problem = address_problem(address, policy)
        if problem is not None:
            raise UnsafeUrlError(f"the host {host!r} resolves to {problem} ({address})")
    if (
        parsed.scheme != "https"
        and policy.require_https
        and not all(a.is_loopback for a in parsed_addresses)
    ):
        raise UnsafeUrlError("the URL must use https (http is allowed for loopback only)")
    return Target(url, parsed.scheme, host, port, tuple(addresses))
