"""What the two Azure AI Foundry image routes (FLUX and MAI) answer alike.

Both send images in the Azure OpenAI shape,

    {"data": [{"b64_json": "<base64>",
               "finish_reason": "content_filter",          (when withheld)
               "content_filter_results": {"<category>": {"filtered": true}, ...}}]}

and refuse with Azure's content-filter error bodies. `parse_images` reads
that list once for both; what differs stays with each backend: how the body
is parsed and the image strings decoded (FLUX lifts them out of the JSON
as bytes, MAI checks each is a real image), which words in an error message
mean the filter, and how a refusal is worded.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

from server.domain.errors import ContentRejected
from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.http import UpstreamErrorBody
from server.providers._shared.upstream import Upstream, unavailable

# Error codes (top-level or `innererror`) of a content-filter refusal.
FILTER_CODES = frozenset({"content_filter", "contentfilter", "responsibleaipolicyviolation"})
# The statuses Azure refuses content with.
FILTER_STATUSES = frozenset({400, 403, 422})


def is_filter_refusal(status: int, error: UpstreamErrorBody, words: tuple[str, ...]) -> bool:
    """Whether an error answer is the content filter refusing: by its code,
    or by one of `words` (lower case) in its message."""
    if status not in FILTER_STATUSES:
        return False
    message = error.message.lower()
    return error.code.lower() in FILTER_CODES or any(word in message for word in words)


def filtered_categories(results: Any) -> list[str]:
    """The categories a `content_filter_results` object marks filtered, sorted."""
    if not isinstance(results, dict):
        return []
    return sorted(
        str(name)
        for name, verdict in results.items()
        if isinstance(verdict, dict)
        and verdict.get("filtered") is True
        and str(name).isidentifier()
    )


def parse_images(
    payload: Any,
    *,
    upstream: Upstream,
    decode: Callable[[object], ProducedImage | None],
    content_rejected: Callable[[list[str]], ContentRejected],
) -> UpstreamResult:
    """The images of a parsed 2xx body.

    `decode` turns an item's `b64_json` into an image, None to skip the item
    (no image string), or raises ValueError for a corrupt one. An item the
    filter withheld counts as filtered; when nothing else is left,
    `content_rejected` gets the filtered categories of every item.
    """
    items = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        raise unavailable(upstream, f"{upstream.name} returned no image.")
    images: list[ProducedImage] = []
    filtered = 0
    categories: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        b64 = item.get("b64_json")
        flagged = filtered_categories(item.get("content_filter_results"))
        if item.get("finish_reason") == "content_filter" or (not b64 and flagged):
            filtered += 1
            categories.extend(flagged)
            continue
        try:
            image = decode(b64)
        except (binascii.Error, ValueError):
            raise unavailable(upstream, f"{upstream.name} returned a corrupt image.") from None
        if image is not None:
            images.append(image)
    if not images:
        if filtered:
            raise content_rejected(categories)
        raise unavailable(upstream, f"{upstream.name} returned no image.")
    return UpstreamResult(images=tuple(images), filtered=filtered)
