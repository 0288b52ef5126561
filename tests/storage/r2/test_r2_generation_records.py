"""The whole service with R2 storage, through gRPC.

`create_grpc_service(settings)` with `storage="r2"` against moto's S3 server
(through `S3FaultProxy`), the real Azure FLUX backend against the sandbox
emulator, and the generated stubs over a real channel. Covers: images land
in the bucket under CDN URLs; `GetGeneration` after a restart and from
another replica; `request_id` idempotency (a retry costs no upstream call);
a reused `request_id` with different parameters; and storage faults, where
retries succeed or, when storage stays down or hangs, the paid images come
back inline and flagged not stored.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1.image_service_pb2_grpc import ImageServiceStub
from google.rpc import error_details_pb2, status_pb2
from PIL import Image

from server.app import GrpcService, build_store, create_grpc_service
from server.sandbox.server import SandboxServer
from server.settings import Settings
from server.storage.r2 import IMMUTABLE_CACHE_CONTROL, R2Store
from tests.support.moto_s3 import ACCESS_KEY_ID, PUBLIC_BASE_URL, SECRET_ACCESS_KEY
from tests.support.s3_fault_proxy import Fault, FaultKind, S3FaultProxy

MODEL = "azure/flux-2-pro"  # one image per upstream call: n images = n calls
RPC_TIMEOUT_S = 20.0


def upstream_calls(sandbox: SandboxServer) -> int:
    """Requests the FLUX emulator received: what the service paid for."""
    return sandbox.azure_flux.faults.stats.received


def r2_settings(
    sandbox: SandboxServer, endpoint_url: str, bucket: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "reflection": False,
        "storage": "r2",
        "r2_endpoint_url": endpoint_url,
        "r2_bucket": bucket,
        "r2_access_key_id": ACCESS_KEY_ID,
        "r2_secret_access_key": SECRET_ACCESS_KEY,
        "r2_public_base_url": PUBLIC_BASE_URL,
        "r2_connect_timeout_s": 1.0,
        "r2_read_timeout_s": 1.0,
        # Storage retries use the upstream backoff; keep them quick.
        "upstream_backoff_base_s": 0.01,
        "upstream_backoff_max_s": 0.05,
        # Authentication has its own tests (tests/auth); these call without a key.
        "auth": "none",
        **sandbox.settings_overrides(),
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[GrpcService, ImageServiceStub]]:
    """One replica of the service, started, with a stub on a fresh channel."""
    service = await create_grpc_service(settings)
    await service.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{service.port}",
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    try:
        yield service, ImageServiceStub(channel)
    finally:
        await channel.close()
        await service.stop(grace=0)


@pytest.fixture
async def stub(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str
) -> AsyncIterator[ImageServiceStub]:
    async with running(r2_settings(sandbox, proxy.endpoint_url, bucket)) as (_, image_stub):
        yield image_stub


def request(**fields: Any) -> pb.GenerateRequest:
    values: dict[str, Any] = {"model": MODEL, "prompt": "a lighthouse at dusk", "size": "1024x1024"}
    values.update(fields)
    return pb.GenerateRequest(**values)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def error_reason(error: grpc.aio.AioRpcError) -> str:
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


# --- images and records land in the bucket -------------------------------------


async def test_images_land_in_the_bucket_and_urls_are_the_cdn_base_plus_key(
    stub: ImageServiceStub, s3_admin: Any, bucket: str, proxy: S3FaultProxy
) -> None:
    generation = await stub.Generate(request(n=2), timeout=RPC_TIMEOUT_S)

    assert len(generation.images) == 2
    keys = []
    for image in generation.images:
        key = f"images/{generation.generation_id}-{image.index}.png"
        keys.append(key)
        assert image.stored
        assert image.url == f"{PUBLIC_BASE_URL}/{key}"
        assert image.data == b""
        obj = s3_admin.get_object(Bucket=bucket, Key=key)
        assert obj["ContentType"] == "image/png" == image.mime_type
        assert obj["CacheControl"] == IMMUTABLE_CACHE_CONTROL
        assert png_size(obj["Body"].read()) == (image.width, image.height)
    # One PutObject per image (plus the record), no multipart, no retries.
    puts = sorted(r.path for r in proxy.requests if r.method == "PUT")
    assert puts == sorted(
        [f"/{bucket}/{key}" for key in keys]
        + [f"/{bucket}/generations/{generation.generation_id}.json"]
    )
    record = json.loads(
        s3_admin.get_object(Bucket=bucket, Key=f"generations/{generation.generation_id}.json")[
            "Body"
        ].read()
    )
    assert record["generation_id"] == generation.generation_id
    assert record["model"] == MODEL
    assert record["prompt"] == "a lighthouse at dusk"
    assert record["n"] == 2
    assert record["cost"] == "0.10"
    # Records keep keys, not URLs: a new CDN domain applies to old records.
    assert [i["key"] for i in record["images"]] == keys
    assert all("url" not in i for i in record["images"])


async def test_get_generation_after_a_restart(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str
) -> None:
    settings = r2_settings(sandbox, proxy.endpoint_url, bucket)
    async with running(settings) as (_, stub):
        first = await stub.Generate(request(n=2, request_id="restart-1"), timeout=RPC_TIMEOUT_S)

    async with running(settings) as (_, stub):
        again = await stub.GetGeneration(
            pb.GetGenerationRequest(generation_id=first.generation_id), timeout=RPC_TIMEOUT_S
        )

    assert again == first
    assert again.cost == "0.10000000"
    assert again.request_id == "restart-1"
    assert all(i.stored and i.url and i.width and i.height for i in again.images)


async def test_get_generation_from_another_replica_and_for_an_unknown_id(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str
) -> None:
    settings = r2_settings(sandbox, proxy.endpoint_url, bucket)
    async with running(settings) as (_, replica_a), running(settings) as (_, replica_b):
        made = await replica_a.Generate(request(), timeout=RPC_TIMEOUT_S)
        seen = await replica_b.GetGeneration(
            pb.GetGenerationRequest(generation_id=made.generation_id), timeout=RPC_TIMEOUT_S
        )
        assert seen == made

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await replica_b.GetGeneration(
                pb.GetGenerationRequest(generation_id="gen-0000000000000000"),
                timeout=RPC_TIMEOUT_S,
            )
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_presigned_mode_reads_records_with_fresh_urls(
    sandbox: SandboxServer, moto_url: str, bucket: str
) -> None:
    settings = r2_settings(sandbox, moto_url, bucket, r2_public_base_url="", r2_presign_ttl_s=600)
    async with running(settings) as (_, stub):
        made = await stub.Generate(request(), timeout=RPC_TIMEOUT_S)
        url = made.images[0].url
        assert url.startswith(f"{moto_url}/{bucket}/images/{made.generation_id}-0.png?")
        assert "X-Amz-Expires=600" in url

        async with httpx.AsyncClient() as client:
            fetched = await client.get(url)
        assert fetched.status_code == 200
        assert png_size(fetched.content) == (made.images[0].width, made.images[0].height)


async def test_a_records_bucket_keeps_prompts_out_of_the_public_image_bucket(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str, s3_admin: Any
) -> None:
    records = f"records-{bucket}"
    s3_admin.create_bucket(Bucket=records)
    settings = r2_settings(sandbox, proxy.endpoint_url, bucket, r2_records_bucket=records)

    async with running(settings) as (_, replica_a), running(settings) as (_, replica_b):
        made = await replica_a.Generate(request(request_id="order-7"), timeout=RPC_TIMEOUT_S)
        seen = await replica_b.GetGeneration(
            pb.GetGenerationRequest(generation_id=made.generation_id), timeout=RPC_TIMEOUT_S
        )
        paid = upstream_calls(sandbox)
        retried = await replica_b.Generate(request(request_id="order-7"), timeout=RPC_TIMEOUT_S)

    assert seen == made
    assert retried == made  # the request-id index is found in the records bucket too
    assert upstream_calls(sandbox) == paid

    def keys(name: str) -> list[str]:
        listing = s3_admin.list_objects_v2(Bucket=name)
        return sorted(obj["Key"] for obj in listing.get("Contents", []))

    # The public bucket holds the image only: nothing a URL could lead to.
    assert keys(bucket) == [f"images/{made.generation_id}-0.png"]
    record_keys = keys(records)
    assert f"generations/{made.generation_id}.json" in record_keys
    assert any(key.startswith("request-ids/") for key in record_keys)
    assert len(record_keys) == 2


# --- request_id idempotency ----------------------------------------------------------


async def test_a_retry_with_the_same_request_id_costs_nothing_even_on_another_replica(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str, s3_admin: Any
) -> None:
    settings = r2_settings(sandbox, proxy.endpoint_url, bucket)
    async with running(settings) as (_, stub):
        first = await stub.Generate(request(n=2, request_id="order-42"), timeout=RPC_TIMEOUT_S)
        paid = upstream_calls(sandbox)
        retry = await stub.Generate(request(n=2, request_id="order-42"), timeout=RPC_TIMEOUT_S)
    assert paid == 2
    assert retry == first
    assert upstream_calls(sandbox) == paid

    # A fresh replica finds it through the bucket too, and can hand the
    # stored bytes back inline (response_format is not part of the request's
    # identity).
    async with running(settings) as (_, stub):
        inline = await stub.Generate(
            request(n=2, request_id="order-42", response_format=pb.RESPONSE_FORMAT_INLINE),
            timeout=RPC_TIMEOUT_S,
        )
    assert inline.generation_id == first.generation_id
    assert upstream_calls(sandbox) == paid
    for image in inline.images:
        key = f"images/{first.generation_id}-{image.index}.png"
        assert image.data == s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read()


async def test_a_request_id_reused_with_different_parameters_is_already_exists(
    stub: ImageServiceStub, sandbox: SandboxServer
) -> None:
    await stub.Generate(request(request_id="job-7"), timeout=RPC_TIMEOUT_S)
    paid = upstream_calls(sandbox)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(
            request(request_id="job-7", prompt="something else"), timeout=RPC_TIMEOUT_S
        )

    assert raised.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(raised.value) == "REQUEST_ID_CONFLICT"
    assert upstream_calls(sandbox) == paid


# --- storage faults --------------------------------------------------------------------


async def test_transient_storage_faults_are_retried_and_the_images_stored(
    stub: ImageServiceStub, proxy: S3FaultProxy, s3_admin: Any, bucket: str
) -> None:
    # Three failed attempts; the service makes four (storage_attempts).
    proxy.push(Fault.error(503, "SlowDown"))
    proxy.push(Fault.drop())
    proxy.push(Fault.delay(3.0))  # past the 1 s read timeout

    generation = await stub.Generate(request(), timeout=RPC_TIMEOUT_S)

    image = generation.images[0]
    assert image.stored
    key = f"images/{generation.generation_id}-0.png"
    assert image.url == f"{PUBLIC_BASE_URL}/{key}"
    assert png_size(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read()) == (
        image.width,
        image.height,
    )
    image_puts = [r for r in proxy.requests if r.method == "PUT" and "/images/" in r.path]
    assert [r.fault is None for r in image_puts] == [False, False, False, True]


async def test_when_storage_stays_down_the_images_come_back_inline(
    stub: ImageServiceStub,
    sandbox: SandboxServer,
    proxy: S3FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    proxy.outage = Fault.error(503, "SlowDown")

    generation = await stub.Generate(request(n=2), timeout=RPC_TIMEOUT_S)

    assert sorted(i.index for i in generation.images) == [0, 1]
    for image in generation.images:
        assert not image.stored
        assert image.url == ""
        assert png_size(image.data) == (image.width, image.height) != (0, 0)
    assert upstream_calls(sandbox) == 2  # nothing paid twice, nothing dropped
    # Each image's failure and the record's are logged with the generation id.
    failures = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and generation.generation_id in r.getMessage()
    ]
    assert any("image 0" in m for m in failures)
    assert any("image 1" in m for m in failures)
    assert any("record" in m for m in failures)
    assert ACCESS_KEY_ID not in caplog.text
    assert SECRET_ACCESS_KEY not in caplog.text
    # With no record written, GetGeneration cannot find it (documented).
    proxy.outage = None
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetGeneration(
            pb.GetGenerationRequest(generation_id=generation.generation_id), timeout=RPC_TIMEOUT_S
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_streamed_images_come_back_inline_when_storage_is_down(
    stub: ImageServiceStub, proxy: S3FaultProxy
) -> None:
    proxy.outage = Fault.drop()

    events = [e async for e in stub.StreamGenerate(request(n=2), timeout=RPC_TIMEOUT_S)]

    images = [e.image for e in events if e.WhichOneof("event") == "image"]
    assert len(images) == 2
    assert all(not i.stored and png_size(i.data) == (i.width, i.height) for i in images)
    assert events[-1].WhichOneof("event") == "generation"


async def test_permanent_storage_errors_are_not_retried_and_images_come_back_inline(
    stub: ImageServiceStub, proxy: S3FaultProxy
) -> None:
    proxy.outage = Fault.error(403, "AccessDenied")

    generation = await stub.Generate(request(), timeout=RPC_TIMEOUT_S)

    assert not generation.images[0].stored
    assert generation.images[0].data
    image_puts = [r for r in proxy.requests if r.method == "PUT" and "/images/" in r.path]
    assert len(image_puts) == 1


async def test_hung_storage_still_returns_the_images_inside_the_deadline(
    sandbox: SandboxServer, proxy: S3FaultProxy, bucket: str
) -> None:
    # R2 accepts the connection and never answers; its read timeout (30 s)
    # is far beyond the caller's deadline. The images must still arrive.
    settings = r2_settings(sandbox, proxy.endpoint_url, bucket, r2_read_timeout_s=30.0)
    proxy.outage = Fault.delay(60.0)
    async with running(settings) as (_, stub):
        started = time.monotonic()
        generation = await stub.Generate(request(), timeout=3.0)
        elapsed = time.monotonic() - started
        # Release the held uploads so the store's threads end now.
        await proxy.aclose()

    assert elapsed < 3.0
    assert not generation.images[0].stored
    assert png_size(generation.images[0].data) == (
        generation.images[0].width,
        generation.images[0].height,
    )
    assert all(r.fault is not None and r.fault.kind is FaultKind.DELAY for r in proxy.requests)


async def test_with_a_request_id_a_storage_outage_fails_before_paying(
    stub: ImageServiceStub, sandbox: SandboxServer, proxy: S3FaultProxy
) -> None:
    # Without the store the request_id cannot be checked, so generating
    # could pay twice for one request: the service refuses, retryably.
    proxy.outage = Fault.error(503, "SlowDown")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(request(request_id="during-outage"), timeout=RPC_TIMEOUT_S)

    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert error_reason(raised.value) == "STORAGE_UNAVAILABLE"
    assert upstream_calls(sandbox) == 0


async def test_build_store_builds_the_r2_store_from_settings(
    sandbox: SandboxServer, moto_url: str, bucket: str
) -> None:
    store = build_store(r2_settings(sandbox, moto_url, bucket))
    try:
        assert isinstance(store, R2Store)
        assert store.bucket == bucket
        assert store.url_for("images/a.png") == f"{PUBLIC_BASE_URL}/images/a.png"
    finally:
        await store.aclose()
