"""Every backend's upstream faults reach the caller as the right gRPC code and
reason, through the whole service (gRPC → orchestrator → backend → emulator).

One table for every model: each row is a fault an emulator can be told to
answer with, and what the caller then sees. What only one backend does
through the service (fan-out, tasks, boto3's threads) stays in its own
test_models_<backend>.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox import azure_flux, azure_mai, bailian_wan, bedrock_stability, vertex_imagen
from server.sandbox.faults import FaultMode, FaultPlan
from tests.rpc.conftest import ErrorDetails, Stack, details_of


@dataclass(frozen=True)
class Model:
    """One backend's model, as the table drives it."""

    name: str
    # The backend's registry key: its emulator and the errors' metadata["upstream"].
    backend: str
    n: int = 1
    # What the emulator's 429s ask to wait. Upstreams that send whole seconds
    # only would make the retries take seconds, so their 429s say nothing.
    retry_after: float | None = 0.05

    def faults(self, stack: Stack) -> FaultPlan:
        return stack.sandbox.emulator(self.backend).faults

    async def failure(self, stack: Stack, rpc_timeout: float = 30) -> ErrorDetails:
        request = pb.GenerateRequest(model=self.name, prompt="a fox", n=self.n)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Generate(request, timeout=rpc_timeout)
        return details_of(caught.value)


FLUX = Model("azure/flux-kontext-pro", "azure_flux")
MAI = Model("azure/mai-image-2", "azure_mai")
WAN = Model("bailian/wan2.7-image", "bailian_wan", retry_after=None)
BEDROCK = Model("bedrock/stability-stable-image-core", "bedrock_stability", retry_after=None)
# The seed's Imagen name, served by its Gemini successor (GenerateContent).
IMAGEN = Model("google/imagen-4.0", "vertex_imagen")
MODELS = (FLUX, MAI, WAN, BEDROCK, IMAGEN)

# How many requests the emulator sees: a refusal (or a final error) is not
# retried; a transient failure is, up to the service's 4 attempts.
ONCE, RETRIED = 1, 4

INVALID = ("INVALID_ARGUMENT", "UPSTREAM_INVALID_REQUEST")
FILTERED = ("INVALID_ARGUMENT", "CONTENT_POLICY_VIOLATION")
LIMITED = ("RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED")
DOWN = ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
AUTH_FAILED = ("FAILED_PRECONDITION", "UPSTREAM_AUTH_FAILED")
NOT_CONFIGURED = ("FAILED_PRECONDITION", "BACKEND_NOT_CONFIGURED")
TIMED_OUT = ("DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT")

B, C, R, S, D = (
    FaultMode.BAD_REQUEST,
    FaultMode.CONTENT_FILTER,
    FaultMode.RATE_LIMIT,
    FaultMode.SERVER_ERROR,
    FaultMode.DROP_CONNECTION,
)

