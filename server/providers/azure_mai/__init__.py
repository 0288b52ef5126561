"""Azure AI Foundry, MAI route: MAI-Image-2 (Microsoft).

This module is the backend's plugin (settings, factory); `request`,
`response`, `errors` and `backend` hold the rest.

    POST {endpoint}/mai/v1/images/generations
    api-key: <key>
    {"model": <deployment>, "prompt": "...", "width": W, "height": H}
    -> {"data": [{"b64_json": "<PNG>"}], "usage": {...}}

Exactly one PNG per call and no count, seed or format field: `n` fans out
in the orchestrator (`images_per_call = 1`) and a seed is not sent.

Sizes: the upstream takes explicit pixels with each side at least 768 and at
most 1,048,576 pixels in total, so `produced_size` keeps a size that fits and
otherwise scales it down (or up, to 768 a side) keeping its proportions, in
multiples of 16: 1024x1024 stays, 1792x1024 → 1344x768, 1024x1792 →
768x1344. Shapes beyond 16:9 cannot satisfy both limits and are refused as
`InvalidArgument` on `size`. The catalogue no longer offers 2048x2048 (the
seed's size), so validation refuses it before it gets here: producing
1024x1024 instead would silently ignore what the caller asked for.

The `model` field is the deployment name: the `deployment` setting when set,
else the catalogue's `upstream_id`. Safety refusals (an Azure content-filter
error body; MAI's exact shape is undocumented) are `ContentRejected` and
never retried; a 404 naming the deployment points at the deployment setting.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from server.providers._shared.plugin import (
    BackendPlugin,
    BackendSettings,
    NoOptions,
    backend_settings_config,
)


class AzureMaiSettings(BackendSettings):
    """`IMAGE_SERVICE_AZURE_MAI_*`."""

    model_config = backend_settings_config("IMAGE_SERVICE_AZURE_MAI_")

    # Resource endpoint, e.g. https://myres.services.ai.azure.com
    endpoint: str = ""
    api_key: SecretStr | None = None
    # The deployment name sent as `model`; empty uses the catalogue's
    # upstream_id (MAI-Image-2, the portal's default deployment name).
    deployment: str = ""
    # Sent as ?api-version= when set; the documented route takes none.
    api_version: str = ""
    timeout_s: float = Field(default=120.0, gt=0)


PLUGIN = BackendPlugin(
    key="azure_mai",
    settings=AzureMaiSettings,
    required=("endpoint", "api_key"),
    backend="server.providers.azure_mai.backend:AzureMaiBackend",
    options=NoOptions,
)
