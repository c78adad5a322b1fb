"""Tables for a terminal: each column as wide as its widest cell, two spaces between columns,
and, when the whole is wider than the terminal, the wrappable columns wrapped onto more lines
(a column never runs into the next one).

    print(render(["APP", "DESCRIPTION"], [["firefox", "Firefox ESR web browser"]], wrap={"DESCRIPTION"}))
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Collection, Sequence

#: Spaces between two columns.
GAP = 2
#: A wrapped column keeps at least this many characters a line (and its longest word).
MIN_WRAP = 16


def terminal_width(default: int = 100) -> int:
    """Columns of the terminal ($COLUMNS first); `default` when there is none (a pipe)."""
    return shutil.get_terminal_size((default, 24)).columns


def _wrap(text: str, width: int) -> list[str]:
    # Break between words only (a path is one word): the column is never narrower than its
    # longest word.
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None,
           wrap: Collection[str] = ()) -> str:
    """The table as text, lines without trailing spaces. Columns are sized to their content; when
    that is wider than `width` (default: the terminal's), the columns named in `wrap` (by header)
    shrink, the widest first, down to MIN_WRAP or their longest word, and their cells wrap onto
    continuation lines (between words).
    The last column is never padded, so nothing is added past its text."""
    width = width if width is not None else terminal_width()
    cells = [[str(c) for c in row] for row in rows]
    sizes = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    wrappable = [i for i, h in enumerate(headers) if h in wrap]
    floor = {i: max([MIN_WRAP, len(headers[i]), *(len(w) for r in cells for w in r[i].split())]) for i in wrappable}
    overflow = sum(sizes) + GAP * (len(sizes) - 1) - width
    while overflow > 0:
        shrinkable = [i for i in wrappable if sizes[i] > floor[i]]
        if not shrinkable:
            break  # narrower than the fixed columns: wider lines rather than cut names
        widest = max(shrinkable, key=lambda i: sizes[i])
        sizes[widest] -= 1
        overflow -= 1
    lines = [_line(list(headers), sizes)]
    for row in cells:
        parts = [_wrap(cell, sizes[i]) if i in wrappable else [cell] for i, cell in enumerate(row)]
        for n in range(max(len(p) for p in parts)):
            lines.append(_line([p[n] if n < len(p) else "" for p in parts], sizes))
    return "\n".join(lines)


def _line(cells: list[str], sizes: list[int]) -> str:
    padded = [cell.ljust(size) for cell, size in zip(cells[:-1], sizes[:-1], strict=True)]
    return (" " * GAP).join([*padded, cells[-1]]).rstrip()
