"""The buyer sends their Paykeep balance back from the checkout page, in headless Chromium
against a real server process, on SQLite and PostgreSQL (the fixtures of ``conftest.py``).

Wallet money is made the way it happens: a real bank transfer at banksim whose camt.053
statement the test imports (a top-up, from the buyer's own IBAN), or a card refund the issuer
never took (card-funded). The buyer signs in with the code from the server's mail folder,
sends money back with the form in the "Your Paykeep balance" section, and the test checks the
withdrawal the service recorded: its amount, its destination, and that there is exactly one.
"""

from __future__ import annotations

from playwright.sync_api import APIResponse, Locator, Page, Request, Route, expect

from paykeep.gateway.payouts.model import Payout
from paykeep.limits import CARD_REFUND_ATTEMPTS_MAX, PAGE_SIZE_MAX
from paykeep.payments.records import Withdrawal
from paykeep.payments.service import wallet_name
from paykeep.web.checkout import DONE_WORDS, WITHDRAW_PROBLEMS
from tests.web.conftest import Shop, Visit
from tests.web.test_checkout_browser import (
    assert_self_contained,
    pay_directly,
    sign_in_on_page,
)

#: The buyer's own bank account: the sender of their top-ups (the only place bank money goes).
BUYER_IBAN = "NL91ABNA0417164300"
TOP_UP_MINOR = 5_000  # 50.00 EUR
SEND_BACK = "Send my money back"


def balance_section(page: Page) -> Locator:
    return page.get_by_role("region", name="Your Paykeep balance")


def buyer_with_bank_money(shop: Shop) -> tuple[str, str, str]:
    """(buyer id, checkout token, top-up id): a buyer whose card-paid order's checkout link
    shows its status page, and who has TOP_UP_MINOR in their balance from a bank transfer."""
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    _order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    topup = shop.top_up(buyer, TOP_UP_MINOR, BUYER_IBAN)
    assert shop.wallet_available(buyer) == TOP_UP_MINOR
    return buyer, token, topup


def signed_in_at_the_balance(page: Page, shop: Shop, buyer: str, token: str, balance: str) -> None:
    page.goto(shop.url(token))
    section = balance_section(page)
    expect(section.locator("#withdraw-balance")).to_have_text(balance)
    # The balance is the buyer's: the form appears only once the buyer proved it is them.
    expect(page.get_by_role("button", name=SEND_BACK)).to_have_count(0)
    expect(section).to_contain_text("sign in with the code we email you")
    sign_in_on_page(page, shop, buyer)
    expect(balance_section(page).locator("#withdraw-balance")).to_have_text(balance)


def withdraw_posts(page: Page) -> list[Request]:
    """Every POST of the withdrawal form this tab sends, from now on."""
    posts: list[Request] = []
    page.on(
        "request",
        lambda r: posts.append(r) if r.method == "POST" and r.url.endswith("/withdraw") else None,
    )
    return posts


def payouts_from_wallet(shop: Shop, buyer: str) -> list[Payout]:
    """The gateway's payouts debiting the buyer's wallet (a bank withdrawal is one)."""
    assert shop.service.payouts is not None
    listed = shop.service.payouts.list(limit=PAGE_SIZE_MAX)
    assert len(listed) < PAGE_SIZE_MAX  # a test's database holds a handful
    return [p for p in listed if p.debit_account_name == wallet_name(buyer, "EUR")]


def assert_one_bank_withdrawal(shop: Shop, buyer: str, topup: str, amount: int) -> Withdrawal:
    """The buyer has exactly one withdrawal, of ``amount``, to the IBAN of ``topup``, held by
    exactly one gateway payout; the wallet is down by ``amount`` exactly."""
    [withdrawal] = shop.withdrawals(buyer)
    assert (withdrawal.amount_minor, withdrawal.currency) == (amount, "EUR")
    assert withdrawal.destination == "source_bank_account"
    assert (withdrawal.source_topup_id, withdrawal.iban_last4) == (topup, BUYER_IBAN[-4:])
    assert withdrawal.state == "requested"
    [payout] = payouts_from_wallet(shop, buyer)
    assert payout.payout_id == withdrawal.gateway_payout_id
    assert (payout.amount_minor, payout.creditor_iban_last4) == (amount, BUYER_IBAN[-4:])
    assert shop.wallet_available(buyer) == TOP_UP_MINOR - amount
    return withdrawal


