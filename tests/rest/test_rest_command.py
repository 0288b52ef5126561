"""`image-service rest`: parses its flags, serves, and exits cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from server.cli import rest_command

ROOT = Path(__file__).resolve().parents[2]
# The command as `image-service` will run it, without depending on the
# dispatcher in server/cli/__init__.py.
_RUN = (
    "import argparse, asyncio, sys\n"
    "from server.cli import rest_command\n"
    "parser = argparse.ArgumentParser()\n"
    "rest_command.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(asyncio.run(args.func(args)))\n"
)


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    rest_command.register(parser.add_subparsers())
    args = parser.parse_args(["rest", "--upstream", "svc:50051", "--port", "9000"])
    assert (args.upstream, args.port, args.host) == ("svc:50051", 9000, None)
    assert args.func is rest_command.run_rest


async def test_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN,
        "rest",
        "--upstream",
        "127.0.0.1:1",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.search(r"on (http://\S+) -> gRPC 127\.0\.0\.1:1", line)
        assert match, line
        async with httpx.AsyncClient(base_url=match.group(1)) as http:
            assert (await http.get("/healthz")).status_code == 200
            # Nothing listens on the upstream port: the service is unavailable.
            models = await http.get("/v1/models")
        assert models.status_code == 503
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
