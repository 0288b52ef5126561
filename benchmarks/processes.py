"""Starting and stopping the processes under test.

`Stack` starts, each as its own child process with its output in a log
file under `workdir`: the benchmark emulator (`python -m
benchmarks.emulator`), the gRPC service (`image-service serve`) configured
through `IMAGE_SERVICE_*` variables to call it and to store images in a
local directory, and the REST sidecar (`image-service rest`) in front of the
service. Every port is picked by the kernel (port 0) and read back from the
line each process prints when ready. Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.emulator import API_KEY, READY_PREFIX, raise_open_files_limit

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class ProcessFailed(RuntimeError):
    """A child process exited or never became ready; the message has its log's tail."""


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """What the process has printed so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ProcessFailed(
                f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
            )

    def stop(self) -> None:
        """SIGTERM (the graceful drain), then SIGKILL after `STOP_TIMEOUT_S`."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


def _spawn(name: str, argv: list[str], env: dict[str, str], log: Path) -> Child:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Child(name, process, log)


async def start_child(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    ready: str,
    timeout_s: float = START_TIMEOUT_S,
) -> Child:
    """Start `argv` and wait for its output to match `ready`; returns the child."""
    child = _spawn(name, argv, env, log)
    pattern = re.compile(ready)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pattern.search(child.output()):
            return child
        child.check_alive()
        await asyncio.sleep(0.05)
    child.stop()
    raise ProcessFailed(f"{name} was not ready within {timeout_s:.0f} s:\n{child.tail()}")


def _port(child: Child, ready: str) -> int:
    match = re.search(ready, child.output())
    assert match is not None
    return int(match.group(1))


@contextmanager
def forked_server(serve_forever: Callable[[int], None]) -> Iterator[int]:
    """Run `serve_forever(port_pipe)` in a forked child and yield its port.

    The child writes its listening port to the pipe it is given, then
    serves until it is killed when the block ends. Forked, not spawned, so
    the child's CPU stays out of this process's `getrusage(RUSAGE_SELF)`
    without another interpreter start-up.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            serve_forever(write_end)
        finally:
            os._exit(1)  # never back into the parent's code
    try:
        yield int(os.read(read_end, 16))
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read_end)
        os.close(write_end)


def image_service() -> str:
    """The `image-service` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("image-service")
    if not script.exists():
        raise ProcessFailed(f"{script} is missing; run `make install` first")
    return str(script)


def free_port() -> int:
    """A loopback port free right now (for programs that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    # The children must not pick up a developer's own service configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_SERVICE_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Stack:
    """The emulator, service and sidecar processes; use as `async with`."""

    workdir: Path
    storage_dir: Path
    # Extra IMAGE_SERVICE_* values (without the prefix) for the service and sidecar.
    settings: dict[str, str] = field(default_factory=dict)
    # Other environment variables of the service and sidecar only.
    service_env: dict[str, str] = field(default_factory=dict)
    noise_sizes: tuple[str, ...] = ("1mb", "3mb", "4mb")
    # Prefix of the server's and sidecar's log files, for several stacks in one workdir.
    name: str = ""
    # Export traces (OTLP/HTTP) to the emulator's receiver (`benchmarks.emulator`).
    trace_to_emulator: bool = False
    # The gRPC server's command before `--host`/`--port`; empty: `image-service
    # serve`. `benchmarks.floor` stands in for it to measure the floor.
    server_command: tuple[str, ...] = ()
    emulator: Child | None = None
    server: Child | None = None
    sidecar: Child | None = None
    emulator_url: str = ""
    grpc_target: str = ""
    rest_url: str = ""

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def start(self) -> None:
        """Start the three processes, each once the one it calls is ready; with
        `emulator_url` already set, only the server and sidecar, calling it."""
        raise_open_files_limit()  # inherited by the children
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        env = base_env()
        if not self.emulator_url:
            await self._start_emulator(env)
        await self._start_service(env)

    async def _start_emulator(self, env: dict[str, str]) -> None:
        ready = re.escape(READY_PREFIX) + r"http://[^:]+:(\d+)"
        self.emulator = await start_child(
            "emulator",
            [
                sys.executable,
                "-m",
                "benchmarks.emulator",
                "--host",
                HOST,
                "--noise",
                ",".join(self.noise_sizes),
            ],
            env,
            self.workdir / "emulator.log",
            ready,
        )
        self.emulator_url = f"http://{HOST}:{_port(self.emulator, ready)}"

    async def _start_service(self, env: dict[str, str]) -> None:
        service_env = {
            **env,
            "IMAGE_SERVICE_AZURE_FLUX_ENDPOINT": self.emulator_url,
            "IMAGE_SERVICE_AZURE_FLUX_API_KEY": API_KEY,
            "IMAGE_SERVICE_STORAGE": "local",
            "IMAGE_SERVICE_METRICS_PORT": "0",
            # The load carries no API key; the figures are the service's own.
            "IMAGE_SERVICE_AUTH": "none",
            "IMAGE_SERVICE_LOCAL_STORAGE_DIR": str(self.storage_dir),
            # Nothing fetches the URLs; they only have to be well formed.
            "IMAGE_SERVICE_LOCAL_PUBLIC_BASE_URL": f"http://{HOST}:8080/media",
            **{f"IMAGE_SERVICE_{k.upper()}": v for k, v in self.settings.items()},
            **self.service_env,
        }
        if self.trace_to_emulator:
            service_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.emulator_url
        ready = r"serving gRPC on [^\s]+:(\d+)"
        self.server = await start_child(
            "server",
            [*(self.server_command or (image_service(), "serve")), "--host", HOST, "--port", "0"],
            service_env,
            self.workdir / f"{self.name}server.log",
            ready,
        )
        self.grpc_target = f"{HOST}:{_port(self.server, ready)}"

        ready = r"REST sidecar on http://[^:]+:(\d+)"
        self.sidecar = await start_child(
            "sidecar",
            [
                image_service(),
                "rest",
                "--host",
                HOST,
                "--port",
                "0",
                "--upstream",
                self.grpc_target,
            ],
            service_env,
            self.workdir / f"{self.name}sidecar.log",
            ready,
        )
        self.rest_url = f"http://{HOST}:{_port(self.sidecar, ready)}"

    def clear_media(self) -> None:
        """Delete the images stored so far (a full run stores gigabytes)."""
        for sub in ("images", "generations"):
            directory = self.storage_dir / sub
            if directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)

    def check_alive(self) -> None:
        for child in self.children():
            child.check_alive()

    def children(self) -> list[Child]:
        return [c for c in (self.sidecar, self.server, self.emulator) if c is not None]

    def service_pids(self) -> list[int]:
        """The service's processes: the gRPC server and the REST sidecar."""
        return [c.pid for c in (self.server, self.sidecar) if c is not None]

    def stop(self) -> None:
        """Stop the sidecar, the server, then the emulator."""
        for child in self.children():
            child.stop()
