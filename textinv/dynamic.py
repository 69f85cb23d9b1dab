"""Dynamic prompts: the template language of the web UI's sd-dynamic-prompts extension (adieyal's dynamicprompts), so
one `--prompt` draws a learned word in many settings.

    {on the beach|in the snow|on the moon}   one option, drawn at random
    {0.5::a|2::b}                            weighted options (a weight left out is 1)
    {2$$a|b|c}  {1-3$$a|b|c}  {2$$ and $$a|b|c}   two options, one to three, joined by " and " (default ",")
    __styles__  __colors/warm__  __colors/*__     a line of styles.txt (colors/warm.txt, any file in colors/) in the
                                                  --wildcards-dir folder
    ${season=summer}  ${season=!{summer|winter}}  set a variable: its template, drawn at each use; `!`: drawn once
    ${season}  ${season:summer}  __outfit(season=winter)__   use it (with a default); a wildcard's own variables
    {@a|b}  __@colors__  {~a|b}  {!a|b}           a part's own sampler: cyclical, random, combinatorial
    %{(...:1.2)$$a {cat|dog}}                     wrap: the inner text drawn where the wrapper's `...` stands
    # to the line's end; // to the line's end and /* */ where a part starts    comments, left out

Variants nest, and a wildcard file's lines may hold variants and wildcards themselves. As in dynamicprompts, a
variable is set outside variants, for the whole text it stands in (a prompt, a wildcard file's line) and what that
draws (a wildcard's lines use its variables); `${name?=value}` keeps a value set around it. A `\\` before a character
keeps it as written (`\\{`, `\\|`, `\\_`), for `emphasis.parse` to read as that character, so a drawn prompt drawn
again is the same prompt. The web UI's own syntax passes through: `(word:1.2)`, `[from:to:0.5]`, `AND`, `BREAK`,
`<lora:name:0.8>`; a `|` inside square brackets is an alternation's (`{[cat|dog]|bird}` has two options).

`jobs` turns the prompts and the negative prompt into what `generate` draws: random mode gives picture i the prompt a
generator seeded with its own seed draws, a cyclical part's i-th text in it (the same picture's prompt whatever -n and
--batch-size), combinatorial mode every combination in order, each with every seed.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError, given, setting, warn

SEPARATOR = ","  # between the options a `{2$$...}` variant draws (dynamicprompts' default: "A red,pink rose")
MAX_PROMPTS = 100  # combinatorial mode's default cap on each --prompt's combinations
MAX_DEPTH = 100  # the most wildcards and variables drawn one inside another (and keys of a YAML file)
MAX_STRUCTURED = 1_000_000  # the most keys and options a YAML or JSON wildcard file holds, its aliases expanded

_PATH = r"[\w\-./*](?:[\w\-./* ]*?[\w\-./*])??"  # a wildcard's name: spaces inside it, as dynamicprompts reads it
_WILDCARD = re.compile(rf"__([~!@]?)({_PATH})(?:\(([^()]*)\))?__")  # `__name__`, `__@name(var=value, ...)__`
_VARIABLE_IN_NAME = r"\$\{(?:[^{}]|\{[^{}]*\})*\}"  # `${season}`, `${season:{a|b}}`
_NAMED_BY_VARIABLE = re.compile(  # `__colors/${season}__`: a name not starting with a space, then a closing `__`
    rf"__[~!@]?(?:[\w\-./*][\w\-./* ]*)?{_VARIABLE_IN_NAME}(?:[\w\-./* ]|{_VARIABLE_IN_NAME})*__")
_PARENTHESES_IN_VARIABLES = re.compile(rf"__[~!@]?({_PATH})\((?:[^()]*,)?\s*([\w-]+)\s*=\s*(\(.*?\))\)__")
_SAMPLER = re.compile(r"\s*([~!@])")  # `{~a|b}`: a variant's (or a wildcard's) own sampler
_NAME = r"[A-Za-z_-][A-Za-z0-9_-]*"  # a variable's name: letters, digits, _ and -, not a digit first
_VARIABLE = re.compile(rf"\$\{{\s*({_NAME})\s*(\}}|:|=|\?=)")  # `${name}`, `${name:`, `${name=`
_HEADER = re.compile(r"\s*(\d*)\s*(?:(-)\s*(\d*))?\s*\$\$")  # `2$$`, `1-3$$`, `-2$$`, `2-$$`
_SEPARATOR = re.compile(r"([^${}]*?)\$\$")  # `{2$$ and $$...}`, `{2$$ | $$...}`: any text but `$`, `{`, `}`
_WEIGHT = re.compile(r"\s*(\d+\.?\d*|\.\d+)::")  # (`{2 :: a}` is text, "2 :: a", as dynamicprompts reads it)
_COMMENT = re.compile(r"^((?:\\.|[^\\#\n])*?)\s*#.*$", re.M)  # `text # comment`, escapes passed over
_COMMENTS = re.compile(r"(?:[ \t\r\n]*(?:#[^\n]*|//[^\n]*|/\*.*?\*/))+", re.S)  # `# x`, `// x`, `/* x */`
_WRAP_MARKER = re.compile(r"[\u1801\u2026\u22ee-\u22f1\ufe19]+|\.{3,}")  # where `%{wrapper$$inner}` puts inner
_LEAD = re.compile(r"(?:[ \t\r\n]*(?:#[^\n]*|//[^\n]*|/\*.*?\*/))*[ \t\r\n]*", re.S)  # an option's start: left out


@dataclass(frozen=True)
class Wildcard:
    name: str
    variables: tuple = ()  # `__name(var=value)__`: ((var, nodes), ...), set for its line
    sampler: str = ""  # `__~name__` random, `__!name__` combinatorial, `__@name__` cyclical ("": the mode's)


@dataclass(frozen=True)
class Variable:
    """`${name}`, or `${name:default}` (`default`: the nodes drawn when `name` is not set)."""

    name: str
    default: list | None = None


@dataclass(frozen=True)
class Assign:
    """`${name=value}` (`immediate`: `${name=!value}`, drawn once; `keep`: `${name?=value}`, a value set stays)."""

    name: str
    value: list
    immediate: bool = False
    keep: bool = False


@dataclass(frozen=True)
class Wrap:
    """`%{wrapper$$inner}`: the inner text drawn into the wrapper's where its `...` (or `…`) stands."""

    wrapper: list
    inner: list


@dataclass(frozen=True)
class Variant:
    options: tuple  # ((weight, nodes), ...)
    low: int = 1
    high: int = 1
    separator: str = SEPARATOR
    sampler: str = ""  # as a Wildcard's: `{~a|b}`, `{!a|b}`, `{@a|b}`


