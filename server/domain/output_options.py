"""OpenAI Images' output parameters: which a request can have, and what happens
to the ones a model cannot honour.

`quality`, `output_format`, `output_compression`, `background`,
`moderation`, `user` and `partial_images` are accepted on every request.
`plan_output` decides, before any upstream call, what each becomes:

- honoured: `output_format` (png/jpeg/webp: the produced image is re-encoded
  when the upstream made another format), `output_compression` with jpeg or
  webp, `background` when the operation's output already has it (transparent
  for background removal, opaque for everything else), `auto` values, `user`
  (kept in the generation record), `partial_images = 0`;
- not honoured: everything else (no catalogue upstream renders partial
  images, takes a moderation level or a quality knob the service maps).
  The deployment's `UnsupportedPolicy` decides: REPORT serves the request
  with the upstream's default and says so in the record's warnings; REFUSE
  answers INVALID_ARGUMENT naming the parameter. Never a silent drop.

A value outside a parameter's set is INVALID_ARGUMENT whatever the policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.requests import Operation, OutputOptions

QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
BACKGROUNDS = ("auto", "transparent", "opaque")
MODERATIONS = ("auto", "low")
MAX_PARTIAL_IMAGES = 3
MAX_USER_CHARS = 256


class UnsupportedPolicy(enum.Enum):
    """What a deployment does with a parameter a model cannot honour."""

    REPORT = "report"
    REFUSE = "refuse"


@dataclass(frozen=True)
class OutputPlan:
    """What the delivered images will be, and what the caller is told."""

    # MIME type to re-encode produced images to; None keeps what the upstream made.
    mime_type: str | None
    compression: int | None
    # As reported back (OpenAI's response fields).
    quality: str
    output_format: str
    background: str
    warnings: tuple[str, ...] = ()


def _check_values(options: OutputOptions) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    for name, value, allowed in (
        ("quality", options.quality, QUALITIES),
        ("output_format", options.output_format, tuple(FORMATS)),
        ("background", options.background, BACKGROUNDS),
        ("moderation", options.moderation, MODERATIONS),
    ):
        if value and value not in allowed:
            bad.append(FieldViolation(name, f"must be one of {', '.join(allowed)}"))
    if options.output_compression is not None and not 0 <= options.output_compression <= 100:
        bad.append(FieldViolation("output_compression", "must be between 0 and 100"))
    if len(options.user) > MAX_USER_CHARS:
        bad.append(FieldViolation("user", f"is longer than {MAX_USER_CHARS} characters"))
    if not 0 <= options.partial_images <= MAX_PARTIAL_IMAGES:
        bad.append(FieldViolation("partial_images", f"must be between 0 and {MAX_PARTIAL_IMAGES}"))
    return bad


def plan_output(
    model: str, operation: Operation, options: OutputOptions, policy: UnsupportedPolicy
) -> OutputPlan:
    """The plan for `options` on `model`; InvalidArgument naming the field
    for a bad value, or (policy REFUSE) for one the model cannot honour."""
    bad = _check_values(options)
    if bad:
        raise InvalidArgument(bad)
    fmt = options.output_format or "png"
    produces_alpha = operation is Operation.REMOVE_BACKGROUND
    background = options.background or "auto"
    unmet: list[tuple[str, str]] = []
    if options.quality not in ("", "auto"):
        unmet.append(("quality", f"{model} has no quality setting the service maps"))
    if options.moderation not in ("", "auto"):
        unmet.append(("moderation", f"{model} takes no moderation level"))
    if options.partial_images:
        unmet.append(("partial_images", f"{model} renders no partial images"))
    if background == "transparent" and (not produces_alpha or fmt == "jpeg"):
        unmet.append(("background", f"{model} cannot make a transparent {fmt} here"))
    if background == "opaque" and produces_alpha:
        unmet.append(("background", "background removal always makes a transparent image"))
    if options.output_compression is not None and fmt == "png":
        unmet.append(("output_compression", "applies to jpeg and webp only"))
    if unmet and policy is UnsupportedPolicy.REFUSE:
        raise InvalidArgument(
            [FieldViolation(name, f"cannot be honoured: {why}") for name, why in unmet]
        )
    unmet_names = {name for name, _ in unmet}
    warnings = tuple(
        f"{name}={_shown(options, name)} was not honoured ({why}); the default was used."
        for name, why in unmet
    )
    return OutputPlan(
        mime_type=FORMATS[fmt] if options.output_format else None,
        compression=None if "output_compression" in unmet_names else options.output_compression,
        quality="auto" if "quality" in unmet_names else (options.quality or "auto"),
        output_format=fmt,
        background=(
            ("transparent" if produces_alpha and fmt != "jpeg" else "opaque")
            if background == "auto" or "background" in unmet_names
            else background
        ),
        warnings=warnings,
    )


def _shown(options: OutputOptions, name: str) -> str:
    return str(getattr(options, name))
