"""banksim's ISO 8583 dialect: the issuer's side of the wire (see README, "Card network").

Defined here, independently of Paykeep's gateway spec, because banksim plays the other party:
if the two disagree, the tests over real TCP find it. ASCII fields, a binary primary bitmap,
a binary secondary bitmap (only field 70/90 need it); framing is a 2-byte big-endian length.

Private field 48 carries tag-length-value subelements: ``CV`` + two-digit length + the card
security code (CVV2/CVC2/CID, 3 or 4 digits), present only on 0100 and one-step 0200 sales.
"""

from __future__ import annotations

from typing import Any, Final

_N = {"data_enc": "ascii", "len_enc": "ascii"}

SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": {**_N, "len_type": 0, "max_len": 0, "desc": "Message Header"},
    "t": {**_N, "len_type": 0, "max_len": 4, "desc": "Message Type"},
    "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap 2"},
    "2": {**_N, "len_type": 2, "max_len": 19, "desc": "PAN"},
    "3": {**_N, "len_type": 0, "max_len": 6, "desc": "Processing Code"},
    "4": {**_N, "len_type": 0, "max_len": 12, "desc": "Amount, Transaction"},
    "7": {**_N, "len_type": 0, "max_len": 10, "desc": "Transmission Date and Time"},
    "11": {**_N, "len_type": 0, "max_len": 6, "desc": "STAN"},
    "12": {**_N, "len_type": 0, "max_len": 6, "desc": "Time, Local Transaction"},
    "13": {**_N, "len_type": 0, "max_len": 4, "desc": "Date, Local Transaction"},
    "14": {**_N, "len_type": 0, "max_len": 4, "desc": "Date, Expiration (YYMM)"},
    "37": {**_N, "len_type": 0, "max_len": 12, "desc": "RRN"},
    "38": {**_N, "len_type": 0, "max_len": 6, "desc": "Authorization ID Response"},
    "39": {**_N, "len_type": 0, "max_len": 2, "desc": "Response Code"},
    "41": {**_N, "len_type": 0, "max_len": 8, "desc": "Card Acceptor Terminal ID"},
    "42": {**_N, "len_type": 0, "max_len": 15, "desc": "Card Acceptor ID Code"},
    "48": {**_N, "len_type": 3, "max_len": 99, "desc": "Additional Data - Private (TLV)"},
    "49": {**_N, "len_type": 0, "max_len": 3, "desc": "Currency Code, Transaction"},
    "70": {**_N, "len_type": 0, "max_len": 3, "desc": "Network Management Information Code"},
    "90": {**_N, "len_type": 0, "max_len": 42, "desc": "Original Data Elements"},
}
