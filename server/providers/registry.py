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
from server.providers.limits import limited
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


def _bedrock_stability(settings: Settings) -> ImageBackend:
    from server.providers.bedrock_stability import BedrockStabilityBackend

    return BedrockStabilityBackend(
        region=settings.bedrock_region,
        endpoint_url=settings.bedrock_endpoint_url or None,
        access_key_id=settings.bedrock_access_key_id,
        secret_access_key=settings.bedrock_secret_access_key,
        timeout_s=settings.bedrock_timeout_s,
        max_connections=settings.bedrock_max_connections,
        retry=retry_policy(settings),
    )


def _azure_mai(settings: Settings) -> ImageBackend:
    from server.providers.azure_mai import AzureMaiBackend

    return AzureMaiBackend(
        endpoint=settings.azure_mai_endpoint,
        api_key=_secret(settings.azure_mai_api_key),
        deployment=settings.azure_mai_deployment,
        api_version=settings.azure_mai_api_version,
        timeout_s=settings.azure_mai_timeout_s,
        retry=retry_policy(settings),
    )


def _bailian_wan(settings: Settings) -> ImageBackend:
    from server.providers.bailian_wan import BailianWanBackend

    return BailianWanBackend(
        base_url=settings.bailian_base_url,
        api_key=_secret(settings.bailian_api_key),
        timeout_s=settings.bailian_timeout_s,
        task_timeout_s=settings.bailian_task_timeout_s,
        poll_initial_s=settings.bailian_poll_initial_s,
        poll_max_s=settings.bailian_poll_max_s,
        download_concurrency=settings.bailian_download_concurrency,
        retry=retry_policy(settings),
    )


def _vertex_imagen(settings: Settings) -> ImageBackend:
    from server.providers.vertex_imagen import VertexImagenBackend

    return VertexImagenBackend(
        project=settings.vertex_project,
        location=settings.vertex_location,
        api_endpoint=settings.vertex_api_endpoint,
        credentials_file=settings.vertex_credentials_file,
        timeout_s=settings.vertex_timeout_s,
        retry=retry_policy(settings),
    )


REGISTRY: Mapping[str, BackendEntry] = {
    entry.key: entry
    for entry in (
        BackendEntry("azure_flux", ("azure_flux_endpoint", "azure_flux_api_key"), _azure_flux),
        BackendEntry("vertex_imagen", ("vertex_project",), _vertex_imagen),
        BackendEntry("azure_mai", ("azure_mai_endpoint", "azure_mai_api_key"), _azure_mai),
        BackendEntry("bedrock_stability", ("bedrock_region",), _bedrock_stability),
        BackendEntry("bailian_wan", ("bailian_base_url", "bailian_api_key"), _bailian_wan),
    )
}


def _is_set(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value != ""


def backend_limits(settings: Settings, key: str) -> tuple[int | None, int | None]:
    """`(max_concurrency, requests_per_minute)` for backend `key`, from the
    `<key>_max_concurrency` / `<key>_requests_per_minute` settings (None:
    no limit, also for a backend without such settings)."""
    return (
        getattr(settings, f"{key}_max_concurrency", None),
        getattr(settings, f"{key}_requests_per_minute", None),
    )


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
            # The one place limits are applied, so every backend has them.
            max_concurrent, per_minute = backend_limits(settings, key)
            backends[key] = limited(
                entry.factory(settings),
                key=key,
                max_concurrent=max_concurrent,
                per_minute=per_minute,
            )
        else:
            missing[key] = unset
    for key in wanted:
        if key not in registry:
            missing[key] = ""
    return backends, missing
