"""Google Vertex AI: Imagen 4 (generate, fast, ultra) through PredictionService.

    google.cloud.aiplatform.v1.PredictionService/Predict  (gRPC, aiplatform_v1 async client)
    endpoint   = projects/{project}/locations/{location}/publishers/google/models/{upstream_id}
    instances  = [{"prompt": ...}]
    parameters = {"sampleCount", "aspectRatio", "sampleImageSize", "includeRaiReason": true,
                  "outputOptions": {"mimeType": "image/png"},
                  ["seed", "addWatermark": false], ["enhancePrompt"]}

- `request`: sizes → aspect ratio and 1K/2K tier, and the parameters.
- `response`: predictions → images (RAI-filtered ones counted).
- `errors`: the one mapping of upstream errors to domain errors.
- `backend`: the client, built once, and the retried call.

This module is the backend's plugin (settings, catalogue options, factory);
it imports no Google library, so an unconfigured Vertex costs nothing.

Up to four images per call. In production the client uses the default TLS
channel to `{location}-aiplatform.googleapis.com` with a service-account
file or Application Default Credentials; an `http://host:port` endpoint
means plaintext and no credentials, which only the sandbox emulator
accepts. Each attempt passes `timeout=` (the deadline's share) and
`retry=None`, so the shared `RetryPolicy` is the only retry loop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.providers._shared.plugin import BackendPlugin, BackendSettings, backend_settings_config

Tier = Literal["1K", "2K"]
TIERS: tuple[Tier, ...] = ("1K", "2K")


class VertexImagenSettings(BackendSettings):
    """`IMAGE_SERVICE_VERTEX_*`."""

    model_config = backend_settings_config("IMAGE_SERVICE_VERTEX_")

    # The Google Cloud project that calls (and pays for) Imagen; setting it
    # enables the backend.
    project: str = ""
    location: str = "us-central1"
    # A service-account JSON key file; empty: Application Default Credentials
    # (GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, the GKE/GCE identity).
    credentials_file: str = ""
    # host[:port] replacing {location}-aiplatform.googleapis.com (a private
    # endpoint). http://host:port is plaintext without credentials: only the
    # sandbox emulator accepts that.
    api_endpoint: str = ""
    # Per attempt; Imagen answers in seconds, Ultra at 2K in tens of seconds.
    timeout_s: float = Field(default=120.0, gt=0)


class VertexImagenOptions(BaseModel):
    """An Imagen catalogue row's `options`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The tiers the model renders, e.g. "1K" (Fast) or "1K,2K".
    sample_image_sizes: tuple[Tier, ...] = TIERS
    # Sent as `enhancePrompt` when set; else the upstream's default applies.
    enhance_prompt: bool | None = None

    @field_validator("sample_image_sizes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(tier.strip().upper() for tier in value.split(","))
        return value


PLUGIN = BackendPlugin(
    key="vertex_imagen",
    settings=VertexImagenSettings,
    required=("project",),
    backend="server.providers.vertex_imagen.backend:VertexImagenBackend",
    options=VertexImagenOptions,
)
