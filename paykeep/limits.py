"""Every bound in Paykeep, named once (TigerBeetle style: a limit on everything)."""

from __future__ import annotations

from typing import Final

#: Largest id a client may choose for an account or a transfer (ids are positive BIGINTs).
ID_MAX: Final = 2**63 - 1
#: Largest single transfer, in minor units: 10^15 (ten trillion units of a 2-decimal currency).
#: Keeps any realistic sum of balances far below the BIGINT ceiling.
AMOUNT_MAX_MINOR: Final = 10**15
#: A balance column never exceeds this (BIGINT); crossing it is an ``overflows_*`` result.
BALANCE_MAX_MINOR: Final = 2**63 - 1
#: Account and transfer codes are small user-defined kinds (as in TigerBeetle's u16 code).
CODE_MAX: Final = 65_535
#: Items in one ``create_transfers`` / ``create_accounts`` call.
BATCH_SIZE_MAX: Final = 8_190
#: Longest hold a pending transfer may request (30 days).
HOLD_TIMEOUT_MAX_S: Final = 30 * 24 * 3600
#: Metadata stored with an account or transfer: serialized JSON size and key count.
METADATA_BYTES_MAX: Final = 2_048
METADATA_KEYS_MAX: Final = 32
#: Optional unique reference and account name length.
REFERENCE_LENGTH_MAX: Final = 128
ACCOUNT_NAME_LENGTH_MAX: Final = 128
#: Pagination.
PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 1_000
#: Group commit: how many single-transfer requests are coalesced into one database transaction,
#: and how long a request may wait in the queue before its caller gets a timeout error.
GROUP_COMMIT_BATCH_MAX: Final = 4_096
GROUP_COMMIT_QUEUE_MAX: Final = 65_536
GROUP_COMMIT_WAIT_S: Final = 30.0
#: How long the group committer waits for more callers once one has arrived (a fraction of
#: one fsync, which then serves them all).
GROUP_COMMIT_LINGER_S: Final = 0.001
#: How long a database writer waits for a lock before giving up.
DB_LOCK_TIMEOUT_S: Final = 30.0
#: Expired-hold sweep: holds voided per transaction.
EXPIRY_SWEEP_BATCH: Final = 1_000
