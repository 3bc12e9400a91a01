"""The HTTP API (FastAPI): thin routes over the services, on one shared foundation.

- :mod:`paykeep.api.foundation` — ``build_app``: request ids, body limit, last-resort 500,
  OpenAPI and an offline ``/docs``;
- :mod:`paykeep.api.errors` — the one error shape and the error -> HTTP status table;
- :mod:`paykeep.api.auth` — API-key authentication (``CurrentPrincipal``), ``require_operator``,
  ``owner_filter`` and ``check_owner`` (another merchant's object is a 404, like a missing one);
- :mod:`paykeep.api.idempotency` — ``Idempotency-Key``: the record commits with the effect;
- :mod:`paykeep.api.pagination` — ``limit`` / ``starting_after`` lists, newest id first.
"""
