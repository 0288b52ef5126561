"""Hostile REST input: every client error is a 4xx naming the field, with a
code from one documented set, and nothing reaches the service that gRPC
would turn into a retryable status."""

from __future__ import annotations

import httpx
import pytest

from reliability.inputs import png_declaring
from server.rest.errors import SIDECAR_CODES
from server.rest.upstream import MAX_AUTHORIZATION_BYTES
from tests.rest.conftest import FakeStack, RealStack
from tests.support.images import alpha_mask, png

GENERATIONS = "/v1/images/generations"
MODEL = "azure/flux-kontext-pro"


def _body(**fields: str) -> bytes:
    base = {"model": f'"{MODEL}"', "prompt": '"a fox"', **fields}
    return ("{" + ",".join(f'"{k}":{v}' for k, v in base.items()) + "}").encode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # RecursionError in json.loads before the fix.
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "prompt"),
        (_body(n="9" * 5000), "n"),  # ValueError: int of 5,000 digits
        (_body(seed="-" + "9" * 5000), "seed"),
        (_body(prompt='"\\ud800"'), "prompt"),  # a lone surrogate: UnicodeEncodeError
        (_body(model='"\\udfff gpt"'), "model"),
        (_body(n="0"), "n"),
        (_body(n="1e400"), "n"),
        (_body(size="[1, 2]"), "size"),
    ],
    ids=[
        "deep",
        "huge-n",
        "huge-seed",
        "surrogate-prompt",
        "surrogate-model",
        "n0",
        "n-float",
        "size",
    ],
)
async def test_hostile_json_is_a_400_naming_the_field(
    fake: FakeStack, body: bytes, param: str
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            GENERATIONS, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert error["code"] in SIDECAR_CODES
    assert fake.service.calls == []


async def test_a_deep_body_that_is_not_an_object_is_still_a_400(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(GENERATIONS, content=b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_oversized_authorization_is_431_and_never_retryable(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        too_long = await http.post(
            GENERATIONS,
            content=_body(),
            headers={"authorization": "Bearer " + "k" * 12_000},
        )
        just_fits = await http.post(
            GENERATIONS,
            content=_body(),
            headers={"authorization": "Bearer " + "k" * (MAX_AUTHORIZATION_BYTES - 7)},
        )
    assert too_long.status_code == 431
    assert too_long.headers["x-should-retry"] == "false"
    assert "retry-after" not in too_long.headers
    assert too_long.json()["error"]["code"] == "request_header_too_large"
    # The longest accepted header reaches the service, whatever gRPC's
    # randomised soft metadata limit decides.
    assert just_fits.status_code == 200, just_fits.text
    assert len(fake.service.calls) == 1


async def test_n_errors_share_one_code_whichever_side_raises_them(stack: RealStack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        sidecar = await http.post(GENERATIONS, content=_body(n="0"))  # the sidecar's check
        service = await http.post(GENERATIONS, content=_body(n="5"))  # the catalogue's limit
    assert (sidecar.status_code, service.status_code) == (400, 400)
    codes = {r.json()["error"]["code"] for r in (sidecar, service)}
    params = {r.json()["error"]["param"] for r in (sidecar, service)}
    assert (codes, params) == ({"invalid_argument"}, {"n"})


@pytest.mark.parametrize(("part", "side"), [("mask", 9000), ("mask", 50_000), ("image", 50_000)])
async def test_decompression_bombs_are_400_naming_the_part(
    stack: RealStack, part: str, side: int
) -> None:
    bomb = png_declaring(side, side)
    files = {
        "image": ("image.png", bomb if part == "image" else png(64, 64), "image/png"),
        "mask": ("mask.png", bomb if part == "mask" else alpha_mask(64, 64), "image/png"),
    }
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        response = await http.post(
            "/v1/images/edits",
            files=files,
            data={"model": "bedrock/stability-inpaint", "prompt": "a fox"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (part, "invalid_argument")
    assert "pixels" in error["message"]
