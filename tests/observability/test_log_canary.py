"""No prompt, image data or credential in any log line, at DEBUG, anywhere.

Both processes run in this test's process with the service's own logging
set-up at DEBUG (JSON), storage on R2 (moto's real S3 server, so botocore
signs and sends real requests), and one REST generation or edit through
every backend's emulator, plus upstream refusals whose error bodies the
backends read. Then every captured line is searched for the canary prompt,
every credential the service holds, SigV4 and bearer headers, and base64
PNG data.
"""

from __future__ import annotations

import base64
import io
import logging
import pathlib
import uuid
from collections.abc import Iterator

import httpx
import pytest

from server.observability.logs import HELD_DOWN, configure_logging
from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from tests.observability.s3 import s3_server
from tests.observability.scrape import two_processes
from tests.support.images import png

CANARY_PROMPT = f"canary-prompt-{uuid.uuid4().hex}"
R2_KEY_ID = "AKIDCANARYR2KEY00042"
R2_SECRET = f"canary-r2-secret-{uuid.uuid4().hex}"
# Test machinery, not the service: the S3 server and the emulators.
_NOT_THE_SERVICE = ("werkzeug", "moto", "server.sandbox")

GENERATIONS = [
    "azure/flux-kontext-pro",
    "google/imagen-4.0-fast",
    "bailian/wan2.7-image",
    "azure/mai-image-2",
    "bedrock/stability-stable-image-core",
]


@pytest.fixture
def moto_url() -> Iterator[str]:
    with s3_server("canary") as url:
        yield url


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The service's own DEBUG/JSON logging into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in HELD_DOWN})
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)

    class NotTheService(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.name.startswith(_NOT_THE_SERVICE)

    root.handlers[0].addFilter(NotTheService())
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def test_no_canary_reaches_any_log_line_at_debug(
    captured: io.StringIO, moto_url: str, tmp_path: pathlib.Path
) -> None:
    async with SandboxServer("127.0.0.1", 0) as sandbox:
        credentials = [
            value
            for name, value in sandbox.settings_overrides().items()
            if ("key" in name or "secret" in name) and len(value) >= 8
        ]
        assert len(credentials) >= 4, credentials
        async with (
            two_processes(
                sandbox,
                tmp_path,
                storage="r2",
                r2_endpoint_url=moto_url,
                r2_bucket="canary",
                r2_access_key_id=R2_KEY_ID,
                r2_secret_access_key=R2_SECRET,
                r2_public_base_url="https://img.canary.test",
                upstream_attempts=2,
            ) as both,
            httpx.AsyncClient(base_url=both.sidecar_url, timeout=60) as client,
        ):
            for model in GENERATIONS:
                response = await client.post(
                    "/v1/images/generations",
                    json={
                        "model": model,
                        "prompt": CANARY_PROMPT,
                        "response_format": "b64_json",
                    },
                    headers={"Authorization": "Bearer ck-canary-caller-key"},
                )
                assert response.status_code == 200, (model, response.text)
            edit = await client.post(
                "/v1/images/edits",
                data={"model": "azure/flux-kontext-pro", "prompt": CANARY_PROMPT},
                files={"image": ("photo.png", png(), "image/png")},
            )
            assert edit.status_code == 200, edit.text
            # Upstream refusals: the backends read (and at DEBUG excerpt) error bodies.
            for backend, model in (
                ("azure_flux", "azure/flux-kontext-pro"),
                ("bedrock_stability", "bedrock/stability-stable-image-core"),
                ("bailian_wan", "bailian/wan2.7-image"),
            ):
                sandbox.emulator(backend).faults.push(FaultMode.BAD_REQUEST)
                refused = await client.post(
                    "/v1/images/generations", json={"model": model, "prompt": CANARY_PROMPT}
                )
                assert refused.status_code == 400, (model, refused.text)
            sandbox.emulator("azure_mai").faults.push(FaultMode.SERVER_ERROR, times=2)
            failed = await client.post(
                "/v1/images/generations",
                json={"model": "azure/mai-image-2", "prompt": CANARY_PROMPT},
            )
            assert failed.status_code >= 500

    lines = captured.getvalue().splitlines()
    # DEBUG really was on, and the requests really were logged.
    assert any('"level": "DEBUG"' in line for line in lines)
    assert sum('"logger": "server.access"' in line for line in lines) >= 2 * (len(GENERATIONS) + 5)
    image_b64 = base64.b64encode(png()).decode()
    canaries = [
        CANARY_PROMPT,
        R2_KEY_ID,
        R2_SECRET,
        *credentials,
        "ck-canary-caller-key",
        "AWS4-HMAC-SHA256",
        "Signature=",
        "iVBORw0KGgo",  # any base64 PNG
        image_b64[:40],
    ]
    leaks = [(canary, line) for line in lines for canary in canaries if canary in line]
    assert leaks == []
