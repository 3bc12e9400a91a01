"""A simulated bank and card network: a separate process; nothing in paykeep imports it."""
