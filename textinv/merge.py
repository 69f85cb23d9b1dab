"""`textinv merge`: a new embedding made of existing embeddings and vocabulary words, as the A1111 web UI's
"Embedding Inspector" (its mixer) and "Embedding Merge" extensions make them.

A merge is written as terms, laid one after another: the new word stands for their vectors in that order
(concatenation). A term is parts joined by `+`, summed vector by vector (parts of one vector count; a part of one
vector is added to each). A part is

    dog.pt                 an embedding file in any format textinv reads, a training run's folder, or a hub id
    'golden retriever'     words: each token's row of the model's token-embedding table, one vector per token (as
                           Embedding Inspector reads a word; SDXL: the rows of both text encoders)
    style.pt[0:2]          some of its vectors: Python's index or slice ([1], [-1], [1:], [:2]), within its count
    cat.pt*0.3             scaled by a number (*-1 subtracts)

so `textinv merge mix.pt --token "<mix>" "dog.pt*0.7 + cat.pt*0.3" "style.pt[0:2]"` writes three vectors: the mix
of dog and cat (one vector each), then style's first two. A path that holds `+`, `*`, `[`, `]` or `'` cannot be
written in a term: rename it (or, from Python, give the term as a `Path`: that one file).
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, modelspec
from .config import MergeConfig, check_config_object
from .emphasis import CHUNK
from .errors import ConfigError, FormatError, TokenError, given, setting, warn, warns_at_caller
from .families import describe_widths
from .formats import LearnedEmbedding, check_writable, describe, format_for, load_embedding, save_embedding
from .inspect import encoder_lines, word_rows
from .io import absolute
from .models import Model, check_model_object, load_model, shareable_name, source_is_xl
from .run_folder import embedding_file
from .tokens import base_embedding, split_words, token_clash, token_names

# what a merged file keeps of its parts' metadata, where every part says the same: the model they were made for
# (generate and score read it) and how it reads them; the rest (steps, init, title, date) describes one part only
_AGREED = ("base_model", "base_model_revision", "base_model_variant", "family", "prediction_type", "resolution",
           "clip_skip", "max_token_length", modelspec.PREFIX + "architecture")

# a part as written: 'words' or a path, then an optional [slice], then optional *weights, then + or the end
_PART = re.compile(r"""\s*(?:'(?P<words>[^']*)'|(?P<path>[^'+*\[\]]*[^'+*\[\]\s]))
                       \s*(?:\[(?P<take>[^\]]*)\])?
                       (?P<weights>(?:\s*\*\s*[^\s'+*\[\]]+)*)
                       \s*(?P<end>\+|$)""", re.VERBOSE)
_TAKE = re.compile(r"\s*-?\d+\s*|\s*(-?\d+)?\s*:\s*(-?\d+)?\s*")
SYNTAX = ("write a term as parts joined by +, each an embedding file or 'words' in single quotes, then [start:stop] "
          "and *weight if wanted, e.g. \"dog.pt*0.7 + 'golden retriever'[0:1]*0.3\"")


@dataclass(frozen=True)
class Part:
    """One part of a term, as written: an embedding (`source` a file, a run's folder or a hub id) or, with `words`,
    words of the model's vocabulary; `take` the vectors it takes (an index or slice as written, "0:2"; None: all);
    `weight` what they are multiplied by.

    >>> str(Part("dog.pt", take="0:2", weight=0.5))
    'dog.pt[0:2]*0.5'
    """

    source: str
    words: bool = False
    take: str | None = None
    weight: float = 1.0

    def __str__(self) -> str:
        written = f"'{self.source}'" if self.words else self.source
        return written + (f"[{self.take}]" if self.take is not None else "") + (
            f"*{self.weight:.15g}" if self.weight != 1 else "")


@dataclass
class MergeResult:
    files: list[Path]  # what was written (diffusers-sdxl: both files)
    embedding: LearnedEmbedding
    # `describe`'s summary, the files, the recipe and a `text` to print (left out of the repr a notebook shows)
    report: dict = field(default_factory=dict, repr=False)


def parse_term(term: str) -> list[Part]:
    """The parts of one term (see the module's docstring); ConfigError naming the term and the syntax if it cannot be
    read. A `Path` (or other path object) is one part, that file, whatever its name holds (+, *, [, ], ').

    >>> [str(part) for part in parse_term("dog.pt * 0.7 + 'golden retriever' [1]")]
    ['dog.pt*0.7', "'golden retriever'[1]"]
    """
    if isinstance(term, os.PathLike):
        return [Part(os.fspath(term))]
    if not isinstance(term, str):
        raise ConfigError(f"a term is text or a Path, got {type(term).__name__} {term!r}: {SYNTAX}")
    if not term.strip():
        raise ConfigError(f"the term {term!r} is empty: {SYNTAX}")
    # read as parts, 'dog [v2].pt' was "[v2] is no index" and 'dog+cat.pt' the missing files dog and cat.pt
    # (os.path.isfile: a long term is a name too long for the system, which Path.is_file raises on)
    if set(term) & set("+*[]'") and os.path.isfile(os.path.expanduser(term.strip())):
        raise ConfigError(f"the term {term!r} is a file, but + * [ ] ' in a term are read as its syntax, not as "
                          "part of a name: rename or copy the file to a name without them")
    parts, at = [], 0
    while True:
        m = _PART.match(term, at)
        if m is None or (m.group("end") == "+" and not term[m.end():].strip()):
            _check_weights_written(term, term[at:])
            where = "it ends in +" if m is not None else f"at {term[at:].strip()!r}"
            raise ConfigError(f"cannot read the term {term!r} ({where}): {SYNTAX}")
        words = m.group("words")
        if words is not None and not words.strip():
            raise ConfigError(f"the term {term!r} has empty quotes '': put words in them, e.g. 'dog'")
        take = m.group("take")
        if take is not None and not _TAKE.fullmatch(take):
            raise ConfigError(f"the term {term!r}: [{take}] is no index or slice; write [2] for one vector, [0:2] for "
                              "the first two, [-1] for the last")
        parts.append(Part(words.strip() if words is not None else m.group("path").strip(), words is not None,
                          None if take is None else take.replace(" ", ""), _weight(term, m.group("weights"))))
        at = m.end()
        if m.group("end") != "+":
            return parts


def _check_weights_written(term: str, rest: str) -> None:
    """Refuse a `*` with no number after it in `rest` (the part of `term` that cannot be read), naming it: `*+2`,
    `*[0]` and a trailing `*` were met with the syntax of a whole term."""
    bare = re.search(r"\*\s*(?:[+*\[\]']|$)", re.sub(r"'[^']*'", "''", rest))  # (a * inside 'words' is theirs)
    if bare:
        raise ConfigError(f"the term {term!r}: the * of {bare.group().strip()!r} has no number after it; a weight is "
                          "written after the part and its [start:stop] as *0.5 (or *-1 to subtract)")


def _weight(term: str, written: str) -> float:
    """The product of the `*number` factors `written` holds (none: 1)."""
    weight = 1.0
    for factor in filter(None, (f.strip() for f in written.split("*"))):
        try:
            value = float(factor)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            plus = " (a + ends a part: write 1e5, not 1e+5)" if factor[-1:] in "eE" else ""
            raise ConfigError(f"the term {term!r}: *{factor} is no number{plus}; a weight is written *0.5 (or *-1 "
                              "to subtract)")
        weight *= value
    if not math.isfinite(weight):
        raise ConfigError(f"the term {term!r}: its weights {written.strip()} multiply to {weight}, more than the "
                          "largest a float holds; give smaller weights")
    return weight


def take(emb: LearnedEmbedding, rows: str | int | None, name: str | None = None) -> LearnedEmbedding:
    """`emb` with only the vectors `rows` picks (Python's index "1" or "-1", or 1, or slice "0:2", ":2"), which must
    lie within its vectors; None: all of them. `name`: what errors call it (default: its token).

    >>> take(LearnedEmbedding("<x>", {"text_encoder": torch.eye(3)}), "1:").num_vectors
    2
    """
    if rows is None:
        return emb
    name, n = name or emb.token, emb.num_vectors
    if isinstance(rows, int) and not isinstance(rows, bool):
        rows = str(rows)
    if not isinstance(rows, str):
        raise ConfigError(f"{name}: the vectors to take are an index or a slice written as text, got "
                          f"{type(rows).__name__} {rows!r}; e.g. take(emb, \"0:2\") for the first two, take(emb, 1)")
    if not _TAKE.fullmatch(rows):
        raise ConfigError(f"{name}: [{rows}] is no index or slice; write [2] for one vector, [0:2] for the first two")
    start, colon, stop = (text.strip() for text in rows.partition(":"))
    first = int(start) if start else 0
    last = (int(stop) if stop else n) if colon else first + 1
    if not colon and first < 0:  # [-1]: the last vector
        last = first + 1 or n
    first, last = (i + n if i < 0 else i for i in (first, last))
    if not (0 <= first <= n and 0 <= last <= n):
        raise ConfigError(f"{name}[{rows}] is out of range: it has {n} vector{'s' * (n != 1)}, [0] to [{n - 1}] "
                          f"([-1] the last); e.g. [0:{n}] takes them all")
    if first >= last:
        raise ConfigError(f"{name}[{rows}] takes no vectors (of its {n}); e.g. [0:{n}] takes them all")
    return LearnedEmbedding(emb.token, {enc: t[first:last] for enc, t in emb.vectors.items()}, emb.metadata)


def word_embedding(model: Model, words: str) -> LearnedEmbedding:
    """The vectors of `words` in `model` (`models.Model`): each token's row of each text encoder's token-embedding
    table, one vector per token, in order. Each word must be one token of the vocabulary (TokenError naming the
    pieces it is read as otherwise: a misspelt word's pieces mean nothing).

    >>> word_embedding(load_model("shapes"), "red star").num_vectors   # doctest: +SKIP
    2
    """
    vectors = {}
    for name, tokenizer, encoder in model.encoders:
        ids = tokenizer(words, add_special_tokens=False).input_ids
        table = base_embedding(encoder).weight
        markers = {tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id} - {None}
        if not ids or markers.intersection(ids) or max(ids) >= table.shape[0]:
            raise TokenError(f"'{words}' has no vectors in {model.source}'s vocabulary (its tokenizer reads it as "
                             f"{tokenizer.convert_ids_to_tokens(ids)}); give plain words, or an embedding's file for "
                             "a learned token")
        split = split_words(tokenizer, ids)
        if split:
            raise TokenError(f"'{words}': {model.source}'s vocabulary does not know {', '.join(split)} as a word, so "
                             "it would be read as those pieces' vectors; check the spelling, or give a word it knows")
        vectors[name] = table[ids].detach()
    source = str(shareable_name(model.source)[0])
    return LearnedEmbedding(words, vectors, {"base_model": source, "family": model.family,
                                             "prediction_type": model.prediction_type})


def merge_embeddings(terms: list, token: str, recipe: str | None = None) -> LearnedEmbedding:
    """A new embedding `token` from plain objects: `terms` is a list of terms laid one after another, each a list of
    (LearnedEmbedding, weight) pairs summed vector by vector (an embedding alone means weight 1). Parts are named
    in errors by their tokens; `recipe` (default: written from them) is recorded as "merged_from".

    >>> dog, cat = load_embedding("dog.pt"), load_embedding("cat.pt")              # doctest: +SKIP
    >>> merge_embeddings([[(dog, 0.7), (cat, 0.3)], [take(dog, "0:1")]], "<mix>").num_vectors   # doctest: +SKIP
    2
    """
    for term in terms:
        if not isinstance(term, (list, tuple)):
            raise ConfigError(f"a term is a list of parts, got {type(term).__name__}; e.g. [[(dog, 0.7), (cat, 0.3)], "
                              "[style]] (one list per term, even of one part)")
    labelled = [[(f"{emb.token}" + (f"*{w:.15g}" if w != 1 else ""), emb, w) for emb, w in map(_pair, term)]
                for term in terms]
    for label, _, w in (part for term in labelled for part in term):
        if not math.isfinite(w):
            raise ConfigError(f"{label}: a weight is a finite number, got {w}")
    return _merged(labelled, token, recipe or _recipe([[label for label, _, _ in term] for term in labelled]))


def _pair(part) -> tuple[LearnedEmbedding, float]:
    """A part of `merge_embeddings`' terms as (embedding, weight): an embedding alone has weight 1."""
    if isinstance(part, LearnedEmbedding):
        return part, 1.0
    if (isinstance(part, (list, tuple)) and len(part) == 2 and isinstance(part[0], LearnedEmbedding)
            and isinstance(part[1], numbers.Real) and not isinstance(part[1], bool)):
        return part[0], float(part[1])
    raise ConfigError(f"a part is a LearnedEmbedding or (LearnedEmbedding, weight), got {type(part).__name__}; "
                      "e.g. (dog, 0.7), the weight a number")


@warns_at_caller  # (its warnings name the user's line: `errors.warn`)
def merge(config: MergeConfig, model: Model | None = None) -> MergeResult:
    """`textinv merge`: read every part `config.terms` names, check they fit one another (one family, sums of one
    vector count, slices in range) and write the new embedding to `config.out`, all checks before anything is
    written. `model` (a loaded `models.Model`): the one words are read from, in place of loading `config.model`.

    >>> merge(MergeConfig(out="mix.pt", token="<mix>", terms=["dog.pt*0.5 + cat.pt*0.5"])).files  # doctest: +SKIP
    [PosixPath('/.../mix.pt')]
    """
    # 1. Check the settings, read every file and check what they tell before loading anything: a model takes
    #    seconds to minutes to load
    check_config_object(config, MergeConfig)
    check_model_object(model)
    config = copy.copy(config).validate()  # (a copy: the caller's config stays as given, Paths and all)
    terms = [parse_term(term) for term in config.terms]
    words = [part for term in terms for part in term if part.words]
    if words and model is None and not config.model:
        raise ConfigError(f"the part {words[0]} is words, read from a model's vocabulary: give the model with "
                          f"{setting('model')} (the one the embeddings are for), or use embedding files only")
    files = _read_files(terms)
    _check_files(terms, files, config, model)
    if model is None and config.model:
        model = load_model(config.model, revision=config.revision, variant=config.variant)
    # 2. Read the words, check the parts and make the embedding.
    labelled = _read_parts(terms, files, model)
    if model is not None:
        labelled = [[(label, _as_drawn(emb, model), w) for label, emb, w in term] for term in labelled]
        _check_fits_model([(label, emb) for term in labelled for label, emb, _ in term], model)
    recipe = _recipe([[str(_shared(part)) for part in term] for term in terms])
    emb = _merged(labelled, config.token, recipe)
    if model is not None:
        _check_token_is_new(emb, model)
    # 3. Write (save_embedding refuses an existing file without overwrite, and a format that cannot hold it).
    written = save_embedding(emb, config.out, format_for(config.out, config.to, "text_encoder_2" in emb.vectors),
                             overwrite=config.overwrite)
    norms = None if model is None else {name: word_rows(base_embedding(te).weight.detach(), tok).float().norm(dim=1)
                                        for name, tok, te in model.encoders}
    # (the files absolute, as train's and generate's: found from any working directory; the summary says them as given)
    return MergeResult([Path(absolute(p)) for p in written], emb, summary(emb, written, norms))


def _read_files(terms: list[list[Part]]) -> dict[Part, LearnedEmbedding]:
    """The vectors each part that names a file takes (a file read once, whatever number of parts name it)."""
    read: dict[str, LearnedEmbedding] = {}
    files = {}
    for part in (part for term in terms for part in term if not part.words):
        if part.source not in read:
            read[part.source] = _read_file(part.source)
        files[part] = take(read[part.source], part.take, str(Part(part.source)))
    return files


def _read_file(source: str) -> LearnedEmbedding:
    """A part's embedding file; a bare word that names no file is answered with how words are written."""
    path = Path(source).expanduser()
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        raise FormatError(f"{source}: no such file; a word of the model's vocabulary goes in single quotes, "
                          f"\"'{source}'\", with {setting('model')}")
    return load_embedding(embedding_file(path))


def _check_files(terms: list[list[Part]], files: dict[Part, LearnedEmbedding], config: MergeConfig,
                 model: Model | None) -> None:
    """What the files and settings tell, said before a model loads: a sum of files of different vector counts, or
    of files alone whose weights take its vectors past what a float holds (`_check_finite`), files no model takes
    together (other widths of their first text encoder: an SDXL file's clip_l half is as wide
    as an SD 1.x one's, which an SD 1.x --model takes) and an OUT that cannot hold the merge or whose file is there
    already (`formats.check_writable`), where the files tell its widths: SDXL files with --model give an SD 1.x
    model their clip_l half, so its source tells (`models.source_is_xl`; a hub id's only once it loads)."""
    parts = [(str(part), files[part]) for term in terms for part in term if not part.words]
    labelled = [[(str(part), files[part], part.weight) for part in term if not part.words] for term in terms]
    counts = [_count(term) for term in labelled]
    if len({emb.widths[0] for _, emb in parts}) > 1:
        _check_one_family(parts)
    for term, n, written in zip(labelled, counts, terms):
        if len(term) == len(written):  # (files alone: the sum is known now; words' vectors wait for the model)
            _check_finite(term, _sums(term, n, ("text_encoder",)))  # (the encoder every model takes)
    widths = {emb.widths for _, emb in parts}
    if len(widths) != 1:  # (none, or SDXL's beside SD 1.x's: `_as_drawn` and `_merged` tell)
        return
    widths = widths.pop()
    if len(widths) == 2 and (model is not None or config.model):
        xl = model.is_xl if model is not None else source_is_xl(config.model)
        if xl is None:
            return
        widths = widths if xl else widths[:1]
    check_writable(config.out, format_for(config.out, config.to, len(widths) == 2), config.token, widths,
                   config.overwrite)


def _read_parts(terms: list[list[Part]], files: dict[Part, LearnedEmbedding], model: Model | None
                ) -> list[list[tuple[str, LearnedEmbedding, float]]]:
    """Each part labelled as written, with its vectors (a file's from `files`; words' from `model`, the vectors
    they take) and weight."""
    def vectors(part: Part) -> LearnedEmbedding:
        if not part.words:
            return files[part]
        return take(word_embedding(model, part.source), part.take, str(Part(part.source, True)))

    return [[(str(part), vectors(part), part.weight) for part in term] for term in terms]


def _recipe(terms: list[list[str]]) -> str:
    """How a merge was written, as its file records it: each term in double quotes, as a command line gives it.

    >>> print(_recipe([["a.pt*0.5", "'dog'"], ["b.pt[0:2]"]]))
    "a.pt*0.5 + 'dog'" "b.pt[0:2]"
    """
    return " ".join('"' + " + ".join(parts) + '"' for parts in terms)


def _shared(part: Part) -> Part:
    """`part` as a shared file records it: a local file by its name alone (`models.shareable_name`)."""
    if part.words:
        return part
    return Part(str(shareable_name(part.source, always_local=True)[0]), False, part.take, part.weight)


def _merged(terms: list[list[tuple[str, LearnedEmbedding, float]]], token: str, recipe: str) -> LearnedEmbedding:
    """The embedding `token` of labelled, weighted parts: every check first (one family, sums of one vector count,
    not empty), then each term's sum, laid one after another; a result of more than 75 vectors is warned about."""
    parts = [(label, emb) for term in terms for label, emb, _ in term]
    if not parts:
        raise ConfigError("nothing to merge: give one or more terms, e.g. \"dog.pt*0.5 + cat.pt*0.5\"")
    _check_one_family(parts)
    counts = [_count(term) for term in terms]
    sums = [_sums(term, n, parts[0][1].vectors) for term, n in zip(terms, counts)]
    for term, s in zip(terms, sums):
        _check_finite(term, s)
        _warn_zeros(term, s)
    vectors = {name: torch.cat([s[name] for s in sums]) for name in parts[0][1].vectors}
    total = sum(counts)
    if total > CHUNK:  # as inspect says and generate warns: kept, for ComfyUI and textinv, which split it
        warn(f"the merge {recipe} has {total} vectors, more than the {CHUNK} one pass of the text encoder "
             f"reads: a prompt splits it across chunks read apart, so it may not draw as one token, and the "
             f"A1111 web UI cannot use it; take fewer vectors ([0:{CHUNK}]) to keep it whole", stacklevel=3)
    metadata = {**_agreed([emb.metadata for _, emb in parts]), "token": token, "vectors": str(total),
                "merged_from": recipe, "textinv_version": __version__}
    return LearnedEmbedding(token, vectors, metadata)


def _sums(term: list[tuple[str, LearnedEmbedding, float]], n: int, names) -> dict[str, torch.Tensor]:
    """A term's weighted sum, (n, width) for each text encoder in `names`, a part of one vector added to each."""
    return {name: sum(w * emb.vectors[name].expand(n, -1) for _, emb, w in term) for name in names}


def _check_finite(term: list[tuple[str, LearnedEmbedding, float]], sums: dict[str, torch.Tensor]) -> None:
    """Refuse a term whose sums (`_sums`) hold a vector whose norm is no finite number: a float ends at 3.4e38, so
    *1e38 gave norms of inf (and inf * 0 is nan)."""
    if not all(torch.isfinite(t.norm(dim=1)).all() for t in sums.values()):
        raise ConfigError(f"the term {' + '.join(label for label, _, _ in term)} gives vectors whose norms are no "
                          "finite number: its weights take them past the largest a float holds (3.4e38); give "
                          "smaller weights")


def _warn_zeros(term: list[tuple[str, LearnedEmbedding, float]], sums: dict[str, torch.Tensor]) -> None:
    """Warn of a term whose sum holds a vector of zeros (`a.pt*0.5 + a.pt*-0.5`, `*0`): written, as asked, but in a
    prompt it carries nothing of its parts, only its place's position, and inspect finds no word near it."""
    zeros = sorted({i for t in sums.values() for i in (t.abs().amax(dim=1) == 0).nonzero().flatten().tolist()})
    if zeros:
        warn(f"the term {' + '.join(label for label, _, _ in term)} gives {len(zeros)} vector(s) of zeros "
             f"(its [{', '.join(map(str, zeros))}]): its weights cancel or are 0, so in a prompt it stands for "
             f"nothing of its parts; check the weights", stacklevel=4)


def _check_one_family(parts: list[tuple[str, LearnedEmbedding]]) -> None:
    """Refuse parts whose text encoders or widths differ (an SD 1.x file beside an SD 2.x or SDXL one)."""
    first, emb = parts[0]
    for label, other in parts[1:]:
        if other.widths != emb.widths or set(other.vectors) != set(emb.vectors):
            raise FormatError(f"{label} has width {describe_widths(other.widths)} but {first} has "
                              f"{describe_widths(emb.widths)}: a merge adds and lays side by side vectors of one "
                              f"model family; leave {label} out, or use a version of it made for "
                              f"{describe_widths(emb.widths)}")


def _as_drawn(emb: LearnedEmbedding, model) -> LearnedEmbedding:
    """`emb` as `generate` draws it with `model`: an SDXL embedding's clip_l half on an SD 1.x model, with the same
    warning (`generate.uses_clip_l_half`), its record of SDXL left behind; any other as it is."""
    from .generate import uses_clip_l_half, warn_clip_l_half

    if not uses_clip_l_half(model, emb):
        return emb
    warn_clip_l_half(model, emb, stacklevel=4)
    metadata = {key: value for key, value in emb.metadata.items() if key not in _AGREED}
    return LearnedEmbedding(emb.token, {"text_encoder": emb.vectors["text_encoder"]}, metadata)


def _check_fits_model(parts: list[tuple[str, LearnedEmbedding]], model) -> None:
    """Refuse a part that does not fit `model` (--model: the model the merged embedding is for)."""
    for label, emb in parts:
        if emb.widths != model.widths:
            raise FormatError(f"{label} has width {describe_widths(emb.widths)} but {setting('model', model.source)} "
                              f"has {describe_widths(model.widths)}: give the model the embeddings were made for (it "
                              "is read for words), or leave the part out")


def _check_token_is_new(emb: LearnedEmbedding, model) -> None:
    """Refuse a --token `model`'s tokenizers already read as a word of theirs: generate refuses to load such a file
    (its vectors would take the word's place in every prompt), so it is said before the file is written."""
    clash = token_clash([tokenizer for _, tokenizer, _ in model.encoders], token_names(emb.token, emb.num_vectors))
    if clash is not None:
        name, error = clash
        if error is None:  # (check_new_token's message speaks of training)
            raise TokenError(f"{given('token', emb.token)} cannot be used with {setting('model', model.source)}: its "
                             f"tokenizer has {name!r} already, as a word of its own or a token installed into this "
                             f"model (generate.install_embedding; unload_embeddings takes those out), so a file merged "
                             f"under it is one generate refuses with this model; pick another {setting('token')}")
        raise TokenError(f"{given('token', emb.token)} cannot be used with {setting('model', model.source)}: "
                         f"{error}") from None


def _count(term: list[tuple[str, LearnedEmbedding, float]]) -> int:
    """The vector count of a sum: its parts' common count, a part of one vector being added to each."""
    many = {label: emb.num_vectors for label, emb, _ in term if emb.num_vectors > 1}
    if len(set(many.values())) > 1:
        said = ", ".join(f"{label} {n}" for label, n in many.items())
        n = min(many.values())
        raise ConfigError(f"the sum {' + '.join(label for label, _, _ in term)} adds vector by vector, but its parts "
                          f"have different numbers of vectors ({said}): take as many of each ([0:{n}]), or write "
                          "them as terms of their own, laid one after another")
    return max([1, *many.values()])


def _agreed(metadatas: list[dict[str, str]]) -> dict[str, str]:
    """The `_AGREED` keys every one of `metadatas` that records any of them holds with one value: one that records
    none (a diffusers .bin, which has no place for them; a web UI .pt) tells nothing, so it takes nothing away."""
    said = [m for m in metadatas if any(key in m for key in _AGREED)]
    out = {}
    for key in _AGREED:
        values = {m.get(key) for m in said}
        if len(values) == 1 and None not in values:
            out[key] = values.pop()
    return out


def summary(emb: LearnedEmbedding, files: list[Path], vocab_norms=None) -> dict:
    """`formats.describe`'s summary of the merged embedding, with the files written and a `text` to print: its
    vectors, widths and each vector's norm (beside the vocabulary's words', given `vocab_norms`)."""
    report = {**describe(emb, vocab_norms), "files": [str(f) for f in files]}
    report["text"] = "\n".join([f"wrote {', '.join(report['files'])}",
                                f"token: {emb.token}, {emb.num_vectors} vector{'s' * (emb.num_vectors != 1)}, fits "
                                f"{report['family']}", f"merged from: {emb.metadata['merged_from']}",
                                *encoder_lines(report["encoders"])])
    return report
