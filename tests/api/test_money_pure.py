"""The pure parts of the money routes (no server): payout request ids from Idempotency-Keys,
ledger account visibility, the card decline body, the OpenAPI document of every money route.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from paykeep.api.foundation import build_app
from paykeep.api.idempotency import IDEMPOTENCY_KEY_LENGTH_MAX
from paykeep.api.routes import money, register_routes
from paykeep.gateway.payouts.model import PayoutRequest, validate_request
from paykeep.limits import PAYOUT_REQUEST_ID_LENGTH_MAX
from paykeep.payments.errors import PaymentDeclined

#: Idempotency-Keys: 1-255 printable ASCII characters.
keys = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    min_size=1,
    max_size=IDEMPOTENCY_KEY_LENGTH_MAX,
)
MERCHANT = "mer_0123456789abcdef"


@given(keys, keys)
def test_every_idempotency_key_makes_a_payout_request_id_the_gateway_accepts(
    key: str, other: str
) -> None:
    request_id = money.payout_request_id(key)
    assert request_id == money.payout_request_id(key)  # a retry names the same payout
    if other != key:
        assert money.payout_request_id(other) != request_id
    # What request_payout sends to the gateway: "<merchant>:<request id>".
    full = f"{MERCHANT}:{request_id}"
    assert len(full) <= PAYOUT_REQUEST_ID_LENGTH_MAX
    validate_request(
        PayoutRequest(
            request_id=full, merchant_ref=MERCHANT, amount_minor=100, currency="EUR",
            debit_account_name=f"merchant:{MERCHANT}:available:EUR", creditor_name="Shop",
            creditor_iban="GB82WEST12345698765432",
        )
    )  # fmt: skip


def test_payouts_without_a_key_get_fresh_request_ids() -> None:
    ids = {money.payout_request_id(None) for _ in range(100)}
    assert len(ids) == 100


ids = st.from_regex(r"mer_[0-9a-f]{1,16}", fullmatch=True)
suffixes = st.sampled_from(["available:EUR", "reserve:EUR", "available:GBP"])


@given(ids, ids, suffixes)
def test_a_merchant_sees_only_accounts_under_its_own_id(
    mine: str, theirs: str, suffix: str
) -> None:
    assert money.merchant_sees_account(mine, f"merchant:{mine}:{suffix}")
    assert money.merchant_sees_account(None, f"merchant:{theirs}:{suffix}")  # the operator
    # A prefix of another id (mer_1 vs mer_10) is not a match: the separator is part of it.
    assert money.merchant_sees_account(mine, f"merchant:{theirs}:{suffix}") == (mine == theirs)
    for name in (f"buyer:{mine}:wallet:EUR", "platform:fees:EUR", f"x:merchant:{mine}:", None):
        assert not money.merchant_sees_account(mine, name)


def test_a_decline_is_the_error_shape_with_a_decline_code() -> None:
    body = json.loads(
        money.card_error_body(
            PaymentDeclined("Your card was declined.", decline_code="do_not_honor"), "req_1"
        )
    )
    assert body == {
        "error": {"type": "card_error", "code": "card_declined", "decline_code": "do_not_honor",
                  "message": "Your card was declined.", "param": None, "request_id": "req_1"}
    }  # fmt: skip


def test_every_money_route_is_documented() -> None:
    app = build_app("t", "1")
    register_routes(app)
    document = app.openapi()
    ours = {
        (method.upper(), route.path)
        for route in money.router.routes
        for method in getattr(route, "methods", ())
    }
    # 35 + the buyer's sign_in, sign_in/verify and sign_out + card_refunds' list, get, retry
    # + the buyer's withdrawal and the withdrawals list and object
    assert len(ours) == 44
    for method, path in ours:
        operation = document["paths"][path][method.lower()]
        assert operation.get("summary") and operation.get("tags"), (method, path)
        public = path.startswith("/v1/checkout/")
        # The buyer's routes take no API key (the token names the checkout; three moves also
        # need a buyer session); all others do.
        assert ("security" in operation) is not public, (method, path)
        assert "422" not in operation["responses"], (method, path)
    pay = document["paths"]["/v1/checkout/{token}/pay"]["post"]
    assert (
        pay["responses"]["402"]["content"]["application/json"]["example"]["error"]["type"]
        == "card_error"
    )
    card = document["components"]["schemas"]["CardIn"]
    assert card["properties"]["number"].get("writeOnly") is True
