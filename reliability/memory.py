"""Peak memory of one decompression-bomb edit, and of the largest mask the
pixel budget lets through, measured as the gRPC server's RSS high-water
mark (`VmHWM`, reset before each request).

The bound (server/domain/imaging.py): only an inpaint mask is ever decoded,
after its header passed the budget of MAX_INPUT_PIXELS (4096x4096), at
MASK_DECODE_BYTES_PER_PIXEL (6) bytes a pixel: 96 MiB, plus the PNG
re-encode of the 1-byte result.
"""

from __future__ import annotations

import asyncio
import io

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from PIL import Image

from benchmarks.procstat import peak_rss_mib, reset_peak, rss_mib
from reliability.inputs import compressed_mask, png_declaring
from reliability.load import CHANNEL_OPTIONS
from reliability.stack import Services
from server.domain.imaging import MASK_DECODE_BYTES_PER_PIXEL, MAX_INPUT_PIXELS

MIB = 1024 * 1024
BOUND_MIB = MASK_DECODE_BYTES_PER_PIXEL * MAX_INPUT_PIXELS / MIB


def _plain_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


async def _peak_of(services: Services, request: pb.EditRequest) -> tuple[str, float]:
    assert services.server is not None
    pid = services.server.pid
    await asyncio.sleep(0.2)  # let the previous request's memory settle
    before = rss_mib(pid)
    reset_peak(pid)
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]
        try:
            await stub.Edit(request, timeout=60)
            outcome = "OK"
        except grpc.aio.AioRpcError as error:
            outcome = error.code().name
    return outcome, peak_rss_mib(pid) - before


async def bomb_edits(services: Services) -> dict[str, str]:
    """The memory rows of the table."""
    side = int(MAX_INPUT_PIXELS**0.5)
    rows: dict[str, str] = {}
    for label, image, mask in (
        (
            "9000x9000 RGBA mask (315 KB-style bomb)",
            png_declaring(64, 64),
            png_declaring(9000, 9000),
        ),
        ("50000x50000 image", png_declaring(50_000, 50_000), None),
        (
            f"{side}x{side} RGBA mask (the budget's largest: decoded, then over Bedrock's limit)",
            _plain_png(side, side),
            compressed_mask(side, side),
        ),
        (
            "3072x3072 RGBA mask (Bedrock's largest inpaint, a real edit)",
            _plain_png(3072, 3072),
            compressed_mask(3072, 3072),
        ),
    ):
        request = pb.EditRequest(
            model="bedrock/stability-inpaint",
            prompt="a hat",
            images=[image],
            operation=pb.OPERATION_INPAINT,
        )
        if mask is not None:
            request.mask = mask
        outcome, peak = await _peak_of(services, request)
        rows[f"one edit, {label}"] = f"{outcome}, server peak RSS +{peak:.0f} MiB"
    rows["documented bound of one mask decode"] = (
        f"{MASK_DECODE_BYTES_PER_PIXEL} B/pixel x {MAX_INPUT_PIXELS} pixels = {BOUND_MIB:.0f} MiB"
    )
    return rows
