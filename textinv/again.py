"""`textinv generate --again PICTURE`: draw a picture again from the settings in its PNG text (or EXIF), as the web
UI's "PNG Info -> send to txt2img" does. Flags given beside it override the picture's settings.

What a picture's text can hold, and how each is read:

- textinv's record (`formats.RECORD_KEY`, JSON): every setting that shapes the picture, paths absolute, and the
  seeds drawn in the same pipeline call. Redrawn in that batch it is the same picture bit for bit on the same
  machine and library versions. Keys a newer textinv added are ignored with a warning (the redraw may differ).
  A picture drawn with `--metadata shareable` names its local files and folders without their paths (its record's
  `by_name` lists those settings): each must be given again as a flag, and each is asked for by it.
- an older textinv's per-key text (prompt, seed, steps, ... without the record): read, with a warning naming what it
  did not record (those settings take their defaults; its paths were written as typed).
- the A1111 web UI's `parameters` text: its prompt, negative prompt, Steps, Sampler (with Schedule type), CFG scale,
  Seed, Size and Clip skip; its TI hashes check the --embedding files given (`_check_ti_hashes`), its Lora hashes
  the LoRA files the prompt's tags find in --lora-dir (`_check_lora_hashes`). The rest (Model,
  Model hash, VAE, Hires fix, ...) cannot be applied and is named in a warning; the model must be given (--model),
  and a sampler textinv does not have must be chosen (--sampler).
  The web UI's JPEG, WebP and AVIF keep the same text in their EXIF UserComment, read alike.

An A1111 embedding PNG (an embedding hidden in a picture's `sd-ti-embedding` text) is no drawn picture: it is refused
with the flag that loads it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import GenerateConfig, build, typed_settings
from .emphasis import lora_tags
from .errors import ConfigError
from .formats import PNG_CHUNK, RECORD_KEY, exif_comment
from .generate import EMBEDDING_SUFFIXES, file_digest, hash_name, lora_files, lora_sha256
from .hub import hub_reference
from .run_folder import _nfc
from .samplers import from_webui

# what the record holds beside the settings, and the settings a redraw takes from the command, not the picture
_RECORD_EXTRAS = ("textinv_version", "batch_seeds", "settings", "embedding_sha256", "by_name")
_NOT_RECORDED = ("out", "n")
# the per-key text textinv wrote before it wrote the record (0.x): read as settings
_OLD_KEYS = ("prompt", "negative_prompt", "seed", "steps", "sampler", "guidance", "size", "clip_skip", "model",
             "embeddings")
_A1111_USED = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "TI hashes",
               "Lora hashes")


@dataclass
class Picture:
    """The settings read from a picture's text, as `GenerateConfig` fields."""

    path: Path
    origin: str  # "textinv" or "a1111"
    settings: dict[str, Any]
    batch_seeds: list[int] = field(default_factory=list)  # the seeds drawn in its pipeline call (textinv's record)
    version: str | None = None  # the textinv that drew it
    digests: list = field(default_factory=list)  # each --embedding file's SHA-256 when drawn (None: a folder)
    needs: dict[str, str] = field(default_factory=dict)  # setting -> why it must be given beside --again
    by_name: list[str] = field(default_factory=list)  # settings recorded by name, not path (--metadata shareable)
    notes: list[str] = field(default_factory=list)  # warnings, said once what must be given is there
    ti_hashes: dict[str, str] = field(default_factory=dict)  # the web UI's "TI hashes": name -> short SHA-256
    lora_hashes: dict[str, str] = field(default_factory=dict)  # its "Lora hashes": name -> short hash (lora_sha256)


