"""The Helm chart, rendered by the real helm binary and checked as Kubernetes would see it.

Each test renders `helm template` with one of three values sets: the chart
defaults, `ci/ci-values.yaml` (no cloud credentials) and `values-full.yaml`
beside this file (R2, existing Secret, HPA, PDB, ingress, ...). The rendered
objects are validated offline against the Kubernetes OpenAPI schemas shipped
by kubernetes-validate. helm comes from `scripts/install_helm.sh`.
"""

from __future__ import annotations

import base64
import functools
import os
import pathlib
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "image-service"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
FULL_VALUES = pathlib.Path(__file__).with_name("values-full.yaml")
HELM = pathlib.Path(os.environ.get("HELM") or ROOT / ".tools" / "bin" / "helm")

# The chart's kubeVersion floor; manifests are also checked against the newest
# Kubernetes whose schemas kubernetes-validate ships.
OLDEST_KUBERNETES = "1.30.0"

VALUE_SETS = {
    "default": (),
    "ci": (CI_VALUES,),
    "full": (FULL_VALUES,),
}

HEALTH_SERVICE = "chuizi.image.v1.ImageService"
CREDENTIAL_NAME = re.compile(r"(API_KEY|ACCESS_KEY|SECRET|TOKEN|PASSWORD)")


Manifest = dict[str, Any]


_HELM_ENV: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _isolated_helm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep helm away from the user's repositories, plugins and clusters."""
    home = tmp_path_factory.mktemp("helm-home")
    _HELM_ENV.update(
        os.environ,
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),
    )


