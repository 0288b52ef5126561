"""The model catalogue: which models exist, what each can do, and its lifecycle.

The catalogue is data (`catalogue.toml` beside this module), not code: a
model is added, repriced or retired by editing that file. Each entry names
the backend (a key of the provider registry) that serves it.

Lifecycle: a model is active, deprecated (still served, with a warning and a
retirement date) or retired (its upstream id is gone). A retired name stays
callable; what a call does is the model's `RetiredPolicy`, which a deployment
may override (`Catalogue(policies=...)`): route to the successor (the
default), pin the original upstream id, or refuse with `ModelRetired`.
`Catalogue.resolve` applies it and says, in warnings, what it did. The
upstream facts (dates, successors) and their sources are in
docs/models-lifecycle.md.
"""

from __future__ import annotations

import datetime
import enum
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from typing import Any

from server.domain.errors import ModelNotFound, ModelRetired
from server.domain.pricing import TokenPrices
from server.domain.requests import Operation, Size

MAX_IMAGES_PER_REQUEST = 4


class Lifecycle(enum.Enum):
    """Where a model is in its upstream's lifecycle."""

    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


class SeedSupport(enum.Enum):
    """How a model's upstream takes a seed (see catalogue.toml's `seed`)."""

    NONE = "none"
    FORWARDED = "forwarded"
    RANDOM = "random"


class RetiredPolicy(enum.Enum):
    """What a call naming a retired model does."""

    ROUTE = "route"
    PIN = "pin"
    REFUSE = "refuse"


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
    # None when no price could be confirmed: reported as unknown, never 0.
    price_per_image: Decimal | None
    max_images_per_request: int = MAX_IMAGES_PER_REQUEST
    # Backend-specific knobs (for example the upstream's model field when it
    # differs from the route's path segment).
    options: Mapping[str, str] = field(default_factory=dict)
    status: Lifecycle = Lifecycle.ACTIVE
    retirement_date: datetime.date | None = None
    successor: str = ""
    on_retired: RetiredPolicy = RetiredPolicy.ROUTE
    # Whether the upstream takes a seed and whether the domain invents one
    # when the caller gave none (so fan-out calls differ).
    seed: SeedSupport = SeedSupport.FORWARDED
    # For models billed by token: the cost comes from the usage each answer
    # reports, at these prices (`price_per_image` is then only indicative).
    token_prices: TokenPrices | None = None
    # Options a routed call gives its successor (for example Gemini's
    # thinking level that stands in for an Imagen tier).
    successor_options: Mapping[str, str] = field(default_factory=dict)

    def offers(self, operation: Operation) -> bool:
        return operation in self.operations

    @property
    def upstream_model(self) -> str:
        """The upstream's name for the model (its `model` field where it has
        one apart from the route, as FLUX does), for records and warnings."""
        return self.options.get("upstream_model", self.upstream_id)


@dataclass(frozen=True)
class Resolution:
    """Which model serves a call that named `requested`, and what to tell the caller."""

    requested: ModelSpec
    serving: ModelSpec
    warnings: tuple[str, ...] = ()

    @property
    def routed(self) -> bool:
        return self.serving.name != self.requested.name


def _parse_date(value: object) -> datetime.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value))


def _parse_entry(raw: Mapping[str, Any]) -> ModelSpec:
    price = raw.get("price_per_image", "")
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
        price_per_image=Decimal(price) if price not in ("", "unknown") else None,
        max_images_per_request=int(raw.get("max_images_per_request", MAX_IMAGES_PER_REQUEST)),
        options={str(k): str(v) for k, v in raw.get("options", {}).items()},
        status=Lifecycle(raw.get("status", "active")),
        retirement_date=_parse_date(raw.get("retirement_date")),
        successor=raw.get("successor", ""),
        on_retired=RetiredPolicy(raw.get("on_retired", "route")),
        seed=SeedSupport(raw.get("seed", "forwarded")),
        token_prices=TokenPrices.parse(raw["token_prices"]) if "token_prices" in raw else None,
        successor_options={str(k): str(v) for k, v in raw.get("successor_options", {}).items()},
    )


