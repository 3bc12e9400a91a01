"""The real-time rules wired into escrow (``paykeep.aml.rules.escrow``), on both databases:
a sanctioned merchant's payment is blocked and nothing moves; a release the rules send to
review stays held, its case is opened once, and only an operator's confirmation releases it.
Real DecisionEngine, real rule configuration, a real screening index built from an
OpenSanctions FollowTheMoney sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from paykeep.aml.rules.escrow import EscrowRisk
from paykeep.aml.rules.sanctions import ScreeningSanctions
from paykeep.aml.rules.service import DecisionEngine, RulesService
from paykeep.aml.screening.service import ScreeningService
from paykeep.db import Database
from paykeep.payments.errors import IllegalTransition, RiskDeclined
from paykeep.payments.model import OrderState as S
from paykeep.payments.model import RefundAction, TimerSettings
from tests.payments.conftest import World

FTM_SAMPLE = Path(__file__).parent.parent / "fixtures" / "sanctions" / "ftm_sample.jsonl"


def _count(w: World, table: str) -> int:
    with w.database.read() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture
def risk(world: World) -> EscrowRisk:
    screening = ScreeningService(data_dir=world.data_dir / "screening", clock=world.clock)
    screening.import_list(FTM_SAMPLE, "ftm", rescreen=False)
    engine = DecisionEngine(world.database, ScreeningSanctions(screening), world.clock)
    escrow = EscrowRisk(engine)
    world.svc.risk = escrow
    return escrow


def test_a_sanctioned_merchant_is_blocked_and_nothing_moves(world: World, risk: EscrowRisk) -> None:
    w = world
    listed = w.merchant("Silverlake Shipping Holding GmbH")
    b = w.buyer(listed)
    w.fund(b, 5_000)
    order, token = w.order(listed, b)
    head = w.ledger.head()
    with pytest.raises(RiskDeclined), w.svc.transaction() as tx:
        w.svc.pay_from_wallet(tx, token, w.bs(token))
    assert w.get_order(order.id).state is S.CREATED and w.wallet(b) == (5_000, 0)
    assert w.ledger.head() == head
    assert _count(w, "aml_decisions") == 0  # rolled back with the payment...
    assert risk.flush() == 1  # ...and recorded by the worker's flush
    with w.database.read() as conn:
        outcome, event_id = conn.execute(
            sa.text("SELECT outcome, event_id FROM aml_decisions")
        ).one()
    assert (outcome, event_id) == ("block", f"payment:{order.id}")
    # An unlisted merchant's payment goes through, its decision committed with it.
    clean = w.merchant("Tea Shop GmbH")
    w.paid_order(clean, w.buyer(clean))
    assert _count(w, "aml_decisions") == 2


def test_a_release_under_review_is_held_until_an_operator_confirms(
    world: World, risk: EscrowRisk
) -> None:
    w = world
    RulesService(w.database, w.clock).set_config(
        "new_account_high_value",
        {"amount_min_minor": 2_000, "age_max_s": 86_400, "score_bp": 6_000},
        actor="compliance:alice",
    )
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b, 2_500)  # a payment under review goes ahead (case open)
    with w.svc.transaction() as tx:
        w.svc.ship(tx, m.id, order.id, "dhl", "JD0001234")
    cases_after_payment = _count(w, "aml_cases")
    assert cases_after_payment == 1
    for _attempt in range(2):
        w.clock.advance(60)  # a later attempt is a later event: the recorded answer stands
        with pytest.raises(IllegalTransition), w.svc.transaction() as tx:
            w.svc.confirm(tx, order.id, token=token, buyer_session=w.bs(token))
        risk.flush()
    assert w.get_order(order.id).state is S.AWAITING_RECEIPT and w.available(m) == 0
    # The release's alerts join the case already open about this party: one case to work on.
    assert _count(w, "aml_cases") == cases_after_payment
    with w.database.read() as conn:
        refs = {
            r[0]
            for r in conn.execute(
                sa.text("SELECT ref FROM aml_case_evidence WHERE kind = 'transaction'")
            )
        }
    assert refs == {f"payment:{order.id}", f"release:{order.id}"}
    with w.database.read() as conn:
        outcomes = dict(conn.execute(sa.text("SELECT event_id, outcome FROM aml_decisions")).all())
    assert outcomes == {f"payment:{order.id}": "review", f"release:{order.id}": "review"}
    with w.svc.transaction() as tx:  # the operator's confirmation is the compliance decision
        assert w.svc.confirm(tx, order.id).state is S.COMPLETED
    assert w.available(m) > 0


def test_a_failed_flush_keeps_the_decisions_for_the_next(
    world: World, risk: EscrowRisk, tmp_path: Path
) -> None:
    w = world
    listed = w.merchant("Silverlake Shipping Holding GmbH")
    b = w.buyer(listed)
    w.fund(b, 5_000)
    order, token = w.order(listed, b)
    with pytest.raises(RiskDeclined), w.svc.transaction() as tx:
        w.svc.pay_from_wallet(tx, token, w.bs(token))
    # The database is unreachable when the worker flushes (a real engine on a path that
    # cannot be opened): nothing is recorded and nothing is forgotten.
    healthy = risk.engine.database
    risk.engine.database = Database(sa.create_engine(f"sqlite:///{tmp_path}/missing/db.sqlite3"))
    with pytest.raises(sa.exc.OperationalError):
        risk.flush()
    risk.engine.database = healthy
    assert _count(w, "aml_decisions") == 0
    assert risk.flush() == 1
    with w.database.read() as conn:
        recorded = conn.execute(sa.text("SELECT outcome, event_id FROM aml_decisions")).one()
    assert tuple(recorded) == ("block", f"payment:{order.id}")
    assert risk.flush() == 0


# --- refunds: reported to the rules, never refused -----------------------------------------
# Default rule configuration throughout (what `paykeep serve` runs): refund_abuse fires on a
# buyer's 3rd refund within 30 days when the refunds add up to >= 50 % of what they paid.


def _refund_decisions(w: World) -> dict[str, tuple[str, int, str, str]]:
    """event id -> (outcome, amount, payer, payee) of every refund decision."""
    with w.database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT event_id, outcome, amount_minor, payer_id, payee_id FROM aml_decisions "
                "WHERE kind = 'refund'"
            )
        ).all()
    return {str(r[0]): (str(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows}


def _alerts(w: World, event_id: str) -> list[tuple[str, str, str]]:
    """(rule, party, figures JSON) of the live alerts of one decision."""
    with w.database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.rule, a.party_id, a.figures FROM aml_alerts a JOIN aml_decisions d "
                "ON d.id = a.decision_id WHERE d.event_id = :e AND NOT a.shadow ORDER BY a.id"
            ),
            {"e": event_id},
        ).all()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _buyer_history(w: World, buyer_id: str) -> list[tuple[str, str, int]]:
    """(kind, direction, amount) of the buyer's rule history, in order."""
    with w.database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT kind, direction, amount_minor FROM aml_party_events "
                "WHERE party_id = :p ORDER BY at_ns, id"
            ),
            {"p": f"buyer:{buyer_id}"},
        ).all()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def _cases(w: World) -> list[tuple[int, str, str, str]]:
    """(id, risk, subjects JSON, source event) of every case."""
    with w.database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, risk, subject_party_ids, source_event_id FROM aml_cases ORDER BY id"
            )
        ).all()
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def _merchant_refund(w: World, order_id: str, amount: int | None = None) -> str:
    with w.svc.transaction() as tx:
        _order, refund = w.svc.refund(tx, None, order_id, amount, "customer asked")
    return refund.id


