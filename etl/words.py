"""Words: counts with the right noun form, and reasons cut only between words, for the messages etl prints."""

from __future__ import annotations


def plural(n: int, word: str, many: str = "") -> str:
    """'1 worker', '2 workers', '3 classes', '1,200 records'; `many` when the plural is not word + s/es."""
    if n == 1:
        return f"{n:,d} {word}"
    if not many:
        many = word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return f"{n:,d} {many}"



def cut_at_word(text: str, limit: int) -> str:
    """The text, or as many of its whole words as fit in `limit` characters, followed by '...'."""
    if len(text) <= limit:
        return text
    head = text[: limit - 3]
    if text[len(head)] != " " and " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:(") + "..."


def before_colon(text: str) -> str:
    """The text up to its first ': ' outside brackets: 'cannot read' of 'cannot read: permission denied', all of
    'worker process failed twice (last: it was killed)'."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == ":" and depth == 0 and text[i + 1: i + 2] in (" ", ""):
            return text[:i]
    return text
