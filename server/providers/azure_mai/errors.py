"""Azure MAI's upstream descriptor and the errors it answers specially."""

from __future__ import annotations

from typing import Any

import httpx

from server.domain.errors import BackendNotConfigured, ContentRejected, ImageServiceError
from server.providers._shared.azure_images import filtered_categories, is_filter_refusal
from server.providers._shared.http import upstream_error_body
from server.providers._shared.upstream import Upstream
from server.providers.azure_mai import PLUGIN

UPSTREAM = Upstream(
    key=PLUGIN.key,
    name="Azure MAI",
    credential_setting=PLUGIN.env_var("api_key"),
    endpoint_setting=PLUGIN.env_var("endpoint"),
)
DEPLOYMENT_SETTING = PLUGIN.env_var("deployment")

_FILTER_WORDS = ("content filter", "content management policy", "safety system", "moderat")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def content_rejected(categories: list[str] | None = None) -> ContentRejected:
    metadata = {"upstream": UPSTREAM.key}
    if categories:
        metadata["categories"] = ",".join(sorted(set(categories)))
    return ContentRejected(
        "Azure MAI's safety system refused the prompt or the image; rephrase and try again.",
        metadata=metadata,
    )


def classify(response: httpx.Response) -> ImageServiceError | None:
    """MAI's special errors, before the generic status mapping.

    A content-filter error body → `ContentRejected`; a 404 naming the
    deployment → `BackendNotConfigured` pointing at the deployment setting
    (a 404 for the route itself falls through to the endpoint setting).
    """
    status = response.status_code
    error = upstream_error_body(response)
    if status == 404 and error.code.lower() == "deploymentnotfound":
        return BackendNotConfigured(
            f"Azure MAI has no such deployment; check {DEPLOYMENT_SETTING}.",
            metadata={
                "upstream": UPSTREAM.key,
                "upstream_status": "404",
                "setting": DEPLOYMENT_SETTING,
            },
        )
    if not is_filter_refusal(status, error, _FILTER_WORDS):
        return None
    payload = _json(response)
    inner = payload.get("error", {}).get("innererror") if isinstance(payload, dict) else None
    results = inner.get("content_filter_result") if isinstance(inner, dict) else None
    return content_rejected(filtered_categories(results))
