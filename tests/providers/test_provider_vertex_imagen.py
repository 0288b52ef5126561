"""VertexImagenBackend, the real aiplatform_v1 client, against the Vertex
Imagen emulator over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator

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
from server.domain.retry import RetryPolicy
from server.providers.registry import build_backends
from server.providers.vertex_imagen import (
    PIXELS,
    VertexImagenBackend,
    error_for_exception,
    load_credentials,
    output_for,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from server.sandbox.vertex_imagen import (
    CONTENT_FILTER_ALL,
    CONTENT_FILTER_PARTIAL,
    CONTENT_FILTER_PROMPT,
    CONTENT_FILTER_SILENT,
    SERVER_ERROR_UNAVAILABLE,
)
from server.settings import Settings
from tests.support.images import size_of

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
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
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.vertex_imagen.faults


def make_backend(sandbox: SandboxServer, **changes: str) -> VertexImagenBackend:
    overrides = sandbox.vertex_imagen.settings_overrides(sandbox.base_url)
    return VertexImagenBackend(
        project=changes.get("project", overrides["vertex_project"]),
        location=overrides["vertex_location"],
        api_endpoint=overrides["vertex_api_endpoint"],
        timeout_s=10.0,
        retry=FAST_RETRY,
    )


@pytest.fixture
async def backend(sandbox: SandboxServer) -> AsyncIterator[VertexImagenBackend]:
    backend = make_backend(sandbox)
    yield backend
    await backend.aclose()


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


@pytest.mark.parametrize("variant", [CONTENT_FILTER_PROMPT, CONTENT_FILTER_ALL, ""])
async def test_refusals_are_content_rejected_and_not_retried(
    backend: VertexImagenBackend, faults: FaultPlan, variant: str
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=variant, times=3)
    with pytest.raises(ContentRejected) as caught:
        await backend.run(call(count=4), Deadline.after(5))
    assert faults.stats.received == 1
    assert caught.value.metadata["upstream"] == "vertex_imagen"
    assert caught.value.metadata["support_codes"].isdigit()
    assert "Support codes" not in caught.value.message  # Google's text stays out


async def test_bad_request_is_rejected_without_retry(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.BAD_REQUEST, times=3)
    with pytest.raises(UpstreamRejected) as caught:
        await backend.run(call(), Deadline.after(5))
    assert caught.value.metadata["upstream_status"] == "INVALID_ARGUMENT"
    assert "sandbox fault" not in caught.value.message
    assert faults.stats.received == 1


async def test_rate_limit_honours_retry_info_then_succeeds(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.4)
    started = time.monotonic()

    result = await backend.run(call(), Deadline.after(10))

    assert time.monotonic() - started >= 0.4
    assert len(result.images) == 1
    assert faults.stats.received == 2


async def test_persistent_rate_limit_surfaces_retry_info(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.05, times=10)
    with pytest.raises(RateLimited) as caught:
        await backend.run(call(), Deadline.after(10))
    assert caught.value.retry_after == pytest.approx(0.05)
    assert caught.value.metadata["upstream_code"] == "RATE_LIMIT_EXCEEDED"
    assert faults.stats.received == FAST_RETRY.attempts


async def test_retry_info_beyond_the_deadline_fails_fast(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=5, times=10)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await backend.run(call(), Deadline.after(2))
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after == 5
    assert faults.stats.received == 1


@pytest.mark.parametrize("variant", ["", SERVER_ERROR_UNAVAILABLE])
async def test_server_errors_are_retried(
    backend: VertexImagenBackend, faults: FaultPlan, variant: str
) -> None:
    faults.push(FaultMode.SERVER_ERROR, variant=variant)
    result = await backend.run(call(), Deadline.after(10))
    assert len(result.images) == 1
    assert faults.stats.received == 2

    faults.push(FaultMode.SERVER_ERROR, variant=variant, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(call(), Deadline.after(10))
    assert faults.stats.received == 2 + FAST_RETRY.attempts


async def test_timeout_stops_at_the_deadline(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.TIMEOUT, times=10)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await backend.run(call(), Deadline.after(0.5))
    assert 0.4 <= time.monotonic() - started < 1.5
    # The abandoned call is not left hanging in the emulator.
    await faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)


async def test_per_attempt_timeout_bounds_each_call(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    overrides = sandbox.vertex_imagen.settings_overrides(sandbox.base_url)
    backend = VertexImagenBackend(
        project=overrides["vertex_project"],
        api_endpoint=overrides["vertex_api_endpoint"],
        timeout_s=0.3,
        retry=FAST_RETRY,
    )
    faults.push(FaultMode.TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            await backend.run(call(), Deadline.after(30))
    finally:
        await backend.aclose()
    assert time.monotonic() - started < 1.5


async def test_dropped_connection_is_retried(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    result = await backend.run(call(), Deadline.after(10))
    assert len(result.images) == 1
    # gRPC notices the cut connection on its side a moment later.
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.received, stats.dropped) == (2, 1)

    faults.push(FaultMode.DROP_CONNECTION, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(call(), Deadline.after(10))
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert stats.dropped == 1 + FAST_RETRY.attempts


async def test_cancelling_the_call_cancels_the_upstream_request(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    faults.latencies = [30.0]
    task = asyncio.create_task(backend.run(call(count=4), Deadline.after(60)))
    await faults.wait_for(lambda s: s.in_flight == 1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stats = await faults.wait_for(lambda s: s.in_flight == 0, within_s=2)
    assert (stats.received, stats.cancelled, stats.completed) == (1, 1, 0)


async def test_missing_credentials_are_an_auth_failure(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    sandbox.vertex_imagen.require_auth = True
    with pytest.raises(UpstreamAuthFailed) as caught:
        await backend.run(call(), Deadline.after(5))
    assert "IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE" in caught.value.message
    assert caught.value.metadata["upstream_status"] == "UNAUTHENTICATED"
    assert sandbox.vertex_imagen.faults.stats.received == 1


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


async def test_prompt_directive_reaches_the_emulator(
    backend: VertexImagenBackend, faults: FaultPlan
) -> None:
    prompt = "fox [sandbox:fault=bad_request]"
    with pytest.raises(UpstreamRejected):
        await backend.run(call(prompt=prompt), Deadline.after(5))
    assert faults.stats.faults[FaultMode.BAD_REQUEST] == 1


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
