"""End-of-day statements as the bank sends them: camt.053 (.02 and .08) and MT940.

The XML is written with lxml. No maintained library writes MT940, so its SWIFT fields are
formatted here, strictly: field lengths, the SWIFT X character set, ``,`` as the decimal
mark, ``C``/``D`` marks, at most 6 lines of 65 characters in ``:86:``.

MT940 ``:86:`` uses the German structured layout (transaction code, ``?nn`` sub-fields,
``EREF+``/``KREF+``/``SVWZ+`` purpose codes; see :func:`_details`), which the ``mt-940``
library reads. ``:61:``'s reference for the account owner is the end-to-end id of our own
payment or the remittance reference of one received when it fits in 16 characters, else
``NONREF``; the bank's own reference follows ``//``.

A payout the payee's bank sent back (an R-transaction) is a credit carrying the payout's
end-to-end id: in camt.053 with bank transaction code PMNT/ICDT/RRTN (an issued credit
transfer reversed by a return), the ISO return reason in ``RtrInf/Rsn/Cd`` and, when the
payee's bank kept a fee, the original amount in ``AmtDtls/InstdAmt`` and the fee in ``Chrgs``;
in MT940 with GVC 159 (return of a credit transfer) and ``OAMT+``/``COAM+`` (original amount,
fee). MT940 has no field for the ISO reason code (the German layout's ``?34`` is a numeric key
of its own), so there the reason is only in the posting text (``?00RETOURE AC04``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from lxml import etree  # type: ignore[import-untyped,unused-ignore]
from text_unidecode import unidecode  # type: ignore[import-untyped,unused-ignore]

from paykeep.money import Money, currency_exponent

CAMT_VERSIONS = ("02", "08")


class _Factory(Protocol):
    def __call__(
        self, parent: etree._Element, name: str, text: str | None = None, **attrs: str
    ) -> etree._Element: ...


@dataclass(frozen=True, slots=True)
class StatementEntry:
    entry_id: int
    amount_minor: int  # signed: credit > 0, debit < 0
    booking_date: dt.date
    value_date: dt.date
    end_to_end_id: str | None
    remittance: str | None
    counterparty_name: str | None
    counterparty_iban: str | None
    message_id: str | None
    payment_info_id: str | None
    #: A payout the payee's bank sent back: its ISO 20022 return reason and the amount it had
    #: (the entry's is less the fee the payee's bank kept).
    return_reason: str | None = None
    original_amount_minor: int | None = None

    @property
    def fee_minor(self) -> int:
        """What the payee's bank kept of a payout it sent back (0 for any other entry)."""
        if self.original_amount_minor is None:
            return 0
        return self.original_amount_minor - self.amount_minor

    @property
    def bank_reference(self) -> str:
        return f"BSIM{self.entry_id:012d}"


@dataclass(frozen=True, slots=True)
class Statement:
    statement_id: str
    sequence: int
    iban: str
    bic: str | None
    account_name: str
    currency: str
    date: dt.date
    opening_booked_minor: int
    closing_booked_minor: int
    created_at: dt.datetime
    entries: tuple[StatementEntry, ...]


def _amount(minor: int, currency: str) -> str:
    return Money(abs(minor), currency).format()


def _mark(minor: int) -> str:
    return "CRDT" if minor >= 0 else "DBIT"


# ---------------------------------------------------------------------------------------------
# camt.053
# ---------------------------------------------------------------------------------------------


