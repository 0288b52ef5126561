"""The nine Stability Image Services edits added beside inpaint, background
removal and the first two upscalers: BedrockStabilityBackend against the
Bedrock emulator over real sockets (boto3 → HTTP → SigV4-checked emulator).

Each case (tests/support/image_services.py) must reach the model it names
with the body that model's schema takes (the emulator refuses extraneous
keys and out-of-range values, as Bedrock does) and come back as an image of
the size that tool makes."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import InvalidArgument
from server.domain.requests import EditOptions
from server.providers.bedrock_stability.backend import BedrockStabilityBackend
from server.sandbox.server import SandboxServer
from tests.providers.backends import bedrock_stability as make_backend
from tests.providers.conftest import backend_fixture
from tests.support.image_services import CASES, SOURCE, STYLE, ServiceCase
from tests.support.images import size_of

backend = backend_fixture(make_backend)
CATALOGUE = Catalogue.load()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_each_service_gets_its_own_body_and_answers_an_image(
    backend: BedrockStabilityBackend, sandbox: SandboxServer, case: ServiceCase
) -> None:
    result = await backend.run(case.call(seed=7), Deadline.after(20))

    assert [size_of(image.data) for image in result.images] == [case.produced]
    received = sandbox.bedrock_stability.received[-1]
    assert received.model_id == CATALOGUE.get(case.model).upstream_id
    body = received.body
    assert {key: body.get(key) for key in case.sends} == case.sends
    assert body["seed"] == 7
    assert body["output_format"] == "png"
    image_key = "init_image" if "style-transfer" in case.model else "image"
    assert base64.b64decode(body[image_key]) == SOURCE
    assert ("mask" in body) is case.masked
    assert sandbox.bedrock_stability.faults.stats.received == 1


async def test_style_transfer_sends_the_style_image(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    case = next(c for c in CASES if "style-transfer" in c.model)
    await backend.run(case.call(), Deadline.after(20))
    body = sandbox.bedrock_stability.received[-1].body
    assert base64.b64decode(body["style_image"]) == STYLE
    # Unset weights are left to the upstream's defaults.
    assert "composition_fidelity" not in body


async def test_outpaint_leaves_out_the_sides_not_extended(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    case = next(c for c in CASES if c.id == "outpaint")
    await backend.run(case.call(), Deadline.after(20))
    body = sandbox.bedrock_stability.received[-1].body
    assert not {"right", "down"} & set(body)


async def test_a_strength_of_zero_is_sent_not_dropped(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    case = next(c for c in CASES if c.id == "control_sketch")
    call = replace(case.call(), options=EditOptions(control_strength=0.0))
    await backend.run(call, Deadline.after(20))
    assert sandbox.bedrock_stability.received[-1].body["control_strength"] == 0.0


def _creative() -> ServiceCase:
    return next(c for c in CASES if c.id == "creative_upscale")


@pytest.mark.parametrize(
    ("model", "options", "prompt", "fields"),
    [
        ("bedrock/stability-creative-upscale", EditOptions(creativity=0.6), "x", ["creativity"]),
        ("bedrock/stability-creative-upscale", EditOptions(creativity=0.3), " ", ["prompt"]),
        ("bedrock/stability-fast-upscale", EditOptions(creativity=0.3), "", ["creativity"]),
        (
            "bedrock/stability-conservative-upscale",
            EditOptions(creativity=0.1),
            "x",
            ["creativity"],
        ),
    ],
    ids=["creative-out-of-range", "creative-without-prompt", "fast-creativity", "conservative"],
)
async def test_upscale_parameters_a_model_cannot_take_are_refused_before_any_call(
    backend: BedrockStabilityBackend,
    sandbox: SandboxServer,
    model: str,
    options: EditOptions,
    prompt: str,
    fields: list[str],
) -> None:
    call = replace(_creative().call(), model=CATALOGUE.get(model), options=options, prompt=prompt)
    with pytest.raises(InvalidArgument) as caught:
        await backend.run(call, Deadline.after(5))
    assert [v.field for v in caught.value.violations] == fields
    assert sandbox.bedrock_stability.faults.stats.received == 0


async def test_conservative_upscale_takes_its_own_creativity(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    call = replace(
        _creative().call(),
        model=CATALOGUE.get("bedrock/stability-conservative-upscale"),
        options=EditOptions(creativity=0.25),
    )
    await backend.run(call, Deadline.after(20))
    assert sandbox.bedrock_stability.received[-1].body["creativity"] == 0.25
