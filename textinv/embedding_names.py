"""Embedding files and the names prompts call them by: what `generate` reads for its --embedding entries, and how
a prompt's words find each one, as the A1111 web UI and ComfyUI find them.

An entry is a file, a hub id, a training run's folder or a web UI embeddings folder, whose files the prompts name by
their file names (`embedding_files`); each is read, the two files of a diffusers SDXL pair joined into one embedding
(`_read_embeddings`). The web UI calls an embedding by its file's name as well as by the token stored inside
(`_as_prompted`); ComfyUI by `embedding:NAME` alone, looked up as it looks up a file, a bare word being words
(`_comfy_names`, `_comfy_tokens`, `_comfy_unnamed`). `file_digest` is the hash a picture's record keeps of each entry,
which `--again` checks the files against. None of it needs a model: it is kept apart from the drawing in `generate`
so that `generate`, `xyz` (each --embedding's token as a cell draws it), `again` (the files a picture names) and
`score` (a compared file's name) share one reading of these rules.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from . import emphasis
from .config import GenerateConfig
from .errors import ConfigError, TokenError, setting, warn
from .formats import (PNG_CHUNK, LearnedEmbedding, ModelSpecWarning, diffusers_file, holds_png_embedding,
                      load_embedding, load_embedding_pair, split_bundle)
from .hub import fetch_embedding, hub_reference
from .io import file_sha256
from .run_folder import _nfc, concept_folder, embedding_file, saved_run


# (the web UI reads an embedding picture saved as WebP too: a lossless one keeps the copy in its pixels)
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp")
PICTURE_SUFFIXES = (".png", ".webp")


def embedding_files(entries: list[str], tokens: list[str | None], said: str) -> list[tuple[str, str | None]]:
    """(file, token) for each --embedding. A folder that is not a diffusers run folder (learned_embeds.*) is read as
    the A1111 web UI reads its embeddings folder: each file's name is its token (in its subfolders too), and the
    files named in the prompts (`said`, lowercased) are loaded, the others left alone, each under its name composed
    (NFC, as a prompt is typed, `_named`); a picture that holds no embedding (a preview) is left out. A training
    run's folder gives its embedding (every concept's, for a run of several) whatever format it saved."""
    files: list[tuple[str, str | None]] = []
    for entry, token in zip(entries, tokens):
        folder = Path(entry)
        if not folder.is_dir() or diffusers_file(folder) is not None:
            files.append((entry, token))
            continue
        if (folder / "model_index.json").is_file():  # (its weights' .safetensors would be read as embeddings)
            raise ConfigError(f"{setting('embedding', entry)} is a diffusers model folder (it holds model_index.json), "
                              f"not embeddings: give it as {setting('model')}")
        # a training run's --out (or one concept's folder of it) holds its embedding under the token's name
        # (--format a1111/kohya, SDXL's default sdxl file): its token is the run's, not the file's name
        run = saved_run(folder)
        if run is not None and len(run[1]) > 1:
            if token:
                raise ConfigError(f"{setting('token', token)} renames one embedding; {entry} is a training run of "
                                  f"{len(run[1])} concepts (pass one concept's folder to rename it)")
            for spec in run[1]:
                found = embedding_file(folder / concept_folder(spec["token"]))
                files.append((str(found), None))
            continue
        found = embedding_file(folder)
        if found != folder:
            files.append((str(found), token))
            continue
        if token:
            raise ConfigError(f"{setting('token', token)} renames one embedding file; {entry} is a folder of them, "
                              f"each named by its file name (rename the file instead)")
        named = _named_in_folder(folder, said)
        if not folder_embeddings(folder):
            warn(f"the folder {entry} holds no embedding file ({', '.join(EMBEDDING_SUFFIXES)}, in it or its "
                 f"subfolders): check the --embedding path", stacklevel=3)
        elif not named:
            warn(f"no embedding in the folder {entry} is named in the prompts; a folder's embeddings are "
                 f"written by their file names, as in the A1111 web UI (e.g. 'easynegative' for "
                 f"easynegative.safetensors; under --emphasis comfy as in ComfyUI: 'embedding:easynegative')",
                 stacklevel=3)
        files += [(str(f), _nfc(f.stem)) for f in named]
    return files


def _named_in_folder(folder: Path, said: str) -> list[Path]:
    """The files of a web UI embeddings folder (`folder_embeddings`) that the prompts (`said`) name by their file
    names, but for pictures that hold no embedding (previews, which the web UI leaves out); a name of several words,
    which the web UI reads, is refused, naming the file to rename."""
    named = [f for f in folder_embeddings(folder) if _named(f.stem, said)]
    spaced = next((f for f in named if len(f.stem.split()) > 1), None)
    if spaced is not None:  # (the web UI reads a name of several words; a learned token here is one)
        underscored = "_".join(spaced.stem.split())
        raise ConfigError(f"{spaced}: the prompt calls it by its file's name, as the web UI does, but a learned "
                          f"token is one word without spaces: rename the file ({underscored}{spaced.suffix}) and "
                          f"write {underscored} in the prompt")
    for picture in [f for f in named if f.suffix.lower() in PICTURE_SUFFIXES and not holds_png_embedding(f)]:
        named.remove(picture)  # (a preview picture: the web UI leaves it out, as it holds no embedding)
        if not any(_nfc(f.stem) == _nfc(picture.stem) for f in named):
            warn(f"left out {picture}: a picture without an embedding (no {PNG_CHUNK!r} text chunk, none hidden "
                 f"in its pixels: a preview), so {picture.stem!r} is read as words", stacklevel=4)
    return named


def folder_embeddings(folder: Path) -> list[Path]:
    """The embedding files in `folder` and its subfolders, as the web UI walks its embeddings folder (where
    embeddings/negative/easyneg.pt is called easyneg)."""
    return [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in EMBEDDING_SUFFIXES and f.is_file()]


def file_digest(path: str) -> str | None:
    """The SHA-256 of an embedding file (kilobytes: instant), which a picture records so that `--again` can tell a
    file retrained or replaced at the same path. A training run's folder (or a diffusers output folder) gives its
    embedding file's, so a run retrained since is told as its file is; None for a folder of several embeddings (the
    web UI's embeddings folder, a run of several concepts). A hub id gives its file's in the cache, as it was read;
    `FILE::NAME`, one a LoRA bundles, its LoRA file's (which holds its vectors)."""
    path = split_bundle(path)[0]
    reference = hub_reference(path)
    if reference is not None:
        return file_sha256(fetch_embedding(*reference))
    path = Path(path).expanduser()
    if path.is_dir():
        try:
            path = embedding_file(path)
        except ConfigError:  # (a run of several concepts: no one file)
            return None
        if path.is_dir():  # (a diffusers folder: its learned_embeds file, as load_embedding reads it)
            path = diffusers_file(path) or path
    return file_sha256(path) if path.is_file() else None


