"""API keys over gRPC, through the generated stubs, on a real socket: every
refusal code with its details, and what a key may see and spend."""

from __future__ import annotations

import logging
import pathlib

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.auth.keys import key_id_of
from server.auth.sqlite_store import SqliteKeyStore
from server.sandbox.server import SandboxServer
from tests.auth.conftest import AuthStack
from tests.auth.status_details import bearer, refusal_of
from tests.observability.scrape import delta, scrape
from tests.rpc.stacks import running_stack

FLUX = "azure/flux-kontext-pro"
IMAGEN = "google/imagen-4.0-fast"


def generate(model: str = FLUX, n: int = 1, request_id: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt="a red fox", n=n, request_id=request_id)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer WRONG"),),
        (("authorization", "garbage"),),
        (("authorization", "Bearer ck-" + "a" * 40),),  # well-formed, unknown
        (("authorization", "Basic dXNlcjpwYXNz"),),
    ],
    ids=["none", "wrong", "garbage", "unknown", "basic"],
)
async def test_every_rpc_without_a_valid_key_is_unauthenticated(
    auth_stack: AuthStack, metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = auth_stack.stack.stub
    calls = [
        stub.Generate(generate(), metadata=metadata),
        stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
        stub.GetGeneration(
            pb.GetGenerationRequest(generation_id="gen-0123456789abcdef"), metadata=metadata
        ),
    ]
    for call in calls:
        error = refusal_of(await refused(call))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert error.reason == "INVALID_API_KEY"
    stream = stub.StreamGenerate(generate(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert refusal_of(caught.value).reason == "INVALID_API_KEY"
    # Nothing reached an upstream.
    assert auth_stack.stack.sandbox.azure_flux.faults.stats.received == 0


async def test_a_valid_key_generates_and_a_revoked_one_is_refused(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key()
    stub = auth_stack.stack.stub
    generation = await stub.Generate(generate(), metadata=bearer(key))
    assert len(generation.images) == 1
    store = SqliteKeyStore(auth_stack.db)
    try:
        assert await store.revoke(key_id_of(key), 1)
    finally:
        await store.aclose()
    error = refusal_of(await refused(stub.Generate(generate(), metadata=bearer(key))))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    assert key not in error.message


async def test_health_and_reflection_need_no_key(auth_stack: AuthStack) -> None:
    channel = auth_stack.stack.channel
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "chuizi.image.v1.ImageService" in names


async def test_a_model_outside_the_keys_patterns_is_permission_denied(
    auth_stack: AuthStack,
) -> None:
    key = await auth_stack.new_key(models=("google/*",))
    stub = auth_stack.stack.stub
    error = refusal_of(await refused(stub.Generate(generate(FLUX), metadata=bearer(key))))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")
    assert error.metadata["model"] == FLUX
    generation = await stub.Generate(generate(IMAGEN), metadata=bearer(key))
    assert generation.model == IMAGEN


async def test_requests_per_minute_are_resource_exhausted_with_retry_info(
    auth_stack: AuthStack,
) -> None:
    key = await auth_stack.new_key(rpm=2)
    stub = auth_stack.stack.stub
    for _ in range(2):
        await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(key))
    error = refusal_of(await refused(stub.ListModels(pb.ListModelsRequest(), metadata=bearer(key))))
    assert (error.code, error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMIT_EXCEEDED",
    )
    assert error.retry_delay_s is not None and 0 < error.retry_delay_s <= 60
    # Another key has its own minute.
    other = await auth_stack.new_key("other", rpm=2)
    await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(other))


async def test_images_per_day_counts_images_produced_and_refuses_with_quota_failure(
    auth_stack: AuthStack,
) -> None:
    key = await auth_stack.new_key(images_per_day=3)
    stub = auth_stack.stack.stub
    first = await stub.Generate(generate(IMAGEN, n=2), metadata=bearer(key))
    assert len(first.images) == 2
    # 2 used + 2 asked > 3: refused before any upstream call.
    calls_before = auth_stack.stack.sandbox.vertex_imagen.faults.stats.received
    error = refusal_of(await refused(stub.Generate(generate(IMAGEN, n=2), metadata=bearer(key))))
    assert (error.code, error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "INSUFFICIENT_QUOTA",
    )
    assert error.quota_violations == [(f"key:{key_id_of(key)}", "images_per_day 3")]
    assert error.retry_delay_s is not None and 0 < error.retry_delay_s <= 86400
    assert auth_stack.stack.sandbox.vertex_imagen.faults.stats.received == calls_before
    # One more fits.
    await stub.Generate(generate(IMAGEN, n=1), metadata=bearer(key))


async def test_monthly_budget_refuses_a_request_that_could_overspend(
    auth_stack: AuthStack,
) -> None:
    # FLUX Kontext costs 0.05 USD per image in the catalogue.
    key = await auth_stack.new_key(monthly_budget="0.12")
    stub = auth_stack.stack.stub
    done = await stub.Generate(generate(FLUX, n=2), metadata=bearer(key))
    assert done.cost == "0.10000000"
    error = refusal_of(await refused(stub.Generate(generate(FLUX, n=1), metadata=bearer(key))))
    assert error.reason == "INSUFFICIENT_QUOTA"
    assert error.quota_violations[0][1] == "monthly_budget 0.12000000 USD"


async def test_usage_and_the_generation_record_agree(auth_stack: AuthStack) -> None:
    key = await auth_stack.new_key()
    stub = auth_stack.stack.stub
    generation = await stub.Generate(generate(IMAGEN, n=3), metadata=bearer(key))
    store = SqliteKeyStore(auth_stack.db)
    try:
        usage = await store.usage(key_id_of(key))
    finally:
        await store.aclose()
    assert {u.images for u in usage.values()} == {3}
    assert {str(u.cost) for u in usage.values()} == {generation.cost}
    assert len(usage) == 2  # today and this month
    record = auth_stack.stack.service.orchestrator  # the record carries the key id
    stored = await record._records.get(generation.generation_id)
    assert stored is not None and stored.key_id == key_id_of(key)


async def test_a_key_sees_only_its_own_generations(auth_stack: AuthStack) -> None:
    alice, bob = await auth_stack.new_key("alice"), await auth_stack.new_key("bob")
    stub = auth_stack.stack.stub
    generation = await stub.Generate(generate(), metadata=bearer(alice))
    request = pb.GetGenerationRequest(generation_id=generation.generation_id)
    mine = await stub.GetGeneration(request, metadata=bearer(alice))
    assert mine.generation_id == generation.generation_id
    error = refusal_of(await refused(stub.GetGeneration(request, metadata=bearer(bob))))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "GENERATION_NOT_FOUND")


async def test_request_ids_are_scoped_to_the_key(auth_stack: AuthStack) -> None:
    alice, bob = await auth_stack.new_key("alice"), await auth_stack.new_key("bob")
    stub = auth_stack.stack.stub
    first = await stub.Generate(generate(request_id="order-1"), metadata=bearer(alice))
    again = await stub.Generate(generate(request_id="order-1"), metadata=bearer(alice))
    assert again.generation_id == first.generation_id
    # Bob's equal request id is his own request: a new generation, not Alice's.
    bobs = await stub.Generate(generate(request_id="order-1"), metadata=bearer(bob))
    assert bobs.generation_id != first.generation_id
    # And a different request under Bob's id does not conflict with Alice's.
    other = await stub.Generate(
        pb.GenerateRequest(model=FLUX, prompt="something else", request_id="order-2"),
        metadata=bearer(bob),
    )
    assert other.generation_id not in (first.generation_id, bobs.generation_id)


async def test_no_key_material_in_any_log_line_at_debug(
    auth_stack: AuthStack, caplog: pytest.LogCaptureFixture
) -> None:
    key = await auth_stack.new_key(rpm=1, models=(FLUX,))
    stub = auth_stack.stack.stub
    caplog.set_level(logging.DEBUG)
    await stub.Generate(generate(), metadata=bearer(key))
    for call in (
        stub.Generate(generate(), metadata=bearer(key)),  # rate limited
        stub.Generate(generate(), metadata=bearer(key[:-1] + "x")),  # wrong
    ):
        await refused(call)
    secret = key.removeprefix("ck-")
    assert caplog.records, "expected some log lines"
    for record in caplog.records:
        line = record.getMessage() + str(record.args)
        assert secret not in line and secret[:16] not in line


async def test_the_access_line_names_the_key_by_its_id(
    auth_stack: AuthStack, caplog: pytest.LogCaptureFixture
) -> None:
    key = await auth_stack.new_key()
    caplog.set_level(logging.INFO, logger="server.access")
    await auth_stack.stack.stub.ListModels(pb.ListModelsRequest(), metadata=bearer(key))
    access = [r for r in caplog.records if r.name == "server.access"]
    assert access, "no access line"
    assert [getattr(r, "fields", {}).get("key_id") for r in access] == [key_id_of(key)]


async def test_auth_none_serves_without_a_key_and_warns_at_start(
    sandbox: SandboxServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_stack(sandbox, tmp_path, auth="none") as stack:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("NOT authenticated" in w for w in warnings), warnings
        generation = await stack.stub.Generate(generate())
        assert len(generation.images) == 1


async def test_auth_keys_logs_no_such_warning(
    sandbox: SandboxServer, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_stack(sandbox, tmp_path, auth="keys", auth_db=tmp_path / "a.sqlite3"):
        assert not any("NOT authenticated" in r.getMessage() for r in caplog.records)


async def test_usage_is_exported_per_key_id(auth_stack: AuthStack) -> None:
    service = auth_stack.stack.service
    assert service.metrics_server is not None
    url = f"{service.metrics_server.base_url}/metrics"
    key, other = await auth_stack.new_key(), await auth_stack.new_key()
    before = await scrape(url)
    first = await auth_stack.stack.stub.Generate(generate(IMAGEN, n=3), metadata=bearer(key))
    await auth_stack.stack.stub.Generate(generate(IMAGEN, n=1), metadata=bearer(other))
    after = await scrape(url)

    for name, (mine, theirs) in {
        "image_service_key_images_total": (3, 1),
        "image_service_key_cost_usd_total": (float(first.cost), None),
    }.items():
        assert delta(before, after, name, key_id=key_id_of(key)) == pytest.approx(mine)
        if theirs is not None:
            assert delta(before, after, name, key_id=key_id_of(other)) == theirs
    # The public id only: no label carries the key itself.
    assert not any(key in str(sample) or other in str(sample) for sample in after)
