"""Webhook delivery, the pure part: limits, errors, the retry schedule, the delivery state
machine, endpoint input validation and Standard Webhooks signing/verification.

No I/O and no clock reads here: times are passed in. ``paykeep.workers.webhooks`` does the
database and HTTP work around these functions.

Signing follows the Standard Webhooks specification (https://www.standardwebhooks.com/): the
secret is ``whsec_`` + base64 of random bytes; the signature is ``v1,`` + base64 of
HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}`` keyed with the decoded secret.
HMAC comes from the standard library; nothing cryptographic is written here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from paykeep.clock import NS_PER_S
from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError

# --- Limits ---------------------------------------------------------------------------------

#: The retry schedule: the wait after each failed attempt before the next one (seconds).
#: Modelled on Svix (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h) stretched to Stripe's three
#: days so that a merchant's weekend outage is survived. The first attempt is immediate, so a
#: delivery is tried ``len(RETRY_SCHEDULE_S) + 1`` times, then it is ``dead``.
RETRY_SCHEDULE_S: Final[tuple[int, ...]] = (
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    10 * 3600,
    14 * 3600,
    14 * 3600,
    16 * 3600,
)
#: Attempts a delivery gets before it is dead-lettered.
ATTEMPTS_MAX: Final = len(RETRY_SCHEDULE_S) + 1
#: Longest URL (the column is VARCHAR(500)).
URL_LENGTH_MAX: Final = 500
#: Endpoints one merchant may register (each event is POSTed to each of them).
ENDPOINTS_PER_MERCHANT_MAX: Final = 16
#: Event types one endpoint may subscribe to, and the length of one type.
EVENT_TYPES_PER_ENDPOINT_MAX: Final = 64
EVENT_TYPE_LENGTH_MAX: Final = 64
#: Random bytes in a signing secret (Standard Webhooks: between 24 and 64).
SECRET_BYTES: Final = 24
#: After a rotation the previous secret still signs (a second signature) for this long, so a
#: merchant can deploy the new secret without dropping deliveries.
SECRET_ROTATION_GRACE_S: Final = 24 * 3600
#: The receiver's accepted clock skew for ``webhook-timestamp`` (Standard Webhooks: 5 min).
TIMESTAMP_TOLERANCE_S: Final = 5 * 60
#: Signatures in one ``webhook-signature`` header a verifier looks at.
SIGNATURES_PER_HEADER_MAX: Final = 8
#: What a failed attempt keeps of the answer (the ``last_error`` column is VARCHAR(500)).
LAST_ERROR_LENGTH_MAX: Final = 500
#: Bytes of a response body read from the network at most (the rest is never read).
RESPONSE_BODY_READ_BYTES_MAX: Final = 4 * 1024
#: Events read per ``fan_out`` call, deliveries claimed per ``deliver_due`` call.
FAN_OUT_BATCH_MAX: Final = 1_000
#: An event whose deliveries cannot be written (``fan_out``, one event at a time) is tried
#: again after each of these waits — every event behind it waits too: the cursor keeps
#: order — and after the last it is passed over without deliveries, parked for an operator
#: (``worker_item_failures``; ``replay`` delivers it once the cause is fixed).
FAN_OUT_BACKOFF_S: Final = (1, 2, 5, 10)
#: How long a delivery pump reuses the list of deliveries whose result could not be recorded
#: (backed off or parked: left out of its claims) before reading it again.
RECORD_BLOCKED_REFRESH_S: Final = 5.0
DELIVER_BATCH_MAX: Final = 32
#: Deliveries of one endpoint claimed per ``deliver_due`` call: a slow or hanging endpoint
#: occupies at most this many of the call's slots, the others go to other endpoints. Also a
#: merchant's concurrency: 4 let a busy marketplace's deliveries fall behind (bench api, three
#: merchants: ~1,000 delivered in the timed 10 s at 4, ~1,750 at 8, with ~8,000 events made).
DELIVERIES_PER_ENDPOINT_PER_CALL_MAX: Final = 8
#: Attempts a service runs at once: its thread pool and HTTP connection pool are this big, so
#: an attempt starts as soon as it is claimed (its lease runs from the claim). A worker's
#: ``DeliveryPump`` keeps at most this many in flight.
DELIVERIES_IN_FLIGHT_MAX: Final = DELIVER_BATCH_MAX
#: A worker's attempts in flight to one endpoint at most: the per-call bound, now that the
#: worker claims whenever slots are free instead of in calls. A hanging endpoint holds at most
#: this many slots; an endpoint with its share in flight is left out of the claim, so its
#: backlog cannot crowd out other endpoints. Per worker: N workers reach an endpoint N times.
DELIVERIES_PER_ENDPOINT_IN_FLIGHT_MAX: Final = DELIVERIES_PER_ENDPOINT_PER_CALL_MAX
#: While attempts are in flight a worker comes round (records results, claims for the free
#: slots) when one ends, but at most once per this: a round costs the same few transactions
#: whether it carries one result or twenty, so results are recorded in groups.
DELIVERY_ROUND_MIN_S: Final = 0.05
#: How long a stopping worker waits for its attempts in flight to end and be recorded; the
#: rest are abandoned (delivered again after their lease: at least once, as always).
WORKER_STOP_GRACE_S: Final = 1.0
#: A worker waiting for an attempt to end looks at its stop signal this often (a future and
#: an event cannot be waited on together).
WORKER_STOP_POLL_S: Final = 0.1
#: Due deliveries looked at to pick a call's batch fairly across endpoints.
CLAIM_SCAN_MAX: Final = 1_000
#: HTTP timeout per network operation (connect, write, each read), default and bounds.
HTTP_TIMEOUT_S_DEFAULT: Final = 10.0
HTTP_TIMEOUT_S_MAX: Final = 30.0
#: A webhook host's DNS resolution (registration and every new connection) gives up after
#: this long: ``getaddrinfo`` has no timeout of its own and the system resolver's retries can
#: hold an API request thread for tens of seconds.
DNS_RESOLVE_TIMEOUT_S: Final = 5.0
#: Resolutions running at once; more wait their turn (within the same timeout), so hanging
#: lookups cannot pile up threads without bound.
DNS_RESOLVERS_MAX: Final = 8
#: A claimed delivery is leased for this many HTTP timeouts (connect + write + reads) plus a
#: margin; past the lease another worker may try it again (at-least-once delivery).
LEASE_TIMEOUTS: Final = 4
LEASE_MARGIN_S: Final = 30
#: ``fan_out`` waits at a gap in the outbox's ``seq`` while a transaction that may hold the
#: missing number is open (``outbox_gaps``); past this wait it logs a warning (again at most
#: this often), because webhooks of every later event wait with it.
OUTBOX_GAP_WARN_S: Final = 60
#: Deliveries one event may have in all (fan-out plus replays): replays are not a mailing tool.
DELIVERIES_PER_EVENT_MAX: Final = 100
#: Page size of ``deliveries``.
PAGE_SIZE_DEFAULT: Final = 10
PAGE_SIZE_MAX: Final = 100

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)
SIGNATURE_VERSION: Final = "v1"
USER_AGENT: Final = "Paykeep-Webhooks/1"
#: The one event type that means "every type".
ALL_EVENT_TYPES: Final = "*"

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")

# --- Errors ---------------------------------------------------------------------------------


class WebhookUrlInvalid(InvalidInput):
    """Not an absolute http(s) URL of at most ``URL_LENGTH_MAX`` characters without
    credentials, whitespace or fragment."""

    code = "webhook_url_invalid"


class WebhookDestinationNotAllowed(InvalidInput):
    """The URL's host is, or resolves to, an address that is not globally routable (loopback,
    private, link-local such as the cloud metadata address, multicast, reserved...) and not in
    the operator's allowed networks. Raised at registration; at delivery the same refusal is a
    failed attempt."""

    code = "webhook_destination_not_allowed"


class WebhookHostUnresolvable(InvalidInput):
    """The URL's host name does not resolve (DNS) when the endpoint is registered."""

    code = "webhook_host_unresolvable"