def _read_embeddings(files: list[tuple[str, str | None]]) -> tuple[list[LearnedEmbedding], list[str]]:
    """Each (file, token) read, and the two halves of one SDXL embedding joined (`_join_sdxl_halves`), with their
    labels. Each half's modelspec says SDXL, which its vectors alone contradict: the `ModelSpecWarning` that reading
    it gives is passed on only for a half whose other half was not given."""
    read, heard = [], []
    for path, token in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            read.append(load_embedding(path, token=token))
        heard.append(caught)
    embeddings, labels = _join_sdxl_halves(read, [path for path, _ in files])
    whole = {emb.token for emb in embeddings if len(emb.widths) == 2}
    for emb, caught in zip(read, heard):
        for w in caught:
            if not (issubclass(w.category, ModelSpecWarning) and len(emb.widths) == 1 and emb.token in whole):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return embeddings, labels


def _join_sdxl_halves(embeddings: list[LearnedEmbedding], paths: list) -> tuple[list[LearnedEmbedding], list[str]]:
    """diffusers' SDXL example keeps one token as two files, one per text encoder. Given both as --embedding (same
    token, two widths), they are one SDXL embedding, the narrower half the first encoder's (768 and 1280). A half
    given beside the pair it was already read with (learned_embeds.safetensors finds learned_embeds_2 beside
    it), or the pair's other file (which finds it again), is dropped."""
    out, labels, used = [], [], set()
    for i, emb in enumerate(embeddings):
        if i in used:
            continue
        label = str(paths[i])
        for j in range(i + 1, len(embeddings)):
            other = embeddings[j]
            if j in used or other.token != emb.token:
                continue
            if len(emb.widths) == len(other.widths) == 1 and emb.widths != other.widths:
                emb = load_embedding_pair(paths[i], paths[j], token=emb.token)  # (it puts the narrower first)
                label = f"{paths[i]} + {paths[j]}"
                used.add(j)
            elif _half_of(other, emb) or _one_pair(paths[i], paths[j], emb, other):
                used.add(j)
            elif _half_of(emb, other):
                emb, label = other, str(paths[j])
                used.add(j)
        out.append(emb)
        labels.append(label)
    return out, labels


