"""Where Loopsite's own outbound calls may go: an agent's webhook and its HTTP endpoint for candidate evaluation.

Both URLs are entered by an engineer and called from a worker, inside the deployment's network. A link-local
address (169.254.0.0/16, fe80::/10: where cloud metadata services hand out credentials), a multicast or an
unspecified one is never called. Loopback and private addresses are allowed by default, since an agent and
its automation often run beside a self-hosted Loopsite; OUTBOUND_ALLOW_PRIVATE=0 refuses them too.

`literal_refusal(url)` checks a URL whose host is an IP address as written (forms: no DNS lookup while the
page waits); `refusal(url)` resolves the host name as the call is about to be made, so a name that points at
a refused address is caught too."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


def _address_refusal(text: str) -> str:
    """What kind of address this is when it may not be called ("a link-local address …"), or ""."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is not part of it
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "not an address a call can go to"
    if not settings.OUTBOUND_ALLOW_PRIVATE and (address.is_loopback or address.is_private):
        return "a loopback or private address (OUTBOUND_ALLOW_PRIVATE=0)"
    return ""


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def literal_refusal(url: str) -> str:
    """Why `url` may not be called, judged without DNS: only a host written as an IP address is checked."""
    host = _host(url)
    kind = _address_refusal(host)
    return f"Loopsite does not call {url}: {host} is {kind}." if kind else ""


def refusal(url: str) -> str:
    """Why `url` may not be called now, after resolving its host; "" when it may (or when the name does not
    resolve: the call itself then fails with its own error)."""
    host = _host(url)
    if not host:
        return f"Loopsite does not call {url}: it names no host."
    if refused := literal_refusal(url):
        return refused
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return ""
    for address in addresses:
        if kind := _address_refusal(address):
            return f"Loopsite does not call {url}: {host} resolves to {address}, {kind}."
    return ""
