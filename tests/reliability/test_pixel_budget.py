"""Edit inputs are checked against the pixel budget on their header alone.

A 300 KB PNG may declare 9000x9000 pixels: decoded, 324 MB. The budget is
checked before any decode, and a header past Pillow's own bomb limit is a
field violation, not an unhandled `DecompressionBombError`.
"""

from __future__ import annotations

import pytest

from reliability.inputs import compressed_mask, png_declaring
from server.domain.catalogue import Catalogue
from server.domain.errors import InvalidArgument
from server.domain.imaging import (
    MAX_INPUT_PIXELS,
    ImageTooLarge,
    inspect,
    mask_to_grayscale,
)
from server.domain.requests import EditRequest, Operation
from server.domain.validation import validate
from tests.support.images import alpha_mask, png

INPAINT = Catalogue.load().get("bedrock/stability-inpaint")


def test_inspect_reads_the_header_only_and_applies_the_budget() -> None:
    bomb = png_declaring(9000, 9000)
    assert len(bomb) < 200_000
    # Produced images are measured without a budget...
    assert (inspect(bomb).width, inspect(bomb).height) == (9000, 9000)
    # ...caller inputs with one.
    with pytest.raises(ImageTooLarge, match="9000x9000"):
        inspect(bomb, max_pixels=MAX_INPUT_PIXELS)


@pytest.mark.parametrize("side", [50_000, 20_000])
def test_past_pillows_bomb_limits_is_too_large_not_a_crash(side: int) -> None:
    # 50000^2 is past twice Pillow's MAX_IMAGE_PIXELS (DecompressionBombError);
    # 20000^2 is past it once (a DecompressionBombWarning).
    with pytest.raises(ImageTooLarge):
        inspect(png_declaring(side, side))
    with pytest.raises(ImageTooLarge):
        mask_to_grayscale(png_declaring(side, side))


def test_mask_over_the_budget_is_refused_before_decoding() -> None:
    # Decoding this would allocate 324 MB for the RGBA alone.
    with pytest.raises(ImageTooLarge, match="9000x9000"):
        mask_to_grayscale(png_declaring(9000, 9000))


def test_mask_within_the_budget_still_converts() -> None:
    gray, width, height = mask_to_grayscale(alpha_mask(64, 32))
    assert (width, height) == (64, 32)
    assert inspect(gray).mime_type == "image/png"
    side = 512
    gray, width, height = mask_to_grayscale(compressed_mask(side, side))
    assert (width, height) == (side, side)


@pytest.mark.parametrize("where", ["images[0]", "mask"])
@pytest.mark.parametrize("side", [9000, 50_000])
def test_validation_names_the_field(where: str, side: int) -> None:
    bomb = png_declaring(side, side)
    request = EditRequest(
        model=INPAINT.name,
        prompt="a fox",
        operation=Operation.INPAINT,
        images=(bomb if where == "images[0]" else png(64, 64),),
        mask=bomb if where == "mask" else alpha_mask(64, 64),
    )
    with pytest.raises(InvalidArgument) as caught:
        validate(request, INPAINT)
    violations = {v.field: v.description for v in caught.value.violations}
    assert where in violations
    assert "pixels" in violations[where]


def test_corrupt_mask_body_is_unreadable_not_a_crash() -> None:
    data = bytearray(alpha_mask(64, 64))
    data[60:80] = b"\xff" * 20  # inside the IDAT
    with pytest.raises(ValueError):
        mask_to_grayscale(bytes(data))