def parse(text: str, where: str = "--prompt") -> list:
    """`text` as nodes: text (str), `Variant`, `Wildcard`, `Variable` and `Assign`; `where` names it in an error (an
    unbalanced brace).

    >>> parse("a {red|2::blue} __hat__")
    ['a ', Variant(options=((1.0, ['red']), (2.0, ['blue'])), low=1, high=1, separator=',', sampler=''), ' ', \
Wildcard(name='hat', variables=(), sampler='')]
    """
    try:
        nodes, i = _sequence(text, 0, False, where)
    except RecursionError:  # (hundreds of braces one inside another)
        raise ConfigError(f"{where} {text!r}: its variants nest too deeply to read (Python's recursion limit): nest "
                          f"fewer") from None
    return nodes


def literal(text: str) -> str:
    """`text` with what `parse` reads as a variant, a wildcard or a comment escaped (`{`, `}` and `#` as `\\{`, `\\}`
    and `\\#`, a wildcard's first `_` as `\\_`, the `/` of a `//` or `/*` that starts the text as `\\/`; escapes
    already there stay), so it is drawn as written, as `emphasis.parse` reads it the same: a picture's prompt, which
    is what it drew (`again`).

    >>> literal("{{best}} __init__ a\\{b #1")
    '\\\\{\\\\{best\\\\}\\\\} \\\\__init__ a\\\\{b \\\\#1'
    """
    out, i = [], 0
    lead = len(text) - len(text.lstrip(" \t\r\n"))  # (where the text starts, the one place `//` is a comment here)
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i:i + 2])
            i += 2
            continue
        starts = i == lead and text.startswith(("//", "/*"), i)
        if text[i] in "{}#" or starts or _WILDCARD.match(text, i) or _PARENTHESES_IN_VARIABLES.match(text, i):
            out.append("\\")
        out.append(text[i])
        i += 1
    return "".join(out)


def is_dynamic(nodes: list) -> bool:
    """Whether parsed nodes hold a variant, a wildcard or a variable (else the text is drawn as written, less its
    comments: the nodes joined)."""
    return any(not isinstance(node, str) for node in nodes)


def _sequence(text: str, i: int, inside: bool, where: str, wrapper: bool = False) -> tuple[list, int]:
    """Nodes from `text[i:]` up to the end, or (`inside` a variant) up to its next `|` or `}` (or, a `wrapper`, `$$`),
    not consumed. Comments are left out as dynamicprompts' parser leaves them out: a `#` (not `\\#`) to the end of
    its line anywhere, and `//` to the line's end and `/* */` where a part starts (the text's start, after a variant,
    wildcard or variable), with the whitespace before them there; text that a `#` comment cuts is joined by a space,
    as the parser joins it."""
    nodes: list = []
    chars: list[str] = []
    square = 0  # open square brackets: a `|` inside one is an alternation's, not the variant's
    starts, spaced = True, False  # (a part starts here; a comment cut the text)

    def flush() -> None:
        nonlocal starts, spaced
        if chars:
            nodes.append("".join(chars))
            chars.clear()
        starts, spaced = True, False

    def add(piece: str) -> None:
        nonlocal starts, spaced
        chars.append(" " + piece if spaced else piece)
        starts, spaced = False, False

    while i < len(text):
        ch = text[i]
        comments = _COMMENTS.match(text, i) if starts or ch == "#" else None
        wildcard = _WILDCARD.match(text, i)
        if comments:
            spaced, i = not starts, comments.end()
        elif ch == "\\" and i + 1 < len(text):  # kept as written, for emphasis.parse
            add(text[i:i + 2])
            i += 2
        elif ch == "{":
            node, i = _variant(text, i, where)
            flush()
            nodes.append(node)
        elif text.startswith("${", i):
            node, i = _variable(text, i, inside, where)
            flush()
            nodes.append(node)
        elif text.startswith("%{", i) and (wrap := _wrap(text, i, where)):
            flush()
            nodes.append(wrap[0])
            i = wrap[1]
        elif ch == "}" and not inside:
            raise ConfigError(f"{where} {text!r}: a '}}' at character {i + 1} closes no '{{': remove it, or write "
                              f"\\}} for the character")
        elif inside and (ch == "}" or (ch == "|" and not square) or (wrapper and text.startswith("$$", i))):
            break
        elif wildcard:
            sampler, name, spec = wildcard.groups()
            flush()
            nodes.append(Wildcard(name, _wildcard_variables(spec, wildcard.group(0), where), sampler))
            i = wildcard.end()
        else:
            if ch == "_":
                _refuse_unread_wildcard(text, i, where)
            square += (ch == "[") - (ch == "]" and square > 0)
            add(ch)
            i += 1
    if chars:
        nodes.append("".join(chars))
    return nodes, i


def _refuse_unread_wildcard(text: str, i: int, where: str) -> None:
    """Refuse what dynamicprompts reads as a wildcard at `text[i]` and textinv cannot (it is not `_WILDCARD`), rather
    than draw it as text: a wildcard named by a variable, or setting one to a value in parentheses."""
    if _NAMED_BY_VARIABLE.match(text, i):
        raise ConfigError(f"{where} {text!r}: the wildcard at character {i + 1} is named by a variable, which "
                          f"textinv does not read: name the file (a variant of wildcards picks among them: "
                          f"{{__colors/summer__|__colors/winter__}}), or write \\_\\_ for underscores that are text")
    parentheses = _PARENTHESES_IN_VARIABLES.match(text, i)  # `__a(s=(x:1.2))__`
    if parentheses:
        name, variable, value = parentheses.groups()
        raise ConfigError(f"{where} {text!r}: the wildcard at character {i + 1} sets a variable to a value in "
                          f"parentheses, which textinv does not read: set it before "
                          f"(${{{variable}={value}}}__{name}__), or write \\_\\_ for underscores that are text")