def _one_pair(path1, path2, emb1: LearnedEmbedding, emb2: LearnedEmbedding) -> bool:
    """Whether two entries, each read as a whole SDXL embedding, are one diffusers pair's two files (each finds the
    other beside it: `formats.second_file`)."""
    from .formats import _resolve, second_file

    if len(emb1.widths) != 2 or len(emb2.widths) != 2:
        return False
    file1, file2 = _resolve(path1), _resolve(path2)
    return second_file(file1) == file2 or second_file(file2) == file1


def _half_of(half: LearnedEmbedding, whole: LearnedEmbedding) -> bool:
    return len(half.widths) == 1 and len(whole.widths) == 2 and any(
        torch.equal(half.vectors["text_encoder"], v) for v in whole.vectors.values())


def _comfy_names(config: GenerateConfig, embeddings: list[LearnedEmbedding], paths: list[str], renamed: set[str]
                 ) -> tuple[list[str], str, str | None, str | None, str | None, str | None, str]:
    """The prompts (and the negative one, the hires fix's two and SDXL's CLIP-L two (None: not given), and all of
    them lowercased) with
    ComfyUI's `embedding:NAME` written as the token of the embedding whose file (or token) has that name, so the name
    draws the embedding even where it is a word (`embedding:dog` for dog.safetensors holding `<dog>`). A name that
    no embedding answers to is refused. Each embedding named by a prompt's own words under its file's name
    (`_as_prompted`) as the web UI calls it, but under --emphasis comfy, where a bare word is words, as in ComfyUI
    (`_comfy_unnamed` then leaves out an embedding that no `embedding:NAME` names), and each embedding is drawn
    under the token `embedding:NAME` alone, its names looked up as ComfyUI looks up a file (`_comfy_tokens`)."""
    texts = config.prompt + [config.negative_prompt] + [text or "" for text in _optional_prompts(config)]
    if config.emphasis == "comfy":
        written = list(dict.fromkeys(name for p in texts for name in emphasis.comfy_embeddings(p, whole=True)[1]))
        token = _comfy_tokens(embeddings, paths, written, config.embedding)  # (renames them: once)
        texts = [emphasis.comfy_embeddings(p, token, whole=True)[0] for p in texts]
    else:
        plain = " ".join(emphasis.comfy_embeddings(p, lambda name: "")[0] for p in texts).lower()
        embeddings[:] = [emb if path in renamed else _as_prompted(emb, _file_name(path), plain)
                         for emb, path in zip(embeddings, paths)]
        token = _webui_tokens(embeddings, paths)
        texts = [emphasis.comfy_embeddings(p, token)[0] for p in texts]
    given = _optional_prompts(config)
    return (texts[:-5], texts[-5], *[None if g is None else t for g, t in zip(given, texts[-4:])],
            " ".join(texts).lower())


def _webui_tokens(embeddings: list[LearnedEmbedding], paths: list[str]) -> Callable[[str], str]:
    """What a prompt's `embedding:NAME` (its name alone) is written as outside --emphasis comfy: the token of the
    embedding whose token or file's name is NAME, ignoring case, as the web UI reads a name."""
    tokens = {}
    for emb, path in zip(embeddings, paths):
        tokens.setdefault(emb.token.lower(), emb.token)
        tokens.setdefault(_nfc(_file_name(path)).lower(), emb.token)  # (in one Unicode form: `_named`)

    def token(name: str) -> str:  # (a name from the prompts, composed already)
        if name.lower() not in tokens:
            raise ConfigError(_NAMES_NONE.format(name=name))
        return tokens[name.lower()]

    return token


_NAMES_NONE = ("embedding:{name} in the prompt names no embedding given: pass its file with --embedding (or the "
               "folder that holds it, as ComfyUI's models/embeddings)")


