"""Amazon Bedrock Runtime: the Stability AI models, through boto3's `invoke_model`.

    POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/invoke   (SigV4)
    {"prompt": ..., "aspect_ratio": "16:9", "seed": 7, "output_format": "png"}
    → {"seeds": [7], "finish_reasons": [null], "images": ["<base64 PNG>"]}

- `request`: the request body for each operation.
- `response`: a 200 body → images, or the content filter's refusal.
- `errors`: the one mapping of botocore's exceptions to domain errors.
- `client`: the boto3 client and the thread pool its calls run on.
- `backend`: the retried, deadline-bound call.

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

from server.providers.bedrock_stability.backend import BedrockStabilityBackend
from server.providers.bedrock_stability.errors import (
    CREDENTIALS_HINT,
    REGION_SETTING,
    UPSTREAM,
    error_for_botocore_error,
    error_for_client_error,
)
from server.providers.bedrock_stability.request import (
    ASPECT_RATIOS,
    DEFAULT_GROW_MASK,
    MAX_SEED,
    aspect_ratio_for,
    request_body,
    upstream_seed,
)
from server.providers.bedrock_stability.response import parse_response

__all__ = [
    "ASPECT_RATIOS",
    "CREDENTIALS_HINT",
    "DEFAULT_GROW_MASK",
    "MAX_SEED",
    "REGION_SETTING",
    "UPSTREAM",
    "BedrockStabilityBackend",
    "aspect_ratio_for",
    "error_for_botocore_error",
    "error_for_client_error",
    "parse_response",
    "request_body",
    "upstream_seed",
]
