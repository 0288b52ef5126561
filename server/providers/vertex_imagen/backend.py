"""`VertexImagenBackend`: one Google Cloud project's Vertex image models.

Settings and credentials are checked when the backend is built, at start-up,
so a bad key file still stops the pod with a message naming the setting. The
PredictionService client (`client.VertexClient`) is built on the first call:
importing google-cloud-aiplatform costs about a second of CPU, which would
otherwise be in every pod's start-up. The first call imports it off the event
loop, so the server keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import TYPE_CHECKING

import google.auth
import grpc
from google.auth import credentials as auth_credentials
from google.auth import exceptions as auth_exceptions
from google.oauth2 import service_account

from server.domain.deadline import Deadline
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers.vertex_imagen.errors import LOCATION_SETTING, PROJECT_SETTING, UPSTREAM
from server.providers.vertex_imagen.request import model_path

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import PredictionServiceAsyncClient

    from server.providers.vertex_imagen.client import VertexClient

_CLIENT_MODULE = "server.providers.vertex_imagen.client"

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def load_credentials(credentials_file: str = "") -> auth_credentials.Credentials:
    """A service account's key from `credentials_file`, else Application
    Default Credentials; ValueError naming the settings when neither works."""
    try:
        if credentials_file:
            loaded: auth_credentials.Credentials = (
                service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    credentials_file, scopes=SCOPES
                )
            )
            return loaded
        found, _ = google.auth.default(scopes=SCOPES)
        return found
    except (auth_exceptions.GoogleAuthError, OSError, ValueError) as error:
        raise ValueError(
            f"{UPSTREAM.name} has no usable credentials ({type(error).__name__}): set "
            f"{UPSTREAM.credential_setting} to a service-account key file or configure "
            "Application Default Credentials."
        ) from error


class VertexImagenBackend:
    """`ImageBackend` for the Vertex image models of one Google Cloud project."""

    def __init__(
        self,
        *,
        project: str,
        location: str = "us-central1",
        api_endpoint: str = "",
        credentials: auth_credentials.Credentials | None = None,
        credentials_file: str = "",
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """`api_endpoint` is host[:port] (default `{location}-aiplatform.googleapis.com`),
        or `http://host:port` for plaintext without credentials (the emulator).
        `channel`, if given, is used as is and not closed by `aclose`;
        otherwise credentials are `credentials`, else loaded from
        `credentials_file`, else Application Default Credentials."""
        if not project or not location:
            raise ValueError(f"{PROJECT_SETTING} and {LOCATION_SETTING} must be set")
        self._project = project
        self._location = location
        endpoint = api_endpoint or (
            "aiplatform.googleapis.com"
            if location == "global"
            else f"{location}-aiplatform.googleapis.com"
        )
        plaintext = endpoint.startswith("http://")
        if channel is None and not plaintext:
            credentials = credentials or load_credentials(credentials_file)
        self._endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        self._plaintext = plaintext
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._channel = channel
        self._vertex: VertexClient | None = None

    def _ready(self) -> VertexClient:
        """The client, built on first use (in the event loop's thread, as
        grpc.aio channels must be)."""
        if self._vertex is None:
            from server.providers.vertex_imagen.client import VertexClient

            self._vertex = VertexClient(
                project=self._project,
                location=self._location,
                endpoint=self._endpoint,
                plaintext=self._plaintext,
                credentials=self._credentials,
                timeout_s=self._timeout_s,
                retry=self._retry,
                channel=self._channel,
            )
        return self._vertex

    @property
    def client(self) -> PredictionServiceAsyncClient:
        """The one prediction client (for inspection; builds it if no call has)."""
        return self._ready().client

    def model_path(self, upstream_id: str) -> str:
        return model_path(self._project, self._location, upstream_id)

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One generation of `call.count` images, retried within `deadline`."""
        if self._vertex is None and _CLIENT_MODULE not in sys.modules:
            # Concurrent first calls share the one import (Python's import lock).
            await asyncio.to_thread(importlib.import_module, _CLIENT_MODULE)
        return await self._ready().run(call, deadline)

    async def aclose(self) -> None:
        if self._vertex is not None:
            await self._vertex.aclose()
