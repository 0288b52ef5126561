"""`VertexImagenEmulator`: the gRPC listener, auth, routing and the Predict handler."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.aiplatform_v1.types import prediction_service
from google.protobuf import json_format, struct_pb2
from starlette.routing import BaseRoute

from server.netloc import http_url
from server.sandbox.faults import Exchange, FaultMode, FaultPlan, SandboxClosing
from server.sandbox.vertex_imagen.errors import Dropped, RpcError, error_info, invalid, status_bytes
from server.sandbox.vertex_imagen.gemini import (
    GEMINI_MODELS,
    answer_generate_content,
    validate_generate_content,
)
from server.sandbox.vertex_imagen.predictions import fault_error, render_predictions
from server.sandbox.vertex_imagen.relay import Relay
from server.sandbox.vertex_imagen.validation import MODELS, ImagenModel, validate

# Well-known sandbox values, not secrets.
SANDBOX_VERTEX_PROJECT = "sandbox-project"
SANDBOX_VERTEX_LOCATION = "us-central1"

SERVICE = "google.cloud.aiplatform.v1.PredictionService"
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_ENDPOINT = re.compile(r"^projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/]+)$")


@dataclass(frozen=True)
class Received:
    """A Predict call the emulator accepted past auth and routing, for tests."""

    model: str
    endpoint: str
    instances: list[Any]
    parameters: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GeminiReceived:
    """A GenerateContent call the emulator accepted past auth and routing."""

    model: str
    endpoint: str
    request: Any
    metadata: dict[str, str] = field(default_factory=dict)


class VertexImagenEmulator:
    """Vertex AI's PredictionService for the Imagen 4 models of one project."""

    name = "vertex_imagen"

    def __init__(
        self,
        project: str = SANDBOX_VERTEX_PROJECT,
        *,
        location: str = SANDBOX_VERTEX_LOCATION,
        require_auth: bool = False,
        port: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        self.project = project
        self.location = location
        self.require_auth = require_auth
        self.faults = faults or FaultPlan()
        # The latest accepted calls, newest last (bounded: the sandbox may
        # run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=32)
        self.gemini_received: deque[GeminiReceived] = deque(maxlen=32)
        self._requested_port = port
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._relay_server = Relay()

    def routes(self) -> list[BaseRoute]:
        return []  # gRPC only, on its own listener

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Vertex emulator is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """The backend's `api_endpoint` for this emulator (plaintext)."""
        return http_url(self._host, self.port)

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {
            "vertex_project": self.project,
            "vertex_location": self.location,
            "vertex_api_endpoint": self.endpoint,
            "vertex_credentials_file": "",
        }

    async def start_listener(self, host: str) -> None:
        """Start the gRPC server and the relay clients connect through."""
        if self._grpc is not None:
            raise RuntimeError("the Vertex emulator is already started")
        request_pb = prediction_service.PredictRequest.pb()
        response_pb = prediction_service.PredictResponse.pb()
        handler = grpc.unary_unary_rpc_method_handler(
            self._predict,
            request_deserializer=request_pb.FromString,
            response_serializer=response_pb.SerializeToString,
        )
        generate_content = grpc.unary_unary_rpc_method_handler(
            self._generate_content,
            request_deserializer=prediction_service.GenerateContentRequest.pb().FromString,
            response_serializer=prediction_service.GenerateContentResponse.pb().SerializeToString,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Predict": handler, "GenerateContent": generate_content}
                ),
            )
        )
        inner_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            self._port = await self._relay_server.start(host, self._requested_port, inner_port)
        except BaseException:
            await server.stop(0)
            raise
        self._grpc = server
        self._host = host

    async def stop_listener(self) -> None:
        """Stop at once: calls in progress are cancelled."""
        if self._grpc is None:
            return
        server, self._grpc = self._grpc, None
        await self._relay_server.stop()
        await server.stop(0)
        self._port = None

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._serve(self._answer(request, context), context)

    async def _generate_content(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        return await self._serve(self._answer_gemini(request, context), context)

    async def _serve(
        self, answer: Coroutine[Any, Any, Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """Count the call, await its `answer` and turn its errors into statuses."""
        stats = self.faults.stats
        stats.received += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        outcome = "cancelled"
        try:
            try:
                response = await answer
            except SandboxClosing:
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE, "The sandbox is shutting down."
                ) from None
            except Dropped:
                outcome = "dropped"
                # Wait for gRPC to notice the dead connection and cancel us.
                await asyncio.sleep(self.faults.hang_s)
                raise
            outcome = "completed"
            return response
        except RpcError as error:
            outcome = "completed"
            await context.abort(
                error.code,
                error.message,
                trailing_metadata=(("grpc-status-details-bin", status_bytes(error)),),
            )
        finally:
            stats.in_flight -= 1
            setattr(stats, outcome, getattr(stats, outcome) + 1)

    async def _answer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self._check_auth(metadata.get("authorization"))
        model = self._route(request.endpoint)
        parameters: dict[str, Any] = {}
        if request.parameters.WhichOneof("kind") is not None:
            raw = json_format.MessageToDict(request.parameters)
            if not isinstance(raw, dict):
                raise invalid("parameters must be a struct.")
            parameters = raw
        instances = [json_format.MessageToDict(value) for value in request.instances]
        metadata.pop("authorization", None)  # a credential, however fake
        self.received.append(
            Received(model.model_id, request.endpoint, instances, parameters, metadata)
        )
        job = validate(model, instances, parameters)

        fault = await Exchange(self.faults).begin(job.prompt)
        if fault.mode is FaultMode.DROP_CONNECTION:
            self._relay_server.drop(context.peer())
            raise Dropped
        error = fault_error(fault, job)
        if error is not None:
            raise error
        response = prediction_service.PredictResponse.pb()()
        for prediction in await render_predictions(job, fault):
            response.predictions.append(json_format.ParseDict(prediction, struct_pb2.Value()))
        return response

    async def _answer_gemini(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self._check_auth(metadata.get("authorization"))
        model_id = self._route_id(request.model)
        if model_id not in GEMINI_MODELS:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND, f"Publisher Model `{request.model}` not found."
            )
        metadata.pop("authorization", None)
        self.gemini_received.append(GeminiReceived(model_id, request.model, request, metadata))
        job = validate_generate_content(model_id, request)
        fault = await Exchange(self.faults).begin(job.prompt)
        if fault.mode is FaultMode.DROP_CONNECTION:
            self._relay_server.drop(context.peer())
            raise Dropped
        # Gemini answers a safety block in the response, not as a status.
        error = fault_error(fault, job)
        if error is not None and fault.mode is not FaultMode.CONTENT_FILTER:
            raise error
        return await answer_generate_content(job, fault)

    def _check_auth(self, authorization: str | None) -> None:
        if authorization is None:
            if self.require_auth:
                raise RpcError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"Request is missing required authentication credential. {_AUTH_HELP}",
                    error_info("CREDENTIALS_MISSING", "googleapis.com"),
                )
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RpcError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"Request had invalid authentication credentials. {_AUTH_HELP}",
                error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", "googleapis.com"),
            )

    def _route(self, endpoint: str) -> ImagenModel:
        model = MODELS.get(self._route_id(endpoint))
        if model is None:
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"Publisher Model `{endpoint}` not found.",
            )
        return model

    def _route_id(self, endpoint: str) -> str:
        """The model id of `endpoint`, after the project check."""
        match = _ENDPOINT.match(endpoint)
        if match is None:
            raise invalid(f"Invalid resource field value in the request: endpoint {endpoint!r}.")
        project, _, model_id = match.groups()
        if project != self.project:
            resource = f"//aiplatform.googleapis.com/{endpoint}"
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'aiplatform.endpoints.predict' denied on resource '{resource}' "
                "(or it may not exist).",
                error_info(
                    "IAM_PERMISSION_DENIED",
                    "aiplatform.googleapis.com",
                    permission="aiplatform.endpoints.predict",
                    resource=endpoint,
                ),
            )
        return model_id
