"""The web page for people on the REST port, and the one REST route it adds: a version's
certificate (docs/ARCHITECTURE.md, "The web page").

    GET /                                                    the page (serving/web/index.html)
    GET /web/FILE                                            its CSS and JavaScript
    GET /v1/models/NAME[/versions/N|/labels/L]/certificate   the version's metadata.json

The page is plain files shipped in the package (no build step, nothing fetched from elsewhere at
run time) and uses only the public REST API; `--rest_api_web_page=false` turns the first two
routes off (they then answer 404 like any unknown path). The certificate route stays: it is API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from aiohttp import web

from serving import certificate
from serving.errors import ServingError, not_found

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


async def served_certificate(manager, spec) -> dict:
    """{"model_spec": {name, version}, "certificate": metadata.json} of the version `spec` names
    (latest, a number or a label, resolved as Predict resolves it). The version was verified
    against this certificate when it was loaded (serving/certificate.py); it is read again here,
    off the event loop, so that the answer is the file as it is."""
    loaded = manager.resolve(spec)
    try:
        doc = await asyncio.to_thread(certificate.read, loaded.path)
    except certificate.CertificateError as e:  # changed on disk since it was loaded
        raise ServingError(grpc.StatusCode.DATA_LOSS, str(e)) from None
    finally:
        loaded.release()
    if doc is None:
        raise not_found(f"version {loaded.version} of model {loaded.name} has no certificate "
                        f"({certificate.FILENAME}): it was exported by another tool")
    return {"model_spec": {"name": loaded.name, "version": str(loaded.version)},
            "certificate": doc}
