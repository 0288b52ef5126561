"""Measure the image's start-up: `podman start` to gRPC health SERVING.

Runs `image-service serve` from the image as the chart does (UID 65532,
read-only root, /tmp on a tmpfs) with every backend configured, so each
backend's client (and its SDK import) is part of the figure. The endpoints
point nowhere: building a backend opens no connection. The container is
created first and timed from `podman start`, so image unpacking is not counted;
the time includes the runtime's own container set-up, as a kubelet's would.

Wall time depends on how busy the machine is, so the CPU time the server
process had used when it first answered SERVING is reported too (read from
/proc on the host, so rootful podman only): on an idle machine start-up takes
about that long, since it is one thread's work.

Usage: python scripts/image_startup.py IMAGE [RUNS]   (make image-startup)
"""

from __future__ import annotations

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CONTAINERS_CONF = pathlib.Path(__file__).resolve().parent / "containers" / "containers.conf"
NOWHERE = "http://127.0.0.1:9"
EVERY_BACKEND = {
    "IMAGE_SERVICE_AZURE_FLUX_ENDPOINT": NOWHERE,
    "IMAGE_SERVICE_AZURE_FLUX_API_KEY": "startup-measurement",
    "IMAGE_SERVICE_AZURE_MAI_ENDPOINT": NOWHERE,
    "IMAGE_SERVICE_AZURE_MAI_API_KEY": "startup-measurement",
    "IMAGE_SERVICE_VERTEX_PROJECT": "startup-measurement",
    "IMAGE_SERVICE_VERTEX_API_ENDPOINT": NOWHERE,
    "IMAGE_SERVICE_BAILIAN_API_KEY": "startup-measurement",
    "IMAGE_SERVICE_BEDROCK_REGION": "us-east-1",
    "IMAGE_SERVICE_BEDROCK_ACCESS_KEY_ID": "startup-measurement",
    "IMAGE_SERVICE_BEDROCK_SECRET_ACCESS_KEY": "startup-measurement",
}


def podman(*args: str) -> str:
    env = {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def cpu_seconds(container: str) -> float:
    """User + system CPU time of the container's main process so far."""
    pid = podman("inspect", "--format", "{{.State.Pid}}", container)
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_start(image: str) -> tuple[float, float]:
    port = free_port()
    env = [f"--env={key}={value}" for key, value in EVERY_BACKEND.items()]
    container = podman(
        "create",
        "--user=65532:65532",
        "--read-only",
        "--read-only-tmpfs=false",
        "--mount=type=tmpfs,destination=/tmp,tmpfs-mode=0777",
        f"--publish=127.0.0.1:{port}:50051",
        *env,
        image,
        "serve",
    )
    try:
        started = time.monotonic()
        podman("start", container)
        while not serving(f"127.0.0.1:{port}"):
            if time.monotonic() - started > 60:
                raise SystemExit(f"not SERVING after 60 s:\n{podman('logs', container)}")
            time.sleep(0.02)  # noqa: TID251 (a script, no event loop)
        return time.monotonic() - started, cpu_seconds(container)
    finally:
        podman("rm", "--force", "--time=0", container)


def main() -> None:
    image = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    starts = [one_start(image) for _ in range(runs)]
    times = [wall for wall, _ in starts]
    cpu = [used for _, used in starts]
    load = os.getloadavg()[0]
    print(
        f"{image}: start to SERVING with every backend configured, {runs} runs: "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s (load average {load:.1f}); "
        f"server CPU time by then: median {statistics.median(cpu):.2f} s"
    )


if __name__ == "__main__":
    main()
