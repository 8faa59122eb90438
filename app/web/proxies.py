"""Who is asking: the peer address, or ``X-Forwarded-For`` when the peer is a trusted proxy.

``PRUNELAB_TRUSTED_PROXIES`` lists proxy addresses or networks (``10.0.0.1, 192.168.0.0/24``);
unset, the header is ignored, so no client can pick the address its failed sign-ins count
against. The right-most address not of a trusted proxy is the client (left-most entries are
whatever the client sent).
"""

from __future__ import annotations

import ipaddress
from functools import cache

from starlette.requests import Request

from app.config import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def trusted_networks(text: str) -> tuple[Network, ...]:
    """The networks of a ``PRUNELAB_TRUSTED_PROXIES`` value (a single address is a /32)."""
    return tuple(
        ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()
    )


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: Request, settings: Settings) -> str:
    """The address failed sign-ins are counted against."""
    peer = request.client.host if request.client else "unknown"
    networks = trusted_networks(settings.trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    forwarded = request.headers.get("x-forwarded-for") or ""
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return peer
