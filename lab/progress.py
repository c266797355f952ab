"""Steps a person can follow: one line when a step starts, one with its time when it ends.

Every step is also a timed phase when a ``Timings`` recorder is attached, so the same figures feed
timings.json, the report and the benchmark.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from lab.timings import Timings


class Steps:
    def __init__(self, title: str, timings: Timings | None = None, quiet: bool = False) -> None:
        self.title = title
        self.timings = timings
        self.console = Console(stderr=True, highlight=False, quiet=quiet, soft_wrap=True)
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        label = f"{self.title}: {name}"
        started = time.monotonic()
        phase = self.timings.phase(label) if self.timings else contextlib.nullcontext()
        interactive = self.console.is_terminal and sys.stderr.isatty()
        status = (
            self.console.status(f"[bold]{label}[/] ...")
            if interactive
            else contextlib.nullcontext()
        )
        if not interactive:
            self.console.print(f"-> {label} ...")
        try:
            with phase, status:
                yield
        except BaseException:
            self.console.print(f"[red]FAILED[/] {label} after {time.monotonic() - started:.1f} s")
            raise
        took = time.monotonic() - started
        self.durations[name] = took
        self.console.print(f"[green]done[/]   {label} in {took:.1f} s")

    def say(self, message: str) -> None:
        self.console.print(message)
