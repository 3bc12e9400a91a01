"""Writing a payout batch as a pain.001 file (``sepaxml``), checked against the XSD.

``sepaxml`` builds the document (pain.001.001.03 by default, .09 on request). Three things it
decides itself are then set from our records, so that the file is reproducible and its ids are
ours: the message id (``GrpHdr/MsgId``), the creation time (``GrpHdr/CreDtTm``) and the
payment-information id; batch booking is turned off (``BtchBookg`` false) so the bank books,
and its statement shows, one line per payout, each carrying the payout's end-to-end id.
The result must validate against the ISO 20022 XSD shipped in ``schemas/`` or nothing leaves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from paykeep.gateway.payouts.errors import PayoutFileInvalid
from paykeep.gateway.payouts.model import SCHEMAS, Debtor

SCHEMAS_DIR = Path(__file__).parent / "schemas"
NAMESPACE_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@dataclass(frozen=True, slots=True)
class FileLine:
    end_to_end_id: str
    amount_minor: int
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None
    remittance: str


@lru_cache(maxsize=4)
def xsd(schema: str) -> etree.XMLSchema:
    if schema not in SCHEMAS:
        raise PayoutFileInvalid(f"unsupported pain.001 version {schema!r}", param="schema")
    return etree.XMLSchema(etree.parse(str(SCHEMAS_DIR / f"{schema}.xsd"), _PARSER))


def validate(document: bytes, schema: str) -> None:
    """Raise :class:`PayoutFileInvalid` unless ``document`` is valid against ``schema``'s XSD."""
    try:
        root = etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise PayoutFileInvalid(f"payout file is not well-formed XML: {exc}") from None
    checker = xsd(schema)
    if not checker.validate(root):
        errors = checker.error_log.filter_from_errors()
        first = errors[0].message if errors else "invalid"
        raise PayoutFileInvalid(f"payout file fails the {schema} XSD: {first}")


def build(
    *,
    schema: str,
    message_id: str,
    created_at: dt.datetime,
    execution_date: dt.date,
    debtor: Debtor,
    currency: str,
    lines: Sequence[FileLine],
) -> bytes:
    """The pain.001 document for ``lines``, validated; raises :class:`PayoutFileInvalid`."""
    from sepaxml import SepaTransfer

    if schema not in SCHEMAS:
        raise PayoutFileInvalid(f"unsupported pain.001 version {schema!r}", param="schema")
    if not lines:
        raise PayoutFileInvalid("a payout file needs at least one payout")
    config: dict[str, object] = {
        "name": debtor.name,
        "IBAN": debtor.iban,
        "batch": True,
        "currency": currency,
    }
    if debtor.bic:
        config["BIC"] = debtor.bic
    try:
        transfer = SepaTransfer(config, schema=schema, clean=True)
        for line in lines:
            payment: dict[str, object] = {
                "name": line.creditor_name,
                "IBAN": line.creditor_iban,
                "amount": line.amount_minor,
                "currency": currency,
                "execution_date": execution_date,
                "description": line.remittance,
                "endtoend_id": line.end_to_end_id,
            }
            if line.creditor_bic:
                payment["BIC"] = line.creditor_bic
            transfer.add_payment(payment)
        raw = transfer.export(validate=False)
    except Exception as exc:  # sepaxml signals bad input with bare Exception
        raise PayoutFileInvalid(f"sepaxml refused the batch: {exc}") from None
    document = _stamp(raw, schema, message_id, created_at)
    validate(document, schema)
    return document


def _stamp(raw: bytes, schema: str, message_id: str, created_at: dt.datetime) -> bytes:
    root = etree.fromstring(raw, _PARSER)
    ns = {"p": NAMESPACE_PREFIX + schema}

    def node(parent: etree._Element, path: str) -> etree._Element:
        found = parent.find(path, ns)
        if found is None:
            raise PayoutFileInvalid(f"sepaxml wrote no {path}")
        return found

    header = node(root, "p:CstmrCdtTrfInitn/p:GrpHdr")
    node(header, "p:MsgId").text = message_id
    node(header, "p:CreDtTm").text = created_at.strftime("%Y-%m-%dT%H:%M:%S")
    for number, info in enumerate(root.iterfind("p:CstmrCdtTrfInitn/p:PmtInf", ns), 1):
        node(info, "p:PmtInfId").text = f"{message_id}-{number}"
        node(info, "p:BtchBookg").text = "false"
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
