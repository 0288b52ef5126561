"""Client commands: call a running ImageService through the generated stubs.

`generate`, `edit`, `models` and `get` each open a `grpc.aio` channel to
`--target`, make one call with `--timeout` as its deadline and print the
result for people or, with `--json`, as protobuf JSON (proto field names;
one object per line for streams). `--out DIR` saves the images.

The module has three layers, so the first and last are testable without a
server: request building and formatting (pure functions returning strings),
saving images to disk, and the command handlers that make the RPCs.

Exit codes: 0 on success; 2 when the service rejected the request itself
(INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE: fix the
invocation and retry), as argparse does for a bad command line; 1 for any
other failure (service unavailable, deadline exceeded, download failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import re
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit

import grpc
import grpc.aio
import httpx
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DEFAULT_TARGET = "127.0.0.1:50051"
# Image models take minutes; gRPC itself sets no deadline at all.
DEFAULT_TIMEOUT_S = 600.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CALLER_ERROR = 2
CALLER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

RESPONSE_FORMATS = {"url": pb.RESPONSE_FORMAT_URL, "b64_json": pb.RESPONSE_FORMAT_INLINE}
EDIT_OPERATIONS = {
    "prompt_edit": pb.OPERATION_PROMPT_EDIT,
    "inpaint": pb.OPERATION_INPAINT,
    "remove_background": pb.OPERATION_REMOVE_BACKGROUND,
    "upscale": pb.OPERATION_UPSCALE,
}
EXTENSION_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

StreamResponse: TypeAlias = pb.StreamGenerateResponse | pb.StreamEditResponse

_SIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_-]")


# --- request building ------------------------------------------------------


def build_generate_request(args: argparse.Namespace) -> pb.GenerateRequest:
    """The `GenerateRequest` for parsed `generate` arguments."""
    request = pb.GenerateRequest(
        model=args.model,
        prompt=args.prompt,
        size=args.size or "",
        n=args.n or 0,
        response_format=RESPONSE_FORMATS[args.response_format],
        request_id=args.request_id or "",
    )
    if args.seed is not None:
        request.seed = args.seed
    return request


def build_edit_request(
    args: argparse.Namespace, images: Sequence[bytes], mask: bytes | None
) -> pb.EditRequest:
    """The `EditRequest` for parsed `edit` arguments and the files' contents."""
    request = pb.EditRequest(
        model=args.model,
        prompt=args.prompt or "",
        images=images,
        mask=mask or b"",
        operation=EDIT_OPERATIONS[args.operation],
        size=args.size or "",
        n=args.n or 0,
        response_format=RESPONSE_FORMATS[args.response_format],
        request_id=args.request_id or "",
    )
    if args.seed is not None:
        request.seed = args.seed
    return request


# --- formatting -------------------------------------------------------------


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


def operation_name(operation: int) -> str:
    """`OPERATION_PROMPT_EDIT` -> `prompt_edit`, as the CLI spells it."""
    try:
        name: str = pb.Operation.Name(operation)
    except ValueError:
        return str(operation)
    return name.removeprefix("OPERATION_").lower()


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


def exit_code_for(code: grpc.StatusCode) -> int:
    """2 for errors the caller must fix in the request, 1 for the rest."""
    return EXIT_CALLER_ERROR if code in CALLER_ERROR_CODES else EXIT_FAILURE


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


# --- saving images ------------------------------------------------------------


def sorted_images(images: Iterable[pb.Image]) -> list[pb.Image]:
    """Images in index order (streams deliver them in finishing order)."""
    return sorted(images, key=lambda image: image.index)


def images_to_save(generation: pb.Generation, streamed: Mapping[int, pb.Image]) -> list[pb.Image]:
    """Each image of a finished stream in the form that has the most to save.

    The final record carries URLs but never inline bytes; the images streamed
    earlier carry the bytes when the request asked for them or storage
    failed. Prefer the streamed copy when it has bytes.
    """
    by_index = {image.index: image for image in generation.images}
    for index, image in streamed.items():
        if image.data or index not in by_index:
            by_index[index] = image
    return sorted_images(by_index.values())


