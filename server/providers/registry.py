"""The backend registry: a catalogue `backend` key → the plugin that serves it.

A table of import paths, loaded lazily (as fsspec's `known_implementations`):
a backend that is not configured is never imported, and neither is its SDK
(boto3, google-cloud-aiplatform). Each backend module exports one
`BackendPlugin` (see `_shared/plugin.py`); adding a backend is one line here.

`build_backends` builds every configured backend, applies its limits, and
reports each unconfigured one with the environment variable that would
configure it, so the service still starts and serves the other models.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from server.domain.catalogue import Catalogue
from server.domain.ports import ImageBackend
from server.domain.retry import RetryPolicy
from server.providers._shared.limits import limited
from server.providers._shared.plugin import ENV_PREFIX, BackendPlugin, LimitSettings
from server.providers._shared.shared_limits import SharedSlots
from server.settings import Settings

AnyPlugin = BackendPlugin[Any, Any]

PLUGINS: Mapping[str, str] = {
    "azure_flux": "server.providers.azure_flux:PLUGIN",
    "azure_mai": "server.providers.azure_mai:PLUGIN",
    "bailian_wan": "server.providers.bailian_wan:PLUGIN",
    "bedrock_stability": "server.providers.bedrock_stability:PLUGIN",
    "vertex_imagen": "server.providers.vertex_imagen:PLUGIN",
}


def load_plugin(key: str) -> AnyPlugin:
    """Import and return the plugin registered under `key` (KeyError if none)."""
    module_name, _, attribute = PLUGINS[key].partition(":")
    plugin = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(plugin, BackendPlugin) or plugin.key != key:
        raise TypeError(f"{PLUGINS[key]} is not the plugin of backend {key!r}")
    return plugin


def retry_policy(settings: Settings) -> RetryPolicy:
    """The upstream retry policy every backend shares."""
    return RetryPolicy(
        attempts=settings.upstream_attempts,
        base_delay=settings.upstream_backoff_base_s,
        max_delay=settings.upstream_backoff_max_s,
    )


def _given_values(
    settings: Settings, plugins: Iterable[AnyPlugin]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Backend values passed to `Settings` in code (`Settings(azure_flux_endpoint=...)`,
    as the sandbox and tests do), split per backend into (settings, limits).

    Each is named as its environment variable without `IMAGE_SERVICE_`; one
    that no backend declares is a ValueError, so a typo fails start-up
    instead of silently meaning "unset".
    """
    plugins = list(plugins)
    given: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {p.key: ({}, {}) for p in plugins}
    unknown = []
    for name, value in (settings.model_extra or {}).items():
        variable = ENV_PREFIX + name.upper()
        for plugin in plugins:
            values, limits = given[plugin.key]
            field = _field_under(variable, plugin.env_prefix, plugin.settings.model_fields)
            if field is not None:
                values[field] = value
                break
            field = _field_under(variable, plugin.limits_prefix, LimitSettings.model_fields)
            if field is not None:
                limits[field] = value
                break
        else:
            unknown.append(variable)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    return given


def _field_under(variable: str, prefix: str, fields: Mapping[str, object]) -> str | None:
    if not variable.startswith(prefix):
        return None
    field = variable.removeprefix(prefix).lower()
    return field if field in fields else None


def build_backends(
    settings: Settings, wanted: Iterable[str] = (), shared: SharedSlots | None = None
) -> tuple[dict[str, ImageBackend], dict[str, str]]:
    """Build every configured backend.

    Returns `(backends, missing)`: `backends` maps a key to its built (and
    limited) backend; `missing` maps each other key, of the registry or of
    `wanted` (pass the catalogue's backend keys), to the environment
    variable that would configure it, or to "" when no backend is
    registered under that key (no setting can enable it in this build). A
    factory's own error (a malformed endpoint, say) propagates:
    misconfiguration fails start-up. With `shared` (Redis), each backend's
    limits hold across every replica.
    """
    plugins = [load_plugin(key) for key in PLUGINS]
    given = _given_values(settings, plugins)
    policy = retry_policy(settings)
    backends: dict[str, ImageBackend] = {}
    missing: dict[str, str] = {}
    for plugin in plugins:
        values, limit_values = given[plugin.key]
        backend_settings = plugin.load_settings(values)
        unset = plugin.missing_setting(backend_settings)
        if unset is not None:
            missing[plugin.key] = unset
            continue
        limits = plugin.load_limits(limit_values)
        # The one place limits are applied, so every backend has them.
        backends[plugin.key] = limited(
            plugin.build(backend_settings, policy),
            key=plugin.key,
            max_concurrent=limits.max_concurrency,
            per_minute=limits.requests_per_minute,
            shared=shared,
        )
    for key in wanted:
        if key not in PLUGINS:
            missing[key] = ""
    return backends, missing


def check_catalogue(catalogue: Catalogue) -> None:
    """Validate every catalogue entry's `options` against its backend's
    typed options; ValueError naming the model and option otherwise.

    Entries of a backend this build has no plugin for are left alone (they
    are reported as not configured).
    """
    for model in catalogue:
        if model.backend in PLUGINS:
            load_plugin(model.backend).parse_options(model.name, model.options)
        routed = catalogue.routes_to(model)
        if routed is not None and routed.backend in PLUGINS and model.successor_options:
            # What a routed call sends: the successor's options with this row's on top.
            load_plugin(routed.backend).parse_options(
                model.name, {**routed.options, **model.successor_options}
            )