def _comfy_tokens(embeddings: list[LearnedEmbedding], paths: list[str], written: list[str], entries: list[str]
                  ) -> Callable[[str], str]:
    """For --emphasis comfy: what a prompt's `embedding:NAME`, as written (folder and suffix too), is written as: the
    token of the embedding it finds (`_comfy_found`), each embedding renamed `embedding:NAME` (`_comfy_token`), so
    that only a prompt's `embedding:NAME` draws it and the token its file stores, written bare, is words, as in
    ComfyUI (the pictures record the prompt so, which draws alike again). `written`: every NAME the prompts write.
    An embedding that no NAME finds (a folder's case twin of the one found: `easyneg.pt` beside `EasyNeg.pt`) is
    left out of `embeddings` and `paths`, with a warning for a file given itself (`entries`: the --embedding)."""
    found = {name: _comfy_found(name, embeddings, paths, entries) for name in written}
    kept = sorted(set(found.values()))
    for i, path in enumerate(paths):
        if i not in kept and path in entries:
            warn(f"{path} is left out: no embedding:NAME in the prompts finds it by its file's exact name, as ComfyUI "
                 f"(on Linux) finds a file; write embedding:{_nfc(_file_name(path))} where the concept goes",
                 stacklevel=4)
    tokens: dict[int, str] = {}
    for i in kept:
        tokens[i] = _comfy_token(i, embeddings, paths, entries, [n for n, at in found.items() if at == i],
                                 {t.lower() for t in tokens.values()})
    embeddings[:] = [LearnedEmbedding(tokens[i], embeddings[i].vectors, embeddings[i].metadata) for i in kept]
    paths[:] = [paths[i] for i in kept]
    return lambda name: tokens[found[name]]


def _comfy_token(i: int, embeddings: list[LearnedEmbedding], paths: list[str], entries: list[str],
                 written: list[str], taken: set[str]) -> str:
    """The token `embedding:NAME` embedding `i` is installed under (comfy mode): NAME its file's name (`_file_name`),
    else the first of its file's other names and the names the prompts find it by (`written`) that finds it and no
    other file (`_comfy_found`) and differs, ignoring case as the text encoders' tokenizers read it, from the tokens
    `taken` (lowercased): of case twins `easyneg.pt` and `EasyNeg.pt` one is `embedding:EasyNeg.pt`."""
    names = [_nfc(_file_name(paths[i]))] + sorted(_comfy_file_names(paths[i]), key=len) + written
    names = list(dict.fromkeys(names))
    for name in names:
        if f"{COMFY_TOKEN}{name}".lower() in taken:
            continue
        with contextlib.suppress(ConfigError, TokenError):
            if _comfy_found(name, embeddings, paths, entries) == i:
                return f"{COMFY_TOKEN}{name}"
    raise TokenError(f"{paths[i]}: every name that finds it in a prompt (embedding:{', embedding:'.join(names)}) "
                     f"is, ignoring case as the text encoders' tokenizers read a prompt, another embedding's "
                     f"given beside it; rename the file")


def _comfy_found(written: str, embeddings: list[LearnedEmbedding], paths: list[str], entries: list[str]) -> int:
    """The embedding (its place in `embeddings`) a prompt's `embedding:NAME` (`written`, folder and suffix too)
    finds: the one whose file ComfyUI on Linux finds by that name, case and all (`_comfy_file_names`), else the one
    whose stored token (or --token) it is, ignoring case as tokens are read. ComfyUI (comfy/sd1_clip.py, load_embed)
    joins NAME to each of its embeddings folders and their subfolders in turn and takes the first file found, the
    name as written, else it with .safetensors, .pt, .bin added: so a subfolder written before the name
    (`embedding:style/easyneg`) tells two files of one name apart, and in one folder the file of the name as written
    comes first, then those suffixes in that order. It turns the folders in no fixed order (a set), so a name two
    folders hold is refused, naming both (`_comfy_twins`); so is one that finds a file only ignoring case, which
    ComfyUI draws without, warning."""
    *folders, base = re.split(r"[\\/]", written)
    found = [i for i, path in enumerate(paths) if base in _comfy_file_names(path)]
    if len(found) > 1 and folders:
        found = [i for i in found if list(Path(paths[i]).parent.parts[-len(folders):]) == folders] or found
    if len(found) > 1 and all(Path(paths[i]).is_file() for i in found) \
            and len({Path(paths[i]).resolve().parent for i in found}) == 1:
        found = [min(found, key=lambda i: _COMFY_ORDER.index(Path(paths[i]).name[len(base):]))]
    if len(found) > 1:
        raise _comfy_twins(written, base, [paths[i] for i in found], entries)
    if found:
        return found[0]
    stored = next((i for i, emb in enumerate(embeddings) if not emb.token.startswith(COMFY_TOKEN)
                   and emb.token.lower() == emphasis.comfy_name(base).lower()), None)
    if stored is not None:
        return stored
    for path in paths:
        if base.lower() in _comfy_file_names(path, any_case=True):
            right = min(_comfy_file_names(path), key=len)
            raise ConfigError(f"embedding:{written} in the prompt names {path} only ignoring case: ComfyUI (on "
                              f"Linux) finds an embedding by its file's exact name, and draws without it "
                              f"where none is; write embedding:{right}, or rename the file")
    raise ConfigError(_NAMES_NONE.format(name=written))


