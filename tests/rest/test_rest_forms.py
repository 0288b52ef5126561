"""Parsing the multipart edit form and the JSON generation body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.rest import forms
from server.rest.errors import RestError
from tests.support.images import alpha_mask, png

PNG = png(32, 32)
PNG_2 = png(32, 32, (0, 200, 0))
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
LIMIT = 1024 * 1024


def _multipart(
    files: list[tuple[str, Any]], data: dict[str, str] | None = None
) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://sidecar.test/", files=files, data=data or {})
    return request.headers["content-type"], request.read()


async def _chunks(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    # Small chunks: part boundaries and headers straddle chunk edges.
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _parse(
    files: list[tuple[str, Any]],
    data: dict[str, str] | None = None,
    *,
    limit: int = LIMIT,
    declare_length: bool = True,
) -> forms.Edit:
    content_type, body = _multipart(files, data)
    length = str(len(body)) if declare_length else None
    return await forms.parse_edit(content_type, length, _chunks(body), limit)


async def _error(
    files: list[tuple[str, Any]], data: dict[str, str] | None = None, **kwargs: Any
) -> RestError:
    with pytest.raises(RestError) as raised:
        await _parse(files, data, **kwargs)
    return raised.value


async def test_single_image_and_fields() -> None:
    edit = await _parse(
        [("image", ("photo.png", PNG, "image/png"))],
        {
            "model": "azure/flux-kontext-pro",
            "prompt": "Add a rainbow",
            "size": "1024x1024",
            "n": "2",
            "response_format": "b64_json",
            "seed": "42",
            # OpenAI's output parameters travel on; the service decides on them.
            "quality": "high",
            "output_format": "webp",
            "output_compression": "70",
            "user": "end-user-7",
        },
    )
    assert edit.request == pb.EditRequest(
        model="azure/flux-kontext-pro",
        prompt="Add a rainbow",
        images=[PNG],
        operation=pb.OPERATION_PROMPT_EDIT,
        size="1024x1024",
        n=2,
        response_format=pb.RESPONSE_FORMAT_INLINE,
        seed=42,
        output=pb.OutputOptions(
            quality="high", output_format="webp", output_compression=70, user="end-user-7"
        ),
    )
    assert edit.stream is False


@pytest.mark.parametrize(
    "names",
    [["image[]", "image[]"], ["image", "image"], ["image[0]", "image[1]"]],
    ids=["brackets", "repeated", "indexed"],
)
async def test_several_images_keep_their_order(names: list[str]) -> None:
    edit = await _parse(
        [(names[0], ("a.png", PNG, "image/png")), (names[1], ("b.webp", WEBP, "image/webp"))],
        {"prompt": "x"},
    )
    assert list(edit.request.images) == [PNG, WEBP]


async def test_a_mask_means_inpaint_unless_the_operation_says_otherwise() -> None:
    mask = alpha_mask(32, 32)
    inpaint = await _parse(
        [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", mask, "image/png"))],
        {"prompt": "x"},
    )
    assert inpaint.request.mask == mask
    assert inpaint.request.operation == pb.OPERATION_INPAINT
    explicit = await _parse(
        [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", mask, "image/png"))],
        {"prompt": "x", "operation": "prompt_edit"},
    )
    assert explicit.request.operation == pb.OPERATION_PROMPT_EDIT


@pytest.mark.parametrize(
    ("name", "operation"),
    [
        ("prompt_edit", pb.OPERATION_PROMPT_EDIT),
        ("inpaint", pb.OPERATION_INPAINT),
        ("remove_background", pb.OPERATION_REMOVE_BACKGROUND),
        ("upscale", pb.OPERATION_UPSCALE),
    ],
)
async def test_operations(name: str, operation: int) -> None:
    edit = await _parse([("image", ("a.jpg", JPEG, "image/jpeg"))], {"operation": name})
    assert edit.request.operation == operation


async def test_stream_flag() -> None:
    edit = await _parse([("image", ("a.png", PNG, "image/png"))], {"stream": "true"})
    assert edit.stream is True


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ([("image", ("a.txt", b"hello, not an image", "text/plain"))], {}, "image"),
        (
            [("image[]", ("a.png", PNG, "image/png")), ("image[]", ("b.pdf", b"%PDF-1.7", "x"))],
            {},
            "image[1]",
        ),
        ([("image", ("a.png", PNG, "image/png")), ("mask", ("m.gif", b"GIF89a", "x"))], {}, "mask"),
        ([("image", ("a.png", b"", "image/png"))], {}, "image"),
        ([("mask", ("m.png", PNG, "image/png"))], {"prompt": "x"}, "image"),
        # (A file part the edit does not use, so that httpx sends multipart.)
        ([("markup", ("k.png", PNG, "image/png"))], {"prompt": "x", "model": "m"}, "image"),
        ([("image", ("a.png", PNG, "image/png"))], {"operation": "generate"}, "operation"),
        ([("image", ("a.png", PNG, "image/png"))], {"n": "two"}, "n"),
        ([("image", ("a.png", PNG, "image/png"))], {"n": "0"}, "n"),
        ([("image", ("a.png", PNG, "image/png"))], {"response_format": "jpeg"}, "response_format"),
        ([("image", ("a.png", PNG, "image/png"))], {"stream": "perhaps"}, "stream"),
        ([("image", ("a.png", PNG, "image/png"))], {"seed": "4294967296"}, "seed"),
    ],
)
async def test_bad_forms_name_the_parameter(
    files: list[tuple[str, Any]], data: dict[str, str], param: str
) -> None:
    error = await _error(files, data)
    assert (error.status, error.param) == (400, param)


async def test_an_image_sent_as_text_gets_a_hint() -> None:
    error = await _error([("markup", ("k.png", PNG, "image/png"))], {"image": "photo.png"})
    assert (error.status, error.param) == (400, "image")
    assert "curl -F image=@" in error.message


async def test_a_field_given_twice_is_refused() -> None:
    content_type = "multipart/form-data; boundary=b"
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + PNG
        + b'\r\n--b\r\nContent-Disposition: form-data; name="n"\r\n\r\n1'
        + b'\r\n--b\r\nContent-Disposition: form-data; name="n"\r\n\r\n2\r\n--b--\r\n'
    )
    with pytest.raises(RestError) as raised:
        await forms.parse_edit(content_type, None, _chunks(body), LIMIT)
    assert raised.value.param == "n"


async def test_too_many_images() -> None:
    files = [("image[]", (f"{i}.png", PNG, "image/png")) for i in range(17)]
    error = await _error(files)
    assert (error.status, error.param) == (400, "image")


async def test_oversized_by_content_length_is_refused_before_reading() -> None:
    content_type, body = _multipart([("image", ("a.png", PNG + b"\x00" * 4096, "image/png"))])

    async def never_read() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    with pytest.raises(RestError) as raised:
        await forms.parse_edit(content_type, str(len(body)), never_read(), 1024)
    assert raised.value.status == 413


async def test_oversized_without_content_length_stops_at_the_limit() -> None:
    error = await _error(
        [("image", ("a.png", PNG + b"\x00" * 4096, "image/png"))], limit=1024, declare_length=False
    )
    assert (error.status, error.param) == (413, "image")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 415),
        (None, 415),
        ("multipart/form-data", 400),  # no boundary
    ],
)
async def test_wrong_content_types(content_type: str | None, status: int) -> None:
    with pytest.raises(RestError) as raised:
        await forms.parse_edit(content_type, None, _chunks(b"{}"), LIMIT)
    assert raised.value.status == status


async def test_a_malformed_body_is_a_400() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\x00\x00garbage'
    with pytest.raises(RestError) as raised:
        await forms.parse_edit("multipart/form-data; boundary=b", None, _chunks(body), LIMIT)
    assert raised.value.status == 400


# --- JSON ---------------------------------------------------------------------------------


def test_generation_body_with_defaults() -> None:
    parsed = forms.parse_generation(b'{"model": "m", "prompt": "p"}')
    assert parsed.request == pb.GenerateRequest(
        model="m", prompt="p", n=1, response_format=pb.RESPONSE_FORMAT_URL
    )
    assert not parsed.request.HasField("seed")
    assert parsed.stream is False


def test_generation_body_nulls_mean_defaults() -> None:
    parsed = forms.parse_generation(
        b'{"model": "m", "prompt": "p", "n": null, "size": null, "response_format": null}'
    )
    assert (parsed.request.n, parsed.request.size) == (1, "")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", None]
)
def test_json_content_types_accepted(content_type: str | None) -> None:
    forms.check_json_content_type(content_type)


def test_other_content_types_refused() -> None:
    with pytest.raises(RestError) as raised:
        forms.check_json_content_type("text/plain")
    assert raised.value.status == 415
