"""Both key stores (SQLite file, real redis-server) honour one contract;
the key format, its hash and id; the admission rule."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import BlockingConnectionPool

from server.auth.access import USAGE_SEEN_FRESH_S, Authenticator, KeyLedger
from server.auth.admin import create_key
from server.auth.build import build_access
from server.auth.keys import (
    KEY_PATTERN,
    KeyRecord,
    Limits,
    bearer_key,
    digest_of,
    key_id_of,
    new_key,
)
from server.auth.redis_store import RedisKeyStore, connect
from server.auth.sqlite_store import SqliteKeyStore
from server.auth.store import KeyStore, Lookup, PeriodUsage, QuotaCheck, QuotaRefusal
from server.domain.callers import Caller, UsageSeen
from server.domain.errors import AuthUnavailable, InvalidApiKey, KeyRateLimited, QuotaExceeded
from server.settings import Settings
from tests.auth.redis_server import redis_server


def test_keys_are_ck_and_43_base62_and_ids_are_public_digests() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert KEY_PATTERN.fullmatch(key) and len(key) == 46
        assert key_id_of(key).startswith("key_") and len(key_id_of(key)) == 16
        assert key_id_of(key)[4:] == digest_of(key)[:12]
        assert key.removeprefix("ck-")[:8] not in key_id_of(key)


@pytest.mark.parametrize(
    ("header", "found"),
    [
        ("Bearer ck-" + "A1" * 16, True),
        ("bearer ck-" + "A1" * 16, True),
        ("Bearer ck-" + "a" * 31, False),  # too short
        ("Bearer ck-" + "a" * 31 + "!", False),
        ("Bearer sk-" + "a" * 40, False),
        ("ck-" + "a" * 40, False),  # no scheme
        ("Basic ck-" + "a" * 40, False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_parsing(header: str | None, found: bool) -> None:
    assert (bearer_key(header) is not None) is found


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[KeyStore]:
    if request.param == "sqlite":
        sqlite = SqliteKeyStore(tmp_path / "auth.sqlite3")
        yield sqlite
        await sqlite.aclose()
        return
    async with redis_server(tmp_path / "redis") as server:
        shared = RedisKeyStore(connect(server.url))
        yield shared
        await shared.aclose()


async def test_add_get_list_revoke(store: KeyStore) -> None:
    key, record = await create_key(
        store,
        "team",
        owner="o",
        limits=Limits(5, 100, Decimal("12.5")),
        models=("azure/*",),
    )
    assert await store.get(record.key_id) == record
    assert record.digest == digest_of(key)
    assert not await store.add(record)  # taken
    assert [r.key_id for r in await store.list()] == [record.key_id]
    assert await store.revoke(record.key_id, 1234)
    revoked = await store.get(record.key_id)
    assert revoked is not None and revoked.revoked == 1234 and not revoked.active
    assert await store.revoke(record.key_id, 9999)  # idempotent: the first time stays
    again = await store.get(record.key_id)
    assert again is not None and again.revoked == 1234
    assert not await store.revoke("key_000000000000", 1)
    assert await store.get("key_000000000000") is None


async def test_take_request_is_a_sliding_minute(store: KeyStore) -> None:
    assert await store.take_request("key_a", 2) is None
    assert await store.take_request("key_a", 2) is None
    wait = await store.take_request("key_a", 2)
    assert wait is not None and 0 < wait <= 60
    assert await store.take_request("key_b", 2) is None


async def test_concurrent_requests_never_exceed_the_rate(store: KeyStore) -> None:
    results = await asyncio.gather(*(store.take_request("key_c", 5) for _ in range(20)))
    assert sum(r is None for r in results) == 5


async def test_quota_check_and_usage(store: KeyStore) -> None:
    check = QuotaCheck("key_q", "2026-12-04", "2026-12", 2, 10_000_000, 3, 25_000_000)
    assert await store.check_quota(check) is None
    await store.add_usage("key_q", "2026-12-04", "2026-12", 2, 10_000_000)
    assert await store.check_quota(check) is QuotaRefusal.IMAGES_PER_DAY
    next_day = QuotaCheck("key_q", "2026-12-05", "2026-12", 2, 10_000_000, 3, 25_000_000)
    assert await store.check_quota(next_day) is None
    await store.add_usage("key_q", "2026-12-05", "2026-12", 1, 10_000_000)
    assert await store.check_quota(next_day) is QuotaRefusal.MONTHLY_BUDGET
    usage = await store.usage("key_q")
    assert {p: (u.images, str(u.cost)) for p, u in usage.items()} == {
        "2026-12-04": (2, "0.10000000"),
        "2026-12-05": (1, "0.10000000"),
        "2026-12": (3, "0.20000000"),
    }


async def test_authenticator(store: KeyStore) -> None:
    key, record = await create_key(store, "t", limits=Limits(requests_per_minute=1))
    authenticate = Authenticator(store).authenticate
    caller = await authenticate(f"Bearer {key}")
    assert caller.key_id == record.key_id
    with pytest.raises(KeyRateLimited) as limited:
        await authenticate(f"Bearer {key}")
    assert limited.value.retry_after is not None
    for header in (None, "Bearer WRONG", f"Bearer {key[:-1]}{'b' if key[-1] != 'b' else 'c'}"):
        with pytest.raises(InvalidApiKey) as refused:
            await authenticate(header)
        assert key not in str(refused.value)
    # A record whose digest does not match the presented key (same id) is refused.
    forged = KeyRecord(
        key_id=key_id_of("ck-" + "z" * 40),
        digest="0" * 64,
        name="x",
        limits=Limits(requests_per_minute=1),
    )
    assert await store.add(forged)
    for _ in range(2):
        with pytest.raises(InvalidApiKey):
            await authenticate("Bearer ck-" + "z" * 40)
    # ... and uses up nothing of the key's window.
    assert await store.take_request(forged.key_id, 1) is None


DAY, MONTH = "2026-12-04", "2026-12"


async def test_lookup_counts_only_admitted_keys(store: KeyStore) -> None:
    key, record = await create_key(store, "t", limits=Limits(requests_per_minute=2))
    assert await store.lookup(record.key_id, digest_of(key), DAY, MONTH) == Lookup(record)
    # A wrong secret for the key's (public) id, and its revoked self, count nothing.
    assert await store.lookup(record.key_id, "0" * 64, DAY, MONTH) == Lookup(record)
    assert await store.lookup("key_000000000000", digest_of(key), DAY, MONTH) == Lookup(None)
    assert await store.take_request(record.key_id, 2) is None  # the second of two
    found = await store.lookup(record.key_id, digest_of(key), DAY, MONTH)
    assert found.record == record and found.wait_s is not None and 0 < found.wait_s <= 60
    assert await store.revoke(record.key_id, 1)
    revoked = await store.lookup(record.key_id, digest_of(key), DAY, MONTH)
    assert revoked.record is not None and not revoked.record.active and revoked.wait_s is None
    unlimited, _ = await create_key(store, "u")
    assert (
        await store.lookup(key_id_of(unlimited), digest_of(unlimited), DAY, MONTH)
    ).wait_s is None


async def test_lookup_reads_the_usage_of_admitted_keys_with_a_quota(store: KeyStore) -> None:
    capped, record = await create_key(store, "c", limits=Limits(images_per_day=10))
    await store.add_usage(record.key_id, DAY, MONTH, 3, 700)
    await store.add_usage(record.key_id, "2026-12-03", MONTH, 2, 50)
    found = await store.lookup(record.key_id, digest_of(capped), DAY, MONTH)
    assert found.usage == PeriodUsage(DAY, MONTH, day_images=3, month_units=750)
    # Another day's counters, and none yet: zero.
    tomorrow = await store.lookup(record.key_id, digest_of(capped), "2026-12-05", "2027-01")
    assert tomorrow.usage == PeriodUsage("2026-12-05", "2027-01", 0, 0)
    # Not for a wrong secret, a revoked key or a key without a quota.
    assert (await store.lookup(record.key_id, "0" * 64, DAY, MONTH)).usage is None
    budgeted, budget_record = await create_key(
        store, "b", limits=Limits(monthly_budget=Decimal("2"))
    )
    await store.add_usage(budget_record.key_id, DAY, MONTH, 1, 9)
    assert (
        await store.lookup(budget_record.key_id, digest_of(budgeted), DAY, MONTH)
    ).usage == PeriodUsage(DAY, MONTH, 1, 9)
    free, free_record = await create_key(store, "f")
    await store.add_usage(free_record.key_id, DAY, MONTH, 1, 9)
    assert (await store.lookup(free_record.key_id, digest_of(free), DAY, MONTH)).usage is None
    assert await store.revoke(record.key_id, 1)
    assert (await store.lookup(record.key_id, digest_of(capped), DAY, MONTH)).usage is None


async def test_the_quota_check_uses_the_usage_read_with_the_key_while_fresh(
    store: KeyStore,
) -> None:
    now = [1_796_342_400.0 + 3600]  # 2026-12-04T01:00Z
    key, record = await create_key(store, "t", limits=Limits(images_per_day=4))
    await store.add_usage(record.key_id, DAY, MONTH, 3, 0)
    caller = await Authenticator(store, clock=lambda: now[0]).authenticate(f"Bearer {key}")
    assert caller.usage == UsageSeen(now[0], DAY, MONTH, 3, Decimal(0))
    # Counted elsewhere after the key was read: the fresh reading stands in
    # for the store (one image left: 2 refused, 1 admitted).
    await store.add_usage(record.key_id, DAY, MONTH, 1, 0)
    ledger = KeyLedger(store, clock=lambda: now[0])
    await ledger.admit(caller, 1, None)
    with pytest.raises(QuotaExceeded):
        await ledger.admit(caller, 2, None)
    # Past USAGE_SEEN_FRESH_S the store is read again: no image left.
    now[0] += USAGE_SEEN_FRESH_S + 0.5
    with pytest.raises(QuotaExceeded):
        await ledger.admit(caller, 1, None)


async def test_ledger_refuses_over_quota_with_retry_after(store: KeyStore) -> None:
    ledger = KeyLedger(store, clock=lambda: 1_796_342_400.0)  # 2026-12-04T00:00Z
    caller = Caller("key_l", images_per_day=2, monthly_budget=Decimal("1"))
    await ledger.admit(caller, 2, Decimal("0.1"))
    await ledger.record(caller, 2, Decimal("0.1"))
    with pytest.raises(QuotaExceeded) as refused:
        await ledger.admit(caller, 1, Decimal("0.05"))
    assert refused.value.retry_after == 86400
    assert refused.value.description == "images_per_day 2"


async def test_redis_usage_periods_expire_days_after_40_and_months_after_400(
    tmp_path: pathlib.Path,
) -> None:
    async with redis_server(tmp_path / "redis") as server:
        store = RedisKeyStore(connect(server.url))
        try:
            await store.add_usage("key_t", "2026-12-04", "2026-12", 1, 5)
            client = store.client
            day_ttl = await client.ttl("ck:usage:key_t:2026-12-04")
            month_ttl = await client.ttl("ck:usage:key_t:2026-12")
            assert 40 * 86400 - 60 < day_ttl <= 40 * 86400
            assert 400 * 86400 - 60 < month_ttl <= 400 * 86400
            assert await client.smembers("ck:periods:key_t") == {"2026-12-04", "2026-12"}
            assert await client.hgetall("ck:usage:key_t:2026-12") == {
                "images": "1",
                "cost_units": "5",
            }
        finally:
            await store.aclose()


async def test_an_unreachable_store_fails_closed(tmp_path: pathlib.Path) -> None:
    async with redis_server(tmp_path / "redis") as server:
        store = RedisKeyStore(connect(server.url))
        key, _ = await create_key(store, "t")
        authenticate = Authenticator(store).authenticate
        await authenticate(f"Bearer {key}")
        await server.stop()
        with pytest.raises(AuthUnavailable):
            await authenticate(f"Bearer {key}")
        with pytest.raises(AuthUnavailable):
            await KeyLedger(store).admit(Caller("key_x", images_per_day=1), 1, Decimal(0))
        await store.aclose()


async def test_a_burst_larger_than_the_redis_pool_waits_for_connections(
    tmp_path: pathlib.Path,
) -> None:
    # 300 calls at once on a pool of 2: each waits for a free connection
    # (redis-py's default pool refused the call past its size instead).
    async with redis_server(tmp_path / "redis") as server:
        settings = Settings.model_construct(redis_max_connections=2)
        store = RedisKeyStore(connect(server.url, settings))
        observer = connect(server.url)
        try:
            key, record = await create_key(store, "t", limits=Limits(requests_per_minute=10_000))
            authenticate = Authenticator(store).authenticate
            callers = await asyncio.gather(*(authenticate(f"Bearer {key}") for _ in range(300)))
            assert {caller.key_id for caller in callers} == {record.key_id}
            clients = await observer.client_list()
            assert len(clients) - 1 <= 2  # the observer's own connection aside
            assert await store.take_request(record.key_id, 10_000) is None
        finally:
            await observer.aclose()
            await store.aclose()


async def test_no_free_redis_connection_within_the_pool_timeout_fails_closed(
    tmp_path: pathlib.Path,
) -> None:
    async with redis_server(tmp_path / "redis") as server:
        settings = Settings.model_construct(redis_max_connections=1, redis_pool_timeout_s=0.05)
        store = RedisKeyStore(connect(server.url, settings))
        key, _ = await create_key(store, "t")
        pool = store.client.connection_pool
        held = await pool.get_connection()  # the pool's only connection, never given back
        try:
            with pytest.raises(AuthUnavailable):
                await Authenticator(store).authenticate(f"Bearer {key}")
        finally:
            await pool.release(held)
            await store.aclose()


async def test_redis_replies_are_parsed_by_hiredis(tmp_path: pathlib.Path) -> None:
    # The `redis[hiredis]` dependency: redis-py picks the C parser only
    # when hiredis imports, and silently falls back to pure Python if not.
    async with redis_server(tmp_path / "redis") as server:
        client = connect(server.url)
        try:
            assert await client.ping()
            connection = await client.connection_pool.get_connection()
            try:
                assert type(connection._parser).__name__ == "_AsyncHiredisParser"
            finally:
                await client.connection_pool.release(connection)
        finally:
            await client.aclose()


def test_the_redis_pool_is_sized_by_the_settings() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        redis_max_connections=7,
        redis_pool_timeout_s=3.5,
        redis_timeout_s=1.5,
        auth="keys",
    )
    access = build_access(settings)
    assert isinstance(access.store, RedisKeyStore)
    pool = access.store.client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (7, 3.5)
    connection = pool.connection_kwargs
    assert (connection["socket_timeout"], connection["socket_connect_timeout"]) == (1.5, 1.5)