def parse_policies(text: str) -> dict[str, RetiredPolicy]:
    """Parse `name=policy,name=policy` (a deployment's overrides).

    Raises ValueError naming the bad item.
    """
    policies: dict[str, RetiredPolicy] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            policies[name.strip()] = RetiredPolicy(value.strip().lower())
        except ValueError:
            choices = "|".join(p.value for p in RetiredPolicy)
            raise ValueError(
                f"retired-model policy {item!r} must look like model={choices}"
            ) from None
    return policies


class Catalogue:
    """An ordered, immutable set of `ModelSpec`s looked up by name."""

    def __init__(
        self, models: list[ModelSpec], policies: Mapping[str, RetiredPolicy] | None = None
    ) -> None:
        self._models = {m.name: m for m in models}
        if len(self._models) != len(models):
            raise ValueError("duplicate model names in the catalogue")
        self._policies = dict(policies or {})
        unknown = set(self._policies) - set(self._models)
        if unknown:
            raise ValueError(f"retired-model policy for unknown models: {sorted(unknown)}")
        for model in models:
            self._check_lifecycle(model)

    def _check_lifecycle(self, model: ModelSpec) -> None:
        if model.status is not Lifecycle.ACTIVE and model.retirement_date is None:
            raise ValueError(f"{model.name} is {model.status.value} but has no retirement_date")
        if model.successor == model.name:
            raise ValueError(f"{model.name} names itself as its successor")
        if model.status is Lifecycle.RETIRED and self.policy(model) is RetiredPolicy.ROUTE:
            successor = self._models.get(model.successor)
            if successor is None:
                raise ValueError(
                    f"{model.name} routes to its successor {model.successor!r}, "
                    "which is not in the catalogue"
                )
            if successor.status is Lifecycle.RETIRED:
                raise ValueError(f"{model.name} routes to {successor.name}, itself retired")

    @classmethod
    def load(
        cls, text: str | None = None, policies: Mapping[str, RetiredPolicy] | None = None
    ) -> Catalogue:
        """Parse TOML `text`, by default the packaged `catalogue.toml`."""
        if text is None:
            text = resources.files(__package__).joinpath("catalogue.toml").read_text("utf-8")
        data = tomllib.loads(text)
        return cls([_parse_entry(entry) for entry in data.get("model", [])], policies)

    def get(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(
                f"Unknown model {name!r}; ListModels shows the catalogue.",
                metadata={"model": name},
            ) from None

    def policy(self, model: ModelSpec) -> RetiredPolicy:
        """The retired-model policy in force for `model` on this deployment."""
        return self._policies.get(model.name, model.on_retired)

    def routes_to(self, model: ModelSpec) -> ModelSpec | None:
        """The model that serves calls naming `model`, when that is another one."""
        if model.status is Lifecycle.RETIRED and self.policy(model) is RetiredPolicy.ROUTE:
            return self._models[model.successor]
        return None

    def resolve(self, name: str) -> Resolution:
        """The model that serves a call naming `name`, per its lifecycle.

        Raises `ModelNotFound`, or `ModelRetired` when the policy refuses.
        """
        requested = self.get(name)
        if requested.status is Lifecycle.ACTIVE:
            return Resolution(requested, requested)
        date = requested.retirement_date
        if requested.status is Lifecycle.DEPRECATED:
            later = f"; its successor is {requested.successor}" if requested.successor else ""
            return Resolution(
                requested,
                requested,
                (f"{name} is deprecated and retires on {date}{later}.",),
            )
        policy = self.policy(requested)
        if policy is RetiredPolicy.REFUSE:
            instead = f"; use {requested.successor}" if requested.successor else ""
            raise ModelRetired(
                f"{name} was retired on {date}{instead}.",
                metadata={
                    "model": name,
                    "retirement_date": str(date),
                    "successor": requested.successor,
                },
            )
        if policy is RetiredPolicy.PIN:
            return Resolution(
                requested,
                requested,
                (
                    f"{name} ({requested.upstream_model}) was retired upstream on {date}; "
                    "this deployment pins the original upstream id"
                    + (
                        f"; its successor is {requested.successor}." if requested.successor else "."
                    ),
                ),
            )
        successor = self._models[requested.successor]
        if requested.successor_options:
            successor = replace(
                successor, options={**successor.options, **requested.successor_options}
            )
        return Resolution(
            requested,
            successor,
            (
                f"{name} was retired on {date}; served by its successor "
                f"{successor.name} ({successor.upstream_model}).",
            ),
        )

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
