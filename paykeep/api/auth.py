"""Who is calling, and what they may see.

Every route that takes :data:`CurrentPrincipal` is authenticated with ``Authorization: Bearer
<API key>``; a route without it is public, so public routes are the ones that visibly opt out.

Ownership rule for every object a route reads or acts on: the operator sees everything; a
merchant sees only its own objects, and another merchant's object is answered exactly like a
missing one (``404 resource_missing``) so that ids never reveal that something exists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from paykeep.api.errors import ApiKeyMissing, OperatorOnly, ResourceMissing
from paykeep.security.api_keys import ApiKeyInvalid, ApiKeyService, Principal, is_well_formed

#: OpenAPI name of the bearer scheme (``components.securitySchemes``).
SECURITY_SCHEME_NAME = "ApiKey"
SECURITY_SCHEME_DESCRIPTION = (
    "An API key as a bearer token: `Authorization: Bearer sk_test_...` (merchant) or "
    "`op_test_...` (operator)."
)


class _ApiKeyBearer(HTTPBearer):
    """FastAPI's bearer scheme (so OpenAPI declares it) with our typed errors."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials:
        authorization = request.headers.get("authorization")
        if not authorization:
            raise ApiKeyMissing("no API key: send Authorization: Bearer <key>")
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise ApiKeyMissing("no API key: send Authorization: Bearer <key>")
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=credentials)


bearer_scheme = _ApiKeyBearer(
    scheme_name=SECURITY_SCHEME_NAME,
    bearerFormat="API key",
    description=SECURITY_SCHEME_DESCRIPTION,
)


def api_key_service(request: Request) -> ApiKeyService:
    """The app's key service (``app.state.api_keys``, set by ``build_app``)."""
    service = getattr(request.app.state, "api_keys", None)
    if not isinstance(service, ApiKeyService):
        raise RuntimeError("app.state.api_keys is not set: pass api_keys= to build_app")
    return service


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer_scheme)],
) -> Principal:
    """The dependency behind :data:`CurrentPrincipal`.

    A key seen in the last seconds is answered from memory on the event loop; only a cache
    miss goes to the database, in the thread pool so the loop never waits on I/O.
    """
    plain = credentials.credentials
    if not is_well_formed(plain):
        raise ApiKeyInvalid("the API key is not valid")
    service = api_key_service(request)
    principal = service.cached(plain)
    if principal is None:
        principal = await run_in_threadpool(service.authenticate, plain)
    return principal


def require_operator(principal: Principal) -> Principal:
    """``principal`` if it is the operator; ``403 operator_only`` otherwise."""
    if principal.role != "operator":
        raise OperatorOnly("only an operator key may do this")
    return principal


def owner_filter(principal: Principal) -> str | None:
    """The merchant id every query of this principal must be restricted to (None: all)."""
    if principal.role == "operator":
        return None
    assert principal.merchant_id is not None, "a merchant principal always has a merchant"
    return principal.merchant_id


def check_owner(
    principal: Principal, merchant_id_of_object: str | None, what: str, object_id: str
) -> None:
    """Raise ``404 resource_missing`` unless ``principal`` may see the object.

    The error is the one :func:`missing` raises for an id that does not exist, word for
    word, so a merchant cannot tell "not yours" from "no such thing".
    """
    owner = owner_filter(principal)
    if owner is not None and merchant_id_of_object != owner:
        raise missing(what, object_id)


def missing(what: str, object_id: str) -> ResourceMissing:
    """The error for an object that does not exist (raise it from routes for both cases)."""
    return ResourceMissing.of(what, object_id)


async def _operator(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    return require_operator(principal)


#: Route parameter types: ``principal: CurrentPrincipal`` authenticates the request;
#: ``principal: OperatorPrincipal`` also requires an operator key.
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
OperatorPrincipal = Annotated[Principal, Depends(_operator)]
