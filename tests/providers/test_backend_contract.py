"""What every backend owes the orchestrator, checked for each one against its
emulator, over real sockets.

One suite and one table: `HARNESSES` says, per backend, how to build it
against the sandbox, which model a minimal call uses, and where its upstream
differs (the codes its errors carry, its content-filter variants, how its
emulator is held busy, whether its client can abort a request on the wire).
The tests hold no per-backend branches. What only one backend does (body
shapes, sizes, polling, its own error codes and fault variants) is tested
in its own `test_provider_<backend>.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pytest

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import (
    ContentRejected,
    ImageServiceError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import ImageBackend, UpstreamCall
from server.domain.requests import Operation, Size
from server.sandbox import azure_flux, azure_mai, bailian_wan, bedrock_stability, vertex_imagen
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from tests.providers import backends
from tests.providers.conftest import FAST_RETRY
from tests.support.image_services import CASES, ServiceCase

CATALOGUE = Catalogue.load()
PROMPT = "a red fox in an autumn forest"
# Operations whose upstream body has no prompt.
PROMPTLESS = frozenset({Operation.ERASE_OBJECT})
# The credential a harness's `refused` backend presents instead of the sandbox's.
REFUSED_SECRET = "not-the-sandbox-secret"


@dataclass(frozen=True)
class Expect:
    """What a raised error carries besides its class: metadata values (None:
    the key is absent) and words its message must or must not contain."""

    metadata: Mapping[str, str | None] = field(default_factory=dict)
    says: tuple[str, ...] = ()
    never_says: tuple[str, ...] = ()

    def check(self, error: ImageServiceError, upstream: str) -> None:
        assert error.metadata["upstream"] == upstream
        assert {key: error.metadata.get(key) for key in self.metadata} == dict(self.metadata)
        for words in self.says:
            assert words in error.message
        for words in self.never_says:
            assert words not in error.message


class Build(Protocol):
    def __call__(self, sandbox: SandboxServer, *, timeout_s: float = ...) -> ImageBackend: ...


def hold_with_latency(plan: FaultPlan) -> None:
    """Make the next request wait 30 s before the emulator answers."""
    plan.latencies = [30.0]


def hold_wan_submission(plan: FaultPlan) -> None:
    # A Wan task's API answers at once and the task runs on: only a hanging
    # submission is a request the client keeps open.
    plan.push(FaultMode.TIMEOUT, variant=bailian_wan.AT_SUBMIT)


def refused_flux(sandbox: SandboxServer) -> ImageBackend:
    return backends.azure_flux(sandbox, key=REFUSED_SECRET)


def refused_mai(sandbox: SandboxServer) -> ImageBackend:
    return backends.azure_mai(sandbox, key=REFUSED_SECRET)


def refused_wan(sandbox: SandboxServer) -> ImageBackend:
    return backends.bailian_wan(sandbox, key=REFUSED_SECRET)


def refused_bedrock(sandbox: SandboxServer) -> ImageBackend:
    return backends.bedrock_stability(sandbox, secret=REFUSED_SECRET)


def refused_vertex(sandbox: SandboxServer) -> ImageBackend:
    # The sandbox's Vertex accepts anonymous calls unless told to behave like
    # production; the backend sends no credential to refuse (and none to leak).
    sandbox.vertex_imagen.require_auth = True
    return backends.vertex_imagen(sandbox)


def as_sent(seconds: float) -> float:
    return seconds


@dataclass(frozen=True)
class Harness:
    """One backend and its emulator, as the contract suite drives them."""

    # The registry key: the emulator's name and the errors' metadata["upstream"].
    name: str
    # A catalogue model this backend serves.
    model: str
    build: Build
    # A backend whose credentials the emulator refuses.
    refused: Callable[[SandboxServer], ImageBackend]
    auth: Expect
    bad_request: Expect
    rate_limited: Expect
    # SERVER_ERROR variants (each retried, then UpstreamUnavailable).
    server_errors: Mapping[str, Expect]
    # CONTENT_FILTER variants that refuse the whole call.
    content_filters: Mapping[str, Expect]
    # The TIMEOUT variant that hangs the request the client waits on.
    timeout_variant: str = ""
    # How to keep the next request in flight until the client gives up.
    hold: Callable[[FaultPlan], None] = hold_with_latency
    # The wait the upstream asks for when told to say `seconds` (some send
    # Retry-After in whole seconds only).
    retry_after_sent: Callable[[float], float] = as_sent
    # (cancelled, in_flight) in the emulator once the client has abandoned a
    # request: closed by an aborting client, still open if it cannot abort.
    abandoned: tuple[int, int] = (1, 0)
    # Whether errors keep the client library's exception as their cause.
    keeps_cause: bool = False
    # The test id, when one backend has two rows (two upstream APIs).
    label: str = ""
    # An edit to make instead of generating (the Image Services rows).
    edit: ServiceCase | None = None

    @property
    def id(self) -> str:
        if self.edit is not None:
            return f"{self.name}-{self.edit.id}"
        return self.label or self.name

    @property
    def call(self) -> UpstreamCall:
        """A minimal valid call: one image from a prompt (or the row's edit)."""
        if self.edit is not None:
            return self.edit.call(seed=None)
        return UpstreamCall(
            model=CATALOGUE.get(self.model), prompt=PROMPT, size=Size(1024, 1024), count=1
        )

    @property
    def batch(self) -> UpstreamCall:
        """As many images as one upstream request makes."""
        return replace(self.call, count=self.call.model.images_per_call)

    def faults(self, sandbox: SandboxServer) -> FaultPlan:
        return sandbox.emulator(self.name).faults


def code(upstream_code: str | None, status: str | None = None) -> Expect:
    metadata = {"upstream_code": upstream_code}
    if status is not None:
        metadata["upstream_status"] = status
    return Expect(metadata)


BEDROCK = Harness(
    name="bedrock_stability",
    model="bedrock/stability-stable-image-core",
    build=backends.bedrock_stability,
    refused=refused_bedrock,
    auth=Expect({"upstream_code": "InvalidSignatureException"}, says=("AWS credentials",)),
    bad_request=code("ValidationException", "400"),
    rate_limited=code("ThrottlingException", "429"),
    server_errors={
        "": code("InternalServerException"),
        bedrock_stability.UNAVAILABLE: code("ServiceUnavailableException"),
        bedrock_stability.MODEL_ERROR: code("ModelErrorException"),
        # A 200 whose finish reason is an inference error.
        bedrock_stability.INFERENCE_ERROR: code(None),
    },
    content_filters={
        "": Expect({"filter": "prompt"}, says=("prompt",)),
        bedrock_stability.CONTENT_FILTER_INPUT: Expect(
            {"filter": "input image"}, says=("input image",)
        ),
        bedrock_stability.CONTENT_FILTER_OUTPUT: Expect(
            {"filter": "output image"}, says=("output image",)
        ),
    },
    retry_after_sent=math.ceil,
    # boto3 cannot abort a request on the wire: it stays open upstream,
    # but nothing more is sent.
    abandoned=(0, 1),
)


HARNESSES = (
    Harness(
        name="azure_flux",
        model="azure/flux-2-pro",
        build=backends.azure_flux,
        refused=refused_flux,
        auth=Expect({"upstream_code": "401"}, says=("IMAGE_SERVICE_AZURE_FLUX_API_KEY",)),
        bad_request=code("InvalidRequest", "400"),
        rate_limited=code("429", "429"),
        server_errors={"": code("InternalServerError", "500")},
        content_filters={
            azure_flux.CONTENT_FILTER_HTTP: Expect({"categories": None}),
            azure_flux.CONTENT_FILTER_FINISH_REASON: Expect({"categories": "sexual"}),
        },
    ),
    Harness(
        name="azure_mai",
        model="azure/mai-image-2",
        build=backends.azure_mai,
        refused=refused_mai,
        auth=Expect({"upstream_code": "401"}, says=("IMAGE_SERVICE_AZURE_MAI_API_KEY",)),
        bad_request=code("BadRequest", "400"),
        rate_limited=code("429", "429"),
        server_errors={"": code("InternalServerError", "500")},
        content_filters={
            azure_mai.CONTENT_FILTER_PROMPT: Expect({"categories": "sexual"}),
            azure_mai.CONTENT_FILTER_OUTPUT: Expect({"categories": None}),
        },
    ),
    Harness(
        name="bailian_wan",
        model="bailian/wan2.7-image",
        build=backends.bailian_wan,
        refused=refused_wan,
        auth=Expect({"upstream_code": "InvalidApiKey"}, says=("IMAGE_SERVICE_BAILIAN_API_KEY",)),
        bad_request=code("InvalidParameter", "400"),
        rate_limited=code("Throttling.RateQuota", "429"),
        server_errors={"": code("InternalError", "500")},
        content_filters={
            bailian_wan.AT_SUBMIT: code("DataInspectionFailed"),
            bailian_wan.IN_TASK: code("DataInspectionFailed"),
        },
        timeout_variant=bailian_wan.AT_SUBMIT,
        hold=hold_wan_submission,
        retry_after_sent=math.ceil,
    ),
    BEDROCK,
    *(replace(BEDROCK, model=case.model, edit=case) for case in CASES),
    Harness(
        name="vertex_imagen",
        model="google/imagen-4.0",
        build=backends.vertex_imagen,
        refused=refused_vertex,
        auth=Expect(
            {"upstream_code": "CREDENTIALS_MISSING", "upstream_status": "UNAUTHENTICATED"},
            says=("IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE",),
        ),
        bad_request=code(None, "INVALID_ARGUMENT"),
        rate_limited=code("RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"),
        server_errors={
            "": code(None, "INTERNAL"),
            vertex_imagen.SERVER_ERROR_UNAVAILABLE: code(None, "UNAVAILABLE"),
        },
        # Google's words (with its support codes) stay out of the message.
        content_filters={
            "": Expect({"support_codes": "61493863"}, never_says=("Support codes",)),
            vertex_imagen.CONTENT_FILTER_PROMPT: Expect(
                {"support_codes": "61493863"}, never_says=("Support codes",)
            ),
            vertex_imagen.CONTENT_FILTER_ALL: Expect(
                {"support_codes": "56562880"}, never_says=("Support codes",)
            ),
        },
        keeps_cause=True,
    ),
    # The same backend and emulator, Gemini's GenerateContent instead of Predict.
    Harness(
        name="vertex_imagen",
        label="vertex_gemini",
        model="google/gemini-3.1-flash-image",
        build=backends.vertex_imagen,
        refused=refused_vertex,
        auth=Expect(
            {"upstream_code": "CREDENTIALS_MISSING", "upstream_status": "UNAUTHENTICATED"},
            says=("IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE",),
        ),
        bad_request=code(None, "INVALID_ARGUMENT"),
        rate_limited=code("RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"),
        server_errors={
            "": code(None, "INTERNAL"),
            vertex_imagen.SERVER_ERROR_UNAVAILABLE: code(None, "UNAVAILABLE"),
        },
        # Gemini answers a block in the response: promptFeedback, or a
        # candidate that finished for SAFETY without an image.
        content_filters={
            "": Expect({"support_codes": None}),
            vertex_imagen.CONTENT_FILTER_ALL: Expect({"support_codes": None}),
        },
        keeps_cause=True,
    ),
)


def variants(attribute: str) -> list[Any]:
    """(harness, variant) for each variant a harness lists under `attribute`."""
    return [
        pytest.param(harness, variant, id=f"{harness.id}-{variant or 'default'}")
        for harness in HARNESSES
        for variant in getattr(harness, attribute)
    ]


@pytest.fixture(params=HARNESSES, ids=lambda harness: harness.id)
def harness(request: pytest.FixtureRequest) -> Harness:
    result: Harness = request.param
    return result


@pytest.fixture
def faults(harness: Harness, sandbox: SandboxServer) -> FaultPlan:
    return harness.faults(sandbox)


@pytest.fixture
async def backend(harness: Harness, sandbox: SandboxServer) -> AsyncIterator[ImageBackend]:
    async with contextlib.aclosing(harness.build(sandbox)) as built:
        yield built


def inject(
    faults: FaultPlan, call: UpstreamCall, mode: FaultMode, variant: str, via: str
) -> UpstreamCall:
    """The call to make so the emulator answers with `mode`: queued in its
    plan for every attempt, or asked for by directives in the prompt (which
    proves the backend sends the prompt as given)."""
    if via == "plan":
        faults.push(mode, variant=variant, times=3)
        return call
    if call.operation in PROMPTLESS:
        pytest.skip(f"{call.operation.value} sends no prompt to carry the directives")
    directives = f" [sandbox:fault={mode.value}] [sandbox:variant={variant}]"
    return replace(call, prompt=call.prompt + directives)


# --- transient failures: retried within the policy ------------------------------


@pytest.mark.parametrize(("harness", "variant"), variants("server_errors"))
async def test_a_server_error_is_retried(
    harness: Harness, variant: str, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.SERVER_ERROR, variant=variant)
    result = await backend.run(harness.call, Deadline.after(10))
    assert len(result.images) == 1
    assert faults.stats.received == 2


@pytest.mark.parametrize(("harness", "variant"), variants("server_errors"))
async def test_a_persistent_server_error_is_unavailable_after_the_policys_attempts(
    harness: Harness, variant: str, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.SERVER_ERROR, variant=variant, times=10)
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(harness.call, Deadline.after(10))
    assert type(caught.value) is UpstreamUnavailable
    harness.server_errors[variant].check(caught.value, harness.name)
    assert faults.stats.received == FAST_RETRY.attempts


async def test_a_dropped_connection_is_retried(
    harness: Harness, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    result = await backend.run(harness.call, Deadline.after(10))
    assert len(result.images) == 1
    # gRPC notices the cut connection on its side a moment later.
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.received, stats.dropped) == (2, 1)


async def test_a_persistently_dropped_connection_is_unavailable(
    harness: Harness, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION, times=10)
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(harness.call, Deadline.after(10))
    assert type(caught.value) is UpstreamUnavailable
    Expect({"upstream_code": None}).check(caught.value, harness.name)
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.received, stats.dropped) == (FAST_RETRY.attempts, FAST_RETRY.attempts)