# -- to the bank account -----------------------------------------------------------------------


def test_part_of_the_balance_goes_back_to_the_bank_account(shop: Shop, visit: Visit) -> None:
    buyer, token, topup = buyer_with_bank_money(shop)
    page = visit.page
    signed_in_at_the_balance(page, shop, buyer, token, "50.00 EUR")
    section = balance_section(page)
    expect(section.get_by_label("The bank account it came from")).to_be_checked()
    expect(section.get_by_label("The card it came from")).not_to_be_checked()
    expect(section.get_by_label("Amount")).to_have_accessible_description(
        "Leave empty for all of it (50.00 EUR)."
    )
    section.get_by_label("Amount").fill("20.00")
    section.get_by_role("button", name=SEND_BACK).click()
    page.wait_for_url("**/result?done=withdrawn_to_bank")
    expect(page.get_by_role("status")).to_have_text(DONE_WORDS["withdrawn_to_bank"])
    expect(page.locator("#errors")).to_be_empty()
    expect(balance_section(page).locator("#withdraw-balance")).to_have_text("30.00 EUR")
    assert_one_bank_withdrawal(shop, buyer, topup, 2_000)
    # Every page on the way, the balance form included, labels each field.
    for html in visit.html:
        assert_self_contained(html, None)


def submit_with_a_late_answer(page: Page) -> APIResponse:
    """Click "Send my money back" on a slow network: the post reaches the server, which
    withdraws, but its answer has not reached the browser yet (it never will: the next
    submit replaces it). Returns the server's answer to that first post."""
    answers: list[APIResponse] = []

    def first_answer_late(route: Route) -> None:
        if answers:
            route.continue_()
            return
        answers.append(route.fetch(max_redirects=0))
        # Never fulfilled: the browser gives up on this post when the buyer submits again.

    page.route("**/withdraw", first_answer_late)
    balance_section(page).get_by_role("button", name=SEND_BACK).click(no_wait_after=True)
    for _ in range(200):
        if answers:
            break
        page.wait_for_timeout(25)
    [answer] = answers
    return answer


def test_a_double_submit_sends_the_money_back_once(shop: Shop, visit: Visit) -> None:
    buyer, token, topup = buyer_with_bank_money(shop)
    page = visit.page
    signed_in_at_the_balance(page, shop, buyer, token, "50.00 EUR")
    posts = withdraw_posts(page)

    balance_section(page).get_by_label("Amount").fill("12.50")
    first = submit_with_a_late_answer(page)
    assert first.status == 303 and first.headers["location"].endswith("done=withdrawn_to_bank")
    assert len(shop.withdrawals(buyer)) == 1  # the first post did its work
    # The impatient buyer presses Enter on the button that still has the focus.
    page.keyboard.press("Enter")
    page.wait_for_url("**/result?done=withdrawn_to_bank")
    page.unroute("**/withdraw")
    # Two posts of the same rendered form (its request id) reached the server: one withdrawal.
    assert len(posts) == 2 and posts[0].post_data == posts[1].post_data
    assert posts[0].failure == "net::ERR_ABORTED" and posts[1].failure is None
    expect(page.get_by_role("status")).to_have_text(DONE_WORDS["withdrawn_to_bank"])
    expect(balance_section(page).locator("#withdraw-balance")).to_have_text("37.50 EUR")
    withdrawal = assert_one_bank_withdrawal(shop, buyer, topup, 1_250)

    # A new page is a new form: the buyer sends more back, a second withdrawal. Changing the
    # amount while that answer is late and sending again is not a third one, and the buyer
    # is told what happened (not that nothing could be done).
    page.reload()
    balance_section(page).get_by_label("Amount").fill("7.50")
    second = submit_with_a_late_answer(page)
    assert second.status == 303
    # By keyboard (the page is still waiting): back to the amount, another one, Enter.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("9.00")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text(
        WITHDRAW_PROBLEMS["payout_request_id_reused"].words
    )
    page.unroute("**/withdraw")
    assert visit.statuses[-1] == 409 and len(posts) == 4
    assert posts[3].post_data == str(posts[2].post_data).replace("amount=7.50", "amount=9.00")
    expect(balance_section(page).locator("#withdraw-balance")).to_have_text("30.00 EUR")
    listed = shop.withdrawals(buyer)
    assert sorted(w.amount_minor for w in listed) == [750, 1_250]
    assert withdrawal.id in {w.id for w in listed}
    assert len(payouts_from_wallet(shop, buyer)) == 2
    assert shop.wallet_available(buyer) == TOP_UP_MINOR - 2_000


