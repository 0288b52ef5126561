"""Azure AI Foundry, Black Forest Labs route: FLUX.1 Kontext [pro] and FLUX.2 [pro].

This module is the backend's plugin (settings, catalogue options, factory);
`request`, `response`, `errors` and `backend` hold the rest.

    POST {endpoint}/providers/blackforestlabs/v1/{upstream_id}?api-version={version}
    Authorization: Bearer <key>

The catalogue drives the mapping: `upstream_id` is the route's path segment,
`options.upstream_model` the body's `model`, and `options.size_mode` how a
size is expressed:

- `aspect_ratio` (Kontext): the upstream takes no width/height and renders
  about one megapixel, so the requested size becomes the nearest ratio in
  `ASPECT_RATIOS` (21:9 … 9:21) by log-distance: 1024x1024 → 1:1,
  1792x1024 → 16:9, 1024x1792 → 9:16. Only the ratio survives; the produced
  size (1376x768 for 16:9 from the emulator) is measured from the bytes.
- `pixels` (FLUX.2): width/height scaled down to fit 1440 a side (up to 256
  if smaller), keeping the ratio, in multiples of 16: 1792x1024 → 1440x816.

An edit with no size sends none, so the upstream keeps the input's shape.
A 2xx may carry the image as base64 (`data[].b64_json`), name it by URL
(`data[].url`: fetched) or name a task to poll (`polling_url`: polled until
Ready, then its `result.sample` fetched); see `response` and `backend`.
Only a failed submission is ever submitted again.

One image per call. Safety refusals (a 400 naming the content filter, or a
200 whose item has `finish_reason: content_filter`) are `ContentRejected`
and never retried.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from server.providers._shared.plugin import (
    BackendPlugin,
    BackendSettings,
    backend_settings_config,
)


class AzureFluxSettings(BackendSettings):
    """`IMAGE_SERVICE_AZURE_FLUX_*`."""

    model_config = backend_settings_config("IMAGE_SERVICE_AZURE_FLUX_")

    # Resource endpoint, e.g. https://myres.services.ai.azure.com
    endpoint: str = ""
    api_key: SecretStr | None = None
    api_version: str = "preview"
    # FLUX.2 pro takes 30-120 s per image.
    timeout_s: float = 180.0
    # Waits between polls when the upstream answers with a polling link.
    poll_initial_s: float = 0.5
    poll_max_s: float = 5.0


class AzureFluxOptions(BaseModel):
    """A FLUX catalogue row's `options`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The body's `model` when it differs from the route's path segment.
    upstream_model: str | None = None
    # How a size is sent: an aspect ratio (Kontext) or width/height (FLUX.2).
    size_mode: Literal["aspect_ratio", "pixels"] = "pixels"
    safety_tolerance: int | None = None


PLUGIN = BackendPlugin(
    key="azure_flux",
    settings=AzureFluxSettings,
    required=("endpoint", "api_key"),
    backend="server.providers.azure_flux.backend:AzureFluxBackend",
    options=AzureFluxOptions,
)
