"""Payouts: merchants' withdrawals, batched into pain.001 files and settled by the statement."""
