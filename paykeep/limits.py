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
#: Journal rows a writer leaves out of the per-account index (``ledger_postings``) before it
#: merges them in, sorted, in one statement. Queries scan this tail by sequence number.
POSTINGS_TAIL_MAX: Final = 32_768
#: Expired-hold sweep: holds voided per transaction.
EXPIRY_SWEEP_BATCH: Final = 1_000

# --- Gateway: cards (gateway.cards, gateway.vault, the banksim card network) ----------------
#: ISO 8583 frames: a 2-byte big-endian length prefix; our messages are a few hundred bytes.
CARD_FRAME_BYTES_MAX: Final = 2_048
#: Field 4 holds 12 digits: the largest card amount in minor units.
CARD_AMOUNT_MAX_MINOR: Final = 999_999_999_999
#: Connecting to the card network, and waiting for one response after sending a request.
CARD_CONNECT_TIMEOUT_S: Final = 5.0
CARD_CALL_TIMEOUT_S: Final = 5.0
#: Reversals after a timeout: attempts per call (then the recovery sweep takes over), and the
#: wait for each 0410.
CARD_REVERSAL_ATTEMPTS_MAX: Final = 3
CARD_REVERSAL_TIMEOUT_S: Final = 2.0
#: Connections in the acquirer client's pool, and requests in flight on one connection.
CARD_POOL_SIZE_MAX: Final = 32
CARD_INFLIGHT_PER_CONNECTION_MAX: Final = 1_024
#: Caller-supplied payment ids, acquirer names, terminal and acceptor ids.
CARD_PAYMENT_ID_LENGTH_MAX: Final = 64
CARD_ACQUIRER_LENGTH_MAX: Final = 32
#: Recovery sweep: payments examined per run; an in-flight payment younger than this is left
#: to the call that owns it.
CARD_RECOVERY_BATCH: Final = 100
CARD_RECOVERY_MIN_AGE_S: Final = 2 * CARD_CALL_TIMEOUT_S
#: Refunds to the card (payments' worker pass): intents sent per pass, and gateway attempts
#: per intent when the network was unavailable or the refund timed out and was reversed —
#: after the last, the money stays in the buyer's wallet and an event says so.
CARD_REFUND_BATCH: Final = 100
CARD_REFUND_ATTEMPTS_MAX: Final = 3
#: Times an operator may send a failed card refund again (each a new round of attempts).
CARD_REFUND_RETRIES_MAX: Final = 5
#: A buyer's withdrawal to the card: card refunds (one per capture it goes back to, the
#: newest that have something left) one withdrawal may be split into. A larger amount spread
#: over older captures is asked for again, in another withdrawal.
CARD_WITHDRAWAL_REFUNDS_MAX: Final = 20
#: Vault: PAN lengths (ISO/IEC 7812), keys (AES-256-GCM, HMAC-SHA256), tokens re-encrypted per
#: rotation batch.
PAN_LENGTH_MIN: Final = 12
PAN_LENGTH_MAX: Final = 19
VAULT_KEY_BYTES: Final = 32
VAULT_REENCRYPT_BATCH: Final = 500
#: banksim card network: cards it may hold, authorisations it remembers (oldest dropped),
#: fault rules, and the longest injected delay.
BANKSIM_CARDS_MAX: Final = 100_000
BANKSIM_AUTH_LOG_MAX: Final = 100_000
#: banksim's saved card state (cards, holds, captures): refused beyond this at start.
BANKSIM_CARD_STATE_BYTES_MAX: Final = 256 * 1024 * 1024
BANKSIM_FAULTS_MAX: Final = 64
BANKSIM_FAULT_DELAY_MAX_S: Final = 120.0
BANKSIM_CONNECTIONS_MAX: Final = 256
#: Benchmark: authorisations per run and concurrency.
BENCH_CARD_AUTHS_MAX: Final = 1_000_000
BENCH_CARD_CONCURRENCY_MAX: Final = 256

