"""The reliability suite's fast part: every phase of `make reliability` at
small counts, so the suite itself cannot rot between full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_passes_every_part_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, "-m", "reliability.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = out.read_text()
    for part in (
        "REST fuzz",
        "gRPC fuzz",
        "upstream faults",
        "soak",
        "storage killed mid-load",
        "SIGTERM gRPC",
        "SIGTERM REST",
    ):
        assert f"| {part}" in table, part
    assert "| **total** |" in table and "| yes |" in table
    assert "server peak RSS" in table
