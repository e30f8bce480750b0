"""The HTTP gate in front of the page and its websocket (an aiohttp middleware on trame's server).

Why a gate at the HTTP level: everything the page does (state, clicks, uploads, downloads) goes over one
websocket, `/ws`; refusing that request without the token refuses all of it, and the static files behind it are
the app's public code. Three rules:
- with a token: a request needs the session cookie (set by the login form), an `Authorization: Bearer` header or
  `?token=` (which sets the cookie and redirects to the same page without it); otherwise the answer is 401, with
  a form that asks for the token;
- the websocket only from the page's own origin: a page on another site, open in the same browser, cannot
  drive the app through the user's cookie or a loopback address (cross-site websocket hijacking);
- without a token (loopback only), only requests that name a loopback host, so a web page cannot reach the app
  through a DNS name that points at 127.0.0.1 (DNS rebinding).
`decide` holds the rules as a plain function of the request's parts (tested without a server); `middleware`
applies it to aiohttp requests.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from urllib.parse import urlencode, urlsplit

from . import guard

COOKIE = "contrastseg_session"


def cookie_value(token: str) -> str:
    """What the session cookie holds: a digest of the token, so the cookie store never holds the token itself."""
    return hmac.new(token.encode("utf-8"), b"contrastseg-web-session", hashlib.sha256).hexdigest()


def _host_name(host: str) -> str:
    host = (host or "").strip()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def decide(token: str | None, method: str, path: str, host: str, origin: str | None, cookie: str | None,
           bearer: str | None, query_token: str | None, websocket: bool) -> tuple[str, str]:
    """('allow', ''), ('redirect', why), ('login', sentence) or ('forbid', sentence) for one request."""
    if websocket and origin and urlsplit(origin).netloc.lower() != (host or "").lower():
        return "forbid", "the app's websocket only accepts its own page"
    if token is None:
        if not guard.is_loopback(_host_name(host)):
            return "forbid", f"this app answers requests for 127.0.0.1 or localhost, not for {_host_name(host)}"
        return "allow", ""
    if query_token is not None:
        return ("redirect", "") if guard.token_matches(query_token, token) else ("login", "That token is not right.")
    if cookie and hmac.compare_digest(cookie, cookie_value(token)):
        return "allow", ""
    if bearer is not None and guard.token_matches(bearer, token):
        return "allow", ""
    if path == "/login" and method == "POST":
        return "check-form", ""
    return "login", "This ContrastSeg app needs its token."


def login_page(message: str) -> str:
    """The page that asks for the token (no script, no external resource)."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ContrastSeg: token</title>
<style>body{{font-family:sans-serif;background:#1e1e1e;color:#eee;display:flex;justify-content:center;margin-top:15vh}}
form{{background:#2b2b2b;padding:2em;border-radius:8px}}input{{font-size:1em;padding:.4em;width:22em}}
button{{font-size:1em;padding:.4em 1em;margin-left:.5em}}p{{color:#f6b26b}}</style></head>
<body><form method="post" action="/login"><h2>ContrastSeg</h2>
<p id="login-message">{html.escape(message)}</p>
<label for="token">Token</label><br><input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button id="login-button" type="submit">Open</button></form></body></html>"""


def middleware(token: str | None):
    """The aiohttp middleware enforcing `decide` (trame's app gets it through on_server_bind)."""
    from aiohttp import web

    def with_cookie(response):
        response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="Strict", path="/")
        return response

    @web.middleware
    async def gate(request, handler):
        auth = request.headers.get("Authorization", "")
        verdict, why = decide(token, request.method, request.path, request.host, request.headers.get("Origin"),
                              request.cookies.get(COOKIE), auth[7:] if auth.lower().startswith("bearer ") else None,
                              request.query.get("token"), request.headers.get("Upgrade", "").lower() == "websocket")
        if verdict == "allow":
            return await handler(request)
        if verdict == "forbid":
            return web.Response(status=403, text=why)
        if verdict == "redirect":
            query = [(k, v) for k, v in request.query.items() if k != "token"]
            target = request.path + ("?" + urlencode(query) if query else "")
            return with_cookie(web.Response(status=302, headers={"Location": target or "/"}))
        if verdict == "check-form":
            form = await request.post()
            if guard.token_matches(str(form.get("token", "")), token):
                return with_cookie(web.Response(status=302, headers={"Location": "/"}))
            why = "That token is not right."
        if request.headers.get("Upgrade", "").lower() == "websocket" or request.path == "/ws":
            return web.Response(status=401, text=why)
        return web.Response(status=401, text=login_page(why), content_type="text/html")

    return gate
