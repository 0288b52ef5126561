"""The chart's metrics, logs and tracing values: scrape annotations, the
metrics port, the optional ServiceMonitor and dashboard, the HPA on
generations in flight, and the values schema around them.

Rendered by the real helm binary (helpers from test_chart.py); the dashboard
itself is checked against a running server in
tests/observability/test_dashboard_metrics.py.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helm.test_chart import (
    CHART,
    FULL_VALUES,
    _isolated_helm,  # noqa: F401  (the autouse fixture that isolates helm)
    config_data,
    containers,
    kinds,
    one,
    render,
    render_error,
)

DASHBOARD = CHART / "dashboards" / "image-service.json"


def test_defaults_expose_metrics_with_scrape_annotations_and_json_logs() -> None:
    docs = render()
    server = containers(docs)["server"]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in server["ports"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    assert annotations["prometheus.io/path"] == "/metrics"
    data = config_data(docs)
    assert data["IMAGE_SERVICE_METRICS"] == "true"
    assert data["IMAGE_SERVICE_METRICS_PORT"] == "9464"
    assert data["IMAGE_SERVICE_LOG_FORMAT"] == "json"
    assert not any(key.startswith("OTEL_") for key in data)  # tracing off by default
    # No ServiceMonitor, no dashboard, and the Service keeps its two ports.
    assert "ServiceMonitor" not in kinds(docs)
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["grpc", "http"]


def test_metrics_off_removes_port_and_annotations() -> None:
    docs = render(sets=("metrics.enabled=false", "metrics.serviceMonitor.enabled=true"))
    assert "metrics" not in [p["name"] for p in containers(docs)["server"]["ports"]]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert not any(key.startswith("prometheus.io/") for key in annotations)
    assert config_data(docs)["IMAGE_SERVICE_METRICS"] == "false"
    assert "ServiceMonitor" not in kinds(docs)


def test_service_monitor_scrapes_the_server_and_the_sidecar() -> None:
    docs = render(
        sets=(
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
            "metrics.serviceMonitor.interval=15s",
        )
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoints = {(e["port"], e["path"], e["interval"]) for e in monitor["spec"]["endpoints"]}
    assert endpoints == {("metrics", "/metrics", "15s"), ("http", "/metrics", "15s")}
    service = one(docs, "Service", "rel-image-service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert {"name": "metrics", "port": 9464, "targetPort": "metrics"}.items() <= next(
        p for p in service["spec"]["ports"] if p["name"] == "metrics"
    ).items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["imaging"]}

    without_rest = one(
        render(sets=("metrics.serviceMonitor.enabled=true", "rest.enabled=false")),
        "ServiceMonitor",
    )
    assert [e["port"] for e in without_rest["spec"]["endpoints"]] == ["metrics"]


def test_dashboard_configmap_ships_the_dashboard_file() -> None:
    docs = render(
        sets=(
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.annotations.grafana_folder=Imaging",
        )
    )
    dashboard = one(docs, "ConfigMap", "rel-image-service-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Imaging"}
    shipped = json.loads(dashboard["data"]["image-service.json"])
    assert shipped == json.loads(DASHBOARD.read_text())
    assert shipped["uid"] == "image-service" and len(shipped["panels"]) >= 10


def test_tracing_endpoint_sets_the_standard_otel_variables() -> None:
    data = config_data(render((FULL_VALUES,)))
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert data["OTEL_TRACES_SAMPLER_ARG"] == "0.25"


def test_hpa_scales_on_generations_in_flight() -> None:
    hpa = one(render((FULL_VALUES,)), "HorizontalPodAutoscaler")
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "image_service_generations_in_flight"},
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        }
    ]
    # In flight alone (no CPU target) is a complete HPA too.
    only = one(
        render(
            sets=(
                "autoscaling.enabled=true",
                "auth.redis.existingSecret=redis",  # replicas share keys through Redis
                "autoscaling.targetCPUUtilizationPercentage=null",
                "autoscaling.generationsInFlightPerPod=3",
            )
        ),
        "HorizontalPodAutoscaler",
    )
    assert [m["type"] for m in only["spec"]["metrics"]] == ["Pods"]
    assert only["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "3"


def test_scaled_hpa_is_a_valid_autoscaling_v2_object() -> None:
    try:
        import kubernetes_validate as kv
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("kubernetes-validate is not installed (a dev dependency)")
        pytest.skip("kubernetes-validate is not installed")
    hpa = one(render((FULL_VALUES,)), "HorizontalPodAutoscaler")
    kv.validate(hpa, "1.30.0", strict=True)


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("metrics.port=70000",), "/metrics/port"),
        (("logFormat=xml",), "/logFormat"),
        (("tracing.otlpEndpoint=otel:4318",), "/tracing/otlpEndpoint"),
        (("tracing.sampleRatio=2",), "/tracing/sampleRatio"),
        (("metrics.serviceMonitor.interval=fast",), "/metrics/serviceMonitor/interval"),
        (("autoscaling.generationsInFlightPerPod=0",), "/autoscaling/generationsInFlightPerPod"),
        (
            ("autoscaling.generationsInFlightMetric=in flight",),
            "/autoscaling/generationsInFlightMetric",
        ),
        (("config.METRICS_PORT=1",), "METRICS_PORT"),
        (("config.LOG_FORMAT=text",), "LOG_FORMAT"),
        (("metrics.unknown=1",), "unknown"),
    ],
)
def test_schema_rejects_bad_observability_values(sets: tuple[str, ...], complaint: str) -> None:
    message = render_error(*sets)
    assert "don't meet the specifications of the schema" in message
    assert complaint in message or complaint.strip("/").replace("/", ".") in message


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("metrics.port=50051",), "metrics.port must differ"),
        (("metrics.port=8080",), "metrics.port must differ"),
        (
            (
                "autoscaling.enabled=true",
                "auth.redis.existingSecret=redis",
                "autoscaling.generationsInFlightPerPod=4",
                "metrics.enabled=false",
            ),
            "needs metrics.enabled",
        ),
    ],
)
def test_templates_reject_inconsistent_observability_values(
    sets: tuple[str, ...], complaint: str
) -> None:
    assert complaint in render_error(*sets)
