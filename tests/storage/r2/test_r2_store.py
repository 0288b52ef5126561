"""`R2Store` against a real S3 server over HTTP and HTTPS (moto in server mode).

What lands in the bucket (key, content type, cache control, bytes), what
goes over the wire (no checksum headers R2 rejected, no body hash over
TLS), URLs in public and
private-bucket mode, the thread/connection bound, and the settings check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
import trustme
from botocore.config import Config

from server.app import build_store
from server.domain.errors import StorageRejected
from server.settings import Settings
from server.storage.r2 import IMMUTABLE_CACHE_CONTROL, R2Store
from tests.support.images import png
from tests.support.moto_s3 import (
    ACCESS_KEY_ID,
    PUBLIC_BASE_URL,
    SECRET_ACCESS_KEY,
    StoreFactory,
)
from tests.support.s3_fault_proxy import Fault, S3FaultProxy

# Headers boto3 >= 1.36 adds by default (flexible checksums) that R2 refused.
CHECKSUM_HEADER_PREFIXES = ("x-amz-checksum-", "x-amz-sdk-checksum-", "x-amz-trailer")


def _checksum_headers(headers: dict[str, str]) -> dict[str, str]:
    found = {k: v for k, v in headers.items() if k.startswith(CHECKSUM_HEADER_PREFIXES)}
    if "aws-chunked" in headers.get("content-encoding", ""):
        found["content-encoding"] = headers["content-encoding"]
    return found


async def test_put_lands_with_key_content_type_cache_control_and_bytes(
    make_store: StoreFactory, moto_url: str, s3_admin: Any, bucket: str
) -> None:
    store = make_store(moto_url)
    image = png(48, 32)

    await store.put("images/gen-0123456789abcdef-0.png", image, "image/png")

    obj = s3_admin.get_object(Bucket=bucket, Key="images/gen-0123456789abcdef-0.png")
    assert obj["Body"].read() == image
    assert obj["ContentType"] == "image/png"
    assert obj["CacheControl"] == "public, max-age=31536000, immutable"
    assert obj["ContentLength"] == len(image)


async def test_records_are_not_marked_publicly_cacheable(
    make_store: StoreFactory, moto_url: str, s3_admin: Any, bucket: str
) -> None:
    store = make_store(moto_url)

    await store.put("generations/gen-1.json", b'{"a":1}', "application/json")

    head = s3_admin.head_object(Bucket=bucket, Key="generations/gen-1.json")
    assert head["ContentType"] == "application/json"
    assert head["CacheControl"] == "private, no-store"


async def test_get_returns_the_bytes_or_none_for_a_missing_key(
    make_store: StoreFactory, moto_url: str, s3_admin: Any, bucket: str
) -> None:
    store = make_store(moto_url)
    s3_admin.put_object(Bucket=bucket, Key="images/a.png", Body=b"\x89PNG-bytes")

    assert await store.get("images/a.png") == b"\x89PNG-bytes"
    assert await store.get("images/missing.png") is None


async def test_a_missing_bucket_is_a_permanent_error_not_a_missing_key(
    make_store: StoreFactory, moto_url: str
) -> None:
    store = make_store(moto_url, bucket="no-such-bucket-here")

    with pytest.raises(StorageRejected) as raised:
        await store.get("generations/gen-1.json")
    assert raised.value.retryable is False
    assert raised.value.metadata["code"] == "NoSuchBucket"
    with pytest.raises(StorageRejected):
        await store.put("images/x.png", png(), "image/png")


async def test_url_is_the_public_base_url_plus_the_key(make_store: StoreFactory) -> None:
    store = make_store("http://127.0.0.1:9", public_base_url=PUBLIC_BASE_URL + "/")

    assert (
        store.url_for("images/gen-0123456789abcdef-1.webp")
        == "https://img.example.test/images/gen-0123456789abcdef-1.webp"
    )


async def test_private_bucket_mode_presigns_working_urls_with_the_configured_ttl(
    make_store: StoreFactory, moto_url: str, s3_admin: Any, bucket: str
) -> None:
    store = make_store(moto_url, public_base_url="", presign_ttl_s=900)
    image = png(20, 10)
    await store.put("images/gen-0123456789abcdef-0.png", image, "image/png")

    url = store.url_for("images/gen-0123456789abcdef-0.png")

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == moto_url
    assert parts.path == f"/{bucket}/images/gen-0123456789abcdef-0.png"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert SECRET_ACCESS_KEY not in url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == image
    assert response.headers["content-type"] == "image/png"


async def test_uploads_send_no_checksum_headers(
    make_store: StoreFactory, proxy: S3FaultProxy, bucket: str
) -> None:
    store = make_store(proxy.endpoint_url)
    image = png(16, 16)

    await store.put("images/gen-0123456789abcdef-0.png", image, "image/png")
    assert await store.get("images/gen-0123456789abcdef-0.png") == image

    put, get = proxy.requests
    assert (put.method, put.path) == ("PUT", f"/{bucket}/images/gen-0123456789abcdef-0.png")
    assert _checksum_headers(put.headers) == {}
    assert "content-md5" not in put.headers
    # The body went as plain bytes, not aws-chunked frames with a trailer.
    assert put.body == image
    assert put.headers["content-length"] == str(len(image))
    assert put.headers["cache-control"] == IMMUTABLE_CACHE_CONTROL
    # Over plain HTTP botocore signs the body whatever the config says.
    assert put.headers["x-amz-content-sha256"] == hashlib.sha256(image).hexdigest()
    assert get.method == "GET"
    assert _checksum_headers(get.headers) == {}
    # Validating response checksums would make boto3 ask for them.
    assert "x-amz-checksum-mode" not in get.headers


@pytest.fixture
async def tls_proxy(
    moto_server: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[S3FaultProxy]:
    """The fault proxy behind HTTPS, with boto3 told to trust its test CA."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    fault_proxy = S3FaultProxy(*moto_server, tls=server_tls)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.aclose()


