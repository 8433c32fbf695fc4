"""Tensor names mentioned in the agent's answer, as character spans the UI turns into links.

Only exact names of the open model count. Most names are runs of `[A-Za-z0-9_.-/:]`, found by one
regex pass and a set lookup (a 90k-tensor model costs the same as a small one); the few names
holding other characters (a space, say) are searched for directly. Overlapping mentions resolve
to the longest, earliest one. The spans index the answer as JavaScript does (UTF-16 code units).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RUN = re.compile(r"[A-Za-z0-9_.\-/:]+")
_TRAILING = ".:-/"  # sentence punctuation glued to a name: "see model.norm.weight."


def find_mentions(text: str, names: Iterable[str], limit: int = 500) -> list[dict]:
    names = names if isinstance(names, (set, frozenset, dict)) else set(names)
    found: list[tuple[int, int, str]] = []
    for m in _RUN.finditer(text):
        word, start = m.group(), m.start()
        # the run itself, without trailing punctuation, and without any prefix up to a ':' or '/'
        candidates: dict[str, int] = {}  # candidate -> its offset in the run
        for w in {word, word.rstrip(_TRAILING)}:
            candidates[w] = 0
            for i, ch in enumerate(w):
                if ch in ":/":
                    candidates.setdefault(w[i + 1:], i + 1)
        for cand, offset in candidates.items():
            if cand and cand in names:
                found.append((start + offset, start + offset + len(cand), cand))
    odd = [n for n in names if n and not _RUN.fullmatch(n)]
    for name in odd:
        i = text.find(name)
        while i >= 0:
            found.append((i, i + len(name), name))
            i = text.find(name, i + 1)
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    out: list[dict] = []
    end = -1
    for s, e, name in found:
        if s >= end:
            out.append({"start": _utf16(text, s), "end": _utf16(text, e), "name": name})
            end = e
            if len(out) >= limit:
                break
    return out


def _utf16(text: str, index: int) -> int:
    """A Python string index as a JavaScript (UTF-16) one: astral characters count twice."""
    prefix = text[:index]
    return index + sum(1 for ch in prefix if ord(ch) > 0xFFFF)
