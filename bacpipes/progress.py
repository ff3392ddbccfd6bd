"""Progress for long multi-step commands (`bacpipes demo`): a rich progress bar per step on a terminal,
plain "✓ step (s)" lines when the output is a pipe (logs, tests), and each step's duration."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any


class Steps:
    """One line per step: a rich progress bar on a terminal, plain lines otherwise (logs, tests)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.tty = self.console.is_terminal
        self.timings: dict[str, float] = {}
        self.progress: Any = None
        if self.tty:
            from rich import progress as rp

            self.progress = rp.Progress(rp.SpinnerColumn(), "{task.description}", rp.BarColumn(),
                                        rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), console=self.console)

    def say(self, text: str) -> None:
        if self.tty:
            self.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, total: float | None = None) -> Iterator[Callable[..., None]]:
        """`with steps.step("backfill", total=n) as update: update(completed=k, text=...)`."""
        t0 = time.monotonic()
        task = None
        if self.progress is not None:
            if not self.progress.live.is_started:
                self.progress.start()
            task = self.progress.add_task(name, total=total)

        def update(completed: float | None = None, text: str | None = None,
                   total: float | None = None) -> None:
            if task is not None:
                self.progress.update(task, completed=completed, total=total,
                                     description=f"{name}: {text}" if text else name)

        try:
            yield update
        except BaseException:
            if task is not None:
                self.progress.update(task, description=f"[red]✗[/] {name}")
                self.progress.stop()
            raise
        elapsed = time.monotonic() - t0
        self.timings[name] = elapsed
        if task is not None:
            done = self.progress.tasks[task].total or 1
            self.progress.update(task, completed=done, total=done,
                                 description=f"[green]✓[/] {name} ({elapsed:.1f} s)")
        else:
            print(f"  ✓ {name} ({elapsed:.1f} s)", flush=True)

    def done(self) -> None:
        if self.progress is not None and self.progress.live.is_started:
            self.progress.stop()
