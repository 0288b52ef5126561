"""Smoke test of `make bench`'s harness: it runs end to end and reports.

Not a performance test: no figure is compared with a target, only the
shape of the report and the absence of errors. Nothing in it depends on how
busy the machine is: each cell's window closes after a count of requests
(`--max-requests`), and the time box and timeouts are generous bounds that
only stop a hung run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import keyed

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` from the repository root, bounded by RUN_TIMEOUT_S."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


# Bounds on a hung run, not expectations: a loaded 2-core machine runs it in
# well under a minute.
RUN_TIMEOUT_S = 600


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_quick_run_reports_every_section_without_errors(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    report = tmp_path / "report.md"
    completed = run_module(
        "benchmarks.run",
        "--quick",
        "--target-duration",
        "120",
        "--max-requests",
        "16",
        "--stream-requests",
        "1",
        "--capacity",
        "20",
        "--capacity-upstream-s",
        "0.2",
        "--observability-rounds",
        "1",
        "--observability-duration",
        "120",
        "--output",
        str(report),
        "--json",
        str(results),
        "--workdir",
        str(tmp_path / "work"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = report.read_text()
    for heading in ("## Targets", "## Grid", "## Streaming", "## Capacity", "## Observability"):
        assert heading in text
    for row in ("direct → emulator", "gRPC Generate, URL", "REST, b64_json"):
        assert f"| {row} |" in text

    data = json.loads(results.read_text())
    cells = {
        (c["path"], c["latency_ms"], c["noise"], c["n"], c["concurrency"]) for c in data["cells"]
    }
    assert ("grpc-url", 500, "3mb", 1, 32) in cells
    assert ("rest-b64", 0, "4mb", 1, 8) in cells
    assert ("direct", 0, "4mb", 1, 8) in cells
    for cell in data["cells"]:
        assert cell["load"]["errors"] == {}, cell
        assert cell["load"]["latencies_s"], cell
    # Each configuration streamed, and every service cell was measured in both.
    assert [(s["config"], s["errors"]) for s in data["streams"]] == [
        ("bare", 0),
        ("production", 0),
    ]
    service_cells = [c for c in data["cells"] if c["path"] != "direct"]
    assert sorted(c["config"] for c in service_cells) == [
        "bare",
        "bare",
        "production",
        "production",
    ]
    assert "## bare against production" in text
    # The production configuration's traces reached the local receiver.
    assert data["otlp"]["exports"] > 0
    # With keys and a redis-server (make test installs it), production's
    # calls carried a key checked against Redis, and none was refused.
    if keyed.supported():
        assert "with an API key checked against Redis" in text
    assert data["capacity"][0]["completed"] == 20
    assert data["capacity"][0]["errors"] == {}
    assert {t["name"] for t in data["targets"]} >= {
        f"[{config}] Streaming n=4: first image after the fastest call (p50)"
        for config in ("bare", "production")
    }


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_peer_stage_runs_with_the_service_alone(tmp_path: Path) -> None:
    """`benchmarks.peers` without peers: the feature probes and the
    interleaved table, for the service only."""
    report = tmp_path / "peers.md"
    completed = run_module(
        "benchmarks.peers",
        "--peers",
        "",
        "--reps",
        "2",
        "--latencies",
        "0",
        "--concurrencies",
        "1",
        "--duration",
        "120",
        "--max-requests",
        "4",
        "--output",
        str(report),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = report.read_text()
    service = "this service (REST sidecar + server)"
    # Every feature the probes ask for, the service has.
    assert f"| {service} | yes | yes (server-sent events) | yes |" in text
    rows = [line for line in text.splitlines() if line.startswith(f"| 0 | 1 | {service} |")]
    assert len(rows) == 1, text
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert int(cells[11]) == 8  # four requests in each of the two repetitions
    assert cells[12] == "0"  # errors
    assert "| 0 | 1 | direct → emulator |" in text


@pytest.mark.parametrize("transport", ["http1", "aiohttp", "httpx"])
def test_the_transport_read_benchmark_reads_through_each_transport(transport: str) -> None:
    completed = run_module(
        "benchmarks.transport_read",
        "--transport",
        transport,
        "--body-bytes",
        "300000",
        "-c",
        "2",
        "--requests",
        "3",
        "--tuned-allocator",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # One line: the transport, a CPU figure and the count it was divided by.
    assert completed.stdout.startswith(f"{transport} (tuned allocator): ")
    assert " ms CPU per 300,026-byte answer, c=2, 6 answers in " in completed.stdout


@pytest.mark.parametrize(
    ("flags", "how"),
    [((), "HTTPS"), (("--sign-body",), "HTTPS, body signed"), (("--http",), "HTTP")],
)
def test_the_store_put_benchmark_uploads_through_the_r2_store(
    flags: tuple[str, ...], how: str
) -> None:
    completed = run_module(
        "benchmarks.store_put", "--image-bytes", "300000", "-c", "2", "--requests", "3", *flags
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith(f"R2Store.put over {how}: ")
    assert " ms CPU per 300,000-byte image, c=2, 6 uploads in " in completed.stdout


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_cell_tool_splits_each_process_cost() -> None:
    completed = run_module(
        "benchmarks.cell", "grpc-url", "--noise", "1mb", "-c", "2", "--seconds", "1"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    head, server, sidecar = completed.stdout.strip().splitlines()
    assert head.startswith("grpc-url 1mb n=1 c=2 0 ms [bare]: ") and "errors {}" in head
    for line, name in ((server, "server"), (sidecar, "sidecar")):
        assert line.strip().startswith(f"{name}: ")
        assert "ms CPU per request (user " in line and "minor faults per request" in line


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("server", ["floor-sleep", "floor-lean"])
def test_the_cell_tool_measures_a_floor_server(server: str, tmp_path: Path) -> None:
    # The floor answers the load client's checks (one stored image with a
    # URL), so a window without errors means it did the work it stands for.
    completed = run_module(
        "benchmarks.cell", "grpc-url", "--noise", "1mb", "-c", "2", "--seconds", "1",
        "--server", server,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    head, server_line, _ = completed.stdout.strip().splitlines()
    assert head.startswith(f"grpc-url 1mb n=1 c=2 0 ms [bare, {server}]: ")
    assert "errors {}" in head and " 0 requests" not in head
    assert server_line.strip().startswith("server: ")


def test_a_floor_server_refuses_cells_it_does_not_stand_for() -> None:
    completed = run_module("benchmarks.cell", "rest-b64", "--server", "floor-lean")
    assert completed.returncode == 2
    assert "a floor server answers only grpc-url, bare, n=1" in completed.stderr
