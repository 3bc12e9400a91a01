"""Build camt.053 statements in tests with lxml (independent of the code under test)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

NS02 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"
NS08 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"


@dataclass(frozen=True)
class Line:
    amount_minor: int  # signed
    end_to_end_id: str | None = None
    creditor_reference: str | None = None
    remittance: str | None = None
    booking_date: str = "2026-01-02"
    value_date: str = "2026-01-02"
    status: str = "BOOK"
    #: The other party: the debtor of a credit (the payer), the creditor of a debit.
    counterparty_name: str | None = None
    counterparty_iban: str | None = None
    #: The bank's own reference of the entry (``AcctSvcrRef``).
    bank_reference: str | None = None
    #: A payment sent back: ``RtrInf/Rsn/Cd`` (an ISO code), or ``Prtry`` (the bank's own).
    return_reason: str | None = None
    return_reason_proprietary: str | None = None


def _amount(minor: int, exponent: int) -> str:
    whole, frac = divmod(abs(minor), 10**exponent)
    return f"{whole}.{frac:0{exponent}d}" if exponent else str(whole)


def camt053(
    lines: list[Line],
    *,
    iban: str = "DE89370400440532013000",
    currency: str = "EUR",
    exponent: int = 2,
    statement_id: str = "STMT-1",
    opening_minor: int | None = 0,
    closing_minor: int | None = None,
    namespace: str = NS02,
) -> bytes:
    v08 = namespace == NS08

    def el(
        parent: etree._Element, tag: str, text: str | None = None, **attrs: str
    ) -> etree._Element:
        node = etree.SubElement(parent, f"{{{namespace}}}{tag}", **attrs)
        if text is not None:
            node.text = text
        return node

    def balance(parent: etree._Element, code: str, minor: int) -> None:
        bal = el(parent, "Bal")
        el(el(el(bal, "Tp"), "CdOrPrtry"), "Cd", code)
        el(bal, "Amt", _amount(minor, exponent), Ccy=currency)
        el(bal, "CdtDbtInd", "CRDT" if minor >= 0 else "DBIT")
        el(el(bal, "Dt"), "Dt", "2026-01-02")

    root = etree.Element(f"{{{namespace}}}Document", nsmap={None: namespace})
    group = el(root, "BkToCstmrStmt")
    header = el(group, "GrpHdr")
    el(header, "MsgId", "MSG-1")
    el(header, "CreDtTm", "2026-01-02T18:00:00+01:00")
    stmt = el(group, "Stmt")
    el(stmt, "Id", statement_id)
    el(stmt, "ElctrncSeqNb", "7")
    el(stmt, "CreDtTm", "2026-01-02T18:00:00+01:00")
    acct = el(stmt, "Acct")
    el(el(acct, "Id"), "IBAN", iban)
    el(acct, "Ccy", currency)
    booked = sum(line.amount_minor for line in lines if line.status == "BOOK")
    if opening_minor is not None:
        balance(stmt, "OPBD", opening_minor)
        balance(stmt, "CLBD", opening_minor + booked if closing_minor is None else closing_minor)
    for line in lines:
        ntry = el(stmt, "Ntry")
        el(ntry, "Amt", _amount(line.amount_minor, exponent), Ccy=currency)
        el(ntry, "CdtDbtInd", "CRDT" if line.amount_minor >= 0 else "DBIT")
        if v08:
            el(el(ntry, "Sts"), "Cd", line.status)
        else:
            el(ntry, "Sts", line.status)
        el(el(ntry, "BookgDt"), "Dt", line.booking_date)
        el(el(ntry, "ValDt"), "Dt", line.value_date)
        if line.bank_reference is not None:
            el(ntry, "AcctSvcrRef", line.bank_reference)
        tx = el(el(ntry, "NtryDtls"), "TxDtls")
        if line.end_to_end_id is not None:
            el(el(tx, "Refs"), "EndToEndId", line.end_to_end_id)
        if line.counterparty_name is not None or line.counterparty_iban is not None:
            party = "Dbtr" if line.amount_minor >= 0 else "Cdtr"
            parties = el(tx, "RltdPties")
            if line.counterparty_name is not None:
                el(el(parties, party), "Nm", line.counterparty_name)
            if line.counterparty_iban is not None:
                el(el(el(parties, f"{party}Acct"), "Id"), "IBAN", line.counterparty_iban)
        if line.creditor_reference is not None or line.remittance is not None:
            rmt = el(tx, "RmtInf")
            if line.remittance is not None:
                el(rmt, "Ustrd", line.remittance)
            if line.creditor_reference is not None:
                el(el(el(rmt, "Strd"), "CdtrRefInf"), "Ref", line.creditor_reference)
        if line.return_reason is not None or line.return_reason_proprietary is not None:
            reason = el(el(tx, "RtrInf"), "Rsn")
            if line.return_reason is not None:
                el(reason, "Cd", line.return_reason)
            else:
                el(reason, "Prtry", line.return_reason_proprietary)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def wrap_with_header(document: bytes, message: str) -> bytes:
    """The document inside an envelope with a business application header (head.001)."""
    body = document.split(b"?>", 1)[1] if document.startswith(b"<?xml") else document
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<Envelope xmlns="urn:swift:xsd:envelope">'
        b'<AppHdr xmlns="urn:iso:std:iso:20022:tech:xsd:head.001.001.02">'
        b"<BizMsgIdr>B1</BizMsgIdr><MsgDefIdr>" + message.encode() + b"</MsgDefIdr>"
        b"<CreDt>2026-01-02T18:00:00Z</CreDt></AppHdr>" + body + b"</Envelope>"
    )
