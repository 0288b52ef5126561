"""Configuration, read once from the environment and injected.

Every variable is `IMAGE_SERVICE_<FIELD>` (upper case), for example
`IMAGE_SERVICE_GRPC_PORT=50051` or `IMAGE_SERVICE_AZURE_FLUX_API_KEY=...`.
Build `Settings()` once in the composition root; nothing else reads the
environment. Secrets are `SecretStr` so they never print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """All settings of the service; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="IMAGE_SERVICE_", extra="ignore")

    # --- gRPC server -------------------------------------------------------
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    # Four 2048x2048 PNGs inline, or an edit input, must fit in one message.
    max_message_bytes: int = Field(default=64 * MIB, ge=4 * MIB)
    # Clients behind a Kubernetes Service reconnect (and so rebalance onto
    # new pods) when the server ages their connection out.
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 600.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    # How long in-flight RPCs may run after SIGTERM before being cancelled.
    shutdown_grace_s: float = 30.0
    # Applied when a caller sets no deadline; image models take minutes.
    default_deadline_s: float = 600.0
    reflection: bool = True
    log_level: str = "INFO"

    # --- storage -----------------------------------------------------------
    storage: Literal["local", "r2"] = "local"
    local_storage_dir: Path = Path("data/media")
    # URL prefix under which the local directory is served over HTTP.
    local_public_base_url: str = "http://127.0.0.1:8080/media"
    storage_attempts: int = Field(default=4, ge=1)

    # --- upstream retries --------------------------------------------------
    upstream_attempts: int = Field(default=4, ge=1)
    upstream_backoff_base_s: float = 0.5
    upstream_backoff_max_s: float = 20.0

    # --- Azure AI Foundry, Black Forest Labs route (FLUX) --------------------
    # Resource endpoint, e.g. https://myres.services.ai.azure.com
    azure_flux_endpoint: str = ""
    azure_flux_api_key: SecretStr | None = None
    azure_flux_api_version: str = "preview"
    # FLUX.2 pro takes 30-120 s per image.
    azure_flux_timeout_s: float = 180.0
