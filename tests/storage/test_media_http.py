"""The media HTTP app over a real socket: bytes, headers, 404s, no escape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from server.storage import LocalDirectoryStore
from server.storage.media_http import CACHE_CONTROL, media_app

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


@contextlib.asynccontextmanager
async def serving(app: Starlette, port: int = 0) -> AsyncIterator[str]:
    """Run `app` under uvicorn on 127.0.0.1:`port`; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "media"


@pytest.fixture
async def base_url(root: Path) -> AsyncIterator[str]:
    async with serving(media_app(root)) as url:
        yield url


@pytest.fixture
def store(root: Path, base_url: str) -> LocalDirectoryStore:
    return LocalDirectoryStore(root, base_url + "/media")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def raw_status(base_url: str, target: str) -> int:
    """The status of a GET for `target` sent verbatim (httpx would normalise `..`)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


async def test_stored_image_is_served_with_its_type_and_cached_forever(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/gen-abc-0.png", PNG, "image/png")

    response = await http.get(store.url_for("images/gen-abc-0.png"))

    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-length"] == str(len(PNG))


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("images/a.jpg", "image/jpeg"),
        ("images/a.webp", "image/webp"),
    ],
)
async def test_every_stored_kind_gets_its_content_type(
    store: LocalDirectoryStore, http: httpx.AsyncClient, key: str, content_type: str
) -> None:
    await store.put(key, b"bytes", content_type)

    response = await http.get(store.url_for(key))

    assert response.status_code == 200
    assert response.headers["content-type"] == content_type


async def test_generation_records_are_not_public(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("generations/gen-a.json", b"{}", "application/json")

    response = await http.get(store.url_for("generations/gen-a.json"))

    assert response.status_code == 404


async def test_key_needing_quoting_round_trips(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/a b#1.png", PNG, "image/png")

    response = await http.get(store.url_for("images/a b#1.png"))

    assert response.status_code == 200
    assert response.content == PNG


async def test_head_has_the_headers_and_no_body(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/a.png", PNG, "image/png")

    response = await http.head(store.url_for("images/a.png"))

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == CACHE_CONTROL


async def test_revalidation_with_the_etag_is_304_and_keeps_cache_control(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/a.png", PNG, "image/png")
    url = store.url_for("images/a.png")
    etag = (await http.get(url)).headers["etag"]

    response = await http.get(url, headers={"if-none-match": etag})

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert response.headers["etag"] == etag


async def test_range_requests_are_honoured(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/a.png", PNG, "image/png")

    response = await http.get(store.url_for("images/a.png"), headers={"range": "bytes=0-7"})

    assert response.status_code == 206
    assert response.content == PNG[:8]


async def test_missing_key_is_404_and_not_cached(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    response = await http.get(store.url_for("images/missing.png"))

    assert response.status_code == 404
    assert "immutable" not in response.headers.get("cache-control", "")


@pytest.mark.parametrize("path", ["/media", "/media/", "/media/images", "/media/images/"])
async def test_directories_are_not_listed(
    store: LocalDirectoryStore, http: httpx.AsyncClient, base_url: str, path: str
) -> None:
    await store.put("images/a.png", PNG, "image/png")

    # Starlette redirects `/media` to `/media/`, which is a 404 like the rest.
    response = await http.get(base_url + path, follow_redirects=True)

    assert response.status_code == 404
    assert b"a.png" not in response.content


async def test_dot_files_and_unknown_extensions_are_not_served(
    root: Path, store: LocalDirectoryStore, http: httpx.AsyncClient, base_url: str
) -> None:
    await store.put("images/a.png", PNG, "image/png")
    (root / "images" / ".partial.tmp").write_bytes(b"half")
    (root / "images" / ".hidden.png").write_bytes(PNG)
    (root / "images" / "notes.txt").write_bytes(b"text")

    for name in [".partial.tmp", ".hidden.png", "notes.txt"]:
        response = await http.get(f"{base_url}/media/images/{name}")
        assert response.status_code == 404, name


async def test_path_traversal_cannot_reach_files_outside_the_root(
    root: Path, tmp_path: Path, store: LocalDirectoryStore, http: httpx.AsyncClient, base_url: str
) -> None:
    await store.put("images/a.png", PNG, "image/png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (tmp_path / "secret.json").write_bytes(b'{"secret": true}')

    for target in [
        "/media/../secret.png",
        "/media/images/../../secret.png",
        "/media/%2e%2e/secret.png",
        "/media/images/%2E%2E/%2E%2E/secret.json",
        "/media/..%2fsecret.png",
        "/media/%2fetc%2fpasswd.json",
        "/media//" + str(tmp_path / "secret.png").lstrip("/"),
    ]:
        assert await raw_status(base_url, target) == 404, target

    response = await http.get(base_url + "/media/%2e%2e/secret.png")
    assert response.status_code == 404
    assert response.content != b"secret"


@pytest.fixture
def links_out(root: Path, tmp_path: Path) -> None:
    """root/link -> a directory outside holding secret.png; root/direct.png -> that file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "direct.png").symlink_to(outside / "secret.png")


@pytest.mark.usefixtures("links_out")
async def test_symlinks_out_of_the_root_are_not_followed(
    http: httpx.AsyncClient, base_url: str
) -> None:
    assert (await http.get(base_url + "/media/link/secret.png")).status_code == 404
    assert (await http.get(base_url + "/media/direct.png")).status_code == 404


async def test_only_get_and_head_are_allowed(
    store: LocalDirectoryStore, http: httpx.AsyncClient
) -> None:
    await store.put("images/a.png", PNG, "image/png")
    url = store.url_for("images/a.png")

    assert (await http.put(url, content=b"overwrite")).status_code == 405
    assert (await http.delete(url)).status_code == 405
    assert (await http.get(url)).content == PNG


async def test_root_that_does_not_exist_yet_is_served_as_empty(
    http: httpx.AsyncClient, base_url: str
) -> None:
    assert (await http.get(base_url + "/media/images/a.png")).status_code == 404


async def test_url_keeps_working_after_a_restart_on_the_same_directory(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    root = tmp_path / "media"
    async with serving(media_app(root)) as base_url:
        store = LocalDirectoryStore(root, base_url + "/media")
        await store.put("images/gen-abc-0.png", PNG, "image/png")
        url = store.url_for("images/gen-abc-0.png")
        await store.aclose()
        assert (await http.get(url)).content == PNG
    port = int(base_url.rsplit(":", 1)[1])

    # A new process: new store and app objects, same directory and address.
    async with serving(media_app(root), port=port) as restarted_url:
        assert restarted_url == base_url
        restarted = LocalDirectoryStore(root, restarted_url + "/media")
        assert restarted.url_for("images/gen-abc-0.png") == url
        response = await http.get(url)

    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["cache-control"] == CACHE_CONTROL
