"""Lists: ``?limit=`` (1-100, default 10) and ``?starting_after=<object id>``.

The rule, for every list: objects are ordered by ``id`` **descending** (our ids are
time-ordered strings such as ``ord_...``, so this is newest first), and a page after
``starting_after`` holds the ids strictly below it::

    SELECT ... WHERE <owner filter> AND id < :starting_after ORDER BY id DESC LIMIT :fetch

with ``:fetch`` = ``limit + 1``: the extra row only says whether there is a next page
(``has_more``) and is never returned. ``starting_after`` is a bound, not a reference: it need
not exist nor be visible to the caller (it is compared, never looked up, so it reveals
nothing), and rows inserted while a client pages are either on a later page or above its
cursor — never duplicated, never skipped among the rows that existed when it started.

Ordering is the database's string order. SQLite compares bytes; PostgreSQL uses the column's
collation — ``C`` here, but a locale collation orders mixed case and punctuation differently.
Pagination stays correct either way (``<`` and ``ORDER BY`` use the same collation); "newest
first" needs ids of one case and alphabet whose byte order is their time order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

from fastapi import Depends, Query, Request
from starlette.responses import Response

from paykeep.api.errors import JSON_MEDIA_TYPE, json_bytes

PAGE_LIMIT_DEFAULT: Final = 10
PAGE_LIMIT_MAX: Final = 100
#: Longest object id a cursor may be (the widest id column is String(40)).
CURSOR_LENGTH_MAX: Final = 40
#: Object ids are prefixed url-safe tokens: letters, digits, ``_`` and ``-``.
CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]+$"

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    starting_after: str | None
    #: The list's path, echoed as ``url`` in the response.
    url: str

    @property
    def fetch(self) -> int:
        """Rows to fetch: one more than the page, to learn ``has_more``."""
        return self.limit + 1

    def sql_params(self) -> dict[str, Any]:
        """Bind parameters for the rule's query (``starting_after`` may be None: no bound)."""
        return {"starting_after": self.starting_after, "fetch": self.fetch}


async def page_params(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=PAGE_LIMIT_MAX, description="Objects per page (1-100).")
    ] = PAGE_LIMIT_DEFAULT,
    starting_after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=CURSOR_LENGTH_MAX,
            pattern=CURSOR_PATTERN,
            description="The id of the last object of the previous page.",
        ),
    ] = None,
) -> PageParams:
    # async: a plain function would be run in the thread pool for nothing.
    return PageParams(limit=limit, starting_after=starting_after, url=request.url.path)


#: ``page: Page`` in a list route.
Page = Annotated[PageParams, Depends(page_params)]


def keyset_clause(params: PageParams, column: str = "id") -> str:
    """``AND <column> < :starting_after`` when there is a cursor, else "" (column is ours)."""
    return f" AND {column} < :starting_after" if params.starting_after is not None else ""


def page_document(
    params: PageParams, rows: Sequence[R], render: Callable[[R], Mapping[str, Any]]
) -> dict[str, Any]:
    """The list object from rows fetched with ``LIMIT params.fetch`` in ``id DESC`` order."""
    assert len(rows) <= params.fetch, "fetched more rows than limit + 1"
    has_more = len(rows) > params.limit
    page: Iterable[R] = rows[: params.limit]
    return {
        "object": "list",
        "data": [render(row) for row in page],
        "has_more": has_more,
        "url": params.url,
    }


def page_response(
    params: PageParams, rows: Sequence[R], render: Callable[[R], Mapping[str, Any]]
) -> Response:
    """:func:`page_document` rendered once as a JSON response."""
    return Response(json_bytes(page_document(params, rows, render)), media_type=JSON_MEDIA_TYPE)
