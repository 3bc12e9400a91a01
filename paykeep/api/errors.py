"""One error shape and one table from error to HTTP status.

Every error response is ``{"error": {"type", "code", "message", "param", "request_id"}}``
with ``Content-Type: application/json``. The status comes from the error's ``type`` through
:data:`STATUS_BY_TYPE` (a test fails if a registered error has a type missing from it), except
for the few codes whose HTTP meaning is more specific than their family
(:data:`STATUS_BY_CODE`: 405, 413).

Unexpected exceptions become ``500 internal_error`` with a generic message; the traceback goes
to the server log under the request id, never into the response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError
from paykeep.errors import ResourceMissing as ResourceMissing  # re-exported for the routes

log = logging.getLogger("paykeep.api")

#: Family (``PaykeepError.type``) -> HTTP status. ``insufficient_funds`` is 402 (Stripe's
#: "request failed": valid, understood, but the money is not there), and so is ``card_error``
#: (a declined card, as Stripe answers it). ``unprocessable`` (the ledger's state rejections,
#: e.g. ``pending_transfer_already_posted``, typed programmatically in ``paykeep.ledger.errors``)
#: is 422. Validation failures are 400, never 422.
STATUS_BY_TYPE: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "authentication_error": 401,
    "insufficient_funds": 402,
    "card_error": 402,
    "permission_error": 403,
    "not_found": 404,
    "conflict": 409,
    "unprocessable": 422,
    "rate_limit": 429,
    "api_error": 500,
    "unavailable": 503,
}
#: HTTP status -> family, for errors that arrive as a bare status (Starlette's own).
TYPE_BY_STATUS: Final[Mapping[int, str]] = {
    400: "invalid_request",
    401: "authentication_error",
    402: "insufficient_funds",
    403: "permission_error",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "invalid_request",
    422: "unprocessable",
    429: "rate_limit",
    503: "unavailable",
}
#: Retry-After (seconds) sent with 429 and 503: when a client should try again at the soonest.
RETRY_AFTER_S: Final = 1
JSON_MEDIA_TYPE: Final = "application/json"
REQUEST_ID_HEADER: Final = "Request-Id"


# -- the API edge's own errors ------------------------------------------------------------


class ParameterInvalid(InvalidInput):
    """A path, query, header or body field failed validation; ``param`` is its dotted path."""

    code = "parameter_invalid"


class BodyInvalidJson(InvalidInput):
    code = "body_invalid_json"


class BodyTooLarge(InvalidInput):
    code = "body_too_large"


class RouteNotFound(NotFound):
    code = "route_not_found"


class MethodNotAllowed(InvalidInput):
    code = "method_not_allowed"


class RequestFailed(InvalidInput):
    """A bare HTTP error raised by the framework with a status this table does not name."""

    code = "request_failed"


class ApiKeyMissing(PaykeepError):
    code = "api_key_missing"
    type = "authentication_error"


class OperatorOnly(PaykeepError):
    code = "operator_only"
    type = "permission_error"


class MerchantKeyRequired(PaykeepError):
    """The route acts as a merchant (creating orders, checkout sessions, tracking events,
    payouts): an operator key has no merchant to act for."""

    code = "merchant_key_required"
    type = "permission_error"


class IdempotencyKeyInvalid(InvalidInput):
    code = "idempotency_key_invalid"


class IdempotencyKeyReused(Conflict):
    """The key was used with another request (method, path or body) by the same principal."""

    code = "idempotency_key_reused"


class IdempotencyKeyInUse(Conflict):
    """A request with this key is still being processed; retry in a moment."""

    code = "idempotency_key_in_use"


class InternalError(PaykeepError):
    code = "internal_error"
    type = "api_error"


#: Codes whose status is more specific than their family's.
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    MethodNotAllowed.code: 405,
    BodyTooLarge.code: 413,
}

INTERNAL_ERROR_MESSAGE: Final = "an internal error occurred; it has been logged"


# -- rendering ------------------------------------------------------------------------------


def json_bytes(document: Any) -> bytes:
    """The one JSON encoder of the API: compact, UTF-8, no NaN (money is never a float)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class JsonResponse(Response):
    """``application/json`` rendered once with :func:`json_bytes` (bytes pass through)."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return json_bytes(content)


def status_for(error: PaykeepError | type[PaykeepError]) -> int:
    """The HTTP status of a typed error (or error class: ``code`` and ``type`` are class
    attributes); an unmapped type is a programming error -> 500."""
    by_code = STATUS_BY_CODE.get(error.code)
    if by_code is not None:
        return by_code
    return STATUS_BY_TYPE.get(error.type, 500)


def error_document(
    *, type_: str, code: str, message: str, param: str | None, request_id: str | None
) -> dict[str, Any]:
    return {
        "error": {
            "type": type_,
            "code": code,
            "message": message,
            "param": param,
            "request_id": request_id,
        }
    }


def error_body(error: PaykeepError, request_id: str | None) -> bytes:
    return json_bytes(
        error_document(
            type_=error.type,
            code=error.code,
            message=error.message,
            param=error.param,
            request_id=request_id,
        )
    )


def error_headers(status: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="paykeep"'
    elif status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return headers


def request_id_of(request: Request) -> str | None:
    """The id the request-id middleware gave this request (None outside that middleware)."""
    state = request.scope.get("state")
    if isinstance(state, dict):
        value = state.get("request_id")
        return value if isinstance(value, str) else None
    return None


def error_response(
    error: PaykeepError, request_id: str | None, headers: Mapping[str, str] | None = None
) -> Response:
    status = status_for(error)
    if status >= 500:
        # Typed 5xx errors are expected failures (database down...): logged without traceback.
        log.warning("request %s failed: %s", request_id, error)
    merged = error_headers(status)
    if headers:
        merged.update(headers)
    return Response(
        error_body(error, request_id),
        status_code=status,
        headers=merged,
        media_type=JSON_MEDIA_TYPE,
    )


def internal_error_body(request_id: str | None) -> bytes:
    return error_body(InternalError(INTERNAL_ERROR_MESSAGE), request_id)


# -- translating the framework's errors -------------------------------------------------------


def _dotted(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "items", 0, "quantity")`` -> ``items.0.quantity``; the source is dropped."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


def translate_validation_error(exc: RequestValidationError) -> PaykeepError:
    """The first problem FastAPI found, as one typed error (the first failure wins)."""
    problems = exc.errors()
    if not problems:
        return ParameterInvalid("the request is not valid")
    first = problems[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or "JSON decode error"
        return BodyInvalidJson(f"the body is not valid JSON: {detail}")
    loc = tuple(first.get("loc") or ())
    param = _dotted(loc)
    if loc == ("body",) and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return ParameterInvalid(
            "the body must be a JSON object sent with Content-Type: application/json",
            param=None,
        )
    message = str(first.get("msg") or "invalid value")
    return ParameterInvalid(f"{param or 'request'}: {message}", param=param)


def translate_http_exception(exc: StarletteHTTPException) -> PaykeepError:
    status = exc.status_code
    if status == 404:
        return RouteNotFound("no such route")
    if status == 405:
        return MethodNotAllowed("this route does not accept that method")
    if status == 413:
        return BodyTooLarge("the request body is too large")
    return RequestFailed(str(exc.detail) if exc.detail else f"HTTP {status}")


async def _on_paykeep_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PaykeepError)
    return error_response(exc, request_id_of(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(translate_validation_error(exc), request_id_of(request))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error = translate_http_exception(exc)
    request_id = request_id_of(request)
    headers = dict(exc.headers or {})  # e.g. Allow on a 405
    if isinstance(error, RequestFailed):
        # Keep the framework's status; the family follows it.
        status = exc.status_code
        type_ = TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request")
        body = json_bytes(
            error_document(
                type_=type_,
                code=error.code,
                message=error.message,
                param=None,
                request_id=request_id,
            )
        )
        headers.update(error_headers(status))
        return Response(body, status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)
    return error_response(error, request_id, headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Reached only without the request-context middleware (which catches first): a safety net.
    request_id = request_id_of(request)
    log.error("request %s failed", request_id, exc_info=exc)
    return Response(internal_error_body(request_id), status_code=500, media_type=JSON_MEDIA_TYPE)


def install_error_handlers(app: FastAPI) -> None:
    """Map typed errors, validation errors and the framework's HTTP errors to the one shape."""
    app.add_exception_handler(PaykeepError, _on_paykeep_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
