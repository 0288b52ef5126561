"""Request parsing: the JSON generation body and the multipart edit form.

Both end as a `GenerateRequest` / `EditRequest` proto plus the two REST-only
switches (`stream`, and whether the caller wants `b64_json`). Only types and
shapes are checked here; the service validates values against the model
(sizes, `n` limits, prompt length) so those rules live in one place.

Edit uploads are parsed in memory with python-multipart's streaming parser
rather than Starlette's form parser, which spools every file over 1 MiB to a
temporary file: the bytes are going straight into a gRPC message, so the
disk round trip would only cost CPU and I/O. The body size limit is enforced
while reading, before anything is buffered beyond it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chuizi.image.v1 import image_service_pb2 as pb
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.operation_names import (
    EDIT_NUMBER_FIELDS,
    EDIT_OPERATIONS,
    EDIT_PIXEL_FIELDS,
    EDIT_TEXT_FIELDS,
)
from server.rest.errors import (
    INVALID_IMAGE_FORMAT,
    INVALID_JSON,
    INVALID_MULTIPART,
    REQUEST_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    RestError,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# Generation bodies are a few fields and a prompt of at most 4,000 chars.
MAX_JSON_BYTES = 1024 * 1024
# OpenAI's edit endpoint takes up to 16 input images.
MAX_INPUT_IMAGES = 16
_MAX_TEXT_FIELD_BYTES = 64 * 1024
_MAX_INT32 = 2**31 - 1
# Deeper JSON than any real body, far below what would exhaust the parser's
# recursion (which raises RecursionError, not a JSON error).
MAX_JSON_DEPTH = 32
# Integers with more digits are kept as text (`_BigInteger`): Python refuses
# to convert over 4,300 digits, and no field here needs more than 20.
_MAX_INT_DIGITS = 40
# A string, or one bracket: what the depth scan needs to see, in one pass.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)

_RESPONSE_FORMATS = {"url": pb.RESPONSE_FORMAT_URL, "b64_json": pb.RESPONSE_FORMAT_INLINE}
# File parts sent at most once, and how a message names them.
_SINGLE_FILES = {"mask": "mask", "style_image": "style image"}
# `image`, `image[]` (the OpenAI SDK's list encoding) and `image[0]`, `image[1]`...
_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")
_INTEGER = re.compile(r"^\s*[+-]?(?P<digits>[0-9]+)\s*$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class Generation:
    """A parsed `/v1/images/generations` body."""

    request: pb.GenerateRequest
    stream: bool


@dataclass(frozen=True)
class Edit:
    """A parsed `/v1/images/edits` form."""

    request: pb.EditRequest
    stream: bool


def wants_b64(response_format: int) -> bool:
    return response_format == pb.RESPONSE_FORMAT_INLINE


# --- JSON ---------------------------------------------------------------------


def check_json_content_type(content_type: str | None) -> None:
    """Accept `application/json` (or `+json`); a missing header is tolerated."""
    if not content_type:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise RestError(
            415,
            f"Content-Type must be application/json, not {media_type}.",
            code=UNSUPPORTED_MEDIA_TYPE,
        )


class _BigInteger(str):
    """A JSON integer too long to be any field's value, kept as its digits."""


def _parse_int(digits: str) -> int | _BigInteger:
    return _BigInteger(digits) if len(digits) > _MAX_INT_DIGITS else int(digits)


