"""Server-rendered pages: the buyer's hosted checkout (``checkout``)."""

from paykeep.web.checkout import SecretsFilter, checkout_router

__all__ = ["SecretsFilter", "checkout_router"]
