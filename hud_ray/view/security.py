"""Who may talk to the viewer: anyone on loopback, anyone else only with the token.

On 127.0.0.1 (the default) the viewer answers only requests whose Host is a loopback name
(a web page elsewhere cannot reach it by DNS rebinding). On any other host it makes a
random token, printed once; every request must carry it (`?token=`, which also sets a
cookie for the pages that follow, or `Authorization: Bearer`), compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

COOKIE = "hud_ray_view_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenMiddleware(BaseHTTPMiddleware):
    """Refuses (401) every request without the token; `?token=` sets the cookie once."""

    def __init__(self, app: object, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        query = request.query_params.get("token")
        if query is not None and token_matches(query, self.token):
            # Off the URL (and so off history and logs) once the cookie holds it.
            rest = request.url.remove_query_params("token")
            response = RedirectResponse(str(rest), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if not token_matches(given, self.token):
            return PlainTextResponse(
                "hud-ray view: a token is required off loopback; open the URL that "
                "`hud-ray view` printed (it ends in ?token=...)", status_code=401)
        return await call_next(request)


class LoopbackHostMiddleware(BaseHTTPMiddleware):
    """On loopback, a Host header naming anything else is refused (DNS rebinding)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0] if not (
            request.headers.get("host") or "").startswith("[") else (
            request.headers.get("host") or "").split("]")[0] + "]"
        if not is_loopback(host):
            return PlainTextResponse(f"hud-ray view: Host {host!r} is not a loopback name",
                                     status_code=403)
        return await call_next(request)
