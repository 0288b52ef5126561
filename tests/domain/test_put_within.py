"""`put_within`: one store write bounded by the caller's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.domain.deadline import Deadline
from server.domain.errors import StorageUnavailable
from server.domain.records import put_within


class _Store:
    """A `BlobStore` whose `put` takes `delay_s` and records each call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.puts: list[str] = []
        self.finished: list[str] = []

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.puts.append(key)
        await asyncio.sleep(self.delay_s)
        self.finished.append(key)


async def test_a_put_within_the_deadline_lands() -> None:
    store = _Store()

    await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(5))

    assert store.finished == ["images/a.png"]


async def test_no_deadline_waits_for_the_store() -> None:
    store = _Store(delay_s=0.05)

    await put_within(store, "images/a.png", b"x", "image/png", Deadline.none())

    assert store.finished == ["images/a.png"]


async def test_a_hung_put_is_abandoned_when_the_deadline_passes() -> None:
    store = _Store(delay_s=30)
    started = time.monotonic()

    with pytest.raises(StorageUnavailable) as caught:
        await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(0.1))

    assert time.monotonic() - started < 5
    assert caught.value.retryable
    assert caught.value.metadata == {"key": "images/a.png"}
    assert store.puts == ["images/a.png"] and store.finished == []


async def test_a_passed_deadline_does_not_start_the_put() -> None:
    store = _Store()

    with pytest.raises(StorageUnavailable):
        await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(-1))

    assert store.puts == []
