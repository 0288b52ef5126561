"""`put_within`: one store write bounded by the caller's deadline."""

from __future__ import annotations

import time

import pytest

from server.domain.deadline import Deadline
from server.domain.errors import StorageUnavailable
from server.domain.records import put_within
from tests.support.fakes import MemoryStore


async def test_a_put_within_the_deadline_lands() -> None:
    store = MemoryStore()

    await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(5))

    assert store.objects == {"images/a.png": (b"x", "image/png")}


async def test_no_deadline_waits_for_the_store() -> None:
    store = MemoryStore()
    store.put_delay_s = 0.05

    await put_within(store, "images/a.png", b"x", "image/png", Deadline.none())

    assert store.objects == {"images/a.png": (b"x", "image/png")}


async def test_a_hung_put_is_abandoned_when_the_deadline_passes() -> None:
    store = MemoryStore()
    store.put_delay_s = 30
    started = time.monotonic()

    with pytest.raises(StorageUnavailable) as caught:
        await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(0.1))

    assert time.monotonic() - started < 5
    assert caught.value.retryable
    assert caught.value.metadata == {"key": "images/a.png"}
    assert store.puts == 1 and store.objects == {}


async def test_a_passed_deadline_does_not_start_the_put() -> None:
    store = MemoryStore()

    with pytest.raises(StorageUnavailable):
        await put_within(store, "images/a.png", b"x", "image/png", Deadline.after(-1))

    assert store.puts == 0
