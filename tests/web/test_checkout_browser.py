"""The hosted checkout page in headless Chromium against a real server process.

Each test seeds its own merchant, buyer and orders through the service, drives the page like a
buyer (labels and button names, as a screen reader would), and checks the database afterwards.
Every card number a test used must be absent from every HTML response and from the server log.
"""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest
from playwright.sync_api import Page, expect

from paykeep.clock import FakeClock, SystemClock
from paykeep.limits import CARD_REFUND_ATTEMPTS_MAX
from paykeep.payments.errors import BuyerAuthenticationRequired
from paykeep.payments.model import NS_PER_S, RefundAction
from paykeep.payments.service import CHECKOUT_SESSION_TTL_S, PaymentsService
from paykeep.web.checkout import CARD_ATTEMPTS_MAX, CSRF_PURPOSE
from tests.web.conftest import BANK_IBAN, CARD_CVC, Shop, Visit, spaced

TOTAL = "30.00 EUR"  # 2 x 12.50 + 5.00


def fill_card(page: Page, pan: str, expiry: str = "12/30", cvc: str = CARD_CVC) -> None:
    page.get_by_label("Card number").fill(spaced(pan))
    page.get_by_label("Expiry date").fill(expiry)
    page.get_by_label("Security code").fill(cvc)
    page.get_by_role("button", name=f"Pay {TOTAL}").click()


def assert_card_numbers_absent(shop: Shop, visit: Visit | None, *pans: str) -> None:
    log = shop.server.log()
    for pan in pans:
        for form in (pan, spaced(pan)):
            assert form not in log
            for html in visit.html if visit else []:
                assert form not in html


def pay_directly(shop: Shop, token: str) -> str:
    """Pay ``token``'s order by card through the service (for tests about what follows)."""
    pan = shop.new_card()
    order, _payment = shop.service.pay_with_card(token, pan, 12, 2030, CARD_CVC)
    return order.id


def sign_in_on_page(page: Page, shop: Shop, buyer_id: str) -> None:
    """The buyer asks for a code on the page, reads it in their mail (the server's mail
    folder) and types it: the page sets the session cookie and comes back."""
    email = shop.emails[buyer_id]
    expect(page.locator("#sign-in-offer")).to_contain_text(f"{email[0]}***@example.com")
    page.get_by_role("button", name="Email me a code").click()
    page.wait_for_url("**signin=sent**")
    expect(page.locator("#sign-in-sent")).to_contain_text(f"{email[0]}***@example.com")
    page.get_by_label("Code from the email").fill(shop.code_for(buyer_id))
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**done=signed_in")
    expect(page.locator(".notice")).to_have_text(
        "Thank you, you are signed in. You can continue now."
    )


def buyer_reference(shop: Shop, buyer_id: str) -> str:
    with shop.service.reading() as tx:
        return shop.service.buyer(tx, None, buyer_id).payment_reference


# -- paying ------------------------------------------------------------------------------------


