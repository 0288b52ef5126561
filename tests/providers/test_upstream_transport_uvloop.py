"""`Http1Transport`'s contract on uvloop, the loop the service runs on.

The suite's async tests run on asyncio's own loop (pytest-socket's guard
sees only its connects; libuv connects in C), so every contract test of
`test_upstream_transports` that needs only a client runs here again, each
on a fresh uvloop loop. uvloop differs where a hand-written protocol can
notice: it calls `connection_made` after `create_connection` returns, and
its transports are not `asyncio.Transport` subclasses.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import httpx
import pytest
import uvloop

from server.providers._shared.http import new_client
from server.providers._shared.http1 import Http1Transport
from tests.providers import test_upstream_transports as contract

ClientTest = Callable[[httpx.AsyncClient], Awaitable[None]]

CLIENT_TESTS: dict[str, ClientTest] = {
    name: test
    for name, test in vars(contract).items()
    if name.startswith("test_")
    and inspect.iscoroutinefunction(test)
    and list(inspect.signature(test).parameters) == ["client"]
}


def test_the_contract_has_client_tests_to_run() -> None:
    assert len(CLIENT_TESTS) >= 15


@pytest.mark.parametrize("name", sorted(CLIENT_TESTS))
def test_http1_keeps_the_contract_on_uvloop(name: str) -> None:
    async def run() -> None:
        async with new_client(timeout_s=5, transport=Http1Transport()) as client:
            await CLIENT_TESTS[name](client)

    uvloop.run(run())
