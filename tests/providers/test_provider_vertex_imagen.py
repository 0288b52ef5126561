"""VertexImagenBackend, the real aiplatform_v1 client, against the Vertex
Imagen emulator over real sockets: what only Vertex does (Imagen's sizes and
parameters, its partial filtering, gRPC status mapping, Google credentials).
The failure behaviour every backend shares is in test_backend_contract.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ContentRejected,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.registry import build_backends
from server.providers.vertex_imagen.backend import VertexImagenBackend, load_credentials
from server.providers.vertex_imagen.errors import error_for_exception
from server.providers.vertex_imagen.request import PIXELS, output_for
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from server.sandbox.vertex_imagen import CONTENT_FILTER_PARTIAL, CONTENT_FILTER_SILENT
from server.settings import Settings
from tests.providers.backends import vertex_imagen as make_backend
from tests.providers.conftest import backend_fixture
from tests.support.images import size_of

CATALOGUE = Catalogue.load()
STANDARD = CATALOGUE.get("google/imagen-4.0")
FAST = CATALOGUE.get("google/imagen-4.0-fast")
ULTRA = CATALOGUE.get("google/imagen-4.0-ultra")
MODELS = (STANDARD, FAST, ULTRA)
SQUARE = Size(1024, 1024)
# The seed's sizes and what Imagen produces for each.
PRODUCED = {
    Size(1024, 1024): ((1024, 1024), "1:1", "1K"),
    Size(1792, 1024): ((1408, 768), "16:9", "1K"),
    Size(1024, 1792): ((768, 1408), "9:16", "1K"),
    Size(2048, 2048): ((2048, 2048), "1:1", "2K"),
}


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.vertex_imagen.faults


backend = backend_fixture(make_backend)


def call(
    model: ModelSpec = STANDARD,
    size: Size | None = SQUARE,
    count: int = 1,
    *,
    seed: int | None = None,
    prompt: str = "a red fox in an autumn forest",
) -> UpstreamCall:
    return UpstreamCall(model=model, prompt=prompt, size=size, count=count, seed=seed)


@pytest.mark.parametrize(
    ("model", "size"),
    [(model, size) for model in MODELS for size in model.sizes],
    ids=lambda v: str(v) if isinstance(v, Size) else getattr(v, "name", None),
)
async def test_every_offered_size_produces_imagens_pixels(
    backend: VertexImagenBackend, sandbox: SandboxServer, model: ModelSpec, size: Size
) -> None:
    produced, ratio, tier = PRODUCED[size]

    result = await backend.run(call(model, size), Deadline.after(10))

    assert [size_of(image.data) for image in result.images] == [produced]
    assert result.images[0].mime_type == "image/png"
    sent = sandbox.vertex_imagen.received[-1]
    assert sent.model == model.upstream_id
    assert sent.endpoint == (
        "projects/sandbox-project/locations/us-central1/publishers/google/models/"
        + model.upstream_id
    )
    assert sent.instances == [{"prompt": "a red fox in an autumn forest"}]
    assert (sent.parameters["aspectRatio"], sent.parameters["sampleImageSize"]) == (ratio, tier)
    assert sent.parameters["includeRaiReason"] is True
    assert sent.parameters["outputOptions"] == {"mimeType": "image/png"}


def test_fast_does_not_offer_2k_but_standard_and_ultra_do() -> None:
    assert Size(2048, 2048) not in FAST.sizes
    assert Size(2048, 2048) in STANDARD.sizes and Size(2048, 2048) in ULTRA.sizes


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
async def test_n4_is_one_upstream_call(
    backend: VertexImagenBackend, sandbox: SandboxServer, model: ModelSpec
) -> None:
    assert model.images_per_call == 4
    result = await backend.run(call(model, count=4), Deadline.after(10))

    assert len(result.images) == 4
    assert result.filtered == 0
    assert sandbox.vertex_imagen.faults.stats.received == 1
    assert sandbox.vertex_imagen.received[-1].parameters["sampleCount"] == 4


def test_size_mapping() -> None:
    for size, (produced, ratio, tier) in PRODUCED.items():
        output = output_for(size)
        assert (output.aspect_ratio, output.sample_image_size) == (ratio, tier)
        assert (output.pixels.width, output.pixels.height) == produced
    # 16:9 at 2K is 2816 wide, past the seed's 2048 cap: 1K it is.
    assert output_for(Size(2816, 1536)).sample_image_size == "1K"
    assert output_for(Size(1000, 1300)).aspect_ratio == "3:4"
    assert output_for(Size(1300, 1000)).aspect_ratio == "4:3"
    # A model with only the 1K tier gets 1K, however big the request.
    assert output_for(Size(2048, 2048), ("1K",)).pixels == Size(1024, 1024)
    assert all(output_for(p).pixels == p for (_, tier), p in PIXELS.items() if tier == "1K")


async def test_seed_turns_the_watermark_off(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    await backend.run(call(seed=7), Deadline.after(10))
    sent = sandbox.vertex_imagen.received[-1].parameters
    assert (sent["seed"], sent["addWatermark"]) == (7, False)

    await backend.run(call(), Deadline.after(10))
    sent = sandbox.vertex_imagen.received[-1].parameters
    assert "seed" not in sent and "addWatermark" not in sent


async def test_prompt_enhancement_off_for_fast_and_reported_for_the_others(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    fast = await backend.run(call(FAST), Deadline.after(10))
    assert sandbox.vertex_imagen.received[-1].parameters["enhancePrompt"] is False
    assert fast.images[0].revised_prompt == ""

    standard = await backend.run(call(STANDARD), Deadline.after(10))
    assert "enhancePrompt" not in sandbox.vertex_imagen.received[-1].parameters
    assert standard.images[0].revised_prompt.startswith("a red fox in an autumn forest,")


async def test_edits_are_not_offered(backend: VertexImagenBackend, faults: FaultPlan) -> None:
    edit = dataclasses.replace(call(), operation=Operation.PROMPT_EDIT, images=(b"x",))
    with pytest.raises(CapabilityNotSupported):
        await backend.run(edit, Deadline.after(5))
    assert faults.stats.received == 0


async def test_partial_filter_returns_the_images_that_passed(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_PARTIAL)
    result = await backend.run(call(count=4), Deadline.after(10))
    assert (len(result.images), result.filtered) == (2, 2)
    assert faults.stats.received == 1


async def test_silently_dropped_images_count_as_filtered(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_SILENT)
    result = await backend.run(call(count=4), Deadline.after(10))
    assert (len(result.images), result.filtered) == (2, 2)


async def test_a_project_without_access_is_an_auth_failure(sandbox: SandboxServer) -> None:
    backend = make_backend(sandbox, project="not-our-project")
    try:
        with pytest.raises(UpstreamAuthFailed) as caught:
            await backend.run(call(), Deadline.after(5))
    finally:
        await backend.aclose()
    assert "IMAGE_SERVICE_VERTEX_PROJECT" in caught.value.message
    assert caught.value.metadata["upstream_code"] == "IAM_PERMISSION_DENIED"


async def test_an_unknown_model_is_a_configuration_problem(
    backend: VertexImagenBackend,
) -> None:
    retired = dataclasses.replace(STANDARD, upstream_id="imagen-4.0-generate-000")
    with pytest.raises(BackendNotConfigured) as caught:
        await backend.run(call(retired), Deadline.after(5))
    assert caught.value.metadata["setting"] == "IMAGE_SERVICE_VERTEX_LOCATION"


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


@pytest.mark.parametrize(
    ("error", "expected", "field"),
    [
        (api_exceptions.InvalidArgument("Unsupported aspectRatio: 3:2."), UpstreamRejected, "size"),
        (api_exceptions.InvalidArgument("sampleCount must be <= 4"), UpstreamRejected, "n"),
        (
            api_exceptions.InvalidArgument("Request contains an invalid argument."),
            UpstreamRejected,
            "request",
        ),
        (
            api_exceptions.InvalidArgument(
                "This prompt contains sensitive words that violate Google's Responsible AI "
                "practices. Support codes: 42876398"
            ),
            ContentRejected,
            "",
        ),
        (api_exceptions.FailedPrecondition("Billing is disabled"), UpstreamRejected, "request"),
        (api_exceptions.Unauthenticated("no token"), UpstreamAuthFailed, ""),
        (api_exceptions.PermissionDenied("API disabled"), UpstreamAuthFailed, ""),
        (api_exceptions.NotFound("no such model"), BackendNotConfigured, ""),
        (api_exceptions.ResourceExhausted("Quota exceeded for x"), RateLimited, ""),
        (api_exceptions.DeadlineExceeded("slow"), UpstreamTimeout, ""),
        (api_exceptions.ServiceUnavailable("down"), UpstreamUnavailable, ""),
        (api_exceptions.InternalServerError("oops"), UpstreamUnavailable, ""),
        (api_exceptions.Aborted("conflict"), UpstreamUnavailable, ""),
        (api_exceptions.Cancelled("cancelled upstream"), UpstreamUnavailable, ""),
        (api_exceptions.Unknown("?"), UpstreamUnavailable, ""),
        (auth_exceptions.RefreshError("invalid_grant"), UpstreamAuthFailed, ""),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_error_mapping_table(error: Exception, expected: type, field: str) -> None:
    mapped = error_for_exception(error, "imagen-4.0-generate-001")
    assert type(mapped) is expected
    assert str(error.args[0]) not in mapped.message  # never the upstream's words
    if field:
        assert isinstance(mapped, UpstreamRejected)
        assert mapped.violations[0].field == field
    assert mapped.retryable == (expected in (UpstreamUnavailable, RateLimited))


def test_retry_info_is_read_from_the_status_details() -> None:
    error = api_exceptions.ResourceExhausted("quota", details=[_retry_info(2.5)])
    mapped = error_for_exception(error, "imagen-4.0-generate-001")
    assert isinstance(mapped, RateLimited)
    assert mapped.retry_after == 2.5


def _service_account_file(tmp_path: pathlib.Path) -> pathlib.Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "prod-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "imagen@prod-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


async def test_production_client_uses_tls_endpoint_and_the_service_account(
    tmp_path: pathlib.Path,
) -> None:
    """Built, not called: construction makes no network call."""
    backend = VertexImagenBackend(
        project="prod-project",
        location="europe-west4",
        credentials_file=str(_service_account_file(tmp_path)),
    )
    try:
        transport = backend.client.transport
        assert transport._host == "europe-west4-aiplatform.googleapis.com:443"
        credentials = transport._credentials
        assert isinstance(credentials, service_account.Credentials)
        assert credentials.service_account_email.startswith("imagen@")
        assert backend.model_path("imagen-4.0-generate-001") == (
            "projects/prod-project/locations/europe-west4/publishers/google/models/"
            "imagen-4.0-generate-001"
        )
    finally:
        await backend.aclose()
    custom = VertexImagenBackend(
        project="p",
        api_endpoint="psc.example.internal:8443",
        credentials_file=str(_service_account_file(tmp_path)),
    )
    try:
        assert custom.client.transport._host == "psc.example.internal:8443"
    finally:
        await custom.aclose()


def test_unusable_credentials_name_the_settings(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE"):
        load_credentials(str(tmp_path / "missing.json"))
    # No ADC anywhere: GOOGLE_APPLICATION_CREDENTIALS names a missing file,
    # which google.auth reports at once (no metadata-server probe).
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="Application Default Credentials"):
        load_credentials()


async def test_registry_builds_it_from_settings(sandbox: SandboxServer) -> None:
    configured = Settings.model_validate(sandbox.vertex_imagen.settings_overrides(sandbox.base_url))
    backends, missing = build_backends(configured)
    try:
        assert "vertex_imagen" in backends
        assert "vertex_imagen" not in missing
        result = await backends["vertex_imagen"].run(call(count=2), Deadline.after(10))
        assert len(result.images) == 2
    finally:
        for built in backends.values():
            await built.aclose()

    _, missing = build_backends(Settings.model_validate({"vertex_project": ""}))
    assert missing["vertex_imagen"] == "IMAGE_SERVICE_VERTEX_PROJECT"


async def test_logs_carry_no_upstream_body_at_warning(
    backend: VertexImagenBackend, faults: FaultPlan, caplog: pytest.LogCaptureFixture
) -> None:
    faults.push(FaultMode.BAD_REQUEST)
    with caplog.at_level(logging.WARNING), pytest.raises(UpstreamRejected):
        await backend.run(call(), Deadline.after(5))
    assert "INVALID_ARGUMENT" in caplog.text
    assert "sandbox fault" not in caplog.text
