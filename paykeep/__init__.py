"""Paykeep: a third-party payment platform for e-commerce marketplaces."""

__version__ = "0.1.0"
