"""Which edit operation takes which `EditOptions` field, within which range,
and what each operation requires.

The rules are the API's, the same for every model (a model's narrower range,
say creative upscale's creativity, is its backend's to check). A field set
for an operation that does not use it is a violation, not silently dropped;
so is a required one left out. Every violation names the request field, as
it is spelled on gRPC and REST alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from server.domain.errors import FieldViolation
from server.domain.imaging import MAX_INPUT_PIXELS, ImageTooLarge, inspect
from server.domain.requests import EditOptions, Operation

MAX_SEARCH_PROMPT_CHARS = 4000
MAX_OUTPAINT_PIXELS = 2000

OUTPAINT_SIDES = ("left", "right", "up", "down")

# The operations that need a prompt (besides generate, prompt edit, inpaint).
PROMPTED = frozenset(
    {
        Operation.SEARCH_REPLACE,
        Operation.SEARCH_RECOLOR,
        Operation.CONTROL_SKETCH,
        Operation.CONTROL_STRUCTURE,
        Operation.STYLE_GUIDE,
    }
)
# The operations that take a mask.
MASKED = frozenset({Operation.INPAINT, Operation.ERASE_OBJECT})


@dataclass(frozen=True)
class _Rule:
    """Where one field may be used, whether it must be, and its range."""

    used_by: frozenset[Operation]
    required: bool = False
    low: float | None = None
    high: float | None = None


_UNIT = (0.0, 1.0)

RULES: Mapping[str, _Rule] = {
    "search_prompt": _Rule(frozenset({Operation.SEARCH_REPLACE}), required=True),
    "select_prompt": _Rule(frozenset({Operation.SEARCH_RECOLOR}), required=True),
    "control_strength": _Rule(
        frozenset({Operation.CONTROL_SKETCH, Operation.CONTROL_STRUCTURE}), False, *_UNIT
    ),
    "fidelity": _Rule(frozenset({Operation.STYLE_GUIDE}), False, *_UNIT),
    "creativity": _Rule(frozenset({Operation.UPSCALE, Operation.OUTPAINT}), False, *_UNIT),
    **{
        side: _Rule(frozenset({Operation.OUTPAINT}), False, 0, MAX_OUTPAINT_PIXELS)
        for side in OUTPAINT_SIDES
    },
    "style_image": _Rule(frozenset({Operation.STYLE_TRANSFER}), required=True),
    "style_strength": _Rule(frozenset({Operation.STYLE_TRANSFER}), False, *_UNIT),
    "composition_fidelity": _Rule(frozenset({Operation.STYLE_TRANSFER}), False, *_UNIT),
    "change_strength": _Rule(frozenset({Operation.STYLE_TRANSFER}), False, 0.1, 1.0),
}


def _is_set(value: object) -> bool:
    # A strength of 0.0 is a choice; only None leaves a number unset. The
    # outpaint margins (ints) are unset at 0, text and images when empty.
    if value is None or isinstance(value, float):
        return value is not None
    return value not in ("", 0, b"")


def given(options: EditOptions) -> dict[str, object]:
    """The fields `options` sets, by name."""
    return {
        f.name: getattr(options, f.name)
        for f in fields(options)
        if _is_set(getattr(options, f.name))
    }


def _names(operations: frozenset[Operation]) -> str:
    return ", ".join(sorted(op.value for op in operations))


def _check_value(name: str, value: object, rule: _Rule, out: list[FieldViolation]) -> None:
    if isinstance(value, str):
        if not value.strip():
            out.append(FieldViolation(name, "is required"))
        elif len(value) > MAX_SEARCH_PROMPT_CHARS:
            out.append(FieldViolation(name, f"is longer than {MAX_SEARCH_PROMPT_CHARS} characters"))
        return
    if isinstance(value, bytes):
        try:
            inspect(value, max_pixels=MAX_INPUT_PIXELS)
        except ImageTooLarge as error:
            out.append(FieldViolation(name, str(error)))
        except ValueError:
            out.append(FieldViolation(name, "is not a PNG, JPEG or WebP image"))
        return
    if rule.low is None or rule.high is None or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        out.append(FieldViolation(name, "must be a finite number"))
    elif not rule.low <= value <= rule.high:
        out.append(FieldViolation(name, f"must be between {rule.low:g} and {rule.high:g}"))


def check_edit_options(
    operation: Operation, options: EditOptions, out: list[FieldViolation]
) -> None:
    """Append a violation for each field `operation` does not use, each
    required one missing, and each value out of range."""
    present = given(options)
    for name, rule in RULES.items():
        if name in present:
            if operation not in rule.used_by:
                out.append(
                    FieldViolation(name, f"is only used by the {_names(rule.used_by)} operation(s)")
                )
            else:
                _check_value(name, present[name], rule, out)
        elif rule.required and operation in rule.used_by:
            out.append(FieldViolation(name, f"is required for {operation.value}"))
    if operation is Operation.OUTPAINT and not any(side in present for side in OUTPAINT_SIDES):
        out.append(
            FieldViolation(
                "left", "at least one of left, right, up and down must be more than 0 pixels"
            )
        )


def fingerprint_fields(options: EditOptions) -> dict[str, object]:
    """`options` as JSON-ready values for the idempotency digest (the style
    image by its hash)."""
    found = given(options)
    image = found.get("style_image")
    if isinstance(image, bytes):
        found["style_image"] = hashlib.sha256(image).hexdigest()
    return found
