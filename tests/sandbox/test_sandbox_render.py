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
