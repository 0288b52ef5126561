"""Generation ids: `gen-` followed by 16 random hex characters."""

from __future__ import annotations

import re
import secrets

from server.domain.errors import FieldViolation, InvalidArgument

_GENERATION_ID = re.compile(r"gen-[0-9a-f]{16}")


def new_generation_id() -> str:
    """A fresh id; 64 random bits, so ids never collide in practice."""
    return "gen-" + secrets.token_hex(8)


def check_generation_id(generation_id: str) -> None:
    """`InvalidArgument` on `generation_id` unless it has the shape of an id."""
    if not _GENERATION_ID.fullmatch(generation_id):
        raise InvalidArgument(
            [FieldViolation("generation_id", "must look like gen-0123456789abcdef")]
        )
