"""`mabrouter demo` owns every port it opens: it runs while the default metrics port is taken (by a router
from README "Running it", say)."""

from __future__ import annotations

import contextlib
import socket

import pytest

from mabrouter.demo import run_demo

DEFAULT_METRICS_PORT = 9464


def test_the_demo_runs_while_the_default_metrics_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the demo's router exited on 127.0.0.1:9464 and the demo stopped with its error."""
    holder = socket.socket()
    with contextlib.suppress(OSError):  # already taken by something else: the condition holds anyway
        holder.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
        holder.listen()
    try:
        code = run_demo(decisions=500)  # too few to judge the learning: only that it ran end to end
    finally:
        holder.close()
    out = capsys.readouterr().out
    assert code in (0, 1), out
    assert "router serving on" in out
    assert "500 decisions in" in out
