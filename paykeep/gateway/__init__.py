"""The bank side: card acquiring (ISO 8583), card vault, payout files, statement import."""