class WebhookAllowedNetworksInvalid(InvalidInput):
    """The operator's allow-list (``PAYKEEP_WEBHOOK_ALLOWED_NETWORKS``) holds something that
    is not a CIDR network."""

    code = "webhook_allowed_networks_invalid"


class WebhookEventTypesInvalid(InvalidInput):
    """``event_types`` is empty, too long, or holds a malformed or repeated type."""

    code = "webhook_event_types_invalid"


class WebhookParameterInvalid(InvalidInput):
    """A page size, batch size, state filter or page cursor out of its bounds."""

    code = "webhook_parameter_invalid"


class WebhookMerchantUnknown(InvalidInput):
    code = "webhook_merchant_unknown"


class WebhookEndpointNotFound(NotFound):
    """No such endpoint, or it belongs to another merchant (the two are not told apart)."""

    code = "webhook_endpoint_not_found"


class EventNotFound(NotFound):
    """No such event, or it belongs to another merchant (the two are not told apart)."""

    code = "event_not_found"


class WebhookDeliveryNotFound(NotFound):
    code = "webhook_delivery_not_found"


class WebhookEndpointLimitReached(Conflict):
    code = "webhook_endpoint_limit_reached"


class WebhookEndpointDisabled(Conflict):
    """The endpoint is disabled: nothing is delivered or replayed to it."""

    code = "webhook_endpoint_disabled"


