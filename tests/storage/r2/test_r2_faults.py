"""Faults injected between `R2Store` and a real S3 server, and how they are classed.

Transient failures (5xx, SlowDown, dropped connections, answers slower than
the read timeout) must be `StorageUnavailable` so the orchestrator's
`RetryPolicy` retries them, and a retry must then succeed; permanent ones
must fail at once. boto3's own retries are off, so every attempt the proxy
sees is one the policy made.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.domain.deadline import Deadline
from server.domain.errors import StorageRejected, StorageUnavailable
from server.domain.retry import RetryPolicy
from tests.support.images import png
from tests.support.moto_s3 import StoreFactory
from tests.support.s3_fault_proxy import Fault, S3FaultProxy

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
KEY = "images/gen-0123456789abcdef-0.png"

TRANSIENT = [
    pytest.param(Fault.error(503, "SlowDown"), id="503-slowdown"),
    pytest.param(Fault.error(500, "InternalError"), id="500-internal"),
    pytest.param(Fault.error(503, "ServiceUnavailable"), id="503-unavailable"),
    pytest.param(Fault.drop(), id="dropped-connection"),
    # Longer than the store's 0.3 s read timeout.
    pytest.param(Fault.delay(1.0), id="slow-response"),
]
PERMANENT = [
    pytest.param(Fault.error(403, "AccessDenied"), id="access-denied"),
    pytest.param(Fault.error(403, "InvalidAccessKeyId"), id="bad-key-id"),
    pytest.param(Fault.error(403, "SignatureDoesNotMatch"), id="bad-secret"),
    pytest.param(Fault.error(404, "NoSuchBucket"), id="no-bucket"),
]


@pytest.mark.parametrize("fault", TRANSIENT)
async def test_transient_faults_are_retryable(
    make_store: StoreFactory, proxy: S3FaultProxy, fault: Fault
) -> None:
    store = make_store(proxy.endpoint_url, read_timeout_s=0.3)
    proxy.push(fault)

    with pytest.raises(StorageUnavailable) as raised:
        await store.put(KEY, png(), "image/png")

    assert raised.value.retryable is True
    assert raised.value.metadata["operation"] == "PutObject"


@pytest.mark.parametrize("fault", TRANSIENT)
async def test_reads_class_transient_faults_the_same_way(
    make_store: StoreFactory, proxy: S3FaultProxy, fault: Fault
) -> None:
    store = make_store(proxy.endpoint_url, read_timeout_s=0.3)
    proxy.push(fault)

    with pytest.raises(StorageUnavailable):
        await store.get("generations/gen-0123456789abcdef.json")


@pytest.mark.parametrize("fault", PERMANENT)
async def test_permanent_faults_are_not_retried(
    make_store: StoreFactory, proxy: S3FaultProxy, fault: Fault
) -> None:
    store = make_store(proxy.endpoint_url)
    proxy.push(fault, times=5)

    with pytest.raises(StorageRejected) as raised:
        await FAST_RETRY.run(lambda: store.put(KEY, png(), "image/png"), Deadline.after(10))

    assert raised.value.retryable is False
    assert raised.value.metadata["code"] == fault.code
    assert len(proxy.requests) == 1


async def test_retries_succeed_after_a_mix_of_faults(
    make_store: StoreFactory, proxy: S3FaultProxy, s3_admin: Any, bucket: str
) -> None:
    store = make_store(proxy.endpoint_url, read_timeout_s=0.3)
    proxy.push(Fault.error(503, "SlowDown"))
    proxy.push(Fault.drop())
    proxy.push(Fault.delay(1.0))
    image = png(30, 20)

    await FAST_RETRY.run(lambda: store.put(KEY, image, "image/png"), Deadline.after(10))

    assert [r.fault for r in proxy.requests][-1] is None
    assert len(proxy.requests) == 4
    obj = s3_admin.get_object(Bucket=bucket, Key=KEY)
    assert obj["Body"].read() == image
    assert obj["ContentType"] == "image/png"


async def test_a_slow_answer_within_the_read_timeout_is_not_a_failure(
    make_store: StoreFactory, proxy: S3FaultProxy
) -> None:
    store = make_store(proxy.endpoint_url, read_timeout_s=2.0)
    proxy.push(Fault.delay(0.3))

    await store.put(KEY, png(), "image/png")

    assert len(proxy.requests) == 1
    assert await store.get(KEY) == png()


async def test_botocore_makes_exactly_one_attempt_per_call(
    make_store: StoreFactory, proxy: S3FaultProxy
) -> None:
    store = make_store(proxy.endpoint_url)
    proxy.push(Fault.error(503, "SlowDown"), times=3)

    with pytest.raises(StorageUnavailable):
        await store.put(KEY, png(), "image/png")

    # Our RetryPolicy owns retries (inside the caller's deadline); a second
    # layer in botocore would multiply them.
    assert len(proxy.requests) == 1
    assert proxy.requests[0].headers["amz-sdk-request"] == "attempt=1; max=1"


async def test_retries_stop_when_storage_stays_down(
    make_store: StoreFactory, proxy: S3FaultProxy
) -> None:
    store = make_store(proxy.endpoint_url)
    proxy.outage = Fault.error(503, "SlowDown")

    with pytest.raises(StorageUnavailable):
        await FAST_RETRY.run(lambda: store.put(KEY, png(), "image/png"), Deadline.after(10))

    assert len(proxy.requests) == FAST_RETRY.attempts