def again_config(path: str | Path, flags: dict[str, Any]) -> tuple[GenerateConfig, set[int] | None]:
    """The settings to draw the picture at `path` again, with `flags` (the command line's settings) over its own, and
    the seeds whose pictures to write (`generate(..., keep_seeds=)`; None: all).

    Without --seed, -n or --batch-size, the picture is drawn in the batch it was drawn in (its record's seeds) and
    only it is written: a batch's kernels round otherwise than one picture's, which can tip a pixel by one level.
    Everything is checked before the model loads.

    >>> config, keep = again_config("renders/000-a-dog-s3.png", {"seed": 5})  # doctest: +SKIP
    >>> config.seed, config.n, keep                                              # doctest: +SKIP
    (5, 1, None)
    """
    picture = read_picture(path)
    for name, why in picture.needs.items():
        if name not in flags:
            raise ConfigError(why)
    _check_paths_given(picture, flags)
    for note in picture.notes:
        warnings.warn(note, stacklevel=2)
    settings = dict(picture.settings)
    recorded = settings.get("embedding", [])
    # the record's --token names are its files'; another count of --embedding is other files (the same count: the
    # same files, moved)
    if "embedding" in flags and "token" not in flags and len(flags["embedding"]) != len(recorded):
        settings.pop("token", None)
    _check_still_there(picture, settings, flags)
    _check_unchanged(picture, flags.get("embedding", settings.get("embedding", [])))
    _check_ti_hashes(picture, flags.get("embedding", []), flags.get("token", []))
    _check_lora_hashes(picture, flags.get("prompt", settings.get("prompt", [])), flags.get("lora_dir", []))
    keep = None
    settings["n"] = 1
    seed, batch = settings.get("seed"), picture.batch_seeds
    if not {"seed", "n", "batch_size"} & set(flags) and len(batch) > 1 and seed in batch:
        settings.update(seed=batch[0], n=len(batch), batch_size=len(batch))
        keep = {seed}
    if picture.origin == "textinv" and picture.version != __version__:
        warnings.warn(f"{picture.path} was drawn by textinv {picture.version or '(unknown version)'}, this is "
                      f"{__version__}: the redraw may differ from it", stacklevel=2)
    return build(GenerateConfig, settings, flags), keep


