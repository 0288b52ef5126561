"""Gemini image models on Vertex AI: a call → `GenerateContentRequest`, and back.

    google.cloud.aiplatform.v1.PredictionService/GenerateContent
    model    = projects/{project}/locations/{location}/publishers/google/models/{upstream_id}
    contents = [{"role": "user", "parts": [{"text": prompt},
                                           {"inlineData": {"mimeType", "data"}}...]}]
    generationConfig = {"responseModalities": ["IMAGE"], "candidateCount": 1, ["seed"],
                        "imageConfig": {"aspectRatio", "imageSize": 1K|2K|4K},
                        ["thinkingConfig": {"thinkingLevel"}]}
    → candidates[0].content.parts[].inlineData (the image), usageMetadata (tokens)

One image per call (`images_per_call = 1`; n fans out). Sizes snap to the
nearest of Gemini's ten aspect ratios, then to the allowed 1K/2K/4K tier
whose pixel count is nearest the request's (`PIXELS`: Google's table for
the Gemini 3 image models, see docs/models-vertex.md; UNCERTAIN where
noted there). Prompt edits send the input images as inline parts after the
prompt (up to 14). A blocked prompt (`promptFeedback.blockReason`) or a
candidate that finished for a safety reason without an image is
`ContentRejected`; the usage becomes `TokenUsage`, which the domain prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.cloud.aiplatform_v1.types import content as content_types
from google.cloud.aiplatform_v1.types import prediction_service

from server.domain.errors import CapabilityNotSupported, FieldViolation
from server.domain.imaging import measure
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.pricing import TokenUsage
from server.domain.requests import DEFAULT_SIZE, Operation, Size
from server.providers.vertex_imagen import VertexImagenOptions
from server.providers.vertex_imagen.errors import content_rejected

MAX_INPUT_IMAGES = 14
GEMINI_TIERS = ("1K", "2K", "4K")
# Width, height per aspect ratio at 1K; 2K and 4K are 2x and 4x each side.
_BASE: dict[str, Size] = {
    "1:1": Size(1024, 1024),
    "2:3": Size(848, 1264),
    "3:2": Size(1264, 848),
    "3:4": Size(896, 1200),
    "4:3": Size(1200, 896),
    "4:5": Size(928, 1152),
    "5:4": Size(1152, 928),
    "9:16": Size(768, 1376),
    "16:9": Size(1376, 768),
    "21:9": Size(1584, 672),
}
_SCALE = {"1K": 1, "2K": 2, "4K": 4}
PIXELS: dict[tuple[str, str], Size] = {
    (ratio, tier): Size(base.width * scale, base.height * scale)
    for ratio, base in _BASE.items()
    for tier, scale in _SCALE.items()
}
ASPECT_RATIOS = tuple(_BASE)
_SAFETY_FINISH = frozenset(
    {
        content_types.Candidate.FinishReason.SAFETY,
        content_types.Candidate.FinishReason.PROHIBITED_CONTENT,
        content_types.Candidate.FinishReason.BLOCKLIST,
        content_types.Candidate.FinishReason.SPII,
    }
)
_THINKING = {
    "minimal": content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.MINIMAL,
    "low": content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.LOW,
    "medium": content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.MEDIUM,
    "high": content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.HIGH,
}


@dataclass(frozen=True)
class GeminiOutput:
    """What a requested size becomes upstream, and the pixels it produces."""

    aspect_ratio: str
    image_size: str
    pixels: Size


def output_for(size: Size, tiers: tuple[str, ...] = GEMINI_TIERS) -> GeminiOutput:
    """The aspect ratio and the tier (by nearest pixel count) for `size`."""
    ratio = size.nearest_ratio(ASPECT_RATIOS)
    allowed = [tier for tier in GEMINI_TIERS if tier in tiers] or ["1K"]
    tier = min(
        allowed,
        key=lambda t: abs(math.log(PIXELS[(ratio, t)].pixels / size.pixels)),
    )
    return GeminiOutput(ratio, tier, PIXELS[(ratio, tier)])


def generate_content_request(call: UpstreamCall, model_path: str) -> Any:
    """The raw `GenerateContentRequest` protobuf for `call`."""
    if call.operation not in (Operation.GENERATE, Operation.PROMPT_EDIT):
        raise CapabilityNotSupported(
            [FieldViolation("operation", f"{call.model.name} generates and edits from a prompt")]
        )
    if len(call.images) > MAX_INPUT_IMAGES:
        raise CapabilityNotSupported(
            [FieldViolation("images", f"{call.model.name} takes at most {MAX_INPUT_IMAGES}")]
        )
    options = VertexImagenOptions.model_validate(dict(call.model.options))
    parts: list[dict[str, Any]] = [{"text": call.prompt}]
    for data in call.images:
        parts.append({"inline_data": {"mime_type": measure(data).mime_type, "data": data}})
    config: dict[str, Any] = {
        "response_modalities": [content_types.GenerationConfig.Modality.IMAGE],
        "candidate_count": 1,
    }
    # An edit with no size keeps the input's proportions (Gemini's default).
    if call.size is not None or call.operation is Operation.GENERATE:
        output = output_for(call.size or DEFAULT_SIZE, options.image_sizes)
        config["image_config"] = {
            "aspect_ratio": output.aspect_ratio,
            "image_size": output.image_size,
        }
    if call.seed is not None:
        config["seed"] = call.seed % 2**31
    if options.thinking_level is not None:
        config["thinking_config"] = {"thinking_level": _THINKING[options.thinking_level]}
    request = prediction_service.GenerateContentRequest(
        model=model_path,
        contents=[{"role": "user", "parts": parts}],
        generation_config=config,
    )
    return prediction_service.GenerateContentRequest.pb(request)


def usage_of(response: Any) -> TokenUsage | None:
    """The call's token usage, or None when the answer carries none."""
    if not response.HasField("usage_metadata"):
        return None
    usage = response.usage_metadata
    image_tokens = sum(
        detail.token_count
        for detail in usage.candidates_tokens_details
        if detail.modality == content_types.Modality.IMAGE
    )
    text_tokens = usage.candidates_token_count - image_tokens + usage.thoughts_token_count
    return TokenUsage(usage.prompt_token_count, image_tokens, max(0, text_tokens))


def parse_generate_content(response: Any) -> UpstreamResult:
    """The image (and usage) of a raw `GenerateContentResponse`."""
    feedback = response.prompt_feedback
    if feedback.block_reason:
        raise content_rejected(feedback.block_reason_message or "The prompt was blocked.")
    images: list[ProducedImage] = []
    safety_stop = False
    for candidate in response.candidates:
        for part in candidate.content.parts:
            if part.WhichOneof("data") == "inline_data" and part.inline_data.data:
                blob = part.inline_data
                images.append(ProducedImage(data=blob.data, mime_type=blob.mime_type))
        safety_stop = safety_stop or candidate.finish_reason in _SAFETY_FINISH
    if not images and safety_stop:
        raise content_rejected("The image was withheld by the safety filter.")
    # An answer with text only is a paid shortfall, not a glitch to retry:
    # the orchestrator reports the missing image.
    return UpstreamResult(images=tuple(images), usage=usage_of(response))
