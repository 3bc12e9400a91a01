"""The card vault: card numbers encrypted at rest and replaced by tokens (see cards/README.md)."""
