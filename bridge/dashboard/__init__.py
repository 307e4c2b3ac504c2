"""The web dashboard: a static single-page app served by the bridge at `/ui/`.

It is plain modern JavaScript, CSS and SVG with no build step and no third-party code,
so every asset ships in `assets/` and the page loads nothing from anywhere else (its
Content-Security-Policy says so). In the browser it is a client like any other: it
signs in with an API key kept in sessionStorage and calls the native REST routes
(`/tunewire/v1/...`) with it as a Bearer token, so it sees exactly what the key's
organization may see. The assets themselves hold no data and need no key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

PREFIX = "/ui"
ASSETS = Path(__file__).parent / "assets"
# Everything from this origin, nothing inline, no frames: an XSS in rendered data could
# neither load nor send anything elsewhere.
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class _Assets(StaticFiles):
    """StaticFiles (index.html at the root, ETags, 304s) with the headers above."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.encode(), v.encode()) for k, v in HEADERS.items()),
                ]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/ui/` (`/ui` redirects there). A mount, not routes: it is
    no part of the API, so it stays out of the OpenAPI document."""
    app.mount(PREFIX, _Assets(directory=ASSETS, html=True), name="dashboard")
