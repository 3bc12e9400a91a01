"""Security: field encryption of personal data, API keys (see README.md)."""
