"""Serves a `LocalDirectoryStore` directory read-only over HTTP.

This is what makes local-storage URLs fetchable: `dev` mounts it at
`/media` on its HTTP port, and `local_public_base_url` points there. Objects
never change once written, so every hit is cacheable forever. Only files
whose key `LocalDirectoryStore` could have written are served: no directory
listings, no dot-files (the store's temporary files), nothing outside the
root, and only the known extensions, so the Content-Type is always right.
"""

from __future__ import annotations

import errno
import os
import stat
from email.utils import parsedate_to_datetime
from pathlib import Path

import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from server.storage.local import content_type_for, key_path, resolves_inside

CACHE_CONTROL = "public, max-age=31536000, immutable"

# Headers a 304 repeats from the 200 it stands for (RFC 9110 §15.4.5).
_NOT_MODIFIED_HEADERS = ("cache-control", "etag", "last-modified", "x-content-type-options")


PUBLIC_PREFIX = "images/"


def media_routes(root: Path) -> list[BaseRoute]:
    """Routes serving the files under `root`, relative to where they are mounted.

    Use as `Mount("/media", routes=media_routes(root))`, or see `media_mount`.
    """
    directory = Path(root).absolute()

    async def serve(request: Request) -> Response:
        key: str = request.path_params["key"]
        # Only images are public; generation records (which hold prompts)
        # live in the same directory but are read through GetGeneration.
        if not key.startswith(PUBLIC_PREFIX):
            return _not_found()
        content_type = content_type_for(key)
        try:
            path = key_path(directory, key)
        except ValueError:
            return _not_found()
        if content_type is None:
            return _not_found()
        stat_result = await anyio.to_thread.run_sync(_stat_file, directory, path)
        if stat_result is None:
            return _not_found()
        response = FileResponse(
            path,
            media_type=content_type,
            stat_result=stat_result,
            headers={"cache-control": CACHE_CONTROL, "x-content-type-options": "nosniff"},
        )
        if _not_modified(request.headers, response.headers):
            return Response(
                status_code=304,
                headers={
                    name: value
                    for name, value in response.headers.items()
                    if name in _NOT_MODIFIED_HEADERS
                },
            )
        return response

    return [Route("/{key:path}", serve, methods=["GET", "HEAD"])]


def media_mount(root: Path, path: str = "/media") -> Mount:
    """A `Mount` serving the files under `root` at `path`."""
    return Mount(path, routes=media_routes(root))


def media_app(root: Path, path: str = "/media") -> Starlette:
    """A standalone app serving the files under `root` at `path`."""
    return Starlette(routes=[media_mount(root, path)])


def _not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def _stat_file(root: Path, path: Path) -> os.stat_result | None:
    """`path`'s stat if it is a regular file inside `root`, else None."""
    try:
        if not resolves_inside(root, path):
            return None
        result = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return None
        raise
    return result if stat.S_ISREG(result.st_mode) else None


def _not_modified(request: Headers, response: Headers) -> bool:
    """Whether the request's validators match, so a 304 can replace the body."""
    if_none_match = request.get("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return response["etag"] in tags
    if_modified_since = request.get("if-modified-since")
    last_modified = response.get("last-modified")
    if if_modified_since is None or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(if_modified_since) >= parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False
