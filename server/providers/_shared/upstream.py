"""What every backend says about its upstream, whatever it speaks (HTTP, boto3, gRPC).

- `Upstream`: who a backend talks to, for error messages, metadata and logs.
- `attempt_within`: the one deadline rule for a single upstream attempt.
- `unavailable`, `timed_out`: the two errors every backend raises alike.
- `safe_code`: which upstream error codes may be copied into metadata.
- `blamed_field`: the request field an upstream's error message names.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamTimeout, UpstreamUnavailable

T = TypeVar("T")

USER_AGENT = "chuizi-image-service/0.1"
# Connecting is quick or not happening; the long budget is for the upstream
# to generate, which FLUX.2 and Wan take minutes to do.
CONNECT_TIMEOUT_S = 10.0

# Substrings of an upstream's error message → the request field to blame.
# Checked in order; the first match wins.
DEFAULT_FIELD_HINTS: tuple[tuple[str, str], ...] = (
    ("mask", "mask"),
    ("input_image", "images"),
    ("image", "images"),
    ("aspect_ratio", "size"),
    ("width", "size"),
    ("height", "size"),
    ("size", "size"),
    ("seed", "seed"),
    ("prompt", "prompt"),
)
# Blamed when nothing in the upstream's answer names a field.
WHOLE_REQUEST = "request"

# An upstream error code is copied into error metadata only when it looks
# like a code (an identifier-ish token), never free text that could quote
# the request back.
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class Upstream:
    """Who a backend talks to, for messages, metadata and logs.

    `key` is the backend's registry key; the settings are the environment
    variables a message tells the operator to check.
    """

    key: str
    name: str
    credential_setting: str
    endpoint_setting: str = ""


def safe_code(code: str | None) -> str:
    """`code` if it may be copied into error metadata, else ""."""
    return code if code and _SAFE_CODE.fullmatch(code) else ""


def blamed_field(message: str, hints: Sequence[tuple[str, str]] = DEFAULT_FIELD_HINTS) -> str:
    """The request field an upstream's error `message` names, else `WHOLE_REQUEST`."""
    lowered = message.lower()
    for needle, field in hints:
        if needle in lowered:
            return field
    return WHOLE_REQUEST


def unavailable(upstream: Upstream, message: str, **metadata: str) -> UpstreamUnavailable:
    """A retryable failure of `upstream` (a malformed 2xx is most likely a
    glitch on the way back, so it is retried too)."""
    return UpstreamUnavailable(message, metadata={"upstream": upstream.key, **metadata})


def timed_out(upstream: Upstream, metadata: dict[str, str] | None = None) -> UpstreamTimeout:
    """`upstream` did not answer within the attempt's budget or the deadline."""
    return UpstreamTimeout(
        f"{upstream.name} did not answer in time.",
        metadata={"upstream": upstream.key, **(metadata or {})},
    )


async def attempt_within(
    deadline: Deadline,
    timeout_s: float,
    upstream: Upstream,
    attempt: Callable[[float], Awaitable[T]],
) -> T:
    """Run one upstream attempt within `min(timeout_s, deadline.remaining())`.

    `attempt` gets that budget (to pass on to its client as a timeout) and
    must raise domain errors. The rule every backend shares:

    - no budget left: `UpstreamTimeout` before anything is sent;
    - the budget runs out (whatever the client's own timeouts did):
      `UpstreamTimeout`, so a trickling answer cannot outlive the deadline;
    - any other failure once the deadline has passed is `UpstreamTimeout`
      too, since the caller can no longer use a retry.
    """
    budget = deadline.cap(timeout_s)
    if budget <= 0:
        raise UpstreamTimeout(
            "The deadline passed before the upstream answered.",
            metadata={"upstream": upstream.key},
        )
    try:
        async with asyncio.timeout(budget):
            return await attempt(budget)
    except TimeoutError:
        raise timed_out(upstream) from None
    except ImageServiceError as error:
        if deadline.expired() and not isinstance(error, UpstreamTimeout):
            raise timed_out(upstream, error.metadata) from error
        raise
