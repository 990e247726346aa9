"""Live progress of a load test: elapsed, decisions/s, errors, p50/p99 so far, current share per arm."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from mabrouter.loadtest.driver import Progress, RunConfig, new_histogram

PLAIN_PROGRESS_EVERY: Final = 5.0  # seconds between progress lines when the console is not a terminal
SHARE_WINDOW: Final = 2.0  # "current" traffic share: the last ~2 s


class Monitor:
    """The live view: merges the workers' latest progress; renders elapsed, rate, errors, p50/p99, shares."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.latest: dict[int, Progress] = {}
        self.history: deque[tuple[float, Counter[str]]] = deque()

    def update(self, index: int, progress: Progress) -> None:
        self.latest[index] = progress

    def fields(self, elapsed: float) -> dict[str, str]:
        """The progress so far, column -> value (call it at a steady pace: it keeps the share window)."""
        decisions = sum(p.decisions for p in self.latest.values())
        errors = sum(p.errors for p in self.latest.values())
        totals: Counter[str] = Counter()
        for p in self.latest.values():
            totals.update(p.arm_totals)
        now = time.monotonic()
        self.history.append((now, totals))
        while len(self.history) > 1 and now - self.history[1][0] >= SHARE_WINDOW:
            self.history.popleft()
        recent = totals - self.history[0][1] if len(self.history) > 1 else totals
        histogram = new_histogram()
        for p in self.latest.values():
            histogram.decode_and_add(p.histogram)
        count = histogram.get_total_count()
        window = sum(recent.values())
        return {
            "elapsed": f"{min(elapsed, self.config.duration):.1f}/{self.config.duration:g} s",
            "decisions": f"{decisions:,}",
            "decisions/s": f"{decisions / elapsed:,.0f}" if elapsed > 0 else "-",
            "errors": f"{errors:,}",
            "p50": f"{histogram.get_value_at_percentile(50) / 1000:.2f} ms" if count else "-",
            "p99": f"{histogram.get_value_at_percentile(99) / 1000:.2f} ms" if count else "-",
            "share (last 2 s)": "  ".join(f"{arm} {n / window:.0%}" for arm, n in sorted(recent.items()))
            if window
            else "-",
        }

    def table(self, fields: dict[str, str]) -> RenderableType:
        table = Table(title=f"mabrouter loadtest -> {self.config.target} ({self.config.experiment})")
        for column in fields:
            table.add_column(column, justify="right", no_wrap=column != "share (last 2 s)")
        table.add_row(*fields.values())
        return table


class progress_view:  # noqa: N801 - used like a function: `with progress_view(console) as show:`
    """Live refresh (~2/s) on a terminal; otherwise a plain progress line every few seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.last_line = time.monotonic()

    def __enter__(self) -> Callable[[Monitor, float], None]:
        if self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.__enter__()
        return self.show

    def show(self, monitor: Monitor, elapsed: float) -> None:
        fields = monitor.fields(elapsed)
        if self.live is not None:
            self.live.update(monitor.table(fields), refresh=True)
        elif time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY:
            self.last_line = time.monotonic()
            self.console.print(
                ", ".join(f"{name} {value}" for name, value in fields.items()), highlight=False
            )

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
