"""The double-entry ledger: accounts, transfers, holds, linked chains, hash-chained journal."""
