"""`VertexClient`: the PredictionService client and the call loop, the half
of the Vertex backend that needs google-cloud-aiplatform.

Importing `google.cloud.aiplatform_v1` costs about a second of CPU (its
package imports every service it has), so `backend.VertexImagenBackend`
imports this module on its first call, off the event loop, and a configured
Vertex backend adds nothing to the server's start-up.
"""

from __future__ import annotations

import asyncio

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth_exceptions
from google.cloud.aiplatform_v1 import PredictionServiceAsyncClient
from google.cloud.aiplatform_v1.services.prediction_service.transports.grpc_asyncio import (
    PredictionServiceGrpcAsyncIOTransport,
)
from google.cloud.aiplatform_v1.types import prediction_service
from google.protobuf import json_format, struct_pb2

from server.domain.deadline import Deadline
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers._shared.owned import Owned
from server.providers._shared.upstream import attempt_within
from server.providers.vertex_imagen.errors import UPSTREAM, error_for_exception
from server.providers.vertex_imagen.gemini import generate_content_request, parse_generate_content
from server.providers.vertex_imagen.request import model_path, request_parameters
from server.providers.vertex_imagen.response import parse_response


class VertexClient:
    """One project's PredictionService client: Imagen's Predict and Gemini's
    GenerateContent, each retried within the caller's deadline."""

    def __init__(
        self,
        *,
        project: str,
        location: str,
        endpoint: str,
        plaintext: bool,
        credentials: auth_credentials.Credentials | None,
        timeout_s: float,
        retry: RetryPolicy,
        channel: grpc.aio.Channel | None,
    ) -> None:
        """`endpoint` is host[:port]; `plaintext` means no TLS and no
        credentials (the emulator). `channel`, if given, is used as is and not
        closed by `aclose`; otherwise `credentials` sign the TLS channel."""
        owns_channel = channel is None
        self._project = project
        self._location = location
        self._timeout_s = timeout_s
        self._retry = retry
        if channel is None and plaintext:
            channel = grpc.aio.insecure_channel(
                endpoint,
                # As the library's own channel: four 2K PNGs exceed gRPC's 4 MB default.
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
        if channel is not None:
            transport = PredictionServiceGrpcAsyncIOTransport(host=endpoint, channel=channel)
            client = PredictionServiceAsyncClient(transport=transport)
        else:
            client = PredictionServiceAsyncClient(
                credentials=credentials, client_options=ClientOptions(api_endpoint=endpoint)
            )
        # A channel handed in (`channel` given) is its owner's to close; one
        # made here, for the sandbox or the real endpoint, is ours.
        self._client = Owned(client, client.transport.close if owns_channel else None)

    @property
    def client(self) -> PredictionServiceAsyncClient:
        return self._client.resource

    def model_path(self, upstream_id: str) -> str:
        return model_path(self._project, self._location, upstream_id)

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One generation of `call.count` images, retried within `deadline`."""
        if call.model.options.get("api") == "generate_content":
            return await self._generate_content(call, deadline)
        upstream_id = call.model.upstream_id
        # Built as the raw protobuf: proto-plus would turn the Values into
        # Python objects and back.
        raw = prediction_service.PredictRequest.pb()(
            endpoint=self.model_path(upstream_id),
            instances=[json_format.ParseDict({"prompt": call.prompt}, struct_pb2.Value())],
            parameters=json_format.ParseDict(request_parameters(call), struct_pb2.Value()),
        )
        request = prediction_service.PredictRequest.wrap(raw)

        async def attempt(budget: float) -> UpstreamResult:
            try:
                response = await self.client.predict(request=request, retry=None, timeout=budget)
            except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
                raise error_for_exception(error, upstream_id) from error
            # Decoding up to four multi-megabyte images is kept off the loop.
            return await asyncio.to_thread(parse_response, response, call.count)

        return await self._retry.run(
            lambda: attempt_within(deadline, self._timeout_s, UPSTREAM, attempt), deadline
        )

    async def _generate_content(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One Gemini image (GenerateContent), retried within `deadline`."""
        upstream_id = call.model.upstream_id
        request = prediction_service.GenerateContentRequest.wrap(
            generate_content_request(call, self.model_path(upstream_id))
        )

        async def attempt(budget: float) -> UpstreamResult:
            try:
                response = await self.client.generate_content(
                    request=request, retry=None, timeout=budget
                )
            except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as error:
                raise error_for_exception(error, upstream_id) from error
            return parse_generate_content(prediction_service.GenerateContentResponse.pb(response))

        return await self._retry.run(
            lambda: attempt_within(deadline, self._timeout_s, UPSTREAM, attempt), deadline
        )

    async def aclose(self) -> None:
        await self._client.aclose()
