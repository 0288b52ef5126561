"""Model lifecycle in the catalogue: statuses, successors and the retired-model policy."""

from __future__ import annotations

import datetime
import pathlib

import pytest

from server.domain.catalogue import (
    Catalogue,
    Lifecycle,
    RetiredPolicy,
    SeedSupport,
    parse_policies,
)
from server.domain.errors import ModelRetired

_ENTRY = """
[[model]]
name = "{name}"
provider = "A"
backend = "x"
upstream_id = "{name}-up"
max_size = "1024x1024"
sizes = ["1024x1024"]
images_per_call = 1
operations = ["generate"]
price_per_image = "0.01"
{extra}
"""


def _catalogue(
    *entries: tuple[str, str], policies: dict[str, RetiredPolicy] | None = None
) -> Catalogue:
    text = "".join(_ENTRY.format(name=name, extra=extra) for name, extra in entries)
    return Catalogue.load(text, policies)


_OLD = 'status = "retired"\nretirement_date = 2026-08-17\nsuccessor = "a/new"'


def test_a_retired_model_routes_to_its_successor_by_default() -> None:
    catalogue = _catalogue(("a/old", _OLD), ("a/new", ""))
    resolution = catalogue.resolve("a/old")
    assert resolution.routed
    assert resolution.requested.name == "a/old"
    assert resolution.serving.name == "a/new"
    assert resolution.warnings == (
        "a/old was retired on 2026-08-17; served by its successor a/new (a/new-up).",
    )
    assert catalogue.routes_to(catalogue.get("a/old")) == catalogue.get("a/new")


def test_a_deployment_can_pin_the_original_upstream_id() -> None:
    catalogue = _catalogue(("a/old", _OLD), ("a/new", ""), policies={"a/old": RetiredPolicy.PIN})
    resolution = catalogue.resolve("a/old")
    assert not resolution.routed
    assert resolution.serving.upstream_id == "a/old-up"
    assert "retired upstream on 2026-08-17" in resolution.warnings[0]
    assert "its successor is a/new" in resolution.warnings[0]
    assert catalogue.routes_to(catalogue.get("a/old")) is None


def test_a_deployment_can_refuse_a_retired_model_naming_the_successor() -> None:
    catalogue = _catalogue(("a/old", _OLD), ("a/new", ""), policies={"a/old": RetiredPolicy.REFUSE})
    with pytest.raises(ModelRetired) as caught:
        catalogue.resolve("a/old")
    assert caught.value.reason == "MODEL_RETIRED"
    assert caught.value.metadata == {
        "model": "a/old",
        "retirement_date": "2026-08-17",
        "successor": "a/new",
    }
    assert "a/new" in caught.value.message


def test_a_deprecated_model_is_served_with_a_warning() -> None:
    catalogue = _catalogue(
        ("a/old", 'status = "deprecated"\nretirement_date = 2027-01-31\nsuccessor = "a/new"'),
        ("a/new", ""),
    )
    resolution = catalogue.resolve("a/old")
    assert resolution.serving.name == "a/old"
    assert resolution.warnings == (
        "a/old is deprecated and retires on 2027-01-31; its successor is a/new.",
    )


def test_an_active_model_serves_itself_without_warnings() -> None:
    resolution = _catalogue(("a/new", "")).resolve("a/new")
    assert resolution.serving.name == "a/new" and resolution.warnings == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((("a/old", _OLD),), "not in the catalogue"),
        (
            (("a/old", _OLD), ("a/new", 'status = "retired"\nretirement_date = 2026-01-01')),
            "itself retired",
        ),
        ((("a/old", 'status = "deprecated"'),), "no retirement_date"),
        ((("a/old", 'successor = "a/old"'),), "itself as its successor"),
    ],
)
def test_inconsistent_lifecycles_are_refused_at_load(
    entries: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _catalogue(*entries)


def test_a_policy_for_an_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown models"):
        _catalogue(("a/new", ""), policies={"a/nope": RetiredPolicy.PIN})


def test_policies_parse_from_a_deployment_setting() -> None:
    assert parse_policies(" a/old=pin, b/old=REFUSE ,") == {
        "a/old": RetiredPolicy.PIN,
        "b/old": RetiredPolicy.REFUSE,
    }
    for bad in ("a/old", "a/old=keep", "=pin"):
        with pytest.raises(ValueError, match="must look like model=route"):
            parse_policies(bad)


def test_unknown_price_is_none_not_zero() -> None:
    spec = _catalogue(("a/new", "")).get("a/new")
    assert spec.price_per_image is not None
    text = _ENTRY.format(name="a/x", extra="").replace('"0.01"', '"unknown"')
    assert Catalogue.load(text).get("a/x").price_per_image is None


def test_the_shipped_catalogue_states_the_known_retirements() -> None:
    catalogue = Catalogue.load()
    for name, date, successor in [
        ("google/imagen-4.0", "2026-08-17", "google/gemini-3.1-flash-image"),
        ("google/imagen-4.0-fast", "2026-08-17", "google/gemini-3.1-flash-image"),
        ("google/imagen-4.0-ultra", "2026-08-17", "google/gemini-3-pro-image"),
        ("azure/mai-image-2", "2026-08-15", "azure/mai-image-2.6"),
    ]:
        spec = catalogue.get(name)
        assert spec.status is Lifecycle.RETIRED
        assert spec.retirement_date == datetime.date.fromisoformat(date)
        assert spec.successor == successor
    assert catalogue.resolve("azure/mai-image-2").serving.upstream_id == "MAI-Image-2.6"
    # MAI answers a seed with 400; Imagen drops its watermark when given one.
    assert catalogue.get("azure/mai-image-2.6").seed is SeedSupport.NONE
    assert catalogue.get("google/imagen-4.0").seed is SeedSupport.FORWARDED
    assert catalogue.get("azure/flux-2-pro").seed is SeedSupport.RANDOM


def test_every_price_is_cited_in_the_models_docs() -> None:
    """Each catalogue model appears in docs/models-*.md with its price (or as unknown)."""
    docs = "\n".join(
        path.read_text("utf-8")
        for path in (pathlib.Path(__file__).parents[2] / "docs").glob("models-*.md")
    )
    for model in Catalogue.load():
        assert f"`{model.name}`" in docs or model.name.split("/")[1] in docs, model.name
        if model.price_per_image is None:
            continue
        shown = f"${model.price_per_image.normalize():f}"
        assert shown in docs, f"{model.name}: {shown} is not cited in docs/models-*.md"
