"""ISO 20022 pain.001 schemas the bank validates against (package data)."""
