"""The embedded key store: one SQLite file, for a single machine.

Why SQLite: it ships with Python, it is a transactional store that several
processes on one machine share safely (the server and the `image-service
keys` commands open the same file), and `BEGIN IMMEDIATE` makes each
check-and-count one atomic step, as Redis scripts do for a fleet. WAL mode
lets readers (every call's key lookup) run beside the one writer, and a
busy timeout makes a writer wait for another instead of failing.

sqlite3 blocks, so every statement runs in a worker thread; one connection
behind a lock serialises them (each is sub-millisecond).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from server.auth.keys import KeyRecord, Limits, Usage, from_units, to_units
from server.auth.store import (
    Lookup,
    PeriodUsage,
    QuotaCheck,
    QuotaRefusal,
    StoreUnavailable,
    admits,
    has_quota,
    rate_to_count,
    refusal,
)

T = TypeVar("T")
WINDOW_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    revoked INTEGER,
    requests_per_minute INTEGER,
    images_per_day INTEGER,
    monthly_budget_units INTEGER,
    models TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS key_requests (key_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS key_requests_by_key ON key_requests (key_id, at);
CREATE TABLE IF NOT EXISTS key_usage (
    key_id TEXT NOT NULL,
    period TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0,
    cost_units INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period)
);
"""


class SqliteKeyStore:
    """`KeyStore` in the SQLite file at `path` (created with its directory)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=10.0, check_same_thread=False)
            db.isolation_level = None  # transactions are explicit below
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return work(self._connect())
                except sqlite3.Error as error:
                    raise StoreUnavailable(f"key store {type(error).__name__}") from error

        return await asyncio.to_thread(locked)

    async def add(self, record: KeyRecord) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            limits = record.limits
            budget = limits.monthly_budget
            try:
                db.execute(
                    "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.key_id,
                        record.digest,
                        record.name,
                        record.owner,
                        record.created,
                        record.revoked,
                        limits.requests_per_minute,
                        limits.images_per_day,
                        None if budget is None else to_units(budget),
                        json.dumps(list(record.models)),
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            return True

        return await self._run(work)

    async def get(self, key_id: str) -> KeyRecord | None:
        def work(db: sqlite3.Connection) -> KeyRecord | None:
            row = db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else _record(row)

        return await self._run(work)

    async def lookup(self, key_id: str, digest: str, day: str, month: str) -> Lookup:
        record = await self.get(key_id)
        per_minute = rate_to_count(record, digest)
        wait = None if per_minute is None else await self.take_request(key_id, per_minute)
        if record is None or not admits(record, digest) or not has_quota(record):
            return Lookup(record, wait)

        def work(db: sqlite3.Connection) -> PeriodUsage:
            images = _usage_row(db, key_id, day)[0]
            return PeriodUsage(day, month, images, _usage_row(db, key_id, month)[1])

        return Lookup(record, wait, await self._run(work))

    async def list(self) -> list[KeyRecord]:
        def work(db: sqlite3.Connection) -> list[KeyRecord]:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created, key_id").fetchall()
            return [_record(row) for row in rows]

        return await self._run(work)

    async def revoke(self, key_id: str, at: int) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE api_keys SET revoked = COALESCE(revoked, ?) WHERE key_id = ?",
                (at, key_id),
            )
            return cursor.rowcount > 0

        return await self._run(work)

    async def take_request(self, key_id: str, per_minute: int) -> float | None:
        def work(db: sqlite3.Connection) -> float | None:
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM key_requests WHERE key_id = ? AND at <= ?",
                    (key_id, now - WINDOW_S),
                )
                count, oldest = db.execute(
                    "SELECT COUNT(*), MIN(at) FROM key_requests WHERE key_id = ?", (key_id,)
                ).fetchone()
                if count >= per_minute:
                    return max(0.0, float(oldest) + WINDOW_S - now)
                db.execute("INSERT INTO key_requests VALUES (?, ?)", (key_id, now))
                return None
            finally:
                db.execute("COMMIT")

        return await self._run(work)

    async def check_quota(self, check: QuotaCheck) -> QuotaRefusal | None:
        def work(db: sqlite3.Connection) -> QuotaRefusal | None:
            day = _usage_row(db, check.key_id, check.day)
            month = _usage_row(db, check.key_id, check.month)
            return refusal(check, day_images=day[0], month_units=month[1])

        return await self._run(work)

    async def add_usage(
        self, key_id: str, day: str, month: str, images: int, cost_units: int
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                for period in (day, month):
                    db.execute(
                        "INSERT INTO key_usage VALUES (?, ?, ?, ?) ON CONFLICT (key_id, period)"
                        " DO UPDATE SET images = images + excluded.images,"
                        " cost_units = cost_units + excluded.cost_units",
                        (key_id, period, images, cost_units),
                    )
            finally:
                db.execute("COMMIT")

        await self._run(work)

    async def usage(self, key_id: str) -> dict[str, Usage]:
        def work(db: sqlite3.Connection) -> dict[str, Usage]:
            rows = db.execute(
                "SELECT period, images, cost_units FROM key_usage WHERE key_id = ?", (key_id,)
            ).fetchall()
            return {period: Usage(images, from_units(units)) for period, images, units in rows}

        return await self._run(work)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)


def _usage_row(db: sqlite3.Connection, key_id: str, period: str) -> tuple[int, int]:
    row = db.execute(
        "SELECT images, cost_units FROM key_usage WHERE key_id = ? AND period = ?",
        (key_id, period),
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _record(row: tuple[object, ...]) -> KeyRecord:
    (key_id, digest, name, owner, created, revoked, rpm, per_day, budget, models) = row
    return KeyRecord(
        key_id=str(key_id),
        digest=str(digest),
        name=str(name),
        owner=str(owner),
        created=int(str(created)),
        revoked=None if revoked is None else int(str(revoked)),
        limits=Limits(
            requests_per_minute=None if rpm is None else int(str(rpm)),
            images_per_day=None if per_day is None else int(str(per_day)),
            monthly_budget=None if budget is None else from_units(int(str(budget))),
        ),
        models=tuple(json.loads(str(models))),
    )
