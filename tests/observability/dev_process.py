"""`image-service dev` as a real subprocess, its stderr captured to a file."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

CLI = str(pathlib.Path(sys.executable).parent / "image-service")
READY = re.compile(
    r"grpc=(127\.0\.0\.1:\d+) http=(http://127\.0\.0\.1:\d+) .*metrics=(http://\S+/metrics)"
)


@dataclass
class DevProcess:
    grpc_target: str
    http_url: str
    metrics_url: str
    log_path: pathlib.Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each of which must be one JSON object."""
        return [json.loads(line) for line in self.log_lines() if line.strip()]


@asynccontextmanager
async def dev_process(workdir: pathlib.Path, **env: str) -> AsyncIterator[DevProcess]:
    """Run `image-service dev` on free ports with `env` added; stop it with SIGTERM."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_SERVICE_", "OTEL_"))
    }
    # These tests call without an API key (tests/auth covers keys).
    environment["IMAGE_SERVICE_AUTH"] = "none"
    environment.update(env)
    log_path = workdir / "dev.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            CLI,
            "dev",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            cwd=workdir,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        assert process.stdout is not None
        try:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            match = READY.search(line)
            assert match, f"no ready line: {line!r}\n{log_path.read_text()}"
            yield DevProcess(match.group(1), match.group(2), match.group(3), log_path)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
