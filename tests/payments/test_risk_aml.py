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