def test_serial_refunds_open_a_case_on_the_crossing_refund_and_the_money_still_goes_back(
    world: World, risk: EscrowRisk
) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    orders = [w.paid_order(m, b, 2_500)[0] for _ in range(4)]  # paid 100.00 in all
    assert [k for k, d, _ in _buyer_history(w, b.id)] == ["payment"] * 4  # the buyer pays OUT
    assert {d for _k, d, _a in _buyer_history(w, b.id)} == {"out"}
    refund_ids = []
    for n, order in enumerate(orders[:3], start=1):
        w.clock.advance(3_600)
        refund_ids.append(_merchant_refund(w, order.id))
        event_id = f"refund:{refund_ids[-1]}"
        decided = _refund_decisions(w)[event_id]
        assert decided[1:] == (2_500, f"merchant:{m.id}", f"buyer:{b.id}")
        if n < 3:  # 1 and 2 refunds: under refunds_min, whatever the ratio
            assert decided[0] == "allow" and _alerts(w, event_id) == []
            assert _cases(w) == []
        # Each refund returned the money, whatever the rules said.
        assert w.get_order(order.id).state is S.REFUNDED
        assert w.wallet(b) == (2_500 * n, 2_500 * (4 - n))
    # The 3rd refund (75.00 of 100.00 paid, >= 50 %) crosses the threshold: review, a case
    # about the buyer, and the refund went ahead all the same.
    crossing = f"refund:{refund_ids[2]}"
    assert _refund_decisions(w)[crossing][0] == "review"
    ((rule, party, figures),) = _alerts(w, crossing)
    assert (rule, party) == ("refund_abuse", f"buyer:{b.id}")
    assert '"refunds":3' in figures and '"refunded_minor":7500' in figures
    assert '"paid_minor":10000' in figures
    ((case_id, case_risk, subjects, source),) = _cases(w)
    assert (case_risk, source) == ("medium", crossing) and f"buyer:{b.id}" in subjects
    assert [(k, d) for k, d, _ in _buyer_history(w, b.id)][-3:] == [("refund", "in")] * 3
    # A 4th refund joins the open case (one case to work on), the money goes back too.
    w.clock.advance(3_600)
    fourth = f"refund:{_merchant_refund(w, orders[3].id)}"
    assert _refund_decisions(w)[fourth][0] == "review"
    assert len(_cases(w)) == 1 and w.wallet(b) == (10_000, 0)
    with w.database.read() as conn:
        refs = {
            r[0]
            for r in conn.execute(
                sa.text("SELECT ref FROM aml_case_evidence WHERE case_id = :c AND kind = :k"),
                {"c": case_id, "k": "transaction"},
            )
        }
    assert refs == {crossing, fourth}


