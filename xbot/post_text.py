"""Post length as X counts it, and shortening a draft to fit."""

from __future__ import annotations

import re

MAX_POST_CHARS = 280
_URL = re.compile(r"https?://\S+")
_SHORT_URL_WEIGHT = 23  # X counts every link as a t.co link of 23 characters
# Code point ranges X weighs as one character; everything else (CJK, emoji, ...) counts as two.
_LIGHT_RANGES = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))


def weighted_length(text: str) -> int:
    """Length as X counts it: links are 23, wide characters 2."""
    total = 0
    for part_index, part in enumerate(_URL.split(text)):
        if part_index:
            total += _SHORT_URL_WEIGHT
        for char in part:
            code = ord(char)
            total += 1 if any(low <= code <= high for low, high in _LIGHT_RANGES) else 2
    return total


def fit_to_post(text: str, limit: int = MAX_POST_CHARS) -> str:
    """The text, shortened at a word boundary with an ellipsis when X would count it over the limit."""
    text = text.strip()
    if weighted_length(text) <= limit and len(text) <= limit:
        return text
    words = text.split()
    kept: list[str] = []
    for word in words:
        candidate = " ".join([*kept, word]) + "…"
        if weighted_length(candidate) > limit or len(candidate) > limit:
            break
        kept.append(word)
    if not kept:  # one enormous word: cut by characters
        cut = text
        while cut and (weighted_length(cut + "…") > limit or len(cut) + 1 > limit):
            cut = cut[:-1]
        return cut + "…" if cut else ""
    return " ".join(kept).rstrip(",;:-") + "…"


def check_post_text(text: str) -> str:
    """The stripped text, or ValueError when it is empty or longer than a post."""
    text = text.strip()
    if not text:
        raise ValueError("reply text is empty")
    if len(text) > MAX_POST_CHARS or weighted_length(text) > MAX_POST_CHARS:
        raise ValueError(f"reply text is longer than {MAX_POST_CHARS} characters as X counts them")
    return text
