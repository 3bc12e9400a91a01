"""Lists: limit bounds, has_more at the edges, cursors, over HTTP and against both databases."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.api.pagination import PageParams, keyset_clause, page_document
from paykeep.db import Database
from tests.api_foundation.conftest import ApiServer

_INSERT = sa.text("INSERT INTO payments_outbox_cursor (name, seq) VALUES (:name, :seq)")


def _seed(database: Database, names: list[str]) -> None:
    if not names:
        return
    with database.write() as conn:
        conn.execute(_INSERT, [{"name": name, "seq": i} for i, name in enumerate(names)])


def _group(api_server: ApiServer, count: int) -> tuple[str, list[str]]:
    group = "pg" + uuid.uuid4().hex[:12]
    names = [f"{group}_{i:03d}" for i in range(count)]
    _seed(api_server.database, names)
    return group, sorted(names, reverse=True)


def _page(http: httpx.Client, group: str, **params: Any) -> httpx.Response:
    return http.get(f"/v1/groups/{group}/counters", params=params)


def _walk(http: httpx.Client, group: str, **params: Any) -> list[dict[str, Any]]:
    pages = []
    cursor = None
    while True:
        extra = dict(params) | ({"starting_after": cursor} if cursor else {})
        response = _page(http, group, **extra)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        if not page["has_more"]:
            return pages
        cursor = page["data"][-1]["id"]


def test_default_limit_and_the_walk_through_all_pages(api_server: ApiServer) -> None:
    group, expected = _group(api_server, 25)
    with api_server.client(api_server.merchant_key()) as http:
        pages = _walk(http, group)
    assert [len(p["data"]) for p in pages] == [10, 10, 5]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert [item["id"] for p in pages for item in p["data"]] == expected
    first = pages[0]
    assert first["object"] == "list" and first["url"] == f"/v1/groups/{group}/counters"
    assert set(first) == {"object", "data", "has_more", "url"}


@pytest.mark.parametrize(
    ("limit", "sizes"),
    [(1, [1] * 6), (5, [5, 1]), (6, [6]), (7, [6]), (100, [6])],
)
def test_has_more_at_the_edges(api_server: ApiServer, limit: int, sizes: list[int]) -> None:
    group, expected = _group(api_server, 6)
    with api_server.client(api_server.merchant_key()) as http:
        pages = _walk(http, group, limit=limit)
    assert [len(p["data"]) for p in pages] == sizes
    assert [p["has_more"] for p in pages] == [True] * (len(sizes) - 1) + [False]
    assert [item["id"] for p in pages for item in p["data"]] == expected


def test_cursors_are_bounds(api_server: ApiServer) -> None:
    group, expected = _group(api_server, 4)  # ..._003 ... _000
    with api_server.client(api_server.merchant_key()) as http:
        after_last = _page(http, group, starting_after=expected[-1]).json()
        between = _page(http, group, starting_after=f"{group}_0015").json()  # never existed
        above_all = _page(http, group, starting_after=f"{group}_999").json()
        empty = _page(http, "pg" + uuid.uuid4().hex[:12]).json()
    assert after_last["data"] == [] and after_last["has_more"] is False
    assert [i["id"] for i in between["data"]] == [f"{group}_001", f"{group}_000"]
    assert [i["id"] for i in above_all["data"]] == expected
    assert empty["data"] == [] and empty["has_more"] is False


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"starting_after": ""}, "starting_after"),
        ({"starting_after": "x" * 41}, "starting_after"),
        ({"starting_after": "ord 1"}, "starting_after"),
        ({"starting_after": "ord'1"}, "starting_after"),
    ],
)
def test_bad_page_parameters(api_server: ApiServer, params: dict[str, Any], param: str) -> None:
    with api_server.client(api_server.merchant_key()) as http:
        response = _page(http, "pgany", **params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "parameter_invalid" and error["param"] == param


def test_page_document_refuses_more_than_limit_plus_one() -> None:
    params = PageParams(limit=2, starting_after=None, url="/v1/x")
    assert page_document(params, [1, 2, 3], lambda r: {"id": r})["has_more"] is True
    assert page_document(params, [1, 2], lambda r: {"id": r})["has_more"] is False
    with pytest.raises(AssertionError):
        page_document(params, [1, 2, 3, 4], lambda r: {"id": r})
    assert keyset_clause(params) == ""
    assert keyset_clause(PageParams(2, "a", "/"), "name") == " AND name < :starting_after"


_ids = st.lists(
    st.text("abcXYZ019_-", min_size=1, max_size=8), min_size=0, max_size=30, unique=True
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=_ids, limit=st.integers(1, 7))
def test_keyset_walk_returns_every_row_once_in_the_databases_order(
    database: Database, ids: list[str], limit: int
) -> None:
    group = "h" + uuid.uuid4().hex[:10] + "/"
    _seed(database, [group + i for i in ids])
    select = "SELECT name, seq FROM payments_outbox_cursor WHERE name LIKE :group"
    with database.read() as conn:
        everything = (
            conn.execute(sa.text(select + " ORDER BY name DESC"), {"group": group + "%"})
            .scalars()
            .all()
        )
    walked: list[str] = []
    cursor: str | None = None
    for _ in range(len(ids) + 2):
        params = PageParams(limit=limit, starting_after=cursor, url="/")
        sql = sa.text(select + keyset_clause(params, "name") + " ORDER BY name DESC LIMIT :fetch")
        with database.read() as conn:
            rows = conn.execute(sql, {"group": group + "%", **params.sql_params()}).all()
        page = page_document(params, rows, lambda row: {"id": row.name})
        walked += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["id"]
    assert walked == list(everything)
    assert sorted(walked) == sorted(group + i for i in ids)
