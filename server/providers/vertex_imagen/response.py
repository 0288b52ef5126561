"""Imagen's answers → images.

`parse_response` turns a PredictResponse into images: a prediction with
`raiFilteredReason` instead of bytes, and a prediction missing altogether
(Imagen drops filtered images silently), counts as filtered; when no image
is left the call is `ContentRejected`.
"""

from __future__ import annotations

import binascii
from typing import Any

from google.cloud.aiplatform_v1.types import prediction_service

from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.base64_json import b64decode
from server.providers._shared.upstream import unavailable
from server.providers.vertex_imagen.errors import UPSTREAM, content_rejected


def _string(fields: Any, name: str) -> str:
    value = fields.get(name)
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return str(value.string_value)


def parse_response(response: prediction_service.PredictResponse, count: int) -> UpstreamResult:
    """Images from a PredictResponse; filtered and missing predictions are counted."""
    images: list[ProducedImage] = []
    filtered = 0
    reasons: list[str] = []
    for value in prediction_service.PredictResponse.pb(response).predictions:
        if value.WhichOneof("kind") != "struct_value":
            continue
        fields = value.struct_value.fields
        encoded = _string(fields, "bytesBase64Encoded")
        if not encoded:
            reason = _string(fields, "raiFilteredReason")
            if reason:
                filtered += 1
                reasons.append(reason)
            continue
        try:
            data = b64decode(encoded)
        except (binascii.Error, ValueError):
            raise unavailable(UPSTREAM, "Vertex AI Imagen returned a corrupt image.") from None
        images.append(
            ProducedImage(
                data=data,
                mime_type=_string(fields, "mimeType") or "image/png",
                revised_prompt=_string(fields, "prompt"),
            )
        )
    # Imagen leaves filtered images out when it gives no reason.
    filtered += max(0, count - len(images) - filtered)
    if not images:
        raise content_rejected(" ".join(reasons))
    return UpstreamResult(images=tuple(images), filtered=filtered)