@pytest.mark.parametrize("retry_after", [None, 0.4], ids=["unsaid", "retry-after"])
async def test_a_rate_limit_is_retried_after_its_retry_after(
    harness: Harness, backend: ImageBackend, faults: FaultPlan, retry_after: float | None
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=retry_after)
    wait = 0.0 if retry_after is None else harness.retry_after_sent(retry_after)
    started = time.monotonic()

    result = await backend.run(harness.call, Deadline.after(10))

    assert time.monotonic() - started >= wait
    assert len(result.images) == 1
    assert faults.stats.received == 2


@pytest.mark.parametrize("retry_after", [None, 0.05], ids=["unsaid", "retry-after"])
async def test_a_persistent_rate_limit_is_rate_limited_with_the_upstreams_wait(
    harness: Harness, backend: ImageBackend, faults: FaultPlan, retry_after: float | None
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=retry_after, times=10)
    with pytest.raises(RateLimited) as caught:
        await backend.run(harness.call, Deadline.after(10))
    assert type(caught.value) is RateLimited
    harness.rate_limited.check(caught.value, harness.name)
    said = None if retry_after is None else pytest.approx(harness.retry_after_sent(retry_after))
    assert caught.value.retry_after == said
    assert faults.stats.received == FAST_RETRY.attempts


