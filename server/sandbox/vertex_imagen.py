"""Emulator of Vertex AI's PredictionService for the Imagen 4 publisher models.

    gRPC  google.cloud.aiplatform.v1.PredictionService/Predict
    endpoint = projects/{project}/locations/{location}/publishers/google/models/{model}

It is the gRPC API itself, on a port of its own (gRPC cannot share the
sandbox's HTTP server), so the real `aiplatform_v1` async client is what
talks to it: the backend reaches it with `api_endpoint=http://host:port`,
over a plaintext channel without credentials. Messages are the aiplatform
package's own protobuf classes; nothing is vendored.

What it checks, as Vertex does (a little more strictly where Google does
not document the behaviour, so that backend mistakes surface here):

- `authorization` metadata: when present it must be `Bearer <token>`
  (UNAUTHENTICATED otherwise); when absent the call is accepted as the
  sandbox's anonymous caller, unless `require_auth` is set, which makes the
  emulator behave like production (UNAUTHENTICATED, CREDENTIALS_MISSING).
  Token values are not verified.
- the endpoint's project must be the emulator's (`sandbox-project`):
  PERMISSION_DENIED otherwise, as for a project one has no access to; an
  unknown model is NOT_FOUND. Any location is accepted.
- one instance `{"prompt": non-empty string}`; parameters `sampleCount`
  1..4 (default 4), `aspectRatio` 1:1|3:4|4:3|9:16|16:9, `sampleImageSize`
  1K|2K (case-insensitive; Fast only has 1K: UNCERTAIN upstream), `seed`
  uint32 and only with `addWatermark: false`, `outputOptions.mimeType`
  image/png|image/jpeg with `compressionQuality` 0..100, the boolean flags,
  `personGeneration` and `safetySetting` enums; any other parameter is
  INVALID_ARGUMENT (Imagen 4 has no `negativePrompt`).

A success renders each image at the model's pixel table size showing the
prompt: `{"bytesBase64Encoded", "mimeType"[, "prompt": the rewritten prompt
when enhancePrompt is on, its default]}`. Faults answer as gRPC statuses:
BAD_REQUEST → INVALID_ARGUMENT; RATE_LIMIT → RESOURCE_EXHAUSTED with a
`google.rpc.RetryInfo` detail when the fault has a retry_after;
SERVER_ERROR → INTERNAL (variant `unavailable`: UNAVAILABLE); TIMEOUT
hangs; DROP_CONNECTION closes the client's TCP connection mid-call (through
a relay in front of the gRPC server). CONTENT_FILTER has four variants:
`prompt` (default; INVALID_ARGUMENT with Vertex's blocked-prompt message),
`partial` (the last max(1, n // 2) images filtered), `all` (every image
filtered), `silent` (like `partial`, but the filtered images are left out
instead of carrying `raiFilteredReason`). Without `includeRaiReason` the
filtered images are always left out, as on Vertex.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.aiplatform_v1.types import prediction_service
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from starlette.routing import BaseRoute

from server.sandbox.faults import (
    Exchange,
    Fault,
    FaultMode,
    FaultPlan,
    SandboxClosing,
    strip_directives,
)
from server.sandbox.render import render_image

# Well-known sandbox values, not secrets.
SANDBOX_VERTEX_PROJECT = "sandbox-project"
SANDBOX_VERTEX_LOCATION = "us-central1"

SERVICE = "google.cloud.aiplatform.v1.PredictionService"

CONTENT_FILTER_PROMPT = "prompt"
CONTENT_FILTER_PARTIAL = "partial"
CONTENT_FILTER_ALL = "all"
CONTENT_FILTER_SILENT = "silent"
SERVER_ERROR_UNAVAILABLE = "unavailable"

BLOCKED_PROMPT_MESSAGE = (
    "Image generation failed with the following error: The prompt could not be submitted. "
    "Your current safety filter threshold prohibited one or more words in this prompt. "
    "If you think this was an error, send feedback. Support codes: 61493863"
)
RAI_FILTERED_REASON = (
    "This image was filtered out because it violated Vertex AI's usage guidelines. "
    "You will not be charged for blocked images. Try rephrasing the prompt. If you think "
    "this was an error, send feedback. Support codes: 56562880"
)
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)

PIXELS: dict[tuple[str, str], tuple[int, int]] = {
    ("1:1", "1K"): (1024, 1024),
    ("3:4", "1K"): (896, 1280),
    ("4:3", "1K"): (1280, 896),
    ("9:16", "1K"): (768, 1408),
    ("16:9", "1K"): (1408, 768),
    ("1:1", "2K"): (2048, 2048),
    ("3:4", "2K"): (1792, 2560),
    ("4:3", "2K"): (2560, 1792),
    ("9:16", "2K"): (1536, 2816),
    ("16:9", "2K"): (2816, 1536),
}
ASPECT_RATIOS = frozenset(ratio for ratio, _ in PIXELS)
MAX_SAMPLE_COUNT = 4
_PARAMETERS = frozenset(
    {
        "sampleCount",
        "aspectRatio",
        "sampleImageSize",
        "seed",
        "addWatermark",
        "enhancePrompt",
        "includeRaiReason",
        "includeSafetyAttributes",
        "personGeneration",
        "safetySetting",
        "language",
        "outputOptions",
    }
)
_BOOLEANS = ("addWatermark", "enhancePrompt", "includeRaiReason", "includeSafetyAttributes")
_ENUMS = {
    "personGeneration": frozenset({"dont_allow", "allow_adult", "allow_all"}),
    "safetySetting": frozenset(
        {
            "block_low_and_above",
            "block_medium_and_above",
            "block_only_high",
            "block_none",
            "block_most",
            "block_some",
            "block_few",
            "block_fewest",
        }
    ),
}
_ENDPOINT = re.compile(r"^projects/([^/]+)/locations/([^/]+)/publishers/google/models/([^/]+)$")


@dataclass(frozen=True)
class ImagenModel:
    """What one publisher model accepts."""

    model_id: str
    sample_image_sizes: tuple[str, ...]


MODELS: dict[str, ImagenModel] = {
    m.model_id: m
    for m in (
        ImagenModel("imagen-4.0-generate-001", ("1K", "2K")),
        ImagenModel("imagen-4.0-fast-generate-001", ("1K",)),
        ImagenModel("imagen-4.0-ultra-generate-001", ("1K", "2K")),
    )
}


@dataclass(frozen=True)
class Received:
    """A Predict call the emulator accepted past auth and routing, for tests."""

    model: str
    endpoint: str
    instances: list[Any]
    parameters: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    model: str
    prompt: str
    count: int
    width: int
    height: int
    mime_type: str
    quality: int
    seed: int | None
    enhance: bool
    include_rai_reason: bool


class _RpcError(Exception):
    """Answer with this gRPC status (and google.rpc details)."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: ProtoMessage) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _invalid(text: str) -> _RpcError:
    return _RpcError(grpc.StatusCode.INVALID_ARGUMENT, text)