def test_approved_card_pays_and_the_order_waits_for_shipment(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pan = shop.new_card()
    page = visit.page

    page.goto(shop.url(token))
    expect(page.get_by_role("heading", level=1)).to_have_text("Pay Ada's Books GmbH")
    expect(page.get_by_role("row", name="Bookmark")).to_contain_text("5.00 EUR")
    expect(page.get_by_role("row", name="Paperback")).to_contain_text("12.50 EUR each")
    expect(page.get_by_role("row", name="Paperback")).to_contain_text("25.00 EUR")
    expect(page.locator("#total")).to_have_text(TOTAL)
    fill_card(page, pan)

    page.wait_for_url("**/result?done=paid")
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment received")
    expect(page.locator("#payment")).to_have_text(f"Paid by Visa card ending {pan[-4:]}")
    expect(page.locator("#order-state")).to_have_text("Paid — waiting for the shop to ship")
    assert shop.order_state(order_id) == "awaiting_shipment"
    assert shop.order(order_id)["funding"] == "card"
    assert visit.statuses == [200, 303, 200]  # the page, the post answered 303, the result
    assert_card_numbers_absent(shop, visit, pan)
    # The access log names the URL; the token in it (the buyer's credential) is scrubbed.
    assert token not in shop.server.log()
    assert "/checkout/cs_[redacted]/card" in shop.server.log()


def test_declined_card_shows_the_reason_and_the_order_stays_open(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    poor, good = shop.new_card(balance_minor=100), shop.new_card()
    page = visit.page

    page.goto(shop.url(token))
    fill_card(page, poor)
    expect(page.locator("#errors")).to_have_text(
        "The card has insufficient funds for this payment."
    )
    assert visit.statuses[-1] == 402
    expect(page.get_by_label("Card number")).to_have_value("")
    expect(page.get_by_label("Security code")).to_have_value("")
    assert shop.order_state(order_id) == "created"
    [failed] = shop.payments(order_id)
    assert (failed["state"], failed["decline_code"]) == ("failed", "insufficient_funds")

    fill_card(page, good)  # the buyer tries another card on the same page
    page.wait_for_url("**/result?done=paid")
    assert shop.order_state(order_id) == "awaiting_shipment"
    assert_card_numbers_absent(shop, visit, poor, good)


def test_an_unreachable_bank_is_explained_and_the_buyer_can_retry(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pan = shop.new_card()
    shop.card_fault(pan, "unavailable")
    page = visit.page
    page.goto(shop.url(token))

    fill_card(page, pan)
    expect(page.locator("#errors")).to_have_text(
        "We could not reach your bank. You were not charged; please try again."
    )
    assert visit.statuses[-1] == 503
    assert shop.order_state(order_id) == "created"
    fill_card(page, pan)  # the fault was for one message only
    page.wait_for_url("**/result?done=paid")
    assert shop.order_state(order_id) == "awaiting_shipment"
    assert_card_numbers_absent(shop, visit, pan)


def test_a_mistyped_card_is_refused_in_words_before_any_payment(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pan = shop.new_card()
    wrong = pan[:-1] + str((int(pan[-1]) + 1) % 10)  # the Luhn check digit is now wrong
    page = visit.page
    page.goto(shop.url(token))

    fill_card(page, wrong)
    expect(page.locator("#errors")).to_contain_text("The card number is not valid")
    assert visit.statuses[-1] == 422
    fill_card(page, pan, expiry="13/30")
    expect(page.locator("#errors")).to_contain_text("The expiry date is not valid")
    assert shop.payments(order_id) == []  # nothing was recorded, nothing sent to the network
    assert shop.order_state(order_id) == "created"
    assert_card_numbers_absent(shop, visit, pan, wrong)


def test_bank_transfer_shows_the_iban_and_the_buyers_reference(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    order_id, token = shop.new_order(merchant, buyer)
    reference = buyer_reference(shop, buyer)
    page = visit.page

    page.goto(shop.url(token))
    # Shown as people type it, in groups of four.
    expect(page.locator("#bank-iban")).to_have_text(spaced(BANK_IBAN))
    expect(page.locator("#bank-reference")).to_have_text(reference)
    page.get_by_role("button", name="I will pay by bank transfer").click()

    page.wait_for_url("**/result?done=bank_transfer")
    expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for your bank transfer")
    expect(page.locator("#bank-reference")).to_have_text(reference)
    expect(page.locator("#bank-amount")).to_have_text(TOTAL)
    expect(page.locator("#notices")).to_contain_text("Please make your bank transfer")
    order = shop.order(order_id)
    assert (order["state"], order["funding"]) == ("created", "bank_transfer")

    page.goto(shop.url(token))  # the buyer may still pay by card instead
    expect(page.get_by_role("heading", name="Waiting for your bank transfer")).to_be_visible()
    expect(page.get_by_label("Card number")).to_be_visible()


def test_the_wallet_pays_when_its_balance_covers_the_order(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    # A refunded card payment whose refund the card network never takes leaves 30.00 in the
    # buyer's Paykeep balance (a card refund that goes through leaves nothing there).
    first, first_token = shop.new_order(merchant, buyer)
    pay_directly(shop, first_token)
    pan = shop.pans[-1]
    with shop.service.transaction() as tx:
        shop.service.refund(tx, merchant, first, None, "out of stock")
    for _ in range(CARD_REFUND_ATTEMPTS_MAX):
        shop.card_fault(pan, "unavailable")
        shop.service.send_card_refunds()
    assert shop.refunds(first)[0]["card_refund"] == {"status": "failed", "last4": pan[-4:]}
    order_id, token = shop.new_order(merchant, buyer)
    page = visit.page

    page.goto(shop.url(token))
    expect(page.locator("#wallet-balance")).to_have_text(TOTAL)
    # The balance is the buyer's: the button appears only once the buyer proved it is them.
    expect(page.get_by_role("button", name=f"Pay {TOTAL} from my balance")).to_have_count(0)
    sign_in_on_page(page, shop, buyer)
    page.get_by_role("button", name=f"Pay {TOTAL} from my balance").click()
    page.wait_for_url("**/result?done=paid")
    expect(page.locator("#payment")).to_have_text("Paid from your Paykeep balance")
    order = shop.order(order_id)
    assert (order["state"], order["funding"]) == ("awaiting_shipment", "wallet")

    _third, third_token = shop.new_order(merchant, buyer)  # the balance is spent now
    page.goto(shop.url(third_token))
    expect(page.get_by_label("Card number")).to_be_visible()
    expect(page.get_by_role("button", name=f"Pay {TOTAL} from my balance")).to_have_count(0)


# -- links that do not work --------------------------------------------------------------------


def test_unknown_and_expired_links_get_a_friendly_page(shop: Shop, visit: Visit) -> None:
    page = visit.page
    for token in ("cs_" + "A" * 43, "nope", "cs_" + "x" * 200):
        response = page.goto(shop.url(token))
        assert response is not None and response.status == 404
        expect(page.locator("#errors")).to_have_text(
            "We could not find this checkout. Please check the link, or ask the shop for a new one."
        )
        assert "Traceback" not in page.content()

    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    past = FakeClock(SystemClock().now_ns() - (CHECKOUT_SESSION_TTL_S + 3600) * NS_PER_S)
    then = PaymentsService(shop.service.database, shop.service.ledger, shop.service.cipher,
                           clock=past)  # fmt: skip
    order_id, token = shop.new_order(merchant, buyer, service=then)
    response = page.goto(shop.url(token))
    assert response is not None and response.status == 410
    expect(page.get_by_role("heading", level=1)).to_have_text("Link expired")
    expect(page.locator("#errors")).to_contain_text("This checkout link has expired")
    response = page.goto(shop.url(token, "/result"))
    assert response is not None and response.status == 410

    # A card form posted to it anyway (an old tab) is refused the same way, nothing charged.
    pan = shop.new_card()
    csrf = shop.service.cipher.lookup(token, purpose=CSRF_PURPOSE)
    with httpx.Client(timeout=20) as http:
        posted = http.post(
            shop.url(token, "/card"),
            data={"csrf": csrf, "card_number": pan, "expiry": "12/30", "cvc": CARD_CVC},
        )
    assert posted.status_code == 410
    assert "This checkout link has expired" in posted.text
    assert shop.payments(order_id) == []
    assert_card_numbers_absent(shop, None, pan)


# -- what the pages are made of ----------------------------------------------------------------


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def assert_self_contained(html: str, allowed_link: str | None) -> None:
    tags = parse(html)
    names = [t for t, _ in tags]
    assert "script" not in names and "link" not in names and "img" not in names
    assert "iframe" not in names and names.count("style") == 1
    for tag, attrs in tags:
        assert "src" not in attrs and "srcset" not in attrs, tag
        assert "style" not in attrs, tag  # the CSP allows only the one nonce'd element
        for name in ("href", "action"):
            value = attrs.get(name)
            if value is None:
                continue
            assert value.startswith("/checkout/") or value == allowed_link, (tag, name, value)
    labelled = {attrs["for"] for tag, attrs in tags if tag == "label" and attrs.get("for")}
    for tag, attrs in tags:
        if tag in ("input", "textarea") and attrs.get("type") != "hidden":
            assert attrs.get("id") in labelled, attrs  # every field has a label (for=id)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in tags
    assert any(attrs.get("aria-live") for _, attrs in tags)


def test_pages_are_self_contained_and_strict(shop: Shop, visit: Visit) -> None:
    success = "https://shop.example/thanks?order=42"
    merchant = shop.new_merchant()
    _order_id, token = shop.new_order(merchant, shop.new_buyer(merchant), success_url=success)
    pan = shop.new_card()
    page = visit.page

    page.goto(shop.url(token))
    fill_card(page, pan)
    page.wait_for_url("**/result?done=paid")
    expect(page.get_by_role("link", name="Return to Ada's Books GmbH")).to_have_attribute(
        "href", success
    )
    # The browser fetched nothing but our own documents (no CSS, font, image or script).
    assert visit.requested and all(u.startswith(shop.base_url + "/") for u in visit.requested)
    assert len(visit.html) == 2
    for html in visit.html:
        assert_self_contained(html, success)

    with httpx.Client(timeout=20) as http:
        for url in (shop.url(token), shop.url(token, "/result"), shop.url("cs_unknown")):
            response = http.get(url)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "form-action 'self'" in csp
            assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            [style] = [a for t, a in parse(response.text) if t == "style"]
            assert f"style-src 'nonce-{style['nonce']}'" in csp
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["content-type"].startswith("text/html")
    assert_card_numbers_absent(shop, visit, pan)


# -- after payment -----------------------------------------------------------------------------


def test_buyer_requests_then_withdraws_a_refund_and_confirms_receipt(
    shop: Shop, visit: Visit
) -> None:
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    page = visit.page

    page.goto(shop.url(token))  # once paid, the checkout link shows the order and actions
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment received")
    expect(page.get_by_role("button", name="I received my order")).to_have_count(0)
    page.get_by_label("Why do you want a refund?").fill("The <b>cover</b> is torn")
    page.get_by_role("button", name="Send my refund request").click()
    page.wait_for_url("**/result?done=refund_requested")
    expect(page.locator(".refund-state")).to_have_text("Requested — waiting for the shop's answer")
    expect(page.locator(".refund")).to_contain_text("The <b>cover</b> is torn")  # escaped
    [refund] = shop.refunds(order_id)
    assert (refund["state"], refund["amount_minor"]) == ("requested", 3000)
    assert refund["reason"] == "The <b>cover</b> is torn"

    expect(page.get_by_role("button", name="Withdraw my refund request")).to_have_count(0)
    sign_in_on_page(page, shop, buyer)
    page.get_by_role("button", name="Withdraw my refund request").click()
    page.wait_for_url("**/result?done=cancel")
    expect(page.locator(".refund-state")).to_have_text("Withdrawn by you")
    assert shop.refunds(order_id)[0]["state"] == "cancelled"

    with shop.service.transaction() as tx:
        shop.service.ship(tx, merchant, order_id, "dhl", "JD0001234567")
    page.reload()
    expect(page.locator("#order-state")).to_have_text(
        "Shipped — please confirm when you receive it"
    )
    expect(page.get_by_role("row", name="Delivery")).to_contain_text("JD0001234567")
    page.get_by_role("button", name="I received my order").click()
    page.wait_for_url("**/result?done=confirmed")
    expect(page.get_by_role("heading", level=1)).to_have_text("Order completed")
    assert shop.order_state(order_id) == "completed"
    expect(page.get_by_role("button", name="Send my refund request")).to_have_count(0)


def test_partial_refund_request_refused_then_escalated(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pay_directly(shop, token)
    page = visit.page

    page.goto(shop.url(token))
    page.get_by_label("Why do you want a refund?").fill("One book is missing")
    page.get_by_label("Amount").fill("12.5")
    page.get_by_role("button", name="Send my refund request").click()
    page.wait_for_url("**/result?done=refund_requested")
    [refund] = shop.refunds(order_id)
    assert refund["amount_minor"] == 1250
    with shop.service.transaction() as tx:
        shop.service.refund_action(tx, str(refund["id"]), RefundAction.REFUSE, scope=merchant)

    page.reload()
    expect(page.locator(".refund-state")).to_have_text(
        "Refused by the shop — you can ask Paykeep to decide"
    )
    page.get_by_role("button", name="Ask Paykeep to decide").click()
    page.wait_for_url("**/result?done=escalate")
    expect(page.locator(".refund-state")).to_have_text(
        "With Paykeep — we will review it and decide"
    )
    assert shop.refunds(order_id)[0]["state"] == "disputed"
    with shop.service.reading() as tx:
        [dispute] = tx.repo.disputes({"order_id": order_id}, 5, None)
    assert dispute.state == "open"


def test_return_shipment_entered_from_the_page(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pay_directly(shop, token)
    page = visit.page
    page.goto(shop.url(token))
    page.get_by_label("Why do you want a refund?").fill("Wrong edition")
    page.get_by_role("button", name="Send my refund request").click()
    page.wait_for_url("**/result?done=refund_requested")
    [refund] = shop.refunds(order_id)
    with shop.service.transaction() as tx:
        shop.service.refund_action(
            tx, str(refund["id"]), RefundAction.AGREE_WITH_RETURN, scope=merchant
        )

    page.reload()
    page.get_by_label("Carrier").fill("DHL")
    page.get_by_label("Tracking number").fill("bad tracking!")
    page.get_by_role("button", name="Record my return shipment").click()
    expect(page.locator("#errors")).to_have_text(
        "The tracking number is 4 to 64 letters, digits or dashes."
    )
    assert visit.statuses[-1] == 422
    page.get_by_label("Carrier").fill("DHL")
    page.get_by_label("Tracking number").fill("RET-20260001")
    page.get_by_role("button", name="Record my return shipment").click()
    page.wait_for_url("**/result?done=return")
    expect(page.locator(".refund-state")).to_have_text(
        "Return on its way — waiting for the shop to receive it"
    )
    expect(page.get_by_role("row", name="Return")).to_contain_text("RET-20260001")
    assert shop.refunds(order_id)[0]["state"] == "return_shipped"


# -- forged and abusive posts (plain HTTP: a browser would not send them) ----------------------


def test_forged_and_malformed_posts_are_refused(shop: Shop) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    pan = shop.new_card()
    csrf = shop.service.cipher.lookup(token, purpose=CSRF_PURPOSE)
    form = {"csrf": csrf, "card_number": pan, "expiry": "12/30", "cvc": CARD_CVC}
    url = shop.url(token, "/card")
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    cases: list[tuple[str, dict[str, object], int]] = [
        ("no form token", {"data": {**form, "csrf": ""}}, 403),
        ("another session's token", {"data": {**form, "csrf": "0" * 64}}, 403),
        ("cross-site", {"data": form, "headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
        ("same-site", {"data": form, "headers": {"Sec-Fetch-Site": "same-site"}}, 403),
        ("other origin", {"data": form, "headers": {"Origin": "https://evil.example"}}, 403),
        ("json", {"json": form}, 422),
        ("too big", {"data": {**form, "x": "1" * 9000}}, 422),
        ("repeated", {"content": f"csrf={csrf}&cvc=1&cvc=2", "headers": urlencoded}, 422),
    ]
    with httpx.Client(timeout=20) as http:
        for name, request, status in cases:
            response = http.post(url, **request)  # type: ignore[arg-type]
            assert response.status_code == status, (name, response.text[:300])
            assert pan not in response.text and "Traceback" not in response.text, name
        assert shop.payments(order_id) == []
        ok = http.post(url, data=form, headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"})
        assert ok.status_code == 303, ok.text[:300]
        assert ok.headers["location"] == f"/checkout/{token}/result?done=paid"
    assert shop.order_state(order_id) == "awaiting_shipment"
    assert_card_numbers_absent(shop, None, pan)


def test_card_testing_is_stopped_after_the_attempt_limit(shop: Shop) -> None:
    merchant = shop.new_merchant()
    order_id, token = shop.new_order(merchant, shop.new_buyer(merchant))
    csrf = shop.service.cipher.lookup(token, purpose=CSRF_PURPOSE)
    pans = [shop.new_card(balance_minor=1) for _ in range(CARD_ATTEMPTS_MAX + 1)]
    with httpx.Client(timeout=20) as http:
        statuses = [
            http.post(
                shop.url(token, "/card"),
                data={"csrf": csrf, "card_number": pan, "expiry": "12/30", "cvc": CARD_CVC},
            ).status_code
            for pan in pans
        ]
    assert statuses == [402] * CARD_ATTEMPTS_MAX + [429]
    assert len(shop.payments(order_id)) == CARD_ATTEMPTS_MAX  # the last one never left
    assert_card_numbers_absent(shop, None, *pans)


# -- buyer sign-in -----------------------------------------------------------------------------


def test_sign_in_form_words_and_cookie(shop: Shop, visit: Visit) -> None:
    """A wrong code is explained and the form stays; the right one sets an httpOnly,
    SameSite=Strict cookie that the page's actions then carry."""
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    with shop.service.transaction() as tx:
        shop.service.ship(tx, merchant, order_id, "dhl", "JD0009876543")
    page = visit.page
    page.goto(shop.url(token))
    expect(page.get_by_role("button", name="I received my order")).to_have_count(0)
    page.get_by_role("button", name="Email me a code").click()
    page.wait_for_url("**signin=sent**")
    code = shop.code_for(buyer)
    page.get_by_label("Code from the email").fill(f"{(int(code) + 1) % 10**6:06d}")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#errors")).to_have_text(
        "That code is not right. Please check the email we sent you and try again."
    )
    assert visit.statuses[-1] == 422
    page.get_by_label("Code from the email").fill(f"{code[:3]} {code[3:]}")  # as typed
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**done=signed_in")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "paykeep_buyer_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/checkout"
    assert not cookie["secure"]  # served over http here; Secure over https
    assert str(cookie["value"]).startswith("bs_")
    page.get_by_role("button", name="I received my order").click()
    page.wait_for_url("**/result?done=confirmed")
    assert shop.order_state(order_id) == "completed"
    for html in visit.html:
        assert code not in html and str(cookie["value"]) not in html
    assert code not in shop.server.log() and shop.emails[buyer] not in shop.server.log()


def test_sign_out_ends_the_session_and_drops_the_cookie(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    with shop.service.transaction() as tx:
        shop.service.ship(tx, merchant, order_id, "dhl", "JD0005556667")
    page = visit.page
    page.goto(shop.url(token))
    page.get_by_role("button", name="Email me a code").click()
    page.wait_for_url("**signin=sent**")
    page.get_by_label("Code from the email").fill(shop.code_for(buyer))
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url("**done=signed_in")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "paykeep_buyer_session"]
    session = str(cookie["value"])
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**done=signed_out")
    expect(page.get_by_text("You are signed out.")).to_have_count(1)
    assert [c for c in page.context.cookies() if c["name"] == "paykeep_buyer_session"] == []
    expect(page.get_by_role("button", name="I received my order")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    # The session itself has ended, not only the cookie: it no longer proves the buyer.
    with pytest.raises(BuyerAuthenticationRequired):
        shop.service.check_buyer_session(token, session)
    assert shop.order_state(order_id) == "awaiting_receipt"


def test_the_merchant_with_the_link_cannot_confirm_on_the_page(shop: Shop) -> None:
    """A post with the page's own form token (anyone with the link can render the page) but
    no buyer cookie — or another buyer's — is refused in words, and nothing changes."""
    merchant = shop.new_merchant()
    buyer, other = shop.new_buyer(merchant), shop.new_buyer(merchant)
    order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    _o, other_token = shop.new_order(merchant, other)
    shop.service.start_buyer_sign_in(other_token)
    _s, foreign = shop.service.verify_buyer_code(other_token, shop.code_for(other))
    with shop.service.transaction() as tx:
        shop.service.ship(tx, merchant, order_id, "dhl", "JD0001112223")
        refund = shop.service.request_refund(tx, token, order_id, None, "damaged")
    csrf = shop.service.cipher.lookup(token, purpose=CSRF_PURPOSE)
    posts = [shop.url(token, "/confirm"), shop.url(token, f"/refunds/{refund.id}/cancel")]
    for cookies in ({}, {"paykeep_buyer_session": foreign}, {"paykeep_buyer_session": "bs_x"}):
        with httpx.Client(timeout=20, cookies=cookies) as http:
            for url in posts:
                answer = http.post(url, data={"csrf": csrf})
                assert answer.status_code == 401, (url, answer.text[:300])
                assert "please sign in with the code we email you first" in answer.text
    assert shop.order_state(order_id) == "awaiting_receipt"
    assert shop.refunds(order_id)[0]["state"] == "requested"
