"""Google Vertex AI image models through PredictionService: Imagen 4
(generate, fast, ultra) with `Predict`, and the Gemini image models
(gemini-3.1-flash-image, gemini-3-pro-image) with `GenerateContent`
(`gemini.py`; a catalogue row's `options.api` chooses). Both share one
client, one project's settings and one emulator, as on Vertex.

Imagen:

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
GeminiTier = Literal["1K", "2K", "4K"]


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
    # Which Vertex method serves the row: Imagen's Predict or Gemini's
    # GenerateContent.
    api: Literal["predict", "generate_content"] = "predict"
    # Gemini: the `imageSize` tiers the model renders, and the thinking
    # level sent (Google maps Imagen 4 Fast to MINIMAL and Imagen 4 to HIGH).
    image_sizes: tuple[GeminiTier, ...] = ("1K", "2K", "4K")
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None

    @field_validator("sample_image_sizes", "image_sizes", mode="before")
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
