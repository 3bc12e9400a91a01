"""Card acquiring: Paykeep's side of the ISO 8583 card network (see README.md)."""
