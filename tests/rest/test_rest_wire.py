"""The sidecar's decoders (`server.rest.wire`): image bytes cut out of the
service's answers as views, whatever order the fields come in, and protobuf's
own parse when the bytes are not in the shape they read.

The socket tests put a gRPC service that answers with hand-made wire bytes
behind a real sidecar and read the JSON a client gets."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from google.protobuf.message import DecodeError

from server.rest import responses, wire
from server.settings import Settings
from tests.rest.conftest import sample_generation, sample_image, sidecar_for

# Over one base64 piece (responses.B64_PIECE), and not a multiple of 3.
BIG = bytes(range(256)) * 4096 + b"tail"
SMALL = b"\x89PNG small"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _unknown(number: int, value: int) -> bytes:
    """A varint field the proto does not have."""
    return _varint(number << 3) + _varint(value)


def _image_out_of_order(index: int, data: bytes) -> bytes:
    """An Image with `data` first, an unknown field, and the rest after."""
    rest = sample_image(index).SerializeToString()
    return _field(3, data) + _unknown(99, 7) + rest


def _generation_out_of_order(*images: bytes) -> bytes:
    """A Generation whose images come between its other fields, with unknown fields."""
    head = pb.Generation(generation_id="gen-0123456789abcdef", created=1712000000)
    tail = pb.Generation(model="azure/flux-kontext-pro", cost="0.10000000", latency_ms=8500)
    middle = b"".join(_field(8, image) for image in images)
    return (
        _unknown(1000, 3)
        + head.SerializeToString()
        + middle
        + _field(1001, b"unknown")
        + tail.SerializeToString()
    )


def _with_data(received: wire.Received[Any], images: Any) -> list[bytes]:
    assert all(not image.data for image in images), "the messages carry no bytes"
    return [bytes(data) for data in received.image_data]


def test_generation_images_are_views_of_the_received_bytes() -> None:
    generation = sample_generation(3)
    generation.images[0].data = BIG
    generation.images[2].data = SMALL
    raw = generation.SerializeToString()
    received = wire.decode_generation(raw)
    assert _with_data(received, received.message.images) == [BIG, b"", SMALL]
    assert isinstance(received.image_data[0], memoryview)
    assert received.image_data[0].obj is raw  # not a copy
    # Everything else is what protobuf reads from the whole message.
    expected = pb.Generation.FromString(raw)
    for image in expected.images:
        image.ClearField("data")
    assert received.message == expected


def test_fields_in_any_order_and_unknown_fields() -> None:
    raw = _generation_out_of_order(
        _image_out_of_order(1, BIG),
        sample_image(0).SerializeToString(),
        _image_out_of_order(2, SMALL),
    )
    received = wire.decode_generation(raw)
    message = received.message
    assert [image.index for image in message.images] == [1, 0, 2]
    assert _with_data(received, message.images) == [BIG, b"", SMALL]
    assert (message.generation_id, message.model, message.cost, message.latency_ms) == (
        "gen-0123456789abcdef",
        "azure/flux-kontext-pro",
        "0.10000000",
        8500,
    )
    assert message.images[0].url == "https://media.test/images/gen-0123456789abcdef-1.png"
    assert pb.Generation.FromString(raw).images[0].data == BIG  # protobuf agrees


def test_a_repeated_data_field_keeps_the_last_as_protobuf_does() -> None:
    image = _field(3, b"first") + sample_image(0).SerializeToString() + _field(3, b"second")
    raw = _field(8, image)
    received = wire.decode_generation(raw)
    assert pb.Generation.FromString(raw).images[0].data == b"second"
    assert _with_data(received, received.message.images) == [b"second"]
    assert received.message.images[0].width == 1024


@pytest.mark.parametrize(
    "raw",
    [
        # `data` as a varint: protobuf keeps it as an unknown field.
        _field(8, sample_image(0).SerializeToString() + _varint(3 << 3) + _varint(5)),
        # A group (wire type 3/4) in an image.
        _field(8, _field(3, SMALL) + _varint(50 << 3 | 3) + _varint(50 << 3 | 4)),
    ],
    ids=["data-not-length-delimited", "group"],
)
def test_unexpected_shapes_are_parsed_by_protobuf(raw: bytes) -> None:
    received = wire.decode_generation(raw)
    expected = pb.Generation.FromString(raw)
    assert [bytes(d) for d in received.image_data] == [i.data for i in expected.images]
    for image in expected.images:
        image.ClearField("data")
    assert received.message == expected


def test_truncated_bytes_fail_as_protobuf_fails() -> None:
    # Cut inside the image, then inside the cost string after it.
    whole = sample_generation(1, inline=True).SerializeToString()
    raw = whole[:30]
    with pytest.raises(DecodeError):
        pb.Generation.FromString(raw)
    with pytest.raises(DecodeError):
        wire.decode_generation(raw)
    raw = whole[:-5]
    with pytest.raises(DecodeError):
        wire.decode_generation(raw)


def test_stream_image_event_and_record_event() -> None:
    event = pb.StreamGenerateResponse(image=sample_image(2, data=BIG))
    raw = event.SerializeToString()
    received = wire.decode_stream_generate(raw)
    assert received.message.WhichOneof("event") == "image"
    assert received.message.image.index == 2 and not received.message.image.data
    assert isinstance(received.image_data[0], memoryview) and received.image_data[0] == BIG

    record = pb.StreamEditResponse(generation=sample_generation(2))
    decoded = wire.decode_stream_edit(record.SerializeToString())
    assert decoded.message == record and decoded.image_data == ()

    # Out of order and with an unknown field, and with no bytes at all.
    odd = wire.decode_stream_generate(_unknown(77, 1) + _field(1, _image_out_of_order(3, SMALL)))
    assert odd.message.image.index == 3 and bytes(odd.image_data[0]) == SMALL
    bare = wire.decode_stream_generate(
        pb.StreamGenerateResponse(image=sample_image(1)).SerializeToString()
    )
    assert bare.message.image.url and bare.image_data == (b"",)


def test_a_stream_event_that_is_both_image_and_record_is_protobufs_to_read() -> None:
    # The oneof's last member wins: this event is a record.
    raw = _field(1, sample_image(0, data=SMALL).SerializeToString()) + _field(
        2, sample_generation(1).SerializeToString()
    )
    received = wire.decode_stream_generate(raw)
    assert received.message.WhichOneof("event") == "generation"
    assert received.image_data == ()
    # Two image fields merge into one image: also protobuf's.
    merged = _field(1, _field(3, SMALL)) + _field(1, sample_image(4).SerializeToString())
    decoded = wire.decode_stream_generate(merged)
    assert decoded.message.image.index == 4 and decoded.image_data == (SMALL,)


# --- over real sockets ----------------------------------------------------------


Answer = Callable[[Any, Any], Awaitable[bytes]]
StreamAnswer = Callable[[Any, Any], AsyncIterator[bytes]]


async def _sidecar_over(unary: bytes, stream: list[bytes]) -> tuple[grpc.aio.Server, str]:
    """A gRPC service answering Generate with `unary` and StreamGenerate with
    `stream`, bytes as they are; returns it and its target."""

    async def generate(request: Any, context: Any) -> bytes:
        return unary

    async def stream_generate(request: Any, context: Any) -> AsyncIterator[bytes]:
        for message in stream:
            yield message

    def raw(message: bytes) -> bytes:
        return message

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "chuizi.image.v1.ImageService",
        {
            "Generate": grpc.unary_unary_rpc_method_handler(
                generate,
                request_deserializer=pb.GenerateRequest.FromString,
                response_serializer=raw,
            ),
            "StreamGenerate": grpc.unary_stream_rpc_method_handler(
                stream_generate,
                request_deserializer=pb.GenerateRequest.FromString,
                response_serializer=raw,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_b64_json_over_sockets_from_out_of_order_wire_bytes(
    rest_settings: Settings,
) -> None:
    assert len(BIG) > responses.B64_PIECE and len(BIG) % 3
    unary = _generation_out_of_order(
        _image_out_of_order(1, SMALL),
        _image_out_of_order(0, BIG),
        sample_image(2).SerializeToString(),
    )
    stream = [
        _field(1, _image_out_of_order(1, BIG)),
        _unknown(500, 1) + _field(1, _image_out_of_order(0, SMALL)),
        _field(2, sample_generation(2).SerializeToString()),
    ]
    server, target = await _sidecar_over(unary, stream)
    try:
        async with (
            sidecar_for(target, rest_settings) as sidecar,
            httpx.AsyncClient(base_url=sidecar.base_url, timeout=30) as http,
        ):
            body = {"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 3}
            response = await http.post(
                "/v1/images/generations", json={**body, "response_format": "b64_json"}
            )
            streamed = await http.post(
                "/v1/images/generations",
                json={**body, "n": 2, "response_format": "b64_json", "stream": True},
            )
    finally:
        await server.stop(0)

    assert response.status_code == 200
    answer = response.json()
    # Index order; the image without bytes is its URL.
    assert answer["data"] == [
        {"b64_json": base64.b64encode(BIG).decode()},
        {"b64_json": base64.b64encode(SMALL).decode()},
        {"url": "https://media.test/images/gen-0123456789abcdef-2.png"},
    ]
    assert answer["x_chuizi"]["generation_id"] == "gen-0123456789abcdef"
    assert answer["x_chuizi"]["cost"] == "0.10000000"
    assert [image["index"] for image in answer["x_chuizi"]["images"]] == [0, 1, 2]
    assert int(response.headers["content-length"]) == len(response.content)

    assert streamed.status_code == 200
    events = [
        json.loads(line[6:]) for line in streamed.text.split("\n") if line.startswith("data: {")
    ]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("image_generation.completed", 1),
        ("image_generation.completed", 0),
        ("x_chuizi.generation", None),
    ]
    assert events[0]["b64_json"] == base64.b64encode(BIG).decode()
    assert events[1]["b64_json"] == base64.b64encode(SMALL).decode()


def test_both_stream_events_number_their_fields_alike() -> None:
    # One pair of numbers cuts StreamGenerate's and StreamEdit's events.
    for event in (pb.StreamGenerateResponse, pb.StreamEditResponse):
        fields = event.DESCRIPTOR.fields_by_name
        assert (fields["image"].number, fields["generation"].number) == (
            wire._STREAM_IMAGE,
            wire._STREAM_GENERATION,
        )