async def test_uploads_over_https_sign_the_headers_but_do_not_hash_the_body(
    make_store: StoreFactory, tls_proxy: S3FaultProxy
) -> None:
    """As to R2: the signature covers the headers, the body goes unhashed."""
    assert tls_proxy.endpoint_url.startswith("https://")
    store = make_store(tls_proxy.endpoint_url)
    image = png(64, 64)

    await store.put("images/gen-0123456789abcdef-0.png", image, "image/png")
    assert await store.get("images/gen-0123456789abcdef-0.png") == image

    put = tls_proxy.requests[0]
    assert put.method == "PUT"
    assert put.body == image
    assert put.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    signed = put.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "x-amz-content-sha256" in signed.split(";")
    assert _checksum_headers(put.headers) == {}


async def test_default_boto3_config_would_send_checksums(proxy: S3FaultProxy, bucket: str) -> None:
    """Control for the test above: stock boto3 sends the headers it checks for."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=proxy.endpoint_url,
        region_name="auto",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    try:
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key="images/x.png", Body=b"data")
    finally:
        client.close()

    assert _checksum_headers(proxy.requests[-1].headers) != {}


async def test_concurrent_calls_queue_within_the_connection_pool(
    make_store: StoreFactory, proxy: S3FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(proxy.endpoint_url, max_connections=2)
    proxy.push(Fault.delay(0.05), times=12)

    await asyncio.gather(*(store.put(f"images/k-{i}.png", png(), "image/png") for i in range(12)))

    assert len(proxy.requests) == 12
    assert proxy.max_in_flight == 2
    # urllib3 warns when more threads than pooled connections use a client.
    assert "Connection pool is full" not in caplog.text


async def test_calls_do_not_block_the_event_loop(
    make_store: StoreFactory, proxy: S3FaultProxy
) -> None:
    store = make_store(proxy.endpoint_url)
    proxy.push(Fault.delay(0.3))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await store.put("images/slow.png", png(), "image/png")
    finally:
        ticker.cancel()
    # The proxy answering at all already needs a free loop; the ticker
    # shows it stayed free throughout the 0.3 s the upload took.
    assert ticks >= 15


async def test_errors_and_logs_never_carry_credentials(
    make_store: StoreFactory, proxy: S3FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="server")
    store = make_store(proxy.endpoint_url)
    proxy.push(Fault.error(403, "InvalidAccessKeyId"))
    proxy.push(Fault.error(403, "SignatureDoesNotMatch"))

    raised: list[BaseException] = []
    for call in (
        store.put("images/a.png", png(), "image/png"),
        store.get("generations/gen-1.json"),
    ):
        with pytest.raises(StorageRejected) as info:
            await call
        raised.append(info.value)

    for error in raised:
        # Not chained either, so a logged traceback cannot show botocore's text.
        assert error.__cause__ is None
        assert error.__context__ is None
        text = f"{error!s} {error!r} {getattr(error, 'metadata', {})}"
        assert ACCESS_KEY_ID not in text
        assert SECRET_ACCESS_KEY not in text
    assert "R2 PutObject images/a.png failed: InvalidAccessKeyId" in caplog.text
    assert ACCESS_KEY_ID not in caplog.text
    assert SECRET_ACCESS_KEY not in caplog.text


async def test_closed_store_refuses_calls(make_store: StoreFactory, moto_url: str) -> None:
    store = make_store(moto_url)
    await store.aclose()
    await store.aclose()  # idempotent

    with pytest.raises(Exception, match="shut down"):
        await store.put("images/a.png", png(), "image/png")


def test_store_needs_a_public_base_url_unless_presigning() -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        R2Store(
            endpoint_url="http://127.0.0.1:9",
            bucket="b",
            access_key_id="k",
            secret_access_key="s",
        )


# --- settings -----------------------------------------------------------------

R2_ENV = {
    "IMAGE_SERVICE_STORAGE": "r2",
    "IMAGE_SERVICE_R2_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com",
    "IMAGE_SERVICE_R2_BUCKET": "images",
    "IMAGE_SERVICE_R2_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "IMAGE_SERVICE_R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "IMAGE_SERVICE_R2_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
}


def test_settings_read_the_r2_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in R2_ENV.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.storage == "r2"
    assert settings.r2_endpoint_url == R2_ENV["IMAGE_SERVICE_R2_ENDPOINT_URL"]
    assert settings.r2_bucket == "images"
    assert settings.r2_access_key_id is not None
    assert settings.r2_access_key_id.get_secret_value() == ACCESS_KEY_ID
    assert settings.r2_secret_access_key is not None
    assert settings.r2_secret_access_key.get_secret_value() == SECRET_ACCESS_KEY
    assert settings.r2_public_base_url == PUBLIC_BASE_URL
    assert settings.r2_presign_ttl_s == 0
    assert SECRET_ACCESS_KEY not in repr(settings)


@pytest.mark.parametrize(
    "missing",
    [
        "IMAGE_SERVICE_R2_ENDPOINT_URL",
        "IMAGE_SERVICE_R2_BUCKET",
        "IMAGE_SERVICE_R2_ACCESS_KEY_ID",
        "IMAGE_SERVICE_R2_SECRET_ACCESS_KEY",
        "IMAGE_SERVICE_R2_PUBLIC_BASE_URL",
    ],
)
def test_startup_names_the_missing_r2_variable(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name, value in R2_ENV.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing, raising=False)
    # Reading the settings still works: the REST sidecar shares the
    # ConfigMap (storage=r2) but gets no R2 credentials.
    settings = Settings()

    with pytest.raises(ValueError) as raised:
        build_store(settings)

    message = str(raised.value)
    assert missing in message
    assert SECRET_ACCESS_KEY not in message
    assert ACCESS_KEY_ID not in message


def test_startup_refuses_an_endpoint_that_is_not_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in R2_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMAGE_SERVICE_R2_ENDPOINT_URL", "acct.r2.cloudflarestorage.com")

    with pytest.raises(ValueError, match="IMAGE_SERVICE_R2_ENDPOINT_URL"):
        Settings().check_r2()


def test_private_bucket_mode_needs_no_public_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in R2_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IMAGE_SERVICE_R2_PUBLIC_BASE_URL")
    monkeypatch.setenv("IMAGE_SERVICE_R2_PRESIGN_TTL_S", "3600")

    settings = Settings()
    settings.check_r2()
    assert settings.r2_presign_ttl_s == 3600


def test_local_storage_needs_no_r2_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in R2_ENV:
        monkeypatch.delenv(name, raising=False)

    settings = Settings()
    settings.check_r2()
    assert settings.storage == "local"
