"""`BedrockStabilityEmulator`: the InvokeModel route, from auth to the answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.sandbox.bedrock_stability.errors import error_response, fault_response
from server.sandbox.bedrock_stability.models import MODELS, base_model_id
from server.sandbox.bedrock_stability.services import render, validate
from server.sandbox.bedrock_stability.sigv4 import AuthError, verify_sigv4
from server.sandbox.bedrock_stability.validation import Invalid
from server.sandbox.faults import Exchange, FaultMode, FaultPlan

# Well-known sandbox credentials, not secrets: they only open the emulator.
SANDBOX_BEDROCK_REGION = "us-east-1"
SANDBOX_BEDROCK_ACCESS_KEY_ID = "AKIASANDBOXBEDROCK00"
SANDBOX_BEDROCK_SECRET_ACCESS_KEY = "sandbox-bedrock-secret-access-key"

ROUTE = "/model/{model_id:path}/invoke"


@dataclass(frozen=True)
class Received:
    """A request body the emulator accepted past auth, for tests to inspect."""

    model_id: str
    body: dict[str, Any]


class BedrockStabilityEmulator:
    """Bedrock Runtime's InvokeModel for the Stability models, in one region."""

    name = "bedrock_stability"

    def __init__(
        self,
        *,
        access_key_id: str = SANDBOX_BEDROCK_ACCESS_KEY_ID,
        secret_access_key: str = SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
        region: str = SANDBOX_BEDROCK_REGION,
        faults: FaultPlan | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.faults = faults or FaultPlan()
        # The latest accepted bodies, newest last (bounded: the sandbox may
        # run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=32)

    def routes(self) -> list[BaseRoute]:
        return [Route(ROUTE, self.faults.endpoint(self._handle), methods=["POST"])]

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {
            "bedrock_region": self.region,
            "bedrock_endpoint_url": base_url,
            "bedrock_access_key_id": self.access_key_id,
            "bedrock_secret_access_key": self.secret_access_key,
        }

    @staticmethod
    def _raw_path(request: Request) -> str:
        raw = request.scope.get("raw_path")
        return raw.decode("latin-1") if raw else quote(request.url.path, safe="/")

    async def _handle(self, request: Request, exchange: Exchange) -> Response:
        raw_path = self._raw_path(request)
        body_bytes = await request.body()
        try:
            verify_sigv4(
                request,
                raw_path,
                body_bytes,
                access_key_id=self.access_key_id,
                secret_access_key=self.secret_access_key,
                region=self.region,
            )
        except AuthError as denied:
            return error_response(403, denied.code, denied.message)
        # The id between /model/ and /invoke, decoded once: "%3A" → ":".
        model_id = unquote(raw_path[len("/model/") : -len("/invoke")])
        model = MODELS.get(base_model_id(model_id))
        if model is None:
            return error_response(
                400, "ValidationException", "The provided model identifier is invalid."
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return error_response(
                400, "ValidationException", "The contentType must be application/json."
            )
        try:
            body = json.loads(body_bytes)
        except ValueError:
            return error_response(
                400, "ValidationException", "Malformed input request: invalid JSON."
            )
        if isinstance(body, dict):
            self.received.append(Received(model_id, body))
        try:
            job = await asyncio.to_thread(validate, model, body)
        except Invalid as invalid:
            return error_response(400, "ValidationException", str(invalid))

        fault = await exchange.begin(job.prompt)
        if fault.mode is not FaultMode.NONE:
            return fault_response(fault, job)
        return JSONResponse(
            await asyncio.to_thread(render, job),
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )
