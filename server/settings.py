"""The service's core configuration, read once from the environment and injected.

Every variable is `IMAGE_SERVICE_<FIELD>` (upper case), for example
`IMAGE_SERVICE_GRPC_PORT=50051`. Build `Settings()` once in the composition
root; nothing else reads the environment. Secrets are `SecretStr` so they
never print.

Each backend's own settings (`IMAGE_SERVICE_AZURE_FLUX_API_KEY`, its limits,
...) belong to its plugin (`server/providers/<backend>/__init__.py`), which
reads them when the registry builds it. Code that configures a backend
without the environment (the dev sandbox, tests) passes them here under the
variable's name without the prefix, `Settings(azure_flux_api_key=...)`: they
are kept as extras and handed to the plugin, which rejects a name no backend
declares at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """All settings of the service; see the README's configuration table."""

    # hide_input_in_errors: a validation error must not echo a secret back.
    # extra="allow": backend values given in code (see the module docstring);
    # the environment is only ever read for declared fields.
    model_config = SettingsConfigDict(
        env_prefix="IMAGE_SERVICE_", extra="allow", hide_input_in_errors=True
    )

    # --- gRPC server -------------------------------------------------------
    # "::" is every address, IPv6 and IPv4 (dual-stack; IPv4 alone on a
    # kernel without IPv6), so IPv4, IPv6 and dual-stack clusters all work.
    grpc_host: str = "::"
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

    # --- observability (see docs/operations.md) -------------------------------
    # "json": one JSON object per line, for log collectors.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics: the gRPC server's own HTTP port (the sidecar serves
    # /metrics on its REST port). False turns both off.
    metrics: bool = True
    metrics_host: str = "::"
    # 9464 is OpenTelemetry's Prometheus exporter port; 0 picks a free one.
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    # --- REST sidecar (OpenAI-compatible /v1/images/*) ----------------------
    rest_host: str = "::"
    rest_port: int = 8080
    # The gRPC service the sidecar calls, as host:port.
    rest_upstream: str = "127.0.0.1:50051"
    # Deadline of each upstream call. Image models take minutes (FLUX.2 pro
    # up to two per image), so this is minutes too, not an HTTP-ish 30 s.
    rest_upstream_timeout_s: float = Field(default=600.0, gt=0)
    # Largest /v1/images/edits body (all images and the mask together); it
    # must leave room in one gRPC message (max_message_bytes).
    rest_max_upload_bytes: int = Field(default=50 * MIB, ge=1)
    # After SIGTERM: /readyz answers 503 at once, and requests in flight may
    # run this long before they are answered 503 (server/rest/drain.py).
    rest_shutdown_grace_s: float = Field(default=30.0, ge=0)

    # --- storage -----------------------------------------------------------
    storage: Literal["local", "r2"] = "local"
    local_storage_dir: Path = Path("data/media")
    # URL prefix under which the local directory is served over HTTP.
    local_public_base_url: str = "http://127.0.0.1:8080/media"
    storage_attempts: int = Field(default=4, ge=1)

    # --- Cloudflare R2 (S3 API), when storage = "r2" ------------------------
    # https://<account id>.r2.cloudflarestorage.com
    r2_endpoint_url: str = ""
    r2_bucket: str = ""
    r2_access_key_id: SecretStr | None = None
    r2_secret_access_key: SecretStr | None = None
    # The CDN domain returned URLs start with (the bucket's custom domain),
    # e.g. https://img.example.com; the object key is appended after a "/".
    r2_public_base_url: str = ""
    # A second bucket (same account and keys) for generation records and the
    # request-id index; empty keeps them beside the images. Set it when the
    # image bucket is public: public access covers every key, and a record's
    # key follows from its images' URLs.
    r2_records_bucket: str = ""
    # R2 accepts "auto"; other S3-compatible stores want their real region.
    r2_region: str = "auto"
    # > 0: private-bucket mode. URLs are presigned GETs valid this many
    # seconds (SigV4 allows at most 7 days) instead of public CDN links.
    r2_presign_ttl_s: int = Field(default=0, ge=0, le=7 * 24 * 3600)
    # Connections to R2, and threads running boto3 calls (one per connection,
    # so concurrent uploads queue instead of exhausting the pool).
    r2_max_connections: int = Field(default=32, ge=1, le=512)
    r2_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Per socket read; bounds one attempt at a hung upload or download.
    r2_read_timeout_s: float = Field(default=30.0, gt=0)

    # --- callers: API keys, quotas, shared state (docs/auth.md) --------------
    # "keys": every ImageService call needs `authorization: Bearer ck-...`.
    # "none": no checks, for deployments behind a gateway that already
    # authenticates (a warning is logged at start).
    auth: Literal["keys", "none"] = "keys"
    # The embedded key store of a single machine (SQLite), shared by the
    # server and the `image-service keys` commands; unused with a Redis URL.
    auth_db: Path = Path("data/auth.sqlite3")
    # redis://[:password@]host:6379/0 (rediss:// for TLS): keys, per-key
    # counters, request-id leases and provider limits then hold for every
    # replica. A secret: it may carry the password.
    redis_url: SecretStr | None = None
    # This process's connections to Redis (keys, counters, leases and provider
    # limits share them), opened as needed. Commands past them wait for a free
    # one, up to redis_pool_timeout_s, then fail like an unreachable Redis
    # (UNAVAILABLE). A connection is held until the event loop reads the
    # answer, so a burst on a busy loop needs hundreds (docs/auth.md).
    redis_max_connections: int = Field(default=512, ge=1, le=10_000)
    redis_pool_timeout_s: float = Field(default=10.0, gt=0)
    # How long one command waits to connect and for Redis's answer before the
    # call fails closed. Measured from this process's event loop, so it also
    # covers the loop's own lag: 10,000 calls arriving at once delayed
    # answers by up to 0.9 s on a busy machine (Redis itself took microseconds).
    redis_timeout_s: float = Field(default=5.0, gt=0)
    # How long a retry waits for another replica's attempt with the same
    # request id (Redis only) before ABORTED / 409 with Retry-After.
    idempotency_wait_s: float = Field(default=30.0, ge=0)

    # --- upstream retries --------------------------------------------------
    upstream_attempts: int = Field(default=4, ge=1)
    upstream_backoff_base_s: float = 0.5
    upstream_backoff_max_s: float = 20.0

    # --- model lifecycle -----------------------------------------------------
    # What calls naming a retired model do on this deployment, overriding the
    # catalogue: "google/imagen-4.0=pin,azure/mai-image-2=refuse" (route |
    # pin | refuse; see docs/models-lifecycle.md). Checked at start-up.
    retired_models: str = ""
    # An OpenAI parameter a model cannot honour (quality=high, say): "report"
    # serves the request with the upstream's default and says so in the
    # record's warnings; "refuse" answers INVALID_ARGUMENT naming it.
    unsupported_parameters: Literal["report", "refuse"] = "report"

    def check_r2(self) -> None:
        """Raise ValueError naming each R2 variable that storage = "r2" still needs.

        Called when the gRPC server builds its store at startup, so a
        missing variable is named at once instead of surfacing as every
        upload failing (and every image coming back inline). Not a model
        validator: the REST sidecar reads the same ConfigMap, including
        `IMAGE_SERVICE_STORAGE=r2`, but is given no R2 credentials.
        """
        if self.storage != "r2":
            return
        required = {
            "IMAGE_SERVICE_R2_ENDPOINT_URL": self.r2_endpoint_url.strip(),
            "IMAGE_SERVICE_R2_BUCKET": self.r2_bucket.strip(),
            "IMAGE_SERVICE_R2_ACCESS_KEY_ID": _secret_set(self.r2_access_key_id),
            "IMAGE_SERVICE_R2_SECRET_ACCESS_KEY": _secret_set(self.r2_secret_access_key),
        }
        if self.r2_presign_ttl_s == 0:
            # Private-bucket mode presigns URLs; otherwise they are the CDN's.
            required["IMAGE_SERVICE_R2_PUBLIC_BASE_URL"] = self.r2_public_base_url.strip()
        missing = [name for name, value in required.items() if not value]
        if missing:
            hint = ""
            if "IMAGE_SERVICE_R2_PUBLIC_BASE_URL" in missing:
                hint = " (or IMAGE_SERVICE_R2_PRESIGN_TTL_S > 0 for a private bucket)"
            raise ValueError(f"IMAGE_SERVICE_STORAGE=r2 needs {', '.join(missing)} set{hint}.")
        for name, url in (
            ("IMAGE_SERVICE_R2_ENDPOINT_URL", self.r2_endpoint_url),
            ("IMAGE_SERVICE_R2_PUBLIC_BASE_URL", self.r2_public_base_url),
        ):
            if url and not url.startswith(("https://", "http://")):
                raise ValueError(f"{name} must start with https:// (or http://).")


def _secret_set(secret: SecretStr | None) -> str:
    return secret.get_secret_value().strip() if secret is not None else ""
