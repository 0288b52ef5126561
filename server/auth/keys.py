"""API keys: their format, hash and public id, and what is stored per key.

A key is `ck-` followed by 43 base62 characters from `secrets` (about 256
bits). Only its SHA-256 digest is stored, beside a public key id (`key_`
plus 12 hex characters of that digest) used to find the record and to name
the key in listings, logs and metrics.

SHA-256 rather than a slow KDF (bcrypt, scrypt, Argon2): a slow hash
protects low-entropy secrets that people choose. A 256-bit random key
cannot be guessed from its digest at any hashing speed, while a slow hash
on every RPC would cost tens of milliseconds of CPU per call and hand
anyone with a bad key a cheap way to burn the server's CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field
from decimal import Decimal

KEY_PREFIX = "ck-"
_BASE62 = string.ascii_letters + string.digits
_RANDOM_CHARS = 43
# What the service accepts: at least 32 base62 characters after the prefix.
KEY_PATTERN = re.compile(r"ck-[A-Za-z0-9]{32,128}")
KEY_ID_PATTERN = re.compile(r"key_[0-9a-f]{12}")
_BEARER = re.compile(r"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)

# Costs are counted in 1e-8 USD, the precision the API reports them in, so
# that counters are integers (atomic increments, no float drift).
COST_UNITS_PER_USD = 100_000_000


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_CHARS))


def digest_of(key: str) -> str:
    """The stored form of `key`: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    """The public id of `key` (derived from its digest, so it reveals nothing)."""
    return "key_" + digest_of(key)[:12]


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer ck-...` value, or None if it has none."""
    if not authorization:
        return None
    match = _BEARER.fullmatch(authorization)
    if match is None or not KEY_PATTERN.fullmatch(match.group(1)):
        return None
    return match.group(1)


def digests_match(stored: str, presented: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(stored.encode(), presented.encode())


def to_units(usd: Decimal) -> int:
    return int((usd * COST_UNITS_PER_USD).to_integral_value())


def from_units(units: int) -> Decimal:
    return (Decimal(units) / COST_UNITS_PER_USD).quantize(Decimal("0.00000001"))


@dataclass(frozen=True)
class Limits:
    """A key's limits; None is no limit."""

    requests_per_minute: int | None = None
    images_per_day: int | None = None
    monthly_budget: Decimal | None = None


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored: everything but the key itself."""

    key_id: str
    digest: str = field(repr=False)
    name: str
    owner: str = ""
    created: int = 0
    revoked: int | None = None
    limits: Limits = field(default_factory=Limits)
    # Shell-style patterns of the models the key may use; empty: all.
    models: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.revoked is None


@dataclass(frozen=True)
class Usage:
    """What a key produced in one period (a UTC day `2026-12-04` or month `2026-12`)."""

    images: int = 0
    cost: Decimal = Decimal(0)