def _comfy_twins(written: str, base: str, files: list[str], entries: list[str]) -> TokenError:
    """The error for an `embedding:NAME` that finds `files` in several folders (`_comfy_found`), with the subfolder
    that finds one of them from its --embedding folder (`entries`) where one is in a subfolder of it."""
    apart = [f"embedding:{Path(file).relative_to(entry).parent.as_posix()}/{base}" for file in files
             for entry in entries if Path(entry).is_dir() and Path(file).is_relative_to(entry)
             and Path(file).relative_to(entry).parent != Path(".")]
    subfolder = f"write the subfolder that tells them apart ({apart[0]}), " if apart else ""
    return TokenError(f"embedding:{written} in the prompt finds {'both ' * (len(files) == 2)}{' and '.join(files)}: "
                      f"ComfyUI looks a name up in each of its embeddings folders and their subfolders, in no fixed "
                      f"order, so which one it draws is not knowable; {subfolder}give --embedding only the one meant, "
                      f"or rename one of the files")


_COMFY_SUFFIXES = (".safetensors", ".pt", ".bin")  # (what ComfyUI adds to an embedding:NAME, in lower case)
_COMFY_ORDER = ("",) + _COMFY_SUFFIXES  # (the order ComfyUI tries them in one folder: the name as written first)


def _comfy_file_names(label: str, any_case: bool = False) -> set[str]:
    """The names after `embedding:` that find the file of the embedding `label` as ComfyUI on Linux finds it
    (comfy/sd1_clip.py, load_embed): the file's own name, or it less .safetensors, .pt or .bin, which it tries
    adding (`x.PT` is found by `embedding:x.PT` alone); a hub id, a folder or a LoRA's bundled embedding by its
    name (`_file_name`), as ComfyUI has none of them. `any_case`: the names that find it ignoring case, lowercased.

    >>> _comfy_file_names("sd-concepts-library/cat-toy")
    {'cat-toy'}
    """
    if split_bundle(label)[1] is not None or not Path(label).is_file():
        names = {_nfc(_file_name(label))}
    else:
        whole = _nfc(Path(label).name).lower() if any_case else _nfc(Path(label).name)
        names = {whole} | {whole[:-len(suffix)] for suffix in _COMFY_SUFFIXES if whole.endswith(suffix)}
    return {name.lower() for name in names} if any_case else names


def _optional_prompts(config: GenerateConfig) -> list[str | None]:
    """The hires fix's prompt and negative prompt and SDXL's CLIP-L prompt and negative prompt (None: not given)."""
    return [config.hires_prompt, config.hires_negative_prompt, config.prompt_l, config.negative_prompt_l]


def _comfy_folder_tokens(files: list[tuple[str, str | None]], entries: list[str]) -> list[tuple[str, str | None]]:
    """`embedding_files`' (file, token) pairs with an embeddings folder's files (no entries themselves, each under
    its file's name) under the token `embedding:NAME`, for --emphasis comfy: a prompt's `embedding:NAME` is written
    as it (`_comfy_names`), so the name alone is words, as in ComfyUI, and the pictures record the prompt as written,
    which draws alike again."""
    return [(path, f"{COMFY_TOKEN}{tok}" if path not in entries and tok == _nfc(Path(path).stem) else tok)
            for path, tok in files]


