"""One case per Stability Image Services edit added in issue 15: the model,
the operation and its parameters, and what the Bedrock emulator makes of a
512x384 input, so the backend, contract, gRPC, REST and CLI tests drive the
same calls and expect the same sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.domain.catalogue import Catalogue
from server.domain.edit_options import given
from server.domain.imaging import mask_to_grayscale
from server.domain.ports import UpstreamCall
from server.domain.requests import EditOptions, Operation, Size
from tests.support.images import alpha_mask, png

SOURCE_SIZE = (512, 384)
SOURCE = png(*SOURCE_SIZE, color=(40, 120, 200))
STYLE = png(256, 256, color=(220, 180, 20))
# OpenAI's form (transparent = the area), as a caller sends it.
MASK = alpha_mask(*SOURCE_SIZE)


@dataclass(frozen=True)
class ServiceCase:
    """One Image Services edit and what comes of it."""

    model: str
    operation: Operation
    prompt: str
    options: EditOptions = field(default_factory=EditOptions)
    masked: bool = False
    size: Size | None = None
    # The size the emulator produces from SOURCE.
    produced: tuple[int, int] = SOURCE_SIZE
    # Body fields the backend must send (besides the images).
    sends: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.operation.value if "creative" not in self.model else "creative_upscale"

    def call(self, seed: int | None = 7) -> UpstreamCall:
        mask = mask_to_grayscale(MASK)[0] if self.masked else None
        return UpstreamCall(
            model=Catalogue.load().get(self.model),
            prompt=self.prompt,
            size=self.size,
            count=1,
            operation=self.operation,
            images=(SOURCE,),
            mask=mask,
            seed=seed,
            options=self.options,
        )


CASES = (
    ServiceCase(
        "bedrock/stability-creative-upscale",
        Operation.UPSCALE,
        "a sharp photo of a lake",
        EditOptions(creativity=0.35),
        produced=(2048, 1536),
        sends={"prompt": "a sharp photo of a lake", "creativity": 0.35},
    ),
    ServiceCase(
        "bedrock/stability-erase-object",
        Operation.ERASE_OBJECT,
        "",
        masked=True,
        sends={"grow_mask": 5},
    ),
    ServiceCase(
        "bedrock/stability-outpaint",
        Operation.OUTPAINT,
        "more of the beach",
        EditOptions(left=64, up=32, creativity=0.4),
        produced=(576, 416),
        sends={"left": 64, "up": 32, "creativity": 0.4, "prompt": "more of the beach"},
    ),
    ServiceCase(
        "bedrock/stability-search-replace",
        Operation.SEARCH_REPLACE,
        "a golden retriever",
        EditOptions(search_prompt="the cat"),
        sends={"prompt": "a golden retriever", "search_prompt": "the cat"},
    ),
    ServiceCase(
        "bedrock/stability-search-recolor",
        Operation.SEARCH_RECOLOR,
        "bright red",
        EditOptions(select_prompt="the car"),
        sends={"prompt": "bright red", "select_prompt": "the car"},
    ),
    ServiceCase(
        "bedrock/stability-control-sketch",
        Operation.CONTROL_SKETCH,
        "a castle on a hill",
        EditOptions(control_strength=0.6),
        sends={"prompt": "a castle on a hill", "control_strength": 0.6},
    ),
    ServiceCase(
        "bedrock/stability-control-structure",
        Operation.CONTROL_STRUCTURE,
        "a glass house",
        EditOptions(control_strength=0.8),
        sends={"prompt": "a glass house", "control_strength": 0.8},
    ),
    ServiceCase(
        "bedrock/stability-style-guide",
        Operation.STYLE_GUIDE,
        "a lighthouse at dusk",
        EditOptions(fidelity=0.7),
        size=Size(1792, 1024),
        produced=(1344, 768),
        sends={"prompt": "a lighthouse at dusk", "fidelity": 0.7, "aspect_ratio": "16:9"},
    ),
    ServiceCase(
        "bedrock/stability-style-transfer",
        Operation.STYLE_TRANSFER,
        "oil painting",
        EditOptions(style_image=STYLE, style_strength=0.9, change_strength=0.5),
        sends={"prompt": "oil painting", "style_strength": 0.9, "change_strength": 0.5},
    ),
)


def wire_options(case: ServiceCase) -> dict[str, Any]:
    """The case's parameters as `EditRequest` / form fields (set ones only)."""
    return given(case.options)
