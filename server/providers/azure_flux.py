"""Azure AI Foundry, Black Forest Labs route: FLUX.1 Kontext [pro] and FLUX.2 [pro].

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
One image per call. Safety refusals (a 400 naming the content filter, or a
200 whose item has `finish_reason: content_filter`) are `ContentRejected`
and never retried.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import (
    CapabilityNotSupported,
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.imaging import sniff_mime_type
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.azure_images import is_filter_refusal, parse_images, unavailable
from server.providers.base64_json import b64decode, b64encode_text, loads_with_base64
from server.providers.http import (
    Upstream,
    new_client,
    send_with_retry,
    upstream_error_body,
)

UPSTREAM = Upstream(
    key="azure_flux",
    name="Azure FLUX",
    credential_setting="IMAGE_SERVICE_AZURE_FLUX_API_KEY",
    endpoint_setting="IMAGE_SERVICE_AZURE_FLUX_ENDPOINT",
)

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
PIXEL_STEP, MIN_SIDE, MAX_SIDE = 16, 256, 1440
# Kontext on Azure takes one input image; FLUX.2 pro up to eight.
_MAX_INPUT_IMAGES = {"aspect_ratio": 1, "pixels": 8}

_FILTER_WORDS = ("content filter", "safety system", "moderat")


def nearest_aspect_ratio(size: Size) -> str:
    """The entry of `ASPECT_RATIOS` closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def pixel_size(size: Size) -> Size:
    """`size` fitted to FLUX.2's limits, keeping its proportions."""
    scale = min(1.0, MAX_SIDE / max(size.width, size.height))
    scale = max(scale, MIN_SIDE / min(size.width, size.height))

    def snap(side: float) -> int:
        # Half-up rather than round()'s half-to-even, so 1000 → 1008.
        return min(MAX_SIDE, max(MIN_SIDE, int(side / PIXEL_STEP + 0.5) * PIXEL_STEP))

    return Size(snap(size.width * scale), snap(size.height * scale))


def _input_images(call: UpstreamCall, size_mode: str) -> dict[str, str]:
    if call.operation is Operation.GENERATE:
        return {}
    if call.operation is not Operation.PROMPT_EDIT or call.mask is not None:
        raise CapabilityNotSupported(
            [FieldViolation("operation", "FLUX models only edit from a prompt, without a mask")]
        )
    limit = _MAX_INPUT_IMAGES[size_mode]
    if not call.images or len(call.images) > limit:
        raise InvalidArgument(
            [FieldViolation("images", f"{call.model.name} takes 1 to {limit} input image(s)")]
        )
    encoded = [b64encode_text(image) for image in call.images]
    return {
        ("input_image" if index == 0 else f"input_image_{index + 1}"): data
        for index, data in enumerate(encoded)
    }


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The JSON body for `call` (without credentials)."""
    options = call.model.options
    size_mode = options.get("size_mode", "pixels")
    if size_mode not in _MAX_INPUT_IMAGES:
        raise ImageServiceError(f"Catalogue entry {call.model.name} has an unknown size_mode.")
    if call.count != 1:
        raise ImageServiceError("FLUX produces one image per call.")
    body: dict[str, Any] = {
        "model": options.get("upstream_model", call.model.upstream_id),
        "prompt": call.prompt,
        "output_format": "png",
    }
    if call.size is not None:
        if size_mode == "aspect_ratio":
            body["aspect_ratio"] = nearest_aspect_ratio(call.size)
        else:
            fitted = pixel_size(call.size)
            body["width"], body["height"] = fitted.width, fitted.height
    if size_mode == "pixels":
        # As in Microsoft's FLUX.2 example; Kontext's documented body has none.
        body["num_images"] = 1
    if call.seed is not None:
        body["seed"] = call.seed
    if "safety_tolerance" in options:
        body["safety_tolerance"] = int(options["safety_tolerance"])
    body.update(_input_images(call, size_mode))
    return body


def classify_content_filter(response: httpx.Response) -> ImageServiceError | None:
    """`ContentRejected` for an error response that names the content filter."""
    if is_filter_refusal(response.status_code, upstream_error_body(response), _FILTER_WORDS):
        return _content_rejected()
    return None


def _content_rejected(categories: list[str] | None = None) -> ContentRejected:
    metadata = {"upstream": UPSTREAM.key}
    if categories:
        metadata["categories"] = ",".join(sorted(categories))
    return ContentRejected(
        "Azure FLUX's safety system refused the prompt or image; rephrase and try again.",
        metadata=metadata,
    )


def _decode_image(b64: object) -> ProducedImage | None:
    # `loads_with_base64` hands the strings over as bytes, undecoded.
    if not isinstance(b64, bytes | memoryview) or not b64:
        return None
    data = b64decode(b64)
    return ProducedImage(data=data, mime_type=sniff_mime_type(data))


def parse_response(response: httpx.Response) -> UpstreamResult:
    """Images from a 2xx body; all filtered → `ContentRejected`."""
    try:
        payload = loads_with_base64(response.content, "b64_json")
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "Azure FLUX returned an unreadable response.") from None
    return parse_images(
        payload, upstream=UPSTREAM, decode=_decode_image, content_rejected=_content_rejected
    )


class AzureFluxBackend:
    """`ImageBackend` for the FLUX models on one Azure AI Foundry resource."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: SecretStr,
        api_version: str = "preview",
        timeout_s: float = 180.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`client` is used as given and not closed; otherwise one is made
        (over `transport`, if given) and closed by `aclose`."""
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("the Azure FLUX endpoint must be an http(s) URL")
        self._endpoint = endpoint.rstrip("/")
        self._api_key = api_key
        self._api_version = api_version
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._owns_client = client is None
        self._client = client or new_client(timeout_s=timeout_s, transport=transport)

    def url_for(self, upstream_id: str) -> str:
        return f"{self._endpoint}/providers/blackforestlabs/v1/{quote(upstream_id, safe='')}"

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One FLUX generation or edit, retried within `deadline`."""
        return await send_with_retry(
            self._client,
            "POST",
            self.url_for(call.model.upstream_id),
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_response,
            json_body=request_body(call),
            params={"api-version": self._api_version},
            headers={"Authorization": f"Bearer {self._api_key.get_secret_value()}"},
            classify=classify_content_filter,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