def _variant(text: str, start: int, where: str) -> tuple[Variant, int]:
    """The variant whose `{` is at `start`, and the index after its `}`."""
    if text.startswith("{}", start):  # (an empty variant draws nothing: surely training's mark for the token)
        raise ConfigError(f"{where} {text!r}: '{{}}' marks the token in training's prompts; here it is an empty "
                          f"variant, which draws nothing: write the token itself (e.g. <my-dog>), or \\{{\\}} "
                          f"for the characters")
    i, low, high, separator, sampler = _LEAD.match(text, start + 1).end(), 1, 1, SEPARATOR, ""
    own_sampler = _SAMPLER.match(text, i)
    if own_sampler:
        sampler, i = own_sampler.group(1), own_sampler.end()
    header = _HEADER.match(text, i)
    if header and (header.group(1) or header.group(2)):
        first, dash, last = header.groups()
        low = int(first) if first else 1
        high = (int(last) if last else None) if dash else low
        if high is not None and high < low:  # (`{3-1$$...}`: dynamicprompts reads it as 1-3)
            low, high = high, low
        i = header.end()
        own = _SEPARATOR.match(text, i)
        if own:
            separator, i = own.group(1), own.end()
    options = []
    while True:  # (an option's leading whitespace, and comments there, left out, as dynamicprompts leaves them)
        i = _LEAD.match(text, i).end()
        weight = _WEIGHT.match(text, i)
        if weight:
            i = weight.end()
        nodes, i = _sequence(text, i, True, where)
        options.append((float(weight.group(1)) if weight else 1.0, nodes))
        if i >= len(text):
            comment = " (a # in it starts a comment to the end of its line: write \\# for the character)" \
                if "#" in text[start:] else ""
            raise ConfigError(f"{where} {text!r}: the '{{' at character {start + 1} is never closed{comment}: close "
                              f"it with '}}', or write \\{{ for the character")
        i += 1
        if text[i - 1] == "}":
            return Variant(tuple(options), low, high if high is not None else len(options), separator, sampler), i


def _wrap(text: str, start: int, where: str) -> tuple[Wrap, int] | None:
    """The wrap command whose `%{` is at `start` (`%{wrapper$$inner}`, dynamicprompts' grammar: the whitespace after
    `%{` and `$$` left out), and the index after its `}`; None where no `$$` follows the wrapper (a `%` before a
    variant, as textinv read it before)."""
    wrapper, i = _sequence(text, _LEAD.match(text, start + 2).end(), True, where, wrapper=True)
    if not text.startswith("$$", i):
        return None
    inner, i = _sequence(text, _LEAD.match(text, i + 2).end(), True, where)
    if i >= len(text) or text[i] != "}":
        raise ConfigError(f"{where} {text!r}: the '%{{' at character {start + 1} is never closed, or holds a '|' "
                          f"after its '$$': write %{{wrapper ... $$inner}} (a variant inside it for options), or %\\{{ "
                          f"for the characters")
    return Wrap(wrapper, inner), i + 1


def _variable(text: str, start: int, inside: bool, where: str) -> tuple[Variable | Assign, int]:
    """The variable's use or setting whose `${` is at `start`, and the index after its `}`."""
    head = _VARIABLE.match(text, start)
    at = f"{where} {text!r}: the '${{' at character {start + 1}"
    if not head:
        raise ConfigError(f"{at} starts no variable (${{name}}, ${{name:default}}, ${{name=value}}; a name is letters, "
                          f"digits, _ and -): fix it, or write $\\{{ for the characters")
    name, kind, i = head.group(1), head.group(2), head.end()
    if kind == "}":
        return Variable(name), i
    if kind != ":" and inside:  # (dynamicprompts' grammar: a variant's option holds no setting)
        raise ConfigError(f"{at} sets ${{{name}}} inside a variant or a variable: set it before, outside the braces "
                          f"(e.g. ${{{name}={{a|b}}}} then {{${{{name}}}|c}})")
    immediate = kind != ":" and text.startswith("!", i)
    i += immediate
    i = _LEAD.match(text, i).end()
    value, i = _sequence(text, i, True, where)
    if i >= len(text):
        raise ConfigError(f"{at} is never closed: close it with '}}', or write $\\{{ for the characters")
    if text[i] == "|":
        raise ConfigError(f"{at}: ${{{name}}}'s value holds a '|' at character {i + 1}: one value stands there; wrap "
                          f"options in a variant (${{{name}={{a|b}}}}), or write \\| for the character")
    if kind == ":":
        return Variable(name, value), i + 1
    return Assign(name, value, immediate, kind == "?="), i + 1


def _wildcard_variables(spec: str | None, written: str, where: str) -> tuple:
    """`__name(var=value, ...)__`'s variables as ((var, nodes), ...); a value is a template, drawn at each use."""
    out = []
    for pair in (spec.split(",") if spec is not None else []):
        name, equals, value = (part.strip() for part in pair.partition("="))
        if not equals or not re.fullmatch(_NAME, name):
            raise ConfigError(f"{where}: the wildcard {written} sets its variables as name=value, separated by commas, "
                              f"not {pair.strip()!r}: fix it, or write \\_\\_ for underscores that are text")
        out.append((name, parse(value, f"{where}: {written}")))
    return tuple(out)


