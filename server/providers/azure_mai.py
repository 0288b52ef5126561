"""Azure AI Foundry, MAI route: MAI-Image-2 (Microsoft).

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

import math
from typing import Any

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.imaging import inspect
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import DEFAULT_SIZE, Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.azure_images import filtered_categories, is_filter_refusal, parse_images
from server.providers.base64_json import b64decode, loads_with_base64
from server.providers.http import Upstream, new_client, send_with_retry, upstream_error_body

UPSTREAM = Upstream(
    key="azure_mai",
    name="Azure MAI",
    credential_setting="IMAGE_SERVICE_AZURE_MAI_API_KEY",
    endpoint_setting="IMAGE_SERVICE_AZURE_MAI_ENDPOINT",
)
DEPLOYMENT_SETTING = "IMAGE_SERVICE_AZURE_MAI_DEPLOYMENT"
ROUTE = "/mai/v1/images/generations"

MIN_SIDE = 768
MAX_PIXELS = 1024 * 1024
PIXEL_STEP = 16
# The most elongated shape with both sides >= MIN_SIDE inside MAX_PIXELS: 16:9.
MAX_RATIO = MAX_PIXELS / MIN_SIDE**2

_FILTER_WORDS = ("content filter", "content management policy", "safety system", "moderat")


def produced_size(size: Size) -> Size:
    """The width and height MAI is asked for (and produces) for `size`.

    Raises `InvalidArgument` on `size` when its proportions cannot fit MAI's
    limits (more elongated than 16:9).
    """
    long_side, short_side = max(size.width, size.height), min(size.width, size.height)
    ratio = long_side / short_side
    if ratio > MAX_RATIO + 1e-9:
        raise InvalidArgument(
            [
                FieldViolation(
                    "size",
                    f"{size} is more elongated than MAI-Image-2 can produce: it needs each "
                    f"side at least {MIN_SIDE} pixels and at most {MAX_PIXELS:,} pixels in all",
                )
            ]
        )
    if size.pixels <= MAX_PIXELS and short_side >= MIN_SIDE:
        return size
    # Too small: the least that is allowed; too large: the most that fits.
    short = MIN_SIDE if short_side < MIN_SIDE else math.sqrt(MAX_PIXELS / ratio)
    # Floor to the step, so the product stays inside the budget; MIN_SIDE
    # is itself a multiple of the step.
    short_px = max(MIN_SIDE, int(short) // PIXEL_STEP * PIXEL_STEP)
    long_px = int(short_px * ratio) // PIXEL_STEP * PIXEL_STEP
    long_px = min(long_px, MAX_PIXELS // short_px // PIXEL_STEP * PIXEL_STEP)
    if size.width >= size.height:
        return Size(long_px, short_px)
    return Size(short_px, long_px)


def request_body(call: UpstreamCall, deployment: str = "") -> dict[str, Any]:
    """The JSON body for `call` (without credentials)."""
    if call.operation is not Operation.GENERATE:
        raise CapabilityNotSupported(
            [FieldViolation("operation", "MAI-Image-2 only generates images from a prompt")]
        )
    if call.count != 1:
        raise ImageServiceError("MAI produces one image per call.")
    size = produced_size(call.size or DEFAULT_SIZE)
    return {
        "model": deployment or call.model.upstream_id,
        "prompt": call.prompt,
        "width": size.width,
        "height": size.height,
    }


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _content_rejected(categories: list[str] | None = None) -> ContentRejected:
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
    return _content_rejected(filtered_categories(results))


def _decode_image(b64: object) -> ProducedImage | None:
    # `loads_with_base64` hands the strings over as bytes, undecoded.
    if not isinstance(b64, bytes | memoryview) or not b64:
        return None
    data = b64decode(b64)
    # Raises ValueError unless the bytes are an image.
    return ProducedImage(data=data, mime_type=inspect(data).mime_type)


def parse_response(response: httpx.Response) -> UpstreamResult:
    """The image of a 2xx body; a filtered item → `ContentRejected`.

    Filtered items are undocumented for MAI; the Azure OpenAI shape is read
    in case it is used.
    """
    try:
        # The body is almost all base64: parse it without copying the image
        # string (see base64_json), as the FLUX backend does.
        payload = loads_with_base64(response.content, "b64_json")
    except (ValueError, UnicodeDecodeError):
        payload = None  # unreadable reads as "no image": UpstreamUnavailable
    return parse_images(
        payload,
        upstream=UPSTREAM,
        decode=_decode_image,
        content_rejected=_content_rejected,
    )


class AzureMaiBackend:
    """`ImageBackend` for the MAI models of one Azure AI Foundry resource."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: SecretStr,
        deployment: str = "",
        api_version: str = "",
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`deployment` overrides the catalogue's `upstream_id` as the body's
        `model`; `api_version`, when set, is sent as `?api-version=` (the
        documented route takes none). `client` is used as given and not
        closed; otherwise one is made (over `transport`, if given) and closed
        by `aclose`."""
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("the Azure MAI endpoint must be an http(s) URL")
        self._url = endpoint.rstrip("/") + ROUTE
        self._api_key = api_key
        self._deployment = deployment.strip()
        self._params = {"api-version": api_version} if api_version else None
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._owns_client = client is None
        self._client = client or new_client(timeout_s=timeout_s, transport=transport)

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One MAI generation (one image), retried within `deadline`."""
        return await send_with_retry(
            self._client,
            "POST",
            self._url,
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_response,
            json_body=request_body(call, self._deployment),
            params=self._params,
            headers={"api-key": self._api_key.get_secret_value()},
            classify=classify,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
