"""What the client commands print: pure functions from messages to strings.

Records and catalogues as aligned plain text, messages as protobuf JSON
(proto field names), and RPC errors with their `google.rpc` details. Nothing
here does I/O, so all of it is testable without a server.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.operation_names import operation_name


def to_json(message: Message, *, indent: int | None = 2) -> str:
    """`message` as proto3 JSON with the proto's field names and every field.

    `indent=None` gives one line, for streams (one JSON object per message).
    """
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=indent,
        ensure_ascii=False,
    )


def format_usd(amount: str) -> str:
    """A decimal USD string such as `0.04000000` as `$0.04` (at least cents)."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return amount
    exponent = value.normalize().as_tuple().exponent
    if not isinstance(exponent, int):  # NaN or infinity
        return amount
    return f"${value:.{max(2, -exponent)}f}"


def format_image_line(image: pb.Image) -> str:
    """One line for an image: index, size produced, and where it is."""
    where = image.url if image.stored and image.url else "inline (not stored)"
    line = f"image {image.index}: {image.width}x{image.height} {where}"
    if image.revised_prompt:
        line += f"\n  revised prompt: {image.revised_prompt}"
    return line


def format_generation(generation: pb.Generation, *, include_images: bool = False) -> str:
    """The generation record as aligned `label  value` lines.

    Streams print each image as it arrives, so they leave `include_images`
    off; `get` turns it on.
    """
    rows: list[tuple[str, str]] = [
        ("generation_id", generation.generation_id),
        ("model", generation.model),
        ("operation", operation_name(generation.operation)),
    ]
    if include_images:
        if generation.prompt:
            rows.append(("prompt", generation.prompt))
        if generation.size:
            rows.append(("size", generation.size))
        if generation.created:
            created = datetime.datetime.fromtimestamp(generation.created, tz=datetime.UTC)
            rows.append(("created", created.isoformat()))
    rows.append(("images", f"{len(generation.images)} of {generation.n or 1} requested"))
    rows.append(("cost", format_usd(generation.cost) if generation.cost else "-"))
    rows.append(("latency_ms", str(generation.latency_ms)))
    if generation.request_id:
        rows.append(("request_id", generation.request_id))
    if generation.filtered_count:
        rows.append(
            ("filtered", f"{_images(generation.filtered_count)} withheld by the safety filter")
        )
    rows.extend(
        ("failure", f"{_images(failure.image_count)}: {failure.reason}: {failure.message}")
        for failure in generation.failures
    )
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    if include_images:
        lines.extend(format_image_line(image) for image in sorted_images(generation.images))
    return "\n".join(lines)


def format_models(models: Iterable[pb.Model]) -> str:
    """The model catalogue as a plain-text table, one model per row."""
    header = ("NAME", "PROVIDER", "SIZES", "IMAGES/CALL", "OPERATIONS", "PRICE", "CONFIGURED")
    rows = [
        (
            model.name,
            model.provider,
            ",".join(model.sizes),
            str(model.images_per_call),
            ",".join(operation_name(op) for op in model.operations),
            format_usd(model.price_per_image) if model.price_per_image else "-",
            "yes" if model.configured else "no",
        )
        for model in models
    ]
    return format_table(header, rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, without trailing blanks."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def format_rpc_error(code: grpc.StatusCode, message: str, status: Any | None) -> str:
    """`error: CODE: message`, then one indented line per `google.rpc` detail.

    `status` is the `google.rpc.Status` from the call's trailers, or None.
    ErrorInfo, BadRequest and RetryInfo are spelled out; other detail types
    are named by their type URL.
    """
    lines = [f"error: {code.name}: {message}"]
    details = status.details if status is not None else ()
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            line = f"  reason: {info.reason}"
            if info.domain:
                line += f" ({info.domain})"
            if info.metadata:
                line += " " + ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
            lines.append(line)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            lines.extend(
                f"  {violation.field}: {violation.description}"
                for violation in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            seconds = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            lines.append(f"  retry after: {seconds:g}s")
        else:
            lines.append(f"  detail: {detail.type_url}")
    return "\n".join(lines)


def rich_status(error: grpc.RpcError) -> Any | None:
    """The `google.rpc.Status` an RPC error carries in its trailers, or None.

    `AioRpcError` offers the synchronous `code()`, `details()` and
    `trailing_metadata()` that `rpc_status.from_call` reads. A status that
    disagrees with the call's code or message is ignored rather than
    masking the error being reported.
    """
    try:
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        return None
    return status


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def sorted_images(images: Iterable[pb.Image]) -> list[pb.Image]:
    """Images in index order (streams deliver them in finishing order)."""
    return sorted(images, key=lambda image: image.index)