@dataclass
class Wildcards:
    """The wildcard files of `folder` (None: none given): `name.txt`, one option a line, blank ones and comments (`#` to
    the line's end) left out; `colors/warm` for a subfolder's file, `colors/*` for several (their lines together). A
    `.yaml`, `.yml` or `.json` file holds several, as dynamicprompts reads them: its keys name them (not the file's
    name), nested keys as `key/sub`, under its folder's path; a file that is one list is named as a .txt file."""

    folder: Path | None
    _read: dict = field(default_factory=dict)
    _names: dict | None = None  # wildcard name: its .txt file, (structured file, key, options), or why it is refused
    _unread: dict = field(default_factory=dict)  # a structured file that does not read: why
    checked: set = field(default_factory=set)  # wildcards `check` read through, with the variables set around them

    def options(self, name: str) -> list[tuple[float, list]]:
        """The weighted, parsed options the wildcard `__name__` draws from (a .txt file's weigh 1), each once and
        sorted by their text, as the extension's wildcard manager gives them (its defaults: dedupe, sort); a name no
        file answers to, or an empty file or list, raises."""
        if name not in self._read:
            entries: dict = {}  # (text, weight): where it is first written
            for source in self._sources(name):
                for weight, text, where in self._entries(name, source):
                    entries.setdefault((text, weight), where)
            self._read[name] = [(weight, parse(text, f"wildcard __{name}__ ({where})"))
                                for (text, weight), where in sorted(entries.items(), key=lambda e: e[0][0])]
        return self._read[name]

    def counted(self, name: str) -> list[tuple[int, list]]:
        """The options of `__name__` with the times the extension's cyclical and combinatorial drawing (and a variant
        of the wildcard alone, `{2$$__name__}`) take each: its weight cut to a whole number (dynamicprompts'
        `iterate_string_values_weighted`), those under 1 left out; a wildcard whose options all weigh under 1 raises."""
        counted = [(int(weight), line) for weight, line in self.options(name) if weight >= 1]
        if not counted:
            raise ConfigError(f"__{name}__: its options all weigh under 1, and the extension takes an option as often "
                              f"as its weight says, cut to a whole number, in cyclical and combinatorial drawing and "
                              f"in {{2$$__{name}__}}: weigh one 1 or more")
        return counted

    def _sources(self, name: str) -> list:
        if self.folder is None:
            raise ConfigError(f"__{name}__ is a wildcard, and no {setting('wildcards_dir')} was given: pass the folder "
                              f"that holds {name}.txt, or write \\_\\_ for underscores that are text")
        names = self._all()
        if name in names and isinstance(names[name], ConfigError):
            raise names[name]
        found = self._matching(name) if "*" in name else {name: names[name]} if name in names else {}
        if not found and not name.startswith("**"):  # (dynamicprompts then looks in the subfolders, warning)
            found = self._matching(f"**/{name}")
            if found:
                warn(f"__{name}__: no wildcard of that name; drawn from {', '.join(found)}, as the extension draws "
                     f"**/{name}: name it so")
        if not found:
            there = ", ".join(list(names)[:20]) or "no wildcard files"
            unread = "; ".join(self._unread.values())
            maybe = f"; it may be in a wildcard file that does not read: {unread}" if unread else ""
            raise ConfigError(f"__{name}__: no wildcard file {name}.txt in {setting('wildcards_dir', self.folder)} "
                              f"(it holds: {there}); add it, or fix the name{maybe}")
        return list(found.values())

    def _matching(self, pattern: str) -> dict:
        """The wildcards a glob matches, with their sources, those refused passed over (warned of when read)."""
        return {n: source for n, source in self._all().items() if fnmatch.fnmatchcase(n, pattern)
                and not isinstance(source, ConfigError)}

    def _all(self) -> dict:
        """Every wildcard name in the folder, in order (a bad YAML or JSON file, or key, or a name given twice: warned
        of, passed over by globs and refused where used, as dynamicprompts skips them with a warning)."""
        if self._names is None:
            names: dict = {}
            for path in sorted(self.folder.rglob("*")):
                for name, source in self._found(path):
                    if name in names:
                        source = ConfigError(f"__{name}__ is given twice in "
                                             f"{setting('wildcards_dir', self.folder)}: by "
                                             f"{_origin(names[name])} and {_origin(source)}; rename or remove one")
                    if isinstance(source, ConfigError):
                        warn(f"{source} (left out; refused where a prompt uses it)")
                    names[name] = source
            self._names = dict(sorted(names.items()))
        return self._names

    def _found(self, path: Path) -> list[tuple[str, object]]:
        """The wildcards a file in the folder names: (name, its .txt file, or (structured file, key, options), or the
        ConfigError that refuses a bad key); a structured file that does not read names none (`_unread`)."""
        if not path.is_file():  # (a folder named like a file, old.txt)
            return []
        if any(part.startswith(".") for part in path.relative_to(self.folder).parts[:-1]):
            return []  # (a hidden folder, .git or an editor's .history: dynamicprompts passes it over)
        if path.suffix == ".txt":
            return [(self._name(path), path)]
        if path.suffix not in (".yaml", ".yml", ".json"):
            return []
        try:
            return [(self._prefix(path) + key, entries if isinstance(entries, ConfigError) else (path, key, entries))
                    for key, entries in _structured(path)]
        except ConfigError as e:
            warn(f"{e} (left out with its wildcards, as the extension leaves it out)")
            self._unread[path] = str(e)
            return []

    def _prefix(self, path: Path) -> str:
        """The names of a structured file's wildcards begin with its folder's path."""
        under = path.parent.relative_to(self.folder).as_posix()
        return "" if under == "." else under + "/"

    def _name(self, path: Path) -> str:
        return path.relative_to(self.folder).with_suffix("").as_posix()

    def _entries(self, name: str, source) -> list[tuple[float, str, str]]:
        """A source's options as (weight, text, where in the file)."""
        if isinstance(source, Path):
            return [(1.0, line, f"{source.name} line {n}") for n, line in self._lines(name, source)]
        path, key, entries = source
        if not entries:
            raise ConfigError(f"__{name}__: the wildcard file {path} holds no options under {key}; add some, or "
                              f"remove the key")
        return entries

    def _lines(self, name: str, path: Path) -> list[tuple[int, str]]:
        lines = [(n, _uncommented(line)) for n, line in enumerate(_text(path, f"__{name}__: ").splitlines(), 1)]
        lines = [(n, line) for n, line in lines if line]
        if not lines:
            raise ConfigError(f"__{name}__: the wildcard file {path} holds no options (one a line; lines starting "
                              f"with # are comments)")
        return lines


def _text(path: Path, said: str = "") -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{said}the wildcard file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it "
                          f"as UTF-8") from None


def _uncommented(text: str) -> str:
    """`text` less its comments, stripped: a `#` (not `\\#`) starts one, to the end of its line, as dynamicprompts'
    parser reads it in a wildcard file's line (and leaves out a line that starts with one)."""
    return _COMMENT.sub(r"\1", text).strip()


def _origin(source) -> str:
    if isinstance(source, ConfigError):  # (a name given twice before, or a bad key)
        return "another file"
    return str(source) if isinstance(source, Path) else f"{source[0]} (key {source[1]})"


def _structured(path: Path) -> list[tuple[str, list]]:
    """A YAML or JSON wildcard file's wildcards as (name, [(weight, text, where), ...], or the ConfigError refusing a
    bad key); one that does not read, or is neither a mapping nor a list, raises. A mapping's keys name them,
    nested mappings as `key/sub`; a file that is one list is one, named as the file (`_flat_options`), as
    dynamicprompts reads them."""
    try:
        data = _load(path, _text(path))
    except RecursionError:  # (thousands of brackets one inside another)
        raise ConfigError(f"the wildcard file {path} nests too deeply to read (Python's recursion limit): fix it, or "
                          f"move it out of --wildcards-dir") from None
    if isinstance(data, list):
        return [(path.stem, _flat_options(data, path))]
    if not isinstance(data, dict):
        raise ConfigError(f"the wildcard file {path} holds {type(data).__name__ if data is not None else 'nothing'}, "
                          f"where a mapping of names to lists of options (or one list) is expected: fix it, or move "
                          f"it out of --wildcards-dir")
    return _structured_keys(data, path)


def _load(path: Path, text: str):
    """A YAML or JSON file's data; one that does not read is refused."""
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"the wildcard file {path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                              f"fix it, or move it out of --wildcards-dir") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"the wildcard file {path} is YAML, which needs PyYAML: pip install pyyaml, or move "
                              f"it out of --wildcards-dir") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"the wildcard file {path} is not YAML ({' '.join(str(e).split())}): fix it, or move it "
                              f"out of --wildcards-dir") from None
    return data