COMFY_TOKEN = "embedding:"  # (what an embedding is installed under, before its name: comfy mode, `_comfy_tokens`)
# the record's mark of a picture drawn under --emphasis comfy where an embedding's token written bare is words, as in
# ComfyUI (`_comfy_tokens`); a comfy picture without it drew the embedding there (`again._name_bare_tokens`)
COMFY_BARE_TOKENS = "comfy_bare_tokens"


def _comfy_unnamed(embeddings: list[LearnedEmbedding], paths: list[str], prompts: list[str]
                   ) -> tuple[list[LearnedEmbedding], list[str]]:
    """The embeddings and their labels less those the `prompts` (as given) do not name as --emphasis comfy reads
    them: by `embedding:NAME` (its file's name or its token), as ComfyUI does. A file's name or the token it stores
    (or --token gives), written as a bare word, is words there, as in ComfyUI (`_comfy_tokens`): an embedding that
    no `embedding:NAME` names is left out, and a warning names the fix, once a file; so does one for a token written
    bare beside its `embedding:NAME`, which drew the embedding before it was words here."""
    named = {_nfc(name).lower() for p in prompts for name in emphasis.comfy_embeddings(p)[1]}
    bare = " ".join(emphasis.comfy_embeddings(p, lambda name: "")[0] for p in prompts).lower()
    kept, labels = [], []
    for emb, path in zip(embeddings, paths):
        name = _nfc(_file_name(path))
        wanted = bool({name.lower(), emb.token.lower()} & named)
        token_bare = not emb.token.startswith(COMFY_TOKEN) and _named(emb.token, bare)  # (it drew the embedding)
        if token_bare or not wanted:
            word = emb.token if token_bare else name
            said = (f"the prompt writes {word!r} as a bare word, which --emphasis comfy reads as words, as ComfyUI "
                    f"does" if token_bare or _named(name, bare) else "no --prompt or --negative-prompt names it")
            left = "" if wanted else " is left out"
            warn(f"{path}{left}: {said}; write embedding:{name} where the concept goes", stacklevel=3)
        if wanted:
            kept.append(emb)
            labels.append(path)
    return kept, labels


def _named(name: str, said: str) -> bool:
    """Whether the prompts (`said`, lowercased, composed as `generate._generate` takes them) write `name` as a word
    of its own, not inside another word. The name is composed too (`run_folder.same_names`): a file named café on
    macOS keeps the accent apart (NFD)."""
    return re.search(rf"(?<![\w<-]){re.escape(_nfc(name).lower())}(?![\w>-])", said) is not None


def _file_name(label: str) -> str:
    """The name an --embedding answers to as a file, as the web UIs call one by its file's name: the file's name
    without its suffix; for a hub id, its repo's name (`sd-concepts-library/cat-toy`: cat-toy, dots and all), or the
    named file's in it.

    >>> _file_name("embeds/charturner.pt"), _file_name("me/Teal.Star-v1"), _file_name("me/x/style.safetensors")
    ('charturner', 'Teal.Star-v1', 'style')
    """
    if split_bundle(label)[1] is not None:  # (FILE::NAME: the web UI calls a LoRA's bundled embedding by its NAME)
        return split_bundle(label)[1]
    found = hub_reference(label)
    if found is not None:
        return Path(found[1]).stem if found[1] else found[0].split("/")[1]
    return Path(label).stem


def _as_prompted(emb: LearnedEmbedding, name: str, said: str) -> LearnedEmbedding:
    """`emb` under its file's name when the prompts use that name and not the token stored inside: the A1111 web
    UI and ComfyUI call an embedding by its file name (a downloaded charturnerv2.pt whose record says
    "charturner"), diffusers and textinv by the stored token. Either name in a prompt draws it; left as stored, the
    added token would match inside the file's name ("charturner" + a stray "v2"). The name is taken composed (NFC),
    as a prompt is typed, whatever form the disk keeps it in (`_named`). `name`: its file's (`_file_name`)."""
    stem = _nfc(name)
    if stem == emb.token or not stem.strip() or _named(emb.token, said) or not _named(stem, said):
        return emb
    return LearnedEmbedding(stem, emb.vectors, {**emb.metadata, "token": stem} if "token" in emb.metadata
                            else emb.metadata)
