"""Placeholder and noise images."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from server.sandbox.render import noise_png, render_image, render_png


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("size", [(1024, 1024), (1792, 1024), (64, 48), (2048, 2048)])
def test_png_has_the_exact_size(size: tuple[int, int]) -> None:
    image = open_image(render_png(*size, "a red fox", label="model 1024x1024"))
    assert (image.format, image.size) == ("PNG", size)


def test_text_is_drawn_and_background_follows_the_text() -> None:
    fox = open_image(render_png(512, 512, "a red fox"))
    owl = open_image(render_png(512, 512, "a grey owl"))
    # Same corner colour for the same text, different for another text.
    assert fox.getpixel((256, 500)) == open_image(render_png(512, 512, "a red fox")).getpixel(
        (256, 500)
    )
    assert fox.getpixel((256, 500)) != owl.getpixel((256, 500))
    # The text region has ink on it: more than one colour.
    assert len(fox.crop((0, 0, 512, 100)).getcolors(maxcolors=100_000) or []) > 2


def test_long_prompts_are_wrapped_and_truncated() -> None:
    prompt = "word " * 2000 + "unbrokenwordthatislongerthananylinecouldpossiblyhold" * 5
    image = open_image(render_png(256, 256, prompt, label="x"))
    assert image.size == (256, 256)


def test_jpeg_output() -> None:
    image = open_image(render_image(300, 200, "fox", image_format="jpeg"))
    assert (image.format, image.size) == ("JPEG", (300, 200))


def test_large_render_is_fast() -> None:
    started = time.perf_counter()
    render_png(2048, 2048, "a red fox " * 50, label="big")
    assert time.perf_counter() - started < 1.0


def test_noise_is_deterministic_and_incompressible() -> None:
    data = noise_png(256, 128, seed=1)
    assert open_image(data).size == (256, 128)
    assert data == noise_png(256, 128, seed=1)
    assert data != noise_png(256, 128, seed=2)
    assert len(data) >= 256 * 128 * 3


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        render_png(0, 10, "x")
    with pytest.raises(ValueError):
        noise_png(10, 0, seed=1)


class _CountingFont:
    """A font that counts how many characters it was asked to measure."""

    def __init__(self) -> None:
        from server.sandbox.render import _font

        self._font = _font(32)
        self.measured = 0

    def getlength(self, text: str) -> float:
        self.measured += len(text)
        return float(self._font.getlength(text))


@pytest.mark.parametrize(
    "text",
    [
        "x" * 4000,  # one unbroken word, many lines long
        ("antidisestablishment" * 20 + " ") * 10,
        "a red fox " * 400,
    ],
    ids=["unbroken", "long-words", "short-words"],
)
def test_wrap_measures_each_character_a_bounded_number_of_times(text: str) -> None:
    # The quadratic wrap measured every candidate line and every shorter
    # prefix of an over-long word: ~10^7 characters for 4,000 unbroken ones,
    # minutes of CPU on the render threads. Linear means a bounded work per
    # character, whatever the text.
    from server.sandbox.render import _wrap

    font = _CountingFont()
    lines = _wrap(text, font, 300.0)  # type: ignore[arg-type]
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert font.measured <= 2 * len(text)
    assert all(font._font.getlength(line) <= 300.0 * 1.05 for line in lines)


def test_wrap_stops_after_the_lines_that_fit() -> None:
    from server.sandbox.render import _wrap

    font = _CountingFont()
    assert len(_wrap("word " * 100_000, font, 300.0, 5)) == 6  # type: ignore[arg-type]
    assert font.measured < 100
