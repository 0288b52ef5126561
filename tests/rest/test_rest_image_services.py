"""The Stability Image Services edits through the REST sidecar: the real
`openai` SDK's `images.edit` with the operation and its parameters in
`extra_body` (multipart form fields), and raw multipart for the style image,
in front of the real gRPC service and the Bedrock emulator."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from tests.rest.conftest import RealStack
from tests.support.image_services import CASES, MASK, SOURCE, STYLE, ServiceCase, wire_options
from tests.support.images import size_of

# Every case but style transfer, whose style image is a file the SDK's
# `extra_body` cannot carry.
SDK_CASES = [case for case in CASES if case.id != "style_transfer"]


def _client(stack: RealStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{stack.base_url}/v1", api_key="ck-your-key-here", max_retries=0
    )


def _extra_body(case: ServiceCase, **changes: Any) -> dict[str, Any]:
    return {"operation": case.operation.value, **wire_options(case), **changes}


@pytest.mark.parametrize("case", SDK_CASES, ids=lambda case: case.id)
async def test_each_service_through_the_openai_sdk(stack: RealStack, case: ServiceCase) -> None:
    async with _client(stack) as client:
        response = await client.images.edit(
            model=case.model,
            image=("source.png", SOURCE, "image/png"),
            mask=("mask.png", MASK, "image/png") if case.masked else openai.NOT_GIVEN,
            prompt=case.prompt,
            size=str(case.size) if case.size else openai.NOT_GIVEN,  # type: ignore[arg-type]
            response_format="b64_json",
            extra_body=_extra_body(case),
        )

    assert response.data is not None
    (image,) = response.data
    assert image.b64_json
    assert size_of(base64.b64decode(image.b64_json)) == case.produced
    body = stack.sandbox.bedrock_stability.received[-1].body
    assert {key: body.get(key) for key in case.sends} == case.sends


async def test_style_transfer_takes_the_style_image_as_a_file_part(stack: RealStack) -> None:
    case = next(c for c in CASES if c.id == "style_transfer")
    fields = {k: str(v) for k, v in wire_options(case).items() if k != "style_image"}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        response = await http.post(
            "/v1/images/edits",
            data={
                "model": case.model,
                "prompt": case.prompt,
                "operation": "style_transfer",
                **fields,
            },
            files={
                "image": ("source.png", SOURCE, "image/png"),
                "style_image": ("style.png", STYLE, "image/png"),
            },
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    body = stack.sandbox.bedrock_stability.received[-1].body
    assert base64.b64decode(body["style_image"]) == STYLE
    assert {key: body.get(key) for key in case.sends} == case.sends


@pytest.mark.parametrize(
    ("case_id", "changes", "param"),
    [
        ("search_replace", {"search_prompt": ""}, "search_prompt"),
        ("outpaint", {"left": "wide"}, "left"),
        ("control_sketch", {"control_strength": "strong"}, "control_strength"),
        ("control_sketch", {"control_strength": "1.5"}, "control_strength"),
        ("style_guide", {"select_prompt": "the sky"}, "select_prompt"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    stack: RealStack, case_id: str, changes: dict[str, Any], param: str
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    async with _client(stack) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.images.edit(
                model=case.model,
                image=("source.png", SOURCE, "image/png"),
                prompt=case.prompt,
                extra_body=_extra_body(case, **changes),
            )
    assert raised.value.param == param
    assert stack.sandbox.bedrock_stability.faults.stats.received == 0


async def test_models_list_the_new_operations(stack: RealStack) -> None:
    async with _client(stack) as client:
        page = await client.models.list()
    operations = {m.id: (m.model_extra or {}).get("operations") for m in page.data}
    for case in CASES:
        assert case.operation.value in operations[case.model]