def test_refunds_worth_little_of_what_was_paid_raise_nothing(
    world: World, risk: EscrowRisk
) -> None:
    """The ratio side of the threshold: three small partial refunds of large payments."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    orders = [w.paid_order(m, b, 10_000)[0] for _ in range(3)]  # paid 300.00
    for order in orders:
        w.clock.advance(60)
        _merchant_refund(w, order.id, 1_000)  # 30.00 back in all: 10 % < 50 %
    decided = _refund_decisions(w)
    assert len(decided) == 3 and {d[0] for d in decided.values()} == {"allow"}
    assert _cases(w) == []
    assert w.wallet(b)[0] == 3_000


def _paid_claim(w: World, amount: int = 2_500) -> tuple[str, str, str, str, str]:
    """(merchant, buyer, order, token, refund request) of a paid order the buyer claims."""
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b, amount)
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "never arrived")
    return m.id, b.id, order.id, token, refund.id


@pytest.mark.parametrize("path", ["full", "partial", "agreed", "dispute_split", "timer"])
def test_every_path_that_returns_escrow_money_reports_a_refund(
    world: World, risk: EscrowRisk, path: str
) -> None:
    """Each path: one REFUND decision, merchant -> buyer, for exactly what went back to the
    buyer, named after what it answers to; the buyer's history holds it as money IN."""
    w = world
    if path == "timer":
        m = w.merchant(timers=TimerSettings(ship_by_s=60))
        b = w.buyer(m)
        order = w.paid_order(m, b, 2_500)[0]
        w.clock.advance(61)
        assert w.svc.run_timers() == {"refund_unshipped": 1}
        merchant_id, buyer_id, order_id = m.id, b.id, order.id
        expected = {f"refund:{order.id}:timer": 2_500}
    elif path in ("full", "partial"):
        m = w.merchant()
        b = w.buyer(m)
        order = w.paid_order(m, b, 2_500)[0]
        refund_id = _merchant_refund(w, order.id, None if path == "full" else 1_000)
        merchant_id, buyer_id, order_id = m.id, b.id, order.id
        expected = {f"refund:{refund_id}": 2_500 if path == "full" else 1_000}
    elif path == "agreed":
        merchant_id, buyer_id, order_id, _token, refund_id = _paid_claim(w)
        with w.svc.transaction() as tx:
            w.svc.refund_action(tx, refund_id, RefundAction.AGREE, scope=merchant_id)
        expected = {f"refund:{refund_id}": 2_500}
    else:
        merchant_id, buyer_id, order_id, token, refund_id = _paid_claim(w, 2_501)
        with w.svc.transaction() as tx:
            w.svc.refund_action(tx, refund_id, RefundAction.REFUSE, scope=merchant_id)
        with w.svc.transaction() as tx:
            w.svc.refund_action(tx, refund_id, RefundAction.ESCALATE, token=token)
        with w.svc.reading() as tx:
            (dispute_id,) = [d.id for d in tx.repo.disputes({"order_id": order_id}, 5, None)]
        with w.svc.transaction() as tx:
            decided = w.svc.decide_dispute(tx, dispute_id, 6_000, "ops:bob", "split")
        # The buyer's share of 25.01 at 60 %, exactly as the split allocated it.
        assert decided.buyer_share_minor is not None and decided.buyer_share_minor > 0
        expected = {f"refund:{refund_id}": decided.buyer_share_minor}
    merchant, buyer = f"merchant:{merchant_id}", f"buyer:{buyer_id}"
    assert {
        event_id: (amount, payer, payee)
        for event_id, (_outcome, amount, payer, payee) in _refund_decisions(w).items()
    } == {event_id: (amount, merchant, buyer) for event_id, amount in expected.items()}
    (amount,) = expected.values()
    assert _buyer_history(w, buyer_id)[-1] == ("refund", "in", amount)
    # The wallet received exactly that (wallet-paid orders keep the money in the wallet).
    assert w.get_order(order_id).refunded_minor == amount
    with w.svc.reading() as tx:
        (wallet,) = w.svc.buyer_balances(tx, None, buyer_id)
    assert wallet.available_minor == amount


