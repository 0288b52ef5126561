"""The fan-out: how n images split into upstream calls, and how their
outcomes add up to the failures a generation reports."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from server.domain.catalogue import ModelSpec, SeedSupport
from server.domain.errors import ContentRejected, ImageServiceError
from server.domain.ports import UpstreamCall
from server.domain.pricing import TokenUsage
from server.domain.records import ImageFailure
from server.domain.validation import ValidRequest


@dataclass(frozen=True)
class PlannedCall:
    """One upstream call; its images take indices from `first_index` on."""

    first_index: int
    call: UpstreamCall


SEED_RANGE = 2**32


def call_seeds(spec: ModelSpec, seed: int | None, firsts: list[int]) -> list[int | None]:
    """The seed of each upstream call of one generation, in order.

    Calls get distinct seeds derived from the caller's (its seed plus the
    index of the call's first image, so the call that makes image 0 gets
    the caller's seed exactly), or from a random base where the upstream
    takes a seed and the caller gave none: n identical requests would
    otherwise return n copies of one image. None where no seed is sent.
    """
    if spec.seed is SeedSupport.NONE:
        return [None for _ in firsts]
    if seed is None:
        if spec.seed is not SeedSupport.RANDOM:
            return [None for _ in firsts]
        # Below 2**31 so that every upstream range takes it unwrapped.
        seed = secrets.randbelow(2**31 - spec.max_images_per_request)
    return [(seed + first) % SEED_RANGE for first in firsts]


def seed_warnings(spec: ModelSpec, seed: int | None) -> tuple[str, ...]:
    """What to tell a caller whose seed the model cannot use."""
    if seed is not None and spec.seed is SeedSupport.NONE:
        return (f"{spec.name} takes no seed; the request's seed was not used.",)
    return ()


def plan_calls(valid: ValidRequest, seed: int | None) -> list[PlannedCall]:
    """Split n images into calls of at most the model's images_per_call each."""
    per_call = max(1, valid.spec.images_per_call)
    firsts = list(range(0, valid.n, per_call))
    return [
        PlannedCall(
            first,
            UpstreamCall(
                model=valid.spec,
                prompt=valid.prompt,
                size=valid.size,
                count=min(per_call, valid.n - first),
                operation=valid.operation,
                images=valid.images,
                mask=valid.mask,
                seed=call_seed,
                options=valid.options,
            ),
        )
        for first, call_seed in zip(firsts, call_seeds(valid.spec, seed, firsts), strict=True)
    ]


@dataclass
class CallOutcome:
    """Sent by a call after its images: how many are missing and why."""

    missing: int = 0
    filtered: int = 0
    error: ImageServiceError | None = None
    # Whether the call produced images, and the tokens it reported using.
    produced: bool = False
    usage: TokenUsage | None = None


def failures(outcomes: list[CallOutcome]) -> tuple[ImageFailure, ...]:
    """Why images are missing, one entry per cause per call."""
    found: list[ImageFailure] = []
    for outcome in outcomes:
        if outcome.error is not None:
            found.append(ImageFailure(outcome.missing, outcome.error.reason, outcome.error.message))
            continue
        if outcome.filtered:
            found.append(
                ImageFailure(
                    outcome.filtered,
                    ContentRejected.reason,
                    "The upstream's safety filter withheld these images.",
                )
            )
        if outcome.missing > outcome.filtered:
            found.append(
                ImageFailure(
                    outcome.missing - outcome.filtered,
                    "UPSTREAM_SHORTFALL",
                    "The upstream returned fewer images than requested.",
                )
            )
    return tuple(found)


def most_telling_error(outcomes: list[CallOutcome]) -> ImageServiceError:
    """The error to raise when no call produced an image: a safety refusal
    first (it must never look like an outage), else the first error."""
    errors = [o.error for o in outcomes if o.error is not None]
    for error in errors:
        if isinstance(error, ContentRejected):
            return error
    if errors:
        return errors[0]
    if any(o.filtered for o in outcomes):
        return ContentRejected("The upstream's safety filter withheld every image.")
    return ImageServiceError("The upstream returned no images.")
