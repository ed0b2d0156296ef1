"""The web page for people on the REST port (docs/ARCHITECTURE.md, "The web page").

    GET /            the page (serving/web/index.html)
    GET /web/FILE    its CSS and JavaScript

The page is plain files shipped in the package (no build step, nothing fetched from elsewhere at
run time) and uses only the public REST API, including the certificate route that TF Serving's
REST part adds (serving/protocols/tf_serving/rest_api.py). `--rest_api_web_page=false` turns
these two routes off (they then answer 404 like any unknown path); the certificate route stays:
it is API. serving/server.py hands `response` to the REST server.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).with_name("web")
PREFIX = "/web/"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# The page's own files may not load anything from elsewhere: a browser enforces it.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
                    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _files() -> dict[str, Path]:
    """URL path -> file, fixed when the module loads: a request can never name another file."""
    files = {PREFIX + p.name: p for p in sorted(WEB_DIR.iterdir())
             if p.suffix in CONTENT_TYPES and p.is_file()}
    files["/"] = WEB_DIR / "index.html"
    return files


FILES = _files()


def response(method: str, path: str) -> web.Response | None:
    """The page's file for GET (or HEAD) `path`, or None when the path is not one of them."""
    file = FILES.get(path) if method in ("GET", "HEAD") else None
    if file is None:
        return None
    return web.Response(body=file.read_bytes(), headers={
        "Content-Type": CONTENT_TYPES[file.suffix], **SECURITY_HEADERS})
