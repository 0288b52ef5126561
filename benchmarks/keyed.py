"""API keys and limits in Redis, for `make bench`'s production configuration.

With a service that checks keys (`image-service keys`, docs/auth.md) and a
`redis-server` on the machine, the production configuration runs as a fleet
would: a redis-server of its own on a free 127.0.0.1 port (no persistence),
one API key created in it with the `keys create` command, every call
presenting that key (checked against Redis, its per-key rate window and
quotas counted there) and the FLUX backend's per-provider limits
(`IMAGE_SERVICE_AZURE_FLUX_REQUESTS_PER_MINUTE`, `..._MAX_CONCURRENCY`)
held in Redis too. Every limit is set far above what the bench sends, so
that each is checked and counted on every call but never refuses one: the
figures are the cost of the checks, not of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from benchmarks.processes import HOST, base_env, free_port, image_service, start_child

# Per-key limits of the bench's key, and the FLUX backend's provider limits.
KEY_LIMITS = {"--rpm": "1000000", "--images-per-day": "100000000", "--monthly-budget": "1000000"}
PROVIDER_LIMITS = {
    "IMAGE_SERVICE_AZURE_FLUX_REQUESTS_PER_MINUTE": "1000000",
    "IMAGE_SERVICE_AZURE_FLUX_MAX_CONCURRENCY": "20000",
}
DESCRIPTION = (
    "every call with an API key checked against Redis, per-key limits "
    f"({', '.join(f'`{k} {v}`' for k, v in KEY_LIMITS.items())}) and per-provider limits "
    f"({', '.join(f'`{k}={v}`' for k, v in PROVIDER_LIMITS.items())}) counted in Redis"
)
UNSUPPORTED = "this service has no `image-service keys` command, or redis-server is missing"


def supported() -> bool:
    """Whether this service checks keys and a redis-server can be started."""
    if shutil.which("redis-server") is None:
        return False
    completed = subprocess.run(
        [image_service(), "keys", "--help"],
        capture_output=True,
        timeout=60,
        check=False,
        env=base_env(),
    )
    return completed.returncode == 0


@contextlib.asynccontextmanager
async def redis_server(workdir: Path, name: str) -> AsyncIterator[str]:
    """A redis-server on a free loopback port, stopped on exit; yields its URL."""
    port = free_port()
    child = await start_child(
        f"{name} redis",
        [
            "redis-server",
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        base_env(),
        workdir / f"{name}-redis.log",
        r"Ready to accept connections",
    )
    try:
        yield f"redis://{HOST}:{port}/0"
    finally:
        await asyncio.to_thread(child.stop)


async def create_key(redis_url: str) -> str:
    """A new API key in the Redis at `redis_url`, with `KEY_LIMITS`."""
    process = await asyncio.create_subprocess_exec(
        image_service(),
        "keys",
        "create",
        "bench",
        *(item for pair in KEY_LIMITS.items() for item in pair),
        env={**base_env(), "IMAGE_SERVICE_REDIS_URL": redis_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    key = out.decode().strip().splitlines()[0] if out.strip() else ""
    if process.returncode != 0 or not key.startswith("ck-"):
        raise RuntimeError(f"image-service keys create failed: {err.decode()[-500:]}")
    return key


def service_env(redis_url: str) -> dict[str, str]:
    """What the keyed configuration adds to the server's and sidecar's environment."""
    return {"IMAGE_SERVICE_AUTH": "keys", "IMAGE_SERVICE_REDIS_URL": redis_url, **PROVIDER_LIMITS}
