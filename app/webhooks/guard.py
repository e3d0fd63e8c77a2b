"""Where a webhook may go. Receivers are usually internal systems, so private networks are
allowed; link-local addresses and cloud metadata endpoints (169.254.0.0/16, fd00:ec2::254,
fe80::/10) are refused unless explicitly allowed, and so is anything in the configured deny
list. The check is on the resolved addresses, at delivery time, as the connection is made
(a resolver that refuses), so a name that later resolves elsewhere (DNS rebinding) is
caught too; an address written in the URL is checked before connecting."""

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_DENIED = ("169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10", "0.0.0.0/8")


class AddressRefused(aiohttp.ClientError):
    """The receiver's address is not one webhooks may go to."""


class AddressPolicy:
    def __init__(self, *, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._allow = [ipaddress.ip_network(c, strict=False) for c in allow]
        self._deny = [ipaddress.ip_network(c, strict=False) for c in (*ALWAYS_DENIED, *deny)]

    def check(self, address: str) -> None:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self._allow):
            return
        if ip.is_multicast or ip.is_unspecified or any(ip in net for net in self._deny):
            raise AddressRefused(
                f"{ip} is not an address webhooks may go to (WECOM_HUB_WEBHOOK_ALLOW_CIDRS)"
            )

    def check_literal(self, host: str) -> None:
        """A URL's host written as an address (the resolver is not asked for those)."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        self.check(host.strip("[]"))


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the whole name if any address is refused."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            self._policy.check(result["host"])
        return found

    async def close(self) -> None:
        await self._inner.close()


def connector(policy: AddressPolicy, **options: Any) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(resolver=GuardedResolver(policy), **options)
