"""Tell a typo from a name the user meant: edit distance and "did you mean".

The rule check applies everywhere a name is looked up in a closed set (settings, middleware
names, option names, method names): a name within ``MAX_TYPO_DISTANCE`` edits of a known
one, compared without case, is a typo of it, unless the edits are half the shorter name or
more (two edits turn any two-letter name into any other). Transposed neighbours count as
one edit, so ``Retyr`` is one edit from ``Retry``.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Edits (insert, delete, substitute, swap two neighbours) that still make a typo.
MAX_TYPO_DISTANCE = 2


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: Levenshtein plus adjacent transpositions."""
    if a == b:
        return 0
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def closest(name: str, known: Iterable[str], limit: int = MAX_TYPO_DISTANCE) -> str | None:
    """The known name ``name`` is most likely a typo of (ignoring case), or None when none is
    within ``limit`` edits. An exact match is returned too; callers look names up first."""
    lowered = name.lower()
    best: tuple[int, str] | None = None
    for candidate in sorted(set(known)):
        if abs(len(candidate) - len(lowered)) > limit:
            continue
        distance = edit_distance(lowered, candidate.lower())
        if 2 * distance >= min(len(lowered), len(candidate)):
            continue
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'X'?)" for a near miss, else ""; to append to a message."""
    match = closest(name, known)
    return f" (did you mean '{match}'?)" if match is not None and match != name else ""
