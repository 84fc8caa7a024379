"""``/ui/login`` and ``/ui/logout``: keep an API token in the ``dkron_token`` cookie.

The API's auth layer accepts that cookie like an ``Authorization: Bearer`` header, so the
browser's calls to ``/v1`` carry the token without any script ever seeing it (HttpOnly).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, redirect, request

from dkron.api.ui import bp
from dkron.api.ui.common import page

COOKIE = "dkron_token"
COOKIE_MAX_AGE = 30 * 86400
MAX_TOKEN_CHARS = 4096


def _safe_next(target: str | None) -> str:
    """Only our own pages: an open redirect would let a link send users anywhere after login."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@bp.get("/ui/login")
def login_form() -> tuple[str, int, dict[str, str]]:
    return page(
        "login.html",
        title="Log in",
        next=_safe_next(request.args.get("next")),
        logged_in=bool(request.cookies.get(COOKIE)),
        error="",
    )


def _cross_site() -> bool:
    """A login posted from another site's page (login CSRF: the victim would act, and be
    audited, as the attacker). Browsers say where a form came from; other clients send neither
    header and are not affected."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "cross-site"
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()


@bp.post("/ui/login")
def login() -> Response | tuple[str, int, dict[str, str]]:
    token = (request.form.get("token") or "").strip()
    target = _safe_next(request.form.get("next"))
    if _cross_site():
        return page(
            "login.html", 403, title="Log in", next=target, logged_in=False, error="Log in from this server's page."
        )
    if not token or len(token) > MAX_TOKEN_CHARS or any(ord(c) < 33 or ord(c) > 126 for c in token):
        return page(
            "login.html", 400, title="Log in", next=target, logged_in=False, error="Paste an API token (no spaces)."
        )
    response = redirect(target, code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


@bp.route("/ui/logout", methods=["GET", "POST"])
def logout() -> Response:
    response = redirect("/ui/login", code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response
