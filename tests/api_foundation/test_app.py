"""build_app: OpenAPI (bearer scheme, 400 instead of 422) and the offline /docs page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from opentelemetry import _logs as otel_logs
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from starlette.testclient import TestClient

from paykeep.api.foundation import build_app
from tests.api_foundation.conftest import ApiServer


def test_openapi_declares_the_bearer_scheme_and_our_error_shape(api_server: ApiServer) -> None:
    with api_server.client() as http:
        response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "Error" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    increment = document["paths"]["/v1/counters/{name}/increment"]["post"]
    assert increment["security"] == [{"ApiKey": []}]
    assert "422" not in increment["responses"]
    assert {"400", "401"} <= set(increment["responses"])
    public = document["paths"]["/v1/echo"]["post"]
    assert "security" not in public
    listing = document["paths"]["/v1/groups/{group}/counters"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100 and limit["schema"]["default"] == 10
    assert "/docs" not in document["paths"]


def test_docs_is_a_self_contained_page(api_server: ApiServer) -> None:
    with api_server.client() as http:
        response = http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/v1/counters/{name}/increment" in page and "/openapi.json" in page
    # Nothing is loaded from elsewhere: no scripts, no external stylesheets or images.
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"https?://", page)


def test_a_request_asks_opentelemetry_for_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI's native telemetry is off: with it on, every request asks OpenTelemetry for its
    global providers (environment look-ups), a cost on the money path for nothing here."""
    asked: list[str] = []
    for module, name in (
        (otel_trace, "get_tracer_provider"),
        (otel_metrics, "get_meter_provider"),
        (otel_logs, "get_logger_provider"),
    ):
        original = getattr(module, name)

        def recording(original: Any = original, name: str = name) -> Any:
            asked.append(name)
            return original()

        monkeypatch.setattr(module, name, recording)
    client = TestClient(build_app("Telemetry", "1"))
    for _ in range(3):
        assert client.get("/docs").status_code == 200
    assert asked == []
