"""The processes under test, and the upstreams they call.

The sandbox emulators run inside the suite's own process (they are the
upstreams, not the thing under test), so the suite can read their fault
counters and program faults directly. The gRPC server (`image-service
serve`) and the REST sidecar (`image-service rest`) run as child processes,
as in production, so that a crash is a process death the suite sees, RSS is
theirs alone, and SIGTERM is a real signal. Storage is a local directory, or
moto's S3 server as a child process for the storage outage (so it can be
killed). Every address is 127.0.0.1, every port picked by the kernel.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.processes import Child, ProcessFailed, base_env, start_child
from benchmarks.procstat import peak_rss_mib, reset_peak, rss_mib
from server.sandbox.server import SandboxServer

HOST = "127.0.0.1"
_SERVE_READY = r"serving gRPC on [^\s]+:(\d+)"
_REST_READY = r"REST sidecar on http://[^:]+:(\d+)"


def _image_service() -> str:
    script = Path(sys.executable).with_name("image-service")
    if not script.exists():
        raise ProcessFailed(f"{script} is missing; run `make install` first")
    return str(script)


def _port(child: Child, ready: str) -> int:
    match = re.search(ready, child.output())
    if match is None:
        raise ProcessFailed(f"{child.name} printed no port:\n{child.tail()}")
    return int(match.group(1))


@dataclass
class Services:
    """A gRPC server and (optionally) a REST sidecar over `sandbox`."""

    sandbox: SandboxServer
    workdir: Path
    # Extra IMAGE_SERVICE_* values, without the prefix.
    settings: dict[str, str] = field(default_factory=dict)
    with_rest: bool = True
    server: Child | None = None
    sidecar: Child | None = None
    grpc_target: str = ""
    rest_url: str = ""

    def env(self) -> dict[str, str]:
        values = {
            **self.sandbox.settings_overrides(),
            "storage": "local",
            "local_storage_dir": str(self.workdir / "media"),
            "local_public_base_url": f"http://{HOST}:1/media",
            "upstream_backoff_base_s": "0.01",
            "upstream_backoff_max_s": "0.1",
            "log_level": "WARNING",
            # The load and the fuzz carry no API key (tests/auth covers keys).
            "auth": "none",
            # Any free port: a fixed one collides with other services on the machine.
            "metrics_port": "0",
            **self.settings,
        }
        return {**base_env(), **{f"IMAGE_SERVICE_{k.upper()}": v for k, v in values.items()}}

    async def start(self, tag: str) -> Services:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        self.server = await start_child(
            f"server-{tag}",
            [_image_service(), "serve", "--host", HOST, "--port", "0"],
            env,
            self.workdir / f"server-{tag}.log",
            _SERVE_READY,
        )
        self.grpc_target = f"{HOST}:{_port(self.server, _SERVE_READY)}"
        if self.with_rest:
            self.sidecar = await start_child(
                f"rest-{tag}",
                [
                    _image_service(),
                    "rest",
                    "--host",
                    HOST,
                    "--port",
                    "0",
                    "--upstream",
                    self.grpc_target,
                ],
                env,
                self.workdir / f"rest-{tag}.log",
                _REST_READY,
            )
            self.rest_url = f"http://{HOST}:{_port(self.sidecar, _REST_READY)}"
        return self

    def children(self) -> list[Child]:
        return [c for c in (self.sidecar, self.server) if c is not None]

    def deaths(self) -> list[str]:
        """The children that exited without being asked to."""
        return [
            f"{c.name} exited with {c.process.returncode}"
            for c in self.children()
            if c.process.poll() is not None
        ]

    def rss_mib(self) -> dict[str, float]:
        return {c.name: rss_mib(c.pid) for c in self.children()}

    def peak_rss_mib(self) -> dict[str, float]:
        return {c.name: peak_rss_mib(c.pid) for c in self.children()}

    def reset_peaks(self) -> None:
        for child in self.children():
            reset_peak(child.pid)

    async def stop(self) -> None:
        for child in self.children():
            await asyncio.to_thread(child.stop)


class MotoS3:
    """moto's S3 server as a child process, so an outage can be a kill."""

    ACCESS_KEY_ID = "AKIDRELIABILITY00001"
    SECRET = "reliability-secret-not-real"
    BUCKET = "reliability"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.child: Child | None = None
        self.url = ""

    async def start(self) -> None:
        script = Path(sys.executable).with_name("moto_server")
        ready = r"Running on http://127\.0\.0\.1:(\d+)"
        self.child = await start_child(
            "moto",
            [str(script), "-H", HOST, "-p", "0"],
            base_env(),
            self._workdir / "moto.log",
            ready,
        )
        self.url = f"http://{HOST}:{_port(self.child, ready)}"
        await asyncio.to_thread(self._create_bucket)

    def _create_bucket(self) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.ACCESS_KEY_ID,
            aws_secret_access_key=self.SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=self.BUCKET)

    def settings(self) -> dict[str, str]:
        return {
            "storage": "r2",
            "r2_endpoint_url": self.url,
            "r2_bucket": self.BUCKET,
            "r2_access_key_id": self.ACCESS_KEY_ID,
            "r2_secret_access_key": self.SECRET,
            "r2_public_base_url": "https://img.reliability.test",
            "r2_connect_timeout_s": "1",
            "r2_read_timeout_s": "2",
            "storage_attempts": "2",
        }

    def kill(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.kill()
            self.child.process.wait(10)

    def stop(self) -> None:
        self.kill()
