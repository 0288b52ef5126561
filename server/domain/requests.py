"""What callers ask for: sizes, operations and the two request kinds."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


class Operation(enum.Enum):
    """What a model can do; the edit operations plus plain generation.

    The value is the operation's name on the REST surface and in records;
    the proto enum is `OPERATION_<NAME>`.
    """

    GENERATE = "generate"
    PROMPT_EDIT = "prompt_edit"
    INPAINT = "inpaint"
    REMOVE_BACKGROUND = "remove_background"
    UPSCALE = "upscale"
    # The Stability Image Services' further edits (see edit_options.py for
    # the parameters each takes).
    ERASE_OBJECT = "erase_object"
    OUTPAINT = "outpaint"
    SEARCH_REPLACE = "search_replace"
    SEARCH_RECOLOR = "search_recolor"
    CONTROL_SKETCH = "control_sketch"
    CONTROL_STRUCTURE = "control_structure"
    STYLE_GUIDE = "style_guide"
    STYLE_TRANSFER = "style_transfer"


class ResponseFormat(enum.Enum):
    URL = "url"
    INLINE = "inline"


@dataclass(frozen=True, order=True)
class Size:
    """A size in pixels, written `WIDTHxHEIGHT` on the wire."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size:
        """Parse `1024x1024`; raises ValueError on anything else."""
        match = _SIZE.match(text.strip().lower())
        if not match:
            raise ValueError(f"size must look like 1024x1024, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def nearest_ratio(self, ratios: Iterable[str]) -> str:
        """The `W:H` entry of `ratios` closest to this size's proportions.

        Closeness is the distance between log ratios, so 2:1 and 1:2 are
        equally far from 1:1 (upstreams that take an aspect-ratio enum
        instead of pixels all snap this way).
        """

        def distance(ratio: str) -> float:
            width, height = (int(part) for part in ratio.split(":"))
            return abs(math.log(self.aspect) - math.log(width / height))

        return min(ratios, key=distance)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


DEFAULT_SIZE = Size(1024, 1024)


@dataclass(frozen=True)
class OutputOptions:
    """OpenAI Images' output parameters (see output_options.py); empty is unset."""

    quality: str = ""
    output_format: str = ""
    output_compression: int | None = None
    background: str = ""
    moderation: str = ""
    user: str = ""
    partial_images: int = 0


@dataclass(frozen=True)
class GenerateRequest:
    """A text-to-image request as the caller sent it (not yet validated)."""

    model: str
    prompt: str
    size: str = ""
    n: int = 1
    response_format: ResponseFormat = ResponseFormat.URL
    request_id: str = ""
    seed: int | None = None
    output: OutputOptions = OutputOptions()

    @property
    def operation(self) -> Operation:
        return Operation.GENERATE


@dataclass(frozen=True)
class EditOptions:
    """An edit's parameters beyond prompt, images and mask, each used by
    some operations only (which, and the ranges, are in edit_options.py).

    Unset is the empty string, None, 0 (outpaint margins) or None (style
    image): the upstream's own default applies.
    """

    # Search and replace: what to find and replace with the prompt.
    search_prompt: str = ""
    # Search and recolor: what to find and recolor as the prompt says.
    select_prompt: str = ""
    # Control sketch / structure: how closely the output follows the input.
    control_strength: float | None = None
    # Style guide: how closely the output follows the input's style.
    fidelity: float | None = None
    # Creative upscale and outpaint: how much the model may invent.
    creativity: float | None = None
    # Outpaint: pixels to add on each side.
    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0
    # Style transfer: the image whose style is applied to the input, and
    # the weights of style, composition and change.
    style_image: bytes | None = None
    style_strength: float | None = None
    composition_fidelity: float | None = None
    change_strength: float | None = None

    def margins(self) -> dict[str, int]:
        """The outpaint margins by side: left, right, up, down."""
        return {"left": self.left, "right": self.right, "up": self.up, "down": self.down}


NO_EDIT_OPTIONS = EditOptions()


@dataclass(frozen=True)
class EditRequest:
    """An edit request as the caller sent it (not yet validated)."""

    model: str
    prompt: str
    images: tuple[bytes, ...]
    mask: bytes | None = None
    operation: Operation = Operation.PROMPT_EDIT
    size: str = ""
    n: int = 1
    response_format: ResponseFormat = ResponseFormat.URL
    request_id: str = ""
    seed: int | None = None
    options: EditOptions = NO_EDIT_OPTIONS
    output: OutputOptions = OutputOptions()


AnyRequest = GenerateRequest | EditRequest
