"""OpenAI's output parameters: honoured where the model can, else reported or refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.domain.errors import InvalidArgument
from server.domain.imaging import convert, inspect
from server.domain.output_options import UnsupportedPolicy, plan_output
from server.domain.requests import Operation, OutputOptions
from tests.support.images import png

REPORT, REFUSE = UnsupportedPolicy.REPORT, UnsupportedPolicy.REFUSE


def test_defaults_are_honoured_silently() -> None:
    plan = plan_output("m", Operation.GENERATE, OutputOptions(), REFUSE)
    assert (plan.mime_type, plan.quality, plan.output_format, plan.background) == (
        None,
        "auto",
        "png",
        "opaque",
    )
    assert plan.warnings == ()


def test_format_and_compression_are_honoured() -> None:
    plan = plan_output(
        "m", Operation.GENERATE, OutputOptions(output_format="webp", output_compression=40), REFUSE
    )
    assert (plan.mime_type, plan.compression, plan.output_format) == ("image/webp", 40, "webp")


def test_transparency_is_honoured_where_the_operation_makes_it() -> None:
    options = OutputOptions(background="transparent")
    plan = plan_output("m", Operation.REMOVE_BACKGROUND, options, REFUSE)
    assert plan.background == "transparent" and plan.warnings == ()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (OutputOptions(quality="high"), "quality"),
        (OutputOptions(moderation="low"), "moderation"),
        (OutputOptions(partial_images=2), "partial_images"),
        (OutputOptions(background="transparent"), "background"),
        (OutputOptions(output_compression=50), "output_compression"),
    ],
)
def test_what_a_model_cannot_honour_is_reported_or_refused(
    options: OutputOptions, field: str
) -> None:
    plan = plan_output("acme/pix", Operation.GENERATE, options, REPORT)
    (warning,) = plan.warnings
    assert warning.startswith(f"{field}=") and "not honoured" in warning
    with pytest.raises(InvalidArgument) as caught:
        plan_output("acme/pix", Operation.GENERATE, options, REFUSE)
    assert [v.field for v in caught.value.violations] == [field]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (OutputOptions(quality="ultra"), "quality"),
        (OutputOptions(output_format="gif"), "output_format"),
        (OutputOptions(output_compression=101), "output_compression"),
        (OutputOptions(background="green"), "background"),
        (OutputOptions(moderation="none"), "moderation"),
        (OutputOptions(partial_images=4), "partial_images"),
        (OutputOptions(user="u" * 257), "user"),
    ],
)
def test_a_value_outside_its_set_is_invalid_whatever_the_policy(
    options: OutputOptions, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_output("m", Operation.GENERATE, options, REPORT)
    assert [v.field for v in caught.value.violations] == [field]


@pytest.mark.parametrize("mime", ["image/jpeg", "image/webp", "image/png"])
def test_convert_re_encodes_keeping_the_size(mime: str) -> None:
    out = convert(png(120, 80), mime, compression=50)
    info = inspect(out)
    assert (info.mime_type, info.width, info.height) == (mime, 120, 80)


def test_jpeg_flattens_transparency_onto_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    with Image.open(io.BytesIO(convert(buffer.getvalue(), "image/jpeg"))) as image:
        assert image.mode == "RGB" and min(image.getpixel((4, 4))) > 240  # type: ignore[arg-type]
