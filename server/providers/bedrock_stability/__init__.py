"""Amazon Bedrock Runtime: the Stability AI models, through boto3's `invoke_model`.

    POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/invoke   (SigV4)
    {"prompt": ..., "aspect_ratio": "16:9", "seed": 7, "output_format": "png"}
    → {"seeds": [7], "finish_reasons": [null], "images": ["<base64 PNG>"]}

- `request`: the request body for each operation.
- `response`: a 200 body → images, or the content filter's refusal.
- `errors`: the one mapping of botocore's exceptions to domain errors.
- `client`: the boto3 client and the thread pool its calls run on.
- `backend`: the retried, deadline-bound call.

This module is the backend's plugin (settings, factory); it imports no boto3.

The catalogue's `upstream_id` is the `modelId`; the request body follows the
operation:

- generate (SD3.5 Large, Stable Image Core, Stable Image Ultra): `prompt`,
  `aspect_ratio`, `seed`, `output_format`, and for SD3.5 `mode:
  "text-to-image"`. The upstream takes no pixel sizes, only a ratio enum, so
  the requested size becomes the nearest of `ASPECT_RATIOS` (1024x1024 →
  1:1, 1792x1024 → 16:9, 1024x1792 → 9:16) and the upstream renders about
  one megapixel at it (16:9 → 1344x768); the domain measures what came back.
- remove_background: `image`, `output_format` (PNG, to keep the alpha).
- inpaint: `image`, `mask` (the domain's grayscale PNG, white = repaint),
  `prompt`, `grow_mask`, `seed`, `output_format`.
- upscale: the Image Services tool the model id names. Fast upscale takes
  `image` only (4x); conservative upscale also needs `prompt`, so an
  upscale without one is refused here rather than by the upstream.

Images go both ways as base64 strings in JSON. One image per call: there is
no count field, so `n` fans out in the orchestrator.

A non-null `finish_reasons` entry starting "Filter reason:" (prompt, input
image, output image) comes with HTTP 200 and is `ContentRejected`, never
retried; "Inference error" is `UpstreamUnavailable` (retried). botocore's
`ClientError` is mapped by `Error.Code` in `error_for_client_error`.

boto3 is synchronous: each call runs on the backend's own thread pool, as
large as botocore's connection pool, so a burst queues for a thread instead
of piling onto the event loop or overrunning the pool. botocore's retries are
off (one `RetryPolicy` governs every backend). What botocore does not allow,
and what that costs, is in `BedrockStabilityBackend`'s docstring.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from server.providers._shared.plugin import (
    BackendPlugin,
    BackendSettings,
    NoOptions,
    backend_settings_config,
)


class BedrockStabilitySettings(BackendSettings):
    """`IMAGE_SERVICE_BEDROCK_*`."""

    model_config = backend_settings_config("IMAGE_SERVICE_BEDROCK_")

    # Region of the models, e.g. us-west-2; setting it enables the backend.
    # Credentials are not settings: boto3's standard chain finds them
    # (AWS_* variables, AWS_PROFILE and shared config, IRSA, instance role).
    region: str = ""
    # Replaces https://bedrock-runtime.<region>.amazonaws.com (the sandbox, or
    # a VPC endpoint).
    endpoint_url: str = ""
    # Static keys for the sandbox and tests only; when both are unset (as in
    # production) the standard chain is used. Set both or neither.
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # Per attempt; also botocore's read timeout (per socket read).
    timeout_s: float = Field(default=120.0, gt=0)
    # Connections to Bedrock, and the threads running boto3 calls.
    max_connections: int = Field(default=16, ge=1, le=256)


PLUGIN = BackendPlugin(
    key="bedrock_stability",
    settings=BedrockStabilitySettings,
    required=("region",),
    backend="server.providers.bedrock_stability.backend:BedrockStabilityBackend",
    options=NoOptions,
)