def _structured_keys(data: dict, path: Path) -> list[tuple[str, list]]:
    """A mapping's wildcards, nested keys as `key/sub`, a bad key's the ConfigError that refuses it. YAML's aliases can
    make a mapping hold one around it, or a few lines stand for billions of keys: both refuse the file, as do keys
    nested past `MAX_DEPTH`."""
    out: list = []
    size = 0  # keys and options read, each alias's as often as it stands

    def walk(mapping: dict, prefix: str, above: tuple) -> None:
        nonlocal size
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if not isinstance(key, str):
                out.append((name, ConfigError(f"the wildcard file {path}: the key {name} ({type(key).__name__}) is "
                                              f"not a name: quote it (\"{key}\")")))
                continue
            if isinstance(value, str) or value is None:  # (dynamicprompts: one option; none, as an empty list)
                value = [value] if value else []
            size += 1 + (len(value) if isinstance(value, list) else 0)
            if size > MAX_STRUCTURED:
                raise ConfigError(f"the wildcard file {path} holds more than {MAX_STRUCTURED} keys and options (its "
                                  f"aliases expanded): split it, or use fewer aliases")
            if isinstance(value, list):
                out.append((name, _options_or_error(value, path, name)))
            elif isinstance(value, dict) and (any(value is m for m in above) or len(above) > MAX_DEPTH):
                what = "nests its keys too deeply" if len(above) > MAX_DEPTH else \
                    "holds a mapping around it (a YAML alias of its own anchor), so its names never end"
                raise ConfigError(f"the wildcard file {path}: the key {name} {what}: fix it, or move it out of "
                                  f"--wildcards-dir")
            elif isinstance(value, dict):
                walk(value, name + "/", above + (value,))
            else:
                out.append((name, ConfigError(f"the wildcard file {path}: the key {name} holds {value!r} "
                                              f"({type(value).__name__}), where a list of options or a mapping of "
                                              f"names is expected: make it a list, or remove it")))

    walk(data, "", (data,))
    return out


def _options_or_error(items: list, path: Path, key: str) -> list | ConfigError:
    """`_structured_options`, or the ConfigError that refuses them (the key is skipped, as dynamicprompts skips it)."""
    try:
        return _structured_options(items, path, key)
    except ConfigError as e:
        return e


def _structured_options(items: list, path: Path, key: str) -> list[tuple[float, str, str]]:
    """A key's list's options as (weight, text, where) (`_item`); empty ones left out, as are comments
    (`_uncommented`)."""
    out = []
    for n, item in enumerate(items, 1):
        weight, text = _item(item, f"the wildcard file {path}: item {n} of the key {key}")
        if _uncommented(text):
            out.append((weight, _uncommented(text), f"{path.name} key {key} item {n}"))
    return out


def _item(item, what: str) -> tuple[float, str]:
    """A list item's weight and text: a string (`2::text` weighs 2), a mapping {text: ..., weight: ...} (`content`
    for `text`), or nothing (null). Any other item raises (dynamicprompts skips it with a warning), as does a
    mapping without text: YAML reads `- {a|b}`, unquoted, as one."""
    if item is None or isinstance(item, str):
        return _item_weight(item or "")
    if not isinstance(item, dict) or not ("text" in item or "content" in item):
        hint = " (YAML reads {a|b} unquoted as a mapping: quote it, '{a|b}')" if isinstance(item, dict) else ""
        raise ConfigError(f"{what} is {item!r} ({type(item).__name__}), not an option's text{hint}: quote it, or "
                          f"write it as {{text: ..., weight: 2}}")
    try:
        weight = float(item.get("weight", 1))
    except (TypeError, ValueError):
        raise ConfigError(f"{what} weighs {item['weight']!r}, not a number: write one (weight: 2)") from None
    if weight < 0:
        raise ConfigError(f"{what} weighs {weight:g}: a weight is 0 or more")
    return weight, str(item.get("text") or item.get("content") or "")


def _flat_options(items: list, path: Path) -> list[tuple[float, str, str]]:
    """The options of a file that is one list, as dynamicprompts reads one: its strings as written (`2::red` is that
    text, not weighed: it weighs a key's list alone), its other items left out; a warning says where that is so."""
    texts = [(n, item) for n, item in enumerate(items, 1) if isinstance(item, str)]
    weighed = [item for _, item in texts if _item_weight(item)[1] != item]
    others = len(items) - len(texts) - items.count(None)
    if weighed or others:
        what = [f"{weighed[0]!r} is drawn as written, not weighed"] if weighed else []
        what += [f"{others} item(s) that are not text are left out"] if others else []
        warn(f"the wildcard file {path} is one list, which the extension reads as text alone: {', and '.join(what)}; "
             f"put the list under a key ({path.stem}: [...]) to weigh its options")
    return [(1.0, _uncommented(item), f"{path.name} item {n}") for n, item in texts if _uncommented(item)]


def _item_weight(item: str) -> tuple[float, str]:
    """`2::text` as (2.0, "text"): the weight before the last `::`, where that is a number; else (1.0, item)."""
    head, bars, tail = item.rpartition("::")
    if bars and item[:1].isdigit():
        try:
            return float(head), tail
        except ValueError:
            pass
    return 1.0, item


def check(nodes: list, wildcards: Wildcards, within: tuple[str, ...] = (), variables: dict | None = None) -> None:
    """Read every wildcard `nodes` can reach, so a missing or empty file, a variable used where none is set and no
    default is given, or wildcards and variables that reach themselves (`within`: those being read) are refused
    before anything is drawn. `variables`: those set around `nodes` (name: the nodes a use draws)."""
    def checked(value: list, known: dict) -> str:  # a `${name=!...}` value: checked, its text drawn later
        check(value, wildcards, within, known)
        return ""

    nodes, variables = _assigned(nodes, variables or {}, checked)
    for node in nodes:
        if isinstance(node, Wildcard):
            seen = repr((node.name, node.variables, sorted(variables.items())))  # (what its lines draw from)
            if seen in wildcards.checked:
                continue  # (else a wildcard reached by many lines of many files is read as often: exponential)
            inner = _within(within, f"__{node.name}__")
            for _, line in wildcards.options(node.name):
                check(_line(node, line), wildcards, inner, variables)
            wildcards.checked.add(seen)
        elif isinstance(node, Variable):
            if node.name in variables:
                check(variables[node.name], wildcards, _within(within, f"${{{node.name}}}"), variables)
            elif node.default is not None:
                check(node.default, wildcards, within, variables)
            else:
                raise ConfigError(f"${{{node.name}}} is used where no ${{{node.name}=...}} sets it: set it before (in "
                                  f"the prompt, the wildcard's line, or __wildcard({node.name}=...)__), or give a "
                                  f"default: ${{{node.name}:value}}")
        elif isinstance(node, Variant):
            for _, option in node.options:
                check(option, wildcards, within, variables)
        elif isinstance(node, Wrap):
            check(node.wrapper, wildcards, within, variables)
            check(node.inner, wildcards, within, variables)


