"""Progress of a run, for people at a terminal and for log files alike.

On a terminal (stderr is a TTY) rounds show as a rich progress bar. Redirected to a
file, a live bar would only be drawn once, when the run ends; there each round is
one plain line instead (step, seconds, headline metric, sites), written at once.
Phases that take a while between rounds (partitioning, the membership audit, the
final pictures) say when they start and how long they took, so a log never falls
silent for minutes without saying why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """Steps of a run (rounds, or sites of the local baseline): a bar or a line each.

    Use as a context manager and call `advance` after each step."""

    def __init__(self, title: str, total: int, done: int = 0, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.bar: Progress | None = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console)
            self.task = self.bar.add_task(title, total=total, completed=done, status="")

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, step: str, seconds: float, status: str) -> None:
        """One step done: ``step`` names it (``round 3/20``), ``status`` says how it went."""
        if self.bar is not None:
            self.bar.update(self.task, advance=1, status=status)
        elif self.enabled:
            say(self.console, f"{step}: {seconds:.1f} s" + (f", {status}" if status else ""))


def say(console: Console, line: str) -> None:
    """One plain line (no markup, no wrapping); rich flushes it at once."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def phase(console: Console, what: str, enabled: bool = True) -> Iterator[None]:
    """``what`` is under way: a spinner on a terminal, a line in a log; then how long it took."""
    if not enabled:
        yield
        return
    started = time.perf_counter()
    if console.is_terminal:
        with console.status(f"{what} ..."):
            yield
    else:
        say(console, f"{what} ...")
        yield
    say(console, f"{what}: done in {time.perf_counter() - started:.1f} s")


def sites_status(sent: int, replied: int, rejected: int = 0) -> str:
    """``sites 9 ok, 1 failed`` of the ``sent`` sites, ``replied`` of which answered; an
    answer whose update the server rejected counts apart."""
    text = f"sites {replied - rejected} ok, {sent - replied} failed"
    return text + (f", {rejected} rejected" if rejected else "")
