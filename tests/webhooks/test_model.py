"""The pure core: retry schedule, state machine, input validation, signing and verifying."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from hypothesis import given
from hypothesis import strategies as st

from paykeep.clock import NS_PER_S, SystemClock
from paykeep.workers import webhook_model as model
from paykeep.workers.webhook_model import (
    AttemptResult,
    DeliveryOutcome,
    DeliveryState,
    SigningSecrets,
    WebhookEventTypesInvalid,
    WebhookIllegalTransition,
    WebhookSecretInvalid,
    WebhookSignatureInvalid,
    WebhookTimestampInvalid,
    WebhookUrlInvalid,
)

THREE_DAYS_S = 3 * 24 * 3600
FAIL = AttemptResult(500, "HTTP 500: no")
OK = AttemptResult(204, None)


# --- Retry schedule -------------------------------------------------------------------------


def test_schedule_is_monotone_and_about_three_days() -> None:
    delays = model.RETRY_SCHEDULE_S
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[0] == 5
    assert abs(sum(delays) - THREE_DAYS_S) <= 3600
    assert len(delays) + 1 == model.ATTEMPTS_MAX


@given(
    lateness_s=st.lists(
        st.integers(min_value=0, max_value=3600),
        min_size=model.ATTEMPTS_MAX,
        max_size=model.ATTEMPTS_MAX,
    ),
    start_ns=st.integers(min_value=0, max_value=2**62),
    succeed_at=st.one_of(st.none(), st.integers(min_value=1, max_value=model.ATTEMPTS_MAX)),
)
def test_schedule_property(lateness_s: list[int], start_ns: int, succeed_at: int | None) -> None:
    """Whatever the workers' lateness, attempts come at strictly later times, each at least the
    scheduled wait after the previous failure; all failures -> dead after exactly
    ATTEMPTS_MAX attempts spanning the schedule (3 days +- 1 h) plus the lateness; a success
    ends the delivery at once."""
    attempts = 0
    at_ns = start_ns + lateness_s[0] * NS_PER_S
    first_ns = at_ns
    times = [at_ns]
    while True:
        result = OK if succeed_at == attempts + 1 else FAIL
        step = model.after_attempt(attempts, result, at_ns)
        assert step.attempts == attempts + 1
        if step.state is not DeliveryState.PENDING:
            break
        assert step.next_attempt_at_ns is not None
        wait_ns = step.next_attempt_at_ns - at_ns
        assert wait_ns == model.RETRY_SCHEDULE_S[attempts] * NS_PER_S
        attempts = step.attempts
        at_ns = step.next_attempt_at_ns + lateness_s[attempts] * NS_PER_S
        assert at_ns > times[-1]
        times.append(at_ns)
    assert step.next_attempt_at_ns is None
    if succeed_at is None:
        assert step.state is DeliveryState.DEAD
        assert step.attempts == model.ATTEMPTS_MAX
        span_s = (at_ns - first_ns) // NS_PER_S - sum(lateness_s[1:])
        assert abs(span_s - THREE_DAYS_S) <= 3600
    else:
        assert step.state is DeliveryState.DELIVERED
        assert step.attempts == succeed_at


def test_transition_table() -> None:
    assert model.transition(DeliveryState.PENDING, DeliveryOutcome.SUCCEEDED) is (
        DeliveryState.DELIVERED
    )
    assert model.transition(DeliveryState.PENDING, DeliveryOutcome.EXHAUSTED) is DeliveryState.DEAD
    for final in (DeliveryState.DELIVERED, DeliveryState.DEAD):
        for outcome in DeliveryOutcome:
            with pytest.raises(WebhookIllegalTransition):
                model.transition(final, outcome)


@pytest.mark.parametrize(
    ("status", "succeeded"),
    [(200, True), (204, True), (299, True), (199, False), (300, False), (302, False),
     (404, False), (500, False), (None, False)],
)  # fmt: skip
def test_only_2xx_is_success(status: int | None, succeeded: bool) -> None:
    assert AttemptResult(status, None).succeeded is succeeded


def test_bounded_error_fits_the_column() -> None:
    assert model.bounded_error("x" * 10_000) == "x" * 499 + "…"
    assert len(model.bounded_error("é" * 501)) == model.LAST_ERROR_LENGTH_MAX
    assert model.bounded_error("short") == "short"


# --- Endpoint input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/hooks",
        "http://127.0.0.1:8080/a?b=c",
        "https://[2001:db8::1]:8443/x",
        "https://example.com/" + "a" * (500 - len("https://example.com/")),
    ],
)
def test_valid_urls(url: str) -> None:
    assert model.check_url(url) == url


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("", "required"),
        ("https://example.com/" + "a" * 481, "longer than 500"),
        ("ftp://example.com/x", "https://"),
        ("javascript:alert(1)", "https://"),
        ("example.com/hook", "https://"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("https:///path", "no host"),
        ("https://example.com:99999/", "malformed"),
        ("https://example.com:0/", "port 0"),
        ("https://example.com/a#frag", "fragment"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\n", "spaces"),
        ("https://exämple.com/", "ASCII"),
    ],
)
def test_invalid_urls(url: str, rule: str) -> None:
    with pytest.raises(WebhookUrlInvalid, match=rule) as caught:
        model.check_url(url)
    assert caught.value.code == "webhook_url_invalid"
    assert caught.value.param == "url"


def test_event_types() -> None:
    assert model.check_event_types(None) is None
    assert model.check_event_types(["*"]) is None
    assert model.check_event_types(["order.paid", "*"]) is None
    assert model.check_event_types(["refund.completed", "order.paid"]) == (
        "order.paid",
        "refund.completed",
    )
    for bad in ([], ["Order.Paid"], ["order..paid"], ["a" * 65], ["x", "x"], "order.paid", [1]):
        with pytest.raises(WebhookEventTypesInvalid):
            model.check_event_types(bad)  # type: ignore[arg-type]
    assert model.subscribes(None, "order.paid")
    assert model.subscribes(("order.paid",), "order.paid")
    assert not model.subscribes(("order.paid",), "order.shipped")


# --- Secrets, signing, verifying ------------------------------------------------------------


def test_secret_format() -> None:
    secret = model.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 24
    assert model.new_secret() != secret
    for bad in ("abc", "whsec_", "whsec_!!!"):
        with pytest.raises(WebhookSecretInvalid):
            model.secret_key(bad)


def _signed(secret: str, now_s: int, body: bytes = b'{"id":"evt_1"}') -> dict[str, str]:
    return model.sign_headers([secret], "evt_1", now_s, body)


def test_verify_accepts_and_refuses_each_change() -> None:
    secret, now_s, body = model.new_secret(), 1_800_000_000, b'{"id":"evt_1","x":"\xc3\xa9"}'
    headers = _signed(secret, now_s, body)
    model.verify(secret, headers, body, now_s=now_s)
    model.verify(secret, {k.upper(): v for k, v in headers.items()}, body, now_s=now_s + 300)
    with pytest.raises(WebhookSignatureInvalid):
        model.verify(secret, headers, body + b" ", now_s=now_s)
    with pytest.raises(WebhookSignatureInvalid):
        model.verify(model.new_secret(), headers, body, now_s=now_s)
    with pytest.raises(WebhookSignatureInvalid):
        model.verify(secret, {**headers, "webhook-id": "evt_2"}, body, now_s=now_s)
    with pytest.raises(WebhookSignatureInvalid):  # a changed timestamp breaks the signature
        model.verify(secret, {**headers, "webhook-timestamp": str(now_s + 1)}, body, now_s=now_s)
    with pytest.raises(WebhookTimestampInvalid):
        model.verify(secret, headers, body, now_s=now_s + 301)
    with pytest.raises(WebhookTimestampInvalid):
        model.verify(secret, headers, body, now_s=now_s - 301)
    with pytest.raises(WebhookTimestampInvalid):
        model.verify(secret, {**headers, "webhook-timestamp": "1e9"}, body, now_s=now_s)
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(WebhookSignatureInvalid):
            model.verify(secret, partial, body, now_s=now_s)


def test_rotation_signs_with_both_secrets_during_the_grace() -> None:
    old, new, now_ns = model.new_secret(), model.new_secret(), 1_800_000_000 * NS_PER_S
    rotated = SigningSecrets(old).rotated(new, now_ns)
    assert SigningSecrets.from_text(rotated.to_text()) == rotated
    both = rotated.active(now_ns)
    assert both == (new, old)
    headers = model.sign_headers(both, "evt_1", now_ns // NS_PER_S, b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        model.verify(secret, headers, b"{}", now_s=now_ns // NS_PER_S)
    after = now_ns + model.SECRET_ROTATION_GRACE_S * NS_PER_S
    assert rotated.active(after) == (new,)


def test_signature_matches_an_independent_implementation() -> None:
    """HMAC-SHA256 from `cryptography` (not the stdlib) over the spec's signed content."""
    secret, body, now_s = model.new_secret(), b'{"a":1}', 1_800_000_123
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(b"evt_abc." + str(now_s).encode() + b"." + body)
    expected = "v1," + base64.b64encode(mac.finalize()).decode()
    headers = model.sign_headers([secret], "evt_abc", now_s, body)
    assert headers["webhook-signature"] == expected
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Paykeep-Webhooks/1"


def test_the_spec_example() -> None:
    """The worked example of the Standard Webhooks specification (and the Svix libraries)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = model.sign_headers([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verified_by_the_standardwebhooks_library() -> None:
    webhooks = pytest.importorskip("standardwebhooks.webhooks")
    secret = model.new_secret()
    now_s = SystemClock().now_ns() // NS_PER_S
    body = json.dumps({"id": "evt_1", "data": {"object": {"amount_minor": 100}}}).encode()
    headers = model.sign_headers([secret], "evt_1", now_s, body)
    assert webhooks.Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.Webhook(model.new_secret()).verify(body, headers)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.Webhook(secret).verify(body + b" ", headers)
    # And the library's signatures verify with ours.
    from datetime import UTC, datetime

    theirs = webhooks.Webhook(secret).sign("evt_2", datetime.fromtimestamp(now_s, UTC), body)
    model.verify(
        secret,
        {"webhook-id": "evt_2", "webhook-timestamp": str(now_s), "webhook-signature": theirs},
        body,
        now_s=now_s,
    )
