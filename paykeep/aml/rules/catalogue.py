"""The registered rules: pure functions of ``(RuleInput, params)`` returning findings.

Each rule states exactly when it fires; the table tests pin every edge. Conventions:
- a window of ``window_s`` seconds ending at the event covers ``at_ns - window < t <= at_ns``
  (an entry exactly ``window_s`` old is out), and the event itself counts;
- ``*_max`` parameters are the largest allowed value (fires when exceeded), ``*_min`` the
  smallest value that fires (fires when reached);
- amounts compare only in the configured ``currency`` (minor units of that currency); events in
  another currency are not summed with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from paykeep.aml.rules import limits
from paykeep.aml.rules.model import (
    NS_PER_S,
    SCORE_MAX_BP,
    Direction,
    EventKind,
    Finding,
    HistoryEntry,
    HistoryNeed,
    MoneyEvent,
    Params,
    ParamSpec,
    Party,
    RuleInput,
    RuleSpec,
    in_window,
)
from paykeep.money import Money


def _int(params: Params, name: str) -> int:
    value = params[name]
    assert isinstance(value, int), (name, value)
    return value


def _str(params: Params, name: str) -> str:
    value = params[name]
    assert isinstance(value, str), (name, value)
    return value


def _window(data: RuleInput, party_id: str, params: Params) -> Sequence[HistoryEntry]:
    end = data.event.at_ns
    return in_window(data.entries(party_id), end - _int(params, "window_s") * NS_PER_S + 1, end)


def _need(
    party: Party | None,
    params: Params,
    kinds: frozenset[EventKind],
    *,
    firsts_only: bool = False,
) -> list[HistoryNeed]:
    if party is None:
        return []
    return [HistoryNeed(party.party_id, _int(params, "window_s"), kinds, firsts_only)]


def _fmt(amount_minor: int, currency: str) -> str:
    return str(Money(amount_minor, currency))


def _window_param(default_s: int) -> ParamSpec:
    return ParamSpec(
        "window_s", default_s, "look-back window in seconds", 1, limits.HISTORY_WINDOW_MAX_S
    )


def _score_param(default_bp: int) -> ParamSpec:
    return ParamSpec("score_bp", default_bp, "score of an alert, basis points", 0, SCORE_MAX_BP)


CURRENCY_PARAM: Final = ParamSpec(
    "currency", "EUR", "currency of the amount thresholds", currency=True
)

# --- sanctions -----------------------------------------------------------------------------


def sanctions(data: RuleInput, params: Params) -> list[Finding]:
    """Fires for each party whose best sanctions hit scores at least ``min_score_bp``; the
    alert's score is the hit's."""
    findings = []
    floor = _int(params, "min_score_bp")
    for party in data.event.parties:
        hits = data.sanctions.get(party.party_id, ())
        if not hits:
            continue
        best = max(hits, key=lambda h: h.score)
        score_bp = min(SCORE_MAX_BP, max(0, round(best.score * SCORE_MAX_BP)))
        if score_bp < floor:
            continue
        findings.append(
            Finding(
                party.party_id,
                score_bp,
                f"party {party.party_id} matches sanctions entry {best.entity_id} "
                f"(score {score_bp / SCORE_MAX_BP:.2f} >= {floor / SCORE_MAX_BP:.2f}): "
                f"{best.explanation}",
                {
                    "entity_id": best.entity_id,
                    "hit_score_bp": score_bp,
                    "min_score_bp": floor,
                    "hits": len(hits),
                },
            )
        )
    return findings


# --- velocity ------------------------------------------------------------------------------

VELOCITY_KINDS: Final = frozenset(
    {EventKind.PAYMENT, EventKind.TOP_UP, EventKind.PAYOUT, EventKind.REFUND}
)


#: Kinds whose judged party is the payee: the one whose wallet is being filled (a top-up from
#: outside; a refund, the buyer's own money back from escrow). A refund's payer is the merchant,
#: whose window holds every payment it received: judging it would send a busy shop's every
#: refund to review for its sales, which are ``fan_in``'s to judge.
VELOCITY_PAYEE_KINDS: Final = frozenset({EventKind.TOP_UP, EventKind.REFUND})


def _velocity_mover(event: MoneyEvent) -> Party | None:
    return event.payee if event.kind in VELOCITY_PAYEE_KINDS else event.payer


def velocity_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    if event.kind not in VELOCITY_KINDS:
        return []
    return _need(_velocity_mover(event), params, VELOCITY_KINDS)


def velocity(data: RuleInput, params: Params) -> list[Finding]:
    """For the party whose money moves (the payer; the payee of a top-up or a refund, whose
    wallet is being filled): more than ``count_max`` money events, or more than
    ``amount_max_minor`` in ``currency``, within the window (payments, top-ups, payouts,
    refunds; releases settle a payment already counted and are left out). A merchant
    *receiving* many payments is its business, not a typology: its inflows are ``fan_in``'s
    to judge."""
    event = data.event
    if event.kind not in VELOCITY_KINDS:
        return []
    currency = _str(params, "currency")
    count_max = _int(params, "count_max")
    amount_max = _int(params, "amount_max_minor")
    findings = []
    mover = _velocity_mover(event)
    for party in (mover,) if mover is not None else ():
        entries = [e for e in _window(data, party.party_id, params) if e.kind in VELOCITY_KINDS]
        count = len(entries) + 1
        amount = sum(e.amount_minor for e in entries if e.currency == currency)
        if event.amount.currency == currency:
            amount += event.amount.amount_minor
        reasons = []
        if count > count_max:
            reasons.append(f"{count} events > {count_max}")
        if amount > amount_max:
            reasons.append(f"{_fmt(amount, currency)} > {_fmt(amount_max, currency)}")
        if reasons:
            findings.append(
                Finding(
                    party.party_id,
                    _int(params, "score_bp"),
                    f"party {party.party_id}: {' and '.join(reasons)} within "
                    f"{_int(params, 'window_s')} s",
                    {
                        "count": count,
                        "count_max": count_max,
                        "amount_minor": amount,
                        "amount_max_minor": amount_max,
                        "currency": currency,
                        "window_s": _int(params, "window_s"),
                    },
                )
            )
    return findings


# --- structuring ---------------------------------------------------------------------------

STRUCTURING_KINDS: Final = frozenset({EventKind.TOP_UP, EventKind.PAYOUT, EventKind.PAYMENT})


def _in_band(amount_minor: int, threshold: int, band_bp: int) -> bool:
    # threshold * (1 - band) <= amount < threshold, in integers.
    return amount_minor * SCORE_MAX_BP >= threshold * (SCORE_MAX_BP - band_bp) and (
        amount_minor < threshold
    )


def structuring_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    if event.kind not in STRUCTURING_KINDS or event.amount.currency != _str(params, "currency"):
        return []
    threshold = _int(params, "reporting_threshold_minor")
    if not _in_band(event.amount.amount_minor, threshold, _int(params, "band_bp")):
        return []
    subject = event.payee if event.kind is EventKind.TOP_UP else event.payer
    return _need(subject, params, STRUCTURING_KINDS)


def structuring(data: RuleInput, params: Params) -> list[Finding]:
    """The subject's ``count_min``-th amount within ``band_bp`` just below the reporting
    threshold in the window (the current amount must itself be in the band). The subject is
    the payer of a payment or payout, the payee of a top-up; only the subject's events in the
    same direction count."""
    event = data.event
    currency = _str(params, "currency")
    threshold = _int(params, "reporting_threshold_minor")
    band_bp = _int(params, "band_bp")
    if event.kind not in STRUCTURING_KINDS or event.amount.currency != currency:
        return []
    if not _in_band(event.amount.amount_minor, threshold, band_bp):
        return []
    subject: Party | None
    if event.kind is EventKind.TOP_UP:
        subject, direction = event.payee, Direction.IN
    else:
        subject, direction = event.payer, Direction.OUT
    assert subject is not None
    count = 1 + sum(
        1
        for e in _window(data, subject.party_id, params)
        if e.kind in STRUCTURING_KINDS
        and e.direction is direction
        and e.currency == currency
        and _in_band(e.amount_minor, threshold, band_bp)
    )
    count_min = _int(params, "count_min")
    if count < count_min:
        return []
    return [
        Finding(
            subject.party_id,
            _int(params, "score_bp"),
            f"party {subject.party_id}: {count} amounts within {band_bp / 100:g}% below the "
            f"reporting threshold {_fmt(threshold, currency)} in {_int(params, 'window_s')} s "
            f"(>= {count_min})",
            {
                "count": count,
                "count_min": count_min,
                "reporting_threshold_minor": threshold,
                "band_bp": band_bp,
                "currency": currency,
                "window_s": _int(params, "window_s"),
            },
        )
    ]


# --- rapid pass-through --------------------------------------------------------------------

INFLOW_KINDS: Final = frozenset({EventKind.TOP_UP, EventKind.RELEASE, EventKind.REFUND})
OUTFLOW_KINDS: Final = frozenset({EventKind.PAYMENT, EventKind.PAYOUT})


def pass_through_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    if event.kind not in OUTFLOW_KINDS or event.amount.currency != _str(params, "currency"):
        return []
    return _need(event.payer, params, INFLOW_KINDS | OUTFLOW_KINDS)


def pass_through(data: RuleInput, params: Params) -> list[Finding]:
    """Money out of the payer (payment or payout) when, within the window, at least
    ``inflow_min_minor`` came in (top-ups, releases, refunds) and the money out, this event
    included, is at least ``out_ratio_bp`` of it: little is left behind."""
    event = data.event
    currency = _str(params, "currency")
    if event.kind not in OUTFLOW_KINDS or event.amount.currency != currency:
        return []
    payer = event.payer
    assert payer is not None
    entries = _window(data, payer.party_id, params)
    inflow = sum(
        e.amount_minor
        for e in entries
        if e.direction is Direction.IN and e.kind in INFLOW_KINDS and e.currency == currency
    )
    outflow = event.amount.amount_minor + sum(
        e.amount_minor
        for e in entries
        if e.direction is Direction.OUT and e.kind in OUTFLOW_KINDS and e.currency == currency
    )
    inflow_min = _int(params, "inflow_min_minor")
    ratio_bp = _int(params, "out_ratio_bp")
    if inflow < inflow_min or outflow * SCORE_MAX_BP < inflow * ratio_bp:
        return []
    return [
        Finding(
            payer.party_id,
            _int(params, "score_bp"),
            f"party {payer.party_id}: {_fmt(inflow, currency)} in and {_fmt(outflow, currency)} "
            f"out within {_int(params, 'window_s')} s (out >= {ratio_bp / 100:g}% of in)",
            {
                "inflow_minor": inflow,
                "outflow_minor": outflow,
                "retained_minor": inflow - outflow,
                "inflow_min_minor": inflow_min,
                "out_ratio_bp": ratio_bp,
                "currency": currency,
                "window_s": _int(params, "window_s"),
            },
        )
    ]


# --- new account, high value ---------------------------------------------------------------


def new_account_high_value(data: RuleInput, params: Params) -> list[Finding]:
    """A party whose account is younger than ``age_max_s`` takes part in a money event of at
    least ``amount_min_minor`` (card authorisations excluded: no money moves yet)."""
    event = data.event
    currency = _str(params, "currency")
    amount_min = _int(params, "amount_min_minor")
    age_max_s = _int(params, "age_max_s")
    if event.kind is EventKind.CARD_AUTHORISATION or event.amount.currency != currency:
        return []
    if event.amount.amount_minor < amount_min:
        return []
    findings = []
    for party in event.parties:
        if party.opened_at_ns is None:
            continue
        age_s = max(0, event.at_ns - party.opened_at_ns) // NS_PER_S
        if age_s >= age_max_s:
            continue
        findings.append(
            Finding(
                party.party_id,
                _int(params, "score_bp"),
                f"party {party.party_id}: account {age_s} s old (< {age_max_s} s) moves "
                f"{event.amount} (>= {_fmt(amount_min, currency)})",
                {
                    "age_s": age_s,
                    "age_max_s": age_max_s,
                    "amount_minor": event.amount.amount_minor,
                    "amount_min_minor": amount_min,
                    "currency": currency,
                },
            )
        )
    return findings


# --- fan-in of new buyers ------------------------------------------------------------------


def _is_new(at_ns: int, opened_at_ns: int | None, new_age_s: int) -> bool:
    return opened_at_ns is not None and max(0, at_ns - opened_at_ns) < new_age_s * NS_PER_S


def fan_in_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    if event.kind is not EventKind.PAYMENT:
        return []
    # Which buyers paid while new: for one opening time, an account is youngest at its
    # earliest payment in the window, so the firsts hold every buyer the rule counts.
    return _need(event.payee, params, frozenset({EventKind.PAYMENT}), firsts_only=True)


def fan_in(data: RuleInput, params: Params) -> list[Finding]:
    """A merchant paid, within the window, by ``distinct_min`` distinct buyers whose accounts
    were younger than ``new_age_s`` when they paid (this payment included) — fired by the
    payment of the buyer that brings the count to ``distinct_min``, and again each time it
    doubles (2×, 4×, … ``distinct_min``).

    Edge-triggered, unlike the payer's rules: the pattern is the merchant's, not this buyer's
    payment, and a popular merchant would otherwise send every later payment of the day to
    review, burying its one case under identical alerts. Reaching the threshold again after
    the window slid below it fires again; a growing pattern escalates at each doubling."""
    event = data.event
    if event.kind is not EventKind.PAYMENT:
        return []
    payee, payer = event.payee, event.payer
    assert payee is not None and payer is not None
    new_age_s = _int(params, "new_age_s")
    buyers = {
        e.counterparty_id
        for e in _window(data, payee.party_id, params)
        if e.kind is EventKind.PAYMENT
        and e.direction is Direction.IN
        and e.counterparty_id is not None
        and _is_new(e.at_ns, e.counterparty_opened_at_ns, new_age_s)
    }
    before = len(buyers)
    if _is_new(event.at_ns, payer.opened_at_ns, new_age_s):
        buyers.add(payer.party_id)
    distinct_min = _int(params, "distinct_min")
    if len(buyers) < distinct_min or len(buyers) == before:
        return []  # under the threshold, or this payment adds no new buyer
    multiple, remainder = divmod(len(buyers), distinct_min)
    if remainder or multiple & (multiple - 1):
        return []  # between the threshold's doublings: that level was reported already
    return [
        Finding(
            payee.party_id,
            _int(params, "score_bp"),
            f"merchant {payee.party_id}: paid by {len(buyers)} distinct new buyers "
            f"(>= {distinct_min}) within {_int(params, 'window_s')} s",
            {
                "distinct_new_buyers": len(buyers),
                "distinct_min": distinct_min,
                "new_age_s": new_age_s,
                "window_s": _int(params, "window_s"),
            },
        )
    ]


# --- card testing --------------------------------------------------------------------------


def _small_decline(
    kind: EventKind,
    approved: bool | None,
    amount: int,
    currency: str,
    small_max: int,
    want_currency: str,
) -> bool:
    return (
        kind is EventKind.CARD_AUTHORISATION
        and approved is False
        and currency == want_currency
        and amount <= small_max
    )


def card_testing_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    kinds = frozenset({EventKind.CARD_AUTHORISATION})
    return [n for party in event.parties for n in _need(party, params, kinds)]


def card_testing(data: RuleInput, params: Params) -> list[Finding]:
    """Per party (card holder or merchant): at least ``declines_min`` declined card
    authorisations of at most ``small_max_minor`` within the window, this event included."""
    event = data.event
    currency = _str(params, "currency")
    small_max = _int(params, "small_max_minor")
    declines_min = _int(params, "declines_min")
    this_one = _small_decline(
        event.kind,
        event.card_approved,
        event.amount.amount_minor,
        event.amount.currency,
        small_max,
        currency,
    )
    findings = []
    for party in event.parties:
        declines = int(this_one) + sum(
            1
            for e in _window(data, party.party_id, params)
            if _small_decline(
                e.kind, e.card_approved, e.amount_minor, e.currency, small_max, currency
            )
        )
        if declines < declines_min:
            continue
        findings.append(
            Finding(
                party.party_id,
                _int(params, "score_bp"),
                f"party {party.party_id}: {declines} declined authorisations of at most "
                f"{_fmt(small_max, currency)} within {_int(params, 'window_s')} s "
                f"(>= {declines_min})",
                {
                    "declines": declines,
                    "declines_min": declines_min,
                    "small_max_minor": small_max,
                    "currency": currency,
                    "window_s": _int(params, "window_s"),
                },
            )
        )
    return findings


# --- refund abuse --------------------------------------------------------------------------


def refund_abuse_needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
    if event.kind is not EventKind.REFUND or event.amount.currency != _str(params, "currency"):
        return []
    return _need(event.payee, params, frozenset({EventKind.REFUND, EventKind.PAYMENT}))


def refund_abuse(data: RuleInput, params: Params) -> list[Finding]:
    """A refund to a buyer who, within the window, received at least ``refunds_min`` refunds
    (this one included) adding up to at least ``ratio_bp`` of what they paid."""
    event = data.event
    currency = _str(params, "currency")
    if event.kind is not EventKind.REFUND or event.amount.currency != currency:
        return []
    buyer = event.payee
    assert buyer is not None
    entries = _window(data, buyer.party_id, params)
    refunds = [
        e
        for e in entries
        if e.kind is EventKind.REFUND and e.direction is Direction.IN and e.currency == currency
    ]
    count = len(refunds) + 1
    refunded = event.amount.amount_minor + sum(e.amount_minor for e in refunds)
    paid = sum(
        e.amount_minor
        for e in entries
        if e.kind is EventKind.PAYMENT and e.direction is Direction.OUT and e.currency == currency
    )
    refunds_min = _int(params, "refunds_min")
    ratio_bp = _int(params, "ratio_bp")
    if count < refunds_min or refunded * SCORE_MAX_BP < paid * ratio_bp:
        return []
    return [
        Finding(
            buyer.party_id,
            _int(params, "score_bp"),
            f"buyer {buyer.party_id}: {count} refunds (>= {refunds_min}) worth "
            f"{_fmt(refunded, currency)} of {_fmt(paid, currency)} paid "
            f"(>= {ratio_bp / 100:g}%) within {_int(params, 'window_s')} s",
            {
                "refunds": count,
                "refunds_min": refunds_min,
                "refunded_minor": refunded,
                "paid_minor": paid,
                "ratio_bp": ratio_bp,
                "currency": currency,
                "window_s": _int(params, "window_s"),
            },
        )
    ]


DAY_S: Final = 24 * 3600

RULES: Final[Mapping[str, RuleSpec]] = {
    spec.name: spec
    for spec in (
        RuleSpec(
            "sanctions",
            "A party's name matches a sanctions list entry.",
            (ParamSpec("min_score_bp", 8_000, "smallest hit score that alerts", 0, SCORE_MAX_BP),),
            sanctions,
            needs_sanctions=True,
        ),
        RuleSpec(
            "velocity",
            "Too many money events, or too much money, per party within a window.",
            (
                _window_param(3_600),
                ParamSpec("count_max", 20, "most events allowed in the window", 1, 1_000_000),
                ParamSpec("amount_max_minor", 1_000_000, "most money allowed in the window", 1),
                CURRENCY_PARAM,
                _score_param(6_000),
            ),
            velocity,
            needs=velocity_needs,
        ),
        RuleSpec(
            "structuring",
            "Repeated amounts just below the reporting threshold.",
            (
                _window_param(7 * DAY_S),
                ParamSpec("reporting_threshold_minor", 1_000_000, "the reporting threshold", 1),
                ParamSpec(
                    "band_bp", 1_000, "width of the band below it, basis points", 1, SCORE_MAX_BP
                ),
                ParamSpec("count_min", 3, "amounts in the band that alert", 1, 1_000_000),
                CURRENCY_PARAM,
                _score_param(7_000),
            ),
            structuring,
            needs=structuring_needs,
        ),
        RuleSpec(
            "pass_through",
            "Money in and straight out again within hours, little left behind.",
            (
                _window_param(6 * 3_600),
                ParamSpec("inflow_min_minor", 100_000, "smallest inflow considered", 1),
                ParamSpec(
                    "out_ratio_bp",
                    9_000,
                    "share of the inflow paid out that alerts",
                    1,
                    100 * SCORE_MAX_BP,
                ),
                CURRENCY_PARAM,
                _score_param(7_000),
            ),
            pass_through,
            needs=pass_through_needs,
        ),
        RuleSpec(
            "new_account_high_value",
            "A recently opened account moves a large amount.",
            (
                ParamSpec(
                    "age_max_s",
                    7 * DAY_S,
                    "accounts younger than this are new",
                    1,
                    10 * 365 * DAY_S,
                ),
                ParamSpec("amount_min_minor", 200_000, "smallest amount that alerts", 1),
                CURRENCY_PARAM,
                _score_param(5_500),
            ),
            new_account_high_value,
        ),
        RuleSpec(
            "fan_in",
            "One merchant paid by many new buyers.",
            (
                _window_param(DAY_S),
                ParamSpec(
                    "new_age_s", 7 * DAY_S, "buyers younger than this are new", 1, 10 * 365 * DAY_S
                ),
                ParamSpec("distinct_min", 10, "distinct new buyers that alert", 1, 1_000_000),
                _score_param(6_500),
            ),
            fan_in,
            needs=fan_in_needs,
        ),
        RuleSpec(
            "card_testing",
            "Bursts of small declined card authorisations.",
            (
                _window_param(600),
                ParamSpec("small_max_minor", 500, "largest amount counted as small", 1),
                ParamSpec("declines_min", 5, "declines that alert", 1, 1_000_000),
                CURRENCY_PARAM,
                _score_param(9_500),
            ),
            card_testing,
            needs=card_testing_needs,
        ),
        RuleSpec(
            "refund_abuse",
            "A buyer refunded again and again for much of what they paid.",
            (
                _window_param(30 * DAY_S),
                ParamSpec("refunds_min", 3, "refunds that alert", 1, 1_000_000),
                ParamSpec(
                    "ratio_bp",
                    5_000,
                    "refunded share of payments that alerts",
                    0,
                    100 * SCORE_MAX_BP,
                ),
                CURRENCY_PARAM,
                _score_param(6_000),
            ),
            refund_abuse,
            needs=refund_abuse_needs,
        ),
    )
}
assert len(RULES) <= limits.RULES_MAX
assert all(len(name) <= limits.RULE_NAME_LENGTH_MAX for name in RULES)
