"""The report's HTML building blocks. Every value from Redis goes through `escape` here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

Cell = str | tuple[str, str]  # text, or (text, data-k key that tests and scripts can find)


def num(value: float | None, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None and math.isfinite(value) else "-"


def _td(cell: Cell, numeric: bool) -> str:
    text, key = cell if isinstance(cell, tuple) else (cell, "")
    attributes = (' class="n"' if numeric else "") + (f' data-k="{escape(key)}"' if key else "")
    return f"<td{attributes}>{escape(text)}</td>"


def table(
    headers: Sequence[str], align: str, rows: Sequence[Sequence[Cell]], bad: Sequence[bool] = ()
) -> str:
    """align: one letter per column, l or r (numbers); bad: the rows to highlight."""
    body = "".join(
        ('<tr class="bad">' if i < len(bad) and bad[i] else "<tr>")
        + "".join(_td(cell, align[column] == "r") for column, cell in enumerate(row))
        + "</tr>"
        for i, row in enumerate(rows)
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def badge(text: str, colour: str = "") -> str:
    return f'<span class="badge {colour}">{escape(text)}</span>'
