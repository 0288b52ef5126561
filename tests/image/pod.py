"""Run the chart's pod under podman, from what `helm template` renders.

A podman pod shares one network namespace between its containers, as a
Kubernetes pod does, so the sidecar reaches the server on 127.0.0.1 exactly
as the chart wires it. Each container gets what the rendered Deployment gives
it and nothing more:

- `command` (the entrypoint), `args`, `ports`;
- the environment: `envFrom` ConfigMaps and Secrets (resolved from the
  rendered objects) and `env`;
- the pod's `runAsUser`/`runAsGroup`/`fsGroup`, `readOnlyRootFilesystem`
  (podman's own tmpfs mounts on /tmp, /run and /var/tmp are turned off, so the
  declared volumes are the only writable paths), dropped capabilities and
  no privilege escalation;
- every `emptyDir` as a tmpfs of its `sizeLimit`, mode 0777 as the kubelet
  creates them.

What the kubelet does around the containers (probes, the preStop sleep, the
SIGTERM and the grace period) is done by the tests, through the published ports
and `podman kill`.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "image-service"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
HELM = pathlib.Path(os.environ.get("HELM") or ROOT / ".tools" / "bin" / "helm")
CONTAINERS_CONF = ROOT / "scripts" / "containers" / "containers.conf"

Manifest = dict[str, Any]

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def podman_env() -> dict[str, str]:
    """podman's environment: the repo's containers.conf unless one is set."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    """Run podman; its stdout. A failure carries podman's stderr."""
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ...: {done.stderr.strip()}")
    return done.stdout


def have_podman() -> bool:
    return shutil.which("podman") is not None


def image_exists(image: str) -> bool:
    return (
        have_podman()
        and subprocess.run(
            ["podman", "image", "exists", image], env=podman_env(), check=False
        ).returncode
        == 0
    )


def helm_template(values: Sequence[pathlib.Path], home: pathlib.Path) -> list[Manifest]:
    """`helm template` of the chart, parsed; helm kept away from the user's config."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    args = [str(HELM), "template", "pod", str(CHART)]
    for path in values:
        args += ["--values", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity such as `256Mi` in bytes (the forms the chart uses)."""
    match = _QUANTITY.match(str(quantity))
    if match is None:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class RenderedPod:
    """The Deployment's pod template and the objects its containers refer to."""

    spec: Manifest
    config_maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]

    @classmethod
    def from_manifests(cls, manifests: Sequence[Manifest]) -> RenderedPod:
        (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
        config_maps = {
            m["metadata"]["name"]: dict(m.get("data") or {})
            for m in manifests
            if m["kind"] == "ConfigMap"
        }
        secrets = {
            m["metadata"]["name"]: {
                **{k: base64.b64decode(v).decode() for k, v in (m.get("data") or {}).items()},
                **(m.get("stringData") or {}),
            }
            for m in manifests
            if m["kind"] == "Secret"
        }
        return cls(deployment["spec"]["template"]["spec"], config_maps, secrets)

    @property
    def termination_grace_s(self) -> int:
        return int(self.spec["terminationGracePeriodSeconds"])

    def container(self, name: str) -> Manifest:
        (found,) = [c for c in self.spec["containers"] if c["name"] == name]
        return found

    def environment(self, name: str) -> dict[str, str]:
        """The container's environment as the kubelet builds it."""
        container = self.container(name)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_maps[source["configMapRef"]["name"]])
            elif "secretRef" in source:
                # An existingSecret is not rendered: its keys are the cluster's.
                env.update(self.secrets.get(source["secretRef"]["name"], {}))
        for var in container.get("env", []):
            env[var["name"]] = str(var["value"])
        return env

    def image(self, name: str = "server") -> str:
        image: str = self.container(name)["image"]
        return image

    def empty_dirs(self) -> dict[str, int]:
        """emptyDir volume name -> size limit in bytes."""
        return {
            volume["name"]: quantity_bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
            for volume in self.spec["volumes"]
            if "emptyDir" in volume
        }

    def security_flags(self, name: str) -> list[str]:
        """podman flags for the pod's and the container's security context."""
        pod = self.spec.get("securityContext", {})
        ctx = self.container(name).get("securityContext", {})
        user = ctx.get("runAsUser", pod.get("runAsUser"))
        group = ctx.get("runAsGroup", pod.get("runAsGroup"))
        flags = [f"--user={user}:{group}"] if user is not None else []
        if "fsGroup" in pod:
            flags.append(f"--group-add={pod['fsGroup']}")
        if ctx.get("readOnlyRootFilesystem"):
            flags += ["--read-only", "--read-only-tmpfs=false"]
        flags += [f"--cap-drop={cap}" for cap in ctx.get("capabilities", {}).get("drop", [])]
        if ctx.get("allowPrivilegeEscalation") is False:
            flags.append("--security-opt=no-new-privileges")
        return flags

    def mount_flags(self, name: str) -> list[str]:
        sizes = self.empty_dirs()
        flags = []
        for mount in self.container(name).get("volumeMounts", []):
            size = sizes[mount["name"]]  # only emptyDirs in the pods this test renders
            flags.append(
                f"--mount=type=tmpfs,destination={mount['mountPath']},"
                f"tmpfs-size={size},tmpfs-mode=0777"
            )
        return flags

    def mount_paths(self, name: str) -> list[str]:
        return [m["mountPath"] for m in self.container(name).get("volumeMounts", [])]


