from __future__ import annotations

from decimal import Decimal

import pytest

from server.domain.catalogue import Catalogue
from server.domain.errors import ModelNotFound
from server.domain.requests import Operation, Size

SEED_MODELS = {
    "azure/flux-kontext-pro": "1440x1440",
    "azure/flux-2-pro": "1440x1440",
    "google/imagen-4.0": "2048x2048",
    "google/imagen-4.0-fast": "2048x2048",
    "google/imagen-4.0-ultra": "2048x2048",
    "bailian/wan2.7-image": "1024x1024",
    "bailian/wan2.7-image-pro": "1024x1024",
    # The seed says 2048x2048, but MAI-Image-2 renders at most 1,048,576
    # pixels: the catalogue states what the upstream can really produce
    # (decision documented in docs/models-mai.md).
    "azure/mai-image-2": "1024x1024",
}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.load()


def test_every_seed_row_is_in_the_catalogue_with_its_max_size(catalogue: Catalogue) -> None:
    for name, max_size in SEED_MODELS.items():
        assert str(catalogue.get(name).max_size) == max_size


def test_bedrock_stability_row_expands_into_concrete_models(catalogue: Catalogue) -> None:
    bedrock = {m.name: m for m in catalogue if m.name.startswith("bedrock/stability-")}
    generators = [m for m in bedrock.values() if Operation.GENERATE in m.operations]
    assert {m.upstream_id for m in generators} >= {
        "stability.sd3-5-large-v1:0",
        "stability.stable-image-core-v1:1",
        "stability.stable-image-ultra-v1:1",
    }
    tools = set().union(*(m.operations for m in bedrock.values()))
    assert {Operation.REMOVE_BACKGROUND, Operation.INPAINT, Operation.UPSCALE} <= tools
    assert all(m.backend == "bedrock_stability" for m in bedrock.values())


def test_every_model_is_well_formed(catalogue: Catalogue) -> None:
    for model in catalogue:
        assert model.images_per_call >= 1
        # Unknown (None) is allowed, and reported as unknown; zero is not.
        assert model.price_per_image is None or model.price_per_image > Decimal(0)
        assert model.operations
        for size in model.sizes:
            assert size.pixels <= max(model.max_size.pixels, Size(1792, 1024).pixels)
        if Operation.GENERATE in model.operations:
            assert Size(1024, 1024) in model.sizes, model.name


def test_unknown_model_is_not_found(catalogue: Catalogue) -> None:
    with pytest.raises(ModelNotFound) as caught:
        catalogue.get("acme/nope")
    assert caught.value.metadata == {"model": "acme/nope"}


def test_duplicate_names_are_rejected() -> None:
    entry = """
[[model]]
name = "a/b"
provider = "A"
backend = "x"
upstream_id = "b"
max_size = "1024x1024"
sizes = ["1024x1024"]
images_per_call = 1
operations = ["generate"]
price_per_image = "0.01"
"""
    with pytest.raises(ValueError, match="duplicate"):
        Catalogue.load(entry + entry)