class WebhookReplayConflict(Conflict):
    """Another replay of the same event to the same endpoint was created at the same moment."""

    code = "webhook_replay_conflict"


class WebhookReplayLimitReached(Conflict):
    """The event already has ``DELIVERIES_PER_EVENT_MAX`` deliveries."""

    code = "webhook_replay_limit_reached"


class WebhookIllegalTransition(Conflict):
    """A delivery outcome that its state does not allow (see ``TRANSITIONS``)."""

    code = "webhook_illegal_transition"


class WebhookSecretInvalid(InvalidInput):
    """Not ``whsec_`` + base64 of at least one byte."""

    code = "webhook_secret_invalid"


class WebhookSignatureInvalid(PaykeepError):
    """Headers missing, or no ``v1`` signature matches the body under the secret."""

    code = "webhook_signature_invalid"
    type = "authentication_error"


class WebhookTimestampInvalid(PaykeepError):
    """``webhook-timestamp`` is not an integer or is further than the tolerance from now."""

    code = "webhook_timestamp_invalid"
    type = "authentication_error"


# --- The delivery state machine -------------------------------------------------------------


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class DeliveryOutcome(StrEnum):
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # anything else, with attempts left
    EXHAUSTED = "exhausted"  # anything else, on the last attempt
    ENDPOINT_DISABLED = "endpoint_disabled"


#: (state, outcome) -> next state. Delivered and dead are final: a replay is a new delivery.
TRANSITIONS: Final[Mapping[tuple[DeliveryState, DeliveryOutcome], DeliveryState]] = {
    (DeliveryState.PENDING, DeliveryOutcome.SUCCEEDED): DeliveryState.DELIVERED,
    (DeliveryState.PENDING, DeliveryOutcome.FAILED): DeliveryState.PENDING,
    (DeliveryState.PENDING, DeliveryOutcome.EXHAUSTED): DeliveryState.DEAD,
    (DeliveryState.PENDING, DeliveryOutcome.ENDPOINT_DISABLED): DeliveryState.DEAD,
}


def transition(state: DeliveryState, outcome: DeliveryOutcome) -> DeliveryState:
    try:
        return TRANSITIONS[(state, outcome)]
    except KeyError:
        raise WebhookIllegalTransition(
            f"a {state.value} delivery cannot be {outcome.value}"
        ) from None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST produced: a status (None when no answer came) and, unless 2xx, an error
    text for the merchant (already bounded to ``LAST_ERROR_LENGTH_MAX``)."""

    status: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class AfterAttempt:
    """A delivery's row after an attempt: ``next_attempt_at_ns`` is None once final."""

    state: DeliveryState
    attempts: int
    next_attempt_at_ns: int | None


def retry_delay_s(attempts_made: int) -> int | None:
    """The wait after the ``attempts_made``-th failed attempt, None when none is left."""
    assert attempts_made >= 1, attempts_made
    if attempts_made > len(RETRY_SCHEDULE_S):
        return None
    return RETRY_SCHEDULE_S[attempts_made - 1]


