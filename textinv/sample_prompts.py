"""The sample grids' prompts: textinv's own, and kohya's sample prompts file (sd-scripts' `--sample_prompts FILE`).

`--sample-prompts` takes the prompts themselves, or one file of them as kohya's training scripts take it:

    # prompts.txt: a prompt a line; blank lines and lines that start with # are left out
    a photo of sks
    sks on the beach, at dusk --n blurry, lowres --d 42 --l 7.5 --s 28 --ss euler_a --w 512 --h 768

sd-scripts reads it in library/train_util.py (`sample_images_common` reads the file, `line_to_prompt_dict` each
line): a line is cut at every " --", the first part is the prompt and each later one an option, its name, a space
and its value. A .toml file holds a `[prompt]` table of keys every prompt shares and `[[prompt.subset]]` tables, one
per prompt (a subset's key over the shared one); a .json file a list, each entry a line as in the .txt or a mapping
of the .toml's keys (`prompt`, `negative_prompt`, `seed`, `scale`, `sample_steps`, `sample_sampler`, `width`,
`height`).

Each option that textinv's grids can honour becomes that picture's own setting (`KEYS`): its negative prompt, seed,
CFG scale, steps, sampler and size. The others are refused by name (`REFUSED`: a ControlNet or inpainting picture,
which textinv does not draw with), or, where kohya's own SD sampling leaves them unused too, left out with a warning
(`UNUSED`). An option kohya does not know is refused: sd-scripts skips it silently, so a typo (`--sd 42`) would draw
a picture at another seed than meant. A prompt's options left out are the grid's, as for a prompt without any
(--sample-steps, the model's CFG scale and scheduler, the training size, the run's seed + the prompt's place), not
kohya's defaults (30 steps, 7.5, DDIM, 512 x 512, a new random seed at every grid).

What the file gave is what `TrainConfig.sample_prompts` holds from then on, and what config.yaml records: the text of
a prompt without options, a mapping of `KEYS` for one with them. A resume or rerun draws the same grids without the
file, whatever became of it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import check_seed, check_side
from .errors import ConfigError, backslash_note, setting, warn
from .io import read_text
from .samplers import KOHYA, KOHYA_OTHERS, SAMPLERS, check_installed, check_steps

SUFFIXES = (".txt", ".toml", ".json")  # (kohya's: it tells the three forms apart by these, and reads no other)

# a grid picture's own settings, as config.yaml records them: textinv's names (GenerateConfig's), with kohya's
# option in a .txt line and key in a .toml or .json mapping
KEYS = {  # textinv's name: (kohya's option, kohya's key, what it is)
    "prompt": (None, "prompt", "the prompt"),
    "negative_prompt": ("n", "negative_prompt", "the negative prompt"),
    "seed": ("d", "seed", "the seed"),
    "guidance": ("l", "scale", "the CFG scale"),
    "steps": ("s", "sample_steps", "the denoising steps"),
    "sampler": ("ss", "sample_sampler", "the sampler"),
    "width": ("w", "width", "the width"),
    "height": ("h", "height", "the height"),
}
# kohya's `line_to_prompt_dict` takes a .txt line's --s as max(1, min(1000, s)), and its samplers refuse more steps
# than the 1000 noise levels SD is trained with (a .toml's sample_steps is not clamped, and fails there)
MAX_STEPS = 1000
_OPTION = {option: name for name, (option, _, _) in KEYS.items() if option}
_KEY = {key: name for name, (_, key, _) in KEYS.items()}

_NO_EFFECT = "kohya's sampling of SD 1.x, 2.x and SDXL does not use it either"
UNUSED = {  # (kohya's option, kohya's key): why leaving it out changes no picture
    ("g", "guidance_scale"): f"FLUX's guidance (embedded) scale; {_NO_EFFECT} (--l is the CFG scale)",
    ("fs", "flow_shift"): f"the flow shift of flow-matching models (SD3, FLUX); {_NO_EFFECT}",
    ("ctr", "cfg_trunc_ratio"): f"Lumina's CFG truncation; {_NO_EFFECT}",
    ("rcfg", "renorm_cfg"): f"Lumina's CFG renormalisation; {_NO_EFFECT}",
    ("am", "additional_network_multiplier"): "the strength of the LoRA being trained, which kohya's network "
                                             "training samples with; a textual inversion run has none",
}
REFUSED = {  # (kohya's option, kohya's key): why textinv cannot draw the picture as it says
    ("cn", "controlnet_image"): "a ControlNet's picture, and textinv draws its grids without a ControlNet",
    ("i", "image"): "an inpainting model's source picture, and textinv learns words for text-to-image models",
}

@dataclass(frozen=True)
class SamplePrompt:
    """One picture of a sample grid: its prompt and the settings it draws with, None where the grid's stand."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None


