"""The calls the load driver makes, each checking the answer it gets.

Every call asks the FLUX model for noise PNGs through prompt directives
(`prompt`), so the upstream's answer size and latency are chosen per
request: the service under test passes the prompt through untouched.

- `GrpcClient`: `Generate` (URL or inline) and `StreamGenerate` over one
  long-lived channel, as an internal caller would use it.
- `RestClient`: `POST /v1/images/generations` asking for `url` or
  `b64_json`, sending `Accept-Encoding: gzip, deflate` as the `openai` SDK
  (httpx) does, and recording each response's `Content-Encoding`.
- `DirectClient`: the same upstream request the service's FLUX backend
  sends, straight to the emulator: the baseline the service's added
  latency is measured against.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import httpx
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from benchmarks.emulator import API_KEY
from server.providers._shared.http import new_client

MODEL = "azure/flux-2-pro"
SIZE = "1024x1024"
# What the FLUX backend sends upstream for MODEL at SIZE (see
# server.providers.azure_flux.request_body), prompt aside.
_UPSTREAM_PATH = "/providers/blackforestlabs/v1/flux-2-pro"
_UPSTREAM_BODY = {
    "model": "FLUX.2-pro",
    "output_format": "png",
    "width": 1024,
    "height": 1024,
    "num_images": 1,
}
# Several n=4 inline answers of a few MiB each must fit in one message.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
TIMEOUT_S = 60.0

Call = Callable[[], Awaitable[object]]


class WrongAnswer(Exception):
    """The call succeeded but the answer is not what was asked for."""


def prompt(noise: str, latency_s: float | None) -> str:
    """A prompt asking the emulator for a `noise` PNG ("3mb") after `latency_s`
    (None: the emulator's fault plan decides)."""
    text = f"benchmark [sandbox:noise={noise}]"
    if latency_s is not None:
        text += f" [sandbox:latency={latency_s:g}]"
    return text


class GrpcClient:
    """Calls `chuizi.image.v1.ImageService` at `target` over one channel."""

    def __init__(self, target: str, api_key: str = "") -> None:
        # Sent as `authorization: Bearer <key>` when the service checks keys.
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = pb_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def _request(self, text: str, n: int, inline: bool) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            model=MODEL,
            prompt=text,
            size=SIZE,
            n=n,
            response_format=pb.RESPONSE_FORMAT_INLINE if inline else pb.RESPONSE_FORMAT_URL,
        )

    def generate(self, text: str, n: int, *, inline: bool, timeout_s: float = TIMEOUT_S) -> Call:
        """A call of unary `Generate` that checks it got `n` stored images."""
        request = self._request(text, n, inline)

        async def call() -> None:
            reply: pb.Generation = await self.stub.Generate(
                request, timeout=timeout_s, metadata=self.metadata
            )
            _check_images(list(reply.images), n, inline=inline)

        return call

    async def first_image(self, text: str, n: int) -> tuple[float, float]:
        """One `StreamGenerate` with URL answers: (seconds to the first image,
        seconds to the end of the stream)."""
        started = time.perf_counter()
        first = 0.0
        images: list[pb.Image] = []
        call = self.stub.StreamGenerate(
            self._request(text, n, False), timeout=TIMEOUT_S, metadata=self.metadata
        )
        async for message in call:
            if message.WhichOneof("event") == "image":
                if not images:
                    first = time.perf_counter() - started
                images.append(message.image)
        _check_images(images, n, inline=False)
        return first, time.perf_counter() - started

    async def close(self) -> None:
        await self.channel.close(None)


def _check_images(images: list[pb.Image], n: int, *, inline: bool) -> None:
    if len(images) != n:
        raise WrongAnswer(f"{len(images)} images instead of {n}")
    for image in images:
        if not image.stored or not image.url:
            raise WrongAnswer("an image was not stored")
        if inline and not image.data:
            raise WrongAnswer("an inline image has no data")


class RestClient:
    """Calls the REST sidecar at `base_url` as the `openai` SDK would.

    `model` and `headers` (added to the SDK's) let the same client call a
    peer gateway's OpenAI-compatible route (`benchmarks.peers`).
    """

    def __init__(
        self,
        base_url: str,
        max_connections: int = 64,
        *,
        model: str = MODEL,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=TIMEOUT_S,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={
                "Accept-Encoding": "gzip, deflate",
                "Authorization": "Bearer bench",
                **(headers or {}),
            },
        )
        # Content-Encoding of every response ("identity" when absent).
        self.encodings: Counter[str] = Counter()

    def generate(self, text: str, n: int, *, b64: bool) -> Call:
        """A call of `/v1/images/generations` that checks it got `n` images."""
        body = {
            "model": self.model,
            "prompt": text,
            "size": SIZE,
            "n": n,
            "response_format": "b64_json" if b64 else "url",
        }
        member = b'"b64_json":"' if b64 else b'"url":"'

        async def call() -> None:
            response = await self.client.post("/v1/images/generations", json=body)
            self.encodings[response.headers.get("content-encoding", "identity")] += 1
            if response.status_code != 200:
                raise WrongAnswer(f"HTTP {response.status_code}: {response.text[:200]}")
            # Counting the members is enough to catch a wrong answer, and far
            # cheaper for this process than decoding megabytes of JSON.
            if response.content.count(member) != n:
                raise WrongAnswer(f"not {n} {member.decode()} members")

        return call

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class DirectClient:
    """Calls the emulator itself, as the service's FLUX backend does, with the
    backend's own HTTP client (`new_client`): the baseline then differs from
    the service only by what the service adds, not by a different client."""

    base_url: str

    def __post_init__(self) -> None:
        self.client = new_client(timeout_s=TIMEOUT_S)
        self.client.base_url = httpx.URL(self.base_url)
        self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    def generate(self, text: str, n: int) -> Call:
        """`n` concurrent upstream calls (the service's fan-out for `n`), all read in full."""
        body = {**_UPSTREAM_BODY, "prompt": text}

        async def one() -> None:
            response = await self.client.post(
                _UPSTREAM_PATH, params={"api-version": "preview"}, json=body
            )
            if response.status_code != 200 or b'"b64_json":"' not in response.content:
                raise WrongAnswer(f"emulator answered HTTP {response.status_code}")

        async def call() -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        return call

    async def set_latencies(self, seconds: list[float]) -> None:
        """Queue per-request latencies in the emulator's fault plan."""
        response = await self.client.post("/_bench/latencies", json=seconds)
        response.raise_for_status()

    async def stats(self) -> dict[str, int]:
        """The emulator's request counters."""
        response = await self.client.get("/_bench/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    async def close(self) -> None:
        await self.client.aclose()
