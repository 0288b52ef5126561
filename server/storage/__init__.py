"""Blob stores: implementations of `server.domain.ports.BlobStore`."""

from server.storage.local import LocalDirectoryStore

__all__ = ["LocalDirectoryStore"]
