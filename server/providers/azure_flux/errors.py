"""Azure FLUX's upstream descriptor and its safety refusals."""

from __future__ import annotations

import httpx

from server.domain.errors import ContentRejected, ImageServiceError
from server.providers._shared.azure_images import is_filter_refusal
from server.providers._shared.http import upstream_error_body
from server.providers._shared.upstream import Upstream
from server.providers.azure_flux import PLUGIN

UPSTREAM = Upstream(
    key=PLUGIN.key,
    name="Azure FLUX",
    credential_setting=PLUGIN.env_var("api_key"),
    endpoint_setting=PLUGIN.env_var("endpoint"),
)

_FILTER_WORDS = ("content filter", "safety system", "moderat")


def classify_content_filter(response: httpx.Response) -> ImageServiceError | None:
    """`ContentRejected` for an error response that names the content filter."""
    if is_filter_refusal(response.status_code, upstream_error_body(response), _FILTER_WORDS):
        return content_rejected()
    return None


def content_rejected(categories: list[str] | None = None) -> ContentRejected:
    metadata = {"upstream": UPSTREAM.key}
    if categories:
        metadata["categories"] = ",".join(sorted(categories))
    return ContentRejected(
        "Azure FLUX's safety system refused the prompt or image; rephrase and try again.",
        metadata=metadata,
    )
