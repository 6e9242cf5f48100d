"""Words: counts with the right noun form, for the messages etl prints."""

from __future__ import annotations


def plural(n: int, word: str, many: str = "") -> str:
    """'1 worker', '2 workers', '3 classes', '1,200 records'; `many` when the plural is not word + s/es."""
    if n == 1:
        return f"{n:,d} {word}"
    if not many:
        many = word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return f"{n:,d} {many}"

