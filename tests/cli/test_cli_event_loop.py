"""`image-service` runs its commands, and so the server and the sidecar, on
uvloop. (The suite's own async tests run on asyncio's loop, which
pytest-socket can guard, and `make test` runs the directories of the
service's async code again with `--event-loop=uvloop`; tests that start
`image-service` get uvloop anyway.)"""

from __future__ import annotations

import argparse
import asyncio

import pytest
import uvloop

import server.cli


def test_a_command_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def handler(args: argparse.Namespace) -> int:
        seen.append(asyncio.get_running_loop())
        return 3

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=handler)
    monkeypatch.setattr(server.cli, "build_parser", lambda: parser)

    assert server.cli.main([]) == 3
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
    assert seen[0].is_closed()
