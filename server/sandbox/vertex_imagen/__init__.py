"""Emulator of Vertex AI's PredictionService for the Imagen 4 publisher models.

    gRPC  google.cloud.aiplatform.v1.PredictionService/Predict
    endpoint = projects/{project}/locations/{location}/publishers/google/models/{model}

It is the gRPC API itself, on a port of its own (gRPC cannot share the
sandbox's HTTP server), so the real `aiplatform_v1` async client is what
talks to it: the backend reaches it with `api_endpoint=http://host:port`,
over a plaintext channel without credentials. Messages are the aiplatform
package's own protobuf classes; nothing is vendored.

Modules:

- `validation`: the models and the checks of a Predict call → the job.
- `predictions`: rendered predictions, filtered ones, and each fault's status.
- `errors`: gRPC status answers and their `google.rpc.Status` trailer.
- `relay`: the TCP relay that lets DROP_CONNECTION cut a call's connection.
- `emulator`: `VertexImagenEmulator`, its listener, auth, routing and handler.

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

from server.sandbox.vertex_imagen.emulator import (
    SANDBOX_VERTEX_LOCATION,
    SANDBOX_VERTEX_PROJECT,
    SERVICE,
    Received,
    VertexImagenEmulator,
)
from server.sandbox.vertex_imagen.predictions import (
    BLOCKED_PROMPT_MESSAGE,
    CONTENT_FILTER_ALL,
    CONTENT_FILTER_PARTIAL,
    CONTENT_FILTER_PROMPT,
    CONTENT_FILTER_SILENT,
    RAI_FILTERED_REASON,
    SERVER_ERROR_UNAVAILABLE,
)
from server.sandbox.vertex_imagen.validation import (
    ASPECT_RATIOS,
    MAX_SAMPLE_COUNT,
    MODELS,
    PIXELS,
    ImagenModel,
)

__all__ = [
    "ASPECT_RATIOS",
    "BLOCKED_PROMPT_MESSAGE",
    "CONTENT_FILTER_ALL",
    "CONTENT_FILTER_PARTIAL",
    "CONTENT_FILTER_PROMPT",
    "CONTENT_FILTER_SILENT",
    "MAX_SAMPLE_COUNT",
    "MODELS",
    "PIXELS",
    "RAI_FILTERED_REASON",
    "SANDBOX_VERTEX_LOCATION",
    "SANDBOX_VERTEX_PROJECT",
    "SERVER_ERROR_UNAVAILABLE",
    "SERVICE",
    "ImagenModel",
    "Received",
    "VertexImagenEmulator",
]
