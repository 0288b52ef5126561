"""What a backend module exports: one `BackendPlugin`.

A plugin carries everything the service needs to know about a backend
without importing its SDK: its registry key, its settings class (its own
`IMAGE_SERVICE_<PREFIX>_` variables), which of those settings it cannot
run without, the typed `options` its catalogue rows may carry (checked at
start-up), and a factory. `server.providers.registry` lists the plugins by
import path and loads only the configured ones.

Every backend also has two limits, `IMAGE_SERVICE_<KEY>_MAX_CONCURRENCY`
and `IMAGE_SERVICE_<KEY>_REQUESTS_PER_MINUTE` (`LimitSettings`), named
after its key so that the registry applies them to every backend alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.domain.ports import ImageBackend
from server.domain.retry import RetryPolicy

ENV_PREFIX = "IMAGE_SERVICE_"


class BackendSettings(BaseSettings):
    """Base of every backend's settings class.

    A subclass sets `model_config = backend_settings_config("IMAGE_SERVICE_X_")`.
    Secrets are `SecretStr` so they never print.
    """

    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True)


def backend_settings_config(env_prefix: str) -> SettingsConfigDict:
    """The settings config of a backend whose variables start with `env_prefix`."""
    if not env_prefix.startswith(ENV_PREFIX) or not env_prefix.endswith("_"):
        raise ValueError(f"a backend's prefix is {ENV_PREFIX}<NAME>_, not {env_prefix!r}")
    # extra="forbid": a value given in code under a wrong name fails start-up
    # (the environment is only ever read for declared fields).
    return SettingsConfigDict(env_prefix=env_prefix, extra="forbid", hide_input_in_errors=True)


class LimitSettings(BaseSettings):
    """A backend's client-side limits (see `limits.LimitedBackend`); unset is no limit."""

    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True)

    max_concurrency: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)


class NoOptions(BaseModel):
    """The options of a backend whose catalogue rows take none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SettingsT = TypeVar("SettingsT", bound=BackendSettings)
OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass(frozen=True)
class BackendPlugin(Generic[SettingsT, OptionsT]):
    """One backend, as the registry sees it.

    - `key`: the catalogue's `backend` value and the registry key.
    - `settings`: its settings class; `required` names the fields that must
      be set (non-empty) for the backend to exist at all.
    - `options`: a pydantic model of the `options` table its catalogue rows
      may carry (extra keys forbidden), validated at start-up.
    - `backend`: the import path (`module:Class`) of the backend class,
      imported only when it is built (so is its SDK). Its constructor takes
      every settings field as a keyword argument, and `retry`; it may raise
      ValueError for a malformed setting.
    """

    key: str
    settings: type[SettingsT]
    required: tuple[str, ...]
    backend: str
    options: type[OptionsT]

    def build(self, settings: SettingsT, retry: RetryPolicy) -> ImageBackend:
        """The backend, built from `settings` (whose `required` fields are set)."""
        module_name, _, attribute = self.backend.partition(":")
        backend_class = getattr(importlib.import_module(module_name), attribute)
        # model_dump keeps SecretStr values wrapped: the backend unwraps them
        # where it sends them, so they never print.
        backend: ImageBackend = backend_class(**settings.model_dump(), retry=retry)
        return backend

    @property
    def env_prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", ""))

    @property
    def limits_prefix(self) -> str:
        return f"{ENV_PREFIX}{self.key.upper()}_"

    def env_var(self, field: str) -> str:
        """The environment variable of settings field `field`."""
        return f"{self.env_prefix}{field.upper()}"

    def load_settings(self, values: Mapping[str, Any] | None = None) -> SettingsT:
        """Its settings from the environment, with `values` (field → value) on top."""
        return self.settings(**dict(values or {}))

    def load_limits(self, values: Mapping[str, Any] | None = None) -> LimitSettings:
        # `_env_prefix` is pydantic-settings' per-instance prefix (not a field,
        # so the type checker does not know it): the limits follow the key.
        return LimitSettings(_env_prefix=self.limits_prefix, **dict(values or {}))  # type: ignore[call-arg]

    def missing_setting(self, settings: SettingsT) -> str | None:
        """The environment variable of the first unset required field, if any."""
        for field in self.required:
            if not is_set(getattr(settings, field)):
                return self.env_var(field)
        return None

    def parse_options(self, model: str, options: Mapping[str, str]) -> OptionsT:
        """`options` of catalogue entry `model` as this backend's typed options.

        Raises ValueError naming the model and the offending option.
        """
        try:
            return self.options.model_validate(dict(options))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'options'}: {item['msg']}"
                for item in error.errors()
            )
            raise ValueError(f"catalogue entry {model!r} has bad options: {problems}") from None


def is_set(value: object) -> bool:
    """Whether a setting has a value (an empty string or secret is unset)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value != ""
