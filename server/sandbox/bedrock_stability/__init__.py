"""Emulator of Amazon Bedrock Runtime's `InvokeModel` for the Stability AI models.

    POST /model/{modelId}/invoke
    Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/bedrock/aws4_request,
                   SignedHeaders=..., Signature=...
    Content-Type: application/json

This is the HTTP API boto3's `bedrock-runtime` client speaks (restJson1), so
the real client is what gets tested, pointed here with `endpoint_url`.
boto3 percent-encodes the model id in the path (`:` → `%3A`, `/` of an ARN
→ `%2F`); the id is read from the raw path so both survive.

Modules:

- `models`: the model ids and what each accepts.
- `sigv4`: the SigV4 signature check.
- `validation`: bodies checked per model → the job to render.
- `rendering`: a job → the 200 body with its image.
- `errors`: Bedrock's error responses and each fault's answer.
- `emulator`: `BedrockStabilityEmulator`, the route from auth to the answer.

Auth: a request without a SigV4 `Authorization` header is refused (403
`MissingAuthenticationTokenException`), and so is one whose credential is
not the sandbox's key id (`UnrecognizedClientException`), not scoped to
`bedrock` in the sandbox's region, or whose signature does not verify
against the sandbox's secret (`InvalidSignatureException`). Bedrock API
keys (bearer tokens) are not emulated.

Errors come back as boto3 parses them for this protocol: the status, an
`x-amzn-ErrorType: <Code>:<namespace>` header and a `{"message": ...}` body,
so `ClientError.response["Error"]["Code"]` is the real code.

Bodies are validated per model like Bedrock's JSON schema does, a little
more strictly where the upstream is undocumented (extraneous keys are
refused, as Bedrock does for most models): prompt 1..10,000 characters,
`aspect_ratio` from the enum, `seed` 0..4294967294, `output_format`
jpeg/png/webp (png/webp for background removal), SD3.5's `mode`, and images
as raw base64 with each tool's pixel limits; an inpaint mask must have the
image's size. Invalid bodies are 400 `ValidationException` "Malformed input
request: ..." and do not consume the fault plan.

Produced sizes: text-to-image renders about one megapixel at the ratio
(`OUTPUT_SIZES`: 1:1 → 1024x1024, 16:9 → 1344x768, 9:16 → 768x1344);
background removal and inpaint keep the input's size (background removal
returns RGBA with the border made transparent); fast upscale is 4x;
conservative upscale is 4x but at most 4096 on the long side. A success is
`{"seeds": [...], "finish_reasons": [null], "images": ["<base64>"]}`.

Faults (`faults.FaultPlan`), with variants for Bedrock's several codes:

    BAD_REQUEST      400 ValidationException; "access_denied" 403
                     AccessDeniedException; "not_found" 404
                     ResourceNotFoundException; "quota" 400
                     ServiceQuotaExceededException
    CONTENT_FILTER   200 with finish_reasons ["Filter reason: prompt"] and no
                     image; variant "input" / "output" names the input or
                     output image instead
    RATE_LIMIT       429 ThrottlingException (Retry-After if the fault has
                     one; Bedrock documents none); "model_not_ready" 429
                     ModelNotReadyException
    SERVER_ERROR     500 InternalServerException; "unavailable" 503
                     ServiceUnavailableException; "model_error" 424
                     ModelErrorException; "inference_error" 200 with
                     finish_reasons ["Inference error"];
                     "model_timeout" 408 ModelTimeoutException
    TIMEOUT          hangs (`FaultPlan.hang_s`), then 408 ModelTimeoutException
    DROP_CONNECTION  a truncated 200 body
"""

from server.sandbox.bedrock_stability.emulator import (
    ROUTE,
    SANDBOX_BEDROCK_ACCESS_KEY_ID,
    SANDBOX_BEDROCK_REGION,
    SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
    BedrockStabilityEmulator,
    Received,
)
from server.sandbox.bedrock_stability.errors import (
    ACCESS_DENIED,
    CONTENT_FILTER_INPUT,
    CONTENT_FILTER_OUTPUT,
    ERROR_NAMESPACE,
    INFERENCE_ERROR,
    MODEL_ERROR,
    MODEL_NOT_READY,
    MODEL_TIMEOUT,
    NOT_FOUND,
    QUOTA,
    UNAVAILABLE,
)
from server.sandbox.bedrock_stability.models import (
    MODELS,
    ImageLimits,
    Kind,
    StabilityModel,
    base_model_id,
)
from server.sandbox.bedrock_stability.rendering import render
from server.sandbox.bedrock_stability.sigv4 import verify_sigv4
from server.sandbox.bedrock_stability.validation import (
    ASPECT_RATIOS,
    CONSERVATIVE_MAX_SIDE,
    MAX_PROMPT,
    MAX_SEED,
    OUTPUT_SIZES,
    STYLE_PRESETS,
    UPSCALE_FACTOR,
    validate,
)

__all__ = [
    "ACCESS_DENIED",
    "ASPECT_RATIOS",
    "CONSERVATIVE_MAX_SIDE",
    "CONTENT_FILTER_INPUT",
    "CONTENT_FILTER_OUTPUT",
    "ERROR_NAMESPACE",
    "INFERENCE_ERROR",
    "MAX_PROMPT",
    "MAX_SEED",
    "MODELS",
    "MODEL_ERROR",
    "MODEL_NOT_READY",
    "MODEL_TIMEOUT",
    "NOT_FOUND",
    "OUTPUT_SIZES",
    "QUOTA",
    "ROUTE",
    "SANDBOX_BEDROCK_ACCESS_KEY_ID",
    "SANDBOX_BEDROCK_REGION",
    "SANDBOX_BEDROCK_SECRET_ACCESS_KEY",
    "STYLE_PRESETS",
    "UNAVAILABLE",
    "UPSCALE_FACTOR",
    "BedrockStabilityEmulator",
    "ImageLimits",
    "Kind",
    "Received",
    "StabilityModel",
    "base_model_id",
    "render",
    "validate",
    "verify_sigv4",
]
