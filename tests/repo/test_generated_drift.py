"""generated/ must be exactly what protos/ produce (run `make proto`)."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _files(root: pathlib.Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)], check=True
    )
    checked_in = ROOT / "generated"
    assert _files(tmp_path) == _files(checked_in), "files differ: run `make proto`"
    stale = [
        name
        for name in sorted(_files(tmp_path))
        if not filecmp.cmp(tmp_path / name, checked_in / name, shallow=False)
    ]
    assert not stale, f"generated/ is stale for {stale}: run `make proto`"
