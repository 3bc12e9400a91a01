"""Background work: webhook delivery from the payments outbox (``paykeep.workers.webhooks``).

Workers are an edge like the API: they call services and read the outbox; no context imports
them.
"""