# --- gateway payouts (pain.001) and the banksim bank ------------------------------------------
#: Payouts in one pain.001 batch file (one bank submission).
PAYOUT_BATCH_SIZE_MAX: Final = 1_000
#: Largest single payout, in minor units (100,000.00 of a 2-decimal currency).
PAYOUT_AMOUNT_MAX_MINOR: Final = 10_000_000
#: Client-chosen payout request id (idempotency key) and merchant reference lengths.
PAYOUT_REQUEST_ID_LENGTH_MAX: Final = 64
PAYOUT_MERCHANT_REF_LENGTH_MAX: Final = 64
#: Creditor name (pain.001 Max70Text) and remittance text (Max140Text).
PAYOUT_CREDITOR_NAME_LENGTH_MAX: Final = 70
PAYOUT_REMITTANCE_LENGTH_MAX: Final = 140
#: HTTP submission of a payout file to the bank: connect/read timeout.
PAYOUT_SUBMIT_TIMEOUT_S: Final = 10.0
#: Size of a bank's answer we are willing to read.
PAYOUT_BANK_RESPONSE_BYTES_MAX: Final = 1_048_576
#: A settled payout the payee's bank sends back is applied by Paykeep when the credit is the
#: whole amount or short by at most this much (the fee the payee's bank kept: a few euros for
#: a SEPA return; 25.00 of a two-decimal currency, the only kind payouts use). A larger
#: shortfall, or more than was paid, stays a statement break for a person.
PAYOUT_RETURN_FEE_MAX_MINOR: Final = 2_500
#: banksim bank: largest request body (a payment file), transactions per file, accounts,
#: entries in one statement, text fields (names, references).
BANK_REQUEST_BYTES_MAX: Final = 5 * 1_048_576
BANK_FILE_TRANSACTIONS_MAX: Final = 10_000
BANK_ACCOUNTS_MAX: Final = 10_000
BANK_STATEMENT_ENTRIES_MAX: Final = 10_000
BANK_TEXT_LENGTH_MAX: Final = 140
#: banksim bank: largest JSON request body (account, incoming transfer, faults).
BANK_JSON_BYTES_MAX: Final = 65_536
#: banksim bank: largest opening balance or incoming transfer, in minor units.
BANK_AMOUNT_MAX_MINOR: Final = 10**15

# --- gateway.statements: bank statement import (camt.05x, MT940/MT942) ---------------------
#: Largest statement file accepted (bytes), checked before any parsing.
STATEMENT_FILE_BYTES_MAX: Final = 32 * 1024 * 1024
#: Statements (camt Stmt/Rpt/Ntfctn, MT940 messages) in one file.
STATEMENTS_PER_FILE_MAX: Final = 1_000
#: Entries in one file, all statements together.
STATEMENT_ENTRIES_MAX: Final = 200_000
#: Longest identifier or reference read from a statement (ISO 20022 Max35Text/Max140Text).
STATEMENT_REFERENCE_LENGTH_MAX: Final = 140
#: Longest free text kept from a statement line (remittance information, names).
STATEMENT_TEXT_LENGTH_MAX: Final = 2_048
#: Words of a free-text remittance tried as references: at most this many, each at least
#: this long (shorter words are never our references) and at most a SEPA reference's 35.
STATEMENT_REMITTANCE_WORDS_MAX: Final = 32
STATEMENT_REMITTANCE_WORD_MIN: Final = 4
SEPA_REFERENCE_LENGTH_MAX: Final = 35
#: Ledger legs one expected movement may post when its line matches.
STATEMENT_EXPECTATION_LEGS_MAX: Final = 8
#: Open reconciliation breaks listed in one page.
STATEMENT_BREAKS_PAGE_MAX: Final = 1_000
#: A break's resolution: who resolved it (an operator id) and why, in words.
STATEMENT_ACTOR_LENGTH_MAX: Final = 64
STATEMENT_RESOLUTION_NOTE_LENGTH_MAX: Final = 2_000
#: Return payouts one break may send to its sender: the first return and the operator's
#: retries after the bank rejected or sent back the earlier ones. After the last, the money
#: stays in ``suspense:unidentified`` until the break is matched or explained.
STATEMENT_RETURN_ATTEMPTS_MAX: Final = 3
#: Open breaks one payouts pass examines for a return payout the payee's bank sent back.
STATEMENT_BOUNCE_SCAN_MAX: Final = 1_000
#: Worker passes, one item at a time (``paykeep.db.quarantine``): an item whose handling fails
#: unexpectedly is tried again after each of these waits, and parked for an operator at the
#: failure after the last (``WORKER_ITEM_FAILURES_MAX``, the wait list's length + 1).
WORKER_ITEM_BACKOFF_S: Final = (30, 120, 600, 1_800)
WORKER_ITEM_FAILURES_MAX: Final = len(WORKER_ITEM_BACKOFF_S) + 1
#: Failure records one pass loads (the items it leaves alone); more parked items than this is
#: an incident an operator is already being told about.
WORKER_ITEM_FAILURES_LOADED_MAX: Final = 1_000
#: How often a pass with parked items says so again in the log.
WORKER_PARKED_REPORT_S: Final = 300
#: A failure record of an item not seen failing again for this long is purged (the item was
#: handled by another worker, or left the pass's query): parked ones are kept.
WORKER_ITEM_FAILURE_KEEP_S: Final = 7 * 24 * 3600
#: A statement line's return reason (camt ``RtrInf/Rsn``: an ISO code is 4 characters, a
#: bank's proprietary one at most 35).
STATEMENT_RETURN_REASON_LENGTH_MAX: Final = 35