def as_sample(entry: str | dict) -> SamplePrompt:
    """A `TrainConfig.sample_prompts` entry (checked: `check_entries`) as a `SamplePrompt`.

    >>> as_sample({"prompt": "a photo of {}", "seed": 42}).seed
    42
    """
    return SamplePrompt(entry) if isinstance(entry, str) else SamplePrompt(**entry)


def prompt_text(entry: str | dict) -> str:
    """The prompt of a `TrainConfig.sample_prompts` entry."""
    return entry if isinstance(entry, str) else str(entry.get("prompt"))


def is_prompt_file(entry) -> bool:
    """Whether a `--sample-prompts` entry names a file of prompts, not a prompt: one line ending in .txt, .toml or
    .json, as kohya's files are named (whether the file is there or not: a missing one is an error, not a prompt)."""
    if not isinstance(entry, (str, os.PathLike)):
        return False
    text = os.fspath(entry)
    return "\n" not in text and Path(text.strip()).suffix.lower() in SUFFIXES


def names_a_file(text: str) -> bool:
    """Whether `text` names a file that is there (False for text no file can be named by: too long, a NUL)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def prompt_file(entries: list) -> str | None:
    """The file of prompts that `entries` (`TrainConfig.sample_prompts`) names, as an absolute path, or None."""
    found = [e for e in entries if is_prompt_file(e)]
    return str(Path(os.fspath(found[0]).strip()).expanduser().absolute()) if found else None


def read_prompt_file(entries: list, resume: bool = False, steps: int = 25) -> list[str | dict]:
    """The prompts of the one file `entries` name (`is_prompt_file`), each read as kohya reads it and checked: the
    text of a prompt without options, a mapping of `KEYS` for one with them, its sampler at its steps, else the
    grid's `steps` (--sample-steps: `check_drawn`). Errors name the file and the line (or table, or entry); an
    option textinv leaves unused is warned about. `resume`: a resumed run, which has the prompts it read recorded (a
    missing file is told so).

    >>> read_prompt_file(["prompts.txt"])  # "a photo of sks --d 42", "# a note", "sks on grass"  # doctest: +SKIP
    [{'prompt': 'a photo of sks', 'seed': 42}, 'sks on grass']
    """
    files = [e for e in entries if is_prompt_file(e)]
    if len(entries) > 1:
        others = [os.fspath(e) for e in entries if e is not files[0]]
        raise ConfigError(f"{setting('sample_prompts')} takes prompts, or one file of them (kohya's), not both: "
                          f"{os.fspath(files[0])} with {others[0]!r}" + (" and more" if len(others) > 1 else "")
                          + "; put every prompt in the file")
    path = Path(os.fspath(files[0]).strip()).expanduser()
    if not names_a_file(str(path)):
        try:
            folder = path.is_dir()
        except (OSError, ValueError):
            folder = False
        what = "is a folder" if folder else f"does not exist{backslash_note(path)}"
        kept = (f" (the resumed run recorded the prompts it read in its config.yaml: leave out "
                f"{setting('sample_prompts')} to draw those)" if resume else "")
        raise ConfigError(f"{setting('sample_prompts', path)} {what}; give kohya's sample prompts file (.txt, .toml or "
                          f".json){kept}. An entry that ends in {', '.join(SUFFIXES)} is read as such a file, not "
                          f"as a prompt")
    try:
        text = read_text(path)  # (UTF-8, or UTF-16 with its byte-order mark)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{setting('sample_prompts', path)} is not UTF-8 text ({e.reason} at byte {e.start}): "
                          f"save it as UTF-8") from e
    suffix = path.suffix.lower()
    if not text.strip():  # (an empty .json or .toml would be a parse error that does not say the file is empty)
        read = []
    elif suffix == ".txt":
        # kohya leaves out blank lines and lines starting with #; an indented # line is a comment here too (kohya
        # would draw its text, which holds no token and is refused as a prompt anyway)
        read = [check_drawn(_line(line.strip(), f"{path} line {n}"), steps, f"{path} line {n}")
                for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.strip().startswith("#")]
    else:
        read = _toml(path, text, steps) if suffix == ".toml" else _json(path, text, steps)
    if not read:
        raise ConfigError(f"{setting('sample_prompts', path)} holds no prompt; write one a line (\"a photo of sks --d "
                          f"42\"), or leave out {setting('sample_prompts')} for the caption templates' first 4")
    return read


def _toml(path: Path, text: str, steps: int) -> list[str | dict]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {setting('sample_prompts', path)}: {e}") from e
    shared, others = data.get("prompt"), [key for key in data if key != "prompt"]
    if not isinstance(shared, dict) or not isinstance(shared.get("subset"), list) or others:
        raise ConfigError(f"{setting('sample_prompts', path)} must hold kohya's [prompt] table (the keys every prompt "
                          f"shares) and its [[prompt.subset]] tables (one per prompt, e.g. prompt = \"a photo of "
                          f"sks\", seed = 42)" + (f", and nothing else: {others[0]!r}" if others else ""))
    common = {key: value for key, value in shared.items() if key != "subset"}
    out = []
    for n, subset in enumerate(shared["subset"], start=1):
        where = f"{path} [[prompt.subset]] {n}"
        if not isinstance(subset, dict):
            raise ConfigError(f"{where} must be a table of key = value, got {subset!r}")
        out.append(check_drawn(_mapping({**common, **subset}, where), steps, where))  # (a subset's key over [prompt]'s)
    return out


def _json(path: Path, text: str, steps: int) -> list[str | dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot parse {setting('sample_prompts', path)}: {e}") from e
    if not isinstance(data, list):
        raise ConfigError(f"{setting('sample_prompts', path)} must hold a list of prompts, each a line as in kohya's "
                          f".txt (\"a photo of sks --d 42\") or a mapping ({{\"prompt\": \"a photo of sks\", \"seed\": "
                          f"42}}), got {type(data).__name__}")
    out = []
    for n, item in enumerate(data, start=1):
        where = f"{path} entry {n}"
        if isinstance(item, str):
            out.append(check_drawn(_line(item.strip(), where), steps, where))
        elif isinstance(item, dict):
            out.append(check_drawn(_mapping(item, where), steps, where))
        else:
            raise ConfigError(f"{where} must be a prompt (text) or a mapping of prompt, seed, ..., got {item!r}")
    return out


def check_drawn(entry: str | dict, steps: int, where: str) -> str | dict:
    """Sample prompt `entry` (given at `where`), refused where its sampler cannot draw its steps, else the grid's
    `steps` (--sample-steps), as the tool it comes from draws them (`samplers.check_steps`: TCD beyond its 50
    timesteps): as the run starts, not at the first grid, after the steps before it have run."""
    if isinstance(entry, dict) and entry.get("sampler"):
        check_steps(entry["sampler"], entry.get("steps") or steps, f"{where}: its sampler")
    return entry


def _line(line: str, where: str) -> str | dict:
    """One prompt of kohya's line syntax: the prompt, then " --NAME VALUE" options (see the module's text)."""
    # kohya cuts only at a plain space before "--": after a tab, or a no-break or full-width space (a prompt copied
    # from a web page, or typed with a Japanese IME), the option would be drawn as words of the prompt, silently
    other = re.search(r"([^\S ])--([A-Za-z]+)", line)
    if other:
        raise ConfigError(f"{where}: --{other[2]} follows {_SPACES.get(other[1], repr(other[1]))}, not a plain "
                          f"space, so kohya's syntax reads it as words of the prompt; put a plain space before "
                          f"--{other[2]}")
    prompt, *options = line.split(" --")
    settings: dict[str, Any] = {"prompt": prompt.strip()}
    for part in options:
        if not part.strip():  # ("a photo of sks --": nothing, as kohya reads it)
            continue
        option, value = re.match(r"(\S*)\s*(.*)", part, re.DOTALL).groups()  # (a tab after the name is a space)
        option, value = option.lower(), value.strip()  # (kohya matches the names in any case)
        pair = next((p for p in list(UNUSED) + list(REFUSED) if p[0] == option), None)
        if pair in REFUSED:
            raise ConfigError(f"{where}: --{option} gives {REFUSED[pair]}; remove the option")
        if pair in UNUSED:
            warn(f"{where}: --{option} left out: it is {UNUSED[pair]}", stacklevel=2)
            continue
        if option not in _OPTION:
            glued = re.fullmatch(r"([a-z]+)(\d[\d.]*)", option)
            hint = (f"write a space before its value (--{glued[1]} {glued[2]}); "
                    if glued and glued[1] in _OPTION else "")
            raise ConfigError(f"{where}: --{part.split(' ')[0]} is none of the options of kohya's sample prompts "
                              f"that textinv draws with; {hint}it reads " + ", ".join(
                                  f"--{o} ({KEYS[n][2]})" for o, n in _OPTION.items()))
        name = _OPTION[option]
        if name in settings:
            raise ConfigError(f"{where}: --{option} is given twice; give it once")
        if not value:
            raise ConfigError(f"{where}: --{option} needs a value ({KEYS[name][2]}), e.g. " + _example(option))
        if name in ("seed", "steps", "width", "height"):
            if not re.fullmatch(r"\d+", value):
                raise ConfigError(f"{where}: --{option} takes a whole number ({KEYS[name][2]}), got {value!r}")
            value = int(value)
        elif name == "guidance":
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: --{option} takes a number ({KEYS[name][2]}), got {value!r}") from None
        settings[name] = _checked(name, value, f"{where}: --{option}")
    return settings["prompt"] if len(settings) == 1 else settings


_SPACES = {"\t": "a tab", "\u00a0": "a no-break space", "\u3000": "a full-width space"}


def _example(option: str) -> str:
    return {"n": "--n blurry, lowres", "d": "--d 42", "l": "--l 7.5", "s": "--s 28", "ss": "--ss euler_a",
            "w": "--w 512", "h": "--h 768"}[option]


def _mapping(item: dict, where: str) -> str | dict:
    """One prompt of kohya's .toml or .json form: a mapping of kohya's keys."""
    settings: dict[str, Any] = {}
    for key, value in item.items():
        pair = next((p for p in list(UNUSED) + list(REFUSED) if p[1] == key), None)
        if pair in REFUSED:
            raise ConfigError(f"{where}: {key} gives {REFUSED[pair]}; remove it")
        if pair in UNUSED:
            warn(f"{where}: {key} left out: it is {UNUSED[pair]}", stacklevel=2)
            continue
        if key not in _KEY:
            ours = f" (textinv's name; kohya's is {KEYS[key][1]!r})" if key in KEYS and KEYS[key][1] != key else ""
            raise ConfigError(f"{where}: unknown key {key!r}{ours}; kohya's sample prompts that textinv draws with "
                              f"take " + ", ".join(k for k in _KEY))
        settings[_KEY[key]] = _checked(_KEY[key], value, f"{where}: {key}")
    if "prompt" not in settings:
        raise ConfigError(f"{where} has no prompt; give each one, e.g. prompt = \"a photo of sks\"")
    return settings["prompt"] if len(settings) == 1 else settings


def _checked(name: str, value, where: str):
    """`value` of the picture setting `name` (`KEYS`) if it can be drawn with, else a ConfigError naming `where`;
    a sampler as textinv names it."""
    if name in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be text, got {type(value).__name__} {value!r}")
        return value
    if name == "sampler":
        sampler = str(value).strip().lower() if isinstance(value, str) else value
        sampler = KOHYA.get(sampler, sampler)
        if sampler in SAMPLERS:
            check_installed(sampler, where)
            return sampler
        which = "kohya's sampler" if sampler in KOHYA_OTHERS else "no sampler textinv knows"
        raise ConfigError(f"{where} {value!r} is {which}; use one of: {', '.join(KOHYA)} (kohya's names), "
                          f"{', '.join(s for s in SAMPLERS if s not in KOHYA)} (textinv's), or leave it out "
                          f"for the model's own")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (name != "guidance"
                                                                          and not isinstance(value, int)):
        what = "a number" if name == "guidance" else "a whole number"
        raise ConfigError(f"{where} must be {what} ({KEYS[name][2]}), got {value!r}")
    if name == "seed":
        check_seed(value, flag=where)
    elif name == "guidance" and not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{where} must be a finite number of at least 1 (the CFG scale; 1 turns guidance off), "
                          f"got {value}")
    elif name == "steps" and not 1 <= value <= MAX_STEPS:
        raise ConfigError(f"{where} must be from 1 to {MAX_STEPS} (the denoising steps; kohya takes a .txt line's "
                          f"--s out of that range as its nearest end), got {value}")
    elif name in ("width", "height"):
        check_side(where, value)
    return float(value) if name == "guidance" else value


def check_entries(entries: list, steps: int = 25) -> None:
    """Refuse a `TrainConfig.sample_prompts` entry that is neither a prompt nor a mapping of `KEYS` with a prompt
    whose values can be drawn with (a config file's, or config.yaml's record of a kohya file), its sampler at its
    steps, else the grid's `steps` (`check_drawn`)."""
    for n, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            continue
        where = f"sample prompt {n}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be text or a mapping of prompt, seed, ..., got {type(entry).__name__} "
                              f"{entry!r}")
        for key, value in entry.items():
            if key not in KEYS:
                kohya = f" ({key!r} is kohya's name; textinv's is {_KEY[key]!r})" if key in _KEY else ""
                raise ConfigError(f"{where} {entry!r}: unknown key {key!r}{kohya}; a sample prompt's mapping takes "
                                  f"{', '.join(KEYS)}")
            checked = _checked(key, value, f"{where}: {key}")
            if key == "sampler" and checked != value:  # (config.yaml records textinv's names, as --sampler takes)
                raise ConfigError(f"{where}: sampler {value!r} is written {checked!r} in textinv")
        if "prompt" not in entry:
            raise ConfigError(f"{where} {entry!r} has no prompt; e.g. {{prompt: 'a photo of {{}}', seed: 42}}")
        check_drawn(entry, steps, where)