def image_filename(generation_id: str, image: pb.Image) -> str:
    """`{generation_id}-{index}.{ext}`, with the extension from the MIME type.

    Falls back to the URL's extension, then `bin`. The id comes from the
    server, so anything but `[A-Za-z0-9_-]` is replaced to keep the name
    inside the output directory.
    """
    extension = EXTENSION_BY_MIME.get(image.mime_type)
    if extension is None and image.url:
        suffix = PurePosixPath(urlsplit(image.url).path).suffix.lstrip(".").lower()
        extension = suffix if suffix in EXTENSION_BY_MIME.values() else None
    safe_id = _UNSAFE_FILENAME.sub("_", generation_id) or "generation"
    return f"{safe_id}-{image.index}.{extension or 'bin'}"


async def save_image(
    out_dir: Path, generation_id: str, image: pb.Image, http: httpx.AsyncClient
) -> Path:
    """Write `image` into `out_dir` (created if missing) and return its path.

    Uses the inline bytes when present, otherwise downloads `image.url`.
    Raises ValueError if the image has neither, `httpx.HTTPError` if the
    download fails and OSError if the file cannot be written.
    """
    if image.data:
        data = image.data
    elif image.url:
        response = await http.get(image.url)
        response.raise_for_status()
        data = response.content
    else:
        raise ValueError(f"image {image.index} has neither inline data nor a URL")
    path = out_dir / image_filename(generation_id, image)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def save_images(
    out_dir: Path,
    generation_id: str,
    images: Iterable[pb.Image],
    *,
    http_timeout: float,
    quiet: bool,
) -> bool:
    """Save every image, reporting each on stdout (stderr when `quiet`).

    Returns False if any image could not be saved; the others are saved
    regardless.
    """
    report = sys.stderr if quiet else sys.stdout
    ok = True
    async with httpx.AsyncClient(timeout=http_timeout, follow_redirects=True) as http:
        for image in images:
            try:
                path = await save_image(out_dir, generation_id, image, http)
            except (ValueError, httpx.HTTPError, OSError) as exc:
                print(f"error: could not save image {image.index}: {exc}", file=sys.stderr)
                ok = False
            else:
                print(f"saved {path}", file=report)
    return ok


# --- RPCs -------------------------------------------------------------------------


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to `target` that allows 64 MiB messages both ways."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )


@contextlib.asynccontextmanager
async def connect(target: str) -> AsyncIterator[Any]:
    """An `ImageServiceStub` on a channel from `open_channel`, closed on exit."""
    async with open_channel(target) as channel:
        # The generated *_pb2_grpc module has no type stubs.
        yield pb_grpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]


def _report_rpc_error(error: grpc.RpcError) -> int:
    print(
        format_rpc_error(error.code(), error.details() or "", rich_status(error)),
        file=sys.stderr,
    )
    return exit_code_for(error.code())


