"""Submissions checked as DashScope does, a little more strictly where it is undocumented.

The body is `{"model", "input": {"messages": [one user message whose
content holds exactly one {"text"} and 0 to 9 {"image"}]}, "parameters":
{...}}`; images must be data URIs (the sandbox fetches no URLs) of 240 to
8000 px a side and at most 8:1. `parameters.n` is 1 to 4; `size` is "1K",
"2K" (the default), "4K" (pro text-to-image only) or "W*H" with W*H between
768*768 and 2048*2048 (4096*4096 for pro text-to-image) and at most 8:1.
"W*H" renders exactly that; "1K"/"2K"/"4K" render about 1/4/16 megapixels,
square for text-to-image and in the last input image's proportions for an
edit. `validate` returns the `Job` a valid body asks for; an invalid one
raises `Invalid` with the 400's code and message.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

MAX_INPUT_IMAGES = 9
MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**31 - 1
MIN_PIXELS = 768 * 768
_PRESETS = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 4096 * 4096}
_MAX_RATIO = 8.0
_MIN_INPUT_SIDE, _MAX_INPUT_SIDE = 240, 8000
_CUSTOM_SIZE = re.compile(r"^(\d{1,5})\*(\d{1,5})$")
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg|webp|bmp);base64,(.*)$", re.DOTALL)


@dataclass(frozen=True)
class WanModel:
    """What one model accepts."""

    name: str
    # Largest output for text-to-image; edits stop at 2K on both models.
    max_t2i_pixels: int


MODELS: dict[str, WanModel] = {
    m.name: m
    for m in (
        WanModel("wan2.7-image", 2048 * 2048),
        WanModel("wan2.7-image-pro", 4096 * 4096),
    )
}
_MAX_EDIT_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class Job:
    """What a valid submission asks for."""

    model: str
    prompt: str
    width: int
    height: int
    n: int
    seed: int | None
    input_images: int


class Invalid(Exception):
    """The body breaks the upstream's rules; `code` and the message are the 400's."""

    def __init__(self, message: str, code: str = "InvalidParameter") -> None:
        super().__init__(message)
        self.code = code


def _int_param(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"parameters.{key} must be an integer")
    return value


def _decode_input(index: int, value: Any) -> tuple[int, int]:
    if not isinstance(value, str) or not value:
        raise Invalid(f"image {index + 1} must be a URL or a data URI")
    if value.startswith(("http://", "https://", "oss://")):
        raise Invalid(
            f"image {index + 1}: the sandbox fetches no URLs; send a data URI", "InvalidURL"
        )
    match = _DATA_URI.match(value)
    if not match:
        raise Invalid(f"image {index + 1} must be a data:image/...;base64 URI")
    try:
        data = base64.b64decode(match.group(2), validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            width, height = image.size
    except (binascii.Error, ValueError):
        raise Invalid(f"image {index + 1} is not valid base64") from None
    except Exception:  # Pillow raises many types for undecodable input.
        raise Invalid(f"image {index + 1} is not a decodable image") from None
    short, long = min(width, height), max(width, height)
    if short < _MIN_INPUT_SIDE or long > _MAX_INPUT_SIDE or long / short > _MAX_RATIO:
        raise Invalid(
            f"image {index + 1} is {width}x{height}; sides must be 240 to 8000 px, at most 8:1"
        )
    return width, height


def _content(body: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    payload = body.get("input")
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or len(messages) != 1:
        raise Invalid("input.messages must hold exactly one message")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise Invalid("the message's role must be user")
    content = message.get("content")
    if not isinstance(content, list):
        raise Invalid("the message's content must be an array")
    texts: list[Any] = []
    images: list[Any] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1 or not ({"text", "image"} & set(item)):
            raise Invalid("each content item must be one {text} or one {image}")
        (texts if "text" in item else images).append(next(iter(item.values())))
    if len(texts) != 1:
        raise Invalid("content must contain exactly one text object")
    prompt = texts[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("the text must be a non-empty string")
    if len(images) > MAX_INPUT_IMAGES:
        raise Invalid(f"content may contain at most {MAX_INPUT_IMAGES} images")
    return prompt[:MAX_PROMPT_CHARS], [_decode_input(i, v) for i, v in enumerate(images)]


def _preset_size(pixels: int, ratio: float) -> tuple[int, int]:
    def snap(side: float) -> int:
        return max(16, int(side // 16) * 16)

    return snap(math.sqrt(pixels * ratio)), snap(math.sqrt(pixels / ratio))


def _size(model: WanModel, size: Any, inputs: list[tuple[int, int]]) -> tuple[int, int]:
    limit = _MAX_EDIT_PIXELS if inputs else model.max_t2i_pixels
    if size is None:
        size = "2K"
    if not isinstance(size, str):
        raise Invalid("parameters.size must be a string")
    if size in _PRESETS:
        if _PRESETS[size] > limit:
            raise Invalid(f"size {size} is not supported by {model.name} for this input")
        # Edits keep the proportions of the last input image (UNCERTAIN upstream).
        ratio = inputs[-1][0] / inputs[-1][1] if inputs else 1.0
        return _preset_size(_PRESETS[size], ratio)
    match = _CUSTOM_SIZE.match(size)
    if not match:
        raise Invalid("parameters.size must be 1K, 2K, 4K or width*height, e.g. 1024*1024")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1 or not MIN_PIXELS <= width * height <= limit:
        raise Invalid(
            f"parameters.size {size}: width*height must be between {MIN_PIXELS} and {limit}"
        )
    if max(width, height) / min(width, height) > _MAX_RATIO:
        raise Invalid(f"parameters.size {size}: the aspect ratio must be within 1:8 to 8:1")
    return width, height


def validate(body: Any) -> Job:
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise Invalid("Model is required", "BadRequest.EmptyModel")
    model = MODELS.get(name)
    if model is None:
        raise Invalid("Model not exist.")
    prompt, inputs = _content(body)
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise Invalid("parameters must be an object")
    for key in ("watermark", "thinking_mode", "enable_sequential"):
        if key in parameters and not isinstance(parameters[key], bool):
            raise Invalid(f"parameters.{key} must be a boolean")
    sequential = parameters.get("enable_sequential") is True
    n = _int_param(parameters, "n")
    n = 1 if n is None else n
    most = 12 if sequential else 4
    if not 1 <= n <= most:
        raise Invalid(f"parameters.n must be between 1 and {most}")
    seed = _int_param(parameters, "seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Invalid(f"parameters.seed must be between 0 and {MAX_SEED}")
    width, height = _size(model, parameters.get("size"), inputs)
    return Job(model.name, prompt, width, height, n, seed, len(inputs))