def camt053(statement: Statement, version: str = "02") -> bytes:
    """The statement as a camt.053.001.``version`` document (``02`` or ``08``)."""
    if version not in CAMT_VERSIONS:
        raise ValueError(f"camt.053 version must be one of {CAMT_VERSIONS}")
    ns = f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}"
    v8 = version == "08"

    def el(
        parent: etree._Element, name: str, text: str | None = None, **attrs: str
    ) -> etree._Element:
        node = etree.SubElement(parent, f"{{{ns}}}{name}", attrs)
        if text is not None:
            node.text = text
        return node

    s = statement
    ccy = s.currency
    document = etree.Element(f"{{{ns}}}Document", nsmap={None: ns})
    root = el(document, "BkToCstmrStmt")
    header = el(root, "GrpHdr")
    el(header, "MsgId", f"{s.statement_id}-MSG")
    el(header, "CreDtTm", s.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    stmt = el(root, "Stmt")
    el(stmt, "Id", s.statement_id)
    el(stmt, "ElctrncSeqNb", str(s.sequence))
    el(stmt, "LglSeqNb", str(s.sequence))
    el(stmt, "CreDtTm", s.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    period = el(stmt, "FrToDt")
    el(period, "FrDtTm", f"{s.date.isoformat()}T00:00:00")
    el(period, "ToDtTm", f"{s.date.isoformat()}T23:59:59")
    account = el(stmt, "Acct")
    el(el(account, "Id"), "IBAN", s.iban)
    el(account, "Ccy", ccy)
    el(account, "Nm", _xml_text(s.account_name, 70))
    if s.bic:
        el(el(el(account, "Svcr"), "FinInstnId"), "BICFI" if v8 else "BIC", s.bic)
    for code, minor in (("OPBD", s.opening_booked_minor), ("CLBD", s.closing_booked_minor)):
        balance = el(stmt, "Bal")
        el(el(el(balance, "Tp"), "CdOrPrtry"), "Cd", code)
        el(balance, "Amt", _amount(minor, ccy), Ccy=ccy)
        el(balance, "CdtDbtInd", _mark(minor))
        el(el(balance, "Dt"), "Dt", s.date.isoformat())
    credits = [e.amount_minor for e in s.entries if e.amount_minor > 0]
    debits = [-e.amount_minor for e in s.entries if e.amount_minor < 0]
    summary = el(stmt, "TxsSummry")
    totals = el(summary, "TtlNtries")
    el(totals, "NbOfNtries", str(len(s.entries)))
    el(totals, "Sum", _amount(sum(credits) + sum(debits), ccy))
    net = sum(credits) - sum(debits)
    if v8:
        net_node = el(totals, "TtlNetNtry")
        el(net_node, "Amt", _amount(net, ccy))
        el(net_node, "CdtDbtInd", _mark(net))
    else:
        el(totals, "TtlNetNtryAmt", _amount(net, ccy))
        el(totals, "CdtDbtInd", _mark(net))
    for name, amounts in (("TtlCdtNtries", credits), ("TtlDbtNtries", debits)):
        part = el(summary, name)
        el(part, "NbOfNtries", str(len(amounts)))
        el(part, "Sum", _amount(sum(amounts), ccy))
    for entry in s.entries:
        incoming = entry.amount_minor > 0
        ntry = el(stmt, "Ntry")
        el(ntry, "NtryRef", str(entry.entry_id))
        el(ntry, "Amt", _amount(entry.amount_minor, ccy), Ccy=ccy)
        el(ntry, "CdtDbtInd", _mark(entry.amount_minor))
        if v8:
            el(el(ntry, "Sts"), "Cd", "BOOK")
        else:
            el(ntry, "Sts", "BOOK")
        el(el(ntry, "BookgDt"), "Dt", entry.booking_date.isoformat())
        el(el(ntry, "ValDt"), "Dt", entry.value_date.isoformat())
        el(ntry, "AcctSvcrRef", entry.bank_reference)
        returned = entry.return_reason is not None
        _bank_code(el, ntry, incoming, returned)
        details = el(el(ntry, "NtryDtls"), "TxDtls")
        refs = el(details, "Refs")
        if entry.message_id:
            el(refs, "MsgId", entry.message_id)
        el(refs, "AcctSvcrRef", entry.bank_reference)
        if entry.payment_info_id:
            el(refs, "PmtInfId", entry.payment_info_id)
        el(refs, "EndToEndId", entry.end_to_end_id or "NOTPROVIDED")
        amounts = el(details, "AmtDtls")
        if entry.fee_minor:
            assert entry.original_amount_minor is not None
            el(el(amounts, "InstdAmt"), "Amt", _amount(entry.original_amount_minor, ccy), Ccy=ccy)
        el(el(amounts, "TxAmt"), "Amt", _amount(entry.amount_minor, ccy), Ccy=ccy)
        _bank_code(el, details, incoming, returned)
        if entry.fee_minor:
            # The payee's bank's fee, deducted from the amount (v08 nests it in a record).
            charges = el(details, "Chrgs")
            record = el(charges, "Rcrd") if v8 else charges
            el(record, "Amt", _amount(entry.fee_minor, ccy), Ccy=ccy)
            el(record, "CdtDbtInd", "DBIT")
            if v8:
                el(record, "ChrgInclInd", "true")
        if entry.counterparty_name or entry.counterparty_iban:
            parties = el(details, "RltdPties")
            party_role, account_role = ("Dbtr", "DbtrAcct") if incoming else ("Cdtr", "CdtrAcct")
            if entry.counterparty_name:
                party = el(parties, party_role)
                if v8:
                    party = el(party, "Pty")
                el(party, "Nm", _xml_text(entry.counterparty_name, 140))
            if entry.counterparty_iban:
                el(el(el(parties, account_role), "Id"), "IBAN", entry.counterparty_iban)
        if entry.remittance:
            el(el(details, "RmtInf"), "Ustrd", _xml_text(entry.remittance, 140))
        if entry.return_reason is not None:
            el(el(el(details, "RtrInf"), "Rsn"), "Cd", entry.return_reason)
    return bytes(
        etree.tostring(document, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    )


def _bank_code(
    el: _Factory, parent: etree._Element, incoming: bool, returned: bool = False
) -> None:
    """Bank transaction code: PMNT / RCDT (received) or ICDT (issued) / ESCT (SEPA); an issued
    credit transfer the payee's bank sent back is PMNT / ICDT / RRTN."""
    domain = el(el(parent, "BkTxCd"), "Domn")
    el(domain, "Cd", "PMNT")
    family = el(domain, "Fmly")
    el(family, "Cd", "RCDT" if incoming and not returned else "ICDT")
    el(family, "SubFmlyCd", "RRTN" if returned else "ESCT")


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str, length: int) -> str:
    return _XML_ILLEGAL.sub("", text)[:length]


# ---------------------------------------------------------------------------------------------
# MT940
# ---------------------------------------------------------------------------------------------

#: The SWIFT X character set (plus space), the only characters an MT field may hold.
_SWIFT_X = re.compile(r"[^A-Za-z0-9/\-?:().,'+ ]")


def swift_text(text: str) -> str:
    """Transliterate to the SWIFT X character set; anything left outside it becomes ``.``."""
    return _SWIFT_X.sub(".", unidecode(text).replace("\r", " ").replace("\n", " "))


def mt940_amount(minor: int, currency: str) -> str:
    """``1234,56``: no sign, ``,`` decimal mark, at most 15 characters (SWIFT ``15d``)."""
    exponent = currency_exponent(currency)
    whole, fraction = divmod(abs(minor), 10**exponent)
    text = f"{whole}," + (f"{fraction:0{exponent}d}" if exponent else "")
    if len(text) > 15:
        raise ValueError(f"amount {minor} {currency} does not fit an MT940 amount field")
    return text


def _mt_balance(tag: str, minor: int, date: dt.date, currency: str) -> str:
    mark = "C" if minor >= 0 else "D"
    return f":{tag}:{mark}{date:%y%m%d}{currency}{mt940_amount(minor, currency)}"


def _wrap(text: str, width: int, lines: int) -> Iterator[str]:
    """Cut ``text`` into at most ``lines`` lines of at most ``width`` characters. A line never
    ends with a space (readers strip trailing blanks): the space opens the next line instead."""
    rest = text
    for _ in range(lines):
        if not rest:
            return
        chunk = rest[:width]
        if len(chunk) == width and len(rest) > width:
            while chunk.endswith(" ") and chunk.strip():
                chunk = chunk[:-1]
        rest = rest[len(chunk) :]
        yield chunk


def _owner_reference(entry: StatementEntry) -> str:
    """:61: reference for the account owner (16x): the end-to-end id of our own payment when it
    fits, else ``NONREF`` (a received payment's reference travels in ``:86:`` ``KREF+``)."""
    text = swift_text(entry.end_to_end_id or "").strip()
    fits = 0 < len(text) <= 16 and "//" not in text and not text.startswith("/")
    if entry.amount_minor < 0 and fits and text != "NOTPROVIDED":
        return text
    return "NONREF"


def _subfield(text: str) -> str:
    # "?" opens a sub-field and ":" at a line start a new field: neither may appear inside.
    return swift_text(text).replace("?", ".").replace(":", ".")


def _details(entry: StatementEntry, currency: str) -> str:
    """:86: in the German structured layout (GVC + ``?nn`` sub-fields) that the ``mt-940``
    library reads: ``?20``-``?29`` purpose lines of 27 characters carrying ``EREF+`` (end-to-end
    id), ``KREF+`` (a received payment's reference) and ``SVWZ+`` (remittance text), ``?31``
    the counterparty IBAN, ``?32``/``?33`` its name. The purpose lines hold 270 characters and
    the field 6 lines of 65: longer texts are cut (camt.053 carries them whole)."""
    incoming = entry.amount_minor > 0
    returned = entry.return_reason is not None
    purpose = ""
    if entry.end_to_end_id and entry.end_to_end_id != "NOTPROVIDED":
        purpose += f"EREF+{_subfield(entry.end_to_end_id)}"
    if returned and entry.fee_minor:
        assert entry.original_amount_minor is not None
        purpose += f"OAMT+{mt940_amount(entry.original_amount_minor, currency)}"
        purpose += f"COAM+{mt940_amount(entry.fee_minor, currency)}"
    if entry.remittance:
        remittance = _subfield(entry.remittance)
        if incoming and not returned:
            purpose += f"KREF+{remittance}"
        purpose += f"SVWZ+{remittance}"
    if returned:
        # GVC 159: a credit transfer returned; the ISO reason only in the posting text.
        parts = ["159", f"?00RETOURE {_subfield(entry.return_reason or '')}"]
    else:
        parts = [
            "166" if incoming else "116",
            "?00SEPA-GUTSCHRIFT" if incoming else "?00SEPA-UEBERW",
        ]
    for index in range(10):
        chunk = purpose[index * 27 : (index + 1) * 27]
        if not chunk:
            break
        parts.append(f"?2{index}{chunk}")
    if entry.counterparty_iban:
        parts.append(f"?31{entry.counterparty_iban}")
    if entry.counterparty_name:
        name = _subfield(entry.counterparty_name)
        parts.append(f"?32{name[:27]}")
        if name[27:54]:
            parts.append(f"?33{name[27:54]}")
    return "".join(parts)


def mt940(statement: Statement) -> bytes:
    """The statement as one SWIFT MT940 message (fields separated by CRLF, ending with ``-``)."""
    s = statement
    ccy = s.currency
    lines = [
        f":20:{swift_text(s.statement_id)[:16]}",
        f":25:{s.iban[:35]}",
        f":28C:{s.sequence % 100_000}/1",
        _mt_balance("60F", s.opening_booked_minor, s.date, ccy),
    ]
    for entry in s.entries:
        mark = "C" if entry.amount_minor > 0 else "D"
        lines.append(
            f":61:{entry.value_date:%y%m%d}{entry.booking_date:%m%d}{mark}"
            f"{mt940_amount(entry.amount_minor, ccy)}NTRF{_owner_reference(entry)}"
            f"//{entry.bank_reference[:16]}"
        )
        wrapped = list(_wrap(_details(entry, ccy), 65, 6))
        lines.append(f":86:{wrapped[0]}")
        lines.extend(wrapped[1:])
    lines.append(_mt_balance("62F", s.closing_booked_minor, s.date, ccy))
    lines.append("-")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
