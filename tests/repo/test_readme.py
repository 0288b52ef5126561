"""The README's configuration reference covers every setting."""

from __future__ import annotations

import pathlib

from server.settings import Settings

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"IMAGE_SERVICE_{name.upper()}"
        for name in Settings.model_fields
        if f"`IMAGE_SERVICE_{name.upper()}`" not in README
    ]
    assert missing == [], f"add these to the README's configuration table: {missing}"


def test_the_two_setup_commands_are_the_ones_ci_runs() -> None:
    assert "make run" in README and "make test" in README
    ci = (pathlib.Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