def test_a_refund_at_block_level_still_goes_back_and_raises_a_high_risk_case(
    world: World, risk: EscrowRisk
) -> None:
    """Policy: a refund is never refused. An operator who scores refund_abuse at block level
    (9,500 >= 9,000) gets a high-risk case; the decision says review (the money moved)."""
    w = world
    RulesService(w.database, w.clock).set_config(
        "refund_abuse", {"refunds_min": 1, "score_bp": 9_500}, actor="compliance:alice"
    )
    m = w.merchant()
    b = w.buyer(m)
    order = w.paid_order(m, b, 2_500)[0]
    event_id = f"refund:{_merchant_refund(w, order.id)}"
    assert _refund_decisions(w)[event_id][0] == "review"
    assert [a[0] for a in _alerts(w, event_id)] == ["refund_abuse"]
    ((_case, case_risk, _subjects, source),) = _cases(w)
    assert (case_risk, source) == ("high", event_id)
    assert w.get_order(order.id).state is S.REFUNDED and w.wallet(b) == (2_500, 0)
    assert _buyer_history(w, b.id)[-1] == ("refund", "in", 2_500)  # it moved: it counts
    assert risk.flush() == 0  # committed with the refund: nothing left to record


def test_a_replayed_refund_report_is_not_counted_twice(world: World, risk: EscrowRisk) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    orders = [w.paid_order(m, b, 2_500)[0] for _ in range(4)]
    refund_ids = [_merchant_refund(w, o.id) for o in orders[:3]]
    crossing = f"refund:{refund_ids[2]}"
    with w.svc.reading() as tx:
        order = w.svc.order(tx, None, orders[2].id)
        context = {
            **w.svc._risk_context(tx, order),
            "amount_minor": 2_500,
            "event_id": crossing,
        }
    tables = ("aml_decisions", "aml_alerts", "aml_party_events", "aml_cases", "aml_case_evidence")
    before = {t: _count(w, t) for t in tables}
    # The same report again, at once (same body) and later (another clock reading): the
    # recorded answer, nothing written.
    for _ in range(2):
        with w.database.write() as conn:
            assert risk.decide(conn, "refund", context) == "review"
        w.clock.advance(30)
    assert {t: _count(w, t) for t in tables} == before
    # The next refund counts 4 refunds, not 5 or 6.
    fourth = f"refund:{_merchant_refund(w, orders[3].id)}"
    ((_rule, _party, figures),) = _alerts(w, fourth)
    assert '"refunds":4' in figures and '"refunded_minor":10000' in figures


