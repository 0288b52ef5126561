"""A real S3 server (moto in server mode) for the storage tests, and a fault proxy.

One moto server per test session on 127.0.0.1 (port chosen by the OS); each
test gets its own bucket, so tests never see each other's objects. Stores
under test talk HTTP to moto, either directly or through `S3FaultProxy`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from server.storage.r2 import R2Store
from tests.support.moto_s3 import (
    ACCESS_KEY_ID,
    PUBLIC_BASE_URL,
    SECRET_ACCESS_KEY,
    StoreFactory,
)
from tests.support.s3_fault_proxy import S3FaultProxy


@pytest.fixture(scope="session")
def moto_server() -> Iterator[tuple[str, int]]:
    # werkzeug logs every request moto serves; not useful in test output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_url(moto_server: tuple[str, int]) -> str:
    host, port = moto_server
    return f"http://{host}:{port}"


@pytest.fixture(scope="session")
def s3_admin(moto_url: str) -> Any:
    """A plain boto3 client straight to moto, for setting up and inspecting buckets."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"images-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def proxy(moto_server: tuple[str, int]) -> AsyncIterator[S3FaultProxy]:
    fault_proxy = S3FaultProxy(*moto_server)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.aclose()


@pytest.fixture
async def make_store(bucket: str) -> AsyncIterator[StoreFactory]:
    """Build `R2Store`s on the test's bucket (closed at teardown); kwargs override."""
    stores: list[R2Store] = []

    def make(endpoint_url: str, **overrides: Any) -> R2Store:
        options: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "bucket": bucket,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "public_base_url": PUBLIC_BASE_URL,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 2.0,
        }
        options.update(overrides)
        store = R2Store(**options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()
