"""The SSRF guard of webhook endpoints: registration refuses destinations that are not globally
routable, delivery refuses them again at connection time, the operator's allow-list opens
exactly what it names. Real databases, real HTTP receivers, real DNS (``localhost`` and the
reserved ``.invalid`` top-level domain)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.api.runtime import ENV_WEBHOOK_ALLOWED_NETWORKS, RuntimeConfig
from paykeep.clock import NS_PER_S, FakeClock, monotonic_s
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.security.fields import FieldCipher
from paykeep.serve import demo_receiver_networks, webhook_allowed_networks
from paykeep.workers import webhook_model as model
from paykeep.workers.webhook_egress import GuardedTransport, check_destination
from paykeep.workers.webhook_model import (
    IPAddress,
    IPNetwork,
    WebhookAllowedNetworksInvalid,
    WebhookDestinationNotAllowed,
    WebhookHostUnresolvable,
    WebhookUrlInvalid,
    destination_refusal,
    parse_allowed_networks,
    refusal_reason,
)
from paykeep.workers.webhooks import WebhookService
from tests.serverproc import ServerProcess
from tests.webhooks.conftest import HTTP_TIMEOUT_S, LOOPBACK, Receiver, add_event, add_merchant

#: Disallowed literals, one per class, as a merchant could write them in a URL's host.
DISALLOWED_HOSTS = {
    "127.0.0.1": "loopback address",
    "127.255.0.9": "loopback address",
    "10.0.0.5": "private address",
    "172.16.3.4": "private address",
    "192.168.1.1": "private address",
    "169.254.169.254": "link-local address",  # the cloud metadata service
    "100.64.0.1": "shared address space (100.64.0.0/10)",
    "0.0.0.0": "unspecified address",
    "224.0.0.1": "multicast address",
    "240.0.0.1": "reserved address",
    "255.255.255.255": "reserved address",
    "192.0.2.10": "private address",  # documentation range
    "[::1]": "loopback address",
    "[::]": "unspecified address",
    "[fc00::1]": "private address",
    "[fd12:3456::1]": "private address",
    "[fe80::1]": "link-local address",
    "[fec0::1]": "site-local address",
    "[ff02::1]": "multicast address",
    "[2001:db8::1]": "private address",
    "[::ffff:127.0.0.1]": "loopback address",
    "[::ffff:10.0.0.5]": "private address",
    "[::ffff:169.254.169.254]": "link-local address",
    "[64:ff9b::a00:5]": "private address behind NAT64",
    "[64:ff9b:1::1]": "local-use NAT64 address",
    "[2002:a00:5::1]": "private address behind 6to4",
}
#: Literals that mean a loopback address to the resolver without looking like one.
OBFUSCATED_LOOPBACK = ("2130706433", "0x7f000001", "127.1")


@pytest.fixture
def strict(database: Database, cipher: FieldCipher, clock: FakeClock) -> Iterator[WebhookService]:
    """A service without allow-list: what production runs."""
    with WebhookService(database, cipher, clock=clock, http_timeout_s=HTTP_TIMEOUT_S) as svc:
        yield svc


def _endpoint_count(database: Database) -> int:
    with database.read() as conn:
        count: int = conn.execute(
            sa.text("SELECT count(*) FROM payments_webhook_endpoints")
        ).scalar_one()
    return count


def _delivery(database: Database) -> sa.Row[Any]:
    with database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT state, attempts, next_attempt_at_ns, last_status, last_error "
                "FROM payments_webhook_deliveries"
            )
        ).all()
    assert len(rows) == 1, rows
    return rows[0]


# --- Registration ---------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "reason"), sorted(DISALLOWED_HOSTS.items()))
def test_a_disallowed_literal_is_refused_with_its_class(host: str, reason: str) -> None:
    with pytest.raises(WebhookDestinationNotAllowed) as refused:
        check_destination(f"https://{host}:8443/hooks", ())
    assert refused.value.code == "webhook_destination_not_allowed"
    assert refused.value.type == "invalid_request"  # -> HTTP 400
    assert refused.value.param == "url"
    assert refused.value.message == f"destination not allowed: {host.strip('[]')} ({reason})"


@pytest.mark.parametrize("host", OBFUSCATED_LOOPBACK)
def test_other_spellings_of_loopback_are_refused(host: str) -> None:
    with pytest.raises(WebhookDestinationNotAllowed, match="resolves to a loopback address"):
        check_destination(f"http://{host}/", ())


def test_an_octal_looking_address_is_no_url_at_all() -> None:
    # httpx (the delivery's parser) refuses leading zeros rather than guess octal or decimal.
    with pytest.raises(WebhookUrlInvalid, match="malformed"):
        check_destination("http://0177.0.0.1/", ())


def test_registration_refuses_every_disallowed_literal_and_stores_nothing(
    strict: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    for host in DISALLOWED_HOSTS:
        with pytest.raises(WebhookDestinationNotAllowed, match="destination not allowed"):
            strict.create_endpoint("mer_a", f"http://{host}/hooks", None)
    assert _endpoint_count(database) == 0


def test_a_host_name_resolving_to_loopback_is_refused_without_naming_the_address(
    strict: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    with pytest.raises(WebhookDestinationNotAllowed) as refused:
        strict.create_endpoint("mer_a", "http://localhost:8080/hooks", None)
    # The class, not the address: error texts must not map our internal DNS for a merchant.
    assert (
        refused.value.message == "destination not allowed: localhost resolves to a loopback address"
    )
    assert _endpoint_count(database) == 0


def test_a_host_name_that_does_not_resolve_is_refused(
    strict: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    with pytest.raises(WebhookHostUnresolvable, match="does not resolve") as refused:
        strict.create_endpoint("mer_a", "https://hooks.nowhere.invalid/paykeep", None)
    assert refused.value.code == "webhook_host_unresolvable"
    assert refused.value.type == "invalid_request"
    assert _endpoint_count(database) == 0


@pytest.fixture
def hanging_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The system resolver (a boundary we do not own) never answering, and a short DNS
    timeout so the test does not wait the real one."""
    import socket

    from paykeep.workers import webhook_egress

    released = threading.Event()

    def never_answers(*_args: object, **_kwargs: object) -> Any:
        released.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "released")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    monkeypatch.setattr(webhook_egress, "DNS_RESOLVE_TIMEOUT_S", 0.3)
    yield
    released.set()


