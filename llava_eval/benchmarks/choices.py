"""Multiple-choice questions (MMVP, BLINK): lettered options in the prompt and the letter in a free answer.

The model's answer is free text; `extract_choice` finds the option it picked without a judge model. It
accepts, in this order: a bare letter (`B`, `(b)`, `B.`), an explicit statement (`Answer: B`, `the answer
is (B)`, `option B`), exactly one parenthesised option letter anywhere (BLINK's own rule in
`zeyofu/BLINK_Benchmark` eval/test_benchmark.py `analyze_answer`: one `(X)` token in the answer; several
are no answer), a leading `B.` / `B)` / `B:`, and finally the text of exactly one option (`Closed`).
Anything else is no answer (`None`, scored wrong). Letters outside the question's options never count.
"""
from __future__ import annotations

import re
from string import ascii_uppercase
from typing import Sequence

__all__ = ["option_letters", "format_options", "extract_choice"]

_BARE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_STATEMENT = re.compile(r"(?i:\b(?:answer|option|choice)\b)(?:\s+is)?\s*[:：]?\s*\(?([A-Z])\b")
_PARENTHESISED = re.compile(r"\(([A-Za-z])\)")
_LEADING = re.compile(r"\(?([A-Z])(?:[.:)]|\n)")


def option_letters(n_options: int) -> str:
    """`"AB"` for two options, `"ABCD"` for four."""
    if not 1 <= n_options <= len(ascii_uppercase):
        raise ValueError(f"a multiple-choice question needs 1 to 26 options, got {n_options}")
    return ascii_uppercase[:n_options]


def format_options(options: Sequence[str]) -> str:
    """`A. first\\nB. second`: the option block of LLaVA's multiple-choice prompts."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(options)), options))


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def _by_option_text(answer: str, options: Sequence[str]) -> str | None:
    """The letter of the one option whose text the answer contains (a phrase inside another mentioned
    option, as `red` in `dark red`, does not count on its own)."""
    lowered = answer.lower()
    mentioned = [i for i, text in enumerate(options) if text.strip() and _mentions(lowered, text.strip().lower())]
    outermost = [i for i in mentioned
                 if not any(j != i and _mentions(options[j].strip().lower(), options[i].strip().lower())
                            for j in mentioned)]
    return option_letters(len(options))[outermost[0]] if len(outermost) == 1 else None


def extract_choice(answer: str, options: Sequence[str]) -> str | None:
    """The option letter (`"A"`, `"B"`, ...) a free-text answer picks, or None if it picks none clearly."""
    valid = option_letters(len(options))
    text = answer.strip()
    bare = _BARE.fullmatch(text)
    if bare and bare.group(1).upper() in valid:
        return bare.group(1).upper()
    statement = _STATEMENT.search(text)
    if statement and statement.group(1) in valid:
        return statement.group(1)
    parenthesised = {m.upper() for m in _PARENTHESISED.findall(text)} & set(valid)
    if len(parenthesised) > 1:
        return None  # names several options and states none
    if parenthesised:
        return parenthesised.pop()
    leading = _LEADING.match(text)
    if leading and leading.group(1) in valid:
        return leading.group(1)
    return _by_option_text(text, options)
