"""Proto -> the public JSON bodies: generations, models.

A generation body is exactly the seed's shape:

    {"created": 1712000000,
     "data": [{"url": "https://..."}],
     "x_chuizi": {"generation_id": "gen-...", "cost": "0.05000000", "latency_ms": 8500}}

with `{"b64_json": "..."}` items for `response_format=b64_json`, an item's
`revised_prompt` only when the upstream rewrote the prompt, and
`x_chuizi.failures` only when some requested images could not be produced.

Image bytes are base64-encoded once, straight into their own body chunk:
bodies are built as a list of chunks (small JSON pieces between the large
base64 blobs) and sent chunk by chunk, so a multi-megabyte image is never
copied into a joined body or escaped by a JSON encoder. Base64 output is
pure ASCII without quotes or backslashes, so splicing it between `"`
characters is valid JSON.

An image larger than `B64_PIECE` is a `Base64Blob` chunk instead: encoded
piece by piece while the body is sent (`body_pieces`), each piece freed once
the transport has it. A whole 4 MiB image's encoding would be a fresh 5.6 MB
buffer per request (page faults on every page, then a copy of what the
socket did not take into the transport's buffer); the pieces are small
enough to reuse the same memory. Every byte is still encoded exactly once,
and the pieces concatenate to the whole's encoding because each piece but the
last is a multiple of 3 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pybase64
from chuizi.image.v1 import image_service_pb2 as pb
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.operation_names import operation_name
from server.rest.errors import public_code
from server.rest.wire import ImageBytes

# Image bytes per base64 piece (a multiple of 3): 1 MiB of base64.
B64_PIECE = 3 * 256 * 1024


class Base64Blob:
    """The base64 of an image, made piece by piece as it is sent."""

    __slots__ = ("_data",)

    def __init__(self, data: ImageBytes) -> None:
        self._data = memoryview(data)  # slices of a view copy nothing

    def __len__(self) -> int:
        return 4 * ((len(self._data) + 2) // 3)

    def pieces(self) -> Iterator[bytes]:
        for start in range(0, len(self._data), B64_PIECE):
            yield pybase64.b64encode(self._data[start : start + B64_PIECE])


# A body chunk: bytes as they are, or an image's base64 to encode when sent.
Chunk = bytes | Base64Blob


def body_pieces(chunks: Iterable[Chunk]) -> Iterator[bytes]:
    """The bytes to send for `chunks`, in order."""
    for chunk in chunks:
        if isinstance(chunk, Base64Blob):
            yield from chunk.pieces()
        else:
            yield chunk


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class BodyBuilder:
    """Accumulates a JSON body as chunks: small text pieces and large blobs."""

    def __init__(self) -> None:
        self._chunks: list[Chunk] = []
        self._text: list[str] = []

    def text(self, piece: str) -> None:
        self._text.append(piece)

    def value(self, value: object) -> None:
        self._text.append(dumps(value))

    def blob(self, data: Chunk) -> None:
        """Append `data` as its own chunk (no copy)."""
        self._flush()
        self._chunks.append(data)

    def chunks(self) -> list[Chunk]:
        self._flush()
        return self._chunks

    def _flush(self) -> None:
        if self._text:
            self._chunks.append("".join(self._text).encode())
            self._text.clear()


def write_image_fields(out: BodyBuilder, image: pb.Image, data: ImageBytes, *, b64: bool) -> None:
    """Write an image's `"b64_json"` or `"url"` member (and `revised_prompt`).

    `data` is the image's bytes (see `write_images`). `b64_json` when
    the caller asked for it, and also for an image that could not be stored
    (`stored` false): a paid image is never dropped.
    """
    if data and (b64 or not image.stored):
        out.text('"b64_json":"')
        out.blob(pybase64.b64encode(data) if len(data) <= B64_PIECE else Base64Blob(data))
        out.text('"')
    else:
        out.text('"url":')
        out.value(image.url)
    if image.revised_prompt:
        out.text(',"revised_prompt":')
        out.value(image.revised_prompt)


def write_images(
    out: BodyBuilder,
    images: Sequence[pb.Image],
    *,
    b64: bool,
    image_data: Sequence[ImageBytes] | None = None,
) -> None:
    """Write the `data` array, in image index order.

    `image_data[i]` is the bytes of `images[i]` (`server.rest.wire`); without
    it they are read from the images.
    """
    if image_data is None:
        # Read once: upb copies the bytes on every access.
        image_data = [image.data for image in images]
    out.text("[")
    first = True
    for image, data in sorted(zip(images, image_data, strict=True), key=lambda i: i[0].index):
        if not data and not image.url:
            # In a stored record, an image that never reached storage: its
            # bytes were returned inline by the original call and are gone.
            continue
        if not first:
            out.text(",")
        first = False
        out.text("{")
        write_image_fields(out, image, data, b64=b64)
        out.text("}")
    out.text("]")


_MODEL_STATUS_NAMES = {
    pb.MODEL_STATUS_UNSPECIFIED: "active",
    pb.MODEL_STATUS_ACTIVE: "active",
    pb.MODEL_STATUS_DEPRECATED: "deprecated",
    pb.MODEL_STATUS_RETIRED: "retired",
}


def x_chuizi(generation: pb.Generation) -> dict[str, object]:
    """The seed's `x_chuizi` block, plus what served the request.

    `cost` is null when the model's price is unknown. `model` is the model
    named, `served_by` and `upstream_model` what served it, `warnings` any
    routing or unused-parameter notices, `images` each image's produced
    width, height and seed; `failures` only on a partial result.
    """
    block: dict[str, object] = {
        "generation_id": generation.generation_id,
        "cost": generation.cost or None,
        "latency_ms": generation.latency_ms,
        "model": generation.model,
        "served_by": generation.served_by or generation.model,
        "upstream_model": generation.upstream_model,
        "images": [
            {
                "index": image.index,
                "width": image.width,
                "height": image.height,
                "seed": image.seed if image.HasField("seed") else None,
            }
            for image in sorted(generation.images, key=lambda i: i.index)
        ],
    }
    if generation.warnings:
        block["warnings"] = list(generation.warnings)
    if generation.failures:
        block["failures"] = [
            {
                "image_count": failure.image_count,
                "code": public_code(failure.reason),
                "message": failure.message,
            }
            for failure in generation.failures
        ]
    return block


def generation_chunks(
    generation: pb.Generation, *, b64: bool, image_data: Sequence[ImageBytes] | None = None
) -> list[Chunk]:
    """The body of a generation response (see module doc) as chunks;
    `image_data` as for `write_images`."""
    out = BodyBuilder()
    out.text('{"created":')
    out.value(generation.created)
    out.text(',"data":')
    write_images(out, generation.images, b64=b64, image_data=image_data)
    for name, value in openai_fields(generation).items():
        out.text(f',"{name}":')
        out.value(value)
    out.text(',"x_chuizi":')
    out.value(x_chuizi(generation))
    out.text("}")
    return out.chunks()


def openai_fields(generation: pb.Generation) -> dict[str, str]:
    """OpenAI's response fields: `background`, `output_format`, `quality`, `size`.

    `size` is the first image's produced size (every image's is in
    `x_chuizi.images`); a field the record does not have is left out.
    """
    fields: dict[str, str] = {}
    if generation.background:
        fields["background"] = generation.background
    if generation.output_format:
        fields["output_format"] = generation.output_format
    if generation.quality:
        fields["quality"] = generation.quality
    produced = sorted(generation.images, key=lambda i: i.index)
    if produced and produced[0].width:
        fields["size"] = f"{produced[0].width}x{produced[0].height}"
    return fields


def model_object(model: pb.Model) -> dict[str, object]:
    """One `/v1/models` entry: OpenAI's model object plus the catalogue's fields."""
    return {
        "id": model.name,
        "object": "model",
        # The catalogue has no creation date; OpenAI clients expect the key.
        "created": 0,
        "owned_by": model.provider,
        "provider": model.provider,
        "description": model.description,
        "max_size": model.max_size,
        "sizes": list(model.sizes),
        "images_per_call": model.images_per_call,
        "max_images_per_request": model.max_images_per_request,
        "operations": [operation_name(op) for op in model.operations],
        "price_per_image": model.price_per_image or None,
        "configured": model.configured,
        "status": _MODEL_STATUS_NAMES.get(model.status, "active"),
        "retirement_date": model.retirement_date or None,
        "successor": model.successor or None,
        "routes_to": model.routes_to or None,
    }


def model_list(models: Sequence[pb.Model]) -> dict[str, object]:
    return {"object": "list", "data": [model_object(m) for m in models]}


class ChunkedJSONResponse(Response):
    """A JSON response sent as several body chunks with one Content-Length."""

    media_type = "application/json"

    def __init__(
        self,
        chunks: list[Chunk],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.background = None
        self.body = b""
        length = sum(len(c) for c in chunks)
        self.init_headers({**(headers or {}), "content-length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        pieces = body_pieces(self.chunks)
        piece = next(pieces, None)
        while piece is not None:
            following = next(pieces, None)
            more = following is not None
            await send({"type": "http.response.body", "body": piece, "more_body": more})
            piece = following
        if not self.chunks:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