async def test_a_retry_after_beyond_the_deadline_fails_fast(
    harness: Harness, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=30, times=10)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await backend.run(harness.call, Deadline.after(10))
    # At once: waiting for the deadline would take 10 s.
    assert time.monotonic() - started < 5
    assert caught.value.retry_after == 30
    assert faults.stats.received == 1


# --- refusals: never retried ------------------------------------------------------


@pytest.mark.parametrize("via", ["plan", "prompt"])
@pytest.mark.parametrize(("harness", "variant"), variants("content_filters"))
async def test_a_content_filter_is_content_rejected_and_not_retried(
    harness: Harness, variant: str, via: str, backend: ImageBackend, faults: FaultPlan
) -> None:
    call = inject(faults, harness.batch, FaultMode.CONTENT_FILTER, variant, via)
    with pytest.raises(ContentRejected) as caught:
        await backend.run(call, Deadline.after(5))
    assert type(caught.value) is ContentRejected
    harness.content_filters[variant].check(caught.value, harness.name)
    assert faults.stats.received == 1
    assert faults.stats.faults[FaultMode.CONTENT_FILTER] == 1


@pytest.mark.parametrize("via", ["plan", "prompt"])
async def test_a_bad_request_is_rejected_without_retry(
    harness: Harness, via: str, backend: ImageBackend, faults: FaultPlan
) -> None:
    call = inject(faults, harness.call, FaultMode.BAD_REQUEST, "", via)
    with pytest.raises(UpstreamRejected) as caught:
        await backend.run(call, Deadline.after(5))
    assert type(caught.value) is UpstreamRejected
    harness.bad_request.check(caught.value, harness.name)
    assert "sandbox fault" not in caught.value.message  # the upstream's words stay out
    assert faults.stats.received == 1
    assert faults.stats.faults[FaultMode.BAD_REQUEST] == 1


