"""docs/cli.md is every command's --help as the CLI prints it now (``make cli-docs``)."""

from __future__ import annotations

import difflib
from pathlib import Path

from locara.cli.main import COMMANDS
from locara.cli.reference import render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    rendered = render()
    on_disk = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            on_disk.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            "docs/cli.md",
            "locara --help now",
            n=1,
        )
    )
    assert not diff, f"docs/cli.md is out of date; run: make cli-docs\n{diff[:4000]}"


def test_every_command_has_a_section() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"\n## locara {name}\n" in text, name
