"""The README's walkthrough, for real: `image-service dev` in one process,
the CLI client in another, PNGs saved to disk and fetched over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from server.auth.admin import DEV_KEY
from tests.support.images import png, size_of

CLI = str(pathlib.Path(sys.executable).parent / "image-service")
READY = re.compile(r"grpc=127\.0\.0\.1:(\d+) http=(http://127\.0\.0\.1:\d+)")


@dataclass
class Dev:
    grpc_target: str
    http_url: str
    workdir: pathlib.Path


async def _run(*args: str, cwd: pathlib.Path) -> tuple[int, str, str]:
    # As the README says: the dev server prints its key, the CLI reads it
    # from IMAGE_SERVICE_API_KEY.
    env = {**os.environ, "IMAGE_SERVICE_API_KEY": DEV_KEY}
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


# One `image-service dev` for the module: starting it is most of these tests'
# time, and each test writes under its own names in the work directory.
@pytest.fixture(scope="module")
async def dev(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dev]:
    tmp_path = tmp_path_factory.mktemp("dev")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SERVICE_")}
    process = await asyncio.create_subprocess_exec(
        CLI,
        "dev",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = READY.search(line)
        assert match, f"no ready line: {line!r}"
        yield Dev(f"127.0.0.1:{match.group(1)}", match.group(2), tmp_path)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_generate_saves_real_pngs_whose_urls_open(dev: Dev) -> None:
    out_dir = dev.workdir / "out"
    code, out, err = await _run(
        "generate",
        "--target",
        dev.grpc_target,
        "--model",
        "azure/flux-kontext-pro",
        "--prompt",
        "a red fox",
        "-n",
        "2",
        "--out",
        str(out_dir),
        cwd=dev.workdir,
    )
    assert code == 0, err
    saved = sorted(out_dir.glob("gen-*.png"))
    assert len(saved) == 2
    assert all(size_of(p.read_bytes()) == (1024, 1024) for p in saved)
    urls = re.findall(r"http://127\.0\.0\.1:\d+/media/images/\S+\.png", out)
    assert len(urls) == 2
    async with httpx.AsyncClient() as http:
        for url in urls:
            response = await http.get(url)
            assert response.status_code == 200 and response.content[:4] == b"\x89PNG"

    generation_id = re.search(r"gen-[0-9a-f]{16}", out)
    assert generation_id
    code, out, err = await _run(
        "get", "--target", dev.grpc_target, generation_id.group(0), "--json", cwd=dev.workdir
    )
    assert code == 0, err
    assert json.loads(out)["generation_id"] == generation_id.group(0)


async def test_edit_models_and_errors_through_the_cli(dev: Dev) -> None:
    source = dev.workdir / "photo.png"
    source.write_bytes(png(300, 200))
    code, out, err = await _run(
        "edit",
        "--target",
        dev.grpc_target,
        "--model",
        "azure/flux-kontext-pro",
        "--image",
        str(source),
        "--prompt",
        "add a rainbow",
        "--out",
        str(dev.workdir / "edits"),
        cwd=dev.workdir,
    )
    assert code == 0, err
    assert len(list((dev.workdir / "edits").glob("*.png"))) == 1

    code, out, err = await _run("models", "--target", dev.grpc_target, cwd=dev.workdir)
    assert code == 0, err
    assert "azure/flux-kontext-pro" in out and "google/imagen-4.0" in out

    code, out, err = await _run(
        "generate",
        "--target",
        dev.grpc_target,
        "--model",
        "azure/flux-kontext-pro",
        "--prompt",
        "x",
        "--size",
        "333x333",
        cwd=dev.workdir,
    )
    assert code == 2
    assert "INVALID_ARGUMENT" in err and "size" in err


async def test_image_services_edits_take_their_parameters(dev: Dev) -> None:
    source = dev.workdir / "photo.png"
    source.write_bytes(png(300, 200))
    style = dev.workdir / "style.png"
    style.write_bytes(png(128, 128, color=(10, 200, 10)))
    common = ("edit", "--target", dev.grpc_target, "--image", str(source), "--json")

    code, out, err = await _run(
        *common,
        "--model",
        "bedrock/stability-outpaint",
        "--operation",
        "outpaint",
        "--left",
        "50",
        "--down",
        "20",
        "--creativity",
        "0.3",
        cwd=dev.workdir,
    )
    assert code == 0, err
    assert '"width": 350' in out and '"height": 220' in out

    code, out, err = await _run(
        *common,
        "--model",
        "bedrock/stability-style-transfer",
        "--operation",
        "style_transfer",
        "--style-image",
        str(style),
        "--style-strength",
        "0.8",
        cwd=dev.workdir,
    )
    assert code == 0, err
    assert '"width": 300' in out

    code, out, err = await _run(
        *common,
        "--model",
        "bedrock/stability-search-replace",
        "--operation",
        "search_replace",
        "--prompt",
        "a dog",
        cwd=dev.workdir,
    )
    assert code == 2
    assert "INVALID_ARGUMENT" in err and "search_prompt" in err


async def test_output_parameters_reach_the_service(dev: Dev) -> None:
    out_dir = dev.workdir / "out-jpeg"
    code, _, err = await _run(
        "generate",
        "--target",
        dev.grpc_target,
        "--model",
        "azure/flux-2-pro",
        "--prompt",
        "a red fox",
        "--output-format",
        "jpeg",
        "--output-compression",
        "80",
        "--out",
        str(out_dir),
        cwd=dev.workdir,
    )
    assert code == 0, err
    saved = [p for p in out_dir.iterdir() if p.name.startswith("gen-")]
    assert len(saved) == 1 and saved[0].read_bytes()[:2] == b"\xff\xd8"  # re-encoded as JPEG
    # A value outside the parameter's set is the caller's mistake: exit 2.
    code, _, err = await _run(
        "generate",
        "--target",
        dev.grpc_target,
        "--model",
        "azure/flux-2-pro",
        "--prompt",
        "a red fox",
        "--background",
        "plaid",
        cwd=dev.workdir,
    )
    assert code == 2 and "background" in err
