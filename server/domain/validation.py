"""Request validation against the catalogue.

Every problem is reported at once as field violations naming the request
field, so a caller fixes everything in one round trip.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.domain.catalogue import ModelSpec
from server.domain.edit_options import MASKED, PROMPTED, check_edit_options
from server.domain.errors import CapabilityNotSupported, FieldViolation, InvalidArgument
from server.domain.imaging import MAX_INPUT_PIXELS, ImageTooLarge, inspect, mask_to_grayscale
from server.domain.requests import (
    DEFAULT_SIZE,
    NO_EDIT_OPTIONS,
    AnyRequest,
    EditOptions,
    EditRequest,
    Operation,
    Size,
)

MAX_PROMPT_CHARS = 4000
MAX_REQUEST_ID_CHARS = 128
_PROMPTED = {Operation.GENERATE, Operation.PROMPT_EDIT, Operation.INPAINT, *PROMPTED}


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed validation, with defaults applied."""

    spec: ModelSpec
    operation: Operation
    prompt: str
    size: Size | None
    n: int
    images: tuple[bytes, ...] = ()
    mask: bytes | None = None
    options: EditOptions = NO_EDIT_OPTIONS


def check_model_name(model: str) -> None:
    if not model.strip():
        raise InvalidArgument([FieldViolation("model", "is required")])


async def validate_off_loop(request: AnyRequest, spec: ModelSpec) -> ValidRequest:
    """`validate`, with an edit's image decoding in a worker thread.

    Pillow reads every input image and converts the mask: tens of
    milliseconds of CPU for a large mask, which on the event loop would
    stall every other call in flight. A generate request decodes nothing,
    so it is checked in place.
    """
    if isinstance(request, EditRequest):
        return await asyncio.to_thread(validate, request, spec)
    return validate(request, spec)


def validate(request: AnyRequest, spec: ModelSpec) -> ValidRequest:
    """Check `request` against `spec`; raise `InvalidArgument` or
    `CapabilityNotSupported` naming every bad field."""
    operation = request.operation
    if not spec.offers(operation):
        offered = ", ".join(sorted(op.value for op in spec.operations))
        raise CapabilityNotSupported(
            [
                FieldViolation(
                    "operation", f"{spec.name} cannot {operation.value}; it offers {offered}"
                )
            ],
            metadata={"model": spec.name, "operation": operation.value},
        )
    violations: list[FieldViolation] = []
    prompt = request.prompt.strip()
    if operation in _PROMPTED and not prompt:
        violations.append(FieldViolation("prompt", "is required"))
    if len(request.prompt) > MAX_PROMPT_CHARS:
        violations.append(FieldViolation("prompt", f"is longer than {MAX_PROMPT_CHARS} characters"))
    n = request.n or 1
    if not 1 <= n <= spec.max_images_per_request:
        violations.append(
            FieldViolation("n", f"must be between 1 and {spec.max_images_per_request}")
        )
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(
            FieldViolation("request_id", f"is longer than {MAX_REQUEST_ID_CHARS} characters")
        )
    size = _check_size(request, spec, violations)
    images: tuple[bytes, ...] = ()
    mask: bytes | None = None
    options = NO_EDIT_OPTIONS
    if isinstance(request, EditRequest):
        images, mask = _check_edit_inputs(request, violations)
        check_edit_options(operation, request.options, violations)
        options = request.options
    if violations:
        raise InvalidArgument(violations)
    return ValidRequest(spec, operation, prompt, size, n, images, mask, options)


def _check_size(request: AnyRequest, spec: ModelSpec, out: list[FieldViolation]) -> Size | None:
    if not request.size:
        return DEFAULT_SIZE if request.operation is Operation.GENERATE else None
    try:
        size = Size.parse(request.size)
    except ValueError as error:
        out.append(FieldViolation("size", str(error)))
        return None
    if size not in spec.sizes:
        offered = (
            ", ".join(str(s) for s in spec.sizes) or "none (the output size follows the input)"
        )
        out.append(
            FieldViolation("size", f"{size} is not offered by {spec.name}; sizes: {offered}")
        )
        return None
    return size


def _check_edit_inputs(
    request: EditRequest, out: list[FieldViolation]
) -> tuple[tuple[bytes, ...], bytes | None]:
    if not request.images:
        out.append(FieldViolation("images", "at least one input image is required"))
        return (), None
    first_size: tuple[int, int] | None = None
    for i, data in enumerate(request.images):
        try:
            info = inspect(data, max_pixels=MAX_INPUT_PIXELS)
        except ValueError as error:
            out.append(_unreadable(f"images[{i}]", error))
            continue
        if i == 0:
            first_size = (info.width, info.height)
    mask: bytes | None = None
    if request.operation in MASKED and not request.mask:
        out.append(FieldViolation("mask", f"is required for {request.operation.value}"))
    elif request.mask and request.operation not in MASKED:
        # A mask that would be silently ignored is a caller bug worth naming.
        masked = ", ".join(sorted(op.value for op in MASKED))
        out.append(FieldViolation("mask", f"is only used by the {masked} operations"))
    elif request.mask:
        try:
            mask, width, height = mask_to_grayscale(request.mask)
        except ValueError as error:
            out.append(_unreadable("mask", error))
        else:
            if first_size and (width, height) != first_size:
                out.append(
                    FieldViolation(
                        "mask",
                        f"is {width}x{height} but the image is {first_size[0]}x{first_size[1]}",
                    )
                )
    return request.images, mask


def _unreadable(field: str, error: ValueError) -> FieldViolation:
    """The violation for an input image that `imaging` refused."""
    if isinstance(error, ImageTooLarge):
        return FieldViolation(field, str(error))
    return FieldViolation(field, "is not a PNG, JPEG or WebP image")