async def _print_stream(stream: AsyncIterator[StreamResponse], args: argparse.Namespace) -> int:
    """Print a StreamGenerate/StreamEdit stream as it arrives, then save images."""
    streamed: dict[int, pb.Image] = {}
    generation: pb.Generation | None = None
    async for message in stream:
        if args.json:
            print(to_json(message, indent=None), flush=True)
        event = message.WhichOneof("event")
        if event == "image":
            streamed[message.image.index] = message.image
            if not args.json:
                print(format_image_line(message.image), flush=True)
        elif event == "generation":
            generation = message.generation
    if generation is None:
        print("error: the stream ended without a generation record", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(format_generation(generation))
    if args.out is not None:
        saved = await save_images(
            args.out,
            generation.generation_id,
            images_to_save(generation, streamed),
            http_timeout=args.timeout,
            quiet=args.json,
        )
        if not saved:
            return EXIT_FAILURE
    return EXIT_OK


async def generate_command(args: argparse.Namespace) -> int:
    """`generate`: StreamGenerate, printing each image as it is stored."""
    request = build_generate_request(args)
    async with connect(args.target) as stub:
        try:
            return await _print_stream(stub.StreamGenerate(request, timeout=args.timeout), args)
        except grpc.RpcError as error:
            return _report_rpc_error(error)


async def edit_command(args: argparse.Namespace) -> int:
    """`edit`: StreamEdit on the given files, printing each result as it is stored."""
    try:
        images = [await asyncio.to_thread(path.read_bytes) for path in args.image]
        mask = await asyncio.to_thread(args.mask.read_bytes) if args.mask else None
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CALLER_ERROR
    request = build_edit_request(args, images, mask)
    async with connect(args.target) as stub:
        try:
            return await _print_stream(stub.StreamEdit(request, timeout=args.timeout), args)
        except grpc.RpcError as error:
            return _report_rpc_error(error)


async def models_command(args: argparse.Namespace) -> int:
    """`models`: ListModels as a table."""
    async with connect(args.target) as stub:
        try:
            response: pb.ListModelsResponse = await stub.ListModels(
                pb.ListModelsRequest(), timeout=args.timeout
            )
        except grpc.RpcError as error:
            return _report_rpc_error(error)
    print(to_json(response) if args.json else format_models(response.models))
    return EXIT_OK


async def get_command(args: argparse.Namespace) -> int:
    """`get`: GetGeneration, printing the record and its image URLs."""
    async with connect(args.target) as stub:
        try:
            generation: pb.Generation = await stub.GetGeneration(
                pb.GetGenerationRequest(generation_id=args.generation_id), timeout=args.timeout
            )
        except grpc.RpcError as error:
            return _report_rpc_error(error)
    print(to_json(generation) if args.json else format_generation(generation, include_images=True))
    if args.out is not None:
        saved = await save_images(
            args.out,
            generation.generation_id,
            sorted_images(generation.images),
            http_timeout=args.timeout,
            quiet=args.json,
        )
        if not saved:
            return EXIT_FAILURE
    return EXIT_OK


# --- argument parsing -----------------------------------------------------------


def _size(text: str) -> str:
    if not _SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, for example 1024x1024: {text!r}")
    return text


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and 4294967295: {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"gRPC address of the service (default: {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline of the call, and of image downloads (default: {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print the responses as protobuf JSON (one object per line for streams)",
    )
    return common


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=_size, metavar="WxH", help="for example 1024x1024")
    parser.add_argument(
        "-n", type=_count, metavar="N", help="number of images, 1 to the model's limit"
    )
    parser.add_argument(
        "--response-format",
        choices=sorted(RESPONSE_FORMATS),
        default="url",
        help="b64_json also returns the bytes inline (default: url)",
    )
    parser.add_argument("--request-id", metavar="ID", help="idempotency key")
    parser.add_argument("--seed", type=_seed, metavar="S", help="for models that take one")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="save images as DIR/{generation_id}-{index}.{ext}"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands `generate`, `edit`, `models` and `get`."""
    common = _connection_options()

    generate = subparsers.add_parser(
        "generate",
        parents=[common],
        help="generate images from a prompt",
        description="Call StreamGenerate and print each image as it is stored.",
    )
    generate.add_argument("--model", required=True, help="catalogue name, see `models`")
    generate.add_argument("--prompt", required=True)
    _add_output_options(generate)
    generate.set_defaults(func=generate_command)

    edit = subparsers.add_parser(
        "edit",
        parents=[common],
        help="edit images",
        description="Call StreamEdit and print each result as it is stored.",
    )
    edit.add_argument("--model", required=True, help="catalogue name, see `models`")
    edit.add_argument(
        "--image",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="input image; repeat for reference images (the first is edited)",
    )
    edit.add_argument("--mask", type=Path, metavar="FILE", help="inpainting mask")
    edit.add_argument(
        "--operation",
        choices=list(EDIT_OPERATIONS),
        default="prompt_edit",
        help="default: prompt_edit",
    )
    edit.add_argument("--prompt", help="required for prompt_edit and inpaint")
    _add_output_options(edit)
    edit.set_defaults(func=edit_command)

    models = subparsers.add_parser(
        "models",
        parents=[common],
        help="list the model catalogue",
        description="Call ListModels and print the catalogue.",
    )
    models.set_defaults(func=models_command)

    get = subparsers.add_parser(
        "get",
        parents=[common],
        help="show an earlier generation",
        description="Call GetGeneration and print the record and its image URLs.",
    )
    get.add_argument("generation_id", metavar="GENERATION_ID")
    get.add_argument("--out", type=Path, metavar="DIR", help="download the images into DIR")
    get.set_defaults(func=get_command)
