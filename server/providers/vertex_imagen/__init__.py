"""Google Vertex AI: Imagen 4 (generate, fast, ultra) through PredictionService.

    google.cloud.aiplatform.v1.PredictionService/Predict  (gRPC, aiplatform_v1 async client)
    endpoint   = projects/{project}/locations/{location}/publishers/google/models/{upstream_id}
    instances  = [{"prompt": ...}]
    parameters = {"sampleCount", "aspectRatio", "sampleImageSize", "includeRaiReason": true,
                  "outputOptions": {"mimeType": "image/png"},
                  ["seed", "addWatermark": false], ["enhancePrompt"]}

- `request`: sizes → aspect ratio and 1K/2K tier, and the parameters.
- `response`: predictions → images (RAI-filtered ones counted), and the one
  mapping of upstream errors to domain errors.
- `backend`: the client, built once, and the retried call.

Up to four images per call. In production the client uses the default TLS
channel to `{location}-aiplatform.googleapis.com` with a service-account
file or Application Default Credentials; an `http://host:port` endpoint
means plaintext and no credentials, which only the sandbox emulator
accepts. Each attempt passes `timeout=` (the deadline's share) and
`retry=None`, so the shared `RetryPolicy` is the only retry loop.
"""

from server.providers.vertex_imagen.backend import VertexImagenBackend, load_credentials
from server.providers.vertex_imagen.request import PIXELS, output_for, request_parameters
from server.providers.vertex_imagen.response import (
    UPSTREAM,
    error_for_exception,
    parse_response,
)

__all__ = [
    "PIXELS",
    "UPSTREAM",
    "VertexImagenBackend",
    "error_for_exception",
    "load_credentials",
    "output_for",
    "parse_response",
    "request_parameters",
]
