"""A call → the InvokeModel JSON body, per operation.

- generate (SD3.5 Large, Stable Image Core, Stable Image Ultra): `prompt`,
  `aspect_ratio`, `seed`, `output_format`, and for SD3.5 `mode:
  "text-to-image"`. The upstream takes no pixel sizes, only a ratio enum, so
  the requested size becomes the nearest of `ASPECT_RATIOS`.
- remove_background: `image`, `output_format` (PNG, to keep the alpha).
- inpaint: `image`, `mask` (the domain's grayscale PNG, white = repaint),
  `prompt`, `grow_mask`, `seed`, `output_format`.
- upscale: the Image Services tool the model id names. Fast upscale takes
  `image` only (4x); conservative and creative upscale also need `prompt`,
  so an upscale without one is refused here rather than by the upstream;
  both take `creativity` (creative 0.1 to 0.5, conservative 0.2 to 0.5,
  checked here).
- erase_object: `image`, `mask`, `grow_mask`, `seed`.
- outpaint: `image`, `left`/`right`/`up`/`down`, and `prompt`, `creativity`
  when given.
- search_replace: `image`, `prompt`, `search_prompt`; search_recolor:
  `image`, `prompt`, `select_prompt`.
- control_sketch, control_structure: `image`, `prompt`, `control_strength`.
- style_guide: `image`, `prompt`, `fidelity`, and `aspect_ratio` from the
  requested size (none: the upstream's 1:1).
- style_transfer: `init_image` (the input), `style_image`, and `prompt`,
  `style_strength`, `composition_fidelity`, `change_strength` when given.

Every Image Services body but background removal and fast upscale carries a
`seed`. An optional parameter the caller left unset is not sent, so the
upstream's default applies.
"""

from __future__ import annotations

import json
from typing import Any

from server.domain.errors import (
    CapabilityNotSupported,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers._shared.base64_json import b64encode_text

# Text-to-image ratios of SD3.5 Large, Stable Image Core and Ultra.
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
MAX_SEED = 4_294_967_294
DEFAULT_GROW_MASK = 5
# The upscalers' creativity ranges (narrower than the API's 0 to 1); fast
# upscale takes none.
UPSCALE_CREATIVITY = {"creative": (0.1, 0.5), "conservative": (0.2, 0.5)}


def aspect_ratio_for(size: Size) -> str:
    """The entry of `ASPECT_RATIOS` closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def upstream_seed(seed: int | None) -> int:
    """`seed` in the upstream's range; 0 (the upstream's "random") when unset."""
    return 0 if seed is None else seed % (MAX_SEED + 1)


def _b64(data: bytes) -> str:
    return b64encode_text(data)


def _one_input_image(call: UpstreamCall) -> str:
    if len(call.images) != 1:
        raise InvalidArgument(
            [FieldViolation("images", f"{call.model.name} takes exactly one input image")]
        )
    return _b64(call.images[0])


def _upscaler(model_id: str) -> str:
    for kind in ("conservative", "creative", "fast"):
        if f"{kind}-upscale" in model_id:
            return kind
    raise ImageServiceError(f"Catalogue entry {model_id!r} names no known Stability upscaler.")


def _upscale_body(call: UpstreamCall) -> dict[str, Any]:
    body: dict[str, Any] = {"image": _one_input_image(call), "output_format": "png"}
    kind = _upscaler(call.model.upstream_id)
    creativity = call.options.creativity
    violations: list[FieldViolation] = []
    if kind != "fast" and not call.prompt.strip():
        violations.append(
            FieldViolation("prompt", f"is required by {call.model.name} (it guides the upscale)")
        )
    if creativity is not None:
        bounds = UPSCALE_CREATIVITY.get(kind)
        if bounds is None:
            violations.append(FieldViolation("creativity", f"is not taken by {call.model.name}"))
        elif not bounds[0] <= creativity <= bounds[1]:
            violations.append(
                FieldViolation(
                    "creativity",
                    f"must be between {bounds[0]} and {bounds[1]} for {call.model.name}",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    if kind == "fast":
        return body
    body["prompt"] = call.prompt
    body["seed"] = upstream_seed(call.seed)
    if creativity is not None:
        body["creativity"] = creativity
    return body


def _given(**values: object) -> dict[str, object]:
    """`values` without the unset ones (None, or an empty prompt). A 0.0
    strength is the caller's choice, so it is sent."""
    return {key: value for key, value in values.items() if value is not None and value != ""}


