"""ISO 20022 camt.052 / camt.053 / camt.054 (plain ``Document`` or wrapped with a business
application header) -> :class:`ParsedStatement`.

The XML is parsed hardened with lxml: no entity expansion, no network, no DTD loading, no huge
trees, and any document carrying a DTD at all is refused (billion laughs, external entities).
Schema locations in the input are never followed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from paykeep import limits
from paykeep.gateway.statements.errors import (
    StatementAmountInvalid,
    StatementCurrencyInvalid,
    StatementFieldTooLong,
    StatementHeaderMismatch,
    StatementMalformed,
    StatementNamespaceUnsupported,
    StatementTooLarge,
    StatementTruncated,
    StatementXmlForbidden,
)
from paykeep.gateway.statements.model import (
    Entry,
    EntryStatus,
    ParsedStatement,
    check_entry_currency,
)
from paykeep.money import AmountPrecisionExceeded, InvalidAmount, Money, UnknownCurrency

_NS_RE: Final = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:(camt\.05[234])\.001\.(\d{2})$")
#: Versions whose statement structure this reader knows (Bal, Ntry, NtryDtls/TxDtls).
SUPPORTED_VERSIONS: Final = frozenset({"02", "03", "04", "05", "06", "07", "08"})
#: The report element under the group of each message.
_GROUPS: Final = {
    "camt.053": ("BkToCstmrStmt", "Stmt"),
    "camt.052": ("BkToCstmrAcctRpt", "Rpt"),
    "camt.054": ("BkToCstmrDbtCdtNtfctn", "Ntfctn"),
}
_STATUS: Final = {
    "BOOK": EntryStatus.BOOKED,
    "PDNG": EntryStatus.PENDING,
    "FUTR": EntryStatus.PENDING,
    "INFO": EntryStatus.INFO,
}
_NOT_PROVIDED: Final = frozenset({"NOTPROVIDED", "NONREF"})


def looks_like_xml(data: bytes) -> bool:
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")


def parse_xml(data: bytes) -> etree._Element:
    """Parse hardened; map every failure to a typed error."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        parser.feed(data)
    except etree.XMLSyntaxError as exc:
        raise StatementMalformed(f"not well-formed XML: {exc}") from None
    try:
        root = parser.close()
    except etree.XMLSyntaxError as exc:
        # Everything fed was well formed, yet the document did not end: cut off.
        raise StatementTruncated(f"the XML document ends early: {exc}") from None
    info = root.getroottree().docinfo
    if info.internalDTD is not None or info.externalDTD is not None or info.doctype:
        raise StatementXmlForbidden("XML with a DTD or entity declarations is refused")
    return root


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def find_document(root: etree._Element) -> tuple[etree._Element, etree._Element | None]:
    """The camt ``Document`` and the business application header next to it, if any.

    Accepted shapes: ``Document`` as the root, or any envelope whose children include an
    ``AppHdr`` and a ``Document`` (SWIFT's ``Envelope``, ``DataPDU`` bodies, ...).
    """
    if _local(root.tag) == "Document":
        return root, None
    header = None
    document = None
    for depth_one in root:
        name = _local(depth_one.tag)
        if name == "AppHdr":
            header = depth_one
        elif name == "Document":
            document = depth_one
        else:
            for depth_two in depth_one:
                inner = _local(depth_two.tag)
                if inner == "AppHdr" and header is None:
                    header = depth_two
                elif inner == "Document" and document is None:
                    document = depth_two
    if document is None:
        raise StatementNamespaceUnsupported(
            f"no ISO 20022 Document in this XML (root element {_local(root.tag)!r})"
        )
    return document, header


