"""The README's disaster-recovery runbook as the tests run it.

A test that runs a runbook step takes the command line from the README by its first words
(`command("site rebuild", {"site.toml": path})`), with the runbook's placeholder words (file names, TIME,
DIR, ...) replaced by its own: the commands an operator copies are the ones the suite runs, and cannot
drift from them. tests/test_runbook.py checks that every command of the runbook is taken by a test."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Disaster recovery"


def lines() -> list[str]:
    """Every `bacpipes ...` line of the runbook's shell blocks, without its trailing comment."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith("bacpipes "):
                found.append(command)
    return found


def command(name: str, values: dict[str, object] | None = None) -> list[str]:
    """The one runbook line starting `bacpipes <name>`, as arguments for `bacpipes.cli.main`, with its
    placeholder words replaced by `values`."""
    matching = [line for line in lines() if named(line, name)]
    assert len(matching) == 1, f"the runbook has {len(matching)} lines starting `bacpipes {name}`"
    words = {k: str(v) for k, v in (values or {}).items()}
    return [words.get(word, word) for word in shlex.split(matching[0])[1:]]


def named(line: str, name: str) -> bool:
    return (line + " ").startswith(f"bacpipes {name} ")