async def test_refused_credentials_are_an_auth_failure_that_leaks_nothing(
    harness: Harness, sandbox: SandboxServer, faults: FaultPlan, caplog: pytest.LogCaptureFixture
) -> None:
    async with contextlib.aclosing(harness.refused(sandbox)) as backend:
        with caplog.at_level(logging.DEBUG), pytest.raises(UpstreamAuthFailed) as caught:
            await backend.run(harness.call, Deadline.after(5))
    error = caught.value
    assert type(error) is UpstreamAuthFailed
    harness.auth.check(error, harness.name)
    assert REFUSED_SECRET not in error.message
    assert REFUSED_SECRET not in str(error.metadata)
    assert REFUSED_SECRET not in caplog.text
    assert ((error.__cause__, error.__context__) != (None, None)) is harness.keeps_cause
    assert faults.stats.received == 1


# --- deadlines, timeouts and cancellation ------------------------------------------


async def test_a_hanging_upstream_stops_at_the_deadline(
    harness: Harness, backend: ImageBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.TIMEOUT, variant=harness.timeout_variant, times=10)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await backend.run(harness.call, Deadline.after(0.5))
    # Lower bound: not before the deadline; upper: well before the 10 s a
    # backend's own timeout or a retry would add.
    assert 0.4 <= time.monotonic() - started < 5
    # The abandoned request is not left hanging in the emulator, where the
    # client can abort it.
    stats = await faults.wait_for(lambda s: (s.cancelled, s.in_flight) == harness.abandoned)
    assert stats.received == 1


