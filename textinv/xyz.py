"""The A1111 web UI's X/Y/Z plot for `textinv generate`: one setting varied along each axis of a grid of pictures.

    textinv generate --prompt "a photo of <dog>" --embedding runs/dog/learned_embeds.safetensors -n 1 \\
        --x "embedding=runs/dog/embeddings/*.safetensors" --y guidance=3,7.5,12

draws the prompt with each of a run's saved embeddings (columns, in training-step order) at each guidance (rows) and
writes `xyz_grid-NNNN.png`, the cells laid out with their labels as the web UI's script lays them out (its
scripts/xyz_grid.py and modules/images.py's image_grid and draw_grid_annotations); with --z one grid per value,
side by side in one picture under each value's label (and each alone too with --xyz-sub-grids).

Each cell is drawn as a `generate` of the settings of the command and the cell's values, on the one model loaded for
the plot: cells alike but for their prompts and seeds (a Prompt S/R, Seed or Var. seed axis) in one run of
`generate_together`, whose pictures share pipeline calls up to --batch-size, as several --prompt of one run do; its
pictures are written as generate writes them (each PNG with its own settings and name, so `--again` draws it again)
and are the plain generate's of those settings bit for bit, as a seed's picture is at any --batch-size. Every cell
draws the same seeds (--seed, and -n pictures from it) unless the seed is an axis, as the web UI keeps one seed; a
cell of several pictures (-n, several --prompt) holds them all, laid out as the web UI lays out a batch
(`_cell_picture`). Everything is checked before the model loads: the axes, their values, the count and the cells'
settings (each as generate checks its own before loading: the files, prompts and pictures they name too).
The grid keeps its first cell's record with the axes, so `--again GRID` draws the whole plot again. A plot stopped
part-way (Ctrl-C, out of memory, a failed write) writes the grid of the cells it finished before it stops, the others
black, as xyz_grid-NNNN-partial.png, which `--again` refuses to take for the whole plot (`_stopped`).

Values are the web UI's: comma-separated (quote a value holding a comma, as CSV), and for numbers ranges: `1-5` (1 to
5), `1-10 (+2)` (by steps of 2), `1-10 [5]` (5 values, evenly spaced; whole numbers cut toward 0).
"""

from __future__ import annotations

import copy
import csv
import difflib
import errno
import glob
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from .config import SAMPLER_SPELLINGS, SAMPLERS, GenerateConfig, random_seed, spelled
from .embedding_names import _as_prompted, _file_name
from .errors import (ConfigError, DeviceMemoryError, TextinvError, given, not_one_of, said_once, setting,
                     warns_at_caller)
from .formats import RECORD_KEY, load_embedding, on_disk, second_file
from .generate import (GenerationInterrupted, _memory_error, _Where, check_refiner_source, checked_settings,
                       _run_suffixes, drawing_dtype, drawing_model, generate_together, launched, make_grid,
                       refiner_model, run_names, together, write_failed)
from .infotext import _infotext_value, _model_name
from .io import absolute, atomic_path, clear_stale_temporaries
from .memory import out_of_memory_as
from .models import interrupt_kept, pick_device
from .run_folder import _nfc, embedding_file
from .report import INK, PAPER, font
from .refine import SPELLINGS as UPSCALER_SPELLINGS, UPSCALERS, network_upscaler
from .samplers import (EVEN_SPACINGS, SAMPLERS_LISTED, SCHEDULES, check_pass, from_webui, scheduler_for,
                       webui_names)

SCRIPT = "X/Y/Z plot"  # (the web UI's script's title, which its grids' text names)
GRID_NAME = "xyz_grid"
PARTIAL = "-partial"  # (the name's end of the grid of a plot stopped part-way: `_stopped`)
PARTIAL_KEY = "xyz_partial"  # (its record's key for the cells it lacks, which `--again` names)
_GRID_FILE = re.compile(rf"{GRID_NAME}-(\d+)(?:{PARTIAL})?\.png")
MAX_MARGIN = 500  # pixels: the web UI's Grid margins slider goes to 500


@dataclass(frozen=True)
class Axis:
    """One kind of axis: textinv's `name`, the web UI's `label` (the legend's and the PNG text's), how its values
    text is read (`read`: the text's comma-separated items to values, refused with the reason), the settings a value
    sets (`apply`: the GenerateConfig fields it replaces, given the cell's config so far and all the axis's values),
    whether the legend shows "label: value" or the value alone (`named`, as the web UI's format_value_add_label or
    format_value), how a value is written there (`show`), and whether it is applied after the other axes (`last`:
    it changes what they set, as a schedule type changes the cell's sampler)."""

    name: str
    label: str
    read: Callable[[list[str], GenerateConfig], list]
    apply: Callable[[object, GenerateConfig, list], dict]
    named: bool = True
    show: Callable[[object], str] = str
    last: bool = False


# --- the values --------------------------------------------------------------------------------------------------

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
# "a-b", "a-b (+s)", "a-b [n]", as the web UI's re_range / re_range_count (its step needs a sign; here it may lack one)
_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\)|\[\s*(\d+)\s*\])?\s*")


def split_values(text: str) -> list[str]:
    """The comma-separated items of an axis's values, stripped, read as CSV as the web UI reads them (a quoted item
    may hold a comma).

    >>> split_values('3, 7.5,"a, b"')
    ['3', '7.5', 'a, b']
    """
    return [item.strip() for row in csv.reader([text], skipinitialspace=True) for item in row]


def numbers(items: list[str], kind: type) -> list:
    """Each item as a number of `kind` (int or float), ranges expanded as the web UI's X/Y/Z plot expands them:
    `1-5` is 1, 2, 3, 4, 5; `1-10 (+3)` is 1, 4, 7, 10; `1-10 [4]` is 4 values evenly spaced from 1 to 10 (for whole
    numbers each cut toward 0, as the web UI's int() of numpy's linspace). The ends are included. Raises ValueError
    saying what is wrong with an item.

    >>> numbers(["1-5", "8"], int), numbers(["1-10 (+3)"], int), numbers(["1-10 [4]"], int), numbers(["2-3 [3]"], float)
    ([1, 2, 3, 4, 5, 8], [1, 4, 7, 10], [1, 4, 7, 10], [2.0, 2.5, 3.0])
    """
    out: list = []
    for item in items:
        match = _RANGE.fullmatch(item)
        if match is None:
            out.append(_number(item, kind))
            continue
        start, end = _number(match[1], kind), _number(match[2], kind)
        if match[4] is not None:  # [count]
            count = _count(item, int(match[4]))
            spaced = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
            out += [int(v) if kind is int else round(v, 8) for v in spaced]
            continue
        step = _number(match[3], kind) if match[3] is not None else 1
        if step == 0:
            raise ValueError(f"{item!r} has a step of 0; give a step that moves from {start} toward {end}")
        count = math.floor((end - start) / step + 1e-9) + 1  # (the end included when a step lands on it)
        if count < 1:
            raise ValueError(f"{item!r} gives no values (a step of {step} never goes from {start} to {end}); "
                             f"turn the range round or give a negative step, e.g. ({-step:+g})")
        _count(item, count)
        out += [start + step * i if kind is int else round(start + step * i, 8) for i in range(count)]
    return out


MOST_VALUES = 10_000  # (a range's; far more than any plot draws, and a typo's 1-1000000000 is not built)


def _count(item: str, count: int) -> int:
    if not 1 <= count <= MOST_VALUES:
        raise ValueError(f"{item!r} gives {count} values; a range gives 1 to {MOST_VALUES}")
    return count