def _services_body(call: UpstreamCall) -> dict[str, Any] | None:
    """The body of the Image Services edits added beside inpaint and upscale;
    None for another operation. The domain has checked which parameters the
    operation takes, and that the required ones are there."""
    options = call.options
    operation = call.operation
    seed = upstream_seed(call.seed)
    if operation is Operation.ERASE_OBJECT:
        if call.mask is None:
            raise InvalidArgument([FieldViolation("mask", "is required for erase_object")])
        return {
            "image": _one_input_image(call),
            "mask": _b64(call.mask),
            "grow_mask": DEFAULT_GROW_MASK,
            "seed": seed,
            "output_format": "png",
        }
    if operation is Operation.STYLE_TRANSFER:
        if options.style_image is None:
            raise InvalidArgument([FieldViolation("style_image", "is required")])
        return {
            "init_image": _one_input_image(call),
            "style_image": _b64(options.style_image),
            **_given(
                prompt=call.prompt,
                style_strength=options.style_strength,
                composition_fidelity=options.composition_fidelity,
                change_strength=options.change_strength,
            ),
            "seed": seed,
            "output_format": "png",
        }
    per_operation: dict[Operation, dict[str, object]] = {
        Operation.OUTPAINT: {
            # The sides not extended are left out (the upstream's 0).
            **{side: pixels for side, pixels in options.margins().items() if pixels},
            **_given(prompt=call.prompt, creativity=options.creativity),
        },
        Operation.SEARCH_REPLACE: {"prompt": call.prompt, "search_prompt": options.search_prompt},
        Operation.SEARCH_RECOLOR: {"prompt": call.prompt, "select_prompt": options.select_prompt},
        Operation.CONTROL_SKETCH: {
            "prompt": call.prompt,
            **_given(control_strength=options.control_strength),
        },
        Operation.CONTROL_STRUCTURE: {
            "prompt": call.prompt,
            **_given(control_strength=options.control_strength),
        },
        Operation.STYLE_GUIDE: {
            "prompt": call.prompt,
            **_given(
                fidelity=options.fidelity,
                aspect_ratio=aspect_ratio_for(call.size) if call.size else None,
            ),
        },
    }
    parameters = per_operation.get(operation)
    if parameters is None:
        return None
    return {"image": _one_input_image(call), **parameters, "seed": seed, "output_format": "png"}


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The InvokeModel JSON body for `call`; raises for what the model cannot do."""
    if call.count != 1:
        raise ImageServiceError("Stability models on Bedrock produce one image per call.")
    operation = call.operation
    if operation is Operation.GENERATE:
        body: dict[str, Any] = {
            "prompt": call.prompt,
            "aspect_ratio": aspect_ratio_for(call.size or Size(1024, 1024)),
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
        if "sd3" in call.model.upstream_id:
            body["mode"] = "text-to-image"
        return body
    if operation is Operation.REMOVE_BACKGROUND:
        return {"image": _one_input_image(call), "output_format": "png"}
    if operation is Operation.INPAINT:
        if call.mask is None:
            raise InvalidArgument([FieldViolation("mask", "is required for inpaint")])
        return {
            "image": _one_input_image(call),
            "mask": _b64(call.mask),
            "prompt": call.prompt,
            "grow_mask": DEFAULT_GROW_MASK,
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
    if operation is Operation.UPSCALE:
        return _upscale_body(call)
    services = _services_body(call)
    if services is not None:
        return services
    raise CapabilityNotSupported(
        [FieldViolation("operation", f"{call.model.name} cannot {operation.value} on Bedrock")]
    )


def encoded_body(call: UpstreamCall) -> bytes:
    """`request_body(call)` as compact JSON bytes."""
    return json.dumps(request_body(call), separators=(",", ":")).encode()
