"""A1111's prompt syntax, so prompts written for the web UI draw alike here: emphasis (`(words)`, `[words]`,
`(words:1.3)`), `BREAK`, prompts longer than the 75 words one pass of CLIP reads, and prompt editing and
alternation (`[cat:dog:0.5]`, `[cat|dog]`: `prompt_schedule` gives each stretch of sampling steps its text), and
composable diffusion (`a castle AND a dragon:0.8`: `composable_parts`).

The syntax (as AUTOMATIC1111's web UI reads it): `(x)` multiplies the attention to x by 1.1, `((x))` by 1.21, `[x]`
divides it by 1.1, `(x:1.3)` multiplies it by 1.3; brackets nest and multiply; `\\(` `\\)` `\\[` `\\]` are the literal
characters (a backslash before any other character is dropped); a bracket left open weighs everything after it.
`parse` turns a prompt into (text, weight) pieces.

Long prompts: the web UI splits the tokens into chunks of 75 (breaking after the last comma when there is one among
the chunk's last 20 tokens, and never through a learned token's vectors), `BREAK` starts a new chunk, and each chunk
is encoded on its own between start and end tokens; the hidden states are laid end to end. `token_chunks` makes the
chunks; `conditioning.encode_prompts` encodes them, scales each token's hidden state by its weight and restores each
chunk's mean, as the web UI does, so a weight changes the balance between the words, not the conditioning's scale
(the mean over all of a prompt's `prompt_schedule` texts at once, as the web UI encodes them: `generate`).

ComfyUI's CLIPTextEncode (`generate --emphasis comfy`) reads a prompt otherwise: `comfy_syntax` writes its weights in
the web UI's syntax, `comfy_token_chunks` cuts it as it does, and `comfy_embeddings` reads its `embedding:NAME`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError

MODES = ("original", "no-norm", "ignore", "comfy")
"""The web UI's Emphasis setting: the weights, each chunk then scaled back to its unweighted mean (Original, its
default); the weights alone (No norm); the weights' syntax read and the weights left out (Ignore). Its None (the
brackets read as words) textinv does not have. "comfy" is ComfyUI's CLIPTextEncode instead: its syntax
(`comfy_syntax`) and its weighting, each weighted token's hidden state moved from the empty prompt's by its weight
(`generate`)."""

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
        if text.startswith("\\"):  # an escape: its character; a backslash that escapes nothing is dropped, as there
            pieces.append([text[1:], 1.0])
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


def words_drawn(prompt: str, steps: int = 100, old_editing: bool = False) -> str:
    """The words a prompt's picture ends up showing (for its file's name, and for CLIP to read): the text of the last
    of `steps` sampling steps (prompt editing done, an alternation's option there; `old_editing`: on the web UI's old
    timelines), without LoRA tags, emphasis or BREAK (the web UI's chunk break, not a word), or the weights of its
    `AND` sub-prompts.

    >>> words_drawn("a [cat:dog:0.5] BREAK on (grass:1.2) <lora:film:0.8>")
    'a dog   on grass '
    >>> words_drawn("a castle AND a dragon:0.8")
    'a castle AND  a dragon'
    """
    if has_and(prompt):
        return " AND ".join(words_drawn(part, steps, old_editing) for part, _ in composable_parts(prompt))
    text = prompt_schedule(prompt, steps, old=old_editing)[-1][1]
    text = _EXTRA_NETWORK.sub(lambda m: "" if m.group(1).lower() in LORA_KINDS else m.group(0), text)
    return re.sub(r"\bBREAK\b", " ", plain_text(text))


_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # the web UI's extra-network tag: <kind:params>
LORA_KINDS = ("lora", "lyco")  # (the web UI reads the LyCORIS extension's old tag as a LoRA too)


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:...>` tag: the file's name and the multipliers of its text-encoder and UNet parts."""

    name: str
    te: float = 1.0
    unet: float = 1.0


def lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its LoRA tags, and the tags, read as the web UI reads them: `<lora:name>` applies both
    parts at 1, `<lora:name:0.8>` both at 0.8, `<lora:name:0.8:0.5>` the text encoder at 0.8 and the UNet at 0.5,
    and `te=`/`unet=` name them (a further number, the dynamic rank, is ignored). A tag applies to the whole picture
    wherever it stands, as there (also inside prompt editing). A malformed multiplier raises ConfigError.

    >>> lora_tags("a photo of <my-dog>, <lora:ghibli:0.8> <lora:film:1:unet=0.5>")
    ('a photo of <my-dog>,  ', [LoraTag(name='ghibli', te=0.8, unet=0.8), LoraTag(name='film', te=1.0, unet=0.5)])
    """
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        if match.group(1).lower() not in LORA_KINDS:
            return match.group(0)  # a learned token such as <my-dog>, or another kind of tag: left in the text
        items = match.group(2).split(":")
        positional = [x for x in items if "=" not in x]
        named = dict(x.split("=", 1) for x in items if "=" in x)
        try:
            te = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
            unet = float(named.get("unet", positional[2] if len(positional) > 2 else te))
        except ValueError:
            raise ConfigError(f"{match.group(0)}: a LoRA tag's multipliers are numbers, as in <lora:name:0.8> or "
                              f"<lora:name:0.8:0.5> (text encoder, UNet)") from None
        if not positional or not positional[0].strip():
            raise ConfigError(f"{match.group(0)} names no LoRA file: write <lora:name:0.8>")
        tags.append(LoraTag(positional[0].strip(), te, unet))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


# ComfyUI's way of naming an embedding in a prompt: `embedding:NAME` as a word (its file in models/embeddings, the
# suffix optional, a subfolder allowed); a comma after it is text again, as is a weight's colon in `(embedding:x:1.2)`.
# Also after a colon: prompt editing's `[embedding:a:embedding:b:0.5]` names one on each side
_COMFY_EMBEDDING = re.compile(r"(?<!\w)embedding:([^\s,()\[\]|:]+)")
_EMBEDDING_SUFFIX = re.compile(r"\.(?:safetensors|pt|bin)$", re.I)


def comfy_embeddings(prompt: str, written=lambda name: name, whole: bool = False) -> tuple[str, list[str]]:
    """The prompt with each ComfyUI `embedding:NAME` written as `written(NAME)` (by default the name alone, which
    the web UI reads as an embedding's file name), and the names: the caller writes each as its embedding's token,
    and checks each is given (ComfyUI drops a name it cannot find with a warning, which would draw the prompt
    without the concept). A name is without its folder and suffix (`comfy_name`), or as written where `whole`.

    >>> comfy_embeddings("embedding:EasyNegative, (embedding:style/charturner.pt:1.2) a dog")
    ('EasyNegative, (charturner:1.2) a dog', ['EasyNegative', 'charturner'])
    >>> comfy_embeddings("[embedding:a:embedding:b.pt:0.5]", whole=True)
    ('[a:b.pt:0.5]', ['a', 'b.pt'])
    """
    names: list[str] = []

    def name(match: re.Match) -> str:
        names.append(match.group(1) if whole else comfy_name(match.group(1)))
        return written(names[-1])

    return _COMFY_EMBEDDING.sub(name, prompt), names


def comfy_name(written: str) -> str:
    """The NAME of a ComfyUI `embedding:NAME` without its folder and suffix, as the web UI calls the file.

    >>> comfy_name("style/charturner.pt")
    'charturner'
    """
    return _EMBEDDING_SUFFIX.sub("", re.split(r"[\\/]", written)[-1])


# a character of the dynamic prompts syntax escaped (`dynamic.literal`, a prompt's own `\#`): the character, drawn
_DYNAMIC_ESCAPE = re.compile(r"\\([{}#_/])")


def comfy_syntax(prompt: str) -> str:
    """A prompt written for ComfyUI's CLIPTextEncode written in the web UI's syntax with the same words and weights
    (comfy/sd1_clip.py, token_weights): there only round brackets weigh, `(x)` by 1.1 and `(x:1.3)` at 1.3 whatever
    brackets hold it (`((x:1.3))` is 1.3, where the web UI multiplies them: 1.43); square brackets, a backslash but
    before a round bracket, and `BREAK` are words. Kept as textinv reads them: LoRA tags, `AND` (composable
    diffusion) and `embedding:NAME` (`comfy_embeddings`), and the escapes of the dynamic prompts syntax (`\\#`,
    `\\{`: `_DYNAMIC_ESCAPE`), the character itself, as `parse` reads them.

    >>> comfy_syntax("a ((red:1.3)) car, [dull] (sky) BREAK")
    'a (red:1.3) car, \\\\[dull\\\\] (sky:1.1) break'
    """
    pieces, last = [], None
    prompt = _DYNAMIC_ESCAPE.sub(r"\1", prompt)
    for text, weight in _comfy_weights(prompt.replace("\\(", "\0\2").replace("\\)", "\0\1"), 1.0):
        text = re.sub(r"([\\()\[\]])", r"\\\1", text.replace("\0\2", "(").replace("\0\1", ")"))
        text = _BREAK_WORD.sub("break", text)
        if weight != 1.0 and not math.isfinite(weight):
            raise ConfigError(f"{prompt[:60]!r} weighs {text!r} at {weight}, which ComfyUI reads from its (words:N): "
                              f"write N as a number")
        if round(weight, 5) == last and pieces and not (pieces[-1][-1:].isspace() or text[:1].isspace()):
            # ComfyUI tokenizes each bracket's text apart; the web UI's syntax would join the two into one word
            pieces.append(" ")
        # (in digits: the web UI's syntax reads no exponent, 1e-3)
        pieces.append(text if weight == 1.0 else f"({text}:{f'{weight:.6f}'.rstrip('0').rstrip('.')})")
        last = round(weight, 5)  # (as `parse` reads it)
    return "".join(pieces)


_BREAK_WORD = re.compile(r"\bBREAK\b")


def _comfy_weights(text: str, weight: float) -> list[tuple[str, float]]:
    """`text` as (text, weight) pieces, as ComfyUI's token_weights reads it: split at its outermost round brackets;
    a bracket's text weighs 1.1 times the text around it, or the number after its last colon where that is one."""
    pieces: list[tuple[str, float]] = []
    for part in _comfy_brackets(text):
        if len(part) < 2 or part[0] != "(" or part[-1] != ")":
            pieces.append((part, weight))
            continue
        inner, inner_weight = part[1:-1], weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner, inner_weight = inner[:colon], float(inner[colon + 1:])
            except ValueError:
                pass
        pieces += _comfy_weights(inner, inner_weight)
    return pieces


def _comfy_brackets(text: str) -> list[str]:
    """`text` cut before each outermost `(` and after its `)`, as ComfyUI's parse_parentheses cuts it (a `)` that
    closes nothing leaves the depth below 0, so the brackets after it are no outermost ones)."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                parts.append(current)
            current = ""
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                parts.append(current + char)
                current = ""
                continue
        current += char
    return parts + [current] if current else parts


_UNSUPPORTED = (("extra-network tags", re.compile(r"<(?:hypernet):[^<>]*>", re.I)),)


def unsupported(prompt: str) -> list[str]:
    """The web UI's prompt features in `prompt` that textinv does not apply (they are read as words): hypernetwork
    tags (`<hypernet:name:0.8>`).

    >>> unsupported("a [cat:dog:0.5] <hypernet:x:0.8>, (red:1.2) <lora:y> AND a dog, black and white")
    ['extra-network tags <hypernet:x:0.8>']
    """
    found = [f"{what} {m.group(0)}" for what, pattern in _UNSUPPORTED for m in pattern.finditer(prompt)]
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------------------------
# Composable diffusion (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models"), as the
# web UI writes it: "a castle AND a dragon:0.8" is two prompts, each guiding the picture with its own weight

_AND = re.compile(r"\bAND\b")  # the word AND, in capitals ("and", "ANDROID" are words)
# a sub-prompt's trailing weight: a colon and a signed number at its very end, spaces allowed around them
_AND_WEIGHT = re.compile(r"(.*?)(?:\s*:\s*([+-]?(?:\d+\.?\d*|\.\d+)))?\s*", re.S)


def has_and(prompt: str) -> bool:
    """Whether `prompt` is composed of sub-prompts joined by `AND` (see `composable_parts`)."""
    return _AND.search(prompt) is not None


def as_words(prompt: str) -> str:
    """`prompt` with its word `AND` written `and`: the same tokens to CLIP, whose tokenizer lowercases, but no
    composable diffusion (for a prompt from a tool that reads AND as a word, as ComfyUI does).

    >>> as_words("salt AND pepper, ANDROID")
    'salt and pepper, ANDROID'
    """
    return _AND.sub("and", prompt)


def composable_parts(prompt: str) -> list[tuple[str, float]]:
    """`prompt` split at the word `AND` (capitals, a whole word) into (sub-prompt, weight) pairs, as the web UI reads
    them: a sub-prompt's weight is a number after a colon at its end (`:0.8`, ` : -1`, `:2.`), 1 without one; a colon
    elsewhere (`16:9 ratio`, `(red:1.2)`) is text. Each sub-prompt keeps the rest of the syntax (emphasis, BREAK,
    prompt editing) for `prompt_schedule` and `token_chunks`. Sampling then guides with every sub-prompt:
    uncond + sum_i w_i * guidance * (cond_i - uncond) (`generate.render`).

    >>> composable_parts("a castle:1.5 AND a dragon : 0.8 AND 16:9, (fog:1.2)")
    [('a castle', 1.5), (' a dragon', 0.8), (' 16:9, (fog:1.2)', 1.0)]
    >>> composable_parts("black and white")
    [('black and white', 1.0)]
    """
    parts = []
    for sub in _AND.split(prompt):
        match = _AND_WEIGHT.fullmatch(sub)
        parts.append((match.group(1), float(match.group(2)) if match.group(2) is not None else 1.0))
    return parts


# ---------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: which text conditions which sampling step

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")  # the web UI's grammar: a signed number


def prompt_schedule(prompt: str, steps: int, first: int | None = None, old: bool = False) -> list[tuple[int, str]]:
    """The web UI's prompt editing and alternation as (last step, text) pairs, last steps in 1..`steps`, as its
    parser gives them. The web UI counts the sampling steps from 0 and gives step s the text of the first pair
    whose last step is at least s (`generate` does the same), so `[cat:dog:5]` draws "cat" for 6 steps. The texts
    keep their emphasis, `BREAK` and escapes for `token_chunks`. A prompt nested too deep to read is one text.

    `[from:to:when]` reads `from` up to step `when` and `to` after it; `[to:when]` adds `to` after `when`, and
    `[from::when]` removes `from` after it. A `when` with a decimal point is a fraction of the steps (`0.25` of 20
    steps: step 5), a whole number is a step; either is cut to `steps`. `[a|b|c]` takes a, b, c, a... in turn, one
    a step. They nest, and may sit inside emphasis (`([cat:dog:0.5]:1.2)`) or hold it. Other brackets are emphasis,
    left for `parse`; a bracket that is never closed is text, as are escaped `\\[` and `\\]`. A `|` that separates
    no alternation's options (`a | b`, `[x|y` never closed) fails the web UI's grammar, and its prompt is then one
    text for every step (its editing undone): so here too.

    `first`: the steps of the first pass when this is the hires fix's pass, which the web UI (1.6 on) schedules on
    from it: a fraction below 1 is of the first pass, done by then (`[cat:dog:0.5]` is "dog" throughout), one above
    1 of this pass (`1.5`: half of it), and a step counts on from the first pass's (`first` + 5: its step 5).

    `old`: the web UI's "Old prompt editing timelines" (its use_old_scheduling, before 1.6): a `when` below 1 is a
    fraction of the steps and any other a step (`1.5`: step 1), and the hires fix's pass takes the first pass's
    schedule over its `first` steps, its own steps counted from 0.

    >>> prompt_schedule("a [cat:dog:0.5] on [grass::3]", 10)
    [(3, 'a cat on grass'), (5, 'a cat on '), (10, 'a dog on ')]
    >>> prompt_schedule("[red|blue] car", 3)
    [(1, 'red car'), (2, 'blue car'), (3, 'red car')]
    >>> prompt_schedule("[cat:dog:1.5]", 10, old=True)
    [(1, 'cat'), (10, 'dog')]
    """
    if old and first is not None:
        steps, first = first, None
    rule = (steps, first, old)
    try:
        tree = _parse_schedule(prompt)
        if _stray_bar(tree):  # the web UI's grammar fails on it, and its prompt is then one text for every step
            return [(steps, prompt)]
        ends = {steps}
        _collect_steps(tree, rule, ends)
        texts = [(end, _text_at(tree, end, rule)) for end in sorted(e for e in ends if 1 <= e <= steps)]
    except RecursionError:  # (thousands of nested brackets; the web UI's parser gives up on such a prompt too)
        return [(steps, prompt)]
    schedule: list[tuple[int, str]] = []
    for end, text in texts:
        if schedule and schedule[-1][1] == text:  # nothing changed at the previous boundary: one longer stretch
            schedule[-1] = (end, text)
        else:
            schedule.append((end, text))
    return schedule


_BAR = re.compile(r"\\.|\|", re.S)


def _stray_bar(nodes: list) -> bool:
    """Whether a `|` that separates no alternation's options is left as text (an escaped `\\|` is fine): the web
    UI's schedule grammar has `|` nowhere else, so it cannot read such a prompt."""
    for node in nodes:
        if isinstance(node, str):
            if any(m.group(0) == "|" for m in _BAR.finditer(node)):
                return True
        elif node[0] == "edit":
            if _stray_bar(node[1]) or _stray_bar(node[2]):
                return True
        elif any(_stray_bar(option) for option in node[1]):
            return True
    return False


def _parse_schedule(prompt: str) -> list:
    """`prompt` as nodes: text (str, emphasis brackets included), ("edit", before, after, when) and
    ("alternate", options), where before, after and each option are node lists themselves."""
    return _parse_until(prompt, 0, "", {})[0]


def _parse_until(prompt: str, i: int, closers: str, seen: dict) -> tuple[list, int]:
    """Nodes from `prompt[i:]` up to the first of `closers` at this level (not consumed) or the end. `seen` keeps
    every result by (i, closers): a bracket never closed is read as text and what follows it read again, which
    without it would take twice as long for each such bracket."""
    if (i, closers) in seen:
        return seen[i, closers]
    start = i
    nodes: list = []
    text: list[str] = []

    def add(*more) -> None:
        if text:
            nodes.append("".join(text))
            text.clear()
        nodes.extend(more)

    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\" and i + 1 < len(prompt):  # an escape stays as written, for `parse`
            text.append(prompt[i:i + 2])
            i += 2
        elif ch in closers:
            break
        elif ch == "[":
            parts, seps, end = _bracket(prompt, i, seen)
            if end is None:  # never closed: the bracket is text
                text.append(ch)
                i += 1
                continue
            add(*_square(parts, seps))
            i = end
        elif ch == "(":
            inner, end = _parse_until(prompt, i + 1, ")", seen)
            if end >= len(prompt):  # never closed: text here (`parse` weighs the rest of the prompt by it)
                text.append(ch)
                i += 1
                continue
            add("(", *inner, ")")
            i = end + 1
        else:
            text.append(ch)
            i += 1
    add()
    seen[start, closers] = nodes, i
    return nodes, i


def _bracket(prompt: str, i: int, seen: dict) -> tuple[list[list], list[str], int | None]:
    """The parts of the square bracket opening at `i`, split at its own `:` and `|`, those separators, and the index
    after its `]` (None if it is never closed)."""
    parts, seps = [], []
    j = i + 1
    while True:
        part, j = _parse_until(prompt, j, "]:|", seen)
        parts.append(part)
        if j >= len(prompt):
            return parts, seps, None
        if prompt[j] == "]":
            return parts, seps, j + 1
        seps.append(prompt[j])
        j += 1


def _square(parts: list[list], seps: list[str]) -> list:
    """The nodes a closed square bracket stands for: an alternation, an edit, or else emphasis (kept as text)."""
    if seps and set(seps) == {"|"}:
        return [("alternate", parts)]
    when = parts[-1]
    if seps and set(seps) == {":"} and len(parts) in (2, 3) and len(when) == 1 and isinstance(when[0], str) \
            and _NUMBER.fullmatch(when[0]):
        before, after = (parts[0], parts[1]) if len(parts) == 3 else ([], parts[0])
        return [("edit", before, after, when[0].strip())]
    nodes: list = ["["]
    for k, part in enumerate(parts):
        nodes.extend(part)
        if k < len(seps):
            nodes.append(seps[k])
    return nodes + ["]"]


def _edit_step(when: str, rule: tuple[int, int | None, bool]) -> int:
    """The last step before `when` takes effect under `rule` (steps, first, old: `prompt_schedule`'s)."""
    steps, first, old = rule
    if old:  # (the web UI's use_old_scheduling: below 1 a fraction, else a step)
        value = float(when) * steps if float(when) < 1 else float(when)
    elif first is None:
        value = float(when) * steps if "." in when else float(when)
    else:  # (the hires fix's pass, scheduled on from the first pass's `first` steps: `prompt_schedule`)
        value = (float(when) - 1) * steps if "." in when else float(when) - first
    return int(max(-1.0, min(float(steps), value)))  # (a value past a float's range is infinite: cut, not int()ed)


def _collect_steps(nodes: list, rule: tuple, ends: set[int]) -> None:
    """Add to `ends` every step after which some edit or alternation changes the text."""
    for node in nodes:
        if isinstance(node, str):
            continue
        if node[0] == "edit":
            ends.add(_edit_step(node[3], rule))
            _collect_steps(node[1], rule, ends)
            _collect_steps(node[2], rule, ends)
        else:
            ends.update(range(1, rule[0] + 1))
            for option in node[1]:
                _collect_steps(option, rule, ends)


def _text_at(nodes: list, step: int, rule: tuple) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "edit":
            out.append(_text_at(node[1] if step <= _edit_step(node[3], rule) else node[2], step, rule))
        else:
            out.append(_text_at(node[1][(step - 1) % len(node[1])], step, rule))
    return "".join(out)


CHUNK = 75  # tokens per chunk, between its start and end tokens: CLIP reads 77
COMMA_BACKTRACK = 20  # a full chunk breaks after a comma this many tokens back at most (the web UI's default)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def token_chunks(tokenizer, prompt: str) -> list[tuple[list[int], list[float]]]:
    """`prompt` as the web UI feeds it to CLIP: chunks of 77 ids (start, up to 75 tokens, end, padding) with one
    weight per id. A prompt of up to 75 tokens is one chunk, with the ids the tokenizer gives it in one call.

    A full chunk whose last comma has at most `COMMA_BACKTRACK` tokens after it (counting the comma) ends after the
    comma, its tail beginning the next chunk. A learned token's vectors (`<t> <t>_1 ...`, as `expand_prompt` writes
    them) go whole into the next chunk when they do not fit in this one (split only when they are more than 75)."""
    comma = tokenizer(",", add_special_tokens=False, verbose=False).input_ids
    comma = comma[0] if len(comma) == 1 else None
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # the index in `ids` of the current chunk's last comma

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append(_chunk(tokenizer, ids, weights))
        ids, weights, last_comma = [], [], -1

    for text, weight in parse(prompt):
        for n, part in enumerate(_BREAK.split(text)):
            if n:  # a BREAK: the next words begin a chunk
                close()
            tokens = tokenizer(part, add_special_tokens=False, verbose=False).input_ids
            i = 0
            while i < len(tokens):
                if tokens[i] == comma:
                    last_comma = len(ids)
                elif len(ids) == CHUNK and last_comma >= 0 and len(ids) - last_comma <= COMMA_BACKTRACK:
                    tail, tail_weights = ids[last_comma + 1:], weights[last_comma + 1:]
                    ids, weights = ids[:last_comma + 1], weights[:last_comma + 1]
                    close()
                    ids, weights = tail, tail_weights
                if len(ids) == CHUNK:
                    close()
                unit = _learned_token_length(tokenizer, tokens, i)
                if len(ids) + unit > CHUNK and ids:
                    close()
                for token in tokens[i:i + unit]:  # (a unit longer than a chunk is split)
                    if len(ids) == CHUNK:
                        close()
                    ids.append(token)
                    weights.append(weight)
                i += unit
    if ids or not chunks:
        close()
    return chunks


def _chunk(tokenizer, ids: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
    """A chunk of 77 ids: start, `ids` (at most `CHUNK`), end, padding; and its weights (1 but for `ids`)."""
    pad = CHUNK - len(ids)
    return ([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad,
            [1.0] + weights + [1.0] * (pad + 1))


def comfy_token_chunks(tokenizer, prompt: str) -> list[tuple[list[int], list[float]]]:
    """`prompt` (in the web UI's syntax, as `comfy_syntax` writes it) cut into chunks of 77 ids as ComfyUI's
    CLIPTextEncode cuts it (comfy/sd1_clip.py, tokenize_with_weights): piece by piece (`_comfy_pieces`), each into
    the chunk if it has room, else whole into the next one, this one padded; a piece of 8 tokens or more fills the
    chunk and goes on in the next. No comma is looked back for, as `token_chunks` does."""
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in _comfy_pieces(tokenizer, prompt):
        large = len(piece) >= 8
        while piece:
            if len(ids) + len(piece) <= CHUNK:
                ids, weights, piece = ids + piece, weights + [weight] * len(piece), []
                continue
            if large:  # (its first tokens fill the chunk)
                room = CHUNK - len(ids)
                ids, weights, piece = ids + piece[:room], weights + [weight] * room, piece[room:]
            chunks.append(_chunk(tokenizer, ids, weights))
            ids, weights = [], []
    return chunks + [_chunk(tokenizer, ids, weights)] if ids or not chunks else chunks


def _comfy_pieces(tokenizer, prompt: str) -> list[tuple[list[int], float]]:
    """The ids ComfyUI keeps together when it cuts `prompt` into chunks, and their weight: each weighted text's, cut
    before and after each learned token (`<t> <t>_1 ...`, as ComfyUI's embedding:NAME is a piece of its own). Its
    older versions cut a text into words (split at spaces) and kept each word together instead."""
    pieces = []
    for text, weight in parse(prompt):
        tokens = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        i = 0
        while i < len(tokens):
            n = _learned_token_length(tokenizer, tokens, i)
            if n == 1 and tokens[i] < tokenizer.vocab_size:  # (words up to the next learned token)
                while i + n < len(tokens) and tokens[i + n] < tokenizer.vocab_size:
                    n += 1
            pieces.append((tokens[i:i + n], weight))
            i += n
    return pieces


def _learned_token_length(tokenizer, tokens: list[int], i: int) -> int:
    """How many ids from `tokens[i]` make one learned token (`<t>` then `<t>_1`, `<t>_2`, ...); 1 for any other."""
    if tokens[i] < tokenizer.vocab_size:
        return 1
    name = tokenizer.convert_ids_to_tokens(tokens[i])
    length = 1
    while i + length < len(tokens) and tokenizer.convert_ids_to_tokens(tokens[i + length]) == f"{name}_{length}":
        length += 1
    return length
