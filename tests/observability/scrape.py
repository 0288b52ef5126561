"""Running both processes' servers over the sandbox, and reading /metrics."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.asgi import AsgiServer
from server.rest import create_app, open_channel
from server.sandbox.server import SandboxServer
from tests.rpc.stacks import Stack, running_stack

Sample = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class TwoProcesses:
    """The gRPC service (with its metrics port) and a REST sidecar in front of it."""

    stack: Stack
    sidecar: AsgiServer
    sidecar_channel: grpc.aio.Channel

    @property
    def service_metrics_url(self) -> str:
        server = self.stack.service.metrics_server
        assert server is not None, "metrics are off"
        return f"{server.base_url}/metrics"

    @property
    def sidecar_url(self) -> str:
        return self.sidecar.base_url


@asynccontextmanager
async def two_processes(
    sandbox: SandboxServer, tmp_path: pathlib.Path, **changes: Any
) -> AsyncIterator[TwoProcesses]:
    async with running_stack(sandbox, tmp_path, **changes) as stack:
        settings = stack.service.settings
        channel = open_channel(settings, stack.target)
        sidecar = AsgiServer(create_app(channel, settings))
        await sidecar.start()
        try:
            yield TwoProcesses(stack, sidecar, channel)
        finally:
            await sidecar.stop()
            await channel.close(None)


async def scrape(url: str) -> dict[Sample, float]:
    """Every sample `url` exposes, keyed by name and sorted labels."""
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def delta(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
