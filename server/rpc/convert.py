"""Pure conversions between the generated protobuf types and the domain."""

from __future__ import annotations

from typing import cast

from chuizi.image.v1 import image_service_pb2 as pb

from server.domain.backends import ModelListing
from server.domain.catalogue import Lifecycle
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.records import DeliveredImage, GenerationRecord, format_cost
from server.domain.requests import (
    EditOptions,
    EditRequest,
    GenerateRequest,
    Operation,
    OutputOptions,
    ResponseFormat,
)

# The proto enum is `OPERATION_<NAME>` for each domain operation.
_OPERATION_TO_PB: dict[Operation, pb.Operation] = {
    op: cast(pb.Operation, pb.Operation.Value(f"OPERATION_{op.name}")) for op in Operation
}
_EDIT_OPERATIONS: dict[int, Operation] = {
    pb.OPERATION_UNSPECIFIED: Operation.PROMPT_EDIT,
    **{value: op for op, value in _OPERATION_TO_PB.items() if op is not Operation.GENERATE},
}
_STATUS_TO_PB = {
    Lifecycle.ACTIVE: pb.MODEL_STATUS_ACTIVE,
    Lifecycle.DEPRECATED: pb.MODEL_STATUS_DEPRECATED,
    Lifecycle.RETIRED: pb.MODEL_STATUS_RETIRED,
}
_RESPONSE_FORMATS: dict[int, ResponseFormat] = {
    pb.RESPONSE_FORMAT_UNSPECIFIED: ResponseFormat.URL,
    pb.RESPONSE_FORMAT_URL: ResponseFormat.URL,
    pb.RESPONSE_FORMAT_INLINE: ResponseFormat.INLINE,
}


def _response_format(value: int) -> ResponseFormat:
    try:
        return _RESPONSE_FORMATS[value]
    except KeyError:
        raise InvalidArgument(
            [FieldViolation("response_format", f"unknown value {value}")]
        ) from None


def output_options(message: pb.OutputOptions) -> OutputOptions:
    return OutputOptions(
        quality=message.quality,
        output_format=message.output_format,
        output_compression=(
            message.output_compression if message.HasField("output_compression") else None
        ),
        background=message.background,
        moderation=message.moderation,
        user=message.user,
        partial_images=message.partial_images,
    )


def generate_request(request: pb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(
        model=request.model,
        prompt=request.prompt,
        size=request.size,
        n=request.n,
        response_format=_response_format(request.response_format),
        request_id=request.request_id,
        seed=request.seed if request.HasField("seed") else None,
        output=output_options(request.output),
    )


def edit_request(request: pb.EditRequest) -> EditRequest:
    operation = _EDIT_OPERATIONS.get(request.operation)
    if operation is None:
        raise InvalidArgument(
            [FieldViolation("operation", "must be an edit operation, not generate")]
        )
    return EditRequest(
        model=request.model,
        prompt=request.prompt,
        images=tuple(request.images),
        mask=request.mask or None,
        operation=operation,
        size=request.size,
        n=request.n,
        response_format=_response_format(request.response_format),
        request_id=request.request_id,
        seed=request.seed if request.HasField("seed") else None,
        options=_edit_options(request),
        output=output_options(request.output),
    )


def _optional_float(request: pb.EditRequest, name: str) -> float | None:
    # A proto float is 32-bit: 0.3 arrives as 0.30000001192...; six places
    # give back the number the caller wrote.
    return round(getattr(request, name), 6) if request.HasField(name) else None


def _edit_options(request: pb.EditRequest) -> EditOptions:
    return EditOptions(
        search_prompt=request.search_prompt,
        select_prompt=request.select_prompt,
        control_strength=_optional_float(request, "control_strength"),
        fidelity=_optional_float(request, "fidelity"),
        creativity=_optional_float(request, "creativity"),
        left=request.left,
        right=request.right,
        up=request.up,
        down=request.down,
        style_image=request.style_image or None,
        style_strength=_optional_float(request, "style_strength"),
        composition_fidelity=_optional_float(request, "composition_fidelity"),
        change_strength=_optional_float(request, "change_strength"),
    )


def _image_fields(image: DeliveredImage) -> dict[str, object]:
    return {
        "index": image.index,
        "url": image.url,
        "data": image.data or b"",
        "mime_type": image.mime_type,
        "width": image.width,
        "height": image.height,
        "revised_prompt": image.revised_prompt,
        "stored": image.stored,
        "seed": image.seed,
    }


def image(image: DeliveredImage) -> pb.Image:
    fields = {k: v for k, v in _image_fields(image).items() if v is not None}
    return pb.Image(**fields)  # type: ignore[arg-type]


def set_image(target: pb.Image, image: DeliveredImage) -> None:
    """Fill `target`, a field of a message being built, in place.

    Assigning a finished `pb.Image` to a field (or passing it to a
    constructor) copies it, inline bytes included; filling the field in
    place copies the bytes once, into the message that is sent.
    """
    for name, value in _image_fields(image).items():
        if value is not None:
            setattr(target, name, value)


def generation(record: GenerationRecord) -> pb.Generation:
    message = pb.Generation(
        generation_id=record.generation_id,
        model=record.model,
        operation=_OPERATION_TO_PB[record.operation],
        prompt=record.prompt,
        size=record.size,
        n=record.n,
        created=record.created,
        cost=format_cost(record.cost),
        latency_ms=record.latency_ms,
        request_id=record.request_id,
        filtered_count=record.filtered_count,
        failures=[
            pb.ImageFailure(image_count=f.image_count, reason=f.reason, message=f.message)
            for f in record.failures
        ],
        served_by=record.served_by or record.model,
        upstream_model=record.upstream_model,
        warnings=record.warnings,
        quality=record.quality,
        output_format=record.output_format,
        background=record.background,
    )
    for delivered in record.images:
        set_image(message.images.add(), delivered)
    return message


def model(listing: ModelListing) -> pb.Model:
    spec = listing.spec
    return pb.Model(
        name=spec.name,
        provider=spec.provider,
        max_size=str(spec.max_size),
        sizes=[str(s) for s in spec.sizes],
        images_per_call=spec.images_per_call,
        max_images_per_request=spec.max_images_per_request,
        operations=sorted(_OPERATION_TO_PB[op] for op in spec.operations),
        price_per_image=format_cost(spec.price_per_image),
        configured=listing.configured,
        description=spec.description,
        status=_STATUS_TO_PB[spec.status],
        retirement_date=spec.retirement_date.isoformat() if spec.retirement_date else "",
        successor=spec.successor,
        routes_to=listing.routes_to,
    )
