"""The backend registry: a catalogue `backend` key → how to build that backend.

Data, not an if/elif ladder: a backend is added with one `BackendEntry`
naming the `Settings` fields it cannot run without and a factory. A backend
whose required settings are empty is left out and reported as not
configured, with the environment variable to set, so the service still
starts and serves the other models.

Factories import their backend module themselves, so a backend that is not
configured (and its SDK: boto3, google-cloud-aiplatform) is never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from server.domain.ports import ImageBackend
from server.domain.retry import RetryPolicy
from server.settings import Settings

ENV_PREFIX = "IMAGE_SERVICE_"


@dataclass(frozen=True)
class BackendEntry:
    """How to build one backend.

    `required` are `Settings` field names that must be set (non-empty) for
    the backend to exist; the factory may rely on them being set.
    """

    key: str
    required: tuple[str, ...]
    factory: Callable[[Settings], ImageBackend]


def env_var(field: str) -> str:
    """The environment variable that sets `Settings` field `field`."""
    return ENV_PREFIX + field.upper()


def retry_policy(settings: Settings) -> RetryPolicy:
    """The upstream retry policy every backend shares."""
    return RetryPolicy(
        attempts=settings.upstream_attempts,
        base_delay=settings.upstream_backoff_base_s,
        max_delay=settings.upstream_backoff_max_s,
    )


def _secret(value: SecretStr | None) -> SecretStr:
    if value is None:  # excluded by `required`; keeps the type checker honest
        raise ValueError("secret setting is not set")
    return value


def _azure_flux(settings: Settings) -> ImageBackend:
    from server.providers.azure_flux import AzureFluxBackend

    return AzureFluxBackend(
        endpoint=settings.azure_flux_endpoint,
        api_key=_secret(settings.azure_flux_api_key),
        api_version=settings.azure_flux_api_version,
        timeout_s=settings.azure_flux_timeout_s,
        retry=retry_policy(settings),
    )


REGISTRY: Mapping[str, BackendEntry] = {
    entry.key: entry
    for entry in (
        BackendEntry("azure_flux", ("azure_flux_endpoint", "azure_flux_api_key"), _azure_flux),
    )
}


def _is_set(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value != ""


def missing_setting(settings: Settings, entry: BackendEntry) -> str | None:
    """The environment variable of `entry`'s first unset required field, if any."""
    for field in entry.required:
        if not _is_set(getattr(settings, field, None)):
            return env_var(field)
    return None


def build_backends(
    settings: Settings,
    wanted: Iterable[str] = (),
    *,
    registry: Mapping[str, BackendEntry] = REGISTRY,
) -> tuple[dict[str, ImageBackend], dict[str, str]]:
    """Build every configured backend.

    Returns `(backends, missing)`: `backends` maps a key to its built
    backend; `missing` maps each other key, of the registry or of `wanted`
    (pass the catalogue's backend keys), to the environment variable that
    would configure it, or to "" when no backend is registered under that
    key (no setting can enable it in this build). A factory's own error
    (a malformed endpoint, say) propagates: misconfiguration fails start-up.
    """
    backends: dict[str, ImageBackend] = {}
    missing: dict[str, str] = {}
    for key, entry in registry.items():
        unset = missing_setting(settings, entry)
        if unset is None:
            backends[key] = entry.factory(settings)
        else:
            missing[key] = unset
    for key in wanted:
        if key not in registry:
            missing[key] = ""
    return backends, missing