# model, fault, variant, (gRPC code, reason), requests, metadata["upstream_code"]
TABLE: list[tuple[Model, FaultMode, str, tuple[str, str], int, str | None]] = [
    (FLUX, B, "", INVALID, ONCE, "InvalidRequest"),
    (FLUX, C, azure_flux.CONTENT_FILTER_HTTP, FILTERED, ONCE, None),
    (FLUX, C, azure_flux.CONTENT_FILTER_FINISH_REASON, FILTERED, ONCE, None),
    (FLUX, R, "", LIMITED, RETRIED, "429"),
    (FLUX, S, "", DOWN, RETRIED, "InternalServerError"),
    (FLUX, D, "", DOWN, RETRIED, None),
    (MAI, B, "", INVALID, ONCE, "BadRequest"),
    (MAI, C, azure_mai.CONTENT_FILTER_PROMPT, FILTERED, ONCE, None),
    (MAI, C, azure_mai.CONTENT_FILTER_OUTPUT, FILTERED, ONCE, None),
    (MAI, R, "", LIMITED, RETRIED, "429"),
    (MAI, S, "", DOWN, RETRIED, "InternalServerError"),
    (MAI, D, "", DOWN, RETRIED, None),
    (WAN, B, "", INVALID, ONCE, "InvalidParameter"),
    (WAN, B, bailian_wan.IN_TASK, INVALID, ONCE, "InvalidParameter"),
    (WAN, C, "", FILTERED, ONCE, "DataInspectionFailed"),
    (WAN, C, bailian_wan.IN_TASK, FILTERED, ONCE, "DataInspectionFailed"),
    (WAN, R, "", LIMITED, RETRIED, "Throttling.RateQuota"),
    (WAN, S, "", DOWN, RETRIED, "InternalError"),
    # A failed task is not submitted again: a new one would be a new bill.
    (WAN, S, bailian_wan.IN_TASK, DOWN, ONCE, "InternalError.Algo"),
    (WAN, D, "", DOWN, RETRIED, None),
    (BEDROCK, B, "", INVALID, ONCE, "ValidationException"),
    (BEDROCK, B, bedrock_stability.ACCESS_DENIED, AUTH_FAILED, ONCE, "AccessDeniedException"),
    (BEDROCK, B, bedrock_stability.NOT_FOUND, NOT_CONFIGURED, ONCE, "ResourceNotFoundException"),
    (BEDROCK, C, "", FILTERED, ONCE, None),
    (BEDROCK, R, "", LIMITED, RETRIED, "ThrottlingException"),
    (BEDROCK, R, bedrock_stability.MODEL_NOT_READY, DOWN, RETRIED, "ModelNotReadyException"),
    (BEDROCK, S, "", DOWN, RETRIED, "InternalServerException"),
    (BEDROCK, S, bedrock_stability.UNAVAILABLE, DOWN, RETRIED, "ServiceUnavailableException"),
    (BEDROCK, S, bedrock_stability.MODEL_TIMEOUT, TIMED_OUT, ONCE, "ModelTimeoutException"),
    (BEDROCK, D, "", DOWN, RETRIED, None),
    (IMAGEN, B, "", INVALID, ONCE, None),
    (IMAGEN, C, vertex_imagen.CONTENT_FILTER_PROMPT, FILTERED, ONCE, None),
    (IMAGEN, C, vertex_imagen.CONTENT_FILTER_ALL, FILTERED, ONCE, None),
    (IMAGEN, R, "", LIMITED, RETRIED, "RATE_LIMIT_EXCEEDED"),
    (IMAGEN, S, "", DOWN, RETRIED, None),
    (IMAGEN, D, "", DOWN, RETRIED, None),
]


def _id(row: tuple[Any, ...]) -> str:
    model, mode, variant = row[:3]
    return "-".join(filter(None, (model.backend, mode.value, variant)))


@pytest.mark.parametrize(
    ("model", "mode", "variant", "expected", "requests", "upstream_code"),
    TABLE,
    ids=[_id(row) for row in TABLE],
)
async def test_each_fault_reaches_the_caller_as_its_code_and_reason(
    stack: Stack,
    model: Model,
    mode: FaultMode,
    variant: str,
    expected: tuple[str, str],
    requests: int,
    upstream_code: str | None,
) -> None:
    faults = model.faults(stack)
    faults.push(mode, variant=variant, retry_after=model.retry_after, times=10)

    details = await model.failure(stack)

    assert (details.code.name, details.reason) == expected
    assert details.metadata["upstream"] == model.backend
    assert details.metadata.get("upstream_code") == upstream_code
    # No upstream body, key or URL leaks into what the caller sees.
    assert "sandbox" not in details.message.lower()
    assert "://" not in details.message and "127.0.0.1" not in details.message
    assert faults.stats.received == requests
    said = model.retry_after if mode is FaultMode.RATE_LIMIT else None
    assert details.retry_delay_s == (None if said is None else pytest.approx(said, abs=0.01))


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.backend)
async def test_a_retry_after_beyond_the_deadline_reaches_the_caller_at_once(
    stack: Stack, model: Model
) -> None:
    faults = model.faults(stack)
    faults.push(FaultMode.RATE_LIMIT, retry_after=5, times=10)

    details = await model.failure(stack, rpc_timeout=3)

    assert (details.code.name, details.reason) == LIMITED
    assert details.retry_delay_s == 5
    assert faults.stats.received == 1
