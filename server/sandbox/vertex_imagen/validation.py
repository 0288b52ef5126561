"""Predict requests checked as Vertex does, a little more strictly where undocumented.

One instance `{"prompt": non-empty string}`; parameters `sampleCount` 1..4
(default 4), `aspectRatio` 1:1|3:4|4:3|9:16|16:9, `sampleImageSize` 1K|2K
(case-insensitive; Fast only has 1K: UNCERTAIN upstream), `seed` uint32 and
only with `addWatermark: false`, `outputOptions.mimeType` image/png|image/jpeg
with `compressionQuality` 0..100, the boolean flags, `personGeneration` and
`safetySetting` enums; any other parameter is INVALID_ARGUMENT (Imagen 4 has
no `negativePrompt`). `validate` returns the `Job` a valid call asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.sandbox.vertex_imagen.errors import invalid

PIXELS: dict[tuple[str, str], tuple[int, int]] = {
    ("1:1", "1K"): (1024, 1024),
    ("3:4", "1K"): (896, 1280),
    ("4:3", "1K"): (1280, 896),
    ("9:16", "1K"): (768, 1408),
    ("16:9", "1K"): (1408, 768),
    ("1:1", "2K"): (2048, 2048),
    ("3:4", "2K"): (1792, 2560),
    ("4:3", "2K"): (2560, 1792),
    ("9:16", "2K"): (1536, 2816),
    ("16:9", "2K"): (2816, 1536),
}
ASPECT_RATIOS = frozenset(ratio for ratio, _ in PIXELS)
MAX_SAMPLE_COUNT = 4
_PARAMETERS = frozenset(
    {
        "sampleCount",
        "aspectRatio",
        "sampleImageSize",
        "seed",
        "addWatermark",
        "enhancePrompt",
        "includeRaiReason",
        "includeSafetyAttributes",
        "personGeneration",
        "safetySetting",
        "language",
        "outputOptions",
    }
)
_BOOLEANS = ("addWatermark", "enhancePrompt", "includeRaiReason", "includeSafetyAttributes")
_ENUMS = {
    "personGeneration": frozenset({"dont_allow", "allow_adult", "allow_all"}),
    "safetySetting": frozenset(
        {
            "block_low_and_above",
            "block_medium_and_above",
            "block_only_high",
            "block_none",
            "block_most",
            "block_some",
            "block_few",
            "block_fewest",
        }
    ),
}


@dataclass(frozen=True)
class ImagenModel:
    """What one publisher model accepts."""

    model_id: str
    sample_image_sizes: tuple[str, ...]


MODELS: dict[str, ImagenModel] = {
    m.model_id: m
    for m in (
        ImagenModel("imagen-4.0-generate-001", ("1K", "2K")),
        ImagenModel("imagen-4.0-fast-generate-001", ("1K",)),
        ImagenModel("imagen-4.0-ultra-generate-001", ("1K", "2K")),
    )
}


@dataclass(frozen=True)
class Job:
    """What a valid call asks for."""

    model: str
    prompt: str
    count: int
    width: int
    height: int
    mime_type: str
    quality: int
    seed: int | None
    enhance: bool
    include_rai_reason: bool


def _integer(parameters: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise invalid(f"{key} must be an integer.")
    if not low <= value <= high:
        raise invalid(f"{key} must be between {low} and {high}.")
    return int(value)


def _output_options(parameters: dict[str, Any]) -> tuple[str, int]:
    options = parameters.get("outputOptions", {})
    if not isinstance(options, dict) or set(options) - {"mimeType", "compressionQuality"}:
        raise invalid("outputOptions takes only mimeType and compressionQuality.")
    mime_type = options.get("mimeType", "image/png")
    if mime_type not in ("image/png", "image/jpeg"):
        raise invalid(f"Unsupported outputOptions.mimeType: {mime_type}.")
    quality = _integer(options, "compressionQuality", 0, 100)
    return mime_type, 75 if quality is None else quality


def _prompt(instances: list[Any]) -> str:
    if len(instances) != 1:
        raise invalid("Exactly one instance is supported for image generation.")
    instance = instances[0]
    if not isinstance(instance, dict) or set(instance) != {"prompt"}:
        raise invalid("The instance must have exactly one field, prompt.")
    prompt = instance["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("The prompt must be a non-empty string.")
    return prompt


def validate(model: ImagenModel, instances: list[Any], parameters: dict[str, Any]) -> Job:
    prompt = _prompt(instances)
    unknown = sorted(set(parameters) - _PARAMETERS)
    if unknown:
        raise invalid(f"Unsupported parameter for {model.model_id}: {unknown[0]}.")
    for key in _BOOLEANS:
        if key in parameters and not isinstance(parameters[key], bool):
            raise invalid(f"{key} must be a boolean.")
    for key, allowed in _ENUMS.items():
        if key in parameters and parameters[key] not in allowed:
            raise invalid(f"Unsupported {key}: {parameters[key]}.")
    count = _integer(parameters, "sampleCount", 1, MAX_SAMPLE_COUNT) or MAX_SAMPLE_COUNT
    ratio = parameters.get("aspectRatio", "1:1")
    if ratio not in ASPECT_RATIOS:
        raise invalid(f"Unsupported aspectRatio: {ratio}. Use 1:1, 3:4, 4:3, 9:16 or 16:9.")
    tier = parameters.get("sampleImageSize", "1K")
    tier = tier.upper() if isinstance(tier, str) else tier
    if tier not in model.sample_image_sizes:
        raise invalid(
            f"Unsupported sampleImageSize for {model.model_id}: {parameters['sampleImageSize']}. "
            f"Supported: {', '.join(model.sample_image_sizes)}."
        )
    seed = _integer(parameters, "seed", 0, 2**32 - 1)
    if seed is not None and parameters.get("addWatermark", True):
        raise invalid("Seed is not supported when addWatermark is enabled.")
    mime_type, quality = _output_options(parameters)
    width, height = PIXELS[(ratio, tier)]
    return Job(
        model=model.model_id,
        prompt=prompt,
        count=count,
        width=width,
        height=height,
        mime_type=mime_type,
        quality=quality,
        seed=seed,
        enhance=parameters.get("enhancePrompt", True),
        include_rai_reason=parameters.get("includeRaiReason", False),
    )
