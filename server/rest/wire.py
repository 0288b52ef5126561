"""The service's answers decoded with their image bytes left where they arrived.

An inline image crosses the channel as the `data` field of an `Image`. Parsed
by protobuf, its bytes are copied into the parsed message and copied again on
every `.data` read, and the sidecar only base64-encodes them. These
deserializers cut each image's `data` out of the received bytes as a
`memoryview` (no copy), let protobuf parse the small rest, and hand both on
as `Received`: the message, whose images have no `data`, and the bytes of
each image beside it.

Only the framing is read by hand (tags, lengths) and only down to the image
fields; everything else, unknown fields included, is passed to protobuf as
it came. Anything off the expected shape (a group, a truncated field, a
`data` field that is not length-delimited, a stream event that is both an
image and a record) is parsed by protobuf as a whole, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from chuizi.image.v1 import image_service_pb2 as pb

# bytes, or a memoryview into the bytes the channel received.
ImageBytes = bytes | memoryview

M = TypeVar("M", pb.Generation, pb.StreamGenerateResponse, pb.StreamEditResponse)
S = TypeVar("S", pb.StreamGenerateResponse, pb.StreamEditResponse)


def _number(message: type, field: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[field].number  # type: ignore[attr-defined]
    return number


# Field numbers, read from the generated descriptors so that a renumbered
# proto cannot leave this module cutting the wrong fields.
_GENERATION_IMAGES = _number(pb.Generation, "images")
_STREAM_IMAGE = _number(pb.StreamGenerateResponse, "image")
_STREAM_GENERATION = _number(pb.StreamGenerateResponse, "generation")
_IMAGE_DATA = _number(pb.Image, "data")
_LENGTH_DELIMITED = 2  # the wire type of bytes and embedded messages


@dataclass(frozen=True, slots=True)
class Received(Generic[M]):
    """A decoded answer and its images' bytes.

    For a `Generation`, `image_data[i]` is the bytes of `message.images[i]`;
    for a stream event, `image_data` holds the bytes of `message.image`
    when the event is an image, and is empty otherwise. The messages' own
    `data` fields are empty: read the bytes from here.
    """

    message: M
    image_data: tuple[ImageBytes, ...]


class _Unexpected(Exception):
    """The bytes are not in the shape this module reads; protobuf decides."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            break
    raise _Unexpected


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Each field of the message `buf` as (number, wire type, start of the
    field, start of its value, end of its value); a length-delimited value
    starts after its length."""
    pos = 0
    end = len(buf)
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Unexpected
        if wire_type == 0:
            _, value_end = _varint(buf, pos)
        elif wire_type == 1:
            value_end = pos + 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos)
            value_end = pos + length
        elif wire_type == 5:
            value_end = pos + 4
        else:  # groups: not in this proto
            raise _Unexpected
        if value_end > end:
            raise _Unexpected
        yield number, wire_type, field_start, pos, value_end
        pos = value_end


def _cut_image(image: memoryview) -> tuple[bytes, memoryview]:
    """An `Image`'s bytes without its `data` field, and the data (the last
    one, as protobuf reads a repeated singular field)."""
    kept: list[memoryview] = []
    data = image[:0]
    pos = 0
    for number, wire_type, field_start, start, end in _fields(image):
        if number == _IMAGE_DATA:
            if wire_type != _LENGTH_DELIMITED:
                raise _Unexpected
            kept.append(image[pos:field_start])
            data = image[start:end]
            pos = end
    kept.append(image[pos:])
    return b"".join(kept), data


def _cut(buf: memoryview, image_field: int) -> tuple[bytes, list[memoryview]] | None:
    """`buf` with the `data` of each `image_field` element cut out, and those
    data in order; None when no image carries data (nothing to cut)."""
    pieces: list[bytes | memoryview] = []
    data: list[memoryview] = []
    pos = 0
    for number, wire_type, field_start, start, end in _fields(buf):
        if number != image_field or wire_type != _LENGTH_DELIMITED:
            continue
        image, image_data = _cut_image(buf[start:end])
        data.append(image_data)
        if len(image_data) == 0:
            continue  # this element stays as it came
        pieces.append(buf[pos:field_start])
        pieces.append(_encode_varint(image_field << 3 | _LENGTH_DELIMITED))
        pieces.append(_encode_varint(len(image)))
        pieces.append(image)
        pos = end
    if not pieces:
        return None
    pieces.append(buf[pos:])
    return b"".join(pieces), data


def decode_generation(raw: bytes) -> Received[pb.Generation]:
    """A `Generation` (Generate, Edit, GetGeneration answers)."""
    buf = memoryview(raw)
    try:
        cut = _cut(buf, _GENERATION_IMAGES)
    except _Unexpected:
        cut = None
    if cut is not None:
        message = pb.Generation.FromString(cut[0])
        if len(message.images) == len(cut[1]):
            return Received(message, tuple(cut[1]))
    message = pb.Generation.FromString(raw)
    return Received(message, _taken_out(message.images))


def _stream_decoder(kind: type[S]) -> Callable[[bytes], Received[S]]:
    """A stream event's decoder (StreamGenerate, StreamEdit answers)."""

    def decode(raw: bytes) -> Received[S]:
        buf = memoryview(raw)
        try:
            numbers = [number for number, *_ in _fields(buf)]
            # One image event; anything else (a record, a merged or
            # overridden oneof) is protobuf's to read.
            if numbers.count(_STREAM_IMAGE) == 1 and _STREAM_GENERATION not in numbers:
                cut = _cut(buf, _STREAM_IMAGE)
                if cut is not None:
                    message = kind.FromString(cut[0])
                    return Received(message, (cut[1][0],))
        except _Unexpected:
            pass
        message = kind.FromString(raw)
        images = [message.image] if message.HasField("image") else []
        return Received(message, _taken_out(images))

    return decode


def _taken_out(images: Sequence[pb.Image]) -> tuple[bytes, ...]:
    """The images' bytes read once, and cleared from the messages, so that a
    `Received` looks the same whichever way it was decoded."""
    data = []
    for image in images:
        data.append(image.data)
        image.ClearField("data")
    return tuple(data)


decode_stream_generate = _stream_decoder(pb.StreamGenerateResponse)
decode_stream_edit = _stream_decoder(pb.StreamEditResponse)