def after_attempt(attempts_before: int, result: AttemptResult, at_ns: int) -> AfterAttempt:
    """The state machine's step for one finished attempt that ended at ``at_ns``."""
    assert 0 <= attempts_before < ATTEMPTS_MAX, attempts_before
    attempts = attempts_before + 1
    if result.succeeded:
        state = transition(DeliveryState.PENDING, DeliveryOutcome.SUCCEEDED)
        return AfterAttempt(state, attempts, None)
    delay_s = retry_delay_s(attempts)
    if delay_s is None:
        return AfterAttempt(
            transition(DeliveryState.PENDING, DeliveryOutcome.EXHAUSTED), attempts, None
        )
    state = transition(DeliveryState.PENDING, DeliveryOutcome.FAILED)
    return AfterAttempt(state, attempts, at_ns + delay_s * NS_PER_S)


def lease_s(http_timeout_s: float) -> int:
    """How long a claimed delivery stays invisible to other workers."""
    return int(LEASE_TIMEOUTS * http_timeout_s) + LEASE_MARGIN_S


def bounded_error(text: str) -> str:
    """``text`` cut to what ``last_error`` holds (characters, as VARCHAR counts them)."""
    if len(text) <= LAST_ERROR_LENGTH_MAX:
        return text
    return text[: LAST_ERROR_LENGTH_MAX - 1] + "…"


# --- Endpoint input -------------------------------------------------------------------------


