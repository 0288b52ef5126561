"""The Stability model ids Bedrock serves, and what each one accepts."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# Inference profile prefixes (cross-region ids such as us.stability...).
_GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.")

Kind = Literal[
    "sd3",
    "core",
    "ultra",
    "remove_background",
    "inpaint",
    "fast_upscale",
    "conservative_upscale",
    "creative_upscale",
    "erase_object",
    "outpaint",
    "search_replace",
    "search_recolor",
    "control_sketch",
    "control_structure",
    "style_guide",
    "style_transfer",
]
# The Image Services whose bodies and pictures services.py handles.
SERVICE_KINDS: frozenset[Kind] = frozenset(
    {
        "creative_upscale",
        "erase_object",
        "outpaint",
        "search_replace",
        "search_recolor",
        "control_sketch",
        "control_structure",
        "style_guide",
        "style_transfer",
    }
)


@dataclass(frozen=True)
class ImageLimits:
    """What an image input may be: sides, total pixels and proportions."""

    min_side: int
    max_side: int
    min_pixels: int
    max_pixels: int
    max_ratio: float = 0.0  # 0: any proportions


@dataclass(frozen=True)
class StabilityModel:
    """What one model id accepts."""

    model_id: str
    kind: Kind
    keys: frozenset[str]
    required: frozenset[str]
    image_limits: ImageLimits | None = None


NO_SIDE_LIMIT = 1 << 16
_T2I_KEYS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format"})
_WIDE = ImageLimits(64, NO_SIDE_LIMIT, 4_096, 9_437_184)
# The keys most Image Services share beside their own.
_SERVICE_KEYS = frozenset(
    {"image", "prompt", "negative_prompt", "seed", "output_format", "style_preset"}
)
_IMAGE_PROMPT = frozenset({"image", "prompt"})
_SERVICES = (
    StabilityModel(
        "stability.stable-creative-upscale-v1:0",
        "creative_upscale",
        _SERVICE_KEYS | {"creativity"},
        _IMAGE_PROMPT,
        # 64x64 up to one megapixel in; about 4K out.
        ImageLimits(64, NO_SIDE_LIMIT, 4_096, 1_048_576, max_ratio=2.5),
    ),
    StabilityModel(
        "stability.stable-image-erase-object-v1:0",
        "erase_object",
        frozenset({"image", "mask", "grow_mask", "seed", "output_format"}),
        # The mask may be left out: the image's alpha channel is used then.
        frozenset({"image"}),
        _WIDE,
    ),
    StabilityModel(
        "stability.stable-outpaint-v1:0",
        "outpaint",
        _SERVICE_KEYS | {"left", "right", "up", "down", "creativity"},
        frozenset({"image"}),
        _WIDE,
    ),
    StabilityModel(
        "stability.stable-image-search-replace-v1:0",
        "search_replace",
        _SERVICE_KEYS | {"search_prompt", "grow_mask"},
        _IMAGE_PROMPT | {"search_prompt"},
        _WIDE,
    ),
    StabilityModel(
        "stability.stable-image-search-recolor-v1:0",
        "search_recolor",
        _SERVICE_KEYS | {"select_prompt", "grow_mask"},
        _IMAGE_PROMPT | {"select_prompt"},
        _WIDE,
    ),
    StabilityModel(
        "stability.stable-image-control-sketch-v1:0",
        "control_sketch",
        _SERVICE_KEYS | {"control_strength"},
        _IMAGE_PROMPT,
        replace(_WIDE, max_ratio=2.5),
    ),
    StabilityModel(
        "stability.stable-image-control-structure-v1:0",
        "control_structure",
        _SERVICE_KEYS | {"control_strength"},
        _IMAGE_PROMPT,
        replace(_WIDE, max_ratio=2.5),
    ),
    StabilityModel(
        "stability.stable-image-style-guide-v1:0",
        "style_guide",
        _SERVICE_KEYS | {"fidelity", "aspect_ratio"},
        _IMAGE_PROMPT,
        replace(_WIDE, max_ratio=2.5),
    ),
    StabilityModel(
        "stability.stable-style-transfer-v1:0",
        "style_transfer",
        frozenset(
            {
                "init_image",
                "style_image",
                "prompt",
                "negative_prompt",
                "style_strength",
                "composition_fidelity",
                "change_strength",
                "seed",
                "output_format",
            }
        ),
        frozenset({"init_image", "style_image"}),
        _WIDE,
    ),
)
MODELS: dict[str, StabilityModel] = {
    m.model_id: m
    for m in (
        StabilityModel(
            "stability.sd3-5-large-v1:0",
            "sd3",
            _T2I_KEYS | {"mode", "image", "strength"},
            frozenset({"prompt"}),
            _WIDE,
        ),
        StabilityModel(
            "stability.stable-image-core-v1:1",
            "core",
            _T2I_KEYS | {"style_preset"},
            frozenset({"prompt"}),
        ),
        StabilityModel(
            "stability.stable-image-core-v1:0",
            "core",
            _T2I_KEYS | {"style_preset"},
            frozenset({"prompt"}),
        ),
        StabilityModel(
            "stability.stable-image-ultra-v1:1", "ultra", _T2I_KEYS, frozenset({"prompt"})
        ),
        StabilityModel(
            "stability.stable-image-ultra-v1:0", "ultra", _T2I_KEYS, frozenset({"prompt"})
        ),
        StabilityModel(
            "stability.stable-image-remove-background-v1:0",
            "remove_background",
            frozenset({"image", "output_format"}),
            frozenset({"image"}),
            ImageLimits(64, NO_SIDE_LIMIT, 4_096, 4_194_304),
        ),
        StabilityModel(
            "stability.stable-image-inpaint-v1:0",
            "inpaint",
            frozenset(
                {
                    "image",
                    "mask",
                    "prompt",
                    "negative_prompt",
                    "grow_mask",
                    "seed",
                    "output_format",
                    "style_preset",
                }
            ),
            frozenset({"image", "mask", "prompt"}),
            _WIDE,
        ),
        StabilityModel(
            "stability.stable-fast-upscale-v1:0",
            "fast_upscale",
            frozenset({"image", "output_format"}),
            frozenset({"image"}),
            ImageLimits(32, 1536, 1_024, 1_048_576, max_ratio=2.5),
        ),
        StabilityModel(
            "stability.stable-conservative-upscale-v1:0",
            "conservative_upscale",
            frozenset(
                {"image", "prompt", "negative_prompt", "seed", "creativity", "output_format"}
            ),
            frozenset({"image", "prompt"}),
            replace(_WIDE, max_ratio=2.5),
        ),
        *_SERVICES,
    )
}


def base_model_id(model_id: str) -> str:
    """`model_id` without an inference-profile prefix or ARN around it."""
    if model_id.startswith("arn:"):
        model_id = model_id.rsplit("/", 1)[-1]
    for prefix in _GEO_PREFIXES:
        if model_id.startswith(prefix):
            return model_id[len(prefix) :]
    return model_id