def read_picture(path: str | Path) -> Picture:
    """The settings in a picture's PNG text: textinv's record, else an older textinv's per-key text, else the A1111 web
    UI's `parameters`; else the web UI's text in its EXIF UserComment (how it saves a JPEG, WebP or AVIF). A file
    without any of them, an A1111 embedding PNG, and a file that is no picture are refused."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--again {path}: no such file; give a picture that textinv or the web UI drew")
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", None) or {})
            comment = exif_comment(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ConfigError(f"--again {path}: cannot read it as a picture ({e})") from None
    if PNG_CHUNK in text:
        raise ConfigError(f"--again {path} is an A1111 embedding (an embedding kept in a picture's {PNG_CHUNK!r} "
                          f"text), not a drawn picture's settings: load it with --embedding {path}")
    # the PNG's text first: it is what textinv and the web UI write there (an EXIF beside it may be a camera's)
    if RECORD_KEY in text:
        return _from_record(path, text[RECORD_KEY])
    if "textinv_version" in text and "prompt" in text:
        return _from_old_keys(path, text)
    if "parameters" in text:
        return _from_a1111(path, text["parameters"])
    parameters = web_ui_parameters(comment)
    if parameters:
        return _from_a1111(path, parameters)
    comment = decode_user_comment(comment) if comment is not None else ""
    if comment:  # a camera's or an editor's comment: no "Steps: .., Seed: .." line
        shown = comment if len(comment) <= 60 else comment[:57] + "..."
        raise ConfigError(f"--again {path}: its EXIF UserComment {shown!r} is not the web UI's generation "
                          f"parameters (no 'Steps: ..., Seed: ...' line): give a picture that textinv or the web "
                          f"UI drew")
    raise ConfigError(f"--again {path} holds no generation settings (no textinv record, no A1111 'parameters' text, "
                      f"no EXIF UserComment): give a picture that textinv or the web UI drew, with its metadata kept "
                      f"(some editors and sites remove it, and textinv's --metadata none writes none)")


def web_ui_parameters(comment: bytes | None) -> str | None:
    """The web UI's generation parameters an EXIF UserComment (`formats.exif_comment`) holds, as text; None for no
    comment, padding, or a camera's or an editor's text (no "Steps: ..., Seed: ..." line). What `read_picture` reads,
    and what tells a drawn picture given as an embedding (`formats`) from a photo.

    >>> web_ui_parameters(b"ASCII\\0\\0\\0a cat\\nSteps: 20, Seed: 3, Size: 512x512"), web_ui_parameters(b"\\0" * 16)
    ('a cat\\nSteps: 20, Seed: 3, Size: 512x512', None)
    """
    text = decode_user_comment(comment) if comment is not None else ""
    return text if text and parse_a1111_parameters(text)[2] else None


def decode_user_comment(data: bytes) -> str:
    """An EXIF UserComment as text. Its first 8 bytes name the character code (EXIF 2.3, Table 9): "UNICODE\\0" is
    UTF-16 in a byte order the spec leaves open: the web UI (piexif's "unicode") writes big-endian, other writers
    the file's EXIF byte order, so little-endian too. A byte-order mark decides; else the order in which the text's
    ASCII (the web UI's "Steps: ..." line at least) has its zero byte. "ASCII\\0\\0\\0", an undefined code (eight
    zero bytes) and bytes with no code at all are read as UTF-8, which holds ASCII (some writers put UTF-8 there).

    >>> decode_user_comment(b"UNICODE\\0" + "Steps: 20".encode("utf-16-be"))
    'Steps: 20'
    >>> decode_user_comment(b"UNICODE\\0" + "Steps: 20".encode("utf-16-le"))
    'Steps: 20'
    """
    code, body = data[:8], data[8:]
    if code == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", "replace")  # the mark gives the order (and is dropped)
        else:
            # "S" is 00 53 big-endian, 53 00 little-endian: the zero bytes sit at even offsets in one, odd in the other
            little = body[1::2].count(0) > body[0::2].count(0)
            text = body[:len(body) // 2 * 2].decode("utf-16-le" if little else "utf-16-be", "replace")
    elif code in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", "replace")
    else:  # no code, or JIS (which no web UI writes): the bytes as they are, as the web UI reads them too
        text = data.decode("utf-8", "replace")
    return text.strip("\0 \t\r\n")  # cameras pad the comment with zero bytes or spaces


def _from_record(path: Path, text: str) -> Picture:
    try:
        record = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--again {path}: its {RECORD_KEY!r} text is not JSON ({e}); the file was altered") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ConfigError(f"--again {path}: its {RECORD_KEY!r} text holds no settings; the file was altered")
    fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    version = str(record.get("textinv_version") or "") or None
    # Keys a newer textinv added: refusing would make every newer picture useless here; ignored, they are named,
    # so a redraw that differs is explained (and the version warning says which textinv drew it)
    unknown = [k for k in record if k not in _RECORD_EXTRAS]
    unknown += [k for k in record["settings"] if k not in fields]
    if unknown:
        warnings.warn(f"{path} records settings this textinv ({__version__}) does not know, from textinv "
                      f"{version or '(unknown)'}: {', '.join(map(str, unknown))}; they are ignored, so the redraw may "
                      f"differ (draw it with that textinv for the same picture)", stacklevel=3)
    settings = _typed(path, {k: v for k, v in record["settings"].items() if k in fields and k not in _NOT_RECORDED})
    batch = record.get("batch_seeds")
    batch = [s for s in batch if isinstance(s, int) and not isinstance(s, bool)] if isinstance(batch, list) else []
    digests = record.get("embedding_sha256")
    digests = digests if isinstance(digests, list) else []
    by_name = record.get("by_name")
    by_name = [k for k in by_name if k in settings] if isinstance(by_name, list) else []
    return Picture(path, "textinv", settings, batch, version, digests, by_name=by_name)


def _from_old_keys(path: Path, text: dict[str, str]) -> Picture:
    """A picture from a textinv that wrote each setting under its own key only (no record)."""
    raw = {k: text[k] for k in _OLD_KEYS if k in text}
    if "size" in raw:
        raw["width"], raw["height"] = _size(path, raw.pop("size"), "size")
    embeddings = raw.pop("embeddings", "")
    raw["embedding"] = [e for e in embeddings.split(", ") if e] if embeddings else []
    raw["prompt"] = [raw["prompt"]]
    warnings.warn(f"{path} was drawn by textinv {text['textinv_version']}, which did not record the precision, "
                  f"--vae, --lora-dir, --prediction-type, --single-file-config, --token or --batch-size, and wrote "
                  f"paths as typed (read from here): give any the picture was drawn with as flags", stacklevel=3)
    return Picture(path, "textinv", _typed(path, raw), [], text["textinv_version"])


def _typed(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` as their fields' types, a bad one refused naming the picture."""
    return typed_settings(GenerateConfig, settings, f" in {path}'s text")


# "Key: value" pairs of the web UI's last line; a value may be a quoted JSON string holding commas
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """The web UI's `parameters` text as (prompt, negative prompt, {field: value}), read as its infotext reader
    reads it: the last line holds the fields when at least three "Key: value" pairs are found there; the lines
    before are the prompt, then, from "Negative prompt:", the negative.

    >>> parse_a1111_parameters("a cat\\nNegative prompt: blurry\\nSteps: 20, Seed: 3, Size: 512x768")
    ('a cat', 'blurry', {'Steps': '20', 'Seed': '3', 'Size': '512x768'})
    """
    lines = text.strip().split("\n")
    pairs = _A1111_PAIR.findall(lines[-1])
    if len(pairs) >= 3:
        lines = lines[:-1]
    else:
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:") and not negative:
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    fields = {}
    for key, value in pairs:
        value = value.strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        fields[key.strip()] = value
    return "\n".join(prompt), "\n".join(negative), fields


def _from_a1111(path: Path, text: str) -> Picture:
    prompt, negative, fields = parse_a1111_parameters(text)
    settings: dict[str, Any] = {"prompt": [prompt], "negative_prompt": negative}
    names = {"Steps": "steps", "CFG scale": "guidance", "Seed": "seed", "Clip skip": "clip_skip"}
    for label, name in names.items():
        if label in fields:
            settings[name] = fields[label]
    if "Size" in fields:
        settings["width"], settings["height"] = _size(path, fields["Size"], "Size")
    needs = {}
    model = ", ".join(f"{k} {fields[k]}" for k in ("Model", "Model hash") if fields.get(k))
    needs["model"] = (f"--again {path} was drawn by the A1111 web UI ({model or 'its model is not named'}); textinv "
                      f"cannot find a model by the web UI's name or hash: give it with --model (its file or folder)")
    if "Sampler" in fields:
        ours = from_webui(fields["Sampler"], fields.get("Schedule type"))
        if ours:
            settings["sampler"] = ours
        else:
            name = ", Schedule type ".join(fields[k] for k in ("Sampler", "Schedule type") if fields.get(k))
            needs["sampler"] = (f"--again {path} was drawn with the web UI's sampler {name!r}, which textinv does not "
                                f"have: choose one with --sampler (textinv generate --help lists them), or default")
    unused = [k for k in fields if k not in _A1111_USED]
    notes = []
    if unused:
        notes.append(f"{path}: not applied from its A1111 parameters: {', '.join(unused)} (--model, --embedding and "
                      f"--lora-dir give models, embeddings and LoRAs; Hires fix, face restoration, variation seeds "
                      f"and the like textinv does not do); its samplers and noise are diffusers', so expect a "
                      f"picture close to the web UI's, not the same pixels")
    return Picture(path, "a1111", _typed(path, settings), needs=needs, notes=notes,
                   ti_hashes=parse_webui_hashes(fields.get("TI hashes", "")),
                   lora_hashes=parse_webui_hashes(fields.get("Lora hashes", "")))


def parse_webui_hashes(text: str) -> dict[str, str]:
    """The web UI's "TI hashes" (or "Lora hashes") value as {name: short hash}; `generate.webui_hashes` writes it.

    >>> parse_webui_hashes("easynegative: c74b4e810b03, bad-hands: 0123456789ab")
    {'easynegative': 'c74b4e810b03', 'bad-hands': '0123456789ab'}
    """
    pairs = (item.rpartition(":") for item in str(text).split(","))
    return {name.strip(): short.strip().lower() for name, sep, short in pairs if sep and name.strip() and short.strip()}


def _size(path: Path, text: str, label: str) -> tuple[str, str]:
    width, sep, height = str(text).partition("x")
    if not sep or not width.strip().isdecimal() or not height.strip().isdecimal():
        raise ConfigError(f"--again {path}: its {label} {text!r} is not WIDTHxHEIGHT (e.g. 512x768)")
    return width.strip(), height.strip()


def _check_unchanged(picture: Picture, files: list[str]) -> None:
    """Warn of an embedding file whose bytes are not those the picture was drawn with (retrained or replaced at the
    same path, or another file given for it): the redraw then draws other vectors. Given anew (--embedding), the
    files are compared in order when their count is the record's, as the moved files they usually are."""
    if len(files) != len(picture.digests):
        return
    changed = [f for f, old in zip(files, picture.digests)
               if isinstance(old, str) and file_digest(f) not in (None, old)]  # (a run's folder: its file's)
    if changed:
        warnings.warn(f"{picture.path} was drawn with other contents of {', '.join(changed)} (the file was retrained "
                      f"or replaced since): the redraw uses the file as it is now, so it will differ", stacklevel=3)


def _check_ti_hashes(picture: Picture, files: list[str], tokens: list[str]) -> None:
    """Warn of an --embedding file that is not the one a web UI picture names: its "TI hashes" give each embedding's
    name and the first digits of its file's SHA-256 (`generate.webui_hashes`). A file whose SHA-256 begins with one
    of them is that embedding, whatever its name; one named as an embedding there (its file name, or its --token; in
    a folder given, the files so named) whose SHA-256 does not is another file or version. The embeddings no file
    given answers to are named too: without them the prompt reads their names as words. Names are compared in one
    Unicode form (`run_folder.same_names`): a file copied from macOS keeps café's accent apart (NFD)."""
    if not picture.ti_hashes:
        return
    wanted = {_nfc(name).lower(): (name, short) for name, short in picture.ti_hashes.items()}
    given: list[tuple[str, Path]] = []  # (the name it answers to, the file)
    for i, entry in enumerate(files):
        path = Path(entry).expanduser()
        if path.is_dir():
            given += [(_nfc(f.stem), f) for f in sorted(path.iterdir())
                      if _nfc(f.stem).lower() in wanted and f.suffix.lower() in EMBEDDING_SUFFIXES and f.is_file()]
        elif path.is_file():
            given.append((_nfc(tokens[i] if i < len(tokens) and tokens[i] else path.stem), path))
    found, other = set(), []
    for name, file in given:
        digest = file_digest(str(file))
        same = [key for key, (_, short) in wanted.items() if digest.startswith(short)]
        found.update(same)
        if not same and name.lower() in wanted:
            found.add(name.lower())
            other.append(f"{file} (its SHA-256 begins {digest[:12]}; the picture's {wanted[name.lower()][0]} "
                         f"{wanted[name.lower()][1]})")
    if other:
        warnings.warn(f"{picture.path} was drawn with other embedding files than " + ", ".join(other) + " (its TI "
                      "hashes): another file or version of the embedding, so the redraw will differ", stacklevel=3)
    missing = [name for key, (name, _) in wanted.items() if key not in found]
    if missing:
        warnings.warn(f"{picture.path} was drawn with the embeddings {', '.join(missing)} (its TI hashes), which no "
                      f"--embedding given is: pass their files (or the web UI's embeddings folder), or the prompt "
                      f"reads their names as words", stacklevel=3)


def _check_lora_hashes(picture: Picture, prompts: list[str], folders: list[str]) -> None:
    """Warn of a LoRA file that is not the one a web UI picture names: its "Lora hashes" give each LoRA's name and the
    first digits of the hash the web UI gives it (`generate.lora_sha256`); the file each `<lora:...>` tag of the
    prompts finds in --lora-dir (found as generate finds it) is checked against the hash under its name. Without
    --lora-dir, or with a tag that finds no file, there is nothing to compare: generate refuses that itself."""
    if not picture.lora_hashes or not folders:
        return
    wanted = {name.lower(): short for name, short in picture.lora_hashes.items()}
    tags = [tag for prompt in prompts for tag in lora_tags(prompt)[1] if hash_name(tag.name).lower() in wanted]
    try:
        files = lora_files(tags, folders)
    except ConfigError:  # (said by generate, before the model loads)
        return
    other = []
    for name, file in files.items():
        short, digest = wanted[hash_name(name).lower()], lora_sha256(file)
        if not digest.startswith(short):
            other.append(f"{file} (its hash begins {digest[:12]}; the picture's {name} {short})")
    if other:
        warnings.warn(f"{picture.path} was drawn with other LoRA files than " + ", ".join(other) + " (its Lora "
                      "hashes): another file or version of the LoRA, so the redraw will differ", stacklevel=3)


def _check_paths_given(picture: Picture, flags: dict[str, Any]) -> None:
    """Refuse to redraw a picture drawn with `--metadata shareable` until every file or folder it names without a
    path (`Picture.by_name`) is given as a flag, naming each flag and the name recorded; the LoRA folders count only
    when the prompts name a LoRA. Their names alone are not looked for: a file of the same name is not the same file
    (the embeddings' SHA-256 then tell whether the ones given are, `_check_unchanged`)."""
    prompts = flags.get("prompt", picture.settings.get("prompt", []))
    asks = []
    for name in picture.by_name:
        value = picture.settings.get(name)
        if name in flags or not value or (name == "lora_dir" and not any(lora_tags(p)[1] for p in prompts)):
            continue
        flag = "--" + name.replace("_", "-")
        named = ", ".join(value) if isinstance(value, list) else value
        several = isinstance(value, list) and len(value) > 1
        asks.append(f"{flag} with where {named} {'are (each, in that order)' if several else 'is'}")
    if asks:
        raise ConfigError(f"--again {picture.path} names its files without saying where they are (it was drawn with "
                          f"--metadata shareable, fit to share): pass {'; '.join(asks)}")


def _check_still_there(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Refuse a file or folder the picture's settings name that is gone (moved, deleted), naming the setting, the path
    and the flag that gives where it is now, before anything loads. A model, VAE or config given by name (a hub
    id, a bundled model) is no path here; the LoRA folders count only when the prompts name a LoRA."""
    prompts = flags.get("prompt", settings.get("prompt", []))
    for f in dataclasses.fields(GenerateConfig):
        kind = f.metadata.get("path")
        if not kind or f.name in flags or f.name in _NOT_RECORDED or not settings.get(f.name):
            continue
        if f.name == "lora_dir" and not any(lora_tags(p)[1] for p in prompts):
            continue
        values = settings[f.name] if isinstance(settings[f.name], list) else [settings[f.name]]
        for value in values:
            where = Path(value).expanduser()
            if kind == "source" and not where.is_absolute():  # a hub id or bundled name, or an old relative path
                continue
            if kind == "embedding" and hub_reference(value) is not None:  # (read from the hub, or its cache)
                continue
            if not where.exists():
                flag = "--" + f.name.replace("_", "-")
                every = " (every one: it replaces the picture's list)" if isinstance(settings[f.name], list) else ""
                raise ConfigError(f"--again {picture.path}: its {flag} {value} no longer exists (moved or deleted?); "
                                  f"pass {flag} with where it is now{every}")
