"""What a generation records about the model and seeds that served it.

Routing of retired models, the upstream id that served a call, per-image
seeds and unknown prices, driven by narrow fakes (tests/support/fakes.py);
the same paths run end to end against the emulators in tests/rpc.
"""

from __future__ import annotations

from server.domain.catalogue import Catalogue, RetiredPolicy
from server.domain.deadline import Deadline
from server.domain.orchestrator import Backends, Orchestrator
from server.domain.records import GenerationRecord
from server.domain.requests import GenerateRequest
from server.domain.retry import RetryPolicy
from tests.support.fakes import MemoryStore, ScriptedBackend

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def make(backend: ScriptedBackend, catalogue: Catalogue | None = None) -> Orchestrator:
    return Orchestrator(
        catalogue or Catalogue.load(),
        Backends({"azure_flux": backend, "vertex_imagen": backend, "azure_mai": backend}),
        MemoryStore(),
        storage_retry=FAST_RETRY,
        default_deadline_s=30,
    )


async def run(
    backend: ScriptedBackend, catalogue: Catalogue | None = None, **fields: object
) -> GenerationRecord:
    base: dict[str, object] = {"model": "azure/flux-2-pro", "prompt": "a fox", "n": 1}
    request = GenerateRequest(**{**base, **fields})  # type: ignore[arg-type]
    return await make(backend, catalogue).run(request, Deadline.none())


async def test_fan_out_without_a_seed_sends_distinct_random_seeds_and_records_them() -> None:
    backend = ScriptedBackend()
    record = await run(backend, n=4)
    sent = [call.seed for call in backend.calls]
    assert None not in sent and len(set(sent)) == 4
    assert sorted(image.seed for image in record.images) == sorted(sent)  # type: ignore[type-var]
    # Derived from one random base: image i carries base + i.
    base = record.images[0].seed
    assert base is not None
    assert [image.seed for image in record.images] == [base + i for i in range(4)]


async def test_fan_out_with_a_seed_gives_image_i_the_seed_plus_i() -> None:
    record = await run(ScriptedBackend(), n=3, seed=41)
    assert [(image.index, image.seed) for image in record.images] == [(0, 41), (1, 42), (2, 43)]


async def test_a_seed_near_the_top_of_the_range_wraps_instead_of_overflowing() -> None:
    record = await run(ScriptedBackend(), n=2, seed=2**32 - 1)
    assert [image.seed for image in record.images] == [2**32 - 1, 0]


async def test_no_seed_is_invented_where_the_upstream_would_change_behaviour() -> None:
    # Imagen turns its watermark off when given a seed: only the caller's is sent.
    backend = ScriptedBackend()
    catalogue = Catalogue.load(policies={"google/imagen-4.0": RetiredPolicy.PIN})
    record = await run(backend, catalogue, model="google/imagen-4.0", n=4)
    assert [call.seed for call in backend.calls] == [None]
    assert all(image.seed is None for image in record.images)


async def test_a_retired_model_is_routed_and_the_record_says_so() -> None:
    backend = ScriptedBackend()
    record = await run(backend, model="azure/mai-image-2", n=2, seed=5)
    assert {call.model.name for call in backend.calls} == {"azure/mai-image-2.6"}
    # MAI answers a seed with 400: none is sent, and the caller is told.
    assert [call.seed for call in backend.calls] == [None, None]
    assert record.model == "azure/mai-image-2"
    assert record.served_by == "azure/mai-image-2.6"
    assert record.upstream_model == "MAI-Image-2.6"
    assert record.warnings == (
        "azure/mai-image-2 was retired on 2026-08-15; served by its successor "
        "azure/mai-image-2.6 (MAI-Image-2.6).",
        "azure/mai-image-2.6 takes no seed; the request's seed was not used.",
    )
    # MAI-Image-2.6 has no confirmed price: the cost is unknown, not zero.
    assert record.cost is None
    # The stored record keeps all of it (URLs are derived when read).
    stored = GenerationRecord.from_json(record.to_json())
    assert (stored.cost, stored.served_by, stored.upstream_model, stored.warnings) == (
        None,
        record.served_by,
        record.upstream_model,
        record.warnings,
    )


async def test_a_pinned_retired_model_calls_its_own_upstream_id_with_a_warning() -> None:
    catalogue = Catalogue.load(policies={"azure/mai-image-2": RetiredPolicy.PIN})
    backend = ScriptedBackend()
    record = await run(backend, catalogue, model="azure/mai-image-2")
    assert [call.model.upstream_id for call in backend.calls] == ["MAI-Image-2"]
    assert record.served_by == "azure/mai-image-2"
    assert record.upstream_model == "MAI-Image-2"
    assert "pins the original upstream id" in record.warnings[0]


async def test_listing_shows_where_a_routed_model_goes() -> None:
    listings = {item.spec.name: item for item in make(ScriptedBackend()).list_models()}
    assert listings["azure/mai-image-2"].routes_to == "azure/mai-image-2.6"
    assert listings["azure/mai-image-2"].configured
    assert listings["azure/flux-2-pro"].routes_to == ""
