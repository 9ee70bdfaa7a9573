"""Bearer-token protection of the endpoints that change something; secure by default: with no
``RECSYS_API_TOKEN`` set they answer 403 and say how to enable them."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.service import service_of

bearer = HTTPBearer(auto_error=False, description="the value of RECSYS_API_TOKEN")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Let the request through only with ``Authorization: Bearer <RECSYS_API_TOKEN>``
    (compared in constant time; the token is never logged or echoed)."""
    expected = service_of(request).settings.api_token
    if expected is None:
        raise ApiError(
            403,
            "this endpoint changes something and is disabled: set RECSYS_API_TOKEN for the "
            "service and send it as 'Authorization: Bearer <token>'",
            [{"field": "header.authorization", "problem": "no token is configured"}],
        )
    if credentials is None:
        raise ApiError(
            401,
            "missing 'Authorization: Bearer <token>' header",
            [{"field": "header.authorization", "problem": "missing"}],
        )
    given = credentials.credentials.encode()
    if not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise ApiError(
            401,
            "the bearer token is wrong",
            [{"field": "header.authorization", "problem": "wrong token"}],
        )
