"""Webhook egress: where a delivery may connect, decided on the addresses actually used.

The address rules are pure (``webhook_model.refusal_reason``); this module does the I/O around
them:

- :func:`check_destination` resolves a URL's host when an endpoint is registered, so a merchant
  hears at once that ``http://10.0.0.5/`` or a host resolving to one will never be delivered
  to (a typed 400, not a string of failed deliveries).
- :class:`GuardedBackend` is the delivery client's network backend. httpcore asks it for a TCP
  connection to ``(host, port)`` whenever the pool opens one; it resolves the host itself,
  refuses if any resolved address is disallowed, and connects to the addresses it checked. The
  check and the connection use the same resolution, so DNS rebinding (a name answering a
  public address to the check and a private one to the connection) has no window. TLS still
  verifies the certificate against the URL's host name: httpcore passes that name to
  ``start_tls`` itself, not the address.

A kept-alive connection is reused without a new resolution; it was opened to a checked address
and the allow-list does not change during a process's life, so it is still allowed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Final

import httpcore
import httpx

from paykeep.workers.webhook_model import (
    DNS_RESOLVE_TIMEOUT_S,
    DNS_RESOLVERS_MAX,
    IPAddress,
    IPNetwork,
    WebhookDestinationNotAllowed,
    WebhookHostUnresolvable,
    WebhookUrlInvalid,
    first_refusal,
    refused_destination_message,
)

log = logging.getLogger("paykeep.workers.webhooks")

DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class HostUnresolved(Exception):
    """``getaddrinfo`` found no address (the system's text is the message)."""


#: ``getaddrinfo`` cannot be interrupted, so a lookup runs on one of these threads and the
#: caller stops waiting after ``DNS_RESOLVE_TIMEOUT_S``; a hung lookup keeps its thread until
#: the resolver gives up, and at most ``DNS_RESOLVERS_MAX`` run at once.
_resolvers = ThreadPoolExecutor(DNS_RESOLVERS_MAX, thread_name_prefix="webhook-dns")


def resolve(host: str, port: int, timeout_s: float | None = None) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order,
    without duplicates. A literal address resolves to itself without DNS; odd literal forms
    (``2130706433``, ``127.1``) come back as the address they mean, which is what is checked.
    A resolution that takes longer than ``timeout_s`` (default ``DNS_RESOLVE_TIMEOUT_S``) is
    :class:`HostUnresolved`.
    """
    if timeout_s is None:
        timeout_s = DNS_RESOLVE_TIMEOUT_S
    lookup = _resolvers.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=timeout_s)
    except FutureTimeout:
        lookup.cancel()  # still queued: never runs; running: its answer is dropped
        raise HostUnresolved(f"{host} did not resolve within {timeout_s:g} s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolved(f"{host} does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # sockaddr[0] of AF_INET6 may carry a scope ("fe80::1%eth0"); ipaddress keeps it.
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostUnresolved(f"{host} has no IPv4 or IPv6 address")
    return tuple(addresses)


def checked_addresses(host: str, port: int, allowed: Sequence[IPNetwork]) -> tuple[IPAddress, ...]:
    """``host``'s addresses if every one is allowed; else :class:`WebhookDestinationNotAllowed`
    (:class:`HostUnresolved` if it does not resolve)."""
    addresses = resolve(host, port)
    refused = first_refusal(host, addresses, allowed)
    if refused is not None:
        address, reason = refused
        log.warning("webhook destination refused: %s -> %s (%s)", host, address, reason)
        raise WebhookDestinationNotAllowed(refused_destination_message(host, reason), param="url")
    return addresses


def check_destination(url: str, allowed: Sequence[IPNetwork]) -> None:
    """Registration's check of an already well-formed URL (``webhook_model.check_url``).

    Parsed by httpx, the parser the delivery uses, so both agree on what the host is."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookUrlInvalid(f"url is malformed: {exc}", param="url") from None
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    try:
        checked_addresses(parsed.host, port, allowed)
    except HostUnresolved as exc:
        raise WebhookHostUnresolvable(
            f"url's host {exc}; register the endpoint once its DNS is in place",
            param="url",
        ) from None


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to checked addresses."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = tuple(allowed)
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(host, port, self._allowed)
        except HostUnresolved as exc:
            # What httpcore's own backend raises for a DNS failure (an httpx.ConnectError).
            raise httpcore.ConnectError(str(exc)) from None
        # WebhookDestinationNotAllowed propagates through httpcore and httpx unchanged (they
        # map only their own exceptions); the delivery records its message.
        last_error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                # A literal address: the inner backend connects to it without resolving again.
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc  # the next address, as socket.create_connection does
        assert last_error is not None
        raise last_error

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool uses :class:`GuardedBackend`.

    httpx has no parameter for the network backend, so the pool it builds is replaced by one
    with the same settings and the guard (``_pool`` is the attribute ``handle_request`` uses;
    tests/webhooks/test_ssrf.py fails if a future httpx bypasses it). No proxy, no
    environment: deliveries go straight to the merchant."""

    def __init__(self, allowed: Sequence[IPNetwork], limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)  # built once, shared by both
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allowed),
        )
