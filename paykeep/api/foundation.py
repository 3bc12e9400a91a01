"""``build_app``: the FastAPI application every Paykeep API starts from.

It installs, in this order from the outside in:

- :class:`RequestContextMiddleware` (pure ASGI, a few microseconds a request): gives each
  request an id (``req_`` + token) echoed in the ``Request-Id`` header and in error bodies,
  refuses bodies over the limit (``413 body_too_large``: by ``Content-Length`` before the app
  runs, and by counting the bytes actually read, for chunked bodies and lying headers), and
  turns any exception that escapes the app into ``500 internal_error`` with the traceback in
  the server log only;
- the error handlers of :mod:`paykeep.api.errors` (one error shape, one status table);
- ``/openapi.json`` with the bearer scheme declared and validation failures documented as
  ``400`` with the error shape;
- ``/docs``: FastAPI's interactive page loads its script from a CDN, and this machine has no
  network, so ``/docs`` is a small self-contained HTML list of the operations instead.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paykeep.api.auth import SECURITY_SCHEME_DESCRIPTION, SECURITY_SCHEME_NAME
from paykeep.api.errors import (
    REQUEST_ID_HEADER,
    BodyTooLarge,
    JsonResponse,
    error_body,
    install_error_handlers,
    internal_error_body,
)
from paykeep.ids import new_token
from paykeep.security.api_keys import ApiKeyService

log = logging.getLogger("paykeep.api")

#: Largest request body accepted by default (our JSON requests are a few hundred bytes).
BODY_BYTES_MAX: Final = 64 * 1024
REQUEST_ID_PREFIX: Final = "req_"
#: 12 random bytes: unique enough to find one request in the logs, cheap to make.
REQUEST_ID_RANDOM_BYTES: Final = 12
OPENAPI_URL: Final = "/openapi.json"
DOCS_URL: Final = "/docs"

_NO_TELEMETRY: Final[TelemetryConfig] = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
_REQUEST_ID_HEADER_BYTES: Final = REQUEST_ID_HEADER.lower().encode()
_JSON_HEADER: Final = (b"content-type", b"application/json")
_HTTP_METHODS: Final = ("get", "post", "put", "patch", "delete")


class _BodyTooLargeSignal(Exception):
    """Raised from ``receive`` when the body crosses the limit; the middleware answers 413."""


class RequestContextMiddleware:
    """Request id, body size limit and the last-resort 500 (see module doc)."""

    def __init__(self, app: ASGIApp, body_bytes_max: int = BODY_BYTES_MAX) -> None:
        if body_bytes_max < 0:
            raise ValueError("body_bytes_max must not be negative")
        self.app = app
        self.body_bytes_max = body_bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_token(REQUEST_ID_PREFIX, REQUEST_ID_RANDOM_BYTES)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (_REQUEST_ID_HEADER_BYTES, request_id.encode())
        limit = self.body_bytes_max

        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _send_error(send, 413, _too_large_body(limit, request_id), id_header)
                    return
                break

        received = 0
        too_large = False
        started = False

        async def receive_limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLargeSignal
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if too_large:
                    return  # the app's answer to a body it could not read is replaced below
                started = True
                message["headers"] = [*message.get("headers", ()), id_header]
            elif too_large and not started:
                return
            await send(message)

        try:
            await self.app(scope, receive_limited, send_with_id)
        except Exception:
            if started:
                log.exception("request %s failed after its response started", request_id)
                raise
            if not too_large:
                log.exception("request %s failed", request_id)
                await _send_error(send, 500, internal_error_body(request_id), id_header)
                return
        if too_large and not started:
            await _send_error(send, 413, _too_large_body(limit, request_id), id_header)


def _too_large_body(limit: int, request_id: str) -> bytes:
    return error_body(BodyTooLarge(f"the request body is larger than {limit} bytes"), request_id)


async def _send_error(send: Send, status: int, body: bytes, id_header: tuple[bytes, bytes]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                _JSON_HEADER,
                (b"content-length", str(len(body)).encode()),
                id_header,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- OpenAPI and /docs ------------------------------------------------------------------------

_ERROR_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "code", "message", "param", "request_id"],
            "properties": {
                "type": {"type": "string", "description": "The family: invalid_request..."},
                "code": {"type": "string", "description": "Stable, one per kind of error."},
                "message": {"type": "string", "description": "For people."},
                "param": {"type": ["string", "null"], "description": "The field at fault."},
                "request_id": {"type": "string"},
            },
        }
    },
}


def _openapi_document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).setdefault(
        SECURITY_SCHEME_NAME,
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key",
            "description": SECURITY_SCHEME_DESCRIPTION,
        },
    )
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = dict(_ERROR_SCHEMA)
    error_ref = {
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    # FastAPI documents validation failures as 422 with its own shape; ours are 400.
    for path_item in document.get("paths", {}).values():
        for method in _HTTP_METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error_ref)
            if "security" in operation:
                responses.setdefault("401", error_ref)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def _docs_page(document: Mapping[str, Any]) -> str:
    rows = []
    for path, path_item in sorted(document.get("paths", {}).items()):
        for method in _HTTP_METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            summary = operation.get("summary") or operation.get("operationId") or ""
            secured = "key" if operation.get("security") else "public"
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(str(summary))}</td><td>{secured}</td></tr>"
            )
    title = html.escape(f"{document['info']['title']} {document['info']['version']}")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>body{{font:15px system-ui,sans-serif;margin:2em}}"
        "td,th{padding:.2em .8em;text-align:left}tr:nth-child(even){background:#f4f4f4}"
        f"</style></head><body><h1>{title}</h1><p>The machine-readable description is "
        f'<a href="{OPENAPI_URL}">{OPENAPI_URL}</a>. Authenticate with '
        "<code>Authorization: Bearer &lt;API key&gt;</code>.</p><table><tr><th>method</th>"
        "<th>path</th><th>summary</th><th>auth</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def build_app(
    title: str,
    version: str,
    *,
    api_keys: ApiKeyService | None = None,
    body_bytes_max: int = BODY_BYTES_MAX,
    description: str = "",
) -> FastAPI:
    """A FastAPI app with the request-context middleware, the error handlers, OpenAPI at
    ``/openapi.json``, the offline ``/docs`` page and (when given) the API key service that
    :data:`paykeep.api.auth.CurrentPrincipal` authenticates against."""
    app = FastAPI(
        title=title,
        version=version,
        description=description,
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        default_response_class=JsonResponse,
        # Paykeep installs no OpenTelemetry provider. Left on, FastAPI's native telemetry
        # asks OpenTelemetry for its three global providers on every request (each an
        # environment look-up) only to find none: 4% of the API process's interpreter time
        # under the money-moving benchmark.
        telemetry=_NO_TELEMETRY,
    )
    if api_keys is not None:
        app.state.api_keys = api_keys
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, body_bytes_max=body_bytes_max)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(DOCS_URL, include_in_schema=False, response_class=HTMLResponse)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(_docs_page(request.app.openapi()))

    return app
