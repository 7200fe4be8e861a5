"""The CLI's one way of printing columns: each padded to its widest cell."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    indent: str = "  ",
    align: str | None = None,
) -> list[str]:
    """The header and the rows as lines, columns padded to their widest cell and two
    spaces apart, trailing blanks dropped; `align` says l or r per column (default: the
    first to the left, names; the rest to the right, numbers)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(r, widths, align, strict=True)
        ]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines
