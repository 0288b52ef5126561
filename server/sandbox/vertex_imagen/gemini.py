"""GenerateContent for the Gemini image models, checked and answered as Vertex does.

    google.cloud.aiplatform.v1.PredictionService/GenerateContent
    model = projects/{project}/locations/{location}/publishers/google/models/{model}

Checks (a little stricter than documented where Google is silent): the
model is a Gemini image model; one `user` content whose parts are one
non-empty text and at most 14 `inlineData` images (PNG/JPEG/WebP);
`generationConfig.responseModalities` includes IMAGE; `candidateCount` is
at most 1; `imageConfig.aspectRatio` is one of the ten ratios and
`imageSize` one of 1K/2K/4K. An answer is one candidate with the rendered
PNG (at Google's pixel table size, or the first input's proportions when no
aspect ratio is given) and `usageMetadata` counting tokens as Google's model
pages say: 1120 output tokens per 1K image and, for Flash, 1680 (2K) / 2520
(4K), for Pro 1120 (2K) / 2000 (4K); 1120 input tokens per input image plus
about one per four prompt characters.

Faults: the shared ones (fault_error) answer as for Predict; CONTENT_FILTER
answers `promptFeedback.blockReason: SAFETY` (variant `prompt`, default) or
a candidate finished with `SAFETY` and no image (`partial`, `all`, `silent`).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from google.cloud.aiplatform_v1.types import content as content_types
from google.cloud.aiplatform_v1.types import prediction_service
from PIL import Image, UnidentifiedImageError

from server.sandbox.faults import Fault, FaultMode, strip_directives
from server.sandbox.render import render_image
from server.sandbox.vertex_imagen.errors import invalid

_BASE = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
_SCALE = {"1K": 1, "2K": 2, "4K": 4}
MAX_INPUT_IMAGES = 14
INPUT_IMAGE_TOKENS = 1120
# Output image tokens per tier (Google's Gemini 3.1 Flash Image and 3 Pro Image pages).
OUTPUT_TOKENS = {
    "gemini-3.1-flash-image": {"1K": 1120, "2K": 1680, "4K": 2520},
    "gemini-3-pro-image": {"1K": 1120, "2K": 1120, "4K": 2000},
}
GEMINI_MODELS = frozenset(OUTPUT_TOKENS)
_IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/webp"})
_Modality = content_types.GenerationConfig.Modality
_BLOCKED = prediction_service.GenerateContentResponse.PromptFeedback.BlockedReason


@dataclass(frozen=True)
class GeminiJob:
    """What a valid GenerateContent call asks for."""

    model: str
    prompt: str
    width: int
    height: int
    tier: str
    input_images: int
    seed: int | None


def _size_of_first(inputs: list[Any]) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(inputs[0].inline_data.data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        raise invalid("Unable to process input image.") from None
    return int(width), int(height)


def validate_generate_content(model: str, request: Any) -> GeminiJob:
    """The job a raw `GenerateContentRequest` asks of `model`; INVALID_ARGUMENT otherwise."""
    if len(request.contents) != 1 or request.contents[0].role not in ("", "user"):
        raise invalid("Please use a single user turn: contents must hold one user content.")
    parts = list(request.contents[0].parts)
    texts = [p.text for p in parts if p.WhichOneof("data") == "text"]
    inputs = [p for p in parts if p.WhichOneof("data") == "inline_data"]
    if len(texts) != 1 or not texts[0].strip():
        raise invalid("contents.parts must hold one non-empty text part.")
    if len(inputs) > MAX_INPUT_IMAGES:
        raise invalid(f"At most {MAX_INPUT_IMAGES} images per prompt are supported.")
    for part in inputs:
        if part.inline_data.mime_type not in _IMAGE_MIMES:
            raise invalid(f"Unsupported MIME type: {part.inline_data.mime_type}")
    config = request.generation_config
    if _Modality.IMAGE not in config.response_modalities:
        raise invalid("responseModalities must include IMAGE for an image model.")
    if config.candidate_count > 1:
        raise invalid("candidateCount must be 1 for image generation.")
    image_config = config.image_config
    ratio = image_config.aspect_ratio
    tier = image_config.image_size or "1K"
    if ratio and ratio not in _BASE:
        raise invalid(f"Unsupported aspect ratio: {ratio}. Supported: {', '.join(_BASE)}.")
    if tier not in _SCALE:
        raise invalid(f"Unsupported image size: {tier}. Supported: 1K, 2K, 4K.")
    if ratio:
        width, height = _BASE[ratio]
    elif inputs:
        first = _size_of_first(inputs)
        # Gemini keeps an edited image's proportions: the nearest ratio's size.
        aspect = first[0] / first[1]
        width, height = min(_BASE.values(), key=lambda wh: abs(wh[0] / wh[1] - aspect))
    else:
        width, height = _BASE["1:1"]
    scale = _SCALE[tier]
    seed = config.seed if config.HasField("seed") else None
    return GeminiJob(model, texts[0], width * scale, height * scale, tier, len(inputs), seed)


def usage_metadata(job: GeminiJob) -> dict[str, Any]:
    image_tokens = OUTPUT_TOKENS[job.model][job.tier]
    prompt_tokens = len(job.prompt) // 4 + 1 + job.input_images * INPUT_IMAGE_TOKENS
    return {
        "prompt_token_count": prompt_tokens,
        "candidates_token_count": image_tokens,
        "total_token_count": prompt_tokens + image_tokens,
        "candidates_tokens_details": [
            {"modality": content_types.Modality.IMAGE, "token_count": image_tokens}
        ],
    }


async def answer_generate_content(job: GeminiJob, fault: Fault) -> Any:
    """The raw `GenerateContentResponse` for `job` (shaped by a CONTENT_FILTER fault)."""
    response: dict[str, Any] = {"model_version": job.model}
    if fault.mode is FaultMode.CONTENT_FILTER:
        if fault.variant in ("", "prompt"):
            response["prompt_feedback"] = {
                "block_reason": _BLOCKED.SAFETY,
                "block_reason_message": "The prompt was blocked due to safety.",
            }
        else:
            response["candidates"] = [
                {"content": {"role": "model", "parts": []}, "finish_reason": "SAFETY"}
            ]
            response["usage_metadata"] = {"prompt_token_count": len(job.prompt) // 4 + 1}
        return prediction_service.GenerateContentResponse.pb(
            prediction_service.GenerateContentResponse(response)
        )
    label = f"sandbox {job.model} {job.width}x{job.height} {job.tier}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    data = await asyncio.to_thread(
        render_image, job.width, job.height, strip_directives(job.prompt), label=label
    )
    response["candidates"] = [
        {
            "content": {
                "role": "model",
                "parts": [{"inline_data": {"mime_type": "image/png", "data": data}}],
            },
            "finish_reason": "STOP",
        }
    ]
    response["usage_metadata"] = usage_metadata(job)
    return prediction_service.GenerateContentResponse.pb(
        prediction_service.GenerateContentResponse(response)
    )
