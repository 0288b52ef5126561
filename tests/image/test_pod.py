"""The image, run as the chart's pod: `make image-test`.

The chart is rendered with its CI values plus the sandbox emulators' settings
(endpoints in `config`, keys in `secrets`, so they reach the server through
the chart's own ConfigMap and Secret), and its server and sidecar containers
run under podman in one pod beside a third container running the emulators
(`image-service sandbox`, from the same image). Every backend is therefore
configured, and generations run the real backend code against the emulators.

The checks are what the kubelet and a caller would see: the native gRPC
probes, the sidecar's probes, the README's curl and openai SDK examples through
the sidecar, grpcurl through reflection, the processes' UID and filesystem, and
a pod deletion (preStop sleep, then SIGTERM) with generations in flight.

Needs podman, helm (`make tools`) and the image (`make image`): the tests skip
without them, except under CI, where they fail.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import yaml
from chuizi.image.v1 import image_service_pb2, image_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.sandbox.server import SandboxServer
from tests.image.pod import (
    CI_VALUES,
    HELM,
    ROOT,
    Pod,
    RenderedPod,
    free_port,
    have_podman,
    helm_template,
    image_exists,
    podman,
)

pytestmark = pytest.mark.slow

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"
SANDBOX_PORT = 8090
SERVICE = "chuizi.image.v1.ImageService"
# The config schema refuses these names; they go to the chart's Secret.
CREDENTIAL_NAME = re.compile(r"(API_KEY|ACCESS_KEY|SECRET|TOKEN|PASSWORD)")
# Long enough to be in flight through the preStop sleep (2 s) and well into
# the drain, short enough to finish inside the CI values' shutdown grace (10 s).
IN_FLIGHT_LATENCY_S = 7
IN_FLIGHT_METRIC = re.compile(r"^image_service_generations_in_flight\{[^}]*\} (\S+)$", re.M)


def _require(condition: bool, missing: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI must not go green by skipping the image
        pytest.skip(missing)


def _sandbox_values(sandbox_log: str) -> dict[str, Any]:
    """Chart values pointing every backend at the emulators in the pod.

    `image-service sandbox` prints each setting; it masks the keys, which are
    the emulators' fixed sandbox keys, so they are taken from the emulators."""
    keys: dict[str, str] = {}
    local = SandboxServer("127.0.0.1", SANDBOX_PORT)
    for emulator in local.emulators:
        if emulator is local.vertex_imagen:
            continue  # its overrides need its own (started) listener; it has no key
        keys.update(emulator.settings_overrides(f"http://127.0.0.1:{SANDBOX_PORT}"))
    config: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name, value in re.findall(r"^\s+IMAGE_SERVICE_(\w+)=(.*)$", sandbox_log, re.MULTILINE):
        if value == "<sandbox key>":
            value = keys[name.lower()]
        if value:
            (secrets if CREDENTIAL_NAME.search(name) else config)[name] = value
    # The pod's calls carry no API key (tests/auth covers keys).
    return {"config": config, "secrets": secrets, "auth": {"mode": "none"}}