async def test_the_backends_timeout_bounds_each_attempt(
    harness: Harness, sandbox: SandboxServer, faults: FaultPlan
) -> None:
    harness.hold(faults)
    started = time.monotonic()
    # 1.5 s, not less: the attempt includes what a fresh client does before
    # its first request (botocore loads its service model), which on a busy
    # machine took longer than 0.3 s, so no request reached the emulator.
    async with contextlib.aclosing(harness.build(sandbox, timeout_s=1.5)) as backend:
        with pytest.raises(UpstreamTimeout):
            await backend.run(harness.call, Deadline.after(30))
    # A timed-out attempt is not retried (UpstreamTimeout is final), and the
    # attempt's timeout ended it, not the 30 s deadline.
    assert time.monotonic() - started < 15
    assert faults.stats.received == 1


async def test_cancelling_the_call_cancels_the_upstream_request(
    harness: Harness, backend: ImageBackend, faults: FaultPlan
) -> None:
    harness.hold(faults)
    task = asyncio.create_task(backend.run(harness.call, Deadline.after(60)))
    await faults.wait_for(lambda s: s.in_flight == 1)

    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5  # not the held answer (60 s)

    await faults.wait_for(lambda s: (s.cancelled, s.in_flight) == harness.abandoned, within_s=2)
    await asyncio.sleep(0.2)  # and nothing more is sent
    stats = faults.stats
    assert (stats.received, stats.cancelled, stats.in_flight, stats.completed) == (
        1,
        *harness.abandoned,
        0,
    )
