"""The end the reranker benchmarks share: a table on stdout, then the figures as JSON.

`finish(out, report, title=..., table=..., notes=...)` prints a blank line and the title, the
table and the notes, writes `report` to `out` as indented JSON (its folder created if need be)
and says where. The benchmarks import it as a sibling module (they run as scripts, so their
folder is on the path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Column:
    """A column: its title, its width in characters, its alignment ("<" left, ">" right) and
    the text printed before it (a separator such as " | ")."""

    title: str
    width: int
    align: str = ">"
    before: str = ""


@dataclass(frozen=True)
class Table:
    """Columns and rows of already formatted cells, one cell a column."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[str]]

    def lines(self) -> list[str]:
        def line(cells: Sequence[str]) -> str:
            return "".join(
                f"{column.before}{cell:{column.align}{column.width}}"
                for column, cell in zip(self.columns, cells, strict=True)
            )

        return [line([column.title for column in self.columns]), *map(line, self.rows)]


def finish(
    out: Path,
    report: dict,
    *,
    title: str | None = None,
    table: Table | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Print the title, the table and the notes; write `report` to `out` as JSON."""
    if title is not None:
        print(f"\n{title}")
    for line in table.lines() if table is not None else ():
        print(line)
    for note in notes:
        print(note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