def _within(within: tuple[str, ...], name: str) -> tuple[str, ...]:
    """`within` and `name` (a wildcard's `__name__` or a variable's `${name}`), refused where it is there already."""
    if name in within:
        loop = " -> ".join(within[within.index(name):] + (name,))
        what = "wildcards draw one another" if name.startswith("__") else "a variable draws itself"
        raise ConfigError(f"{what} in a loop: {loop}; take one of them out of the other's file or value")
    if len(within) >= MAX_DEPTH:  # (else drawing them runs past Python's recursion limit)
        chain = " -> ".join(within + (name,))
        raise ConfigError(f"wildcards and variables draw one another more than {MAX_DEPTH} deep: {chain}; draw "
                          f"fewer in one another")
    return within + (name,)


def _assigned(nodes: list, variables: dict, immediate) -> tuple[list, dict]:
    """`nodes` less their settings, and the variables they set, each seeing those before it: a setting's value as
    written, or (`${name=!...}`) the text `immediate(value, variables)` draws, once."""
    if not any(isinstance(node, Assign) for node in nodes):
        return nodes, variables
    variables = dict(variables)
    for node in nodes:
        if isinstance(node, Assign) and not (node.keep and node.name in variables):
            variables[node.name] = [immediate(node.value, variables)] if node.immediate else node.value
    return [node for node in nodes if not isinstance(node, Assign)], variables


def _line(node: Wildcard, line: list) -> list:
    """A wildcard file's line with the wildcard's variables set first (the line's own settings after them)."""
    return [Assign(name, value) for name, value in node.variables] + line


def draw(nodes: list, rng: random.Random, wildcards: Wildcards, variables: dict | None = None, index: int = 0) -> str:
    """One text `nodes` stand for, drawn with `rng` (`check`ed nodes: no loops, no variable unset); a cyclical
    variant or wildcard (`{@...}`, `__@...__`) gives its `index`-th text (`_cycle`): picture `index`'s."""
    def again(value: list, known: dict) -> str:
        return draw(value, rng, wildcards, known, index)

    def chosen(node: Variant | Wildcard, known: dict) -> str:
        if node.sampler == "@":
            return _cycle(node, index, rng, wildcards, known)
        if isinstance(node, Wildcard):  # (`!`, combinatorial, draws at random here, as dynamicprompts draws it)
            return again(_line(node, _pick(wildcards.options(node.name), rng)), known)
        return _joined(node.separator, [again(option, known) for option in _picked(node, rng, wildcards)])

    return _walked(nodes, variables or {}, again, chosen)


def _walked(nodes: list, variables: dict, again: Callable[[list, dict], str],
            chosen: Callable[[Variant | Wildcard, dict], str]) -> str:
    """The text `nodes` stand for, as `draw` and `_cycled` read them alike: their settings first (`_assigned`), text
    as written, a variable's value and a wrap's parts by `again(nodes, variables)`; each variant and wildcard by
    `chosen(node, variables)`, where the two differ."""
    nodes, variables = _assigned(nodes, variables, again)
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Variable):
            out.append(again(variables.get(node.name, node.default), variables))
        elif isinstance(node, Wrap):  # (dynamicprompts cannot cycle one: within a cyclical one its parts turn together)
            out.append(_wrapped(again(node.wrapper, variables), again(node.inner, variables)))
        else:
            out.append(chosen(node, variables))
    return "".join(out)


def _picked(node: Variant, rng: random.Random, wildcards: Wildcards) -> list[list]:
    """The options a variant draws with `rng`: as many as `_count` allows, without replacement, each pick weighed by
    what is left."""
    options = _options(node, wildcards)
    count = rng.randint(*_count(node, options, wildcards))
    picked = []
    weights = [w for w, _ in options]
    places = list(range(len(options)))
    for _ in range(count):
        k = rng.choices(range(len(places)), weights if any(weights) else None)[0]
        picked.append(options[places.pop(k)][1])
        weights.pop(k)
    return picked