def _wait_for_line(pod: Pod, name: str, pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = pod.logs(name)
        if re.search(pattern, log, re.MULTILINE):
            return log
        time.sleep(0.1)
    raise AssertionError(f"{name} did not print {pattern!r}; its log:\n{pod.logs(name)}")


def _health(target: str, service: str, timeout_s: float) -> int | None:
    """One gRPC health check, as the kubelet's grpc probe makes it."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
        status: int = reply.status
        return status


@dataclass
class RunningPod:
    pod: Pod
    rendered: RenderedPod
    grpc_target: str
    http_base: str
    started_to_serving_s: float
    tmp: pathlib.Path
    drain: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPod]:
    _require(have_podman(), "podman is not installed: run `make container-tools`")
    _require(HELM.is_file(), f"no helm at {HELM}: run `make tools`")
    tmp = tmp_path_factory.mktemp("image-pod")
    ci = RenderedPod.from_manifests(helm_template([CI_VALUES], tmp))
    image = ci.image()
    _require(image_exists(image), f"{image} is not built: run `make image`")

    ports = [
        port["containerPort"] for name in ("server", "rest") for port in ci.container(name)["ports"]
    ]
    pod = Pod({port: free_port() for port in ports})
    server_port = ci.container("server")["ports"][0]["containerPort"]
    rest_port = ci.container("rest")["ports"][0]["containerPort"]
    pod.create()
    try:
        # The emulators, from the same image and under the same restrictions.
        pod.run(
            "sandbox",
            image,
            [*ci.security_flags("server"), *ci.mount_flags("rest")],
            ["image-service", "sandbox", "--host", "127.0.0.1", "--port", str(SANDBOX_PORT)],
        )
        sandbox_log = _wait_for_line(pod, "sandbox", r"IMAGE_SERVICE_VERTEX_API_ENDPOINT=", 60)
        values = tmp / "sandbox-values.yaml"
        values.write_text(yaml.safe_dump(_sandbox_values(sandbox_log)))
        rendered = RenderedPod.from_manifests(helm_template([CI_VALUES, values], tmp))

        grpc_target = f"127.0.0.1:{pod.ports[server_port]}"
        started = time.monotonic()
        pod.run_rendered(rendered, "server", {})
        startup = rendered.container("server")["startupProbe"]
        window_s = startup["periodSeconds"] * startup["failureThreshold"]
        while _health(grpc_target, startup["grpc"]["service"], 1) != 1:
            assert time.monotonic() - started < window_s, (
                f"no SERVING within the startup probe's {window_s} s:\n{pod.logs('server')}"
            )
            time.sleep(0.05)
        serving_s = time.monotonic() - started
        print(f"\nimage start-up to SERVING (every backend configured): {serving_s:.2f} s")
        pod.run_rendered(rendered, "rest", {})
        http_base = f"http://127.0.0.1:{pod.ports[rest_port]}"
        _wait_for_line(pod, "rest", r"REST sidecar on", 60)
        yield RunningPod(pod, rendered, grpc_target, http_base, serving_s, tmp)
    finally:
        pod.remove()


def test_the_chart_runs_the_image_make_image_builds(running: RunningPod) -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    chart = yaml.safe_load((ROOT / "helm" / "image-service" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version.group(1)
    assert running.rendered.image() == f"ghcr.io/chuizi/image-service:{version.group(1)}"
    labels = podman("image", "inspect", "--format", "{{json .Labels}}", running.rendered.image())
    assert f'"org.opencontainers.image.version":"{version.group(1)}"' in labels
    assert '"org.opencontainers.image.revision":"' in labels
    assert '"org.opencontainers.image.source":"' in labels


def test_grpc_probes_answer_as_the_kubelet_calls_them(running: RunningPod) -> None:
    server = running.rendered.container("server")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = server[probe]["grpc"]
        target = f"127.0.0.1:{running.pod.ports[spec['port']]}"
        status = _health(target, spec["service"], server[probe]["timeoutSeconds"])
        assert status == health_pb2.HealthCheckResponse.SERVING, (probe, spec)
    assert server["readinessProbe"]["grpc"]["service"] == SERVICE


def test_sidecar_probes_answer(running: RunningPod) -> None:
    rest = running.rendered.container("rest")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = rest[probe]["httpGet"]
        reply = httpx.get(running.http_base + spec["path"], timeout=rest[probe]["timeoutSeconds"])
        assert reply.status_code == 200, (probe, reply.text)
    assert rest["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_readme_curl_example_through_the_sidecar(running: RunningPod) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"```bash\n(curl -X POST http://127\.0\.0\.1:8080/v1/images.*?)\n#", readme, re.S
    )
    assert block is not None, "the README's curl example moved"
    command = block.group(1).replace("http://127.0.0.1:8080", running.http_base)
    done = subprocess.run(
        ["bash", "-c", command + " --silent --show-error --fail-with-body"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    body = httpx.Response(200, content=done.stdout).json()
    assert len(body["data"]) == 1
    assert body["data"][0]["url"].endswith("-0.png")
    assert body["x_chuizi"]["generation_id"].startswith("gen-")


def test_openai_sdk_examples_through_the_sidecar(running: RunningPod) -> None:
    from openai import OpenAI

    from tests.support.images import png

    client = OpenAI(base_url=f"{running.http_base}/v1", api_key="ck-your-key-here")
    wide = client.images.generate(
        model="azure/flux-kontext-pro", prompt="A futuristic cityscape", size="1792x1024", n=1
    )
    assert wide.data is not None and len(wide.data) == 1 and wide.data[0].url
    # Vertex: the emulator speaks the real PredictionService gRPC API.
    four = client.images.generate(
        model="google/imagen-4.0-fast", prompt="A watercolor lake", size="1024x1024", n=4
    )
    assert four.data is not None and len(four.data) == 4
    edited = client.images.edit(
        model="azure/flux-kontext-pro",
        image=("photo.png", png(64, 64), "image/png"),
        prompt="Add a rainbow",
        size="1024x1024",
    )
    assert edited.data is not None and edited.data[0].url


def test_grpcurl_lists_the_services_through_reflection(running: RunningPod) -> None:
    done = subprocess.run(
        [str(GRPCURL), "-plaintext", running.grpc_target, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(done.stdout.split())


@pytest.mark.parametrize("name", ["server", "rest"])
def test_processes_run_as_65532(running: RunningPod, name: str) -> None:
    status = pathlib.Path(f"/proc/{running.pod.host_pid(name)}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uids is not None and gids is not None
    assert set(uids.group(1).split()) == {"65532"}
    assert set(gids.group(1).split()) == {"65532"}
    assert (
        "image-service" in pathlib.Path(f"/proc/{running.pod.host_pid(name)}/cmdline").read_text()
    )


@pytest.mark.parametrize("name", ["server", "rest"])
def test_only_the_declared_empty_dirs_are_writable(running: RunningPod, name: str) -> None:
    declared = running.rendered.mount_paths(name)
    probe = (
        "import errno, os, sys\n"
        "writable = []\n"
        "for top, dirs, _ in os.walk('/'):\n"
        "    if top.startswith(('/proc', '/sys', '/dev')):\n"
        "        dirs[:] = []\n"
        "        continue\n"
        "    try:\n"
        "        os.rmdir(os.path.join(top, os.urandom(8).hex()))\n"
        "    except OSError as error:\n"
        "        if error.errno == errno.ENOENT and os.access(top, os.W_OK):\n"
        "            writable.append(top)\n"
        "print('\\n'.join(writable))\n"
    )
    done = running.pod.exec_python(name, probe)
    assert done.returncode == 0, done.stderr
    writable = {path for path in done.stdout.split("\n") if path}
    outside = {p for p in writable if not any(p == d or p.startswith(d + "/") for d in declared)}
    assert outside == set()
    assert set(declared) <= writable
    write = running.pod.exec_python(name, "open('/opt/venv/probe', 'w')")
    assert "Read-only file system" in write.stderr
    # (`podman diff` is no help here: it lists the mount points and /etc/hosts
    # that the runtime itself creates.) Nothing tried to write elsewhere:
    assert "Read-only file system" not in running.pod.logs(name)


def test_generated_images_are_in_the_media_empty_dir(running: RunningPod) -> None:
    media = running.rendered.environment("server")["IMAGE_SERVICE_LOCAL_STORAGE_DIR"]
    assert media in running.rendered.mount_paths("server")
    done = running.pod.exec_python(
        "server", f"import os; print(len(os.listdir({media + '/images'!r})))"
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 7  # the curl and SDK examples above
    assert "Read-only file system" not in running.pod.logs("server")


# --- pod deletion: these run last, on the drained pod -------------------------


def _generate_grpc(target: str, prompt: str) -> image_service_pb2.Generation:
    with grpc.insecure_channel(target) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        reply: image_service_pb2.Generation = stub.Generate(
            image_service_pb2.GenerateRequest(model="azure/flux-kontext-pro", prompt=prompt, n=2),
            timeout=120,
        )
        return reply


def _generate_rest(base: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/images/generations",
        json={"model": "google/imagen-4.0-fast", "prompt": prompt, "n": 2},
        timeout=120,
    )


def _generations_in_flight(running: RunningPod) -> float:
    """The server's own count of running generations, from its metrics port."""
    (port,) = [
        p["containerPort"]
        for p in running.rendered.container("server")["ports"]
        if p["name"] == "metrics"
    ]
    text = httpx.get(f"http://127.0.0.1:{running.pod.ports[port]}/metrics", timeout=5).text
    return sum(float(value) for value in IN_FLIGHT_METRIC.findall(text))


@pytest.fixture(scope="module")
def drained(running: RunningPod) -> dict[str, Any]:
    """Delete the pod as Kubernetes does, with generations in flight.

    The kubelet runs each container's preStop sleep, then sends SIGTERM, then
    SIGKILL once terminationGracePeriodSeconds (counted from the start of
    preStop) have passed. The requests go out before the preStop sleep begins,
    and their upstream calls take IN_FLIGHT_LATENCY_S, longer than the sleep."""
    prompt = f"a fox [sandbox:latency={IN_FLIGHT_LATENCY_S}]"
    grace_s = running.rendered.termination_grace_s
    pre_stop_s = running.rendered.container("server")["lifecycle"]["preStop"]["sleep"]["seconds"]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    grpc_calls = [pool.submit(_generate_grpc, running.grpc_target, prompt) for _ in range(2)]
    rest_call = pool.submit(_generate_rest, running.http_base, prompt)
    # Pod deletion starts once the server is running all three (its own
    # count), so they are in flight however slowly the machine got them there.
    waited = time.monotonic()
    while _generations_in_flight(running) < 3:
        assert time.monotonic() - waited < 60, "the generations never reached the server"
        time.sleep(0.05)
    deleted = time.monotonic()
    time.sleep(pre_stop_s)  # the preStop `sleep` action of both containers
    for name in ("server", "rest"):
        running.pod.signal(name, "TERM")
    running_at_sigterm = sum(not call.done() for call in [*grpc_calls, rest_call])
    readiness: list[int | None] = []
    probe = running.rendered.container("server")["readinessProbe"]["grpc"]
    while not grpc_calls[0].done() and len(readiness) < 50:
        readiness.append(_health(running.grpc_target, probe["service"], 1))
        time.sleep(0.1)
    left_s = grace_s - (time.monotonic() - deleted)
    exits = {name: running.pod.wait_exit(name, left_s) for name in ("server", "rest")}
    outcome: dict[str, Any] = {
        "exits": exits,
        "readiness": readiness,
        "grace_s": grace_s,
        "running_at_sigterm": running_at_sigterm,
    }
    for key, future in (("grpc", grpc_calls), ("rest", [rest_call])):
        results = []
        for call in future:
            try:
                results.append(call.result(timeout=5))
            except Exception as error:  # the assertion below names it
                results.append(error)
        outcome[key] = results
    pool.shutdown(wait=False, cancel_futures=True)
    outcome["server_log"] = running.pod.logs("server")
    outcome["rest_log"] = running.pod.logs("rest")
    return outcome


def test_generations_were_in_flight_at_sigterm(drained: dict[str, Any]) -> None:
    assert drained["running_at_sigterm"] == 3


def test_sigterm_turns_readiness_off_while_work_finishes(drained: dict[str, Any]) -> None:
    # After SIGTERM the readiness probe fails (NOT_SERVING, or refused once the
    # server takes no new RPCs) while the in-flight generations still run; a
    # probe racing the signal handler may still see SERVING, never after that.
    readiness = drained["readiness"]
    serving = health_pb2.HealthCheckResponse.SERVING
    assert readiness and readiness[-1] != serving, readiness
    first_off = next(i for i, status in enumerate(readiness) if status != serving)
    assert serving not in readiness[first_off:], readiness


def test_in_flight_grpc_generations_complete_in_the_drain(drained: dict[str, Any]) -> None:
    for reply in drained["grpc"]:
        assert isinstance(reply, image_service_pb2.Generation), reply
        assert len(reply.images) == 2


def test_server_exits_by_itself_within_the_grace_period(drained: dict[str, Any]) -> None:
    assert drained["exits"]["server"] == 0, drained["server_log"][-2000:]


def test_in_flight_rest_generation_completes_in_the_drain(drained: dict[str, Any]) -> None:
    (reply,) = drained["rest"]
    assert isinstance(reply, httpx.Response), reply
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == 2


def test_sidecar_exits_by_itself_within_the_grace_period(drained: dict[str, Any]) -> None:
    assert drained["exits"]["rest"] == 0, drained["rest_log"][-2000:]
