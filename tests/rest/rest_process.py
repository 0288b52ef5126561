"""`image-service rest` as a real process, for tests of its signals and drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class RestProcess:
    process: asyncio.subprocess.Process
    base_url: str
    # The line it printed once serving.
    banner: str


@contextlib.asynccontextmanager
async def rest_process(
    upstream: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[RestProcess]:
    """Run the sidecar on 127.0.0.1, port 0, in front of `upstream`; killed on exit
    if the test has not stopped it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN,
        "rest",
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}",
            **(env or {}),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.search(r"on (http://\S+) -> gRPC ", line)
        assert match, line
        yield RestProcess(process, match.group(1), line)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
