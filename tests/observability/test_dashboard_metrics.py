"""Every metric the chart's Grafana dashboard queries exists on the running
processes: the gRPC server's metrics port and the sidecar's /metrics."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.sandbox.server import SandboxServer
from tests.observability.scrape import TwoProcesses, two_processes

DASHBOARD = (
    pathlib.Path(__file__).resolve().parents[2]
    / "helm"
    / "image-service"
    / "dashboards"
    / "image-service.json"
)
# A metric name where PromQL selects series: followed by a label matcher or a range.
_SELECTED = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "gauge": ("",),
    "info": ("_info",),
}


@pytest.fixture
async def both(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[TwoProcesses]:
    async with two_processes(sandbox, tmp_path) as running:
        yield running


def _exposed(text: str) -> set[str]:
    """Every series name the exposition declares (also families with no sample yet)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _queried(dashboard: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(panel title, metric name) for every metric every panel and variable queries."""
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            names = _SELECTED.findall(expr)
            assert names, f"{panel['title']}: no metric found in {expr!r}"
            for name in names:
                yield panel["title"], name
    for variable in dashboard["templating"]["list"]:  # type: ignore[index]
        query = variable.get("definition", "")
        for name in _LABEL_VALUES.findall(query):
            yield f"variable {variable['name']}", name


async def test_every_dashboard_metric_exists_on_a_running_server(both: TwoProcesses) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        server = (await client.get(both.service_metrics_url)).text
        sidecar = (await client.get(f"{both.sidecar_url}/metrics")).text
    exposed = _exposed(server) | _exposed(sidecar)

    queried = list(_queried(json.loads(DASHBOARD.read_text())))
    missing = sorted({f"{panel}: {name}" for panel, name in queried if name not in exposed})
    assert missing == []
    # The dashboard covers what the issue asks it to show.
    names = {name for _, name in queried}
    for wanted in (
        "rpc_server_duration_seconds_count",
        "http_server_request_duration_seconds_count",
        "image_service_generation_duration_seconds_bucket",
        "image_service_images_total",
        "image_service_cost_usd_total",
        "image_service_generations_in_flight",
        "image_service_upstream_call_duration_seconds_count",
    ):
        assert wanted in names, wanted