def test_a_refund_whose_release_is_held_reports_nothing(world: World, risk: EscrowRisk) -> None:
    """A partial refund also releases the rest to the merchant: when that release is held for
    review the whole transaction rolls back — no money returned, so no refund in the buyer's
    history and none kept for the worker's flush (which records the release's decision). The
    full refund that follows releases nothing: it goes back, and is the one refund counted."""
    w = world
    rules = RulesService(w.database, w.clock)
    rules.set_config(
        "new_account_high_value",
        {"amount_min_minor": 2_000, "age_max_s": 86_400, "score_bp": 6_000},
        actor="compliance:alice",
    )
    # Every refund reviewed: a refund decision kept for the flush would be recorded there.
    rules.set_config("refund_abuse", {"refunds_min": 1}, actor="compliance:alice")
    m = w.merchant()
    b = w.buyer(m)
    order = w.paid_order(m, b, 2_500)[0]
    with pytest.raises(IllegalTransition), w.svc.transaction() as tx:
        w.svc.refund(tx, None, order.id, 1_000)
    assert risk.flush() == 1
    assert _refund_decisions(w) == {}
    assert [k for k, _d, _a in _buyer_history(w, b.id)] == ["payment", "release"]
    assert w.get_order(order.id).state is S.AWAITING_SHIPMENT and w.wallet(b) == (0, 2_500)
    w.clock.advance(60)
    full = f"refund:{_merchant_refund(w, order.id)}"
    assert _refund_decisions(w) == {full: ("review", 2_500, f"merchant:{m.id}", f"buyer:{b.id}")}
    (figures,) = [f for rule, _party, f in _alerts(w, full) if rule == "refund_abuse"]
    assert '"refunds":1' in figures
    assert w.get_order(order.id).state is S.REFUNDED and w.wallet(b) == (2_500, 0)


def test_a_decision_that_cannot_be_recorded_is_backed_off_then_parked_not_a_wall(
    world: World, risk: EscrowRisk
) -> None:
    """One rolled-back decision whose record the database refuses (a trigger, on both
    databases) no longer fails every flush — which ran first in the escrow pass, so the
    timers, card refunds and top-ups behind it stalled too: the others are recorded, it is
    kept and tried again after each backoff, then parked and dropped from the queue."""
    from paykeep import limits
    from paykeep.aml.rules.escrow import FLUSH_ITEMS
    from tests.support import refuse_row

    w = world
    orders = []
    for i in range(3):
        listed = w.merchant("Silverlake Shipping Holding GmbH")
        b = w.buyer(listed, email=f"s{i}@example.com")
        w.fund(b, 5_000)
        order, token = w.order(listed, b)
        with pytest.raises(RiskDeclined), w.svc.transaction() as tx:
            w.svc.pay_from_wallet(tx, token, w.bs(token))
        orders.append(order)
    poisoned = f"payment:{orders[0].id}"  # the first in the queue
    refuse_row(w.database, "aml_decisions", "event_id", poisoned, on=True)
    try:
        assert risk.flush() == 2
        with w.database.read() as conn:
            recorded = set(conn.execute(sa.text("SELECT event_id FROM aml_decisions")).scalars())
        assert recorded == {f"payment:{o.id}" for o in orders[1:]}
        for failures, wait_s in enumerate(limits.WORKER_ITEM_BACKOFF_S, start=1):
            (failure,) = risk._quarantine.failures(FLUSH_ITEMS)
            assert (failure.item_id, failure.failures, failure.parked) == (
                poisoned, failures, False,
            )  # fmt: skip
            assert poisoned in risk._pending  # kept for a later flush
            w.clock.advance(wait_s - 1)
            assert risk.flush() == 0  # backed off
            assert risk._quarantine.failures(FLUSH_ITEMS) == [failure]
            w.clock.advance(1)
            assert risk.flush() == 0
        (failure,) = risk._quarantine.failures(FLUSH_ITEMS)
        assert (failure.failures, failure.parked) == (limits.WORKER_ITEM_FAILURES_MAX, True)
        assert poisoned not in risk._pending  # dropped: parked, for an operator
    finally:
        refuse_row(w.database, "aml_decisions", "event_id", poisoned, on=False)
    assert _count(w, "aml_decisions") == 2
