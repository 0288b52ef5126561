from __future__ import annotations

import io

import pytest
from PIL import Image

from server.domain.catalogue import Catalogue
from server.domain.errors import CapabilityNotSupported, InvalidArgument
from server.domain.requests import EditRequest, GenerateRequest, Operation, Size
from server.domain.validation import validate
from tests.support.images import alpha_mask, png

CATALOGUE = Catalogue.load()
KONTEXT = CATALOGUE.get("azure/flux-kontext-pro")
INPAINT = CATALOGUE.get("bedrock/stability-inpaint")


def fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


def test_defaults_apply() -> None:
    valid = validate(GenerateRequest(model=KONTEXT.name, prompt=" a fox "), KONTEXT)
    assert (valid.size, valid.n, valid.prompt) == (Size(1024, 1024), 1, "a fox")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"n": 5}, "n"),
        ({"n": -1}, "n"),
        ({"size": "2048x2048"}, "size"),
        ({"size": "big"}, "size"),
        ({"request_id": "r" * 129}, "request_id"),
    ],
)
def test_each_bad_field_is_named(changes: dict[str, object], field: str) -> None:
    request = GenerateRequest(model=KONTEXT.name, prompt="a fox")
    request = GenerateRequest(**{**request.__dict__, **changes})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        validate(request, KONTEXT)
    assert fields(caught.value) == [field]
    assert not isinstance(caught.value, CapabilityNotSupported)


def test_all_violations_are_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(GenerateRequest(model=KONTEXT.name, prompt="", n=9, size="1x1"), KONTEXT)
    assert sorted(fields(caught.value)) == ["n", "prompt", "size"]


def test_operation_the_model_lacks_is_capability_not_supported() -> None:
    request = EditRequest(
        model=KONTEXT.name, prompt="x", images=(png(),), operation=Operation.UPSCALE
    )
    with pytest.raises(CapabilityNotSupported) as caught:
        validate(request, KONTEXT)
    assert fields(caught.value) == ["operation"]
    assert caught.value.metadata == {"model": KONTEXT.name, "operation": "upscale"}


def test_edit_needs_readable_images() -> None:
    request = EditRequest(model=KONTEXT.name, prompt="x", images=(png(), b"not an image"))
    with pytest.raises(InvalidArgument) as caught:
        validate(request, KONTEXT)
    assert fields(caught.value) == ["images[1]"]
    with pytest.raises(InvalidArgument) as caught:
        validate(EditRequest(model=KONTEXT.name, prompt="x", images=()), KONTEXT)
    assert fields(caught.value) == ["images"]


def test_a_mask_is_never_silently_ignored() -> None:
    request = EditRequest(model=KONTEXT.name, prompt="x", images=(png(),), mask=alpha_mask(64, 64))
    with pytest.raises(InvalidArgument) as caught:
        validate(request, KONTEXT)
    assert fields(caught.value) == ["mask"]


def test_inpaint_requires_a_matching_mask_and_converts_alpha_to_white() -> None:
    base = EditRequest(
        model=INPAINT.name, prompt="a scarf", images=(png(64, 64),), operation=Operation.INPAINT
    )
    with pytest.raises(InvalidArgument) as caught:
        validate(base, INPAINT)
    assert fields(caught.value) == ["mask"]
    mismatched = EditRequest(**{**base.__dict__, "mask": alpha_mask(32, 32)})
    with pytest.raises(InvalidArgument) as caught:
        validate(mismatched, INPAINT)
    assert "32x32" in caught.value.violations[0].description

    valid = validate(EditRequest(**{**base.__dict__, "mask": alpha_mask(64, 64)}), INPAINT)
    assert valid.mask is not None
    with Image.open(io.BytesIO(valid.mask)) as mask:
        assert mask.mode == "L"
        assert mask.getpixel((0, 0)) == 255  # transparent in the alpha mask: edit here
        assert mask.getpixel((63, 0)) == 0


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (Size(1024, 1024), "1:1"),
        (Size(1792, 1024), "16:9"),
        (Size(1024, 1792), "9:16"),
        (Size(2048, 1024), "16:9"),  # 2:1 is nearer 16:9 than 21:9 in log distance
        (Size(1200, 1000), "5:4"),
    ],
)
def test_sizes_snap_to_the_nearest_aspect_ratio(size: Size, expected: str) -> None:
    ratios = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
    assert size.nearest_ratio(ratios) == expected
