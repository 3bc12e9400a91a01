"""Paykeep's ISO 8583 dialect towards the card network, and the 2-byte length framing.

ASCII fields with a binary bitmap. Private field 48 carries tag-length-value subelements; tag
``CV`` (two-digit length) is the card security code, present only on 0100 and one-step 0200
sales and never written anywhere else. Field 90 (original data elements, 42 digits) is the
original MTI (4), STAN (6), transmission date and time (10) and 22 zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import iso8583
from iso4217 import Currency

from paykeep import limits
from paykeep.gateway.cards.errors import CardProtocolError

_A = {"data_enc": "ascii", "len_enc": "ascii"}

SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": {**_A, "len_type": 0, "max_len": 0, "desc": "Message Header"},
    "t": {**_A, "len_type": 0, "max_len": 4, "desc": "Message Type Indicator"},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap 2"},
    "2": {**_A, "len_type": 2, "max_len": 19, "desc": "Primary Account Number"},
    "3": {**_A, "len_type": 0, "max_len": 6, "desc": "Processing Code"},
    "4": {**_A, "len_type": 0, "max_len": 12, "desc": "Amount, Transaction (minor units)"},
    "7": {**_A, "len_type": 0, "max_len": 10, "desc": "Transmission Date and Time MMDDhhmmss"},
    "11": {**_A, "len_type": 0, "max_len": 6, "desc": "System Trace Audit Number"},
    "12": {**_A, "len_type": 0, "max_len": 6, "desc": "Local Transaction Time hhmmss"},
    "13": {**_A, "len_type": 0, "max_len": 4, "desc": "Local Transaction Date MMDD"},
    "14": {**_A, "len_type": 0, "max_len": 4, "desc": "Expiration Date YYMM"},
    "37": {**_A, "len_type": 0, "max_len": 12, "desc": "Retrieval Reference Number"},
    "38": {**_A, "len_type": 0, "max_len": 6, "desc": "Authorisation Code"},
    "39": {**_A, "len_type": 0, "max_len": 2, "desc": "Response Code"},
    "41": {**_A, "len_type": 0, "max_len": 8, "desc": "Terminal ID"},
    "42": {**_A, "len_type": 0, "max_len": 15, "desc": "Card Acceptor ID"},
    "48": {**_A, "len_type": 3, "max_len": 99, "desc": "Private: TLV, CV = security code"},
    "49": {**_A, "len_type": 0, "max_len": 3, "desc": "Currency Code (ISO 4217 numeric)"},
    "70": {**_A, "len_type": 0, "max_len": 3, "desc": "Network Management Code"},
    "90": {**_A, "len_type": 0, "max_len": 42, "desc": "Original Data Elements"},
}

#: Request MTI -> response MTI.
RESPONSE_MTI: Final = {"0100": "0110", "0200": "0210", "0400": "0410", "0800": "0810"}
PROCESSING_PURCHASE: Final = "000000"
#: Field 3 of a refund (credit to the card): ISO 8583 transaction type 20, "returns".
PROCESSING_REFUND: Final = "200000"
NETWORK_ECHO: Final = "301"

Message = dict[str, str]


def encode(message: Mapping[str, str]) -> bytes:
    """One framed message: 2-byte big-endian length + the ISO 8583 bytes."""
    try:
        raw, _ = iso8583.encode(dict(message), SPEC)
    except (iso8583.EncodeError, KeyError, ValueError, TypeError) as exc:
        raise CardProtocolError(f"cannot encode an ISO 8583 message: {exc}") from None
    if len(raw) > limits.CARD_FRAME_BYTES_MAX:
        raise CardProtocolError("ISO 8583 message larger than CARD_FRAME_BYTES_MAX")
    return len(raw).to_bytes(2, "big") + bytes(raw)


def decode(body: bytes) -> Message:
    """An unframed message body -> its fields (bitmaps dropped). Bad bytes: a typed error."""
    try:
        decoded, _ = iso8583.decode(bytes(body), SPEC)
    except (iso8583.DecodeError, KeyError, ValueError, TypeError, IndexError) as exc:
        # The text names positions and lengths only, never field contents.
        raise CardProtocolError(f"undecodable ISO 8583 message ({type(exc).__name__})") from None
    return {k: v for k, v in decoded.items() if k not in ("p", "1")}


def currency_numeric(currency: str) -> str:
    return f"{Currency(currency).number:03d}"


def security_code_field(security_code: str) -> str:
    return f"CV{len(security_code):02d}{security_code}"


def original_data_elements(mti: str, stan: str, transmitted: str) -> str:
    return f"{mti}{stan}{transmitted}" + "0" * 22