def check_json_depth(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `max_depth`, in one linear scan.

    `param` names the top-level field holding the nesting. The scan reads
    only strings and brackets; json.loads checks everything else after.
    """
    depth = 0
    key: str | None = None
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        if token[0] == 0x22:  # a string: at depth 1, a candidate field name
            if depth == 1:
                key = token[1:-1].decode("utf-8", "replace")
            continue
        depth += 1 if token in (b"[", b"{") else -1
        if depth > max_depth:
            raise RestError(
                400,
                f"The request body is nested deeper than {max_depth} levels.",
                param=key,
                code=INVALID_JSON,
            )


def parse_generation(body: bytes) -> Generation:
    """Parse a generation body; raises `RestError` (400) naming the bad field."""
    check_json_depth(body)
    try:
        fields = json.loads(body, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RestError(
            400, f"The request body is not valid JSON: {error}.", code=INVALID_JSON
        ) from None
    if not isinstance(fields, dict):
        raise RestError(400, "The request body must be a JSON object.", code=INVALID_JSON)
    request = pb.GenerateRequest(
        model=_string(fields, "model") or "",
        prompt=_string(fields, "prompt") or "",
        size=_size(fields),
        n=_n(fields, form=False),
        response_format=_response_format(fields),
    )
    seed = _integer(fields, "seed", form=False)
    if seed is not None:
        request.seed = _check_seed(seed)
    _output_options(request.output, fields, form=False)
    return Generation(request, _boolean(fields, "stream", form=False))


# OpenAI's output parameters, by type (the OpenAPI document lists them too).
OUTPUT_TEXT_FIELDS = ("quality", "output_format", "background", "moderation", "user")
OUTPUT_INTEGER_FIELDS = ("output_compression", "partial_images")


def _output_options(target: pb.OutputOptions, fields: Mapping[str, object], *, form: bool) -> None:
    """OpenAI's output parameters (checked for type here, for value by the service)."""
    for name in OUTPUT_TEXT_FIELDS:
        value = _string(fields, name)
        if value is not None:
            setattr(target, name, value)
    for name in OUTPUT_INTEGER_FIELDS:
        number = _integer(fields, name, form=form)
        if number is None:
            continue
        if not -_MAX_INT32 <= number <= _MAX_INT32:
            raise RestError(400, f"'{name}' is out of range.", param=name)
        setattr(target, name, number)


# --- multipart ----------------------------------------------------------------


async def parse_edit(
    content_type: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    max_bytes: int,
) -> Edit:
    """Parse a multipart edit form streamed as `chunks`.

    Raises `RestError`: 415 for another content type, 413 for a body over
    `max_bytes` (from Content-Length up front, else once that many bytes have
    arrived), 400 for a malformed form or a bad field.
    """
    boundary = _boundary(content_type)
    check_content_length(content_length, max_bytes)
    form = _FormCollector()
    parser = MultipartParser(boundary, form.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes, param=form.current_name())
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise RestError(
            400, "The multipart/form-data body is malformed.", code=INVALID_MULTIPART
        ) from None
    if form.error is not None:
        raise form.error
    return _edit_from_form(form)


async def read_body(
    content_length: str | None, chunks: AsyncIterator[bytes], max_bytes: int
) -> bytes:
    """The whole body, refusing (413) one over `max_bytes`."""
    check_content_length(content_length, max_bytes)
    parts: list[bytes] = []
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def check_content_length(content_length: str | None, max_bytes: int) -> None:
    """Refuse a declared body over `max_bytes` before reading any of it."""
    if content_length and content_length.isdigit() and int(content_length) > max_bytes:
        raise too_large(max_bytes)


def too_large(max_bytes: int, *, param: str | None = None) -> RestError:
    return RestError(
        413,
        f"The request body is larger than the limit of {max_bytes} bytes.",
        param=param,
        code=REQUEST_TOO_LARGE,
    )


def _boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise RestError(
            415,
            f"Content-Type must be multipart/form-data, not {shown}.",
            code=UNSUPPORTED_MEDIA_TYPE,
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RestError(
            400, "The multipart/form-data Content-Type has no boundary.", code=INVALID_MULTIPART
        )
    return boundary


@dataclass
class _Part:
    name: str = ""
    has_filename: bool = False
    # Slices of the received chunks, joined once at the end (one copy).
    chunks: list[memoryview] = field(default_factory=list)
    size: int = 0

    def data(self) -> bytes:
        return b"".join(self.chunks)


class _FormCollector:
    """python-multipart callbacks that keep each part's bytes in memory."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self.error: RestError | None = None
        self._part: _Part | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def current_name(self) -> str | None:
        return _part_param(self._part.name) if self._part and self._part.name else None

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        assert self._part is not None
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None and self.error is None:
            self.error = RestError(
                400, "A form part has no name in its Content-Disposition.", code=INVALID_MULTIPART
            )
        self._part.name = (name or b"").decode("utf-8", "replace")
        self._part.has_filename = b"filename" in options

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.chunks.append(memoryview(data)[start:end])
        self._part.size += end - start

    def _on_part_end(self) -> None:
        assert self._part is not None
        self.parts.append(self._part)
        self._part = None


def _edit_from_form(form: _FormCollector) -> Edit:
    images: list[bytes] = []
    # The one-file parts, `mask` and `style_image`.
    singles: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    for part in form.parts:
        if _IMAGE_PART.match(part.name):
            if len(images) == MAX_INPUT_IMAGES:
                raise RestError(
                    400, f"At most {MAX_INPUT_IMAGES} images can be sent.", param="image"
                )
            param = "image" if not images else f"image[{len(images)}]"
            images.append(_image(part, param))
        elif part.name in _SINGLE_FILES:
            if part.name in singles:
                label = _SINGLE_FILES[part.name]
                raise RestError(400, f"Only one {label} can be sent.", param=part.name)
            singles[part.name] = _image(part, part.name)
        elif not part.has_filename:
            if part.name in fields:
                raise RestError(400, f"'{part.name}' is given more than once.", param=part.name)
            fields[part.name] = _text_part(part)
        # Other file parts (say, the SDK's `markup`) are not inputs here.
    if not images:
        raise RestError(
            400,
            "An input image is required: send it as the 'image' file part "
            "(or repeated 'image[]' parts).",
            param="image",
        )
    mask = singles.get("mask")
    request = pb.EditRequest(
        model=_string(fields, "model") or "",
        prompt=_string(fields, "prompt") or "",
        images=images,
        operation=_operation(fields, has_mask=mask is not None),
        size=_size(fields),
        n=_n(fields, form=True),
        response_format=_response_format(fields),
    )
    if mask is not None:
        request.mask = mask
    seed = _integer(fields, "seed", form=True)
    if seed is not None:
        request.seed = _check_seed(seed)
    _edit_options(fields, singles.get("style_image"), request)
    _output_options(request.output, fields, form=True)
    return Edit(request, _boolean(fields, "stream", form=True))


def _edit_options(
    fields: Mapping[str, str], style_image: bytes | None, request: pb.EditRequest
) -> None:
    """The operation parameters' shapes; ranges, and which operation takes
    which, are the service's to check."""
    for name in EDIT_TEXT_FIELDS:
        text = _string(fields, name)
        if text is not None:
            setattr(request, name, text)
    for name in EDIT_NUMBER_FIELDS:
        number = _number(fields, name)
        if number is not None:
            setattr(request, name, number)
    for name in EDIT_PIXEL_FIELDS:
        pixels = _integer(fields, name, form=True)
        if pixels is not None:
            if not -_MAX_INT32 <= pixels <= _MAX_INT32:
                raise RestError(400, f"'{name}' is out of range.", param=name)
            setattr(request, name, pixels)
    if style_image is not None:
        request.style_image = style_image


def _number(fields: Mapping[str, str], name: str) -> float | None:
    """A form field holding a finite decimal number, like `0.35`."""
    value = fields.get(name)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        raise RestError(400, f"'{name}' must be a number.", param=name) from None
    if not math.isfinite(number):
        raise RestError(400, f"'{name}' must be a finite number.", param=name)
    return number


def _part_param(name: str) -> str:
    return "image" if _IMAGE_PART.match(name) else name


def _image(part: _Part, param: str) -> bytes:
    data = part.data()
    if not data:
        raise RestError(400, f"'{param}' is empty.", param=param)
    if not _looks_like_image(data):
        hint = "" if part.has_filename else " (send the file itself, e.g. curl -F image=@a.png)"
        raise RestError(
            400,
            f"'{param}' is not a PNG, JPEG or WebP image{hint}.",
            param=param,
            code=INVALID_IMAGE_FORMAT,
        )
    return data


def _looks_like_image(data: bytes) -> bool:
    # Magic numbers only: the service decodes and checks the image itself;
    # this just refuses obvious non-images before shipping megabytes upstream.
    return (
        data.startswith(b"\x89PNG\r\n\x1a\n")
        or data.startswith(b"\xff\xd8\xff")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


def _text_part(part: _Part) -> str:
    if part.size > _MAX_TEXT_FIELD_BYTES:
        raise RestError(400, f"'{part.name}' is too long.", param=part.name)
    try:
        return part.data().decode("utf-8")
    except UnicodeDecodeError:
        raise RestError(400, f"'{part.name}' is not valid UTF-8.", param=part.name) from None


# --- fields shared by both bodies -----------------------------------------------


def _string(fields: Mapping[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or isinstance(value, _BigInteger):
        raise RestError(400, f"'{name}' must be a string.", param=name)
    if _SURROGATE.search(value):
        # JSON's "\ud800" escape decodes to a lone surrogate, which no UTF-8
        # (so no protobuf string) can carry.
        raise RestError(
            400, f"'{name}' contains an unpaired surrogate (invalid Unicode).", param=name
        )
    return value


def _size(fields: Mapping[str, object]) -> str:
    size = (_string(fields, "size") or "").strip()
    # OpenAI's "auto": the service's default (1024x1024, or the input's
    # aspect ratio for edits).
    return "" if size.lower() == "auto" else size


def _integer(fields: Mapping[str, object], name: str, *, form: bool) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    match = _INTEGER.match(value) if form and isinstance(value, str) else None
    if match and len(match["digits"]) <= _MAX_INT_DIGITS:
        return int(match.group())
    # bool is an int in Python but `true` is not a count in JSON.
    if not form and isinstance(value, int) and not isinstance(value, bool):
        return value
    if match or isinstance(value, _BigInteger):
        raise RestError(400, f"'{name}' is out of range.", param=name)
    raise RestError(400, f"'{name}' must be an integer.", param=name)


def _n(fields: Mapping[str, object], *, form: bool) -> int:
    n = _integer(fields, "n", form=form)
    if n is None:
        return 1
    # 0 would read as "unset" (1) in proto3; the upper bound is the model's
    # and the service reports it.
    if n < 1:
        raise RestError(400, "'n' must be at least 1.", param="n")
    if n > _MAX_INT32:
        raise RestError(400, "'n' is out of range.", param="n")
    return n


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= 2**32 - 1:
        raise RestError(400, "'seed' must be between 0 and 4294967295.", param="seed")
    return seed


def _boolean(fields: Mapping[str, object], name: str, *, form: bool) -> bool:
    value = fields.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if form and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RestError(400, f"'{name}' must be a boolean.", param=name)


def _response_format(fields: Mapping[str, object]) -> pb.ResponseFormat:
    value = _string(fields, "response_format")
    if value is None:
        return pb.RESPONSE_FORMAT_URL
    try:
        return _RESPONSE_FORMATS[value]
    except KeyError:
        raise RestError(
            400, "'response_format' must be 'url' or 'b64_json'.", param="response_format"
        ) from None


def _operation(fields: Mapping[str, object], *, has_mask: bool) -> pb.Operation:
    value = _string(fields, "operation")
    if value is None:
        # OpenAI semantics: a mask marks the region to edit, i.e. inpainting.
        return pb.OPERATION_INPAINT if has_mask else pb.OPERATION_PROMPT_EDIT
    try:
        return EDIT_OPERATIONS[value]
    except KeyError:
        names = ", ".join(EDIT_OPERATIONS)
        raise RestError(400, f"'operation' must be one of {names}.", param="operation") from None