def _cycle(node: Variant | Wildcard, k: int, rng: random.Random, wildcards: Wildcards, variables: dict) -> str:
    """The `k`-th text of a cyclical variant or wildcard, as dynamicprompts' cyclical sampler turns: its options (a
    `{2$$...}` variant's choices, as `_arrangements` gives them) in turn, the parts of each option turning once a
    round (option k mod n, its parts' turn k // n); a variant's weights are left out, a wildcard's option is taken as
    often as `Wildcards.counted` says."""
    if isinstance(node, Wildcard):
        lines = [line for times, line in wildcards.counted(node.name) for _ in range(times)]
        return _cycled(_line(node, lines[k % len(lines)]), k // len(lines), rng, wildcards, variables)
    options = [nodes for _, nodes in _options(node, wildcards)]
    low, high = _count(node, options, wildcards)
    choices = list(itertools.islice(_choices(options, low, high), k + 1))  # (the k-th, without listing them all)
    if not choices:  # (`{@2$$a|a}`: dynamicprompts turns through its no choices forever)
        raise ConfigError(f"a cyclical variant {{@{low}$$...}} has no {low} different options to choose: give it "
                          f"different options, or choose fewer")
    chosen, turn = (choices[k], 0) if k < len(choices) else (choices[k % len(choices)], k // len(choices))
    return _joined(node.separator, [_cycled(option, turn, rng, wildcards, variables) for option in chosen])


def _cycled(nodes: list, k: int, rng: random.Random, wildcards: Wildcards, variables: dict) -> str:
    """`nodes` within a cyclical one, at their `k`-th turn: their variants and wildcards cycle too, but for those
    marked `~`, drawn with `rng` (dynamicprompts: a combinatorial `!` cannot stand within a cyclical one: it cycles)."""
    def again(value: list, known: dict) -> str:
        return _cycled(value, k, rng, wildcards, known)

    def chosen(node: Variant | Wildcard, known: dict) -> str:
        if node.sampler == "~":
            return draw([node], rng, wildcards, known)
        return _cycle(node, k, rng, wildcards, known)

    return _walked(nodes, variables, again, chosen)


def _joined(separator: str, texts: list[str]) -> str:
    """A `{2$$...}` variant's texts joined as dynamicprompts joins them: by `separator`, less one at either end (an
    empty option's: `{2$$a|}` draws "a"); one text as it is."""
    if len(texts) == 1:
        return texts[0]
    joined = separator.join(texts)
    if separator:
        joined = joined.removeprefix(separator).removesuffix(separator)
    return joined


def _wrapped(wrapper: str, inner: str) -> str:
    """`inner` in `wrapper` where its first `...` (three dots or more, or Unicode's ellipses) stands; after it where
    it has none, as dynamicprompts wraps it."""
    marker = _WRAP_MARKER.search(wrapper)
    if not marker:
        return wrapper + inner
    return wrapper[:marker.start()] + inner + wrapper[marker.end():]


def _pick(options: list[tuple[float, list]], rng: random.Random) -> list:
    """A wildcard's option, drawn as its weights say (alike, as a .txt file's: `rng.choice`, as always)."""
    weights = [weight for weight, _ in options]
    if len(set(weights)) == 1:
        return rng.choice(options)[1]
    return rng.choices(options, weights)[0][1]


@dataclass
class Turns:
    """What `combinations` draws besides: `rng` for the parts marked `~` (random: one text each combination), and
    how often each part marked `@` (cyclical: its next text each combination) has turned."""

    rng: random.Random
    turns: dict = field(default_factory=dict)

    def next(self, node) -> int:
        k = self.turns[id(node)] = self.turns.get(id(node), -1) + 1
        return k


def combinations(nodes: list, wildcards: Wildcards, variables: dict | None = None,
                 turns: Turns | None = None) -> Iterator[str]:
    """Every text `nodes` stand for, in order: the first variant's options slowest, each variant's options in the
    order written, a `{2$$...}` variant's choices as `_arrangements` gives them (weights are left out), a wildcard's
    lines each as often as it weighs, every text of each (a text two lines draw comes twice); a `${name=!...}`
    setting takes each of its value's texts in turn, slowest of all. A part marked `~` or `@` is not enumerated:
    each combination draws it (`turns`; default: a generator seeded 0), as dynamicprompts does."""
    variables, turns = variables or {}, turns or Turns(random.Random(0))
    settings = [node for node in nodes if isinstance(node, Assign)]
    if settings:
        yield from _set_each(settings, [node for node in nodes if not isinstance(node, Assign)], wildcards, variables,
                             turns)
        return
    if not nodes:
        yield ""
        return
    head, rest = nodes[0], nodes[1:]
    for first in _node_texts(head, wildcards, variables, turns):
        for after in combinations(rest, wildcards, variables, turns):
            yield first + after


def _set_each(settings: list[Assign], nodes: list, wildcards: Wildcards, variables: dict,
              turns: Turns) -> Iterator[str]:
    """`combinations` of `nodes` under each value `settings` give their variables, in order."""
    if not settings:
        yield from combinations(nodes, wildcards, variables, turns)
        return
    first, rest = settings[0], settings[1:]
    if first.keep and first.name in variables:
        yield from _set_each(rest, nodes, wildcards, variables, turns)
    elif not first.immediate:
        yield from _set_each(rest, nodes, wildcards, {**variables, first.name: first.value}, turns)
    else:
        for text in combinations(first.value, wildcards, variables, turns):
            yield from _set_each(rest, nodes, wildcards, {**variables, first.name: [text]}, turns)


def _node_texts(node, wildcards: Wildcards, variables: dict, turns: Turns) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Variable):
        yield from combinations(variables.get(node.name, node.default), wildcards, variables, turns)
    elif isinstance(node, Wrap):  # (each wrapper's text with each inner text, the wrapper's slower)
        for wrapper in combinations(node.wrapper, wildcards, variables, turns):
            for inner in combinations(node.inner, wildcards, variables, turns):
                yield _wrapped(wrapper, inner)
    elif node.sampler == "~":
        yield draw([node], turns.rng, wildcards, variables)
    elif node.sampler == "@":
        yield _cycle(node, turns.next(node), turns.rng, wildcards, variables)
    elif isinstance(node, Wildcard):  # (each line as often as it weighs, and no text given once only: a text two
        # lines draw comes again, as dynamicprompts' combinatorial sampler gives a wildcard's texts)
        for times, line in wildcards.counted(node.name):
            for _ in range(times):
                yield from combinations(_line(node, line), wildcards, variables, turns)
    else:
        options = [nodes for _, nodes in _options(node, wildcards)]
        low, high = _count(node, options, wildcards)
        choices = (texts for chosen in _choices(options, low, high)
                   for texts in _products([lambda option=option: combinations(option, wildcards, variables, turns)
                                           for option in chosen]))
        for texts in _once(choices):
            if len(set(texts)) == len(texts):  # (no option's text twice in one choice, as dynamicprompts)
                yield _joined(node.separator, list(texts))


def _once(values: Iterator) -> Iterator:
    """`values` without those given before: a variant's choices, each once, as dynamicprompts gives them (two options
    that draw the same text, `{red|blue}` and `red`, give it once)."""
    seen = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value


def _products(makers: list[Callable[[], Iterator[str]]]) -> Iterator[tuple[str, ...]]:
    """itertools.product of the iterators `makers` make, but making each later one anew for each earlier value, so
    nothing is read ahead."""
    if not makers:
        yield ()
        return
    first, rest = makers[0], makers[1:]
    for value in first():
        for after in _products(rest):
            yield (value,) + after


def _options(node: Variant, wildcards: Wildcards) -> list[tuple[float, list]]:
    """A variant's options; `{2$$__name__}`, a wildcard alone, draws from its file's lines, each as many times as the
    extension takes it there (`Wildcards.counted`), as options of their own weighing 1 (dynamicprompts'
    `wildcard_to_variant`), so a line weighing 2 may be drawn twice (`{2$$__name__}`: "red,red")."""
    alone = _alone(node)
    if alone:
        return [(1.0, _line(alone, line)) for times, line in wildcards.counted(alone.name) for _ in range(times)]
    return list(node.options)


def _alone(node: Variant) -> Wildcard | None:
    """The wildcard a variant holds alone (`{2$$__name__}`), else None."""
    if len(node.options) == 1 and len(node.options[0][1]) == 1 and isinstance(node.options[0][1][0], Wildcard):
        return node.options[0][1][0]
    return None


def _choices(options: list, low: int, high: int) -> Iterator[tuple]:
    """The choices of `low` to `high` options a variant enumerates, fewest first (`_arrangements`)."""
    for count in range(low, high + 1):
        yield from _arrangements(options, count)


def _arrangements(options: list, count: int) -> Iterator[tuple]:
    """`count` of `options` in every order, as dynamicprompts' variants enumerate them (`get_value_combinations`):
    `{2$$a|b|c}` gives a,b a,c b,a b,c c,a c,b, as itertools.permutations does, but an option never beside one
    equal to it (`{2$$a|a|b}`: a,b a,b b,a b,a)."""
    if count <= 0:
        yield ()
        return
    for option in options:
        for after in _arrangements([other for other in options if other != option], count - 1):
            yield (option, *after)


def _count(node: Variant, options: list, wildcards: Wildcards) -> tuple[int, int]:
    """How few and how many of `options` (`_options`) a variant draws, cut to those it has, as dynamicprompts does; a
    wildcard alone's to its options each once too (`wildcard_to_variant` cuts to its values, not to their copies)."""
    alone = _alone(node)
    available = min(len(options), len(wildcards.options(alone.name))) if alone else len(options)
    high = min(node.high, available)
    return min(node.low, high), high


@dataclass(frozen=True)
class Job:
    """Pictures `generate` draws with one prompt and negative prompt, as drawn from their templates (the --prompt
    and --negative-prompt as given; None: one without variants or wildcards, drawn as written); `index`: the
    prompt's place, which the files' names begin with."""

    index: int
    prompt: str
    negative: str
    seeds: tuple[int, ...]
    template: str | None = None
    negative_template: str | None = None


def jobs(prompts: list[str], negative: str, seeds: list[int], folder: str | None = None,
         combinatorial: bool = False, max_prompts: int = MAX_PROMPTS) -> list[Job]:
    """What the pictures of `seeds` draw for each prompt template, every wildcard file read and checked first.

    Random mode: the picture of seed s draws its prompt with `random.Random(s)` and its negative prompt with a
    generator of its own seeded from s too, so its prompts are its seed's alone; pictures that drew the same are
    one job; a cyclical part (`{@...}`) gives picture i (of `seeds`) its i-th text. Combinatorial mode: each
    template's combinations in order (`combinations`, at most `max_prompts`, a warning saying how many more there
    were; its parts marked `~` drawn with a generator seeded from the first seed), each drawn with every seed, one
    after the other in the files' names (a text given again with the seeds after them, `_combined`).
    A template without variants or wildcards is one job of every seed, its text as written. `folder`: the
    --wildcards-dir (None: none).

    >>> [(j.prompt, j.seeds) for j in jobs(["a {cat|dog}"], "", [0, 1, 2], combinatorial=True)]
    [('a cat', (0, 1, 2)), ('a dog', (0, 1, 2))]
    """
    try:
        return _jobs(prompts, negative, seeds, folder, combinatorial, max_prompts)
    except RecursionError:  # (variants hundreds deep read, but drawing them goes deeper)
        raise ConfigError(f"{given('prompt', prompts)} or {given('negative_prompt', negative)}: variants nest too "
                          f"deeply to draw (Python's recursion limit): nest fewer") from None


def _jobs(prompts: list[str], negative: str, seeds: list[int], folder: str | None, combinatorial: bool,
          max_prompts: int) -> list[Job]:
    wildcards = Wildcards(Path(folder).expanduser() if folder else None)
    negative_nodes = parse(negative, "--negative-prompt")
    parsed = [parse(prompt) for prompt in prompts]
    for flag, text, nodes in [("--negative-prompt", negative, negative_nodes)] + [
            ("--prompt", prompt, nodes) for prompt, nodes in zip(prompts, parsed)]:
        try:
            check(nodes, wildcards)
        except ConfigError as e:  # (which of the prompts draws the missing file, the unset variable...)
            raise ConfigError(f"{flag} {text!r}: {e}") from None

    def negative_of(seed: int, index: int) -> str:
        if not is_dynamic(negative_nodes):
            return "".join(negative_nodes)  # (as written, less its comments)
        return draw(negative_nodes, random.Random(f"negative {seed}"), wildcards, index=index)

    out: list[Job] = []
    place = 0
    for template, nodes in zip(prompts, parsed):
        if not is_dynamic(nodes):
            drawn = [(lambda seed, index, text="".join(nodes): text, 0)]  # (as written, less its comments)
        elif combinatorial:
            drawn = [(lambda seed, index, text=text: text, repeat)
                     for text, repeat in _combined(template, nodes, wildcards, seeds, max_prompts)]
        else:
            drawn = [(lambda seed, index: draw(nodes, random.Random(seed), wildcards, index=index), 0)]
        for prompt_of, repeat in drawn:  # (`repeat`: the times combinatorial mode gave the prompt before)
            groups: dict[tuple[str, str], list[int]] = {}
            for i, seed in enumerate(seeds):  # (a cyclical part's turn: the picture's place)
                index, seed = repeat * len(seeds) + i, seed + repeat * len(seeds)
                groups.setdefault((prompt_of(seed, index), negative_of(seed, index)), []).append(seed)
            out += [Job(place, prompt, neg, tuple(group), _template(template, nodes),
                        _template(negative, negative_nodes)) for (prompt, neg), group in groups.items()]
            place += 1
    return out


def _combined(template: str, nodes: list, wildcards: Wildcards, seeds: list[int],
              max_prompts: int) -> list[tuple[str, int]]:
    """Combinatorial mode's prompts of a template, in order, at most `max_prompts` (a warning says there were more),
    each with the times it came before: dynamicprompts gives a text again where a wildcard's lines draw it twice
    (or a line weighs 2), and the extension draws it again with seeds of its own, so here its k-th time is drawn with
    the seeds k blocks of -n further on (seed + k * n, ...)."""
    turns = Turns(random.Random(f"combinatorial {seeds[0] if seeds else 0}"))
    texts = list(itertools.islice(combinations(nodes, wildcards, turns=turns), max_prompts + 1))
    if len(texts) > max_prompts:  # (not counted: a few wildcards can make millions)
        warn(f"--prompt {template!r} has more combinations than --max-prompts {max_prompts}: the first "
             f"{max_prompts} are drawn; raise --max-prompts for more", stacklevel=4)
    before: dict[str, int] = {}
    out = []
    for text in texts[:max_prompts]:
        out.append((text, before.get(text, 0)))
        before[text] = before.get(text, 0) + 1
    return out


def _template(text: str, nodes: list) -> str | None:
    """`text`, the template its pictures record, where it draws other text (variants, comments); else None."""
    return text if is_dynamic(nodes) or "".join(nodes) != text else None