@dataclass
class Pod:
    """A podman pod publishing the given container ports on 127.0.0.1."""

    ports: Mapping[int, int]  # container port -> host port
    name: str = field(default_factory=lambda: f"image-pod-{uuid.uuid4().hex[:8]}")
    containers: dict[str, str] = field(default_factory=dict)  # k8s name -> podman name

    def create(self) -> None:
        publish = [f"--publish=127.0.0.1:{host}:{inner}" for inner, host in self.ports.items()]
        podman("pod", "create", f"--name={self.name}", *publish)

    def run(self, name: str, image: str, flags: Sequence[str], command: Sequence[str]) -> str:
        """Start a container in the pod; its podman name."""
        podman_name = f"{self.name}-{name}"
        entrypoint, *args = command
        podman(
            "run",
            "--detach",
            f"--pod={self.name}",
            f"--name={podman_name}",
            f"--entrypoint={json.dumps([entrypoint])}",
            *flags,
            image,
            *args,
        )
        self.containers[name] = podman_name
        return podman_name

    def run_rendered(self, rendered: RenderedPod, name: str, extra_env: Mapping[str, str]) -> str:
        """Start container `name` of the rendered pod as the kubelet would."""
        container = rendered.container(name)
        env = {**rendered.environment(name), **extra_env}
        flags = [
            *rendered.security_flags(name),
            *rendered.mount_flags(name),
            *(f"--env={key}={value}" for key, value in sorted(env.items())),
        ]
        return self.run(
            name, container["image"], flags, [*container["command"], *container.get("args", [])]
        )

    def logs(self, name: str) -> str:
        return podman("logs", self.containers[name], check=False)

    def inspect(self, name: str) -> Manifest:
        found: list[Manifest] = json.loads(podman("inspect", self.containers[name]))
        return found[0]

    def host_pid(self, name: str) -> int:
        return int(self.inspect(name)["State"]["Pid"])

    def exec_python(self, name: str, code: str) -> subprocess.CompletedProcess[str]:
        """Run Python inside a running container (the image has no shell)."""
        return subprocess.run(
            ["podman", "exec", self.containers[name], "python", "-c", code],
            capture_output=True,
            text=True,
            env=podman_env(),
            timeout=60,
            check=False,
        )

    def signal(self, name: str, signal: str = "TERM") -> None:
        podman("kill", f"--signal={signal}", self.containers[name])

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        """The container's exit code once it stops, or None if still running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.inspect(name)["State"]
            if not state["Running"]:
                return int(state["ExitCode"])
            time.sleep(0.2)
        return None

    def remove(self) -> None:
        podman("pod", "rm", "--force", "--time=0", self.name, check=False)
