"""Every command of the README's disaster-recovery runbook is run by a test (which takes it from the
README through tests/runbook.py), and each names one command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from bacpipes.cli import build_parser
from tests import runbook


def test_every_runbook_command_is_run_by_a_test() -> None:
    taken = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        taken |= set(re.findall(r'runbook\.command\(\s*"([^"]+)"', path.read_text()))
    lines = runbook.lines()
    assert len(lines) >= 8
    assert [line for line in lines if not any(runbook.named(line, name) for name in taken)] == [], \
        "runbook commands no test runs"


def test_every_runbook_command_is_one_the_cli_takes() -> None:
    for line in runbook.lines():
        words = [{"PORT": "5432"}.get(word, word) for word in shlex.split(line)[1:]]
        build_parser().parse_args(words)  # SystemExit (and argparse's message) if not
