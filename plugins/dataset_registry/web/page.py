"""The registry page: one HTML file, its stylesheet, script and icon, all from ``web/static``.

Nothing is loaded from the network: the page draws its charts as inline SVG and reads the JSON API
next to it (relative URLs, so it works under any api-server base path and inside the Airflow UI's
iframe). The files go through the same access check as the API (no unprotected static mount).
"""
from __future__ import annotations

import html
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

page_router = APIRouter()

STATIC_FILES = {  # name -> media type: the only files served
    "registry.css": "text/css; charset=utf-8",
    "registry.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# The page is meant to be framed by the Airflow UI (same origin) and by nothing else.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                       "frame-ancestors 'self'"),
           "Referrer-Policy": "same-origin"}


def _static(name: str) -> bytes:
    return resources.files("dataset_registry.web").joinpath("static", name).read_bytes()


@page_router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """The page (projects, versions, one version, a diff: the script switches views by URL hash)."""
    return HTMLResponse(_static("index.html"), headers=HEADERS)


@page_router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no file {name[:80]!r}")
    return Response(_static(name), media_type=STATIC_FILES[name], headers=HEADERS)


def unauthenticated_page(request: Request, status: int, detail: str) -> str:
    """What a browser gets instead of the page without a valid session: the reason and a login link."""
    next_url = str(request.url)
    try:
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=next_url)
    except Exception:  # noqa: BLE001 - no auth manager here (unit tests): the UI's root
        login = "/"
    reason = "You are not logged in to Airflow." if status == 401 else "Your Airflow user may not read assets."
    return (f"<!doctype html><meta charset=utf-8><title>Dataset registry: {status}</title>"
            f"<body style='font-family:system-ui,sans-serif;margin:2rem'><h1>Dataset registry</h1>"
            f"<p>{html.escape(reason)} ({status} {html.escape(detail)})</p>"
            f"<p><a href='{html.escape(login, quote=True)}'>Log in to Airflow</a></p></body>")