class _Reader:
    """Namespaced lookups under one camt namespace."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.nsmap = {"c": namespace}

    def find(self, el: etree._Element, path: str) -> etree._Element | None:
        return el.find(self._path(path))

    def findall(self, el: etree._Element, path: str) -> list[etree._Element]:
        return list(el.iterfind(self._path(path)))

    def text(
        self, el: etree._Element, path: str, *, limit: int = limits.STATEMENT_REFERENCE_LENGTH_MAX
    ) -> str | None:
        found = self.find(el, path)
        if found is None or found.text is None:
            return None
        value = " ".join(found.text.split())
        if not value:
            return None
        if len(value) > limit:
            raise StatementFieldTooLong(f"{path} is longer than {limit} characters")
        return value

    def _path(self, path: str) -> str:
        return _qualified(self.ns, path)


@functools.lru_cache(maxsize=1_024)
def _qualified(namespace: str, path: str) -> str:
    """``Ntry/Amt`` in ``namespace`` as lxml's ``{ns}Ntry/{ns}Amt`` (a few dozen paths, built
    once: a statement of 10,000 lines asks for them 300,000 times)."""
    return "/".join(f"{{{namespace}}}{p}" if p != "." else p for p in path.split("/"))


def parse_camt(data: bytes) -> list[ParsedStatement]:
    root = parse_xml(data)
    document, header = find_document(root)
    namespace = etree.QName(document.tag).namespace or ""
    match = _NS_RE.match(namespace)
    if match is None:
        raise StatementNamespaceUnsupported(
            f"not a camt.052/053/054 statement: namespace {namespace or '(none)'!r}"
        )
    message, version = match.group(1), match.group(2)
    if version not in SUPPORTED_VERSIONS:
        raise StatementNamespaceUnsupported(f"{message}.001.{version} is not a supported version")
    fmt = f"{message}.001.{version}"
    if header is not None:
        _check_header(header, fmt)
    r = _Reader(namespace)
    group_name, report_name = _GROUPS[message]
    group = r.find(document, group_name)
    if group is None:
        raise StatementMalformed(f"{fmt} document without {group_name}")
    reports = r.findall(group, report_name)
    if not reports:
        raise StatementMalformed(f"{fmt} document without any {report_name}")
    if len(reports) > limits.STATEMENTS_PER_FILE_MAX:
        raise StatementTooLarge(f"more than {limits.STATEMENTS_PER_FILE_MAX} statements in a file")
    group_created = _datetime(r.text(group, "GrpHdr/CreDtTm"), "GrpHdr/CreDtTm")
    out: list[ParsedStatement] = []
    entries_seen = 0
    for report in reports:
        statement = _statement(r, report, fmt, group_created)
        entries_seen += len(statement.entries)
        if entries_seen > limits.STATEMENT_ENTRIES_MAX:
            raise StatementTooLarge(f"more than {limits.STATEMENT_ENTRIES_MAX} entries in a file")
        out.append(statement)
    return out


def _check_header(header: etree._Element, fmt: str) -> None:
    ns = etree.QName(header.tag).namespace or ""
    found = header.find(f"{{{ns}}}MsgDefIdr")
    if found is None or not (found.text or "").strip():
        raise StatementMalformed("business application header without MsgDefIdr")
    declared = found.text.strip()
    if declared != fmt:
        raise StatementHeaderMismatch(
            f"the business application header declares {declared}, the document is {fmt}"
        )


def _statement(
    r: _Reader, report: etree._Element, fmt: str, group_created: datetime | None
) -> ParsedStatement:
    statement_id = r.text(report, "Id")
    if statement_id is None:
        raise StatementMalformed(f"{fmt} statement without an Id")
    acct = r.find(report, "Acct")
    if acct is None:
        raise StatementMalformed(f"statement {statement_id} has no account (Acct)")
    account = r.text(acct, "Id/IBAN") or r.text(acct, "Id/Othr/Id")
    if account is None:
        raise StatementMalformed(f"statement {statement_id} has no account identifier")
    sequence = r.text(report, "ElctrncSeqNb") or r.text(report, "LglSeqNb")
    created = _datetime(r.text(report, "CreDtTm"), "CreDtTm") or group_created
    raw_balances = list(_balances(r, report, statement_id))
    raw_entries = r.findall(report, "Ntry")
    if len(raw_entries) > limits.STATEMENT_ENTRIES_MAX:
        raise StatementTooLarge(f"more than {limits.STATEMENT_ENTRIES_MAX} entries in a file")
    currency = r.text(acct, "Ccy")
    if currency is None:
        # No account currency stated: the booked balances', else the first line's.
        for code, ccy, _, _ in raw_balances:
            if code in ("OPBD", "PRCD", "CLBD"):
                currency = ccy
                break
    if currency is None and raw_entries:
        amt = r.find(raw_entries[0], "Amt")
        currency = None if amt is None else amt.get("Ccy")
    if currency is None:
        raise StatementMalformed(f"statement {statement_id}: no currency anywhere")
    _exponent(currency, statement_id)
    balances: dict[str, tuple[int, date | None]] = {}
    notes: list[str] = []
    for code, ccy, minor, when in raw_balances:
        if ccy != currency:
            # Booked balances in another currency than the account's cannot be this account's
            # balances; the check refuses them (see parser.parse) instead of using either.
            notes.append(f"{code} balance in {ccy}, account in {currency}")
            continue
        if code in balances and balances[code][0] != minor:
            raise StatementMalformed(f"statement {statement_id}: two different {code} balances")
        balances[code] = (minor, when)
    opening = balances.get("OPBD") or balances.get("PRCD")
    closing = balances.get("CLBD")
    entries = tuple(_entry(r, n, statement_id, i) for i, n in enumerate(raw_entries, 1))
    label = f"{account} {statement_id}"
    check_entry_currency(currency, entries, label)
    return ParsedStatement(
        account=account,
        currency=currency,
        statement_id=statement_id,
        sequence=sequence,
        created_at=created,
        opening_booked_minor=None if opening is None else opening[0],
        closing_booked_minor=None if closing is None else closing[0],
        entries=entries,
        format=fmt,
        opening_available_minor=_minor_of(balances.get("OPAV")),
        closing_available_minor=_minor_of(balances.get("CLAV")),
        closing_date=None if closing is None else closing[1],
        notes=tuple(notes),
    )


def _minor_of(value: tuple[int, date | None] | None) -> int | None:
    return None if value is None else value[0]


def _balances(
    r: _Reader, report: etree._Element, statement_id: str
) -> Iterator[tuple[str, str, int, date | None]]:
    for bal in r.findall(report, "Bal"):
        code = r.text(bal, "Tp/CdOrPrtry/Cd") or r.text(bal, "Tp/CdOrPrtry/Prtry")
        if code is None:
            raise StatementMalformed(f"statement {statement_id}: balance without a type code")
        amt = r.find(bal, "Amt")
        if amt is None:
            raise StatementMalformed(f"statement {statement_id}: {code} balance without Amt")
        ccy = amt.get("Ccy") or ""
        minor = _amount(amt.text, ccy, f"statement {statement_id} {code} balance")
        minor = _signed(r, bal, minor, f"statement {statement_id} {code} balance")
        when = _date_of(r, bal, "Dt", f"statement {statement_id} {code} balance")
        yield code, ccy, minor, when


def _entry(r: _Reader, ntry: etree._Element, statement_id: str, index: int) -> Entry:
    where = f"statement {statement_id} line {index}"
    amt = r.find(ntry, "Amt")
    if amt is None:
        raise StatementMalformed(f"{where}: no Amt")
    currency = amt.get("Ccy") or ""
    minor = _signed(r, ntry, _amount(amt.text, currency, where), where)
    status_text = r.text(ntry, "Sts/Cd") or r.text(ntry, "Sts/Prtry") or r.text(ntry, "Sts")
    status = _STATUS.get(status_text or "")
    if status is None:
        raise StatementMalformed(f"{where}: unknown entry status {status_text!r}")
    details = r.findall(ntry, "NtryDtls/TxDtls")
    # Only a single-transaction line carries references that describe the whole line; a
    # batch line (several TxDtls) is matched on nothing and reconciles as a break.
    tx = details[0] if len(details) == 1 else None
    end_to_end = reference = remittance = name = iban = uetr = return_reason = None
    bank_reference = r.text(ntry, "AcctSvcrRef")
    if tx is not None:
        end_to_end = r.text(tx, "Refs/EndToEndId")
        if end_to_end is not None and end_to_end.upper() in _NOT_PROVIDED:
            end_to_end = None
        uetr = r.text(tx, "Refs/UETR")
        bank_reference = bank_reference or r.text(tx, "Refs/AcctSvcrRef")
        reference = r.text(tx, "RmtInf/Strd/CdtrRefInf/Ref")
        parts = [" ".join(u.text.split()) for u in r.findall(tx, "RmtInf/Ustrd") if u.text]
        remittance = " ".join(p for p in parts if p) or None
        if remittance is not None and len(remittance) > limits.STATEMENT_TEXT_LENGTH_MAX:
            raise StatementFieldTooLong(f"{where}: remittance information too long")
        if reference is None and remittance is not None and len(remittance.split()) == 1:
            # A single-token unstructured remittance is the payer typing our reference.
            reference = remittance if len(remittance) <= 140 else None
        party = "Dbtr" if minor >= 0 else "Cdtr"
        name = r.text(
            tx, f"RltdPties/{party}/Nm", limit=limits.STATEMENT_TEXT_LENGTH_MAX
        ) or r.text(tx, f"RltdPties/{party}/Pty/Nm", limit=limits.STATEMENT_TEXT_LENGTH_MAX)
        iban = r.text(tx, f"RltdPties/{party}Acct/Id/IBAN")
        # A payment sent back (an R-transaction): why, as the ISO code or the bank's own.
        longest = limits.STATEMENT_RETURN_REASON_LENGTH_MAX
        return_reason = r.text(tx, "RtrInf/Rsn/Cd", limit=longest) or r.text(
            tx, "RtrInf/Rsn/Prtry", limit=longest
        )
        if return_reason is not None and not return_reason.isprintable():
            raise StatementMalformed(f"{where}: the return reason is not printable text")
    if remittance is None:
        remittance = r.text(ntry, "AddtlNtryInf", limit=limits.STATEMENT_TEXT_LENGTH_MAX)
    return Entry(
        amount_minor=minor,
        currency=currency,
        booking_date=_date_of(r, ntry, "BookgDt", where),
        value_date=_date_of(r, ntry, "ValDt", where),
        status=status,
        bank_reference=bank_reference or r.text(ntry, "NtryRef"),
        end_to_end_id=end_to_end,
        reference=reference,
        remittance_info=remittance,
        counterparty_name=name,
        counterparty_iban=iban,
        uetr=uetr,
        return_reason=return_reason,
    )


def _exponent(currency: str, where: str) -> None:
    try:
        Money(0, currency)
    except UnknownCurrency as exc:
        raise StatementCurrencyInvalid(f"{where}: {exc.message}") from None


def _amount(text: str | None, currency: str, where: str) -> int:
    _exponent(currency, where)
    raw = (text or "").strip()
    if not raw or len(raw) > 32:
        raise StatementAmountInvalid(f"{where}: not an amount {raw[:32]!r}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise StatementAmountInvalid(f"{where}: not an amount {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise StatementAmountInvalid(f"{where}: amounts are unsigned decimals, got {raw!r}")
    try:
        minor = Money.parse(value, currency).amount_minor
    except (AmountPrecisionExceeded, InvalidAmount):
        raise StatementAmountInvalid(
            f"{where}: {raw} has more decimals than {currency} allows"
        ) from None
    if minor > limits.AMOUNT_MAX_MINOR:
        raise StatementAmountInvalid(f"{where}: {raw} {currency} exceeds the amount limit")
    return minor


def _signed(r: _Reader, el: etree._Element, minor: int, where: str) -> int:
    indicator = r.text(el, "CdtDbtInd")
    if indicator == "CRDT":
        return minor
    if indicator == "DBIT":
        return -minor
    raise StatementMalformed(f"{where}: CdtDbtInd must be CRDT or DBIT, got {indicator!r}")


def _date_of(r: _Reader, el: etree._Element, path: str, where: str) -> date | None:
    day = r.text(el, f"{path}/Dt")
    if day is not None:
        try:
            return date.fromisoformat(day[:10])
        except ValueError:
            raise StatementMalformed(f"{where}: bad {path} date {day!r}") from None
    stamp = _datetime(r.text(el, f"{path}/DtTm"), f"{where} {path}")
    return None if stamp is None else stamp.date()


def _datetime(text: str | None, where: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StatementMalformed(f"{where}: bad date-time {text!r}") from None
