"""Names that look like other names, or like nothing: scripts, lookalike classes, invisible characters.

Pure, and cheap to import: the tables (``chat.lookalikes_data``, generated from Unicode's data by
``tools/make_lookalikes.py``) are parsed on first use.
"""

from __future__ import annotations

import bisect
import unicodedata
from functools import cache

from chat import lookalikes_data as data

# Characters that show as nothing: Unicode's Default_Ignorable_Code_Point (fillers, joiners, variation
# selectors, tags...) and the blank Braille pattern, which renders as a space.
INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
MAX_MARKS = 2  # combining marks on one letter: more is a stack that spills over its neighbours
NEUTRAL_SCRIPTS = frozenset({"COMMON", "INHERITED", "Unknown"})  # digits, punctuation, marks
# Scripts that are written together (UTS #39, "highly restrictive"): every other mix is refused.
SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
)


def invisible(ch: str) -> bool:
    code = ord(ch)
    return any(first <= code <= last for first, last in INVISIBLE_RANGES)


@cache
def _scripts() -> tuple[list[int], list[int], list[str]]:
    names = data.SCRIPT_NAMES.split()
    firsts, lasts, scripts = [], [], []
    for entry in data.SCRIPT_RANGES.split():
        first, last, index = entry.split(":")
        firsts.append(int(first, 16))
        lasts.append(int(last, 16))
        scripts.append(names[int(index)])
    return firsts, lasts, scripts


def script(ch: str) -> str:
    """The Unicode script of ``ch`` (``LATIN``, ``CYRILLIC``, ``COMMON``...), ``Unknown`` when none."""
    firsts, lasts, scripts = _scripts()
    i = bisect.bisect_right(firsts, ord(ch)) - 1
    return scripts[i] if i >= 0 and ord(ch) <= lasts[i] else "Unknown"


def mixed_scripts(text: str) -> set[str]:
    """The scripts of ``text`` when they are a mix people do not write (``alіce``: LATIN and CYRILLIC)."""
    used = {script(ch) for ch in text} - NEUTRAL_SCRIPTS
    if len(used) <= 1 or any(used <= mix for mix in SCRIPT_MIXES):
        return set()
    return used


def stacked_marks(text: str) -> bool:
    """More than MAX_MARKS combining marks in a row, or one with no letter to sit on."""
    run = 0
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in ("Mn", "Me"):
            run += 1
            if run > MAX_MARKS or i == 0:
                return True
        else:
            run = 0
    return False


@cache
def _classes() -> dict[str, str]:
    return dict(zip(data.LOOKALIKE_FROM, data.LOOKALIKE_OF))


def skeleton(text: str) -> str:
    """What ``text`` looks like: equal for ``alice``, ``aIice`` and ``ALICE`` (UTS #39 confusables)."""
    classes = _classes()
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(classes.get(ch, ch) for ch in folded)
