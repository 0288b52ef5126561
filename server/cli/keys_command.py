"""`image-service keys`: create, list, revoke and meter API keys.

The commands open the store the server reads, from the same settings:
Redis when `IMAGE_SERVICE_REDIS_URL` is set, else the SQLite file
`IMAGE_SERVICE_AUTH_DB` (default `data/auth.sqlite3`). `create` prints the
key on stdout, once (`KEY=$(image-service keys create team)` captures it),
and everything else on stderr; only its hash is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

EXIT_OK = 0
EXIT_NOT_FOUND = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _budget(text: str) -> Decimal:
    from server.auth.admin import parse_budget

    try:
        return parse_budget(text)
    except (ValueError, ArithmeticError):
        raise argparse.ArgumentTypeError(f"expected an amount in USD, e.g. 500: {text!r}") from None


def _models(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` with its subcommands `create`, `list`, `revoke` and `usage`."""
    keys = subparsers.add_parser(
        "keys",
        help="manage API keys (in the store the server reads)",
        description="Create, list, revoke and meter API keys. The store is Redis when "
        "IMAGE_SERVICE_REDIS_URL is set, else the SQLite file IMAGE_SERVICE_AUTH_DB.",
    )
    commands = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("name", help="what the key is for, e.g. checkout-team")
    create.add_argument("--owner", default="", help="who to ask about it")
    create.add_argument("--rpm", type=_positive_int, metavar="N", help="requests per minute")
    create.add_argument("--images-per-day", type=_positive_int, metavar="N")
    create.add_argument("--monthly-budget", type=_budget, metavar="USD")
    create.add_argument(
        "--models",
        type=_models,
        default=(),
        metavar="PATTERNS",
        help="comma-separated models or patterns the key may use, e.g. 'azure/*,google/*' "
        "(default: all)",
    )
    create.set_defaults(func=_reporting(_create))

    listing = commands.add_parser("list", help="list keys (ids, never the keys)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_reporting(_list))

    revoke = commands.add_parser("revoke", help="revoke a key at once, on every replica")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(func=_reporting(_revoke))

    usage = commands.add_parser("usage", help="images and cost of a key per day and month")
    usage.add_argument("key_id", metavar="KEY_ID")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=_reporting(_usage))


EXIT_UNAVAILABLE = 1


def _reporting(
    command: Callable[[argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """`command`, printing one line instead of a traceback when the store is unreachable."""

    async def run(args: argparse.Namespace) -> int:
        from server.auth.store import StoreUnavailable

        try:
            return await command(args)
        except StoreUnavailable as error:
            print(f"error: the key store is unavailable ({error})", file=sys.stderr)
            return EXIT_UNAVAILABLE

    return run


def _open() -> Any:
    from server.auth.build import open_key_store
    from server.settings import Settings

    return open_key_store(Settings())


async def _create(args: argparse.Namespace) -> int:
    from server.auth.admin import create_key
    from server.auth.keys import Limits

    store = _open()
    try:
        key, record = await create_key(
            store,
            args.name,
            owner=args.owner,
            limits=Limits(args.rpm, args.images_per_day, args.monthly_budget),
            models=args.models,
        )
    finally:
        await store.aclose()
    print(key, flush=True)
    print(
        f"created {record.key_id} ({record.name}); the key above is shown only now.",
        file=sys.stderr,
    )
    return EXIT_OK


def _describe(record: Any) -> dict[str, Any]:
    limits = record.limits
    return {
        "key_id": record.key_id,
        "name": record.name,
        "owner": record.owner,
        "created": record.created,
        "revoked": record.revoked,
        "rpm": limits.requests_per_minute,
        "images_per_day": limits.images_per_day,
        "monthly_budget": None if limits.monthly_budget is None else str(limits.monthly_budget),
        "models": list(record.models),
    }


def _when(epoch: int | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))


async def _list(args: argparse.Namespace) -> int:
    store = _open()
    try:
        records = await store.list()
    finally:
        await store.aclose()
    rows = [_describe(r) for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'KEY ID':<17} {'NAME':<20} {'STATUS':<8} {'CREATED':<17} LIMITS / MODELS")
    for row in rows:
        status = "active" if row["revoked"] is None else "revoked"
        limits = ", ".join(
            f"{name} {row[name]}"
            for name in ("rpm", "images_per_day", "monthly_budget")
            if row[name] is not None
        )
        models = ",".join(row["models"]) or "all models"
        print(
            f"{row['key_id']:<17} {row['name']:<20} {status:<8} {_when(row['created']):<17} "
            f"{limits or 'no limits'}; {models}"
        )
    return EXIT_OK


async def _revoke(args: argparse.Namespace) -> int:
    from server.auth.admin import KeyNotFound, revoke_key

    store = _open()
    try:
        await revoke_key(store, args.key_id)
    except KeyNotFound:
        print(f"error: no key {args.key_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    finally:
        await store.aclose()
    print(f"revoked {args.key_id}", file=sys.stderr)
    return EXIT_OK


async def _usage(args: argparse.Namespace) -> int:
    from server.auth.admin import KeyNotFound, key_usage

    store = _open()
    try:
        record, usage = await key_usage(store, args.key_id)
    except KeyNotFound:
        print(f"error: no key {args.key_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    finally:
        await store.aclose()
    periods = [
        {"period": period, "images": u.images, "cost": str(u.cost)}
        for period, u in sorted(usage.items(), reverse=True)
    ]
    if args.json:
        print(json.dumps({"key_id": record.key_id, "name": record.name, "usage": periods}))
        return EXIT_OK
    print(f"{record.key_id} ({record.name})")
    print(f"{'PERIOD':<12} {'IMAGES':>8} {'COST USD':>14}")
    for row in periods:
        print(f"{row['period']:<12} {row['images']:>8} {row['cost']:>14}")
    return EXIT_OK