@pytest.mark.usefixtures("hanging_resolver")
def test_a_hanging_dns_lookup_is_refused_after_the_timeout_not_waited_out(
    strict: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    started = monotonic_s()
    with pytest.raises(WebhookHostUnresolvable, match=r"did not resolve within 0\.3 s"):
        strict.create_endpoint("mer_a", "https://hooks.slow-dns.example/paykeep", None)
    assert monotonic_s() - started < 3
    assert _endpoint_count(database) == 0


@pytest.mark.usefixtures("hanging_resolver")
def test_a_delivery_whose_dns_hangs_fails_its_attempt_after_the_timeout() -> None:
    transport = GuardedTransport((), httpx.Limits(max_connections=1))
    started = monotonic_s()
    with (
        httpx.Client(transport=transport, timeout=10) as client,
        pytest.raises(httpx.ConnectError, match="did not resolve within"),
    ):
        client.post("https://hooks.slow-dns.example/paykeep", content=b"{}")
    assert monotonic_s() - started < 3


def test_credentials_in_the_url_are_refused_even_on_an_allowed_network(
    service: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    with pytest.raises(WebhookUrlInvalid, match="credentials"):
        service.create_endpoint("mer_a", "http://user:pw@127.0.0.1:9/", None)


def test_the_input_checks_come_before_the_network_check(
    strict: WebhookService, database: Database
) -> None:
    add_merchant(database, "mer_a")
    # A malformed event type is reported as such, not hidden behind the destination.
    with pytest.raises(model.WebhookEventTypesInvalid):
        strict.create_endpoint("mer_a", "http://10.0.0.5/", [])


def test_an_allowed_network_admits_its_addresses_and_nothing_else(
    database: Database, cipher: FieldCipher, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    allowed = parse_allowed_networks("127.0.0.1/32, 10.1.0.0/16")
    with WebhookService(database, cipher, clock=clock, allowed_networks=allowed) as svc:
        svc.create_endpoint("mer_a", "http://127.0.0.1:9/a", None)
        svc.create_endpoint("mer_a", "http://localhost:9/b", None)  # resolves to 127.0.0.1
        svc.create_endpoint("mer_a", "http://[::ffff:127.0.0.1]:9/c", None)
        svc.create_endpoint("mer_a", "http://10.1.200.3/d", None)
        for host in ("127.0.0.2", "10.2.0.1", "169.254.169.254", "[::1]"):
            with pytest.raises(WebhookDestinationNotAllowed):
                svc.create_endpoint("mer_a", f"http://{host}:9/x", None)
    assert _endpoint_count(database) == 4


# --- Delivery -------------------------------------------------------------------------------


def test_a_delivery_to_a_destination_no_longer_allowed_fails_and_sends_nothing(
    service: WebhookService,
    strict: WebhookService,
    database: Database,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    """Registered while loopback was allowed (``service``), delivered by a worker without the
    allow-list (``strict``): every attempt is refused before connecting, on the normal
    schedule, until the delivery is dead. The receiver counts requests: it gets none."""
    add_merchant(database, "mer_a")
    endpoint, _ = service.create_endpoint("mer_a", receiver.url("/hooks"), None)
    event_id = add_event(database, clock, "mer_a")
    assert strict.fan_out() == 1
    expected_error = "destination not allowed: 127.0.0.1 (loopback address)"
    for attempt in range(1, model.ATTEMPTS_MAX + 1):
        assert strict.deliver_due() == 1
        row = _delivery(database)
        assert (row.attempts, row.last_status, row.last_error) == (attempt, None, expected_error)
        delay_s = model.retry_delay_s(attempt)
        if delay_s is None:
            assert (row.state, row.next_attempt_at_ns) == ("dead", None)
        else:
            assert row.state == "pending"
            assert row.next_attempt_at_ns == clock.now_ns() + delay_s * NS_PER_S
            clock.advance(delay_s)
    assert receiver.received() == []
    # The receiver does count: the same event replayed through the allowed service arrives.
    service.replay("mer_a", event_id, endpoint.id)
    assert service.deliver_due() == 1
    assert [r.path for r in receiver.received()] == ["/hooks"]


def test_a_host_name_is_delivered_to_the_address_that_was_checked(
    service: WebhookService, database: Database, clock: FakeClock, receiver: Receiver
) -> None:
    """``localhost`` resolves at connection time; the connection goes to the checked address
    (the receiver listens on 127.0.0.1 only)."""
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", f"http://localhost:{receiver.port}/by-name", None)
    add_event(database, clock, "mer_a")
    service.fan_out()
    assert service.deliver_due() == 1
    assert _delivery(database).state == "delivered"
    assert [r.path for r in receiver.received()] == ["/by-name"]


def test_the_guard_sits_in_the_connection_itself(receiver: Receiver) -> None:
    """Any request through the delivery transport is checked when it connects, not only the
    ones ``WebhookService`` makes (a future httpx that bypassed the pool would fail here)."""
    limits = httpx.Limits(max_connections=2)
    with httpx.Client(transport=GuardedTransport((), limits), timeout=2) as client:
        with pytest.raises(WebhookDestinationNotAllowed, match=r"127\.0\.0\.1 \(loopback"):
            client.post(receiver.url("/direct"), content=b"{}")
        with pytest.raises(httpx.ConnectError, match="does not resolve"):
            client.post("http://hooks.nowhere.invalid/", content=b"{}")
    assert receiver.received() == []
    with httpx.Client(transport=GuardedTransport(LOOPBACK, limits), timeout=2) as client:
        assert client.post(receiver.url("/direct"), content=b"{}").status_code == 200
    assert len(receiver.received()) == 1


# --- The classifier, as properties ----------------------------------------------------------

#: Special-purpose ranges (IANA registries, RFC 6890 and successors) that must never be a
#: webhook destination. Written out here, independently of the implementation's checks.
FORBIDDEN_V4 = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32",
    )
)  # fmt: skip
FORBIDDEN_V6 = tuple(
    IPv6Network(n)
    for n in (
        "::/128", "::1/128", "::/96", "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8", "64:ff9b:1::/48",
    )
)  # fmt: skip
MAPPED = int(IPv6Address("::ffff:0:0"))
NAT64 = int(IPv6Address("64:ff9b::"))


def _in(network: IPNetwork) -> st.SearchStrategy[IPAddress]:
    return st.integers(0, network.num_addresses - 1).map(lambda i: network[i])


forbidden_v4 = st.sampled_from(FORBIDDEN_V4).flatmap(_in).map(lambda a: IPv4Address(int(a)))
forbidden = st.one_of(
    forbidden_v4,
    st.sampled_from(FORBIDDEN_V6).flatmap(_in),
    # The same IPv4 addresses wrapped in IPv6: mapped, NAT64, 6to4.
    forbidden_v4.map(lambda a: IPv6Address(MAPPED | int(a))),
    forbidden_v4.map(lambda a: IPv6Address(NAT64 | int(a))),
    st.tuples(forbidden_v4, st.integers(0, 2**80 - 1)).map(
        lambda p: IPv6Address((0x2002 << 112) | (int(p[0]) << 80) | p[1])
    ),
)
any_address = st.one_of(
    st.integers(0, 2**32 - 1).map(IPv4Address), st.integers(0, 2**128 - 1).map(IPv6Address)
)


@settings(max_examples=2000)
@given(forbidden)
def test_the_classifier_never_admits_a_special_purpose_address(address: IPAddress) -> None:
    assert refusal_reason(address) is not None
    assert destination_refusal(address, ()) is not None


@settings(max_examples=2000)
@given(any_address)
def test_whatever_the_classifier_admits_is_global_and_outside_every_forbidden_range(
    address: IPAddress,
) -> None:
    if refusal_reason(address) is None:
        plain = model.unmapped(address)
        assert plain.is_global or plain in ipaddress.IPv6Network("64:ff9b::/96")
        forbidden_nets: tuple[IPNetwork, ...] = FORBIDDEN_V4 + FORBIDDEN_V6
        assert not any(plain.version == n.version and plain in n for n in forbidden_nets)


@given(st.integers(0, 2**32 - 1).map(IPv4Address))
def test_a_mapped_address_is_judged_as_the_ipv4_address_it_is(address: IPv4Address) -> None:
    assert refusal_reason(IPv6Address(MAPPED | int(address))) == refusal_reason(address)


@given(forbidden, st.data())
def test_an_allowed_network_admits_what_it_contains(
    address: IPAddress, data: st.DataObject
) -> None:
    plain = model.unmapped(address)
    prefix = data.draw(st.integers(plain.max_prefixlen // 2, plain.max_prefixlen))
    network = ipaddress.ip_network(f"{plain}/{prefix}", strict=False)
    assert destination_refusal(address, (network,)) is None


# --- Configuration --------------------------------------------------------------------------


def test_the_allow_list_parses_cidrs_and_refuses_anything_else() -> None:
    assert parse_allowed_networks(None) == ()
    assert parse_allowed_networks(" , ") == ()
    assert parse_allowed_networks("127.0.0.0/8, ::1/128,10.0.0.7") == (
        IPv4Network("127.0.0.0/8"),
        IPv6Network("::1/128"),
        IPv4Network("10.0.0.7/32"),
    )
    for bad in ("127.0.0.1/8", "localhost", "10.0.0.0/33", "::1/129"):
        with pytest.raises(WebhookAllowedNetworksInvalid) as refused:
            parse_allowed_networks(bad)
        assert refused.value.code == "webhook_allowed_networks_invalid"


def test_the_runtime_config_reads_and_passes_on_the_allow_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PAYKEEP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_WEBHOOK_ALLOWED_NETWORKS, "127.0.0.0/8,::1/128")
    config = RuntimeConfig.from_env()
    assert config.webhook_allowed_networks == LOOPBACK
    assert config.to_env()[ENV_WEBHOOK_ALLOWED_NETWORKS] == "127.0.0.0/8,::1/128"
    monkeypatch.delenv(ENV_WEBHOOK_ALLOWED_NETWORKS)
    assert RuntimeConfig.from_env().webhook_allowed_networks == ()
    assert RuntimeConfig(Settings(data_dir=tmp_path)).to_env()[ENV_WEBHOOK_ALLOWED_NETWORKS] == ""


def test_serve_allows_exactly_its_own_private_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WEBHOOK_ALLOWED_NETWORKS, raising=False)
    assert demo_receiver_networks("http://127.0.0.1:8000") == (IPv4Network("127.0.0.1/32"),)
    assert demo_receiver_networks("http://192.168.7.7:8000") == (IPv4Network("192.168.7.7/32"),)
    assert IPv4Network("127.0.0.1/32") in demo_receiver_networks("http://localhost:8000")
    assert demo_receiver_networks("http://8.8.8.8:8000") == ()
    monkeypatch.setenv(ENV_WEBHOOK_ALLOWED_NETWORKS, "10.0.0.0/8,127.0.0.1/32")
    assert webhook_allowed_networks("http://127.0.0.1:8000") == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("127.0.0.1/32"),
    )


def test_the_api_answers_a_typed_400_and_serve_keeps_its_demo_working(tmp_path: Path) -> None:
    """A real ``paykeep serve``: its demo endpoints (on its own 127.0.0.1) are seeded, the
    operator's allow-list (here 127.0.0.2) is honoured, everything else private is a 400."""
    env = {ENV_WEBHOOK_ALLOWED_NETWORKS: "127.0.0.2/32"}
    with ServerProcess(Settings(data_dir=tmp_path / "data"), env=env) as proc:
        assert len(proc.info["merchants"]) == 3  # each with a demo endpoint on 127.0.0.1
        with proc.client(proc.merchant(0)["api_key"]) as http:
            for url, code in (
                ("http://10.0.0.5/hooks", "webhook_destination_not_allowed"),
                ("http://169.254.169.254/latest/meta-data", "webhook_destination_not_allowed"),
                ("http://[::ffff:127.0.0.3]/hooks", "webhook_destination_not_allowed"),
                ("http://127.0.0.3:9/hooks", "webhook_destination_not_allowed"),
                ("https://hooks.nowhere.invalid/", "webhook_host_unresolvable"),
            ):
                response = http.post("/v1/webhook_endpoints", json={"url": url})
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert (error["type"], error["code"], error["param"]) == (
                    "invalid_request",
                    code,
                    "url",
                )
            created = http.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.2:9/h"})
            assert created.status_code == 201, created.text
            mine = http.post("/v1/webhook_endpoints", json={"url": f"{proc.url}/demo/x"})
            assert mine.status_code == 201, mine.text
