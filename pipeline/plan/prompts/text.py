"""Prompt text: joining phrases, tidying separators, and a/an before vowels."""

from __future__ import annotations

import re
from collections.abc import Sequence


def join_phrases(phrases: Sequence[str]) -> str:
    if len(phrases) < 2:
        return "".join(phrases)
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"


_SEPARATORS = re.compile(r"\s*([,;:])[\s,;:]*")
_ARTICLES = tuple((re.compile(f" {a} (?=[aeioAEIO]|8|1[18]\\b)"), f" {a}n ") for a in "aA")


def fix_articles(text: str) -> str:
    """'a' -> 'an' before a vowel or a number said with one ('an 8 mm', 'an 11 mm')."""
    text = f" {text}"
    for pattern, replacement in _ARTICLES:
        text = pattern.sub(replacement, text)
    return text[1:]


def clean_text(text: str) -> str:
    """Single spaces, one separator where an empty part left several, none at the ends, 'a'/'an'."""
    return fix_articles(_SEPARATORS.sub(r"\1 ", " ".join(text.split())).strip(" ,;:"))