def _error_info(reason: str, domain: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)


def _integer(parameters: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _invalid(f"{key} must be an integer.")
    if not low <= value <= high:
        raise _invalid(f"{key} must be between {low} and {high}.")
    return int(value)


def _output_options(parameters: dict[str, Any]) -> tuple[str, int]:
    options = parameters.get("outputOptions", {})
    if not isinstance(options, dict) or set(options) - {"mimeType", "compressionQuality"}:
        raise _invalid("outputOptions takes only mimeType and compressionQuality.")
    mime_type = options.get("mimeType", "image/png")
    if mime_type not in ("image/png", "image/jpeg"):
        raise _invalid(f"Unsupported outputOptions.mimeType: {mime_type}.")
    quality = _integer(options, "compressionQuality", 0, 100)
    return mime_type, 75 if quality is None else quality


def _prompt(instances: list[Any]) -> str:
    if len(instances) != 1:
        raise _invalid("Exactly one instance is supported for image generation.")
    instance = instances[0]
    if not isinstance(instance, dict) or set(instance) != {"prompt"}:
        raise _invalid("The instance must have exactly one field, prompt.")
    prompt = instance["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("The prompt must be a non-empty string.")
    return prompt


def _validate(model: ImagenModel, instances: list[Any], parameters: dict[str, Any]) -> _Job:
    prompt = _prompt(instances)
    unknown = sorted(set(parameters) - _PARAMETERS)
    if unknown:
        raise _invalid(f"Unsupported parameter for {model.model_id}: {unknown[0]}.")
    for key in _BOOLEANS:
        if key in parameters and not isinstance(parameters[key], bool):
            raise _invalid(f"{key} must be a boolean.")
    for key, allowed in _ENUMS.items():
        if key in parameters and parameters[key] not in allowed:
            raise _invalid(f"Unsupported {key}: {parameters[key]}.")
    count = _integer(parameters, "sampleCount", 1, MAX_SAMPLE_COUNT) or MAX_SAMPLE_COUNT
    ratio = parameters.get("aspectRatio", "1:1")
    if ratio not in ASPECT_RATIOS:
        raise _invalid(f"Unsupported aspectRatio: {ratio}. Use 1:1, 3:4, 4:3, 9:16 or 16:9.")
    tier = parameters.get("sampleImageSize", "1K")
    tier = tier.upper() if isinstance(tier, str) else tier
    if tier not in model.sample_image_sizes:
        raise _invalid(
            f"Unsupported sampleImageSize for {model.model_id}: {parameters['sampleImageSize']}. "
            f"Supported: {', '.join(model.sample_image_sizes)}."
        )
    seed = _integer(parameters, "seed", 0, 2**32 - 1)
    if seed is not None and parameters.get("addWatermark", True):
        raise _invalid("Seed is not supported when addWatermark is enabled.")
    mime_type, quality = _output_options(parameters)
    width, height = PIXELS[(ratio, tier)]
    return _Job(
        model=model.model_id,
        prompt=prompt,
        count=count,
        width=width,
        height=height,
        mime_type=mime_type,
        quality=quality,
        seed=seed,
        enhance=parameters.get("enhancePrompt", True),
        include_rai_reason=parameters.get("includeRaiReason", False),
    )


def _render_one(job: _Job, index: int) -> dict[str, Any]:
    label = f"sandbox {job.model} {job.width}x{job.height} #{index + 1}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    prompt = strip_directives(job.prompt)
    data = render_image(
        job.width,
        job.height,
        prompt,
        label=label,
        image_format="jpeg" if job.mime_type == "image/jpeg" else "png",
    )
    prediction = {"bytesBase64Encoded": base64.b64encode(data).decode("ascii")}
    prediction["mimeType"] = job.mime_type
    if job.enhance:
        prediction["prompt"] = f"{prompt}, richly detailed, soft natural light (sandbox rewrite)"
    return prediction


async def _predictions(job: _Job, fault: Fault) -> list[dict[str, Any]]:
    filtered = 0
    if fault.mode is FaultMode.CONTENT_FILTER:
        filtered = job.count if fault.variant == CONTENT_FILTER_ALL else max(1, job.count // 2)
    rendered = await asyncio.gather(
        *(asyncio.to_thread(_render_one, job, i) for i in range(job.count - filtered))
    )
    predictions = list(rendered)
    if job.include_rai_reason and fault.variant != CONTENT_FILTER_SILENT:
        predictions += [{"raiFilteredReason": RAI_FILTERED_REASON}] * filtered
    return predictions


def _fault_error(fault: Fault, job: _Job) -> _RpcError | None:
    """The status a fault answers with, or None when it shapes a success."""
    mode = fault.mode
    if mode is FaultMode.BAD_REQUEST:
        return _invalid("Request contains an invalid argument. (sandbox fault)")
    if mode is FaultMode.CONTENT_FILTER and fault.variant in ("", CONTENT_FILTER_PROMPT):
        return _invalid(BLOCKED_PROMPT_MESSAGE)
    if mode is FaultMode.RATE_LIMIT:
        details: list[ProtoMessage] = [
            _error_info("RATE_LIMIT_EXCEEDED", "aiplatform.googleapis.com", model=job.model)
        ]
        if fault.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(round(fault.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return _RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Quota exceeded for aiplatform.googleapis.com/"
            "online_prediction_requests_per_base_model with base model: "
            f"{job.model}. Please submit a quota increase request.",
            *details,
        )
    if mode is FaultMode.SERVER_ERROR:
        if fault.variant == SERVER_ERROR_UNAVAILABLE:
            return _RpcError(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        return _RpcError(grpc.StatusCode.INTERNAL, "Internal error encountered.")
    if mode is FaultMode.TIMEOUT:
        return _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline expired before operation.")
    return None


class _Relay:
    """A TCP relay in front of the gRPC server.

    gRPC gives a handler no way to close its client's connection, yet
    DROP_CONNECTION must look like a network failure; the relay can cut the
    connection a call arrived on (found by the peer address the gRPC server
    sees, which is the relay's own outgoing socket).
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._target_port = 0
        self._links: dict[int, tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int, target_port: int) -> int:
        self._target_port = target_port
        self._server = await asyncio.start_server(self._relay, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            inner_reader, inner_writer = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
        except OSError:
            writer.transport.abort()
            return
        key = int(inner_writer.get_extra_info("sockname")[1])
        self._links[key] = (writer, inner_writer)
        try:
            await asyncio.gather(_pump(reader, inner_writer), _pump(inner_reader, writer))
        finally:
            self._links.pop(key, None)
            writer.transport.abort()
            inner_writer.transport.abort()

    def drop(self, peer: str) -> bool:
        """Cut the client connection behind gRPC peer `peer` ("ipv4:127.0.0.1:PORT")."""
        _, _, port = peer.rpartition(":")
        link = self._links.pop(int(port), None) if port.isdigit() else None
        if link is None:
            return False
        for writer in link:
            writer.transport.abort()
        return True

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for key in list(self._links):
            for writer in self._links.pop(key):
                writer.transport.abort()
        await server.wait_closed()
        # Cut off, the relays end within a few loop turns; none may outlive
        # the sandbox (cancelling one would make asyncio log an error).
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in stuck:
                task.cancel()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


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
        self._requested_port = port
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._relay_server = _Relay()

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
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

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
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Predict": handler}),)
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
        stats = self.faults.stats
        stats.received += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        outcome = "cancelled"
        try:
            try:
                response = await self._answer(request, context)
            except SandboxClosing:
                raise _RpcError(
                    grpc.StatusCode.UNAVAILABLE, "The sandbox is shutting down."
                ) from None
            except _Dropped:
                outcome = "dropped"
                # Wait for gRPC to notice the dead connection and cancel us.
                await asyncio.sleep(self.faults.hang_s)
                raise
            outcome = "completed"
            return response
        except _RpcError as error:
            outcome = "completed"
            await context.abort(
                error.code,
                error.message,
                trailing_metadata=(("grpc-status-details-bin", _status_bytes(error)),),
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
                raise _invalid("parameters must be a struct.")
            parameters = raw
        instances = [json_format.MessageToDict(value) for value in request.instances]
        metadata.pop("authorization", None)  # a credential, however fake
        self.received.append(
            Received(model.model_id, request.endpoint, instances, parameters, metadata)
        )
        job = _validate(model, instances, parameters)

        fault = await Exchange(self.faults).begin(job.prompt)
        if fault.mode is FaultMode.DROP_CONNECTION:
            self._relay_server.drop(context.peer())
            raise _Dropped
        error = _fault_error(fault, job)
        if error is not None:
            raise error
        response = prediction_service.PredictResponse.pb()()
        for prediction in await _predictions(job, fault):
            response.predictions.append(json_format.ParseDict(prediction, struct_pb2.Value()))
        return response

    def _check_auth(self, authorization: str | None) -> None:
        if authorization is None:
            if self.require_auth:
                raise _RpcError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"Request is missing required authentication credential. {_AUTH_HELP}",
                    _error_info("CREDENTIALS_MISSING", "googleapis.com"),
                )
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _RpcError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"Request had invalid authentication credentials. {_AUTH_HELP}",
                _error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", "googleapis.com"),
            )

    def _route(self, endpoint: str) -> ImagenModel:
        match = _ENDPOINT.match(endpoint)
        if match is None:
            raise _invalid(f"Invalid resource field value in the request: endpoint {endpoint!r}.")
        project, _, model_id = match.groups()
        if project != self.project:
            resource = f"//aiplatform.googleapis.com/{endpoint}"
            raise _RpcError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'aiplatform.endpoints.predict' denied on resource '{resource}' "
                "(or it may not exist).",
                _error_info(
                    "IAM_PERMISSION_DENIED",
                    "aiplatform.googleapis.com",
                    permission="aiplatform.endpoints.predict",
                    resource=endpoint,
                ),
            )
        model = MODELS.get(model_id)
        if model is None:
            raise _RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"Publisher Model `{endpoint}` not found.",
            )
        return model


class _Dropped(Exception):
    """The call's connection was cut on purpose."""


def _status_bytes(error: _RpcError) -> bytes:
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in error.details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return bytes(status.SerializeToString())
