"""LocalDirectoryStore: atomic writes under the root, safe keys, URLs."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from server.domain.errors import StorageUnavailable
from server.storage import LocalDirectoryStore
from server.storage.local import content_type_for, key_path

BASE_URL = "http://media.test/media"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "media"


@pytest.fixture
def store(root: Path) -> LocalDirectoryStore:
    return LocalDirectoryStore(root, BASE_URL)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _leftovers(root: Path) -> list[Path]:
    return [path for path in _files(root) if path.name.startswith(".")]


@pytest.fixture
def outside(root: Path, tmp_path: Path) -> Path:
    """A directory beside the root holding secret.png, linked from root/link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    return outside


async def test_put_then_get_round_trips_and_creates_directories(
    store: LocalDirectoryStore, root: Path
) -> None:
    await store.put("images/gen-abc-0.png", b"\x89PNG data", "image/png")

    assert await store.get("images/gen-abc-0.png") == b"\x89PNG data"
    assert (root / "images" / "gen-abc-0.png").read_bytes() == b"\x89PNG data"


async def test_put_replaces_an_existing_object_and_leaves_no_temporary_files(
    store: LocalDirectoryStore, root: Path
) -> None:
    await store.put("generations/gen-abc.json", b'{"v": 1}', "application/json")
    await store.put("generations/gen-abc.json", b'{"v": 2}', "application/json")

    assert await store.get("generations/gen-abc.json") == b'{"v": 2}'
    assert _leftovers(root) == []


async def test_written_files_are_readable_by_others(store: LocalDirectoryStore, root: Path) -> None:
    await store.put("images/a.png", b"x", "image/png")

    mode = stat.S_IMODE((root / "images" / "a.png").stat().st_mode)
    assert mode == 0o644


async def test_get_missing_key_is_none(store: LocalDirectoryStore) -> None:
    assert await store.get("images/nothing.png") is None
    assert await store.get("images") is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.png",
        "images/../../outside.png",
        "images/./a.png",
        "images//a.png",
        "images/",
        ".hidden.png",
        "images/.tmp123.tmp",
        "images\\..\\a.png",
        "images/a\x00.png",
    ],
)
async def test_unsafe_keys_are_rejected(store: LocalDirectoryStore, root: Path, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        store.url_for(key)
    # A key that could never be written names no object.
    assert await store.get(key) is None
    assert _files(root) == []


async def test_symlink_out_of_the_root_is_neither_written_nor_read(
    store: LocalDirectoryStore, outside: Path
) -> None:
    with pytest.raises(ValueError):
        await store.put("link/new.png", b"x", "image/png")
    assert await store.get("link/secret.png") is None
    assert _files(outside) == [outside / "secret.png"]


async def test_a_directory_removed_after_a_write_is_created_again_on_the_retry(
    store: LocalDirectoryStore, root: Path
) -> None:
    await store.put("images/a.png", b"a", "image/png")
    shutil.rmtree(root / "images")

    # The store remembers directories it made; the first write into the
    # removed one fails retryably, and the retry recreates it.
    with pytest.raises(StorageUnavailable) as caught:
        await store.put("images/b.png", b"b", "image/png")
    assert caught.value.retryable
    await store.put("images/b.png", b"b", "image/png")

    assert await store.get("images/b.png") == b"b"


async def test_write_failure_is_retryable_storage_unavailable_naming_only_the_key(
    tmp_path: Path,
) -> None:
    root = tmp_path / "not-a-directory"
    root.write_bytes(b"")
    store = LocalDirectoryStore(root, BASE_URL)

    with pytest.raises(StorageUnavailable) as caught:
        await store.put("images/a.png", b"x", "image/png")

    assert caught.value.retryable
    assert "images/a.png" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert isinstance(caught.value.__cause__, OSError)


async def test_failed_replace_removes_the_temporary_file(
    store: LocalDirectoryStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(StorageUnavailable):
        await store.put("images/a.png", b"x", "image/png")
    assert _leftovers(root) == []
    assert not (root / "images" / "a.png").exists()


async def test_a_short_write_is_continued_until_the_whole_object_is_written(
    store: LocalDirectoryStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:3]))
    body = bytes(range(256)) * 4

    await store.put("images/a.png", body, "image/png")

    monkeypatch.undo()
    assert (root / "images" / "a.png").read_bytes() == body


async def test_a_failed_write_removes_the_temporary_file_and_closes_it(
    store: LocalDirectoryStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[int] = []
    real_close = os.close

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def spy_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "write", failing_write)
    monkeypatch.setattr(os, "close", spy_close)

    with pytest.raises(StorageUnavailable):
        await store.put("images/a.png", b"x", "image/png")

    monkeypatch.undo()
    assert closed  # the temporary file's descriptor is not leaked
    assert _leftovers(root) == []
    assert not (root / "images" / "a.png").exists()


async def test_file_io_runs_off_the_event_loop_thread(
    store: LocalDirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []
    write, read = LocalDirectoryStore._write, LocalDirectoryStore._read

    def spy_write(self: LocalDirectoryStore, path: Path, data: bytes) -> None:
        threads.append(threading.get_ident())
        write(self, path, data)

    def spy_read(self: LocalDirectoryStore, path: Path) -> bytes | None:
        threads.append(threading.get_ident())
        return read(self, path)

    monkeypatch.setattr(LocalDirectoryStore, "_write", spy_write)
    monkeypatch.setattr(LocalDirectoryStore, "_read", spy_read)

    await store.put("images/a.png", b"x", "image/png")
    await store.get("images/a.png")

    assert len(threads) == 2
    assert loop_thread not in threads


def test_url_for_joins_the_base_url_and_quotes_each_segment() -> None:
    store = LocalDirectoryStore(Path("unused"), "https://cdn.example/media/")

    assert store.url_for("images/gen-abc-0.png") == "https://cdn.example/media/images/gen-abc-0.png"
    assert (
        store.url_for("images/a b#?%.png") == "https://cdn.example/media/images/a%20b%23%3F%25.png"
    )


async def test_aclose_is_harmless(store: LocalDirectoryStore) -> None:
    await store.aclose()
    await store.aclose()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("images/a.png", "image/png"),
        ("images/a.jpg", "image/jpeg"),
        ("images/a.JPEG", "image/jpeg"),
        ("images/a.webp", "image/webp"),
        ("generations/gen-a.json", "application/json"),
        ("images/a.bin", None),
        ("images/a", None),
    ],
)
def test_content_type_follows_the_extension(key: str, expected: str | None) -> None:
    assert content_type_for(key) == expected


def test_key_path_maps_segments_under_the_root(tmp_path: Path) -> None:
    assert key_path(tmp_path, "images/a.png") == tmp_path / "images" / "a.png"
