"""The floor under the gRPC target cell: the same work with nothing but the parts.

    python -m benchmarks.cell grpc-url --latency 500 --noise 3mb -c 32 --server floor-lean

Stands in for `image-service serve` in `benchmarks.processes.Stack`, reading
the same `IMAGE_SERVICE_*` variables, and answers `Generate` only:

- `sleep`: grpc.aio waits the upstream latency the prompt names
  (`[sandbox:latency=...]`) and answers one URL. No upstream call, no
  image: what a unary call through grpc.aio costs by itself.
- `lean`: the call the Azure FLUX backend makes, through the service's
  own HTTP client (`new_client` over `Http1Transport`), the image taken
  from the answer as the backend takes it (`loads_with_base64`,
  `b64decode`) and written with the service's `LocalDirectoryStore`, then
  one URL answered. No validation, orchestrator, retries, measuring,
  record, pricing or interceptors.

Both run on uvloop, as the service does. The difference between a cell
measured on `lean` and on the service is what the service's own per-call
layers cost; `lean` itself is what the target has to fit under with these
parts on this machine (BENCHMARKS.md, round 8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import uvloop
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from benchmarks.clients import MAX_MESSAGE_BYTES
from server.providers._shared.base64_json import b64decode, loads_with_base64
from server.providers._shared.http import new_client
from server.storage.local import LocalDirectoryStore

MODES = ("sleep", "lean")
# What the Azure FLUX backend sends for azure/flux-2-pro at 1024x1024.
FLUX_BODY = {
    "model": "FLUX.2-pro",
    "output_format": "png",
    "width": 1024,
    "height": 1024,
    "num_images": 1,
}
_LATENCY = re.compile(r"\[sandbox:latency=([0-9.]+)\]")


class FloorServicer(pb_grpc.ImageServiceServicer):
    """`Generate` and nothing else, doing only what `mode` names."""

    def __init__(self, mode: str, endpoint: str, api_key: str, store: LocalDirectoryStore):
        self._mode = mode
        self._url = f"{endpoint.rstrip('/')}/providers/blackforestlabs/v1/flux-2-pro"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._store = store
        self._http = new_client(timeout_s=60)

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.Generation:
        key = f"images/{uuid.uuid4().hex}.png"
        if self._mode == "sleep":
            latency = _LATENCY.search(request.prompt)
            await asyncio.sleep(float(latency.group(1)) if latency else 0.0)
        else:
            response = await self._http.post(
                self._url,
                params={"api-version": "preview"},
                headers=self._headers,
                json={**FLUX_BODY, "prompt": request.prompt},
            )
            response.raise_for_status()
            answer = loads_with_base64(response.content, "b64_json")
            image = b64decode(answer["data"][0]["b64_json"])
            await self._store.put(key, image, "image/png")
        return pb.Generation(
            generation_id=uuid.uuid4().hex,
            model=request.model,
            n=1,
            images=[pb.Image(url=self._store.url_for(key), mime_type="image/png", stored=True)],
        )


async def serve(mode: str, host: str, port: int) -> None:
    store = LocalDirectoryStore(
        Path(os.environ["IMAGE_SERVICE_LOCAL_STORAGE_DIR"]),
        os.environ["IMAGE_SERVICE_LOCAL_PUBLIC_BASE_URL"],
    )
    servicer = FloorServicer(
        mode,
        os.environ["IMAGE_SERVICE_AZURE_FLUX_ENDPOINT"],
        os.environ["IMAGE_SERVICE_AZURE_FLUX_API_KEY"],
        store,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_ImageServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    # The line `Stack` waits for, as `image-service serve` prints it.
    print(f"serving gRPC on {host}:{bound} (floor: {mode})", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.mode, args.host, args.port))


if __name__ == "__main__":
    main()
