"""The bank's reading of a pain.001 customer credit transfer initiation (.03 and .09).

This is the other side of the wire: it shares no code with Paykeep's payout writer. A file is
refused unless it is well-formed XML without any DTD (so no entity expansion, no external
fetch), in one of the two supported namespaces, valid against that version's XSD, and
internally consistent (number of transactions, control sums, currency precision, unique
end-to-end ids, valid IBANs). The answer is a :class:`PaymentFile` or a
:class:`PaymentFileInvalid` carrying an ISO 20022 status reason code.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as DefusedET
from lxml import etree  # type: ignore[import-untyped,unused-ignore]
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

from paykeep import limits
from paykeep.money import Money

SCHEMAS_DIR = Path(__file__).parent / "bank_schemas"
NAMESPACE_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"
SUPPORTED = ("pain.001.001.03", "pain.001.001.09")


class PaymentFileInvalid(Exception):
    """A payment file the bank refuses before executing anything.

    ``reason`` is an ISO 20022 external status reason code (FF01 invalid file format, AM05
    duplication, AM10 invalid control sum, AC01 incorrect account number, AM03 not allowed
    currency, AM02 not allowed amount, ...).
    """

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.text = " ".join(text.split())[:300]


@dataclass(frozen=True, slots=True)
class CreditTransfer:
    end_to_end_id: str
    amount_minor: int
    currency: str
    creditor_name: str
    creditor_iban: str
    remittance: str | None


@dataclass(frozen=True, slots=True)
class PaymentBlock:
    payment_info_id: str
    debtor_name: str
    debtor_iban: str
    requested_date: str
    transfers: tuple[CreditTransfer, ...]


@dataclass(frozen=True, slots=True)
class PaymentFile:
    schema: str
    message_id: str
    created_at: str
    number_of_transactions: int
    control_sum: Decimal | None
    blocks: tuple[PaymentBlock, ...]

    @property
    def transfers(self) -> list[CreditTransfer]:
        return [t for b in self.blocks for t in b.transfers]


_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=False,
)


@lru_cache(maxsize=4)
def schema(version: str) -> etree.XMLSchema:
    """The XSD of ``version`` (parsed once; the schema files ship with banksim)."""
    if version not in SUPPORTED:
        raise PaymentFileInvalid("FF01", f"unsupported message {version}")
    document = etree.parse(str(SCHEMAS_DIR / f"{version}.xsd"), _PARSER)
    return etree.XMLSchema(document)


def _text(node: Any, path: str, ns: dict[str, str], *, required: bool = True) -> str | None:
    found = node.find(path, ns)
    if found is None or found.text is None:
        if required:
            raise PaymentFileInvalid("FF01", f"missing {path}")
        return None
    return str(found.text).strip()


def _iban(value: str | None, what: str) -> str:
    try:
        return str(IBAN(value or "").compact)
    except SchwiftyException as exc:
        raise PaymentFileInvalid("AC01", f"{what} IBAN {value!r} is invalid: {exc}") from None


def _amount(text: str, currency: str, what: str) -> int:
    try:
        return Money.parse(text, currency).amount_minor
    except Exception as exc:  # paykeep.money's typed errors: wrong precision or currency
        raise PaymentFileInvalid("AM03", f"{what} {text} {currency}: {exc}") from None


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise PaymentFileInvalid("FF01", f"{what} is not a decimal: {text!r}") from None
    if not value.is_finite():
        raise PaymentFileInvalid("FF01", f"{what} is not a decimal: {text!r}")
    return value


def parse_payment_file(data: bytes) -> PaymentFile:
    """Parse and check a pain.001 file; raise :class:`PaymentFileInvalid` on any defect."""
    if len(data) > limits.BANK_REQUEST_BYTES_MAX:
        raise PaymentFileInvalid("FF01", f"file larger than {limits.BANK_REQUEST_BYTES_MAX} bytes")
    if not data.strip():
        raise PaymentFileInvalid("FF01", "empty file")
    try:
        # Refuse any DTD outright: no entity can be declared, so none can expand or fetch.
        DefusedET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        root = etree.fromstring(data, _PARSER)
    except (DefusedXmlException, etree.XMLSyntaxError, DefusedET.ParseError) as exc:
        raise PaymentFileInvalid("FF01", f"not well-formed XML without DTD: {exc}") from None
    tag = etree.QName(root)
    namespace = tag.namespace or ""
    version = namespace.removeprefix(NAMESPACE_PREFIX)
    if tag.localname != "Document" or version not in SUPPORTED:
        raise PaymentFileInvalid(
            "FF01", f"not a pain.001.001.03/.09 Document: {{{namespace}}}{tag.localname}"
        )
    xsd = schema(version)
    if not xsd.validate(root):
        first = xsd.error_log.filter_from_errors()
        message = str(first[0].message) if first else "schema validation failed"
        raise PaymentFileInvalid("FF01", f"{version} schema: {message}")
    ns = {"p": namespace}
    initiation = root.find("p:CstmrCdtTrfInitn", ns)
    assert initiation is not None  # the schema requires it
    header = initiation.find("p:GrpHdr", ns)
    message_id = _text(header, "p:MsgId", ns) or ""
    created_at = _text(header, "p:CreDtTm", ns) or ""
    declared = int(_text(header, "p:NbOfTxs", ns) or "0")
    control_text = _text(header, "p:CtrlSum", ns, required=False)
    control_sum = _decimal(control_text, "GrpHdr/CtrlSum") if control_text else None
    blocks: list[PaymentBlock] = []
    seen: set[str] = set()
    total = Decimal(0)
    count = 0
    for info in initiation.iterfind("p:PmtInf", ns):
        block_total = Decimal(0)
        transfers: list[CreditTransfer] = []
        debtor_iban = _iban(_text(info, "p:DbtrAcct/p:Id/p:IBAN", ns, required=False), "debtor")
        if version == "pain.001.001.03":
            requested = _text(info, "p:ReqdExctnDt", ns) or ""
        else:
            requested = (
                _text(info, "p:ReqdExctnDt/p:Dt", ns, required=False)
                or (_text(info, "p:ReqdExctnDt/p:DtTm", ns) or "")[:10]
            )
        for tx in info.iterfind("p:CdtTrfTxInf", ns):
            count += 1
            if count > limits.BANK_FILE_TRANSACTIONS_MAX:
                raise PaymentFileInvalid(
                    "FF01", f"more than {limits.BANK_FILE_TRANSACTIONS_MAX} transactions"
                )
            e2e = _text(tx, "p:PmtId/p:EndToEndId", ns) or ""
            if e2e in seen and e2e != "NOTPROVIDED":
                raise PaymentFileInvalid("AM05", f"end-to-end id {e2e!r} appears twice")
            seen.add(e2e)
            amount_node = tx.find("p:Amt/p:InstdAmt", ns)
            if amount_node is None:
                raise PaymentFileInvalid("FF01", f"{e2e}: only InstdAmt is supported")
            currency = str(amount_node.get("Ccy"))
            amount_text = str(amount_node.text).strip()
            block_total += _decimal(amount_text, f"{e2e} amount")
            amount_minor = _amount(amount_text, currency, e2e)
            if not 0 < amount_minor <= limits.BANK_AMOUNT_MAX_MINOR:
                raise PaymentFileInvalid("AM02", f"{e2e}: amount {amount_text} not allowed")
            transfers.append(
                CreditTransfer(
                    end_to_end_id=e2e,
                    amount_minor=amount_minor,
                    currency=currency,
                    creditor_name=_text(tx, "p:Cdtr/p:Nm", ns, required=False) or "",
                    creditor_iban=_iban(
                        _text(tx, "p:CdtrAcct/p:Id/p:IBAN", ns, required=False), "creditor"
                    ),
                    remittance=_text(tx, "p:RmtInf/p:Ustrd", ns, required=False),
                )
            )
        declared_block = int(_text(info, "p:NbOfTxs", ns, required=False) or len(transfers))
        if declared_block != len(transfers):
            raise PaymentFileInvalid(
                "AM18", f"PmtInf declares {declared_block} transactions, holds {len(transfers)}"
            )
        block_sum = _text(info, "p:CtrlSum", ns, required=False)
        if block_sum is not None and _decimal(block_sum, "PmtInf/CtrlSum") != block_total:
            raise PaymentFileInvalid(
                "AM10", f"PmtInf control sum {block_sum} but transactions add to {block_total}"
            )
        total += block_total
        blocks.append(
            PaymentBlock(
                payment_info_id=_text(info, "p:PmtInfId", ns) or "",
                debtor_name=_text(info, "p:Dbtr/p:Nm", ns, required=False) or "",
                debtor_iban=debtor_iban,
                requested_date=requested,
                transfers=tuple(transfers),
            )
        )
    if declared != count:
        raise PaymentFileInvalid("AM18", f"GrpHdr declares {declared} transactions, holds {count}")
    if control_sum is not None and control_sum != total:
        raise PaymentFileInvalid(
            "AM10", f"GrpHdr control sum {control_sum} but transactions add to {total}"
        )
    return PaymentFile(
        schema=version,
        message_id=message_id,
        created_at=created_at,
        number_of_transactions=count,
        control_sum=control_sum,
        blocks=tuple(blocks),
    )
