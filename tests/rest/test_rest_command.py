"""`image-service rest`: parses its flags, serves, and exits cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

import httpx
import pytest

from server.cli import rest_command
from tests.rest.rest_process import rest_process

pytestmark = pytest.mark.spawns_processes


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    rest_command.register(parser.add_subparsers())
    args = parser.parse_args(["rest", "--upstream", "svc:50051", "--port", "9000"])
    assert (args.upstream, args.port, args.host) == ("svc:50051", 9000, None)
    assert args.func is rest_command.run_rest


async def test_serves_until_sigterm() -> None:
    async with rest_process("127.0.0.1:1") as rest:
        assert "-> gRPC 127.0.0.1:1" in rest.banner
        async with httpx.AsyncClient(base_url=rest.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200
            # Nothing listens on the upstream port: the service is unavailable.
            models = await http.get("/v1/models")
        assert models.status_code == 503
        rest.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(rest.process.wait(), 30) == 0
