"""Client commands: call a running ImageService through the generated stubs.

`generate`, `edit`, `models` and `get` each open a `grpc.aio` channel to
`--target`, make one call with `--timeout` as its deadline and print the
result for people or, with `--json`, as protobuf JSON (proto field names;
one object per line for streams). `--out DIR` saves the images.

This module builds the requests and holds the command handlers that make
the RPCs. What they print is in `server.cli.output` (pure functions
returning strings) and saving images is in `server.cli.files`, so both are
testable without a server.

Exit codes: 0 on success; 2 when the service rejected the request itself
(INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE: fix the
invocation and retry), as argparse does for a bad command line; 1 for any
other failure (service unavailable, deadline exceeded, download failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import grpc.aio
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from server.cli.files import images_to_save, save_images
from server.cli.output import (
    format_generation,
    format_image_line,
    format_models,
    format_rpc_error,
    rich_status,
    sorted_images,
    to_json,
)
from server.operation_names import (
    EDIT_NUMBER_FIELDS,
    EDIT_OPERATIONS,
    EDIT_PIXEL_FIELDS,
    EDIT_TEXT_FIELDS,
)

DEFAULT_TARGET = "127.0.0.1:50051"
API_KEY_VARIABLE = "IMAGE_SERVICE_API_KEY"
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

StreamResponse: TypeAlias = pb.StreamGenerateResponse | pb.StreamEditResponse

_SIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")


# --- request building ------------------------------------------------------


def build_generate_request(args: argparse.Namespace) -> pb.GenerateRequest:
    """The `GenerateRequest` for parsed `generate` arguments."""
    return pb.GenerateRequest(prompt=args.prompt, **_shared_fields(args))


def _shared_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields `generate` and `edit` have in common."""
    fields: dict[str, Any] = {
        "model": args.model,
        "size": args.size or "",
        "n": args.n or 0,
        "response_format": RESPONSE_FORMATS[args.response_format],
        "request_id": args.request_id or "",
    }
    if args.seed is not None:
        fields["seed"] = args.seed
    output = pb.OutputOptions(partial_images=args.partial_images or 0)
    for name in OUTPUT_TEXT_FIELDS:
        setattr(output, name, getattr(args, name) or "")
    if args.output_compression is not None:
        output.output_compression = args.output_compression
    if output.ByteSize():  # left unset when no flag is given
        fields["output"] = output
    return fields


# OpenAI Images' output parameters (`OutputOptions` in the proto), as flags of
# the same names; the service checks their values, as it does over REST.
OUTPUT_TEXT_FIELDS = ("quality", "output_format", "background", "moderation", "user")


def build_edit_request(
    args: argparse.Namespace,
    images: Sequence[bytes],
    mask: bytes | None,
    style_image: bytes | None = None,
) -> pb.EditRequest:
    """The `EditRequest` for parsed `edit` arguments and the files' contents."""
    request = pb.EditRequest(
        prompt=args.prompt or "",
        images=images,
        mask=mask or b"",
        operation=EDIT_OPERATIONS[args.operation],
        style_image=style_image or b"",
        **_shared_fields(args),
    )
    for name in (*EDIT_TEXT_FIELDS, *EDIT_NUMBER_FIELDS, *EDIT_PIXEL_FIELDS):
        value = getattr(args, name, None)
        if value is not None:
            setattr(request, name, value)
    return request


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


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <--api-key>` when a key was given."""
    key = getattr(args, "api_key", None)
    return (("authorization", f"Bearer {key}"),) if key else ()


def exit_code_for(code: grpc.StatusCode) -> int:
    """2 for errors the caller must fix in the request, 1 for the rest."""
    return EXIT_CALLER_ERROR if code in CALLER_ERROR_CODES else EXIT_FAILURE


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
            return await _print_stream(
                stub.StreamGenerate(request, timeout=args.timeout, metadata=call_metadata(args)),
                args,
            )
        except grpc.RpcError as error:
            return _report_rpc_error(error)


async def edit_command(args: argparse.Namespace) -> int:
    """`edit`: StreamEdit on the given files, printing each result as it is stored."""
    try:
        images = [await asyncio.to_thread(path.read_bytes) for path in args.image]
        mask = await asyncio.to_thread(args.mask.read_bytes) if args.mask else None
        style_image = (
            await asyncio.to_thread(args.style_image.read_bytes) if args.style_image else None
        )
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CALLER_ERROR
    request = build_edit_request(args, images, mask, style_image)
    async with connect(args.target) as stub:
        try:
            return await _print_stream(
                stub.StreamEdit(request, timeout=args.timeout, metadata=call_metadata(args)), args
            )
        except grpc.RpcError as error:
            return _report_rpc_error(error)


async def models_command(args: argparse.Namespace) -> int:
    """`models`: ListModels as a table."""
    async with connect(args.target) as stub:
        try:
            response: pb.ListModelsResponse = await stub.ListModels(
                pb.ListModelsRequest(), timeout=args.timeout, metadata=call_metadata(args)
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
                pb.GetGenerationRequest(generation_id=args.generation_id),
                timeout=args.timeout,
                metadata=call_metadata(args),
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
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE) or None,
        metavar="KEY",
        help=f"API key sent as 'authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})",
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
    group = parser.add_argument_group(
        "output (OpenAI Images parameters; what a model cannot honour is reported or refused)"
    )
    group.add_argument("--quality", help="auto, low, medium, high, standard or hd")
    group.add_argument("--output-format", help="png, jpeg or webp")
    group.add_argument("--output-compression", type=int, metavar="0-100", help="jpeg/webp")
    group.add_argument("--background", help="auto, transparent or opaque")
    group.add_argument("--moderation", help="auto or low")
    group.add_argument("--user", help="your end-user's id, kept in the record")
    group.add_argument("--partial-images", type=int, metavar="N", help="0 to 3")


def _add_edit_options(edit: argparse.ArgumentParser) -> None:
    """The Stability Image Services' parameters; the service checks which
    operation takes which (see `EditRequest` in the proto)."""
    group = edit.add_argument_group("operation parameters")
    group.add_argument("--search-prompt", help="search_replace: what to replace")
    group.add_argument("--select-prompt", help="search_recolor: what to recolor")
    for name, help_text in (
        ("control-strength", "control_sketch, control_structure: 0 to 1"),
        ("fidelity", "style_guide: 0 to 1"),
        ("creativity", "outpaint, creative upscale: 0 to 1"),
        ("style-strength", "style_transfer: 0 to 1"),
        ("composition-fidelity", "style_transfer: 0 to 1"),
        ("change-strength", "style_transfer: 0.1 to 1"),
    ):
        group.add_argument(f"--{name}", type=float, metavar="X", help=help_text)
    for side in EDIT_PIXEL_FIELDS:
        group.add_argument(f"--{side}", type=int, metavar="PX", help=f"outpaint: pixels {side}")
    group.add_argument(
        "--style-image", type=Path, metavar="FILE", help="style_transfer: the style to apply"
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
    edit.add_argument("--mask", type=Path, metavar="FILE", help="mask for inpaint, erase_object")
    edit.add_argument(
        "--operation",
        choices=list(EDIT_OPERATIONS),
        default="prompt_edit",
        help="default: prompt_edit",
    )
    edit.add_argument(
        "--prompt",
        help="required for prompt_edit, inpaint, search_replace, search_recolor, "
        "control_sketch, control_structure, style_guide",
    )
    _add_edit_options(edit)
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