def helm(*args: str | pathlib.Path) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        missing = f"no helm binary at {HELM}: run scripts/install_helm.sh (or set HELM)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI must not go green by skipping the chart
        pytest.skip(missing)
    return subprocess.run(
        [str(HELM), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_HELM_ENV,
        check=False,
    )


def _value_args(values: tuple[pathlib.Path, ...], sets: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


@functools.cache
def render(values: tuple[pathlib.Path, ...] = (), sets: tuple[str, ...] = ()) -> list[Manifest]:
    """`helm template` as parsed objects; fails the test if helm does."""
    result = helm("template", "rel", CHART, "--namespace", "imaging", *_value_args(values, sets))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*sets: str) -> str:
    """Render with `--set` values that must be refused; returns helm's message."""
    result = helm("template", "rel", CHART, *_value_args((), sets))
    assert result.returncode != 0, f"helm accepted {sets}"
    return result.stderr


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[Manifest]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def pod_spec(docs: list[Manifest]) -> Manifest:
    spec: Manifest = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(docs: list[Manifest]) -> dict[str, Manifest]:
    return {c["name"]: c for c in pod_spec(docs)["containers"]}


def config_data(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(value_set: str) -> list[Manifest]:
    return render(VALUE_SETS[value_set])


# --- lint --------------------------------------------------------------------


def test_lint_strict(value_set: str) -> None:
    result = helm("lint", "--strict", CHART, *_value_args(VALUE_SETS[value_set], ()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_older_than_the_floor_is_refused() -> None:
    result = helm("template", "rel", CHART, "--kube-version", "1.29.0")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


# --- what gets rendered ------------------------------------------------------


def test_defaults_render_only_the_core_objects() -> None:
    assert kinds(render()) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]


def test_full_values_render_every_optional_object() -> None:
    assert kinds(render((FULL_VALUES,))) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "ServiceAccount",
    ]


def test_pod_runs_the_server_and_the_rest_sidecar(docs: list[Manifest]) -> None:
    server, rest = containers(docs)["server"], containers(docs)["rest"]
    assert list(containers(docs)) == ["server", "rest"]
    assert server["image"] == rest["image"]
    assert server["command"] == rest["command"] == ["image-service"]
    assert server["args"] == ["serve"]
    assert rest["args"] == ["rest", "--upstream", "127.0.0.1:50051", "--port", "8080"]
    assert server["ports"] == [
        {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
    ]
    assert rest["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_sidecar_follows_the_server_port() -> None:
    docs = render(sets=("server.port=9000", "rest.port=9001"))
    rest = containers(docs)["rest"]
    assert rest["args"][:3] == ["rest", "--upstream", "127.0.0.1:9000"]
    assert containers(docs)["server"]["readinessProbe"]["grpc"]["port"] == 9000
    assert config_data(docs)["IMAGE_SERVICE_GRPC_PORT"] == "9000"


def test_rest_sidecar_can_be_turned_off() -> None:
    docs = render(sets=("rest.enabled=false",))
    assert list(containers(docs)) == ["server"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["grpc"]


# --- probes and shutdown -----------------------------------------------------


def test_server_probes_are_native_grpc_health_checks(docs: list[Manifest]) -> None:
    server = containers(docs)["server"]
    assert server["startupProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert server["livenessProbe"]["grpc"] == {"port": 50051, "service": ""}
    # Readiness asks for the service itself, which turns NOT_SERVING on SIGTERM.
    assert server["readinessProbe"]["grpc"] == {"port": 50051, "service": HEALTH_SERVICE}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(server[probe]) & {"exec", "httpGet", "tcpSocket"} == set()


def test_rest_probes(docs: list[Manifest]) -> None:
    rest = containers(docs)["rest"]
    assert rest["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert rest["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # /readyz asks the server's health service, so REST readiness follows gRPC's.
    assert rest["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_a_probe_set_to_null_is_left_out() -> None:
    server = containers(render(sets=("server.startupProbe=null",)))["server"]
    assert "startupProbe" not in server
    assert "livenessProbe" in server


def test_grace_period_outlasts_prestop_sleep_plus_drain(docs: list[Manifest]) -> None:
    spec = pod_spec(docs)
    drain = float(config_data(docs)["IMAGE_SERVICE_SHUTDOWN_GRACE_S"])
    sleeps = {c["name"]: c["lifecycle"]["preStop"]["sleep"]["seconds"] for c in spec["containers"]}
    assert set(sleeps) == {"server", "rest"}
    assert len(set(sleeps.values())) == 1, "both containers must stop taking work together"
    assert sleeps["server"] > 0
    assert spec["terminationGracePeriodSeconds"] > sleeps["server"] + drain


def test_grace_period_follows_the_drain_setting() -> None:
    docs = render(sets=("server.shutdownGraceSeconds=300", "preStopSleepSeconds=5"))
    assert config_data(docs)["IMAGE_SERVICE_SHUTDOWN_GRACE_S"] == "300"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 320


def test_grace_period_covers_the_rest_sidecars_drain_too() -> None:
    docs = render(sets=("rest.shutdownGraceSeconds=200", "preStopSleepSeconds=5"))
    assert config_data(docs)["IMAGE_SERVICE_REST_SHUTDOWN_GRACE_S"] == "200"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 220
    message = render_error("rest.shutdownGraceSeconds=100", "terminationGracePeriodSeconds=60")
    assert "terminationGracePeriodSeconds (60) must be larger" in message


def test_explicit_grace_period_shorter_than_the_drain_is_refused() -> None:
    message = render_error("terminationGracePeriodSeconds=40")  # 10 s sleep + 30 s drain
    assert "terminationGracePeriodSeconds (40) must be larger" in message


# --- security ----------------------------------------------------------------


def test_pods_meet_the_restricted_pod_security_profile(docs: list[Manifest]) -> None:
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc.get("privileged")


def test_writable_paths_are_size_limited_empty_dirs(docs: list[Manifest]) -> None:
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["containers"]:
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        tmp = volumes[mounts["/tmp"]["name"]]
        assert tmp["emptyDir"]["sizeLimit"]
        for mount in mounts.values():
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], f"{mount} is writable"


def test_local_storage_is_an_empty_dir_of_the_server() -> None:
    docs = render((CI_VALUES,))
    media = config_data(docs)["IMAGE_SERVICE_LOCAL_STORAGE_DIR"]
    [mount] = [m for m in containers(docs)["server"]["volumeMounts"] if m["mountPath"] == media]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes[mount["name"]]["emptyDir"]["sizeLimit"]
    assert "media" not in {v["name"] for v in pod_spec(render((FULL_VALUES,)))["volumes"]}


def test_image_tag_defaults_to_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for container in containers(render()).values():
        assert container["image"].endswith(f":{app_version}")
    assert "latest" not in str(app_version)


def test_image_digest_pins_the_image() -> None:
    digest = "sha256:" + "ab" * 32
    docs = render(sets=(f"image.digest={digest}",))
    assert containers(docs)["server"]["image"] == f"ghcr.io/chuizi/image-service@{digest}"


# --- configuration and credentials --------------------------------------------


def test_configmap_has_settings_and_no_credentials(docs: list[Manifest]) -> None:
    data = config_data(docs)
    assert data["IMAGE_SERVICE_GRPC_PORT"] == "50051"
    assert data["IMAGE_SERVICE_MAX_MESSAGE_BYTES"] == "67108864"  # not 6.7108864e+07
    assert data["IMAGE_SERVICE_REFLECTION"] == "true"
    assert int(data["IMAGE_SERVICE_REST_MAX_UPLOAD_BYTES"]) < int(
        data["IMAGE_SERVICE_MAX_MESSAGE_BYTES"]
    )
    # Settings, and the standard OpenTelemetry variables when tracing is on.
    assert all(key.startswith(("IMAGE_SERVICE_", "OTEL_")) for key in data)
    assert [key for key in data if CREDENTIAL_NAME.search(key)] == []


def test_every_container_reads_the_configmap(docs: list[Manifest]) -> None:
    name = one(docs, "ConfigMap")["metadata"]["name"]
    for container in containers(docs).values():
        assert {"configMapRef": {"name": name}} in container["envFrom"]


def test_no_secret_without_credentials_in_values() -> None:
    for values in ((), (CI_VALUES,)):
        docs = render(values)
        assert "Secret" not in kinds(docs)
        server = containers(docs)["server"]
        assert [src for src in server["envFrom"] if "secretRef" in src] == []


def test_r2_settings_go_to_the_configmap() -> None:
    data = config_data(render((FULL_VALUES,)))
    assert data["IMAGE_SERVICE_STORAGE"] == "r2"
    assert data["IMAGE_SERVICE_R2_BUCKET"] == "chuizi-images"
    assert data["IMAGE_SERVICE_R2_ENDPOINT_URL"].startswith("https://")
    assert data["IMAGE_SERVICE_R2_PUBLIC_BASE_URL"] == "https://images.example.com"
    assert "IMAGE_SERVICE_LOCAL_STORAGE_DIR" not in data
    assert data["IMAGE_SERVICE_R2_PRESIGN_TTL_S"] == "0"
    assert data["IMAGE_SERVICE_R2_RECORDS_BUCKET"] == "chuizi-records"
    assert data["IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE"] == "/var/run/secrets/vertex/key.json"


def test_private_r2_bucket_needs_no_public_url() -> None:
    r2 = ("storage.type=r2", "storage.r2.endpointUrl=https://a.example", "storage.r2.bucket=imgs")
    assert "publicBaseUrl" in render_error(*r2)
    data = config_data(render(sets=(*r2, "storage.r2.presignTtlSeconds=3600")))
    assert data["IMAGE_SERVICE_R2_PRESIGN_TTL_S"] == "3600"
    assert data["IMAGE_SERVICE_R2_PUBLIC_BASE_URL"] == ""


def test_credentials_reach_only_the_server_and_never_the_configmap() -> None:
    full = yaml.safe_load(FULL_VALUES.read_text())
    docs = render((FULL_VALUES,))
    secret = one(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {f"IMAGE_SERVICE_{k}": v for k, v in full["secrets"].items()}

    rendered_config = yaml.safe_dump(one(docs, "ConfigMap"))
    for value in full["secrets"].values():
        assert value not in rendered_config

    server, rest = containers(docs)["server"], containers(docs)["rest"]
    refs = [src["secretRef"]["name"] for src in server["envFrom"] if "secretRef" in src]
    assert refs == [full["existingSecret"], secret["metadata"]["name"]]
    assert [src for src in rest["envFrom"] if "secretRef" in src] == []


def test_checksum_annotation_rolls_pods_on_config_changes_only() -> None:
    def checksum(*sets: str) -> str:
        annotations = one(render(sets=sets), "Deployment")["spec"]["template"]["metadata"]
        value: str = annotations["annotations"]["checksum/config"]
        return value

    base = checksum()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum("config.AZURE_FLUX_ENDPOINT=https://x.example") != base
    assert checksum("logLevel=DEBUG") != base
    # More than one replica needs the shared key store (Redis).
    shared = checksum("auth.redis.existingSecret=redis")
    assert checksum("auth.redis.existingSecret=redis", "replicaCount=3") == shared


def test_secret_checksum_rolls_pods_on_credential_changes() -> None:
    def checksum(value: str) -> str:
        docs = render(sets=(f"secrets.AZURE_FLUX_API_KEY={value}",))
        meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
        annotation: str = meta["annotations"]["checksum/secret"]
        return annotation

    assert checksum("one") != checksum("two")


def test_service_account_carries_cloud_identity_annotations() -> None:
    docs = render((FULL_VALUES,))
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    assert pod_spec(docs)["serviceAccountName"] == account["metadata"]["name"]


# --- networking and scaling ---------------------------------------------------


def test_service_exposes_grpc_and_http(docs: list[Manifest]) -> None:
    service = one(docs, "Service", "rel-image-service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["grpc"]["targetPort"] == "grpc"
    assert ports["http"]["appProtocol"] == "http"
    assert ports["http"]["targetPort"] == "http"
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


def test_headless_service_for_client_side_balancing() -> None:
    assert len([d for d in render() if d["kind"] == "Service"]) == 1
    headless = one(render((FULL_VALUES,)), "Service", "rel-image-service-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert [(p["name"], p["appProtocol"]) for p in headless["spec"]["ports"]] == [("grpc", "grpc")]


def test_ingress_routes_to_the_rest_port() -> None:
    ingress = one(render((FULL_VALUES,)), "Ingress")
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "rel-image-service", "port": {"name": "http"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_autoscaler_owns_the_replica_count() -> None:
    docs = render((FULL_VALUES,))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "replicas" not in one(docs, "Deployment")["spec"]
    assert one(render(), "Deployment")["spec"]["replicas"] == 1


def test_disruption_budget() -> None:
    pdb = one(render((FULL_VALUES,)), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]
    default = one(render(sets=("podDisruptionBudget.enabled=true",)), "PodDisruptionBudget")
    assert default["spec"]["maxUnavailable"] == 1


def test_topology_spread_gets_the_pod_selector() -> None:
    docs = render((FULL_VALUES,))
    [constraint] = pod_spec(docs)["topologySpreadConstraints"]
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert constraint["labelSelector"] == {"matchLabels": selector}


def test_notes_explain_how_to_connect() -> None:
    result = helm("install", "rel", CHART, "--dry-run=client", "--namespace", "imaging")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "rel-image-service.imaging.svc:50051" in notes
    assert "grpcurl -plaintext" in notes
    assert "not configured" in notes  # no credentials in the defaults


# --- Kubernetes schemas --------------------------------------------------------


@pytest.mark.parametrize("kubernetes", [OLDEST_KUBERNETES, "latest"])
def test_manifests_are_valid_kubernetes_objects(docs: list[Manifest], kubernetes: str) -> None:
    try:
        import kubernetes_validate as kv
        from kubernetes_validate import utils
    except ImportError:
        missing = "kubernetes-validate is not installed (a dev dependency)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)

    version = utils.latest_version() if kubernetes == "latest" else kubernetes
    for doc in docs:
        # strict: unknown fields are errors, as kubectl --validate=strict makes them.
        kv.validate(doc, version, strict=True)


# --- values and schema --------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("image.tag=latest",), "/image/tag"),
        (("image.digest=sha256:short",), "/image/digest"),
        (("image.pullPolicy=Sometimes",), "/image/pullPolicy"),
        (("replicaCount=-1",), "/replicaCount"),
        (("server.port=70000",), "/server/port"),
        (("server.maxMessageBytes=1048576",), "/server/maxMessageBytes"),
        (("server.shutdownGraceSeconds=-5",), "/server/shutdownGraceSeconds"),
        (("server.readinessProbe.periodSeconds=0",), "/server/readinessProbe/periodSeconds"),
        (("server.livenessProbe.httpGet.path=/",), "/server/livenessProbe"),
        (("logLevel=LOUD",), "/logLevel"),
        (("storage.type=s3",), "/storage/type"),
        (("storage.type=r2",), "/storage"),
        (("storage.type=r2", "storage.r2.bucket=b", "storage.r2.endpointUrl=x"), "/storage"),
        (("storage.local.dir=relative/path",), "/storage/local/dir"),
        (("config.AZURE_FLUX_API_KEY=sk-123",), "AZURE_FLUX_API_KEY"),
        (("config.R2_SECRET_ACCESS_KEY=abc",), "R2_SECRET_ACCESS_KEY"),
        (("config.GRPC_PORT=1",), "GRPC_PORT"),
        (("config.REST_PORT=1",), "REST_PORT"),
        (("storage.r2.presignTtlSeconds=999999",), "/storage/r2/presignTtlSeconds"),
        (("auth.redis.maxConnections=0",), "/auth/redis/maxConnections"),
        (("config.REDIS_MAX_CONNECTIONS=8",), "REDIS_MAX_CONNECTIONS"),
        (("config.IMAGE_SERVICE_LOG_LEVEL=DEBUG",), "IMAGE_SERVICE_LOG_LEVEL"),
        (("config.lower_case=1",), "lower_case"),
        (("secrets.AZURE_FLUX_API_KEY=",), "/secrets/AZURE_FLUX_API_KEY"),
        (("existingSecret=Not_A_Name",), "/existingSecret"),
        (("service.type=ExternalName",), "/service/type"),
        (("ingress.enabled=true",), "/ingress"),
        (
            ("podDisruptionBudget.minAvailable=1", "podDisruptionBudget.maxUnavailable=1"),
            "/podDisruptionBudget",
        ),
        (("podDisruptionBudget.maxUnavailable=half",), "/podDisruptionBudget/maxUnavailable"),
        (("autoscaling.minReplicas=0",), "/autoscaling/minReplicas"),
        (("preStopSleepSeconds=-1",), "/preStopSleepSeconds"),
        (("unknownKey=1",), "unknownKey"),
        (("server.unknownKey=1",), "unknownKey"),
    ],
)
def test_schema_rejects_bad_values(sets: tuple[str, ...], complaint: str) -> None:
    message = render_error(*sets)
    assert "don't meet the specifications of the schema" in message
    # Helm 4 names the value /a/b, Helm 3 a.b.
    assert complaint in message or complaint.strip("/").replace("/", ".") in message


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (
            (
                "ingress.enabled=true",
                "ingress.hosts[0].host=a.example",
                "ingress.hosts[0].paths[0].path=/",
                "rest.enabled=false",
            ),
            "needs rest.enabled",
        ),
        (("rest.port=50051",), "must differ"),
        (("rest.maxUploadBytes=67108864",), "must be smaller than server.maxMessageBytes"),
        (
            ("autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"),
            "maxReplicas",
        ),
        (
            ("autoscaling.enabled=true", "autoscaling.targetCPUUtilizationPercentage=null"),
            "needs targetCPU",
        ),
    ],
)
def test_templates_reject_inconsistent_values(sets: tuple[str, ...], complaint: str) -> None:
    assert complaint in render_error(*sets)


def test_credential_file_paths_are_allowed_in_config() -> None:
    docs = render(sets=("config.VERTEX_CREDENTIALS_FILE=/var/run/secrets/vertex/key.json",))
    assert "IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE" in config_data(docs)


def _value_keys(text: str) -> Iterator[tuple[int, str, str, bool]]:
    """(line number, dotted path, comment block above, has children) per key in values.yaml."""
    lines = text.splitlines()
    key_line = re.compile(r"^( *)([A-Za-z][\w.-]*):(?: |$)")
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue  # comments, list items and their contents
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        above = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            above.append(previous.strip())
        following = next(
            (ln for ln in lines[number + 1 :] if ln.strip() and not ln.strip().startswith("#")), ""
        )
        has_children = len(following) - len(
            following.lstrip()
        ) > indent and not following.lstrip().startswith("-")
        yield number + 1, path, "\n".join(reversed(above)), has_children


def test_every_value_is_documented() -> None:
    """Like helm-docs: each key has a `# --` comment, or an ancestor documents it whole.

    A key without one must be a section whose keys are all documented.
    """
    undocumented = []
    documented: set[str] = set()
    for number, path, comment, has_children in _value_keys((CHART / "values.yaml").read_text()):
        parents = [path.rsplit(".", n)[0] for n in range(1, path.count(".") + 1)]
        if "# --" in comment:
            documented.add(path)
        elif not has_children and not any(p in documented for p in parents):
            undocumented.append(f"values.yaml:{number}: {path}")
    assert undocumented == []


def _schema_node(schema: Manifest, node: Manifest) -> Manifest:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _uncovered(schema: Manifest, node: Manifest, values: Any, path: str) -> Iterator[str]:
    node = _schema_node(schema, node)
    if not isinstance(values, dict) or "properties" not in node:
        return
    for key, value in values.items():
        if key not in node["properties"]:
            yield f"{path}{key}"
        else:
            yield from _uncovered(schema, node["properties"][key], value, f"{path}{key}.")


def _coalesce(defaults: Manifest, overrides: Manifest) -> Manifest:
    """Helm's merge of a values file over the chart's: maps merge, null deletes."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_schema_is_valid_and_types_every_value() -> None:
    from jsonschema import Draft7Validator

    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(_uncovered(schema, schema, defaults, "")) == []
    # The same schema, read by Python's validator rather than helm's.
    for values_file in (CI_VALUES, FULL_VALUES):
        values = _coalesce(defaults, yaml.safe_load(values_file.read_text()))
        Draft7Validator(schema).validate(values)


def test_ci_values_need_no_cloud_credentials() -> None:
    values = yaml.safe_load(CI_VALUES.read_text())
    assert values["storage"]["type"] == "local"
    assert not values.get("existingSecret")
    assert not values.get("secrets")
    assert "Secret" not in kinds(render((CI_VALUES,)))


# --- callers: API keys and Redis ----------------------------------------------------


def test_auth_is_on_by_default_with_the_embedded_store_in_tmp() -> None:
    docs = render()
    data = config_data(docs)
    assert data["IMAGE_SERVICE_AUTH"] == "keys"
    assert data["IMAGE_SERVICE_AUTH_DB"].startswith("/tmp/")
    assert "IMAGE_SERVICE_REDIS_URL" not in data
    assert not any(
        e["name"] == "IMAGE_SERVICE_REDIS_URL" for e in containers(docs)["server"].get("env", [])
    )


def test_the_redis_url_comes_from_an_existing_secret_in_the_server_only() -> None:
    docs = render((FULL_VALUES,))
    server, rest = containers(docs)["server"], containers(docs)["rest"]
    [redis] = [e for e in server["env"] if e["name"] == "IMAGE_SERVICE_REDIS_URL"]
    assert redis["valueFrom"] == {
        "secretKeyRef": {"name": "image-service-redis", "key": "redis-url"}
    }
    assert "IMAGE_SERVICE_REDIS_URL" not in str(rest)
    assert "IMAGE_SERVICE_AUTH_DB" not in config_data(docs)


def test_the_redis_connection_pool_comes_from_values() -> None:
    names = [
        f"IMAGE_SERVICE_REDIS_{name}" for name in ("MAX_CONNECTIONS", "POOL_TIMEOUT_S", "TIMEOUT_S")
    ]
    data = config_data(render((FULL_VALUES,)))
    assert [data[name] for name in names] == ["512", "10", "5"]
    sized = (
        "auth.redis.existingSecret=r",
        "auth.redis.maxConnections=16",
        "auth.redis.poolTimeoutSeconds=3",
        "auth.redis.timeoutSeconds=1",
    )
    data = config_data(render(sets=sized))
    assert [data[name] for name in names] == ["16", "3", "1"]
    assert "IMAGE_SERVICE_REDIS_MAX_CONNECTIONS" not in config_data(render())


def test_restricted_egress_reaches_redis_dns_and_public_https_only() -> None:
    policy = one(render((FULL_VALUES,)), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["egress"]
    redis = [r for r in rules if {"port": 6379, "protocol": "TCP"} in r["ports"]]
    assert redis == [
        {
            "ports": [{"port": 6379, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.0.12.5/32"}}],
        }
    ]
    https = [r for r in rules if {"port": 443, "protocol": "TCP"} in r["ports"]]
    assert "10.0.0.0/8" in https[0]["to"][0]["ipBlock"]["except"]
    # Ingress-only unless asked: the default policy leaves egress open.
    open_egress = one(render((), ("networkPolicy.enabled=true",)), "NetworkPolicy")["spec"]
    assert open_egress["policyTypes"] == ["Ingress"] and "egress" not in open_egress


def test_several_replicas_with_keys_need_redis() -> None:
    assert "auth.redis.existingSecret" in render_error("replicaCount=3")
    assert "auth.redis.existingSecret" in render_error("autoscaling.enabled=true")
    render((), ("replicaCount=3", "auth.mode=none"))
    render((), ("replicaCount=3", "auth.redis.existingSecret=redis"))
