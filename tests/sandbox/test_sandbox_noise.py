"""`[sandbox:noise=...]`: incompressible answers of a chosen size, for benchmarks."""

from __future__ import annotations

import base64
import io
import zlib

import httpx
import pytest
from PIL import Image

from server.sandbox.azure_flux import SANDBOX_AZURE_FLUX_KEY
from server.sandbox.render import MAX_NOISE_BYTES, noise_png_of_size, noise_size
from server.sandbox.server import SandboxServer

KIB, MIB = 1024, 1024 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3mb", 3 * MIB),
        ("3MiB", 3 * MIB),
        ("1.5mb", int(1.5 * MIB)),
        ("64kb", 64 * KIB),
        ("4096", 4096),
        ("0", None),
        ("lots", None),
        ("-1mb", None),
        (f"{MAX_NOISE_BYTES + 1}", None),
    ],
)
def test_noise_sizes(text: str, expected: int | None) -> None:
    assert noise_size(text) == expected


def test_noise_png_is_at_least_the_size_asked_and_cached() -> None:
    data = noise_png_of_size(64 * KIB)
    assert 64 * KIB <= len(data) < 64 * KIB + 4 * KIB
    assert len(zlib.compress(data)) > 0.95 * len(data)
    assert noise_png_of_size(64 * KIB) is data


async def test_flux_emulator_answers_noise_whatever_the_size_asked() -> None:
    async with (
        SandboxServer("127.0.0.1", 0) as sandbox,
        httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client,
    ):
        response = await client.post(
            "/providers/blackforestlabs/v1/flux-2-pro",
            params={"api-version": "preview"},
            headers={"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"},
            json={
                "prompt": "a fox [sandbox:noise=64kb]",
                "width": 1024,
                "height": 1024,
                "output_format": "png",
            },
        )
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    assert data == noise_png_of_size(64 * KIB)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
    assert response.json()["request_meta"]["cost"] > 0
