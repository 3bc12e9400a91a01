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
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from paykeep.api.errors import ApiKeyMissing, OperatorOnly, ResourceMissing
from paykeep.security.api_keys import ApiKeyInvalid, ApiKeyService, Principal, is_well_formed

#: OpenAPI name of the bearer scheme (``components.securitySchemes``).
SECURITY_SCHEME_NAME = "ApiKey"
SECURITY_SCHEME_DESCRIPTION = (
    "An API key as a bearer token: `Authorization: Bearer sk_test_...` (merchant) or "
    "`op_test_...` (operator)."
)


def api_key_service(request: Request) -> ApiKeyService:
    """The app's key service (``app.state.api_keys``, set by ``build_app``)."""
    service = getattr(request.app.state, "api_keys", None)
    if not isinstance(service, ApiKeyService):
        raise RuntimeError("app.state.api_keys is not set: pass api_keys= to build_app")
    return service


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header value; ``api_key_missing`` else."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            return credentials
    raise ApiKeyMissing("no API key: send Authorization: Bearer <key>")


class ApiKeyAuth(SecurityBase):
    """The authentication dependency: one callable that is also an OpenAPI security scheme.

    One dependency rather than a scheme plus a resolver: FastAPI's dependency resolution
    costs several microseconds per dependency per request. A key seen in the last seconds is
    answered from memory on the event loop; only a cache miss goes to the database, in the
    thread pool so the loop never waits on I/O.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="API key", description=SECURITY_SCHEME_DESCRIPTION
        )
        self.scheme_name = SECURITY_SCHEME_NAME

    async def __call__(self, request: Request) -> Principal:
        plain = bearer_key(request.headers.get("authorization"))
        if not is_well_formed(plain):
            raise ApiKeyInvalid("the API key is not valid")
        service = api_key_service(request)
        principal = service.cached(plain)
        if principal is None:
            principal = await run_in_threadpool(service.authenticate, plain)
        return principal


authenticate = ApiKeyAuth()


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


class OperatorKeyAuth(ApiKeyAuth):
    """:class:`ApiKeyAuth` that also requires the operator role (still one dependency)."""

    async def __call__(self, request: Request) -> Principal:
        return require_operator(await super().__call__(request))


authenticate_operator = OperatorKeyAuth()


#: Route parameter types: ``principal: CurrentPrincipal`` authenticates the request;
#: ``principal: OperatorPrincipal`` also requires an operator key.
CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
OperatorPrincipal = Annotated[Principal, Depends(authenticate_operator)]
