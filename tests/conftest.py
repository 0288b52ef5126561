"""What every test shares: a hermetic environment, no network beyond this
machine, and one sandbox for the whole session.

Environment. When this file is imported, before collection (test modules
build boto3 sessions at import), every `IMAGE_SERVICE_*`, `AWS_*` and
`GOOGLE_*` variable and every proxy variable is removed, and the AWS and
gcloud SDKs are pointed at config files that do not exist, so a developer
whose shell holds real settings or whose home holds real credentials gets
the results CI gets (`tests/support/environment.py`). Subprocesses started
by tests inherit this environment (`os.environ` itself is scrubbed). Each
test starts from the scrubbed environment again (`hermetic_environment`).

Network. pytest-socket, configured in pyproject (`--allow-hosts`), refuses
any `connect()` from Python to an address outside loopback while a test runs
(asyncio, httpx, aiohttp and botocore all connect through
`socket.socket.connect`). Its limits: gRPC's C core opens its own sockets, and
a subprocess is another interpreter; both are kept local by the settings the
tests give them (every backend points at the sandbox, and nothing falls back
to a cloud default because the environment above holds no endpoint).

Sandbox. One `SandboxServer` (every emulator, on 127.0.0.1 port 0) serves
the whole session; the `sandbox` fixture hands it to a test and puts every
emulator back as it found it afterwards (`tests/support/sandbox.py`). Tests
that start, stop or break a sandbox build their own.

Every async test and fixture runs on one session-wide event loop
(pyproject's `asyncio_default_*_loop_scope`): the sandbox's server tasks live
on it. It is asyncio's own loop unless `--event-loop=uvloop` is given; the
service ships on uvloop, and `make test` runs the directories of its async
code a second time on it. On uvloop the network guard above is blind (libuv
connects in C, not through `socket.socket.connect`), so the guard's own
tests skip there; the asyncio pass is the one that keeps the suite offline.

Processes. A test that starts a process through asyncio's subprocess API
(`asyncio.create_subprocess_exec`: the CLI, grpcurl, the server and sidecar
as processes) is marked `spawns_processes` and runs on asyncio's loop only.
uvloop forks with Python's at-fork hooks (MagicStack/uvloop#749, unlike
asyncio), and in the child of this multi-threaded process (grpc's threads)
they can segfault before the `exec`: seen once in `make test`'s uvloop pass,
as a grpcurl "exiting" with -11. Those tests exercise the other process,
which runs its own loop (uvloop, as shipped); their own loop only waits.
On uvloop an unmarked test that calls the API fails at once, so the rule
holds by construction rather than by a rare crash. The service itself
starts no processes.

Workers. `make test` runs the suite in pytest-xdist worker processes; a
"session" is one worker's, so each worker has its own sandbox, event loop and
scrubbed environment, and nothing here is shared between workers (every
server a test starts listens on port 0, every file goes under `tmp_path`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
import uvloop

from server.sandbox.server import SandboxServer
from tests.support.environment import make_hermetic
from tests.support.sandbox import SandboxBaseline

# At import, before collection imports any test module (or an SDK reads its
# variables once at import, as google-auth does with NO_GCE_CHECK).
_session_patch = pytest.MonkeyPatch()
make_hermetic(_session_patch)


def pytest_unconfigure(config: pytest.Config) -> None:
    _session_patch.undo()


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The scrubbed environment, again for each test (a library or an earlier
    test may have written `os.environ`); a test's own `monkeypatch` changes
    are undone after it as usual."""
    make_hermetic(monkeypatch)
    yield


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the loop async tests run on (the service ships on uvloop; pytest-socket "
        "guards connects only on asyncio's)",
    )


SPAWNS_PROCESSES = "spawns_processes"


class _OnUvloop:
    """Registered by `--event-loop=uvloop`: every async test gets uvloop's
    loop, except those that spawn processes (see the module doc)."""

    @staticmethod
    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"uvloop": uvloop.new_event_loop}

    @staticmethod
    def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
        skip = pytest.mark.skip(
            reason="spawns processes: asyncio's loop only (MagicStack/uvloop#749; "
            "tests/conftest.py)"
        )
        for item in items:
            if item.get_closest_marker(SPAWNS_PROCESSES):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_unmarked_spawns_on_uvloop(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On uvloop, asyncio's subprocess API fails an unmarked test at once."""
    if request.config.getoption("--event-loop") != "uvloop":
        return

    async def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{request.node.nodeid} starts a process on uvloop: mark it "
            f"`pytest.mark.{SPAWNS_PROCESSES}` (tests/conftest.py says why)"
        )

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refused)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", refused)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--event-loop") == "uvloop":
        config.pluginmanager.register(_OnUvloop(), "image-service-uvloop")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def session_sandbox() -> AsyncIterator[tuple[SandboxServer, SandboxBaseline]]:
    async with SandboxServer("127.0.0.1", 0) as server:
        yield server, SandboxBaseline(server)


@pytest_asyncio.fixture
async def sandbox(
    session_sandbox: tuple[SandboxServer, SandboxBaseline],
) -> AsyncIterator[SandboxServer]:
    """Every emulator, on 127.0.0.1 (shared by the session; reset after the test)."""
    server, baseline = session_sandbox
    yield server
    await baseline.restore()
