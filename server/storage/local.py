"""A `BlobStore` backed by a local directory, for dev runs and tests.

Objects are plain files under `root`, one per key, so the same directory
served over HTTP (`server.storage.media_http`) gives permanent URLs that
survive restarts. The content type is not stored: it follows from the key's
extension (`content_type_for`), which is how the service names every object
(`.png`, `.jpg`, `.webp`, `.json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from server.domain.errors import StorageUnavailable

CONTENT_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
}


def content_type_for(key: str) -> str | None:
    """The MIME type served for `key`, from its extension; None if unknown."""
    return CONTENT_TYPES.get(PurePosixPath(key).suffix.lower())


def key_path(root: Path, key: str) -> Path:
    """The file under `root` that holds `key`, without touching the disk.

    Raises ValueError unless `key` is a relative `/`-separated path of
    non-empty segments. Segments starting with `.` (so also `.` and `..`)
    are refused: that keeps keys inside `root` and leaves dot-names free for
    the store's temporary files, which must never be served.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    segments = key.split("/")
    if any(not segment or segment.startswith(".") for segment in segments):
        raise ValueError(f"invalid storage key {key!r}")
    return root.joinpath(*segments)


def resolves_inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, is inside `root` (touches the disk)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


class LocalDirectoryStore:
    """Stores each object as a file under `root`; serves URLs under `public_base_url`.

    Writes are atomic (a temporary file in the target directory, fsynced,
    then `os.replace`), so a reader sees either nothing or the whole object.
    Files are created 0644 less the process umask.
    All file I/O runs in worker threads.
    """

    def __init__(self, root: Path, public_base_url: str) -> None:
        # absolute() rather than resolve(): no disk access in the constructor.
        self._root = Path(root).absolute()
        self._base_url = public_base_url.rstrip("/")
        # Directories already checked and created: every image lands in the
        # same few, and realpath + mkdir cost more than the write on tmpfs.
        self._ready_dirs: set[Path] = set()

    @property
    def root(self) -> Path:
        """The directory objects are stored under."""
        return self._root

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write `data` under `key`, replacing any previous object.

        Raises ValueError for a key that is not a safe relative path, and
        `StorageUnavailable` when the filesystem refuses the write.
        `content_type` is not recorded; it is derived from the key's
        extension when the object is served.
        """
        path = key_path(self._root, key)
        try:
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            # The OSError (with the full path) stays chained for the logs;
            # the message callers may see names only the key.
            raise StorageUnavailable(f"Could not write {key} to local storage.") from exc

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such key.

        A key that could never have been written (see `key_path`) names no
        object, so it gets None rather than an error, just as an S3 bucket
        answers for a key it does not hold.
        """
        try:
            path = key_path(self._root, key)
        except ValueError:
            return None
        try:
            return await asyncio.to_thread(self._read, path)
        except OSError as exc:
            raise StorageUnavailable(f"Could not read {key} from local storage.") from exc

    def url_for(self, key: str) -> str:
        """The permanent URL of `key`: the public base URL plus the quoted key."""
        key_path(self._root, key)
        return self._base_url + "/" + "/".join(quote(s, safe="") for s in key.split("/"))

    async def aclose(self) -> None:
        """Nothing to release; present for the `BlobStore` protocol."""

    def _write(self, path: Path, data: bytes) -> None:
        parent = path.parent
        if parent not in self._ready_dirs:
            # Checked before mkdir so a symlinked directory cannot make us
            # create directories outside the root.
            if not resolves_inside(self._root, parent):
                raise ValueError("storage key resolves outside the storage root")
            parent.mkdir(parents=True, exist_ok=True)
            self._ready_dirs.add(parent)
        # A dot-name in the target directory: never a valid key, so never
        # served, and on the same filesystem, so the rename is atomic. Plain
        # os calls rather than mkstemp + a file object: each call is a
        # syscall that lets go of the GIL and has to take it back, and under
        # load every take costs a context switch with the event loop.
        tmp = parent / f".{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            # The directory was removed behind our back: check and create it
            # again on the next attempt (the storage retry policy makes one).
            self._ready_dirs.discard(parent)
            raise
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(parent)

    def _read(self, path: Path) -> bytes | None:
        if not resolves_inside(self._root, path):
            return None
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return None
            raise


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (a regular file may take less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    """Persist the directory entry os.replace created, so a crash cannot lose it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
