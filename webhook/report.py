"""Report output shared by `review` and `audit`: aligned text columns and indented JSON.

Pure formatting of plain values; imports no other module of the project.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


def format_columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as columns two spaces apart, the first row a header; the last column is not padded (it may be long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
            for row in rows]


def dump_json(report: Any) -> str:
    """A report as indented JSON with a final newline."""
    return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
