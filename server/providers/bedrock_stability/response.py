"""An InvokeModel 200 body → images, or the refusal it carries.

A non-null `finish_reasons` entry starting "Filter reason:" (prompt, input
image, output image) comes with HTTP 200 and is `ContentRejected`, never
retried; "Inference error" is `UpstreamUnavailable` (retried).
"""

from __future__ import annotations

import binascii
import json

from server.domain.errors import ContentRejected
from server.domain.imaging import sniff_mime_type
from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.base64_json import b64decode
from server.providers._shared.upstream import unavailable
from server.providers.bedrock_stability.errors import UPSTREAM

_FILTER_PREFIX = "filter reason:"
_FILTER_TARGETS = frozenset({"prompt", "input image", "output image"})


def _filter_target(reason: str) -> str:
    """`prompt`, `input image` or `output image` from "Filter reason: ...";
    `request` for anything else (upstream text never reaches the caller)."""
    target = reason.split(":", 1)[1].strip().lower()
    return target if target in _FILTER_TARGETS else "request"


def parse_response(raw: bytes) -> UpstreamResult:
    """Images from an InvokeModel 200 body; every image filtered → `ContentRejected`."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "Amazon Bedrock returned an unreadable response.") from None
    if not isinstance(payload, dict):
        raise unavailable(UPSTREAM, "Amazon Bedrock returned an unreadable response.")
    images = payload.get("images") or []
    reasons = payload.get("finish_reasons") or []
    if not isinstance(images, list) or not isinstance(reasons, list):
        raise unavailable(UPSTREAM, "Amazon Bedrock returned an unreadable response.")
    produced: list[ProducedImage] = []
    filtered: list[str] = []
    inference_errors = 0
    for index in range(max(len(images), len(reasons))):
        reason = reasons[index] if index < len(reasons) else None
        if isinstance(reason, str) and reason.strip():
            lowered = reason.strip().lower()
            if lowered.startswith(_FILTER_PREFIX):
                filtered.append(_filter_target(reason))
            else:
                inference_errors += 1
            continue
        encoded = images[index] if index < len(images) else None
        if not isinstance(encoded, str) or not encoded:
            continue
        try:
            data = b64decode(encoded)
        except (binascii.Error, ValueError):
            raise unavailable(UPSTREAM, "Amazon Bedrock returned a corrupt image.") from None
        produced.append(ProducedImage(data=data, mime_type=sniff_mime_type(data)))
    if produced:
        return UpstreamResult(images=tuple(produced), filtered=len(filtered))
    if filtered:
        targets = sorted(set(filtered))
        raise ContentRejected(
            f"The Stability model's safety filter refused the {' and '.join(targets)}; "
            "change it and try again.",
            metadata={"upstream": UPSTREAM.key, "filter": ",".join(targets)},
        )
    if inference_errors:
        raise unavailable(
            UPSTREAM, "The Stability model failed to produce an image (inference error)."
        )
    raise unavailable(UPSTREAM, "Amazon Bedrock returned no image.")