def test_more_than_the_account_sent_is_refused_in_words(shop: Shop, visit: Visit) -> None:
    buyer, token, topup = buyer_with_bank_money(shop)
    page = visit.page
    signed_in_at_the_balance(page, shop, buyer, token, "50.00 EUR")

    for typed, code in (("80.00", "withdrawal_exceeds_source"), ("0", "amount_minor")):
        balance_section(page).get_by_label("Amount").fill(typed)
        balance_section(page).get_by_role("button", name=SEND_BACK).click()
        expect(page.get_by_role("alert")).to_have_text(WITHDRAW_PROBLEMS[code].words)
        assert visit.statuses[-1] == WITHDRAW_PROBLEMS[code].status
        expect(page.locator("#notices")).to_be_empty()
        assert shop.withdrawals(buyer) == [] and payouts_from_wallet(shop, buyer) == []
        assert shop.wallet_available(buyer) == TOP_UP_MINOR
        # Still signed in, the balance unchanged, the form there to try again.
        expect(balance_section(page).locator("#withdraw-balance")).to_have_text("50.00 EUR")
        expect(balance_section(page).get_by_label("Amount")).to_be_editable()

    # Empty: all of it. The balance is then gone, and so is the section.
    balance_section(page).get_by_label("Amount").fill("")
    balance_section(page).get_by_role("button", name=SEND_BACK).click()
    page.wait_for_url("**/result?done=withdrawn_to_bank")
    expect(page.get_by_role("status")).to_have_text(DONE_WORDS["withdrawn_to_bank"])
    expect(balance_section(page)).to_have_count(0)
    assert_one_bank_withdrawal(shop, buyer, topup, TOP_UP_MINOR)


# -- to the card -------------------------------------------------------------------------------


def test_card_funded_money_goes_back_to_the_card(shop: Shop, visit: Visit) -> None:
    merchant = shop.new_merchant()
    buyer = shop.new_buyer(merchant)
    # A refunded card payment whose refund the card network never takes leaves 30.00 in the
    # buyer's balance, all of it from the card.
    order_id, token = shop.new_order(merchant, buyer)
    pay_directly(shop, token)
    pan = shop.pans[-1]
    with shop.service.transaction() as tx:
        shop.service.refund(tx, merchant, order_id, None, "out of stock")
    for _ in range(CARD_REFUND_ATTEMPTS_MAX):
        shop.card_fault(pan, "unavailable")
        shop.service.send_card_refunds()
    assert shop.refunds(order_id)[0]["card_refund"] == {"status": "failed", "last4": pan[-4:]}
    assert shop.wallet_available(buyer) == 3_000
    page = visit.page
    signed_in_at_the_balance(page, shop, buyer, token, "30.00 EUR")

    # None of it came from a bank account: the default choice is refused, in words.
    balance_section(page).get_by_label("Amount").fill("10.00")
    balance_section(page).get_by_role("button", name=SEND_BACK).click()
    expect(page.get_by_role("alert")).to_have_text(WITHDRAW_PROBLEMS["withdrawal_no_source"].words)
    assert shop.withdrawals(buyer) == [] and shop.wallet_available(buyer) == 3_000

    section = balance_section(page)
    section.get_by_label("The card it came from").check()
    section.get_by_label("Amount").fill("10.00")
    section.get_by_role("button", name=SEND_BACK).click()
    page.wait_for_url("**/result?done=withdrawn_to_card")
    expect(page.get_by_role("status")).to_have_text(DONE_WORDS["withdrawn_to_card"])
    expect(balance_section(page).locator("#withdraw-balance")).to_have_text("20.00 EUR")
    [withdrawal] = shop.withdrawals(buyer)
    assert (withdrawal.destination, withdrawal.amount_minor) == ("source_card", 1_000)
    [part] = withdrawal.card_refunds
    assert (part.amount_minor, part.card_last4, part.state) == (1_000, pan[-4:], "pending")
    assert payouts_from_wallet(shop, buyer) == []  # nothing goes to a bank account
    assert shop.wallet_available(buyer) == 2_000

    shop.service.send_card_refunds()  # the worker's pass: the issuer takes it this time
    [sent] = shop.withdrawals(buyer)
    assert sent.state == "settled" and sent.card_refunds[0].state == "succeeded"
