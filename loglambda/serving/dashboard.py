"""The live dashboard: one HTML page, its script and style, and the Plotly bundle.

The page itself holds no data and needs no token; it asks the read API
(``/v1/dashboard/*``) for every number with the token the user gives it (``?token=``
once, or its login box; kept in ``sessionStorage``, so it lasts as long as the tab).

Plotly's JavaScript is served from the installed ``plotly`` Python package
(``plotly/package_data/plotly.min.js``): nothing is copied into this repository, and
nothing is loaded from a CDN (the dashboard works on a machine without internet).
Its location is found without importing plotly (importing it costs ~0.5 s).

Security headers: a strict Content-Security-Policy (scripts and connections only to
this origin; Plotly needs inline styles), no referrer (the address may carry a token
on first load, and the page removes it right away), no MIME sniffing, no framing.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response

STATIC: Final = Path(__file__).with_name("static")
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
        "style-src 'self' 'unsafe-inline'; font-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# Our own files change with the installed version; revalidate each load (cheap: ETag).
_OWN_CACHE: Final = "no-cache"
# Plotly's bundle is 4.8 MB and changes only with the package: a day is safe.
_PLOTLY_CACHE: Final = "public, max-age=86400"


@cache
def plotly_bundle() -> Path | None:
    """``plotly.min.js`` of the installed ``plotly`` package, or None if missing."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


def _static_files() -> dict[str, Path]:
    """The page's files by name: only these are served (no path is built from a URL)."""
    return {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}


def dashboard_router() -> APIRouter:
    """``/dashboard/`` and its assets (left out of the OpenAPI spec: not an API)."""
    files = _static_files()
    router = APIRouter(include_in_schema=False)

    def send(path: Path, cache_control: str) -> FileResponse:
        headers = {**_HEADERS, "Cache-Control": cache_control}
        return FileResponse(path, media_type=_TYPES[path.suffix], headers=headers)

    @router.get("/")
    @router.get("/dashboard")
    def to_dashboard() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)

    @router.get("/dashboard/")
    def page() -> FileResponse:
        return send(files["index.html"], _OWN_CACHE)

    @router.get("/dashboard/static/{name}")
    def static(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, f"no dashboard file {name!r}")
        return send(path, _OWN_CACHE)

    @router.get("/dashboard/plotly.min.js")
    def plotly() -> Response:
        path = plotly_bundle()
        if path is None:
            raise HTTPException(
                503,
                "the plotly package is not installed (pip install plotly); the "
                "dashboard's charts need its JavaScript bundle",
            )
        return send(path, _PLOTLY_CACHE)

    return router
