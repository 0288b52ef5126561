"""The model catalogue: which models exist and what each can do.

The catalogue is data (`catalogue.toml` beside this module), not code: a
model is added or repriced by editing that file. Each entry names the
backend (a key of the provider registry) that serves it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

from server.domain.errors import ModelNotFound
from server.domain.requests import Operation, Size

MAX_IMAGES_PER_REQUEST = 4


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry."""

    name: str
    provider: str
    backend: str
    upstream_id: str
    description: str
    max_size: Size
    sizes: tuple[Size, ...]
    images_per_call: int
    operations: frozenset[Operation]
    price_per_image: Decimal
    max_images_per_request: int = MAX_IMAGES_PER_REQUEST
    # Backend-specific knobs (for example the upstream's model field when it
    # differs from the route's path segment).
    options: Mapping[str, str] = field(default_factory=dict)

    def offers(self, operation: Operation) -> bool:
        return operation in self.operations


def _parse_entry(raw: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec(
        name=raw["name"],
        provider=raw["provider"],
        backend=raw["backend"],
        upstream_id=raw["upstream_id"],
        description=raw.get("description", ""),
        max_size=Size.parse(raw["max_size"]),
        sizes=tuple(Size.parse(s) for s in raw.get("sizes", [])),
        images_per_call=int(raw["images_per_call"]),
        operations=frozenset(Operation(op) for op in raw["operations"]),
        price_per_image=Decimal(raw["price_per_image"]),
        max_images_per_request=int(raw.get("max_images_per_request", MAX_IMAGES_PER_REQUEST)),
        options={str(k): str(v) for k, v in raw.get("options", {}).items()},
    )


class Catalogue:
    """An ordered, immutable set of `ModelSpec`s looked up by name."""

    def __init__(self, models: list[ModelSpec]) -> None:
        self._models = {m.name: m for m in models}
        if len(self._models) != len(models):
            raise ValueError("duplicate model names in the catalogue")

    @classmethod
    def load(cls, text: str | None = None) -> Catalogue:
        """Parse TOML `text`, by default the packaged `catalogue.toml`."""
        if text is None:
            text = resources.files(__package__).joinpath("catalogue.toml").read_text("utf-8")
        data = tomllib.loads(text)
        return cls([_parse_entry(entry) for entry in data.get("model", [])])

    def get(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(
                f"Unknown model {name!r}; ListModels shows the catalogue.",
                metadata={"model": name},
            ) from None

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
