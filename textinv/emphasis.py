"""A1111's prompt emphasis: `(words)`, `[words]`, `(words:1.3)`, so prompts written for the web UI draw alike here.

The syntax (as AUTOMATIC1111's web UI reads it): `(x)` multiplies the attention to x by 1.1, `((x))` by 1.21, `[x]`
divides it by 1.1, `(x:1.3)` multiplies it by 1.3; brackets nest and multiply; `\\(` `\\)` `\\[` `\\]` are the literal
characters; a bracket left open weighs everything after it. `parse` turns a prompt into (text, weight) pieces;
`encode_weighted` in `generate` scales each token's hidden state by its weight and then restores the mean of the
hidden states, as the web UI does, so a weight changes the balance between the words, not the conditioning's scale.
"""

from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1

_PIECE = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")


def parse(prompt: str) -> list[tuple[str, float]]:
    """`prompt` as (text, weight) pieces in order; neighbours of one weight are joined.

    >>> parse("a (red:1.5) car, ((shiny)) [dull]")
    [('a ', 1.0), ('red', 1.5), (' car, ', 1.0), ('shiny', 1.21), (' ', 1.0), ('dull', 0.90909)]
    >>> parse(r"a \\(literal\\) bracket")
    [('a (literal) bracket', 1.0)]
    """
    pieces: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []

    def weigh(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _PIECE.finditer(prompt):
        text, number = match.group(0), match.group(1)
        if text.startswith("\\") and len(text) == 2:
            pieces.append([text[1], 1.0])
        elif text == "(":
            round_open.append(len(pieces))
        elif text == "[":
            square_open.append(len(pieces))
        elif number is not None and round_open:
            weigh(round_open.pop(), float(number))
        elif text == ")" and round_open:
            weigh(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            weigh(square_open.pop(), SQUARE)
        else:  # words, or a bracket or colon that closes nothing: kept as text
            pieces.append([text, 1.0])
    for start in round_open:  # left open: they weigh the rest of the prompt
        weigh(start, ROUND)
    for start in square_open:
        weigh(start, SQUARE)
    joined: list[tuple[str, float]] = []
    for text, weight in pieces:
        weight = round(weight, 5)
        if joined and joined[-1][1] == weight:
            joined[-1] = (joined[-1][0] + text, weight)
        elif text:
            joined.append((text, weight))
    return joined or [("", 1.0)]


def is_plain(pieces: list[tuple[str, float]]) -> bool:
    """Whether every piece weighs 1 (the prompt needs no weighting)."""
    return all(weight == 1.0 for _, weight in pieces)


def plain_text(prompt: str) -> str:
    """The prompt's words without emphasis: brackets and weights removed, escapes resolved.

    >>> plain_text("a (red:1.5) car, [dull]")
    'a red car, dull'
    """
    return "".join(text for text, _ in parse(prompt))