def check_url(url: str) -> str:
    """The URL as stored, or :class:`WebhookUrlInvalid` naming the broken rule."""
    if not isinstance(url, str) or not url:
        raise WebhookUrlInvalid("url is required", param="url")
    if len(url) > URL_LENGTH_MAX:
        raise WebhookUrlInvalid(f"url is longer than {URL_LENGTH_MAX} characters", param="url")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise WebhookUrlInvalid(
            "url must be ASCII without spaces or control characters (percent-encode the rest)",
            param="url",
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # parses the port: a malformed one raises ValueError
    except ValueError as exc:
        raise WebhookUrlInvalid(f"url is malformed: {exc}", param="url") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlInvalid("url must start with https:// or http://", param="url")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookUrlInvalid("url must not carry credentials", param="url")
    if not parts.hostname:
        raise WebhookUrlInvalid("url has no host", param="url")
    if port == 0:
        raise WebhookUrlInvalid("url has port 0", param="url")
    if parts.fragment or url.endswith("#"):
        raise WebhookUrlInvalid("url must not have a fragment", param="url")
    return url


# --- Destinations (SSRF) ------------------------------------------------------------------
#
# A merchant chooses where Paykeep POSTs, so without a check an endpoint could name
# ``http://169.254.169.254/`` (cloud credentials), ``http://127.0.0.1:5432/`` or any host of
# our private network, and the delivery worker would send requests there from inside: a
# server-side request forgery. Every address a host resolves to is classified here; the I/O
# (resolving, connecting to the checked address) is in ``paykeep.workers.webhook_egress``.

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: RFC 6598 shared address space (carrier-grade NAT): not routable on the internet, yet not in
#: ``is_private`` in every Python version, so checked explicitly.
SHARED_ADDRESS_SPACE: Final = IPv4Network("100.64.0.0/10")
#: RFC 6890 IETF protocol assignments: not globally reachable, but Python 3.11 lists only parts
#: of it (192.0.0.8, the RFC 7600 dummy address, passed ``is_global``; a property test found it).
IETF_PROTOCOL_ASSIGNMENTS: Final = IPv4Network("192.0.0.0/24")
#: RFC 6052 well-known NAT64 prefix: the last 32 bits are an IPv4 address that a NAT64 gateway
#: reaches on our side, so that embedded address is what gets classified.
NAT64_WELL_KNOWN: Final = IPv6Network("64:ff9b::/96")
#: RFC 8215 local-use NAT64 prefix: by definition a translator inside some private network.
NAT64_LOCAL_USE: Final = IPv6Network("64:ff9b:1::/48")
#: 6to4 (RFC 3056): bits 16-48 are an IPv4 address a relay sends the packet to.
SIX_TO_FOUR: Final = IPv6Network("2002::/16")


def unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as the IPv4 address it is (a socket connects to that address)."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address a translation prefix carries, with the prefix's name."""
    if address in NAT64_WELL_KNOWN:
        return "NAT64", IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in SIX_TO_FOUR and address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is no place for a webhook (a short phrase), None if it is globally
    routable. The explicit checks come before ``is_global`` so the reason is specific, and
    because ``is_global`` alone has varied between Python versions (mapped and translated
    addresses, shared space); anything they miss that is not global is still refused."""
    address = unmapped(address)
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"  # 169.254.169.254, the cloud metadata service, is one
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, IPv4Address):
        if address in SHARED_ADDRESS_SPACE:
            return "shared address space (100.64.0.0/10)"
        if address in IETF_PROTOCOL_ASSIGNMENTS:
            return "IETF protocol assignment (192.0.0.0/24)"
    if isinstance(address, IPv6Address):
        if address in NAT64_LOCAL_USE:
            return "local-use NAT64 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # Decided by the IPv4 address the translator would reach, before ``is_reserved``
            # (which covers the whole NAT64 prefix): DNS64 networks must reach public hosts.
            kind, inner = embedded
            inner_reason = refusal_reason(inner)
            return None if inner_reason is None else f"{inner_reason} behind {kind}"
        if address.is_site_local:
            return "site-local address"
    if address.is_reserved:
        return "reserved address"
    if address.is_private:
        return "private address"
    if not address.is_global:
        return "address not globally routable"
    return None


def destination_refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """:func:`refusal_reason`, unless the operator allowed the address's network."""
    plain = unmapped(address)
    if any(plain.version == net.version and plain in net for net in allowed):
        return None
    return refusal_reason(plain)


def refused_destination_message(host: str, reason: str) -> str:
    """The merchant-visible text of a refusal. A literal address is named; a host name's
    resolved address is not (only its class): with split-horizon DNS, echoing it would let a
    merchant map our internal zone through the error messages. The server log has both."""
    if _is_literal(host):
        return f"destination not allowed: {host} ({reason})"
    return f"destination not allowed: {host} resolves to a {reason}"


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def first_refusal(
    host: str, addresses: Iterable[IPAddress], allowed: Sequence[IPNetwork]
) -> tuple[IPAddress, str] | None:
    """The first of ``addresses`` that is refused, with the reason; None if all are allowed.
    One bad address refuses the host: the client may connect to any of them."""
    for address in addresses:
        reason = destination_refusal(address, allowed)
        if reason is not None:
            return address, reason
    return None


def parse_allowed_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8, ::1/128"`` -> networks (empty text: none). Strict: host bits set
    (``127.0.0.1/8``) is refused, since it usually means a typo about what is opened."""
    if text is None:
        return ()
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise WebhookAllowedNetworksInvalid(
                f"allowed networks: {item!r} is not a CIDR network ({exc})"
            ) from None
    return tuple(networks)


def format_allowed_networks(networks: Iterable[IPNetwork]) -> str:
    """The inverse of :func:`parse_allowed_networks`."""
    return ",".join(str(network) for network in networks)


def host_network(address: IPAddress) -> IPNetwork:
    """Exactly one address as a network (/32 or /128)."""
    return ipaddress.ip_network(unmapped(address))


def check_event_types(event_types: Sequence[str] | None) -> tuple[str, ...] | None:
    """Sorted, validated types; None (or a list holding ``*``) subscribes to every type."""
    if event_types is None:
        return None
    if isinstance(event_types, str) or not isinstance(event_types, Sequence):
        raise WebhookEventTypesInvalid("event_types must be a list", param="event_types")
    if not event_types:
        raise WebhookEventTypesInvalid(
            "event_types is empty: omit it (or use ['*']) for every type", param="event_types"
        )
    if len(event_types) > EVENT_TYPES_PER_ENDPOINT_MAX:
        raise WebhookEventTypesInvalid(
            f"at most {EVENT_TYPES_PER_ENDPOINT_MAX} event types", param="event_types"
        )
    seen: set[str] = set()
    for item in event_types:
        if not isinstance(item, str) or not (
            item == ALL_EVENT_TYPES
            or (len(item) <= EVENT_TYPE_LENGTH_MAX and _EVENT_TYPE.fullmatch(item))
        ):
            raise WebhookEventTypesInvalid(
                f"{item!r} is not an event type (like 'order.paid', or '*')", param="event_types"
            )
        if item in seen:
            raise WebhookEventTypesInvalid(f"{item!r} is listed twice", param="event_types")
        seen.add(item)
    if ALL_EVENT_TYPES in seen:
        return None
    return tuple(sorted(seen))


def encode_event_types(event_types: tuple[str, ...] | None) -> str | None:
    return None if event_types is None else json.dumps(list(event_types))


def decode_event_types(stored: str | None) -> tuple[str, ...] | None:
    if stored is None:
        return None
    value = json.loads(stored)
    assert isinstance(value, list), stored
    return tuple(str(v) for v in value)


def subscribes(event_types: Iterable[str] | None, event_type: str) -> bool:
    """Whether an endpoint with ``event_types`` receives an event of ``event_type``."""
    if event_types is None:
        return True
    types = set(event_types)
    return ALL_EVENT_TYPES in types or event_type in types


# --- Secrets --------------------------------------------------------------------------------


def new_secret() -> str:
    """``whsec_`` + base64 of ``SECRET_BYTES`` random bytes (Standard Webhooks format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after ``whsec_``."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretInvalid("a signing secret starts with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretInvalid("a signing secret is whsec_ + base64") from None
    if not key:
        raise WebhookSecretInvalid("a signing secret is not empty")
    return key


@dataclass(frozen=True, slots=True)
class SigningSecrets:
    """What an endpoint's ``secret_enc`` seals: the current secret and, for a grace period
    after a rotation, the previous one (both sign, so either verifies)."""

    current: str
    previous: str | None = None
    previous_until_ns: int | None = None

    def active(self, now_ns: int) -> tuple[str, ...]:
        if self.previous is not None and (
            self.previous_until_ns is None or now_ns < self.previous_until_ns
        ):
            return (self.current, self.previous)
        return (self.current,)

    def rotated(self, new: str, now_ns: int) -> SigningSecrets:
        return SigningSecrets(new, self.current, now_ns + SECRET_ROTATION_GRACE_S * NS_PER_S)

    def to_text(self) -> str:
        document: dict[str, Any] = {"current": self.current}
        if self.previous is not None:
            document["previous"] = self.previous
            document["previous_until_ns"] = self.previous_until_ns
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> SigningSecrets:
        document = json.loads(text)
        return cls(
            current=str(document["current"]),
            previous=document.get("previous"),
            previous_until_ns=document.get("previous_until_ns"),
        )


# --- Signing and verifying ------------------------------------------------------------------


def signature(secret: str, message_id: str, timestamp_s: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``."""
    signed = f"{message_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def sign_headers(
    secrets_: Sequence[str], message_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """The headers of one delivery attempt (one signature per active secret)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": " ".join(
            signature(secret, message_id, timestamp_s, body) for secret in secrets_
        ),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: int,
    tolerance_s: int = TIMESTAMP_TOLERANCE_S,
) -> None:
    """The receiving side's check, before the body is parsed: raises
    :class:`WebhookSignatureInvalid` or :class:`WebhookTimestampInvalid`, else returns."""
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not timestamp or not signatures:
        raise WebhookSignatureInvalid(
            "webhook-id, webhook-timestamp and webhook-signature are required"
        )
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookTimestampInvalid("webhook-timestamp is not a number of seconds")
    timestamp_s = int(timestamp)
    if abs(now_s - timestamp_s) > tolerance_s:
        raise WebhookTimestampInvalid(
            f"webhook-timestamp is more than {tolerance_s} s away from now"
        )
    expected = signature(secret, message_id, timestamp_s, body).encode()
    for candidate in signatures.split(" ")[:SIGNATURES_PER_HEADER_MAX]:
        if hmac.compare_digest(expected, candidate.encode()):
            return
    raise WebhookSignatureInvalid("no signature matches")


def check_limit(limit: int, maximum: int, param: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise WebhookParameterInvalid(f"{param} must be between 1 and {maximum}", param=param)
    return limit