def _number(text: str, kind: type):
    try:
        # (a space only after the sign, as the web UI's ranges allow: "20 30" is a missing comma, not 2030)
        value = kind(re.sub(r"^([+-])\s+", r"\1", text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _numbers(kind: type):
    return lambda items, config: numbers(items, kind)


def _samplers(items: list[str], config: GenerateConfig) -> list[str]:
    names = [spelled(SAMPLER_SPELLINGS, item) for item in items]
    for item, name in zip(items, names):
        if name not in SAMPLERS:
            near = difflib.get_close_matches(item.lower(), SAMPLERS, n=1)
            raise ValueError(f"{item!r} {not_one_of(SAMPLERS, SAMPLERS_LISTED)}"
                             + (f"; did you mean {near[0]!r}?" if near else ""))
    return names


def _sizes(items: list[str], config: GenerateConfig) -> list[tuple[int, int]]:
    sizes = []
    for item in items:
        match = re.fullmatch(r"(\d+)\s*[xX×]\s*(\d+)", item)
        if match is None:
            raise ValueError(f"{item!r} is no size; write width x height, e.g. 512x768")
        sizes.append((int(match[1]), int(match[2])))
    return sizes


def _refiners(items: list[str], config: GenerateConfig) -> list[str | None]:
    """Refiner checkpoint's values: models as --refiner takes them, or None (the web UI's 'None': no refiner)."""
    return [None if item.lower() == "none" else item for item in items]


def _hires_upscalers(items: list[str], config: GenerateConfig) -> list[str]:
    """Hires upscaler's values: textinv's upscalers, by its names or the web UI's ("Latent (bicubic)")."""
    names = [spelled(UPSCALER_SPELLINGS, item) for item in items]
    for item, name in zip(items, names):
        if name not in UPSCALERS:
            raise ValueError(f"{item!r} " + (network_upscaler(item) or f"is no upscaler textinv has; its upscalers: "
                                             f"{', '.join(UPSCALERS)} (or the web UI's names for them)"))
    return names


# the web UI's Schedule type values textinv draws: its even spacings, "Automatic" (the sampler's own) and the sigma
# schedules a sampler's name carries (`samplers.SCHEDULES`)
_SCHEDULE_TYPES = EVEN_SPACINGS | {"automatic"} | set(SCHEDULES) | {label.lower() for label, _ in SCHEDULES.values()}


def _schedule_types(items: list[str], config: GenerateConfig) -> list[str]:
    """Schedule type's values, as the web UI names them (Automatic, Uniform, Karras, Exponential, ...): each must be
    one textinv draws; which sampler takes it is each cell's (`_scheduled`)."""
    for item in items:
        if item.lower() not in _SCHEDULE_TYPES:
            raise ValueError(f"{item!r} is no schedule type textinv draws; its schedule types: Automatic, Uniform, "
                             f"{', '.join(label for label, _ in SCHEDULES.values())} (Polyexponential, KL Optimal, "
                             f"Align Your Steps and the like it does not have)")
    return items


def _scheduled(value: str, config: GenerateConfig, values: list[str]) -> dict:
    """The cell's sampler drawn on schedule type `value`, as the web UI's Schedule type is its sampler's schedule
    (textinv's sampler name carries it: dpm++2m_karras), and its hires fix's sampler too where that is on the first
    pass's schedule: the web UI's hires pass takes the first pass's Schedule type ("Use same scheduler"), a Schedule
    type axis's value with it, unless given one of its own (its Hires schedule type, here a schedule unlike the first
    pass's, which it keeps). Refused for a sampler textinv has not on that schedule."""
    settings = {"sampler": _on_schedule(config.sampler, value, "sampler")}
    hires, first = config.hires_sampler, _schedule_type(config.sampler)
    if hires and first is not None and _schedule_type(hires) == first:
        settings["hires_sampler"] = _on_schedule(hires, value, "hires sampler")
    return settings


def _schedule_type(sampler: str) -> str | None:
    """The web UI's Schedule type sampler `sampler` draws on ("Uniform": the model's own spacing), None for one the
    web UI has not."""
    names = webui_names(sampler)
    return None if names is None else names[1] or "Uniform"


def _on_schedule(sampler: str, value: str, what: str) -> str:
    """`sampler` (the cell's `what`) drawn on schedule type `value`, or the ConfigError of one textinv lacks."""
    names = webui_names(sampler)
    ours = from_webui(names[0], value) if names else None
    if ours is None:
        why = ("is the model's own scheduler, which takes no schedule type: give --sampler (or a sampler axis)"
               if sampler == "default" else
               "is no sampler of the web UI's, which takes no schedule type" if names is None else
               f"is not drawn on {value!r} in textinv: give another schedule type or sampler")
        raise ConfigError(f"the {what} {sampler} {why}")
    return ours


def _strength(value: float, config: GenerateConfig, values: list[float]) -> dict:
    """The cell's --variation-strength; at 0 with no --variation-seed either, as the web UI draws strength 0: with no
    variation (applied after a var-seed axis, `Axis.last`, so that its seed is the one left out)."""
    return {"variation_strength": value, **({} if value else {"variation_seed": None})}


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _booleans(items: list[str], config: GenerateConfig) -> list[bool]:
    """A setting's True and False, as the web UI's boolean axes write them (true/false, yes/no, 1/0 taken too)."""
    for item in items:
        if item.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{item!r} is neither True nor False; write True or False")
    return [item.lower() in _TRUE for item in items]


def _search_replace(items: list[str], config: GenerateConfig) -> list[str]:
    """Prompt S/R as the web UI's: the first value must be in a prompt or the negative prompt (it is what each value,
    the first included, replaces), or in --prompt-l or --negative-prompt-l, CLIP-L's part of them."""
    first = items[0]
    clip_l = [t for t in (config.prompt_l, config.negative_prompt_l) if t is not None]
    if not any(first in text for text in config.prompt + [config.negative_prompt] + clip_l):
        nor = f" (nor {setting('prompt_l')} or {setting('negative_prompt_l')})" if clip_l else ""
        raise ValueError(f"the first value {first!r} is in no {setting('prompt')} or {setting('negative_prompt')}"
                         f"{nor}; Prompt S/R searches for the first value and replaces it by each value in turn, so "
                         f"begin with words of the prompt, e.g. prompt-sr=<dog>,<cat>")
    return items


def _replaced(value: str, config: GenerateConfig, values: list[str]) -> dict:
    """The prompts with the first value replaced by `value`: the web UI's, and the hires fix's prompts and CLIP-L's
    (--prompt-l, --negative-prompt-l) where given, parts of the prompt the web UI lacks or leaves as written: a second
    pass or a CLIP-L that kept the first value would draw it beside each cell's."""
    def swap(text):
        return text.replace(values[0], value) if text is not None else None
    return {"prompt": [swap(p) for p in config.prompt], "negative_prompt": swap(config.negative_prompt),
            "hires_prompt": swap(config.hires_prompt), "hires_negative_prompt": swap(config.hires_negative_prompt),
            "prompt_l": swap(config.prompt_l), "negative_prompt_l": swap(config.negative_prompt_l)}


# --- the embedding axis ------------------------------------------------------------------------------------------

class AxisFile(NamedTuple):
    """An embedding axis's value: its file, the --embedding it takes the place of in its cell (`slot`, an index in
    --embedding; None: it is loaded beside them all, `_axis_slot`), and the cell's --token list where the command's
    is not it (`tokens`; None: the command's)."""

    path: str
    slot: int | None = None
    tokens: tuple | None = None


def embedding_values(items: list[str], config: GenerateConfig) -> list[AxisFile]:
    """The files of an embedding axis: each item a file, or a glob (`runs/dog/embeddings/*.safetensors`) whose
    files are taken in training-step order (the step each file records, else the numbers in their names). Each
    must be an embedding, all drawn under one token (each is drawn by the same prompt): the --token of the
    --embedding they take the place of when given (it names each file), else the one they hold, or the run's name
    that each holds with its step (`_shared_token`), which a prompt must write. The other --embedding files stay in
    every cell (`_axis_slot`). The second file of diffusers' SDXL pair (learned_embeds_2-steps-N) is read with the
    first, not as a value of its own."""
    files: list[str] = []
    for item in items:
        if glob.has_magic(item):
            found = [f for f in glob.glob(str(Path(item).expanduser())) if Path(f).is_file()]
            if not found:
                raise ValueError(f"{item!r} matches no file")
            files += _by_step(found)
        elif not on_disk(item).exists():  # (FILE::NAME, one a LoRA bundles: FILE)
            raise ValueError(f"{item} does not exist")
        else:
            files.append(str(Path(item).expanduser()))
    read = {}
    with warnings.catch_warnings():  # (a second half read alone says it is half; it is dropped below)
        warnings.simplefilter("ignore")
        for file in files:
            try:
                read[file] = load_embedding(file)
            except TextinvError as e:
                raise ValueError(f"{file} is not an embedding textinv reads ({e})") from None
    # diffusers' SDXL pair: learned_embeds-steps-N reads its learned_embeds_2-steps-N, which a glob finds too
    halves = {str(second_file(f)) for f, emb in read.items() if len(emb.widths) == 2}
    files = [f for f in files if str(Path(f)) not in halves]
    # the prompts generate looks for a token in (`checked_settings`), composed as it composes them
    said = _nfc(" ".join(config.prompt + [config.negative_prompt, config.hires_prompt or "",
                                          config.hires_negative_prompt or ""])).lower()
    own, given = {f: read[f].token for f in files}, _given_tokens(config, said)
    slot = _axis_slot(own, config, given)
    if config.token and slot is not None:  # (its --token names each file of the axis)
        token, renamed = config.token[slot], False
    else:
        token, renamed = _shared_token(own, said)
    if token.lower() not in said:
        beside = (f" (no {setting('embedding')} is the axis's: none is one of its files or holds its token, so each "
                  f"is loaded beside them)" if config.embedding and slot is None else "")
        raise ValueError(f"their token {token!r} is in no {setting('prompt')}, {setting('negative_prompt')} or hires "
                         f"prompt, so no cell would draw them{beside}; write it in the prompt, e.g. 'a photo of "
                         f"{token}'")
    if not renamed and not (config.token and slot is None):
        return [AxisFile(f, slot) for f in files]  # (each loaded under its own token, or the command's --token)
    tokens = given + [token] if slot is None else [token if i == slot else t for i, t in enumerate(given)]
    if None in tokens:  # (the run's name is the axis's --token, so every --embedding needs one)
        unread = config.embedding[tokens.index(None)]
        embedding, one = setting("embedding"), setting("token")
        raise ValueError(f"the files are drawn as {token!r} (their run's name), so each {embedding} needs its {one}, "
                         f"and {unread} is no file textinv reads alone (a folder or a hub id, which takes none): give "
                         f"the embeddings it holds that you need as files, each its own {embedding}, and one {one} per "
                         f"{embedding}, {token} for the axis's")
    return [AxisFile(f, slot, tuple(tokens)) for f in files]


def _axis_slot(own: dict[str, str], config: GenerateConfig, given: list[str | None]) -> int | None:
    """The --embedding an axis of files holding `own` tokens takes the place of in each cell: the one that is one of
    its files, or whose token (`given`: `_given_tokens`) is one of theirs or their run's name (`_run_name`). None:
    no --embedding is, and the files are loaded beside them all. Two that are: it is unsaid which, refused."""
    names = set(own.values()) | {_run_name(t) for t in own.values()}
    axis_files = {Path(f).resolve() for f in own}
    found = [i for i, (entry, token) in enumerate(zip(config.embedding, given))
             if Path(entry).expanduser().resolve() in axis_files or token in names]
    if len(found) > 1:
        both = " and ".join(config.embedding[i] for i in found[:2])
        raise ValueError(f"{setting('embedding')} {both} are each the axis's (one of its files, or holding one of "
                         f"their tokens {', '.join(sorted(names))}), so it is unsaid which one each file of the axis "
                         f"takes the place of: leave out all but one of them, or give the others a "
                         f"{setting('token')} of their own")
    return found[0] if found else None


def _given_tokens(config: GenerateConfig, said: str) -> list[str | None]:
    """Each --embedding's token: its --token, else the one generate draws its file by (the one it holds, or its file's
    name where the prompts, `said`, write that instead: `_as_prompted`; a training run's folder gives its file's);
    None: no file textinv reads alone, a folder or a hub id (a missing file is its cells' error)."""
    if config.token:
        return list(config.token)
    tokens = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in config.embedding:
            try:  # (a training run's folder: the file it saved, under the token's name whatever its format)
                file = embedding_file(Path(entry).expanduser())
                name = _file_name(str(file) if file.is_file() else entry)
                tokens.append(_as_prompted(load_embedding(file), name, said).token)
            except (TextinvError, OSError):
                tokens.append(None)
    return tokens


# the web UI's name for a training step's embedding: the run's name and the step (it saves dog-500.pt holding the
# name "dog-500", so that each step is an embedding of its own in its list)
_STEP_NAME = re.compile(r"(.+)-\d+")


def _run_name(token: str) -> str:
    """A web UI step file's name without its step (`dog-500`: `dog`), else the name as it is."""
    match = _STEP_NAME.fullmatch(token)
    return match[1] if match else token


def _shared_token(tokens: dict[str, str], said: str) -> tuple[str, bool]:
    """The token one prompt (`said`, lowercased) draws every file by (`tokens`: each file's own), and whether the
    files are loaded under it rather than their own: the one they hold; else, where each is the web UI's step file
    of one run (`dog-500`, `dog-1000`, and the final `dog`), the run's name. Where that leaves it unsaid which
    token is meant, it is refused: other names (--token then names every file), or a prompt that writes a step's
    own name."""
    held = set(tokens.values())
    if len(held) == 1:
        return held.pop(), False
    shortest = min(held, key=len)  # (a run's final file holds its name as it is, which may end in a number itself)
    named = all(t == shortest or re.fullmatch(re.escape(shortest) + r"-\d+", t) for t in held)
    runs = {shortest} if named else {_run_name(t) for t in held}
    listed = ", ".join(f"{t} in {Path(f).name}" for f, t in tokens.items())
    if len(runs) > 1:
        raise ValueError(f"the files hold different tokens ({listed}), so one prompt cannot draw each; give the "
                         f"{setting('embedding')} they take the place of a {setting('token', 'NAME')} (with one of the "
                         f"files as {setting('embedding')} if none is given): each file of the axis is then loaded "
                         f"under that name")
    run = runs.pop()
    # (as words: my-dog-50 is not written in "my-dog-500")
    written = sorted(t for t in held if t != run and re.search(rf"(?<!\w){re.escape(t.lower())}(?!\w)", said))
    if written:
        raise ValueError(f"the files are one run's steps ({listed}), each drawn as {run!r}, but the prompt writes "
                         f"{written[0]!r}, one step's own name: write {run!r} where the concept goes")
    return run, True


def _by_step(files: list[str]) -> list[str]:
    """`files` in training-step order: by the step each records (textinv's and the web UI's "steps"), when each
    records one, else by their names with their numbers compared as numbers (steps-500 before steps-1000)."""
    steps = {}
    with warnings.catch_warnings():  # (read for its step alone: `embedding_values` reads each again)
        warnings.simplefilter("ignore")
        for f in files:
            try:
                steps[f] = int(load_embedding(f).metadata.get("steps", ""))
            except (TextinvError, ValueError):
                break
    if len(steps) == len(files):
        return sorted(files, key=lambda f: (steps[f], _natural(f)))
    return sorted(files, key=_natural)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def _with_embedding(value: AxisFile, config: GenerateConfig, values: list[AxisFile]) -> dict:
    """The cell's --embedding: the axis's file in place of the one it replaces (`_axis_slot`), or beside them all,
    and its --token where the command's is not it (`AxisFile.tokens`)."""
    embedding = list(config.embedding)
    if value.slot is None:
        embedding.append(value.path)
    else:
        embedding[value.slot] = value.path
    return {"embedding": embedding, **({"token": list(value.tokens)} if value.tokens is not None else {})}


# --- the axes ------------------------------------------------------------------------------------------------------

def _field(name: str) -> Callable[[object, GenerateConfig, list], dict]:
    return lambda value, config, values: {name: value}


AXES = {axis.name: axis for axis in (
    Axis("seed", "Seed", _numbers(int), _field("seed")),
    Axis("steps", "Steps", _numbers(int), _field("steps")),
    Axis("guidance", "CFG Scale", _numbers(float), _field("guidance")),
    Axis("sampler", "Sampler", _samplers, _field("sampler"), named=False),
    Axis("prompt-sr", "Prompt S/R", _search_replace, _replaced, named=False),
    Axis("embedding", "Embedding", embedding_values, _with_embedding, show=lambda f: Path(f.path).name),
    Axis("clip-skip", "Clip skip", _numbers(int), _field("clip_skip")),
    Axis("denoise", "Denoising", _numbers(float), _field("denoise")),
    Axis("size", "Size", _sizes, lambda v, c, vs: {"width": v[0], "height": v[1]}, show=lambda v: f"{v[0]}x{v[1]}"),
    Axis("hires-scale", "Hires upscale", _numbers(float), _field("hires_scale")),
    Axis("hires-steps", "Hires steps", _numbers(int), _field("hires_steps")),
    Axis("refiner", "Refiner checkpoint", _refiners, _field("refiner"),
         show=lambda v: "None" if v is None else _model_name(v)),
    Axis("refiner-switch-at", "Refiner switch at", _numbers(float), _field("refiner_switch_at")),
    Axis("var-seed", "Var. seed", _numbers(int), _field("variation_seed")),
    Axis("var-strength", "Var. strength", _numbers(float), _strength, last=True),
    Axis("eta", "Eta", _numbers(float), _field("eta")),
    Axis("ensd", "Eta noise seed delta", _numbers(int), _field("ensd")),
    Axis("sigma-churn", "Sigma Churn", _numbers(float), _field("sigma_churn")),
    Axis("sigma-tmin", "Sigma min", _numbers(float), _field("sigma_tmin")),
    Axis("sigma-tmax", "Sigma max", _numbers(float), _field("sigma_tmax")),
    Axis("sigma-noise", "Sigma noise", _numbers(float), _field("sigma_noise")),
    Axis("schedule", "Schedule type", _schedule_types, _scheduled, last=True),
    Axis("discard-penultimate-sigma", "Always discard next-to-last sigma", _booleans,
         _field("discard_penultimate_sigma")),
    Axis("hires-sampler", "Hires sampler", _samplers, _field("hires_sampler")),
    Axis("hires-upscaler", "Hires upscaler", _hires_upscalers, _field("hires_upscaler"),
         show=lambda v: UPSCALERS[v].label),
)}
# the web UI's labels name them too ("CFG Scale", "Prompt S/R", "Denoising"), and "cfg", and the flags' names of
# those the web UI labels otherwise (--variation-seed, --sigma-tmin, ...)
_SPELLINGS = {**{a.label.lower(): a.name for a in AXES.values()}, "cfg": "guidance", "variation-seed": "var-seed",
              "variation-strength": "var-strength", "schedule-type": "schedule",
              "sigma tmin": "sigma-tmin", "sigma tmax": "sigma-tmax"}
_SEED_AXES = ("seed", "var-seed")  # (-1 draws one for the plot, and the grid's text keeps the one drawn)

# the web UI's axes textinv has none of, by lowercase label: (the label, how to get the same with textinv)
WEBUI_ONLY = {label.lower(): (label, how) for label, how in (
    ("Nothing", "the web UI's empty axis: leave the axis out"),
    ("Checkpoint name", "textinv draws one --model a run: run generate once per model, with the same --seed"),
    ("VAE", "textinv loads one --vae a run, with its model: run generate once per --vae, with the same --seed"),
    ("Styles", "textinv has no saved styles: write the style's text into --prompt and --negative-prompt, or vary it "
               "with prompt-sr"),
    ("Prompt order", "vary the order with prompt-sr, its first value the words as the prompt writes them, e.g. "
                     "'prompt-sr=\"red, dog\",\"dog, red\"'"),
    ("Face restore", "face restoration (CodeFormer, GFPGAN) is not in textinv"),
    ("Token merging ratio", "token merging is not in textinv: it draws every token"),
    ("Token merging ratio high-res", "token merging is not in textinv: it draws every token"),
    ("UniPC Order", "textinv's unipc runs the web UI's default order 3 only"),
    ("Initial noise multiplier", "textinv's img2img noise is not scaled (the web UI's default, 1)"),
    ("Extra noise", "textinv's img2img adds no extra noise (the web UI's default, 0)"),
    ("Schedule min sigma", "textinv's schedules span the model's own noise levels: not settable"),
    ("Schedule max sigma", "textinv's schedules span the model's own noise levels: not settable"),
    ("Schedule rho", "textinv's Karras schedule takes rho 7 (the web UI's default): not settable"),
    ("Negative Guidance minimum sigma", "textinv guides every step with the negative prompt (the web UI's default, "
                                        "0)"),
    ("Image CFG Scale", "for instruct-pix2pix models, which textinv does not draw"),
    ("Cond. Image Mask Weight", "not in textinv (the web UI's default, 1)"),
    ("SGM noise multiplier", "not in textinv"),
    ("RNG source", "textinv draws its noise with torch's CPU generator, the web UI's RNG source CPU, only"),
)}


@dataclass(frozen=True)
class Plotted:
    """One axis of a plot as it was read: which (`axis`), given to which setting (`xyz`: x, y or z) as which text
    (`given`), its values, and each value's legend text (`labels`)."""

    axis: Axis
    xyz: str
    given: str
    values: list

    @property
    def labels(self) -> list[str]:
        return [f"{self.axis.label}: {self.show(v)}" if self.axis.named else self.show(v) for v in self.values]

    def show(self, value) -> str:
        """`value` as the legend writes it (a float rounded to 8 places, as the web UI's format_value)."""
        return str(round(value, 8)) if isinstance(value, float) else self.axis.show(value)

    def settings(self, value, config: GenerateConfig) -> dict:
        return self.axis.apply(value, config, self.values)

    def at(self, value) -> str:
        """The axis at `value` as a message names it, in its user's words (`errors.setting`): `--x steps=0` on the
        command line, `x='steps=0'` from Python."""
        return setting(self.xyz, f"{self.axis.name}={self.show(value)}")


def read_axis(xyz: str, text: str, config: GenerateConfig) -> Plotted:
    """`--x AXIS=VALUES` (`x='AXIS=VALUES'` from Python; `xyz`: x, y or z) read and checked (`config`: the command's
    settings), or a ConfigError naming the axis as its user gave it (`errors.given`), the value and the fix."""
    said = given(xyz, text)
    name, sep, values = text.partition("=")
    key = name.strip().lower().replace("_", "-")
    key = _SPELLINGS.get(key, key)
    if not sep or not key:
        raise ConfigError(f"{said}: write AXIS=VALUES, e.g. {setting(xyz, 'guidance=3,7.5,12')} (axes: "
                          f"{', '.join(AXES)})")
    if key not in AXES and name.strip().lower() in WEBUI_ONLY:
        label, how = WEBUI_ONLY[name.strip().lower()]
        raise ConfigError(f"{said}: the web UI's {label} axis is no axis textinv has: {how} (the axes: "
                          f"{', '.join(AXES)})")
    if key not in AXES:
        near = difflib.get_close_matches(key, list(AXES), n=1)
        raise ConfigError(f"{said}: no axis {name.strip()!r}" + (f" (did you mean {near[0]}?)" if near else "")
                          + f"; the axes: {', '.join(AXES)}")
    items = split_values(values)
    if not items or any(not item for item in items):
        raise ConfigError(f"{said}: {'an empty value' if items else 'no values'}; give the values after "
                          f"'=', separated by commas, e.g. {setting(xyz, f'{key}={_EXAMPLES[key]}')}")
    try:
        read = AXES[key].read(items, config)
    except ValueError as e:
        raise ConfigError(f"{said}: {e}") from None
    if key in _SEED_AXES:  # the web UI's: -1 is a seed drawn once for the plot
        read = [v if v != -1 else random_seed() for v in read]
    return Plotted(AXES[key], xyz, values.strip(), read)


_EXAMPLES = {"seed": "1-4", "steps": "10-30 (+10)", "guidance": "3,7.5,12", "sampler": "euler,dpm++2m_karras",
             "prompt-sr": "<dog>,<cat>", "embedding": "runs/dog/embeddings/*.safetensors", "clip-skip": "1,2",
             "denoise": "0.3-0.7 [3]", "size": "512x512,512x768", "hires-scale": "1.5,2", "hires-steps": "10,20",
             "refiner": "None,stabilityai/stable-diffusion-xl-refiner-1.0", "refiner-switch-at": "0.6,0.8",
             "var-seed": "1-4", "var-strength": "0-0.3 [4]", "eta": "0.5,1", "ensd": "0,31337",
             "sigma-churn": "0,1", "sigma-tmin": "0,0.5", "sigma-tmax": "5,10", "sigma-noise": "1,1.003",
             "schedule": "Automatic,Karras,Exponential", "discard-penultimate-sigma": "False,True",
             "hires-sampler": "euler,dpm++2m_karras", "hires-upscaler": "latent,lanczos"}


@dataclass
class Plan:
    """A plot ready to draw: its three axes (None: not given, one cell along it and no legend), each cell's
    settings, in the web UI's order (x fastest, then y, then z), the variation seed drawn for a var-strength
    axis given none (kept in the grid's record, as its first cell, at strength 0, has none: `_grid_record`), each
    cell's `generate.together` key (`keys`: cells of equal keys may be drawn in one run, `_groups`) and its
    pictures' file names with their seeds (`names`: `generate.run_names`)."""

    axes: tuple[Plotted | None, Plotted | None, Plotted | None]
    cells: list[GenerateConfig]
    variation_seed: int | None = None
    keys: list[tuple] = field(default_factory=list)
    names: list[list[tuple[int, str]]] = field(default_factory=list)

    def counts(self) -> tuple[int, int, int]:
        return tuple(len(a.values) if a is not None else 1 for a in self.axes)


def plan(config: GenerateConfig) -> Plan:
    """The plot `config.x`, `.y`, `.z` ask for, every cell's settings checked (as generate checks its own: `_check`)
    before anything loads. `config` is validated already (its seed drawn)."""
    texts = (("x", config.x), ("y", config.y), ("z", config.z))
    axes = tuple(read_axis(xyz, text, config) if text else None for xyz, text in texts)
    seen: dict[str, str] = {}
    for a in filter(None, axes):
        if a.axis.name in seen:
            raise ConfigError(f"{setting(seen[a.axis.name])} and {setting(a.xyz)} both vary {a.axis.name}: give each "
                              f"axis once (put all its values on one of them)")
        seen[a.axis.name] = a.xyz
    nx, ny, nz = Plan(axes, []).counts()
    if config.xyz_max_cells is None or config.xyz_max_cells < 1:
        raise ConfigError(f"{setting('xyz_max_cells')} must be 1 or more, got {config.xyz_max_cells}")
    if config.xyz_margin is None or not 0 <= config.xyz_margin <= MAX_MARGIN:
        # (checked here, before any cell is drawn: a grid of huge margins failed only once every cell was drawn)
        raise ConfigError(f"{setting('xyz_margin')} must be 0 to {MAX_MARGIN} pixels (the web UI's Grid margins "
                          f"slider), got {config.xyz_margin}")
    if nx * ny * nz > config.xyz_max_cells:
        said = " ".join(given(xyz, text) for xyz, text in texts if text)
        raise ConfigError(f"{said} make {nx} x {ny} x {nz} = {nx * ny * nz} cells, more than "
                          f"{setting('xyz_max_cells', config.xyz_max_cells)} (each draws {setting('n', config.n)} "
                          f"pictures): give fewer values, or raise {setting('xyz_max_cells')}")
    base, drawn = replace(config, x=None, y=None, z=None), None
    if any(a.axis.name == "var-strength" for a in axes if a) and base.variation_seed in (None, -1):
        # (the web UI's: a variation seed left at -1 is drawn once for the plot, not once in each cell)
        drawn = random_seed()
        base = replace(base, variation_seed=drawn)
    cells, read = [], []
    for iz in range(nz):
        for iy in range(ny):
            for ix in range(nx):
                cell, parts = base, [(a, a.values[i]) for a, i in zip(axes, (ix, iy, iz)) if a is not None]
                for a, value in sorted(parts, key=lambda part: part[0].axis.last):
                    cell = replace(cell, **_settings(a, value, cell))
                if not cell.refiner and any(a.axis.name == "refiner" for a, _ in parts):
                    cell = replace(cell, refiner_switch_at=None)  # (the web UI's None: no refiner, no switch)
                read.append(_checked(cell, base, parts))
                cells.append(cell)
    return Plan(axes, cells, drawn, [key for key, _ in read], [names for _, names in read])


def _settings(a: Plotted, value, cell: GenerateConfig) -> dict:
    """The settings `value` of axis `a` gives `cell`, or the ConfigError of one it cannot, naming the axis value."""
    try:
        return a.settings(value, cell)
    except ConfigError as e:
        raise ConfigError(f"{a.at(value)}: {e}") from None


def _checked(cell: GenerateConfig, base: GenerateConfig, parts: list[tuple[Plotted, object]]) -> tuple:
    """`cell`'s `generate.together` key and file names (`_check`) if generate would draw it, else its error: as it
    is where the command's settings alone give it, named by the axis value that alone gives it (`--x steps=0`), or
    by the cell where only the values together do."""
    try:
        return _check(cell)
    except TextinvError as e:
        error = e
    try:
        _check(base)
    except TextinvError as e:
        if str(e) == str(error):
            raise
    for a, value in parts:
        try:
            _check(replace(base, **a.settings(value, base)))
        except TextinvError as alone:
            if str(alone) == str(error):
                raise type(error)(f"{a.at(value)}: {error}") from None
    raise type(error)(f"the cell {_said(parts)}: {error}") from None


def _said(parts: list[tuple[Plotted, object]]) -> str:
    """A cell by its axes' values: `--x steps=20, --y guidance=7.5`."""
    return ", ".join(a.at(value) for a, value in parts)


def _check(cell: GenerateConfig) -> tuple:
    """All that generate checks before its model loads (`checked_settings`: the settings, and the files, prompts and
    pictures they name), so that no cell is refused once others have been drawn; from what it read, the cell's
    `together` key and its pictures' file names with their seeds (`run_names`). Its warnings are the cell's own
    generate's to give."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = checked_settings(copy.copy(cell))
    return together(checked), run_names(checked)


# --- drawing -----------------------------------------------------------------------------------------------------

@warns_at_caller  # (its cells' warnings name the user's line: `errors.warn`)
def plot(config: GenerateConfig, model=None, progress: bool = True, keep_seeds: set[int] | None = None,
         refiner=None) -> list[Path]:
    """Draw the X/Y/Z plot `config.x`, `.y`, `.z` ask for: each cell as `generate` draws it, those alike but for
    their prompts and seeds together (`_draw_cells`), on one model (`model`, or the one `config` names, loaded once;
    its --refiner `refiner`, or loaded once too; a refiner axis's each once, its cells drawn one after another), then
    its `xyz_grid-NNNN.png` in `config.out` (`_save_grids`). Returns the
    grids' paths, then the cells' pictures'. `keep_seeds` (`--again`: the pictures of the batch it was drawn in that
    are written) is counted from --seed, and moves with a seed axis.

    >>> plot(GenerateConfig(prompt=["a photo of <dog>"], embedding=["dog-500.safetensors"], n=1,
    ...                     x="embedding=runs/dog/embeddings/*.safetensors", y="guidance=3,7.5"))  # doctest: +SKIP
    [PosixPath('renders/xyz_grid-0000.png'), PosixPath('renders/000-a-photo-of-dog-s0.png'), ...]
    """
    config = copy.copy(config).validate()  # (its seed drawn once: every cell draws it, as the web UI's fix_seed)
    config = launched(config, model, progress)  # (--precision left out: said once, not by each cell's generate)
    ready = plan(config)
    clear_stale_temporaries(config.out, _GRID_FILE)  # (a killed plot's half-written grid)
    refiners = list(dict.fromkeys(cell.refiner for cell in ready.cells))  # (each value's cells drawn together)
    for source in refiners:
        check_refiner_source(replace(config, refiner=source), model)
    if model is None:
        model = _load(config)
    _check_samplers(ready, model)
    with said_once():  # (a notice of the run, which each cell's generate gives, said once for the plot)
        cells = _draw_cells(config, ready, model, progress, keep_seeds, refiner, refiners)
    return _save_grids(config, ready, cells) + [path for paths in cells for path in paths]


def _draw_cells(config: GenerateConfig, ready: Plan, model, progress: bool, keep_seeds: set[int] | None, refiner,
                refiners: list) -> list[list[Path]]:
    """`plot`'s cells, drawn by `generate_together` a group at a time (`_groups`: cells alike but for their prompts
    and seeds share pipeline calls; its refiner loaded once for all the cells that name it): their pictures' paths,
    cell by cell."""
    drawn: dict[int, list[Path]] = {}
    loaded_for, loaded = (config.refiner, refiner) if refiner is not None else (None, None)
    order = sorted(range(len(ready.cells)), key=lambda i: refiners.index(ready.cells[i].refiner))
    groups = _groups(ready, order) if keep_seeds is None else [[i] for i in order]
    keeps = [None if keep_seeds is None else {s - config.seed + cell.seed for s in keep_seeds} for cell in ready.cells]
    # (each cell's files' suffix as when each was drawn alone, one after the other: taken before any is drawn)
    suffixes = dict(zip(order, _run_suffixes(Path(config.out), [
        [name for seed, name in ready.names[i] if keeps[i] is None or seed in keeps[i]] for i in order])))
    bar = tqdm(total=len(ready.cells), disable=not progress, desc="xyz plot", unit="cell")
    for group in groups:
        cells = [ready.cells[i] for i in group]
        keep = keeps[group[0]]  # (with `keep_seeds` (`--again`), each cell alone: it redraws its picture's batch)
        if drawn and not Path(config.out).is_dir():  # (removed mid-plot: the cell's generate would make it again)
            raise write_failed(FileNotFoundError(errno.ENOENT, "No such file or directory", config.out),
                               Path(config.out), sum(map(len, drawn.values())))
        if cells[0].refiner != loaded_for:  # (the one before let go first: one refiner held at a time)
            loaded = None
            loaded, loaded_for = _load_refiner(cells[0], model), cells[0].refiner
        try:
            drawn.update(zip(group, generate_together(cells, model, progress=False, keep_seeds=keep, refiner=loaded,
                                                      suffixes=[suffixes[i] for i in group])))
        except GenerationInterrupted as e:  # (its own count of pictures written is the group's too)
            raise GenerationInterrupted(f"in the X/Y/Z plot's {_cells_named(ready, group)}, where {e}; "
                                        f"{_stopped(config, ready, drawn, group)}") from None
        except DeviceMemoryError as e:  # (its own count of pictures written is the group's)
            said = _stopped(config, ready, drawn, group)
            raise DeviceMemoryError(f"the X/Y/Z plot's {_cells_named(ready, group)}: {e}. "
                                    f"{said[0].upper()}{said[1:]}") from e
        except ConfigError as e:  # (a picture that could not be written: `generate.write_failed`)
            raise ConfigError(f"{e}; in the X/Y/Z plot's {_cells_named(ready, group)}: "
                              f"{_stopped(config, ready, drawn, group)}") from e
        bar.update(len(group))
    bar.close()
    return [drawn[i] for i in range(len(ready.cells))]


def _stopped(config: GenerateConfig, ready: Plan, drawn: dict[int, list[Path]], group: list[int]) -> str:
    """What a plot stopped in `group` (a Ctrl-C, running out of memory, a failed write) leaves, said after its
    error: the cells drawn before it, and the partial grid of them, written now (`_save_grids`), so that a plot
    stopped after 30 of its 40 cells still shows them side by side; none where no cell holds a picture, or where it
    cannot be written (said, the plot's own error raised)."""
    n = len(drawn)
    said = (f"the {n} cell{'s' * (n != 1)} before {'it' if len(group) == 1 else 'them'} "
            f"{'are' if n != 1 else 'is'} written in {config.out}")
    if not any(drawn.values()):
        return f"{said}, with no grid"
    cells = [drawn.get(i) for i in range(len(ready.cells))]
    try:
        grids = _save_grids(config, ready, cells)
    except (TextinvError, OSError) as e:  # (the folder full or gone, as the cell's write may have found it)
        return f"{said}; the partial grid of them could not be written ({e})"
    except KeyboardInterrupt:  # (a second Ctrl-C as it is written: no half file is left, `_save_grid`)
        return f"{said}, with no grid (a second Ctrl-C stopped its writing)"
    missing = len(ready.cells) - n
    return (f"{said}, and the partial grid of them, {', '.join(map(str, grids))} (the {missing} "
            f"cell{'s' * (missing != 1)} not drawn left black)")


def _groups(ready: Plan, order: list[int]) -> list[list[int]]:
    """The cells (by their place, taken in `order`) in the groups `generate_together` draws in one run each: those
    of equal `together` keys (alike but for their prompts, negative prompts and seeds: a Prompt S/R or Seed axis),
    whose pictures share pipeline calls up to --batch-size; each group where its first cell comes in `order`."""
    groups: list[list[int]] = []
    for i in order:
        group = next((g for g in groups if ready.keys[g[0]] == ready.keys[i]), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def _cells_named(ready: Plan, group: list[int]) -> str:
    """A group of cells (`_groups`) as a message names it: `cell 4 of 6 (--x steps=1, --y guidance=7.5)`, or
    `cells 1, 2 and 3 of 6, drawn together (--x prompt-sr=dog, ...; --x prompt-sr=cat, ...; ...)`."""
    total, names = len(ready.cells), "; ".join(_cell_name(ready, i) for i in group)
    if len(group) == 1:
        return f"cell {group[0] + 1} of {total} ({names})"
    numbers = [str(i + 1) for i in group]
    return f"cells {', '.join(numbers[:-1])} and {numbers[-1]} of {total}, drawn together ({names})"


def _check_samplers(ready: Plan, model) -> None:
    """Each cell's sampler made for `model`'s noise schedule, so that one it cannot sample (a Karras schedule on a
    zero-terminal-SNR model, Restart on a schedule it would take fewer calls on: `samplers.check_pass`) is refused
    once the model has loaded, not after the cells before it are drawn."""
    axis = next((a for a in ready.axes if a is not None and a.axis.name == "sampler"), None)
    flag = f"{given(axis.xyz, 'sampler=' + axis.given)}: sampler" if axis is not None else None
    for sampler in dict.fromkeys(cell.sampler for cell in ready.cells if cell.sampler != "default"):
        scheduler_for(model.pipeline.scheduler, sampler, flag=flag)
    # (a text-to-image first pass runs all its steps; an img2img one is checked as generate checks it)
    for sampler, steps, discard in dict.fromkeys((c.sampler, c.steps, c.discard_penultimate_sigma)
                                                 for c in ready.cells if c.sampler != "default" and not c.init_image):
        check_pass(model.pipeline.scheduler, sampler, steps, steps, setting("steps", steps), flag, discard)


def _save_grids(config: GenerateConfig, ready: Plan, cells: list[list[Path] | None]) -> list[Path]:
    """The plot's grids, written as the web UI saves them: the grid of every cell (with --z, each --z value's grid
    side by side under its label), then with --xyz-sub-grids each of those grids alone, without its --z label, one
    --z value's too (--again on the grid of a value of an axis applied last draws the plot at that one value, then
    that grid alone: `_grid_text`); not for --z alone: each would be its cell, written already, and --again on it
    could not tell it from a cell's picture. A plot stopped part-way (`_stopped`) has cells not drawn (None): each is
    left black, as the web UI leaves a cell that drew no picture, and a grid missing any is named and marked partial
    (`_save_grid`, `_grid_text`); a sub-grid none of whose cells was drawn is not written. Their paths, in that
    order."""
    nx, ny, nz = ready.counts()
    drawn = [_cell_picture(paths) if paths is not None else None for paths in cells]
    size = next(picture.size for picture in drawn if picture is not None)  # (the web UI's: its first picture's)
    drawn = [picture or Image.new("RGB", size) for picture in drawn]
    per_z = [cells[iz * nx * ny:(iz + 1) * nx * ny] for iz in range(nz)]
    subs = [_grid_picture(ready, drawn[iz * nx * ny:(iz + 1) * nx * ny], config) for iz in range(nz)]
    whole = subs[0] if ready.axes[2] is None else _z_picture(ready, subs, config)
    written = [(whole, cells, None)]
    if config.xyz_sub_grids and ready.axes[2] is not None and (ready.axes[0] or ready.axes[1]):
        written += [(sub, these, iz) for iz, (sub, these) in enumerate(zip(subs, per_z)) if any(these)]
    try:
        return [_save_grid(grid, Path(config.out), _grid_text(config, ready, these, iz) if config.metadata != "none"
                           else None, None in these) for grid, these, iz in written]
    except OSError as e:  # (the cells' pictures are written: said with the error)
        raise write_failed(e, Path(config.out), sum(len(paths) for paths in cells if paths)) from e


def _cell_name(ready: Plan, index: int) -> str:
    """Cell `index` (x fastest) by its axes' values (`_said`)."""
    nx, ny, _ = ready.counts()
    at = (index % nx, index // nx % ny, index // (nx * ny))
    return _said([(a, a.values[i]) for a, i in zip(ready.axes, at) if a is not None])


def _load(config: GenerateConfig):
    """The model `config` names, loaded as `generate` loads it (running out of memory said as it says it)."""
    where = _Where(device=pick_device(config.device))
    where.dtype = drawing_dtype(config.precision, where.device)
    with interrupt_kept():  # (a Ctrl-C that Python dropped inside a __del__ as it loads stops it here)
        return out_of_memory_as(
            lambda: drawing_model(config, where.dtype, where.device),
            lambda e: _memory_error(where, e), lambda: where.device)


def _load_refiner(config: GenerateConfig, model):
    """--refiner loaded once for every cell (`refiner_model`), as `_load` loads the model; None without one."""
    if not config.refiner:
        return None
    where = _Where(device=model.unet.device, dtype=model.unet.dtype)
    refiner = out_of_memory_as(lambda: refiner_model(config, model), lambda e: _memory_error(where, e),
                               lambda: where.device)
    return refiner and refiner.model


def _cell_picture(paths: list[Path]) -> Image.Image:
    """A cell's pictures as one: a single picture as it is, several in the web UI's batch grid (image_grid with its
    default rows: the square root of the count, rounded)."""
    pictures = [Image.open(p).convert("RGB") for p in paths]
    if len(pictures) == 1:
        return pictures[0]
    rows = min(max(round(math.sqrt(len(pictures))), 1), len(pictures))
    return make_grid(pictures, math.ceil(len(pictures) / rows))


def _grid_picture(ready: Plan, cells: list[Image.Image], config: GenerateConfig) -> Image.Image:
    """One --z value's grid: the cells x fastest, --xyz-margin apart, with the x values above the columns and the y
    values left of the rows (--xyz-legend)."""
    x, y, _ = ready.axes
    nx, ny, _ = ready.counts()
    width, height = max(c.width for c in cells), max(c.height for c in cells)
    labelled = config.xyz_legend
    return annotate(make_grid(cells, nx), width, height, x.labels if x is not None and labelled else [""] * nx,
                    y.labels if y is not None and labelled else [""] * ny, config.xyz_margin)


def _z_picture(ready: Plan, grids: list[Image.Image], config: GenerateConfig) -> Image.Image:
    """The --z values' grids side by side in one picture, each value above its grid (--xyz-legend), as the web UI's
    draw_xyz_grid joins them (with no margin between them: its margins are between cells)."""
    width, height = max(g.width for g in grids), max(g.height for g in grids)
    labels = ready.axes[2].labels if config.xyz_legend else [""] * len(grids)
    return annotate(make_grid(grids, len(grids)), width, height, labels, [""])


def annotate(grid: Image.Image, width: int, height: int, columns: list[str], rows: list[str],
             margin: int = 0) -> Image.Image:
    """`grid` (cells of `width` x `height`, one per column and row) with `columns`' texts above its columns and
    `rows`' left of its rows, its cells `margin` pixels apart, laid out as the web UI's draw_grid_annotations: the
    font (width + height) / 25 pixels (at least 10), lines a half font apart, the row texts in a margin three
    quarters of a cell wide, each text wrapped to its room and a word too long for it drawn smaller. No texts and no
    margin: the grid as it is.

    >>> grid = Image.new("RGB", (128, 64))
    >>> annotate(grid, 64, 64, ["a", "b"], [""]).size, annotate(grid, 64, 64, ["", ""], [""], margin=10).size
    ((128, 82), (138, 64))
    """
    size = max((width + height) // 25, 10)
    spacing = size // 2
    left = width * 3 // 4 if any(rows) else 0
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    above = [_lines(measure, text, size, width) for text in columns]
    beside = [_lines(measure, text, size, left) for text in rows]
    tall = [sum(h for _, _, h in lines) + spacing * (len(lines) - 1) for lines in above]
    top = max(tall) + 2 * spacing if any(columns) else 0
    step_x, step_y = width + margin, height + margin
    out = Image.new("RGB", (grid.width + left + margin * (len(columns) - 1),
                            grid.height + top + margin * (len(rows) - 1)), PAPER)
    for row in range(len(rows)):
        for col in range(len(columns)):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            out.paste(cell, (left + step_x * col, top + step_y * row))
    d = ImageDraw.Draw(out)
    for col, lines in enumerate(above):
        _draw(d, lines, left + step_x * col + width / 2, top / 2 - tall[col] / 2, spacing)
    for row, lines in enumerate(beside):
        high = sum(h for _, _, h in lines) + spacing * (len(lines) - 1)
        _draw(d, lines, left / 2, top + step_y * row + height / 2 - high / 2, spacing)
    return out


def _lines(measure: ImageDraw.ImageDraw, text: str, size: int, room: int) -> list[tuple[str, object, int]]:
    """`text` wrapped at spaces to `room` pixels, each line (text, font, height) at `size`, or smaller where a word
    alone is wider than the room (as the web UI shrinks it)."""
    if not text or room <= 0:
        return []
    full = font(size)
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if measure.textlength(joined, font=full) <= room or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(word)
    out = []
    for line in lines:
        fitted, own = full, size
        while measure.textlength(line, font=fitted) > room and own > 4:
            own -= 1
            fitted = font(own)
        box = measure.textbbox((0, 0), line, font=fitted)
        out.append((line, fitted, box[3] - box[1]))
    return out


def _draw(d: ImageDraw.ImageDraw, lines, x: float, y: float, spacing: int) -> None:
    for text, fnt, high in lines:
        d.text((x, y + high / 2), text, font=fnt, fill=INK, anchor="mm")
        y += high + spacing


def _grid_text(config: GenerateConfig, ready: Plan, cells: list[list[Path]], iz: int | None):
    """The grid's PNG text: the web UI's `parameters` of its first cell's picture with the script's fields after it
    (Script, X Type, X Values, and Fixed X Values for a seed axis, likewise Y and Z), and `xyz_plot`: the axes,
    their values and each cell's pictures' file names (x fastest) as JSON; and the first cell's record (`RECORD_KEY`)
    with the axes among its settings, so `--again GRID` draws the plot again, as the web UI's grid text restores
    the script's axes. A --z value's grid of its own (`iz`) is the plot at that value, as the web UI's sub-grid text
    (no Z fields; its `xyz_plot` names the value), so `--again` on it draws that grid. The value of an axis applied
    last (`Axis.last`: a schedule type, which puts the sampler an x axis sets on it) is no setting of the command's
    for it to hold: its text keeps the --z axis with that one value, and `--again` on it draws the grid of that value,
    then that grid alone (--xyz-sub-grids). A grid lacking cells (a plot stopped part-way: `_stopped`) says which,
    in `xyz_plot` and its record (`PARTIAL_KEY`, which `--again` refuses naming them), and names no files for them."""
    first = next((paths for paths in cells if paths is not None), None)  # (the first cell, but where it was not drawn)
    text = Image.open(first[0]).text if first else {}
    z = ready.axes[2]
    if iz is not None and z.axis.last:
        value = z.values[iz]
        ready = replace(ready, axes=(*ready.axes[:2], replace(z, given=z.show(value), values=[value])), cells=[])
    elif iz is not None:
        config = replace(config, z=None, **z.settings(z.values[iz], config))
        ready = replace(ready, axes=(*ready.axes[:2], None), cells=[])
    parameters = text.get("parameters", "")
    fields = [("Script", SCRIPT)]
    plot_record: dict = {}
    for key, a in zip("XYZ", ready.axes):
        if a is None:
            continue
        shown = ", ".join(a.axis.show(v) for v in a.values) if a.axis.name in _FILE_AXES else a.given
        fields += [(f"{key} Type", a.axis.label), (f"{key} Values", shown)]
        if a.axis.name in _SEED_AXES:
            fields.append((f"Fixed {key} Values", ", ".join(map(str, a.values))))
        plot_record[key.lower()] = {"axis": a.axis.name, "type": a.axis.label, "values": shown, "labels": a.labels}
    if iz is not None:
        plot_record["z_value"] = z.labels[iz]
    plot_record["cells"] = [[p.name for p in paths] if paths is not None else None for paths in cells]
    missing = [number for number, paths in enumerate(cells, 1) if paths is None]
    if missing:  # (a plot stopped part-way: its cells not drawn, by their numbers in this grid, x fastest)
        plot_record["partial"] = {"cells": len(cells), "missing": missing}
    info = PngInfo()
    info.add_text("parameters", _with_fields(parameters, ", ".join(f"{k}: {_infotext_value(v)}" for k, v in fields)))
    info.add_text("xyz_plot", json.dumps(plot_record))
    if RECORD_KEY in text:
        record = _grid_record(config, ready, json.loads(text[RECORD_KEY]))
        if missing:  # (`--again` on it refuses to draw it as a whole plot: `again._from_record`)
            record[PARTIAL_KEY] = plot_record["partial"]
        info.add_text(RECORD_KEY, json.dumps(record))
    return info


def _grid_record(config: GenerateConfig, ready: Plan, record: dict) -> dict:
    """The first cell's `record` made the grid's: the axes among its settings, every seed of a cell as its batch's,
    and the command's prompts as given (every --prompt, a dynamic one's template with what draws it), not the first
    picture's, so `again` draws and writes every picture of each cell."""
    seed = record["settings"]["seed"]
    record["batch_seeds"] = list(range(seed, seed + config.n))
    for key in ("template", "negative_template"):  # (the prompts below are those)
        record.pop(key, None)
    record["settings"].update(prompt=list(config.prompt), negative_prompt=config.negative_prompt,
                              combinatorial=config.combinatorial, max_prompts=config.max_prompts)
    if ready.variation_seed is not None:  # (a var-strength axis's, drawn for the plot)
        record["settings"]["variation_seed"] = ready.variation_seed
    if config.wildcards_dir is not None and config.metadata == "full":  # (shareable: given again beside --again)
        record["settings"]["wildcards_dir"] = absolute(config.wildcards_dir)
    if config.init_image is not None and Path(config.init_image).is_dir():  # (the folder, not its first picture)
        full = config.metadata == "full"
        record["settings"]["init_image"] = absolute(config.init_image) if full else Path(config.init_image).name
        record.pop("init_image_sha256", None)
    record["settings"].update({flag: _axis_setting(a, config.metadata == "full") for flag, a in zip("xyz", ready.axes)
                               if a is not None}, xyz_max_cells=config.xyz_max_cells,
                              xyz_sub_grids=config.xyz_sub_grids, xyz_legend=config.xyz_legend,
                              xyz_margin=config.xyz_margin)
    return record


_FILE_AXES = ("embedding", "refiner")  # (their values are files, named without their folders where shared)


def _axis_setting(a: Plotted, full: bool) -> str:
    """An axis as the grid's record keeps it for `--again`: as given, a seed axis with the seeds it drew (-1's
    too), an embedding or refiner axis as its files (by their names only, unless `full`: --metadata shareable's
    way; a refiner's hub id as it is)."""
    if a.axis.name in _SEED_AXES:
        return f"{a.axis.name}={','.join(map(str, a.values))}"
    if a.axis.name not in _FILE_AXES:
        return f"{a.axis.name}={a.given}"
    line = io.StringIO()
    csv.writer(line).writerow([_recorded_file(a, v, full) for v in a.values])
    return f"{a.axis.name}={line.getvalue().strip()}"


def _recorded_file(a: Plotted, value, full: bool) -> str:
    """An embedding or refiner axis's value as the grid's record names it (`_axis_setting`)."""
    path = value.path if a.axis.name == "embedding" else value
    if path is None or (a.axis.name == "refiner" and not Path(path).expanduser().exists()):
        return a.axis.show(value)  # (None, or a hub id)
    return absolute(path) if full else a.axis.show(value)


def _with_fields(parameters: str, fields: str) -> str:
    """The web UI's `parameters` text with `fields` at the end of its settings line, before the lines that follow it
    (sd-dynamic-prompts' Template lines).

    >>> _with_fields("a {dog|cat}\\nSteps: 2\\nTemplate: x", "Script: X/Y/Z plot")
    'a {dog|cat}\\nSteps: 2, Script: X/Y/Z plot\\nTemplate: x'
    """
    lines = parameters.split("\n")
    end = len(lines)
    while end > 1 and lines[end - 1].startswith(("Template: ", "Negative Template: ")):
        end -= 1
    lines[end - 1] = f"{lines[end - 1]}, {fields}" if lines[end - 1] else fields
    return "\n".join(lines)


def _save_grid(grid: Image.Image, out: Path, info, partial: bool = False) -> Path:
    """Write `grid` as the next free xyz_grid-NNNN.png in `out` (the web UI's grid name and numbering), or
    xyz_grid-NNNN-partial.png for the grid of a plot stopped part-way (numbered with the others), never over a file,
    nor into a folder made again after it was removed (`generate._save_new`)."""
    if not out.is_dir():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(out))
    taken = [int(m[1]) for p in out.glob(f"{GRID_NAME}-*.png") if (m := _GRID_FILE.fullmatch(p.name))]
    number = max(taken, default=-1) + 1
    while True:
        path = out / f"{GRID_NAME}-{number:04d}{PARTIAL * partial}.png"
        try:
            with atomic_path(path, replace=False) as tmp:
                grid.save(tmp, format="PNG", pnginfo=info)
            return path
        except FileExistsError:
            number += 1
