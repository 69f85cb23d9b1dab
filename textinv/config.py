"""Settings of each job: one typed dataclass per job is the single source of defaults, help text and checks.

`TrainConfig` is written next to every training output (`config.yaml`) so a run can be reproduced, and read back
by `--resume`. Settings come from, in rising priority: the defaults here, a YAML or TOML file (`--config`), and
command-line flags. The command line builds its flags from these fields (their `help` metadata is the `--help`).
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import functools
import itertools
import json
import math
import os
import random
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .emphasis import CHUNK, has_and, lora_tags
from .emphasis import MODES as EMPHASIS
from .errors import ConfigError, UnknownSettingError, backslash_note, given, not_one_of, setting, warn
from .foreign import foreign_hint
from .io import read_text
from .optimizers import (OPTIMIZERS, OWN_STEP_SIZE, canonical_optimizer_args, check_optimizer, check_schedule,
                         memory_saver_note)
from .optimizers import SPELLINGS as OPTIMIZER_SPELLINGS
from .samplers import HELP as SAMPLER_HELP
from .samplers import (SAMPLERS, SAMPLERS_LISTED, Churn, check_churn, check_discard, check_eta, check_installed,
                       check_steps)
from .samplers import SPELLINGS as SAMPLER_SPELLINGS
from .refine import DEFAULT_UPSCALER, HIRES_DENOISE, IMG2IMG_DENOISE, UPSCALERS, network_upscaler
from .refine import SPELLINGS as UPSCALER_SPELLINGS
from .tracking import check_trackers


REFINER_SWITCH_AT = 0.8  # the web UI's default Refiner Switch at


def check_refiner_switch(switch_at: float) -> None:
    """Refuse a refiner switch that is not strictly between 0 (the refiner would draw every step) and 1 (none)."""
    if not (math.isfinite(switch_at) and 0 < switch_at < 1):
        raise ConfigError(f"{setting('refiner_switch_at', switch_at, 'g')} must be above 0 and below 1 (how far down "
                          f"the noise schedule the refiner takes over; the web UI's default is {REFINER_SWITCH_AT}); "
                          f"to draw without the refiner, leave {setting('refiner')} out")


def opt(default, help: str, **extra):
    """A dataclass field with its command-line help (and optional `choices`, `flag`, `short`) as metadata.
    `path="file"` marks a local path, `path="source"` a path or else a hub id or bundled name (`--model`),
    `path="embedding"` an embedding's path or else its hub id ('owner/name[/file]', `hub.hub_reference`),
    `path="prompts"` prompts or a file of them (`sample_prompts.is_prompt_file`): a config file's relative ones are
    read from the file's folder (`config_file_settings`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


from .data import MAX_KOHYA_REPEATS, PROPERTIES, flip_default, skip_sides
from .inpaint import (AREAS as INPAINT_AREAS, BLENDS as INPAINT_BLENDS, FILLS as INPAINT_FILLS, MASK_BLUR,
                      MASKED_PADDING)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
INIT_SPREADS = ("average", "webui")  # how an init text of more tokens than --vectors fills them: tokens.init_vectors


def precision_refused(value) -> str | None:
    """--precision's answer to accelerate's and the diffusers script's `--mixed_precision no`."""
    if str(value).strip().lower() == "no":
        return "is the diffusers script's and accelerate's word for full precision: give fp32"
    return None
SAVE_FORMATS = ("diffusers", "a1111", "kohya", "sdxl")
# kohya's --save_model_as takes a suffix (safetensors, pt, ckpt) where --format takes a layout: the one that writes it
_SUFFIX_LAYOUTS = {
    "safetensors": "kohya (NAME.safetensors, {\"emb_params\": ...} as kohya's script writes it; SDXL: sdxl's "
                   "clip_l and clip_g), or diffusers, the default (learned_embeds.safetensors)",
    "pt": "a1111 (NAME.pt, the web UI's layout: it loads wherever kohya's .pt does)",
    "ckpt": "a1111 (NAME.pt, the web UI's layout: it loads wherever kohya's .ckpt does)",
    "bin": "diffusers (learned_embeds.safetensors; `textinv convert` writes the diffusers script's pickled "
           "learned_embeds.bin from it)",
}


def format_refused(value) -> str | None:
    """--format's answer to a file's suffix given for its layout (kohya's `--save_model_as safetensors`)."""
    layout = _SUFFIX_LAYOUTS.get(str(value).strip().lower().lstrip("."))
    if layout:
        return (f"is a file's suffix (kohya's --save_model_as); --format names the layout, and the suffix follows: "
                f"give {layout}")
    return None
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
COMPILE = ("off", "blocks", "unet")
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")  # kohya's --loss_type
HUBER_SCHEDULES = ("snr", "exponential", "constant")  # kohya's --huber_schedule
MAX_TOKEN_LENGTHS = (CHUNK, 2 * CHUNK, 3 * CHUNK)  # kohya's --max_token_length: left out (75), 150 or 225
METADATA = ("shareable", "full", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICE_HELP = "where the model runs: auto (a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps"
REVISION_HELP = ("a hub id's branch, tag or commit to load (e.g. fp16 for CompVis/stable-diffusion-v1-4); default: "
                 "main; hub ids only")
VARIANT_HELP = ("the weights' variant to load (e.g. fp16: half the download), for a hub id or a diffusers folder; "
                "default: the plain weights (a folder's only variant where it has no others)")


def spelled(spellings: dict[str, str], value, note=None):
    """`value` as textinv names it when `spellings` (a field's, by lowercase name) knows it, else as it is. `note`
    (a field's `notes`): what to say, as a warning, when a spelling is taken as something else than it names.

    >>> spelled(SAMPLER_SPELLINGS, "DPM++ 2M Karras"), spelled(SAMPLER_SPELLINGS, "k_euler_a")
    ('dpm++2m_karras', 'euler_a')
    """
    if not isinstance(value, str):
        return value
    said = note(value) if note is not None else None
    if said:
        warn(said, stacklevel=3)
    return spellings.get(value.strip().lower(), value)


def check_choices(config) -> None:
    """Raise ConfigError for any field of the dataclass `config` whose value is not among its `choices` (the
    command line's argparse checks them too; config files and Python callers come here), naming it as its user wrote
    it (`errors.given`: `sampler='eulr'` from Python, `--sampler 'eulr'` on the command line). A field that takes other
    tools' names of its choices (`spellings`) is first set to textinv's name, which the run records."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if "spellings" in f.metadata:
            setattr(config, f.name, spelled(f.metadata["spellings"], getattr(config, f.name), f.metadata.get("notes")))
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            refused = f.metadata.get("refused", lambda _: None)(value)  # (a field's own answer to a name it lacks)
            said = refused or not_one_of(choices, f.metadata.get("listed")) + _near(value, choices)
            raise ConfigError(f"{given(f.name, value)} {said}")


def _near(value, choices) -> str:
    """"; did you mean 'euler'?" for a choice mistyped (`sampler="eulr"`), as the command line's argparse error
    says it, where one is near enough; else nothing.

    >>> _near("eulr", ["euler", "heun"]), _near("zzz", ["euler", "heun"])
    ("; did you mean 'euler'?", '')
    """
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, [str(choice) for choice in choices], n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


# what a setting given from Python needs besides its type, where the plain "takes a list" would not say it
_PYTHON_HINTS = {
    "images": "save the pictures into a folder first (for i, im in enumerate(pictures): im.save(f'pics/{i}.png')) "
              "and pass images='pics': the run records the folder in config.yaml, which --resume and a rerun read",
    # (by the value's type: a loaded embedding, wherever a file of one is meant)
    "LearnedEmbedding": "pass its file (train's result.files[0], or one save_embedding(emb, 'emb.safetensors') "
                        "writes): what is drawn records the file it came from",
}


def check_types(config) -> None:
    """Refuse a setting of the dataclass `config` that holds another type than its field's: one text where a list
    is meant (`prompt="a photo of <my-dog>"` would be read letter by letter), text where a number is meant
    (`n="4"` failed deep inside a comparison), a list of pictures where a folder is meant. The command line and
    config files never get here with one (`_coerce` reads their text); Python callers do. A path may be a `Path`.

    >>> check_types(GenerateConfig(prompt="a photo of <my-dog>"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    textinv.errors.ConfigError: prompt= takes a list, got str 'a photo of <my-dog>'; e.g. prompt=['a photo of <my-dog>']
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), hints[f.name]
        if value is None:  # (a setting left to its default; the checks of each setting refuse a missing one)
            continue
        ok = {list: isinstance(value, (list, tuple)), bool: isinstance(value, bool),
              int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool),
              str: isinstance(value, (str, os.PathLike))
              or (f.metadata.get("stepped") and isinstance(value, (int, float)) and not isinstance(value, bool))
              }.get(kind, True)
        what = {list: "a list", bool: "True or False", int: "a whole number", float: "a number"}.get(
            kind, "text or a Path" if f.metadata.get("path") else "text")
        if ok and kind is list and f.metadata.get("path"):  # (a list of paths: of text or Paths, or a mapping)
            value = next((item for item in value if not isinstance(item, (str, os.PathLike, dict))), None)
            ok, what = value is None, "a list of text or Paths"
        if ok:
            continue
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        fix = _PYTHON_HINTS.get(type(value).__name__) or _PYTHON_HINTS.get(f.name) or (
            f"e.g. {f.name}=[{value!r}]" if kind is list and isinstance(
            value, (str, os.PathLike)) else "")
        if f.name == "lr" and stepped_rate_note(value):  # (the command line's --lr says the same of it)
            fix = f"it is the web UI's stepped rate (RATE:STEP, ..., RATE): give it as lr_steps={value!r}"
        raise ConfigError(f"{f.name}= takes {what}, got {type(value).__name__} {shown}" + (f"; {fix}" if fix else ""))


def expand_home(config) -> None:
    """Each local path of the dataclass `config` (its `path` settings) that starts with `~`, read as the home folder:
    the shell leaves a `~` as it is when quoted, after `=` (`--out=~/runs/dog`) and in a config file, and every
    command then reads and writes the same folder, and records it so (config.yaml). A hub id or bundled name never
    starts with `~`; a sample prompt only where it names a file of prompts (`is_prompt_file`)."""
    for f in dataclasses.fields(config):
        kind = f.metadata.get("path")
        if kind:
            setattr(config, f.name, _at_home(getattr(config, f.name), kind))


def _at_home(value, kind: str):
    if isinstance(value, (list, tuple)):
        return type(value)(_at_home(item, kind) for item in value)
    if isinstance(value, dict) and "images" in value:  # (a --concepts mapping of a config file, or Python's)
        return {**value, "images": _at_home(value["images"], "file")}
    if isinstance(value, os.PathLike):  # (text from here on, as the command line gives it)
        value = os.fspath(value)
    if isinstance(value, str) and value.startswith("~"):
        from .sample_prompts import is_prompt_file

        return os.path.expanduser(value) if kind != "prompts" or is_prompt_file(value) else value
    return value


MAX_LR = 1e6  # far above any useful rate, far below where float32 arithmetic overflows


def check_lr(lr: float) -> None:
    """Refuse a learning rate that is not positive, or so large that Adam's first step overflows float32 (it
    divides by 0.1)."""
    if not (0 < lr <= MAX_LR):
        raise ConfigError(f"{setting('lr')} must be > 0 and at most {MAX_LR:g}, got {lr}; textual inversion uses "
                          f"about 5e-3")


def parse_lr_steps(text: str, name: str = "lr_steps", what: str = "rate", most: float = MAX_LR
                   ) -> list[tuple[float, int | None]]:
    """The A1111 web UI's stepped learning rate as (rate, until step) pairs; the last step may be None (to the end).
    `name`, `what` and `most`: the setting, its values' name and their limit, for its other stepped settings.

    >>> parse_lr_steps("0.05:10, 0.02:20, 0.005")
    [(0.05, 10), (0.02, 20), (0.005, None)]
    """
    pairs: list[tuple[float, int | None]] = []
    items = [item.strip() for item in str(text).split(",") if item.strip()]  # (the web UI skips empty parts too)
    if not items:
        raise ConfigError(f"{given(name, text)} holds no {what}; e.g. '0.05:10, 0.005'")
    for n, item in enumerate(items):
        rate, sep, until = (part.strip() for part in item.partition(":"))
        try:
            value = float(rate)
            step = int(until) if sep else None
        except ValueError:
            raise ConfigError(f"{given(name, text)}: {item!r} is not {what.upper()}:STEP (e.g. 0.005:100) or a last "
                              f"{what.upper()}") from None
        if step == -1 and n == len(items) - 1:  # the web UI's "to the end"
            step = None
        if not 0 < value <= most:
            limit = f" and at most {most:g}" if most < math.inf else ""
            raise ConfigError(f"{given(name, text)}: the {what} {value:g} must be > 0{limit}")
        if step is None and n < len(items) - 1:
            raise ConfigError(f"{given(name, text)}: only the last {what} may go without a step ({what.upper()}:STEP, "
                              f"..., {what.upper()})")
        if step is not None and step <= (pairs[-1][1] if pairs else 0):
            raise ConfigError(f"{given(name, text)}: the steps must rise from 1, got {step} after "
                              f"{pairs[-1][1] if pairs else 'the start'}")
        pairs.append((value, step))
    return pairs


def stepped_value(pairs: list[tuple[float, int | None]], step: int) -> float:
    """The value of a stepped setting (`parse_lr_steps`) at optimizer step `step` (from 0): each value until its
    step, the last one after that too.

    >>> stepped_value([(0.05, 10), (0.005, None)], 9), stepped_value([(0.05, 10), (0.005, 20)], 25)
    (0.05, 0.005)
    """
    return next((value for value, until in pairs if until is None or step < until), pairs[-1][0])


def clip_steps(value, name: str) -> list[tuple[float, int | None]] | None:
    """Setting `name`, --max-grad-norm or --max-grad-value, as stepped values (`parse_lr_steps`): one number, or the
    web UI's stepped clip value ('0.1:100, 0.05'); None when off.

    >>> clip_steps(1.0, "max_grad_norm"), clip_steps("0.1:100, 0.05", "max_grad_value")
    ([(1.0, None)], [(0.1, 100), (0.05, None)])
    """
    if value is None:
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return parse_lr_steps(value, name, "value", math.inf)
    if not number > 0:  # (also refuses NaN)
        raise ConfigError(f"{setting(name)} must be > 0 when given, got {value}")
    return [(number, None)]


def lr_steps_end(text: str | None) -> int | None:
    """The step at which a stepped rate (`parse_lr_steps`) ends the run: its last rate's step, as the web UI stops
    there; None when the last rate goes on to the end (or there is no stepped rate).

    >>> lr_steps_end("0.005:100, 1e-3:1000"), lr_steps_end("0.005:100, 1e-3")
    (1000, None)
    """
    return parse_lr_steps(text)[-1][1] if text is not None else None


def check_clip_skip_value(clip_skip: int) -> None:
    """Refuse a clip skip below 1 (the model's own depth is checked once it has loaded: `models.check_clip_skip`)."""
    if not isinstance(clip_skip, int) or clip_skip < 1:
        raise ConfigError(f"{setting('clip_skip')} must be a whole number >= 1 (1: the last layer), got {clip_skip!r}")


def check_seed(seed: int, count: int = 1, flag: str | None = None, negative: bool = False) -> None:
    """Refuse a seed torch's generators cannot take: at most 2**64 - 1 for each of the `count` seeds seed, seed + 1,
    ... that a job draws with, and at least 0, or with `negative` -2**63 (torch wraps it: -1 is 2**64 - 1; a job
    whose seeds also go to numpy, which refuses them, leaves it off). `flag`: how the refusal names the seed (by
    default the setting seed, as its user writes it: `errors.setting`)."""
    low = -2**63 if negative else 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= 2**64 - count:
        raise ConfigError(f"{flag or setting('seed')} must be a whole number from {low} to {2**64 - count}, got "
                          f"{seed!r}")


MAX_RESOLUTION = 8192  # 8x SD 1.x's 512 and SDXL's 1024: above it a typo (100000) would only exhaust memory


def check_guidance(guidance: float | None) -> None:
    """Refuse a guidance scale below 1: the pipelines only guide above 1, so 0 or -5 would draw unguided pictures
    while the settings said otherwise."""
    if guidance is not None and not guidance >= 1:
        raise ConfigError(f"{setting('guidance')} must be at least 1 (1 turns guidance off), got {guidance}")


DEFAULT_STEPS = 3000
DEFAULT_LR = 5e-3  # the paper's base rate
# loss.csv's and validation.csv's own columns (`run_folder.write_loss_log`), beside a column per token with several
# concepts: no token may be named as one of them (`TrainConfig._check_log_columns`)
LOG_COLUMNS = ("step", "loss", "validation_loss", "learn_rate", "epoch")


def either_length() -> str:
    """--steps and --epochs both say how long a run is: one of them, or the run would have two lengths."""
    return (f"give the run's length as {setting('steps')} or as {setting('epochs')}, not both ({setting('epochs')} E "
            f"sets {setting('steps')} to E epochs' steps)")


# settings that say one thing two ways, each with what its refusal says: a layer of settings (a config file, the
# flags) that gives one of them replaces the other one a lower layer gave (a flag's --epochs beats a file's steps:
# `build`), and one that gives both is refused (`check_alternatives`)
ALTERNATIVES = {"TrainConfig": {("steps", "epochs"): either_length,
                                ("max_grad_norm", "max_grad_value"): lambda: (
                                    f"{setting('max_grad_norm')} and {setting('max_grad_value')}: clip by the norm or "
                                    f"by each value (the web UI's gradient clipping mode picks one); give one of them"),
                                ("lr", "lr_steps"): lambda: f"{setting('lr_steps')} gives the rates: leave out "
                                                            f"{setting('lr')}"}}


def random_seed() -> int:
    """A seed asked for as -1 (the web UI's "random"), from the system's randomness rather than Python's global
    generator: drawing it left a caller's own `random` numbers changed, and a notebook that had seeded `random` drew
    the same "random" seed on every run. The seed drawn is recorded with every picture, which is how it is drawn
    again."""
    return random.SystemRandom().randrange(2**32)


def named_settings(cls):
    """`cls` (a config dataclass) made to refuse a keyword it has no setting of with the setting meant, as the
    command line names the flag meant for a mistyped one: the nearest name (`TrainConfig(stpes=3)`: steps=?), or
    textinv's name for another tool's (`placeholder_token=`: token=), where Python's own TypeError names only the
    keyword."""
    init, names = cls.__init__, {f.name for f in dataclasses.fields(cls) if f.init}
    command = cls.__name__.removesuffix("Config").lower()

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for key in (key for key in kwargs if key not in names):
            hint = foreign_hint(key, command, as_key=True)
            near = difflib.get_close_matches(key, sorted(names), n=1)
            said = hint or (f"did you mean {near[0]}=?" if near else f"its settings are the flags of textinv "
                                                                       f"{command} (see help({cls.__name__}))")
            raise UnknownSettingError(f"{cls.__name__} has no setting {key!r}: {said}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def check_config_object(config, cls) -> None:
    """Refuse a config argument (of `train`, `generate`, `merge`, `score`) that is no `cls`, naming what it is and
    what to pass: a dict of settings, or another command's config, failed on a missing attribute.

    >>> check_config_object({"steps": 3}, TrainConfig)
    Traceback (most recent call last):
    textinv.errors.ConfigError: config= takes a TrainConfig, got dict; pass TrainConfig(**settings)
    """
    if isinstance(config, cls):
        return
    if isinstance(config, dict):
        fix = f"pass {cls.__name__}(**settings)"
    elif dataclasses.is_dataclass(config) and type(config).__name__.endswith("Config"):
        fix = f"{type(config).__name__} holds the settings of {type(config).__name__.removesuffix('Config').lower()}()"
    else:
        fix = f"see help({cls.__name__})"
    raise ConfigError(f"config= takes a {cls.__name__}, got {type(config).__name__}; {fix}")


@named_settings
@dataclass
class TrainConfig:
    """Everything that defines a textual-inversion training run."""

    images: str = opt(None, "folder with 3-10 pictures of the concept (captions in NAME.txt beside an image are "
                            "used), or in kohya's layout: subfolders <repeats>_<words> of pictures", path="file")
    token: str = opt(None, "the new word to learn, e.g. '<my-dog>'; write it in prompts later")
    concepts: list = opt([], "several concepts in one run instead of --images/--token: FOLDER=TOKEN[=INIT] each "
                             "(in a config file, also mappings with images, token, init)", path="file")
    dataset_config: str = opt(None, "kohya's dataset config (its --dataset_config, a .toml or .json file) instead of "
                                    "--images: the pictures of its [[datasets.subsets]], each its num_repeats "
                                    "times, and the settings it gives (resolution, batch_size, enable_bucket, "
                                    "flip_aug, shuffle_caption, ...); config.yaml records what it gave, as `subsets` "
                                    "and those settings", path="file")
    subsets: list = opt([], "the one --token's picture folders, each with its repeats and caption extension "
                            "(kohya's subsets, what --dataset-config read): in a config file, mappings of images, "
                            "repeats and caption_extension (and skip_image_resolution)", path="file", cli=False)
    out: str = opt(None, "output folder: embedding, config, checkpoints, samples, loss log", path="file")
    model: str = opt("shapes", "diffusers folder, single .safetensors/.ckpt file, hub id, or a bundled name",
                     path="source")
    revision: str = opt(None, REVISION_HELP)
    variant: str = opt(None, VARIANT_HELP)
    init: str = opt(None, "word or phrase to start from (e.g. 'dog'); default: the --property word, or the "
                    "model's own word for it (the bundled model's 'shape')")
    init_spread: str = opt("average", "how an init text of more tokens than --vectors fills them: average (each "
                                      "vector the mean of its run of tokens) or webui (as the A1111 web UI: vector i "
                                      "copies token i x tokens / vectors, the others left out; on SD 1.x, and SDXL's "
                                      "first encoder, the first --vectors tokens, as its tokenizer cuts the text "
                                      "there); fewer tokens than vectors are spread alike by both",
                           choices=INIT_SPREADS)
    init_embedding: str = opt(None, "start from this embedding file's vectors instead (any format: continue a run "
                                    "whose checkpoints are gone, or refine a downloaded embedding, as kohya's "
                                    "--weights), or a hub id (owner/name); --vectors is its count unless given (and "
                                    "must match it)", path="embedding")
    property: str = opt("object", "what the images share: an object or a style", choices=PROPERTIES)
    vectors: int = opt(None, "vectors per token (more = more capacity, less editability); default: 1, or the "
                             "--init-embedding file's count")
    steps: int = opt(None, f"optimizer steps (or give --epochs instead); default {DEFAULT_STEPS}, or the last step "
                           f"of a --lr-steps that ends in one")
    epochs: int = opt(None, "the run's length in epochs instead of --steps, as the diffusers script's "
                            "--num_train_epochs and kohya's --max_train_epochs: an epoch is every picture its "
                            "--repeats times (in kohya's layout, times its folder's count), with several --concepts "
                            "the largest concept's; the steps, E x that / (batch x grad-accum x processes) rounded "
                            "up, are printed and saved in config.yaml")
    batch: int = opt(4, "images per step (per process)")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    lr: float = opt(None, f"learning rate; default {DEFAULT_LR:g}, the paper's base rate (left out with --lr-steps, "
                          f"which gives the rates)")
    scale_lr: bool = opt(False, "multiply lr by batch * grad_accum * processes, as the reference's --scale_lr")
    lr_schedule: str = opt("constant", "learning-rate schedule", choices=LR_SCHEDULES)
    lr_steps: str = opt(None, "the A1111 web UI's stepped rate instead of --lr: 'RATE:STEP, RATE:STEP, ..., RATE' "
                              "uses each RATE until optimizer step STEP, the last to the end, e.g. "
                              "'0.05:10, 0.02:20, 0.01:60, 0.005'; a last RATE:STEP ends the run at STEP, as the "
                              "web UI's does (--steps left out is taken as it)")
    lr_cycles: int = opt(1, "--lr-schedule cosine_with_restarts: the cosine falls to 0 this many times, restarting "
                            "at --lr each time (kohya's --lr_scheduler_num_cycles)")
    lr_power: float = opt(1.0, "--lr-schedule polynomial: the decay's power, from --lr to 1e-7 at the last step (1: "
                               "linear; kohya's --lr_scheduler_power)")
    warmup_steps: int = opt(0, "linear lr warm-up steps")
    optimizer: str = opt("adamw", "the optimizer of the new vectors: adamw (the paper's), lion (needs pip install "
                                  "lion-pytorch), prodigy (needs pip install prodigyopt; give --lr 1.0), adafactor, "
                                  "sgd (Nesterov momentum 0.9), adamw-schedulefree, sgd-schedulefree, "
                                  "radam-schedulefree (need pip install schedulefree; no --lr-schedule), "
                                  "dadapt-adam, dadapt-adam-preprint, dadapt-adagrad, dadapt-adan, dadapt-adan-ip, "
                                  "dadapt-lion, dadapt-sgd (need pip install dadaptation; give --lr 1.0); kohya's "
                                  "names (AdamW8bit, Lion, Prodigy, AdaFactor, SGDNesterov, AdamWScheduleFree, "
                                  "DAdaptation, DAdaptAdam, ...) are taken as these, its 8-bit and paged ones as the "
                                  "fp32 optimizer",
                          choices=OPTIMIZERS, spellings=OPTIMIZER_SPELLINGS, notes=memory_saver_note)
    optimizer_args: list = opt([], "the optimizer's own arguments, KEY=VALUE each, the value as Python reads it "
                                   "(kohya's --optimizer_args), e.g. betas=0.9,0.99 eps=1e-6, or d_coef=2 for "
                                   "prodigy; --lr and --weight-decay are given by their flags")
    weight_decay: float = opt(0.01, "weight decay of the new vectors only (the reference's 1e-2), as --optimizer "
                                    "applies it: decoupled for adamw, lion, prodigy and adafactor, an L2 term for sgd")
    max_grad_norm: str = opt(None, "clip the vectors' gradient norm to this (off by default); or stepped as "
                                   "--lr-steps, the web UI's clip value: '0.1:100, 0.05' clips at 0.1 until step "
                                   "100, then at 0.05", stepped=True)  # (a number from Python too)
    max_grad_value: str = opt(None, "clip each number of the vectors' gradient to [-V, V] instead (the web UI's "
                                    "gradient clipping 'value'; off by default); stepped as --max-grad-norm",
                              stepped=True)
    min_snr_gamma: float = opt(None, "min-SNR loss weighting gamma (Hang et al. 2023; 5.0 is typical); off by default")
    clip_skip: int = opt(1, "text-encoder layer read, counted from the end as A1111 and kohya count (1: the last; 2: "
                            "the penultimate, usual for anime SD 1.x models); generate with the same. SD 1.x/2.x "
                            "(SDXL reads its penultimate layers: 1 and 2 both mean that there)")
    max_token_length: int = opt(CHUNK, "caption tokens training reads: 75, one pass of the text encoder (77 with "
                                       "its start and end; the rest of a longer caption is cut off), or kohya's "
                                       "--max_token_length 150 or 225: the caption in chunks of 75 tokens, each "
                                       "encoded on its own, laid end to end as kohya's scripts lay them (for long "
                                       "tag captions)", choices=MAX_TOKEN_LENGTHS)
    noise_offset: float = opt(0.0, "offset noise (kohya's --noise_offset): add this times one random number per "
                                   "sample and latent channel to the training noise, so training also sees noise "
                                   "that shifts a picture's overall brightness and colour; 0.05-0.1 is typical; 0: off")
    noise_offset_random_strength: bool = opt(False, "the offset a random fraction of --noise-offset, uniform "
                                                    "in [0, X), drawn anew for each batch (kohya's "
                                                    "--noise_offset_random_strength)")
    adaptive_noise_scale: float = opt(0.0, "with --noise-offset: add this times the absolute mean of each sample's "
                                           "latent channel to that channel's offset (kohya's --adaptive_noise_scale; "
                                           "may be negative, the offset then stops at 0); 0: off")
    multires_noise_iterations: int = opt(0, "multi-resolution (pyramid) noise (kohya's --multires_noise_iterations): "
                                            "add normal noise drawn at up to N ever coarser sizes, scaled up, to the "
                                            "training noise, then rescale it to unit spread; 6-10 is typical; 0: off")
    multires_noise_discount: float = opt(0.3, "each coarser size of --multires-noise-iterations weighs this times "
                                              "the one before (kohya's --multires_noise_discount)")
    ip_noise_gamma: float = opt(0.0, "input perturbation (Ning et al. 2023; kohya's --ip_noise_gamma): the latents "
                                     "are noised with the noise plus this times more normal noise, while the target "
                                     "stays the noise; about 0.1 is typical; 0: off")
    ip_noise_gamma_random_strength: bool = opt(False, "the perturbation a random fraction of --ip-noise-gamma, "
                                                      "uniform in [0, G), drawn anew for each batch (kohya's "
                                                      "--ip_noise_gamma_random_strength)")
    loss_type: str = opt("l2", "the loss of the prediction against its target, per latent pixel (kohya's "
                               "--loss_type): l2 (squared error, the paper's), l1 (absolute error), huber or "
                               "smooth_l1 (pseudo-Huber with --huber-c's threshold: squared near 0, absolute far "
                               "from it; huber scaled by the threshold)", choices=LOSS_TYPES)
    huber_schedule: str = opt("snr", "the pseudo-Huber threshold by timestep (kohya's --huber_schedule): snr "
                                     "((1 - C) / (1 + sigma)^2 + C, from about 1 at the clean end to C at the noisy "
                                     "end), exponential (C^(t/T) x --huber-scale) or constant (C x --huber-scale)",
                              choices=HUBER_SCHEDULES)
    huber_c: float = opt(0.1, "the pseudo-Huber threshold C of --loss-type huber and smooth_l1 (kohya's --huber_c)")
    huber_scale: float = opt(1.0, "multiplies the exponential and constant --huber-schedule's threshold (kohya's "
                                  "--huber_scale; its snr schedule has none)")
    debiased_estimation_loss: bool = opt(False, "weigh each sample's loss by 1/sqrt(SNR) (v-prediction: 1/(SNR + 1)), "
                                                "SNR capped at 1000 (Yu et al. 2024, kohya's "
                                                "--debiased_estimation_loss)")
    scale_v_pred_loss_like_noise_pred: bool = opt(False, "v-prediction models: weigh each sample's loss by SNR/(SNR "
                                                         "+ 1), SNR capped at 1000, so it weighs the timesteps as an "
                                                         "epsilon loss does (kohya's "
                                                         "--scale_v_pred_loss_like_noise_pred)")
    v_pred_like_loss: float = opt(0.0, "epsilon-prediction models: add this times the loss weighed as a v-prediction "
                                       "loss, (SNR + 1)/SNR, SNR capped at 1000 (kohya's --v_pred_like_loss); 0: off")
    min_timestep: int = opt(0, "draw training timesteps from this one up (kohya's --min_timestep)")
    max_timestep: int = opt(None, "draw training timesteps below this one (kohya's --max_timestep); default: the "
                                  "model's schedule length (1000 for SD)")
    resolution: int | list = opt(None, "training image size: one side of a square, or WIDTHxHEIGHT (kohya's "
                                        "WIDTH,HEIGHT) for pictures of that size; default: the model's native size")
    center_crop: bool = opt(True, "resize the short side then center-crop (false: squash the whole image)")
    random_crop: bool = opt(False, "train each picture at random windows of its training size instead of its centre "
                                   "(kohya's --random_crop): 8 windows a picture, drawn from --seed and encoded up "
                                   "front, one of them a sample")
    alpha_mask: bool = opt(False, "weigh the loss by each picture's alpha channel (the web UI's 'use PNG alpha "
                                  "channel as loss weight', kohya's --alpha_mask): transparent parts are not "
                                  "learned; pictures without one weigh 1 everywhere")
    buckets: bool = opt(False, "aspect-ratio buckets (kohya's --enable_bucket): each picture trains at the size "
                               "nearest its own proportions, about --resolution's area, instead of its centre "
                               "square, so a portrait keeps its head and feet")
    bucket_no_upscale: bool = opt(False, "with --buckets: never enlarge a picture (kohya's --bucket_no_upscale): one "
                                         "within --resolution's area keeps its own size, one larger is scaled down "
                                         "to about that area, and each trains at that size cut down to the buckets' "
                                         "steps, a bucket of its own")
    latent_sampling: str = opt("random", "the latent each use of a picture trains on, from its VAE distribution "
                                         "(the web UI's latent sampling method): random, a new draw each time; "
                                         "deterministic, the distribution's mean; once, one draw from --seed kept",
                               choices=("random", "deterministic", "once"))
    flip: bool = opt(None, "random horizontal flips (p=0.5); default on, as in the paper's code")
    repeats: int = opt(1, "times each image appears per epoch (weighting between images); in kohya's layout, "
                         "times its folder's count")
    shuffle_tags: bool = opt(False, "shuffle the comma-separated tags of each caption every time it is used (the web "
                                    "UI's 'shuffle tags', kohya's --shuffle_caption)")
    tag_dropout: float = opt(0.0, "leave out each caption tag with this chance (the web UI's 'drop out tags', "
                                  "kohya's --caption_tag_dropout_rate); the tag holding the token stays")
    keep_tags: int = opt(0, "the first N caption tags stay first and are never dropped (kohya's --keep_tokens)")
    caption_dropout: float = opt(0.0, "train each sample with this chance on the empty prompt, as kohya's "
                                      "--caption_dropout_rate drops the whole caption (templates, prefix and token "
                                      "too): the vectors learn nothing from it")
    caption_dropout_every: int = opt(0, "train every sample of every Nth epoch (N, 2N, ...) on the empty prompt, as "
                                        "kohya's --caption_dropout_every_n_epochs (0: never)")
    caption_wildcards: bool = opt(False, "a caption file's lines are its captions, one drawn each time it is used, "
                                         "and {a|b|c} in it one choice drawn ({{ and }} a brace), from --seed "
                                         "(kohya's --enable_wildcard)")
    tag_warmup_min: int = opt(1, "with --tag-warmup-steps, the caption tags used at the first step (kohya's "
                                 "--token_warmup_min)")
    tag_warmup_steps: float = opt(0, "use a caption's tags from --tag-warmup-min at the first step up to all of them "
                                     "at this step, in the caption's order (kohya's --token_warmup_step; below 1, a "
                                     "share of --steps; 0: all from the start)")
    tag_separator: str = opt(",", "what separates a caption's tags for --shuffle-tags and --tag-dropout (kohya's "
                                  "--caption_separator); the varied tags are joined with ', ', as kohya's")
    keep_tags_separator: str = opt("", "in a caption holding it (e.g. '|||'), the tags before it stay in place and "
                                       "those after a second one stay at the end, instead of --keep-tags' (kohya's "
                                       "--keep_tokens_separator); taken out of the caption")
    tag_joiner: str = opt("", "tags joined by it (e.g. ';;;') count as one for --shuffle-tags and --tag-dropout, "
                              "then it is written as --tag-separator (kohya's --secondary_separator)")
    caption_prefix: str = opt("", "text put before each caption file's caption, a space between (kohya's "
                                  "--caption_prefix); the templates stay as they are, as kohya's replace the caption")
    caption_suffix: str = opt("", "text put after each caption file's caption, a space between (kohya's "
                                  "--caption_suffix)")
    templates: str = opt(None, "file of caption templates, one per line, '{}' (or A1111 '[name]') marks the token; "
                               "default: the paper's for --property, or the model's own", path="file")
    precision: str = opt(None, "weights' precision; auto = bf16 on a CUDA GPU that has it, else fp32; default: "
                               "accelerate launch's --mixed_precision fp16 or bf16 (or its config file's), else auto",
                         choices=PRECISIONS, refused=precision_refused)
    device: str = opt("auto", DEVICE_HELP)
    seed: int = opt(0, "random seed: same seed and settings give the same run (on the CPU: at the same thread count)")
    save_every: int = opt(500, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "how many checkpoints to keep (older ones are deleted)")
    step_embeddings: bool = opt(True, "at every --save-every step also keep that step's embedding in embeddings/ "
                                      "(as A1111 and the diffusers script do), to pick the best step by its samples")
    sample_every: int = opt(500, "sample grid every N steps (0: never)")
    png_embeddings: bool = opt(False, "with each sample grid also write samples/NAME-STEP.png, that step's "
                                      "embedding inside a picture of the grid, as the web UI's 'save images with "
                                      "embedding in PNG chunks' does (the web UI loads it from its embeddings folder)")
    png_caption: bool = opt(True, "caption --png-embeddings' pictures as the web UI does: the name at the top, the "
                                  "checkpoint, its hash, the vectors and steps at the bottom, on a darkened band "
                                  "(--no-png-caption: the grid as drawn)")
    sample_prompts: list = opt([], "prompts for the sample grids ('{}' or the token written out marks it), or one "
                                   "file of them as kohya's --sample_prompts takes it (.txt, .toml or .json), with "
                                   "its per-prompt options (--n negative prompt, --d seed, --l CFG scale, --s steps, "
                                   "--ss sampler, --w/--h size); config.yaml records what the file gave; default: "
                                   "the caption templates' first 4", path="prompts")
    sample_steps: int = opt(25, "denoising steps for sample grids")
    log_every: int = opt(10, "loss log interval in steps")
    validation_split: float = opt(0.0, "hold out this share of each concept's pictures from training (round(share x "
                                       "pictures), at least one, leaving one to train on; of kohya subsets or "
                                       "layout folders, each's own share, as kohya counts it) and score the "
                                       "validation loss on them (kohya's --validation_split); 0: none held out, "
                                       "and the validation loss, when --validate-every asks for it, is the "
                                       "training pictures'")
    validation_images: str = opt(None, "a folder of pictures of the concept kept for the validation loss and never "
                                       "trained on, instead of --validation-split's share (one concept)",
                                 path="file")
    validate_every: int = opt(None, "score the validation loss every N steps, and before the first and at the "
                                    "last: the run's loss at draws fixed for the whole run, so a change is the "
                                    "vectors' (validation.csv; 0: never); default: at every --save-every step with "
                                    "--validation-split or --validation-images, else never")
    validation_seed: int = opt(None, "seed of the pictures --validation-split holds out and of the validation "
                                     "loss's fixed draws (kohya's --validation_seed); default: --seed")
    validation_draws: int = opt(16, "draws per picture the validation loss averages, each at its own timestep, "
                                       "spread evenly over the training timesteps")
    log_with: str = opt(None, "also log the loss, learning rate and sample grids to an experiment tracker, through "
                              "accelerate: tensorboard (pip install tensorboard), or wandb, comet_ml, aim, mlflow, "
                              "clearml, dvclive, swanlab, trackio (the grids go to tensorboard and wandb); several "
                              "comma-separated; off unless given, and 'none' turns it off on --resume; loss.csv and "
                              "samples/ are written either way")
    log_dir: str = opt(None, "the trackers' folder (with --log-with): TensorBoard writes to DIR/NAME, NAME being "
                             "--out's folder name; default: OUT/logs", path="file")
    format: str = opt(None, "file format of the embedding; default: diffusers (SD 1.x/2.x), sdxl (SDXL: one "
                      "clip_l+clip_g file; 'diffusers' writes the diffusers SDXL script's two files)", choices=SAVE_FORMATS,
                      refused=format_refused)
    prediction_type: str = opt(None, "override the model's prediction type", choices=("epsilon", "v_prediction"))
    single_file_config: str = opt(None, "for a single-file model offline: a local diffusers folder of the same family",
                                  path="source")
    vae: str = opt(None, "use this VAE instead of the model's (e.g. SDXL's fp16-fixed VAE): folder, file or hub id",
                   path="source")
    gradient_checkpointing: bool = opt(False, "trade compute for memory in the UNet")
    compile: str = opt("off", "torch.compile the frozen UNet: 'blocks' compiles its repeated transformer blocks "
                       "(compiles in seconds), 'unet' the whole UNet (longer compile, fuses more)", choices=COMPILE)
    compile_mode: str = opt("default", "torch.compile mode; 'reduce-overhead' adds CUDA graphs (small batches on a "
                            "GPU are launch-bound)", choices=COMPILE_MODES)
    cuda_graphs: bool = opt(False, "capture the training step as a CUDA graph and replay it (NVIDIA GPUs): at small "
                            "batches the GPU waits on the launches of the step's ~3,000 kernels; no compiling; "
                            "pictures of one shape (not with --buckets)")
    channels_last: bool = opt(False, "keep the UNet's weights and activations channels-last (NHWC), the layout "
                              "tensor-core convolutions prefer")
    reference_like: bool = opt(False, "benchmarks only: do what the diffusers example does (VAE every step, whole "
                               "vocabulary table in AdamW with old rows restored, fp32 text encoder)")
    overwrite: bool = opt(False, "replace an existing output folder")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint")
    resume_or_start: bool = opt(False, "continue the run in --out when it holds one (its config.yaml and a "
                                "checkpoint), else start it there: one command for a job that is requeued (a "
                                "preempted cluster job); give every setting each time, as a resume checks them "
                                "against the run's")

    def validate(self) -> "TrainConfig":
        """Check every setting before anything is loaded; raise ConfigError naming the bad value and the fix. A
        --dataset-config is read first: the config returned holds what it gave instead (`kohya.apply_dataset_config`);
        so does a kohya sample prompts file in --sample-prompts (`sample_prompts.read_prompt_file`).
        """
        check_types(self)
        expand_home(self)
        # 1. a file that gives settings: read, and what it gave is checked instead
        if self.dataset_config:
            from .kohya import apply_dataset_config  # (kohya.py reads this module's settings)

            return apply_dataset_config(self).validate()
        from .sample_prompts import is_prompt_file, read_prompt_file

        if any(is_prompt_file(entry) for entry in self.sample_prompts):  # kohya's file: what it gives from now on
            read = read_prompt_file(self.sample_prompts, self.resume, self.sample_steps)
            return dataclasses.replace(self, sample_prompts=read).validate()
        if training_size(self.resolution) != self.resolution:  # ("512x768" or (512, 768) from Python: as the CLI
            # reads it, so config.yaml records [512, 768], and 512x512 is 512)
            return dataclasses.replace(self, resolution=training_size(self.resolution)).validate()
        if self.vectors is None and not self.init_embedding:  # (with it left out, `train` reads the file's count)
            return dataclasses.replace(self, vectors=1).validate()
        if self.lr is None and self.lr_steps is None:  # (left out: None until here, so one given beside --lr-steps
            return dataclasses.replace(self, lr=DEFAULT_LR).validate()  # is told from it; config.yaml holds it)
        # 2. the checks by topic, in the order a user meets their errors: the output and the concepts, the choices,
        # counts, validation, rates and trackers, loss, the model's inputs, the schedule and the optimizer
        tokens = self._check_concepts()
        check_choices(self)
        self._check_counts_and_tags()
        self._check_validation()
        if self.lr is not None:  # (None: left out beside --lr-steps, whose rates are checked with it)
            check_lr(self.lr)
        self._check_trackers()
        self._check_regularizers()
        self._check_model_inputs(len(tokens))
        self._check_lr_steps()
        if self.init_embedding is not None and not str(self.init_embedding).strip():
            raise ConfigError(f"{setting('init_embedding')} needs an embedding file")
        if self.warmup_steps and self.lr_schedule == "constant":
            raise ConfigError(f"{setting('warmup_steps')} needs {setting('lr_schedule')} constant_with_warmup, linear, "
                              f"cosine, cosine_with_restarts or polynomial")
        self._check_schedule_and_optimizer(len(tokens))
        # 3. options that rule each other out, then the sample prompts (which name the tokens)
        self._check_exclusive_options()
        self._check_sample_prompts(tokens)
        return self

    def _check_concepts(self) -> list[str]:
        """--out, and the pictures and tokens of the run: --images and --token, --concepts or kohya's subsets, one
        of them, with no token repeated or named by a caption prefix all concepts share; the tokens."""
        if not self.out:
            raise ConfigError(f"{setting('out')} is required ({_help('out')})")
        if self.concepts and (self.images or self.token):
            raise ConfigError(f"give either {setting('images')} and {setting('token')} (one concept) or "
                              f"{setting('concepts')} (several), not both")
        if self.subsets and (self.images or self.concepts):
            raise ConfigError(f"{setting('images' if self.images else 'concepts')} and subsets (kohya's, as "
                              f"{setting('dataset_config')} reads them) both name the pictures: give one of them")
        self.subset_list()
        if self.init is not None and not str(self.init).strip():  # (it was taken as left out: the --property word)
            raise ConfigError(f"{given('init', self.init)} is empty: give a word or phrase to start from, or leave "
                              f"{setting('init')} out for the {setting('property')} word ({self.property}); the web "
                              f"UI's empty initialization text starts from zeros, which textinv does not do")
        if self.init_embedding and (self.init or self.concepts):
            raise ConfigError(f"{setting('init_embedding')} gives the starting vectors of the one {setting('token')}: "
                              f"leave out {setting('init')} and {setting('concepts')}")
        if self.init_embedding and self.init_spread != TrainConfig.init_spread:  # (no init text to spread)
            raise ConfigError(f"{setting('init_spread', self.init_spread)} says how an init text fills the vectors, "
                              f"and {setting('init_embedding')} gives them: leave out {setting('init_spread')}")
        tokens = [spec["token"] for spec in self.concept_list()]
        for token in tokens:  # (said before the model loads; the tokenizer's checks need it loaded)
            if isinstance(token, str) and token.strip() and any(c.isspace() for c in token.strip()):
                raise ConfigError(f"token {token!r} must be one word without spaces, e.g. "
                                  f"'<{'-'.join(token.split()).lower()}>' (the web UI's embedding names may hold "
                                  f"spaces: its prompts read the file's name, textinv's the token)")
        if len(set(tokens)) != len(tokens):
            raise ConfigError(f"{setting('concepts')} repeats a token: {tokens}; each concept needs its own")
        if len(tokens) > 1:  # (one prefix for all: each concept's captions would name that token)
            self._check_log_columns(tokens)
            for name, text in (("caption_prefix", self.caption_prefix), ("caption_suffix", self.caption_suffix)):
                named = [t for t in tokens if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text or "", re.IGNORECASE)]
                if named:
                    raise ConfigError(f"{given(name, text)} names the token {named[0]}, and goes on the captions of "
                                      f"every concept of the run: the others' samples would train {named[0]} too; "
                                      f"write each token in its own concept's caption files, or learn it in a run of "
                                      f"its own")
        return tokens

    @staticmethod
    def _check_log_columns(tokens: list[str]) -> None:
        """A run of several concepts gives each token a column of loss.csv and validation.csv (headed by the token,
        as the files of earlier runs are): a token named as one of their own columns would make two of one name."""
        clash = [t for t in tokens if t in LOG_COLUMNS]
        if clash:
            raise ConfigError(f"token {clash[0]!r} is the name of a column of loss.csv ({', '.join(LOG_COLUMNS)}), "
                              f"where each concept of a run of several has a column headed by its token: the two "
                              f"would read as one; name the concept otherwise, e.g. '<{clash[0]}>'")

    def _check_counts_and_tags(self) -> None:
        """--epochs (not with --steps), the whole numbers >= 1 and >= 0, and the caption tags' settings."""
        if self.epochs is not None:
            if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
                raise ConfigError(f"{setting('epochs')} must be a whole number >= 1, got {self.epochs!r}")
            if self.steps is not None:  # (a --steps given too; `build` sees it always)
                raise ConfigError(either_length())
        positive = ("vectors", "steps", "batch", "grad_accum", "repeats", "sample_steps", "log_every")
        # (None: left out, resolved by `train`: --steps as its default or --lr-steps' end, --vectors as the
        # --init-embedding file's count)
        for name in (n for n in positive if n not in ("steps", "vectors") or getattr(self, n) is not None):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{setting(name)} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.tag_dropout < 1.0:  # (also refuses NaN)
            raise ConfigError(f"{setting('tag_dropout')} is a chance in [0, 1), got {self.tag_dropout}")
        self._check_caption_dropout()
        self._check_tag_separators()
        self._check_tag_warmup()
        for name in ("save_every", "sample_every", "warmup_steps", "keep_checkpoints", "keep_tags"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{setting(name)} must be a whole number >= 0, got {getattr(self, name)!r}")

    def _check_trackers(self) -> None:
        """--log-with's trackers (unknown names and missing packages, before the model loads) and --log-dir."""
        check_trackers(self.log_with, self.resume)
        if self.log_dir is not None and self.log_with is None:
            raise ConfigError(f"{setting('log_dir', self.log_dir)} is where {_owns('log_with')} trackers write, "
                              f"and none is given; add {setting('log_with', 'tensorboard')} (or another tracker)")

    def _check_regularizers(self) -> None:
        """--weight-decay, --max-grad-norm, --min-snr-gamma, --noise-offset, then kohya's other noise and loss
        settings (`_check_noise_and_loss`)."""
        if not self.weight_decay >= 0:  # (also refuses NaN)
            raise ConfigError(f"{setting('weight_decay')} must be >= 0, got {self.weight_decay}")
        for name in ("max_grad_norm", "max_grad_value"):
            clip_steps(getattr(self, name), name)
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ConfigError(f"{setting('min_snr_gamma')} must be > 0 when given, got {self.min_snr_gamma}")
        offset = self.noise_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < math.inf:  # (NaN)
            raise ConfigError(f"{setting('noise_offset')} must be a number >= 0 (0: off; 0.05-0.1 is typical), got "
                              f"{offset!r}")
        self._check_noise_and_loss()

    def _check_model_inputs(self, concepts: int) -> None:
        """What the model is run with: --resolution, --seed (with room for every seed drawn from it), --clip-skip,
        --min-timestep and --max-timestep, and --vectors (they must fit in one 77-token prompt)."""
        check_training_size(training_size(self.resolution), self.buckets)
        # (the seeds drawn: concept k's data seed + 1_000_003 k (`batches.concept_seed`), sample grid image i's
        # seed + i)
        check_seed(self.seed, 1_000_003 * (concepts - 1) + max(4, len(self.sample_prompts)), negative=True)
        check_clip_skip_value(self.clip_skip)
        if not isinstance(self.min_timestep, int) or self.min_timestep < 0:
            raise ConfigError(f"{setting('min_timestep')} must be a whole number >= 0, got {self.min_timestep!r}")
        if self.max_timestep is not None and not (isinstance(self.max_timestep, int)
                                                  and self.max_timestep > self.min_timestep):
            raise ConfigError(f"{setting('max_timestep')} must be a whole number above {setting('min_timestep')} "
                              f"({self.min_timestep}), got {self.max_timestep!r}")
        if self.vectors is not None and self.vectors > CHUNK:
            raise ConfigError(f"{given('vectors', self.vectors)} leaves no room in a 77-token prompt; use at most "
                              f"{CHUNK} (1-8 is usual)")

    def _check_lr_steps(self) -> None:
        """--lr-steps (a schedule of its own: not with --lr-schedule, --warmup-steps or --lr), and a warning for a
        rate far above textual inversion's usual ones."""
        if self.lr_steps is not None:
            parse_lr_steps(self.lr_steps)
            if self.lr_schedule != "constant" or self.warmup_steps:
                raise ConfigError(f"{setting('lr_steps')} is a schedule of its own: leave "
                                  f"{setting('lr_schedule', 'constant')} and {setting('warmup_steps', 0)}")
            if self.lr is not None:  # (None: --lr left out, a 0.005 given on purpose too)
                raise ConfigError(f"{setting('lr_steps')} gives the rates: leave out {setting('lr')} (got {self.lr})")
            self._check_lr_steps_length()
        rates = [rate for rate, _ in parse_lr_steps(self.lr_steps)] if self.lr_steps is not None else [self.lr]
        if max(rates) > 1:  # (valid, but the loss goes NaN within steps: most likely 5e3 typed for 5e-3)
            warn(f"learning rate {max(rates):g} is far above textual inversion's usual rates (the paper's "
                 f"5e-3, the web UI's 0.005 and up to 0.05 at first); check the exponent's sign (5e3 is "
                 f"5000, 5e-3 is 0.005)", stacklevel=3)  # (validate's caller)

    def _check_lr_steps_length(self) -> None:
        """A stepped rate whose last rate has a step ends the run there, as the web UI's does (`train` takes it as
        --steps when --steps is left out): refuse --epochs, or a --steps past it, which would say otherwise. A resume
        may go past it at the last rate (a raised --steps, or a run an older textinv started so; --lr-steps cannot
        change on a resume)."""
        end = lr_steps_end(self.lr_steps)
        if end is None:
            return
        said = f"{given('lr_steps', self.lr_steps)} ends the run at step {end} (its last rate's step, as the web UI's)"
        fix = f"or end {setting('lr_steps')} with a rate without a step ('..., RATE') to train on at it"
        if self.epochs is not None:
            raise ConfigError(f"{said}, and {setting('epochs', self.epochs)} gives the length too: leave out "
                              f"{setting('epochs')}, {fix}")
        if self.steps is not None and self.steps > end and not self.resume:  # (None: --steps left out)
            raise ConfigError(f"{said}, before {setting('steps', self.steps)}: leave out {setting('steps')}, {fix}")

    def _check_exclusive_options(self) -> None:
        """Options that rule each other out: --cuda-graphs with --buckets or a compile mode that captures graphs,
        --random-crop, --buckets and --reference-like, --bucket-no-upscale without --buckets, --resume with
        --overwrite."""
        if self.cuda_graphs and self.buckets:
            raise ConfigError(f"{setting('cuda_graphs')} and {setting('buckets')}: a captured step takes one shape of "
                              f"pictures, and buckets make several; leave out one of them")
        if self.cuda_graphs and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ConfigError(f"{setting('cuda_graphs')} and {setting('compile_mode', self.compile_mode)}: that mode "
                              f"captures CUDA graphs of its own, inside ours; use {setting('compile_mode', 'default')} "
                              f"(or max-autotune-no-cudagraphs) with {setting('cuda_graphs')}, or leave "
                              f"{setting('cuda_graphs')} out")
        if self.random_crop and not self.center_crop:
            raise ConfigError(f"{setting('random_crop')} and {setting('center_crop', False)}: squashed, the whole "
                              f"picture is its training size and there is nothing to crop; leave out one of them")
        if self.random_crop and self.reference_like:
            raise ConfigError(f"{setting('random_crop')} and {setting('reference_like')}: the diffusers example that "
                              f"benchmark mode does crops the centre; leave out one of them")
        if self.png_embeddings and not self.sample_every:
            raise ConfigError(f"{setting('png_embeddings')} puts each sample grid's step's embedding into its picture, "
                              f"and {setting('sample_every', 0)} draws none: give {setting('sample_every')} N too")
        if self.bucket_no_upscale and not self.buckets:
            raise ConfigError(f"{setting('bucket_no_upscale')} says how {setting('buckets')} sizes each picture's "
                              f"bucket, and the buckets are off: give {setting('buckets')} too, or leave out "
                              f"{setting('bucket_no_upscale')}")
        if self.latent_sampling != "random" and self.reference_like:
            raise ConfigError(f"{setting('latent_sampling', self.latent_sampling)} and {setting('reference_like')}: "
                              f"the diffusers example that benchmark mode does draws a new latent each step (random)")
        if self.buckets and self.reference_like:
            raise ConfigError(f"{setting('buckets')} and {setting('reference_like')}: the reference-like benchmark "
                              f"mode trains squares only")
        if self.resume and self.overwrite:
            raise ConfigError(f"{setting('resume')} and {setting('overwrite')} contradict each other: resume keeps the "
                              f"folder, overwrite empties it")
        if self.resume_or_start and (self.resume or self.overwrite):
            other = setting("resume" if self.resume else "overwrite")
            raise ConfigError(f"{setting('resume_or_start')} and {other}: give one; {setting('resume_or_start')} "
                              f"resumes the run in {setting('out')} when there is one and starts it otherwise, and "
                              f"never empties a folder")

    def _check_sample_prompts(self, tokens: list[str]) -> None:
        """Each --sample-prompts entry, and that each prompt has '{}' or one of the tokens where the token goes."""
        from .sample_prompts import check_entries, names_a_file, prompt_text

        check_entries(self.sample_prompts, self.sample_steps)
        for prompt in map(prompt_text, self.sample_prompts):  # ({} or the token written, as in captions and score's)
            if "{}" not in prompt and not any(t and t.lower() in prompt.lower() for t in tokens):
                named = (" (it names a file: kohya's sample prompts file is read when its name ends in .txt, .toml "
                         "or .json)" if names_a_file(prompt) else "")
                raise ConfigError(f"sample prompt {prompt!r} has no '{{}}' (or the token) where the token goes{named}")

    def _check_schedule_and_optimizer(self, concepts: int) -> None:
        """--lr-cycles and --lr-power with the schedule they shape, and the optimizer (`optimizers.check_optimizer`)."""
        if isinstance(self.lr_cycles, bool) or not isinstance(self.lr_cycles, int) or self.lr_cycles < 1:
            raise ConfigError(f"{setting('lr_cycles')} must be a whole number >= 1, got {self.lr_cycles!r}")
        if isinstance(self.lr_power, bool) or not isinstance(self.lr_power, (int, float)) or not (
                0 < self.lr_power < math.inf):
            raise ConfigError(f"{setting('lr_power')} must be a number > 0 (1: linear), got {self.lr_power!r}")
        for name, schedule in (("lr_cycles", "cosine_with_restarts"), ("lr_power", "polynomial")):
            if getattr(self, name) != getattr(TrainConfig, name) and self.lr_schedule != schedule:
                raise ConfigError(f"{setting(name, getattr(self, name))} shapes {setting('lr_schedule', schedule)}, "
                                  f"and the schedule is {self.lr_schedule}: give {setting('lr_schedule', schedule)}, "
                                  f"or leave out {setting(name)}")
        if self.lr_schedule == "polynomial" and self.lr <= 1e-7:  # (it decays to 1e-7: diffusers refuses a rise)
            raise ConfigError(f"{setting('lr_schedule', 'polynomial')} decays {setting('lr')} to 1e-7, and "
                              f"{setting('lr')} is {self.lr:g}; give a higher {setting('lr')}, or another schedule")
        if self.reference_like and (self.optimizer != "adamw" or self.optimizer_args):
            raise ConfigError(f"{setting('reference_like')} does what the diffusers example does, for benchmarks "
                              f"against it, and its optimizer is AdamW with PyTorch's settings: leave out "
                              f"{setting('optimizer', self.optimizer)} and {setting('optimizer_args')} with "
                              f"{setting('reference_like')}")
        check_schedule(self.optimizer, self.lr_schedule, self.warmup_steps, self.lr_steps)
        first = self.lr if self.lr is not None else parse_lr_steps(self.lr_steps)[0][0]
        check_optimizer(self.optimizer, self.optimizer_args, first, self.weight_decay, concepts)
        # one spelling for each value (a resume compares the recorded settings: betas=0.9,0.99 is betas=0.9, 0.99)
        self.optimizer_args = canonical_optimizer_args(self.optimizer_args)
        if self.optimizer in OWN_STEP_SIZE and self.lr_steps is None and self.lr != 1:
            warn(f"--optimizer {self.optimizer} estimates its own step size and is meant to run at --lr 1.0 "
                 f"(as kohya's Prodigy and DAdaptation configs give it); --lr {self.lr:g} scales that "
                 f"estimate by {self.lr:g}", stacklevel=3)

    def _check_caption_dropout(self, said: dict[str, str] | None = None) -> None:
        """--caption-dropout in [0, 1) and --caption-dropout-every a whole number other than 1: at 1 either drops
        every caption, so the vectors would learn nothing. `said`: how a setting was given where it was no flag (a
        --dataset-config key), for the refusal to name."""
        name = _namer(said)
        rate, every = self.caption_dropout, self.caption_dropout_every
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:  # (NaN too)
            raise ConfigError(f"{name('caption_dropout')} is a chance in [0, 1), got {rate!r}")
        if rate == 1:
            raise ConfigError(f"{name('caption_dropout')} at 1 drops every caption, so the vectors would learn "
                              f"nothing: give a chance below 1")
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ConfigError(f"{name('caption_dropout_every')} must be a whole number >= 0 (0: never), got {every!r}")
        if every == 1:
            raise ConfigError(f"{name('caption_dropout_every')} at 1 drops the captions of every epoch, so the "
                              f"vectors would learn nothing: give 2 or more (every Nth epoch), or 0 for never")

    def _check_tag_separators(self, said: dict[str, str] | None = None) -> None:
        """--tag-separator splits the tags, so it cannot be empty; --keep-tags-separator and --tag-joiner must each
        be other text than the others, or a caption could not say which it means. `said`: how a setting was given
        where it was no flag (a --dataset-config key), for the refusal to name."""
        name = _namer(said)
        if not isinstance(self.tag_separator, str) or not self.tag_separator.strip():
            raise ConfigError(f"{name('tag_separator')} must be the text between a caption's tags, such as ',' or "
                              f"';', got {self.tag_separator!r}")
        texts = {key: getattr(self, key) for key in ("tag_separator", "keep_tags_separator", "tag_joiner")}
        for key in ("keep_tags_separator", "tag_joiner"):
            text = texts[key]
            if not isinstance(text, str) or (text and not text.strip()):
                raise ConfigError(f"{name(key)} must be text such as '|||' (or '' for none), got {text!r}")
        for (a, x), (b, y) in itertools.combinations(texts.items(), 2):
            if x and y and (x in y or y in x):
                shown = [f"{said[key]} {text!r}" if key in (said or {}) else given(key, text) for key, text in
                         ((a, x), (b, y))]
                raise ConfigError(f"{shown[0]} and {shown[1]} overlap, so a caption could not say which is meant; "
                                  f"give {name(b)} other text, e.g. '|||' to keep tags or ';;;' to join them")

    def _check_validation(self) -> None:
        """--validation-split, --validate-every, --validation-seed and --validation-draws (whether each concept has
        pictures to spare is seen once they are found: `train`)."""
        share = self.validation_split
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:  # (NaN too)
            raise ConfigError(f"{setting('validation_split')} is the share of each concept's pictures held out, in "
                              f"[0, 1) (e.g. 0.2: one picture of five), got {share!r}")
        if self.validation_images is not None:
            if share:
                raise ConfigError(f"{setting('validation_images')} and {setting('validation_split')} both say which "
                                  f"pictures the validation loss scores; give one of them")
            if len(self.concept_list()) > 1:
                raise ConfigError(f"{setting('validation_images')} holds one concept's pictures; with several "
                                  f"{setting('concepts')} use {setting('validation_split')} (each concept's share)")
            if not str(self.validation_images).strip():
                raise ConfigError(f"{setting('validation_images')} needs a folder of pictures")
        held = "validation_images" if self.validation_images is not None else "validation_split"
        held_as = setting(held) if held == "validation_images" else setting(held, share, "g")
        every = self.validate_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ConfigError(f"{setting('validate_every')} must be a whole number >= 0 (0: never), got {every!r}")
        if every == 0 and (share or self.validation_images is not None):
            raise ConfigError(f"{setting('validate_every', 0)} with {held_as}: the pictures held out would never be "
                              f"scored; give {setting('validate_every')} N (steps), or leave out {setting(held)}")
        draws = self.validation_draws
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ConfigError(f"{setting('validation_draws')} must be a whole number >= 1, got {draws!r}")
        if self.validation_seed is not None:
            check_seed(self.validation_seed, len(self.concept_list()) * 1_000_003, setting("validation_seed"),
                       negative=True)
        if self.validation_seed is not None and not self.validating_every:
            raise ConfigError(f"{setting('validation_seed')} seeds the validation loss, which is off: give "
                              f"{setting('validate_every')} N or {setting('validation_split')}")

    def tag_warmup_length(self) -> int:
        """The steps of the tag warm-up (0: none): --tag-warmup-steps, a share of --steps below 1, as kohya counts
        its token_warmup_step."""
        share = self.tag_warmup_steps
        return math.floor(share * self.steps_to_run()) if share < 1 else int(share)

    def steps_to_run(self) -> int:
        """--steps, or left out (None) a stepped rate's last step where it ends in one, as the web UI stops there,
        else DEFAULT_STEPS (`train` sets it so before the run; a resume's is the run's own).

        >>> TrainConfig().steps_to_run(), TrainConfig(lr_steps="0.005:100, 1e-3:1000").steps_to_run()
        (3000, 1000)
        """
        return self.steps if self.steps is not None else lr_steps_end(self.lr_steps) or DEFAULT_STEPS

    def _check_tag_warmup(self, said: dict[str, str] | None = None) -> None:
        """kohya's token warm-up: its counts, and not with wildcard captions. `said`: as `_check_tag_separators`."""
        name = _namer(said)
        steps, low = self.tag_warmup_steps, self.tag_warmup_min
        if isinstance(low, bool) or not isinstance(low, int) or low < 0:
            raise ConfigError(f"{setting('tag_warmup_min')} must be a whole number >= 0 (the tags used at the first "
                              f"step), got {low!r}")
        if not is_warmup_length(steps):
            raise ConfigError(f"{setting('tag_warmup_steps')} must be a whole number of steps, or a share of "
                              f"{setting('steps')} below 1 (0: no warm-up), got {steps!r}")
        if steps and self.caption_wildcards:
            raise ConfigError(f"{name('tag_warmup_steps')} and {name('caption_wildcards')} cannot be given together: "
                              f"textinv counts a picture's tags once, before the first step, where a wildcard "
                              f"caption's drawn line has its own count; leave one out")

    @builtins.property  # (the field `property` hides the builtin here)
    def validating_every(self) -> int:
        """The steps between validation losses (0: none): --validate-every, or --save-every's with pictures held out
        (--validation-split, --validation-images; the end alone when that is 0)."""
        if self.validate_every is not None:
            return self.validate_every
        held = self.validation_split or self.validation_images is not None
        return (self.save_every or self.steps_to_run()) if held else 0

    def _check_noise_and_loss(self) -> None:
        """kohya's noise and loss settings (the ones that need the model, v-prediction or not, are checked once it
        has loaded: `losses.check_loss_for`)."""
        def number(name: str, low: float | None = 0.0, above: bool = False, typical: str = "") -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    low is not None and (value <= low if above else value < low)):
                bound = "" if low is None else f" {'>' if above else '>='} {low:g}"
                raise ConfigError(f"{setting(name)} must be a number{bound}{typical}, got {value!r}")
            return value

        number("ip_noise_gamma", typical=" (0: off; about 0.1 is typical)")
        number("v_pred_like_loss", typical=" (0: off)")
        number("multires_noise_discount", typical=" (0.3 is kohya's default)")
        number("huber_c", above=True, typical=" (0.1 is kohya's default)")
        number("huber_scale", above=True, typical=" (1: none)")
        if number("adaptive_noise_scale", low=None) and not self.noise_offset:
            raise ConfigError(f"{setting('adaptive_noise_scale', self.adaptive_noise_scale)} adds to "
                              f"{_owns('noise_offset')} offset, which is off: give {setting('noise_offset')} too "
                              f"(e.g. 0.05), or leave out {setting('adaptive_noise_scale')}")
        if self.noise_offset_random_strength and not self.noise_offset:
            raise ConfigError(f"{setting('noise_offset_random_strength')} draws a fraction of "
                              f"{setting('noise_offset')}, which is off: give {setting('noise_offset')} too (e.g. "
                              f"0.1), or leave out {setting('noise_offset_random_strength')}")
        if self.ip_noise_gamma_random_strength and not self.ip_noise_gamma:
            raise ConfigError(f"{setting('ip_noise_gamma_random_strength')} draws a fraction of "
                              f"{setting('ip_noise_gamma')}, which is off: give {setting('ip_noise_gamma')} too (e.g. "
                              f"0.1), or leave out {setting('ip_noise_gamma_random_strength')}")
        iterations = self.multires_noise_iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ConfigError(f"{setting('multires_noise_iterations')} must be a whole number >= 0 (0: off; 6-10 is "
                              f"typical), got {iterations!r}")
        if self.huber_schedule == "snr" and self.huber_scale != 1 and self.loss_type in ("huber", "smooth_l1"):
            # (kohya's scripts leave it out there, silently)
            raise ConfigError(f"{setting('huber_scale', self.huber_scale, 'g')} scales the exponential and constant "
                              f"{_owns('huber_schedule')} threshold; the snr schedule has no scale: leave out "
                              f"{setting('huber_scale')}, or use {setting('huber_schedule')} exponential or constant")

    def subset_list(self) -> list[dict[str, Any]]:
        """`subsets` as mappings of images (a folder), repeats (1 unless given) and caption_extension (None unless
        given: NAME.txt, else NAME.caption), and skip_image_resolution where given ([width, height]: kohya's; the
        pictures of at most that area are left out, `data.picture_set`), each checked."""
        out = []
        for item in self.subsets:
            if not isinstance(item, dict) or not item.get("images") or set(item) - {"images", "repeats",
                                                                                     "caption_extension",
                                                                                     "skip_image_resolution"}:
                raise ConfigError(f"subset {item!r} must be a mapping of images (a folder of pictures), repeats and "
                                  f"caption_extension (and skip_image_resolution), e.g. {{images: img/dog, "
                                  f"repeats: 10}}")
            repeats, extension = item.get("repeats", 1), item.get("caption_extension")
            if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_KOHYA_REPEATS:
                raise ConfigError(f"subset {item!r}: repeats must be a whole number from 1 to "
                                  f"{MAX_KOHYA_REPEATS:,}, got {repeats!r}")
            if extension is not None and not (isinstance(extension, str) and extension.startswith(".")
                                              and len(extension) > 1 and "/" not in extension):
                raise ConfigError(f"subset {item!r}: caption_extension must be a file suffix such as '.txt', got "
                                  f"{extension!r}")
            subset = {"images": os.fspath(item["images"]), "repeats": repeats, "caption_extension": extension}
            skip = item.get("skip_image_resolution")
            if skip is not None:
                if skip_sides(skip) is None:
                    raise ConfigError(f"subset {item!r}: skip_image_resolution must be a number of pixels or "
                                      f"[width, height], e.g. [512, 512], got {skip!r}")
                subset["skip_image_resolution"] = skip_sides(skip)
            out.append(subset)
        return out

    @builtins.property  # (the field `property` hides the builtin inside this class)
    def use_flip(self) -> bool:
        return flip_default(self.property) if self.flip is None else self.flip

    def concept_list(self, default_init: str | None = None, fill: bool = True) -> list[dict[str, str]]:
        """The run's concepts as dicts of images, token and init (one for --images/--token). A concept without an
        init takes --init, else `default_init` (a model's own word for the property), else the property's word;
        with `fill` False it keeps None, as given (the model, which may say its own word, is not loaded yet)."""
        fallback = (self.init or default_init or self.property) if fill else None
        if not self.concepts:
            for name in ("images", "token"):
                if name == "images" and self.subsets:  # (kohya's subsets name the pictures)
                    continue
                if not getattr(self, name):
                    raise ConfigError(f"{setting(name)} is required ({_help(name)}), or give {setting('concepts')}")
            return [{"images": self.images, "token": self.token, "init": fallback}]
        specs = []
        for item in self.concepts:
            if isinstance(item, dict):
                spec = {k: item.get(k) for k in ("images", "token", "init")}
                if set(item) - {"images", "token", "init"}:
                    raise ConfigError(f"concept {item!r}: only the keys images, token and init are known")
                for key, value in spec.items():  # (a config file's mapping: YAML reads `token: yes` as true)
                    if value is None:
                        continue
                    if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
                        fix = "put it in quotes" if isinstance(value, bool) else "give one per concept"
                        raise ConfigError(f"concept {item!r}: {key} must be text, got {type(value).__name__} "
                                          f"{value!r}; {fix}")
                    spec[key] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
            else:
                parts = str(item).split("=")
                for cut in range(len(parts) - 1, 0, -1):  # a folder name may hold "=": the longest that exists
                    if len(parts) - cut in (1, 2) and Path("=".join(parts[:cut])).is_dir():
                        parts = ["=".join(parts[:cut])] + parts[cut:]
                        break
                if len(parts) not in (2, 3):
                    raise ConfigError(f"{given('concepts', item)} must be FOLDER=TOKEN or FOLDER=TOKEN=INIT")
                spec = dict(zip(("images", "token", "init"), parts))
            if not spec.get("images") or not spec.get("token"):
                raise ConfigError(f"concept {item!r} needs both a folder and a token")
            if spec.get("init") is not None and not spec["init"].strip():  # (as --init's: not the fallback)
                raise ConfigError(f"concept {item!r}: its init is empty: give a word or phrase to start from, or "
                                  f"leave it out (FOLDER=TOKEN) for {_owns('init')}; the web UI's empty "
                                  f"initialization text starts from zeros, which textinv does not do")
            spec["init"] = spec.get("init") or fallback
            specs.append(spec)
        return specs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@named_settings
@dataclass
class GenerateConfig:
    """Everything that defines a generation run."""

    prompt: list = opt([], "prompt(s); write the learned token in them, e.g. 'a photo of <my-dog> on the moon'; "
                           "the web UI's syntax works: (word:1.3), [word], BREAK, [from:to:0.5], [a|b], and "
                           "sd-dynamic-prompts': {beach|snow}, {2$$a|b|c}, __wildcard__, ${var=!{a|b}} ${var}")
    embedding: list = opt([], "learned embedding file(s) to load (any supported format), or hub ids: owner/name "
                              "(its learned_embeds file, as diffusers loads it) or owner/name/file.safetensors",
                          path="embedding")
    out: str = opt("renders", "output folder for the PNGs", path="file")
    model: str = opt("shapes", "diffusers folder, single .safetensors/.ckpt file, hub id, or a bundled name",
                     path="source")
    revision: str = opt(None, REVISION_HELP)
    variant: str = opt(None, VARIANT_HELP)
    token: list = opt([], "token name(s) for the embedding files, in order (default: from each file)")
    negative_prompt: str = opt("", "what to steer away from")
    prompt_l: str = opt(None, "SDXL's CLIP-L text where it is not the prompt's, as ComfyUI's CLIPTextEncodeSDXL "
                              "gives its text_l apart (the prompt is then its text_g, read by OpenCLIP-G); every "
                              "prompt's, with --emphasis comfy")
    negative_prompt_l: str = opt(None, "the negative prompt's CLIP-L text where it is not its own (as --prompt-l)")
    zero_negative: bool = opt(False, "guide against zeros in place of the negative prompt's conditioning, on any "
                                     "model, as ComfyUI's ConditioningZeroOut on a sampler's negative (--negative-"
                                     "prompt then stays empty)")
    wildcards_dir: str = opt(None, "folder of wildcard files for the prompts' __name__ (name.txt: one option a line; "
                                   "__sub/name__ in a subfolder, __sub/*__ any there; .yaml/.json files: their keys "
                                   "name them, as sd-dynamic-prompts reads them)", path="file")
    combinatorial: bool = opt(False, "draw every combination of each prompt's {a|b} and __wildcards__, in order, "
                                     "each with every seed (default: each picture draws its own from its seed)")
    max_prompts: int = opt(None, "--combinatorial's most combinations of a prompt, the first ones (default: 100)")
    n: int = opt(4, "images per prompt", short="-n")
    seed: int = opt(0, "seed of the first image; image i uses seed + i; -1 draws one (as A1111), kept in the file "
                       "names and PNG text")
    steps: int = opt(None, "denoising steps (default: 25)")
    guidance: float = opt(None, "classifier-free guidance scale (default: the model's own; 7.5 for SD)")
    clip_skip: int = opt(None, "text-encoder layer read, counted from the end as A1111 counts (1: the last, 2: the "
                               "penultimate); default: what the embeddings were trained with, else 1. SD 1.x/2.x "
                               "(SDXL: 1 or 2, both its penultimate layers)")
    sampler: str = opt("default", SAMPLER_HELP, choices=SAMPLERS, spellings=SAMPLER_SPELLINGS,
                       listed=SAMPLERS_LISTED)
    resolution: int = opt(None, "square image size; default: the model's native size (--width/--height set one side)")
    width: int = opt(None, "image width in pixels, a multiple of 8 (A1111's Width); default: --resolution")
    height: int = opt(None, "image height in pixels, a multiple of 8 (A1111's Height); default: --resolution")
    variation_seed: int = opt(None, "the web UI's Variation seed: each picture's noise blended toward this seed's "
                                    "(picture i: this + i) by --variation-strength, for pictures close to a seed's; "
                                    "-1 draws one")
    variation_strength: float = opt(0.0, "how far toward --variation-seed's noise, from 0 (the seed's own) to 1 (the "
                                         "variation seed's)")
    eta: float = opt(None, "the web UI's Eta: the share of each step's noise an ancestral sampler (euler_a, dpm2_a, "
                           "dpm++2s_a) draws afresh, from 0 to 1 (its default), and the SDE samplers' (dpm++2m_sde, "
                           "dpm++2m_sde_heun, dpm++3m_sde, dpm++3m_sde_comfy, dpm++sde) SDE noise; for ddim its Eta "
                           "DDIM (default 0)")
    ensd: int = opt(0, "the web UI's Eta noise seed delta (ENSD, e.g. 31337): a sampler's noise at every step is "
                       "drawn from seed + this, as the web UI's is; 0: from the seed, on from the starting noise")
    sigma_churn: float = opt(0.0, "the web UI's Sigma churn, for euler, heun and dpm2: each step first adds fresh "
                                   "noise that raises its sigma by min(this / steps, 0.414) of itself, then steps "
                                   "from there (Karras et al. 2022's S_churn); 0: none")
    sigma_tmin: float = opt(0.0, "the web UI's Sigma tmin: only steps whose sigma is at least this churn")
    sigma_tmax: float = opt(None, "the web UI's Sigma tmax: only steps whose sigma is at most this churn (default: no "
                                  "limit)")
    sigma_noise: float = opt(1.0, "the web UI's Sigma noise: the churn's fresh noise is scaled by this, as is "
                                  "the fresh noise of dpm2_a, dpm++2s_a, dpm++2m_sde, dpm++2m_sde_heun, dpm++3m_sde, "
                                  "dpm++3m_sde_comfy and dpm++sde")
    discard_penultimate_sigma: bool = opt(False, "the web UI's \"Always discard next-to-last sigma\": N steps go "
                                                 "down the N + 1 step schedule less its smallest non-zero sigma (as "
                                                 "dpm2, dpm2_a and dpm++3m_sde always do), for its other k-diffusion "
                                                 "samplers")
    tiling: bool = opt(False, "pictures that wrap around at their edges, so copies tile without a seam (textures; "
                              "the web UI's Tiling)")
    old_prompt_editing: bool = opt(False, "prompt editing on the web UI's old timelines (its \"Use old prompt editing "
                                          "timelines\", before 1.6): in [a:b:N] an N below 1 is a fraction of the "
                                          "steps, any other a step (1.5: step 1), and the hires fix's pass takes the "
                                          "first pass's schedule")
    pad_cond_uncond: bool = opt(False, "the web UI's \"Pad prompt/negative prompt to be same length\": a prompt "
                                       "and its negative of different chunk counts (over 75 tokens, BREAK) are read "
                                       "at the longer's, the shorter padded with empty chunks, which changes the "
                                       "picture (off: each at its own length, the web UI's default)")
    pad_cond_uncond_v0: bool = opt(False, "the web UI's \"Pad prompt/negative prompt (v0)\", its DDIM's way before "
                                          "1.6: the negative made the prompt's length, its last vector repeated or "
                                          "the rest cut (before --pad-cond-uncond where both are given)")
    emphasis: str = opt("original", "how (word:1.3) weights apply, as the web UI's Emphasis setting: original (the "
                                    "weights, each 75-token chunk then scaled back to its mean), no-norm (the weights "
                                    "alone), ignore (the syntax read, the weights left out); comfy: as ComfyUI's "
                                    "CLIPTextEncode reads and weighs them", choices=EMPHASIS,
                        spellings={"original": "original", "no-norm": "no-norm", "no norm": "no-norm",
                                   "ignore": "ignore", "comfy": "comfy", "comfyui": "comfy"})
    init_image: str = opt(None, "a picture (or a folder of them: each) to redraw with the prompt instead of drawing "
                                "from noise (img2img): --denoise of the way, at --width x --height (the picture "
                                "cropped to fit), one of them with the other at its proportions, or else the model's "
                                "own area at them", path="file")
    denoise: float = opt(None, f"how much of the picture is redrawn, from 0 (nothing) to 1 (all; the web UI's "
                               f"Denoising strength): for --init-image (default {IMG2IMG_DENOISE}) or the hires "
                               f"fix (default {HIRES_DENOISE})")
    mask: str = opt(None, "inpainting: a mask picture for --init-image, white where the picture is redrawn, black "
                          "where it is kept (a picture with transparency: opaque is redrawn), fitted to the picture "
                          "as it is (the web UI's Inpaint upload)", path="file")
    mask_blur: int = opt(None, f"how many pixels the mask's edge is blurred over, a Gaussian's sigma (the web UI's "
                               f"Mask blur; default {MASK_BLUR}, 0: none)")
    inpaint_fill: str = opt(None, "what the masked part starts from (the web UI's Masked content): original (the "
                                  "picture; the default), fill (the colours around it), latent-noise (noise), "
                                  "latent-nothing (zeros)", choices=INPAINT_FILLS,
                            spellings={**{f: f for f in INPAINT_FILLS}, "latent noise": "latent-noise",
                                       "latent nothing": "latent-nothing"})
    mask_invert: bool = opt(False, "redraw the black part of the mask and keep the white (the web UI's Inpaint not "
                                   "masked)")
    inpaint_area: str = opt(None, "whole (the default: the whole picture redrawn at the size drawn, the mask's part "
                                  "kept) or masked (the web UI's Only masked: the mask's box, widened by "
                                  "--masked-padding, redrawn at --width x --height and pasted back into the picture "
                                  "at its own size)", choices=INPAINT_AREAS,
                            spellings={"whole": "whole", "whole picture": "whole", "masked": "masked",
                                       "only masked": "masked"})
    masked_padding: int = opt(None, f"--inpaint-area masked: pixels around the mask's box also redrawn (default "
                                    f"{MASKED_PADDING})")
    inpaint_blend: str = opt(None, "how the kept part is held to the picture while the rest is drawn: denoised (the "
                                   "default, the web UI's: each step's denoised estimate is the picture's latents "
                                   "there) or noised (diffusers' StableDiffusionInpaintPipeline's: after each step "
                                   "the latents there are the picture's, noised to the next step's level), "
                                   "with an inpainting model too", choices=INPAINT_BLENDS)
    hires_scale: float = opt(None, "the web UI's hires fix: draw at --width x --height, enlarge this many times "
                                   "(e.g. 2), and redraw --denoise of the way at that size, for the detail the first "
                                   "size had no room for (the web UI's Upscale by)")
    hires_width: int = opt(None, "the hires fix to this width instead of --hires-scale (with --hires-height: the "
                                 "enlarged picture cropped to fit; alone: the first pass's proportions)")
    hires_height: int = opt(None, "the hires fix to this height instead of --hires-scale (see --hires-width)")
    hires_steps: int = opt(None, "the hires fix's sampling steps (default: --steps), run as the web UI runs them: "
                                 "the last ones of a schedule 1/--denoise times as long")
    hires_upscaler: str = opt(None, f"how the hires fix enlarges the first pass: {', '.join(UPSCALERS)} (default "
                                    f"{DEFAULT_UPSCALER}; the web UI's names work, e.g. 'Latent (antialiased)')",
                              choices=tuple(UPSCALERS), spellings=UPSCALER_SPELLINGS, refused=network_upscaler)
    hires_sampler: str = opt(None, "the hires fix's sampler (default: --sampler)", choices=SAMPLERS,
                             spellings=SAMPLER_SPELLINGS, listed=SAMPLERS_LISTED)
    hires_prompt: str = opt(None, "the hires fix's prompt, one for every --prompt (the web UI's Hires prompt; "
                                  "default or empty: each picture's --prompt): learned tokens and <lora:name:0.8> "
                                  "tags work as in --prompt, its LoRAs replacing the prompt's for the second pass")
    hires_negative_prompt: str = opt(None, "the hires fix's negative prompt (the web UI's Hires negative prompt; "
                                           "default or empty: --negative-prompt)")
    hires_guidance: float = opt(None, "the hires fix's guidance scale (the web UI's Hires CFG Scale, as Forge has it; "
                                      "default: --guidance)")
    hires_model: str = opt(None, "the web UI's Hires checkpoint: this model (as --model takes it, of its family) "
                                 "draws the hires fix's second pass with that pass's LoRAs, its text encoders reading "
                                 "the hires prompts, its VAE encoding and decoding that pass", path="source")
    batch_size: int = opt(4, "images per pipeline call: more is faster on a large GPU, fewer needs less memory; a "
                             "seed draws the same image at any batch size")
    precision: str = opt(None, "weights' precision; auto = fp16 on a CUDA GPU, else fp32; default: accelerate "
                               "launch's --mixed_precision fp16 or bf16 (or its config file's), else auto",
                         choices=PRECISIONS, refused=precision_refused)
    device: str = opt("auto", DEVICE_HELP)
    prediction_type: str = opt(None, "override the model's prediction type", choices=("epsilon", "v_prediction"))
    single_file_config: str = opt(None, "for a single-file model offline: a local diffusers folder of the same family",
                                  path="source")
    vae: str = opt(None, "use this VAE instead of the model's (e.g. SDXL's fp16-fixed one): folder, file or hub id",
                   path="source")
    lora_dir: list = opt([], "folder(s) of LoRA files (.safetensors, searched with their subfolders) for the "
                             "prompts' <lora:name:0.8> tags, e.g. the web UI's models/Lora", path="file")
    refiner: str = opt(None, "the web UI's Refiner: this model (as --model takes it: folder, single file, hub id; "
                             "for SDXL the SDXL refiner) draws the sampling steps after --refiner-switch-at, the same "
                             "sampler going on with the same latents", path="source")
    refiner_switch_at: float = opt(None, f"the share of the way down the noise schedule where --refiner takes over "
                                         f"(the web UI's Switch at; default {REFINER_SWITCH_AT}), above 0 and below 1")
    x: str = opt(None, "the web UI's X/Y/Z plot: AXIS=VALUES, one setting along the grid's columns, each cell drawn "
                       "as generate draws it and xyz_grid-NNNN.png laying them out with labels, e.g. guidance=3,7.5,12 "
                       "or 'embedding=runs/dog/embeddings/*.safetensors' (axes: seed, steps, guidance, sampler, "
                       "prompt-sr, embedding, clip-skip, denoise, size, hires-scale, hires-steps, refiner, "
                       "refiner-switch-at, var-seed, var-strength, eta, ensd, sigma-churn, sigma-tmin, sigma-tmax, "
                       "sigma-noise, schedule, discard-penultimate-sigma, hires-sampler, hires-upscaler; or their web "
                       "UI labels; numbers as the web UI's: 1-5, 1-10 (+2), 1-10 [5])")
    y: str = opt(None, "the X/Y/Z plot's rows: AXIS=VALUES (see --x)")
    z: str = opt(None, "the X/Y/Z plot's third axis: AXIS=VALUES (see --x), one grid per value, drawn side by side "
                       "in one xyz_grid-NNNN.png under each value's label")
    xyz_max_cells: int = opt(100, "the most cells --x, --y and --z may make together (each cell draws -n pictures)")
    xyz_sub_grids: bool = opt(False, "with --z and --x or --y, also write each --z value's grid as its own "
                                     "xyz_grid-NNNN.png after the one of them all (the web UI's Include Sub Grids)")
    xyz_legend: bool = opt(True, "label the X/Y/Z plot's columns, rows and --z grids with their values (the web UI's "
                                 "Draw legend)")
    xyz_margin: int = opt(0, "pixels between the X/Y/Z plot's cells (the web UI's Grid margins (px)), 0 to 500")
    metadata: str = opt("shareable", "what each PNG's text records: shareable (every setting, local files and "
                                     "folders by their names only, as the web UI records them: --again asks for their "
                                     "paths), full (their absolute paths too: --again needs nothing more on this "
                                     "machine, but the paths tell who you are and how your folders are laid out), "
                                     "none (no text)", choices=METADATA)

    def _check_clip_l(self) -> None:
        """Refuse --prompt-l or --negative-prompt-l (ComfyUI's CLIPTextEncodeSDXL text_l) where they cannot apply."""
        texts = (("prompt_l", self.prompt_l), ("negative_prompt_l", self.negative_prompt_l))
        named = [setting(name) for name, text in texts if text is not None]
        if not named:
            return
        if self.emphasis != "comfy":
            raise ConfigError(f"{named[0]} is ComfyUI's CLIPTextEncodeSDXL text_l: add "
                              f"{setting('emphasis', 'comfy')}, which reads the prompts as it does")
        if self.hires_prompt is not None or self.hires_negative_prompt is not None:
            raise ConfigError(f"{named[0]} gives the prompts' CLIP-L text, which the hires fix's own prompt would "
                              f"leave without one: leave {setting('hires_prompt')} and "
                              f"{setting('hires_negative_prompt')} out, or {named[0]}")
        if any(has_and(p) for p in self.prompt):
            raise ConfigError(f"{named[0]} gives a prompt's CLIP-L text whole, which a prompt of AND sub-prompts "
                              f"draws apart: write and for the word, or leave {named[0]} out")
        for name, text in texts:
            if text is not None and lora_tags(text)[1]:  # (else drawn as words, the LoRA not applied)
                raise ConfigError(f"{given(name, text)} holds a LoRA tag, which applies to the whole picture: write "
                                  f"it in {setting('prompt')}")

    def validate(self) -> "GenerateConfig":
        check_types(self)
        for f in dataclasses.fields(self):  # (a tuple check_types lets stand for a list: the list, which is joined)
            if isinstance(getattr(self, f.name), tuple):
                setattr(self, f.name, list(getattr(self, f.name)))
        check_choices(self)
        check_installed(self.sampler)
        if self.hires_sampler:
            check_installed(self.hires_sampler, setting("hires_sampler"))
        expand_home(self)
        if not self.prompt:
            raise ConfigError(f"{setting('prompt')} is required, e.g. "
                              f"{setting('prompt', ['a photo of <my-dog> on the moon'])}")
        if self.n < 1:
            raise ConfigError(f"{setting('n')} must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise ConfigError(f"{setting('batch_size')} must be >= 1, got {self.batch_size}")
        if self.refiner_switch_at is not None and not self.refiner:
            raise ConfigError(f"{setting('refiner_switch_at')} says when the refiner takes over: give the refiner too "
                              f"({setting('refiner')})")
        if self.refiner:
            check_refiner_switch(self.switch_at())
        if self.max_prompts is not None and not self.combinatorial:
            raise ConfigError(f"{setting('max_prompts')} caps {_owns('combinatorial')} combinations: add "
                              f"{setting('combinatorial')}, or leave it out (each picture then draws one prompt)")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"{setting('max_prompts')} must be >= 1, got {self.max_prompts}")
        self._check_clip_l()
        if self.zero_negative and (self.negative_prompt or self.hires_negative_prompt or self.negative_prompt_l):
            negative = setting("negative_prompt" if self.negative_prompt else
                               "hires_negative_prompt" if self.hires_negative_prompt else "negative_prompt_l")
            raise ConfigError(f"{setting('zero_negative')} guides against zeros in place of a negative prompt: leave "
                              f"{negative} out, or {setting('zero_negative')}")
        if self.wildcards_dir is not None:
            if not Path(self.wildcards_dir).is_dir():
                raise ConfigError(f"{setting('wildcards_dir', self.wildcards_dir)} is no folder; give the folder that "
                                  f"holds the wildcard files (name.txt for __name__)")
        if self.seed == -1:  # A1111's "random": drawn once here, then recorded with every image like any seed
            self.seed = random_seed()
        if not 0 <= self.seed <= 2**64 - self.n:  # what torch.Generator.manual_seed takes, for every image's seed
            raise ConfigError(f"{setting('seed')} must be -1 (a random one) or between 0 and {2**64 - self.n} (image "
                              f"i uses seed + i), got {self.seed}")
        self._check_variation()
        self._check_step_noise()
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError(f"{setting('out', self.out)} is a file; give a folder for the PNGs")
        check_drawing(self.steps, self.guidance, self.clip_skip, self.resolution)
        check_side(setting("width"), self.width)
        check_side(setting("height"), self.height)
        if self.token and len(self.token) != len(self.embedding):
            raise ConfigError(f"got {len(self.token)} {setting('token')} for {len(self.embedding)} "
                              f"{setting('embedding')}; give one per file or none")
        self._check_passes()
        return self

    def _check_variation(self) -> None:
        """Refuse a variation the web UI would not draw; draw a variation seed asked for as -1 or left out."""
        if not (math.isfinite(self.variation_strength) and 0 <= self.variation_strength <= 1):
            raise ConfigError(f"{setting('variation_strength')} must be from 0 to 1 (how far toward "
                              f"{_owns('variation_seed')} noise), got {self.variation_strength}")
        # (an X/Y/Z plot's var-strength axis may give it: each cell is checked with its own, `xyz.plan`)
        if self.variation_seed is not None and not self.variation_strength and not (self.x or self.y or self.z):
            raise ConfigError(f"{setting('variation_seed')} needs {setting('variation_strength')} (how far toward its "
                              f"noise, e.g. 0.3)")
        if self.variation_strength and self.variation_seed in (None, -1):  # (the web UI's: a random one)
            self.variation_seed = random_seed()
        if self.variation_seed is not None and not 0 <= self.variation_seed <= 2**64 - self.n:
            raise ConfigError(f"{setting('variation_seed')} must be -1 (a random one) or between 0 and "
                              f"{2**64 - self.n} (image i uses it + i), got {self.variation_seed}")

    def _check_step_noise(self) -> None:
        """Refuse an --eta the samplers do not take (`samplers.check_eta`; an X/Y/Z plot's cells are checked each,
        with their own samplers: `xyz.plan`), sigma churn settings or --discard-penultimate-sigma they do not take
        (`samplers.check_churn`, `samplers.check_discard`) and an --ensd no seed can be offset by."""
        plotted = self.x or self.y or self.z
        check_eta(self.eta, None if plotted else
                  [self.sampler] + ([self.hires_sampler] if self.hires_sampler and self.hires() else []))
        names = None if plotted else [self.sampler] + ([self.hires_sampler] if self.hires_sampler and self.hires()
                                                       else [])
        check_churn(self.churn(), names)
        check_discard(self.discard_penultimate_sigma, names)
        if not plotted and self.init_image is None:  # (before the model loads; 25: generate's default steps)
            check_steps(self.sampler, self.steps or 25)
        if self.ensd < 0:
            raise ConfigError(f"{setting('ensd')} must be 0 or more (the web UI's Eta noise seed delta), got "
                              f"{self.ensd}")
        last = self.seed + self.n - 1  # (the last picture's seed: manual_seed takes seed + ENSD up to 2^64 - 1)
        if last + self.ensd > 2**64 - 1:
            raise ConfigError(f"{setting('ensd', self.ensd)}: picture seed {last} + ENSD is {last + self.ensd}, past "
                              f"2^64 - 1 (the largest seed torch takes); give a smaller {setting('ensd')} or seed")

    def churn(self) -> Churn:
        """--sigma-churn, --sigma-tmin, --sigma-tmax (None: no limit) and --sigma-noise, as the samplers take them."""
        return Churn(self.sigma_churn, self.sigma_tmin, math.inf if self.sigma_tmax is None else self.sigma_tmax,
                     self.sigma_noise)

    def hires(self) -> bool:
        """Whether the settings ask for the hires fix."""
        return bool(self.hires_scale or self.hires_width or self.hires_height)

    def switch_at(self) -> float:
        """--refiner-switch-at as it resolved (the web UI's default without one)."""
        return REFINER_SWITCH_AT if self.refiner_switch_at is None else self.refiner_switch_at

    def _check_passes(self) -> None:
        """Refuse --init-image and the hires fix's settings that do not go together or cannot be drawn."""
        if self.hires_scale is not None and not (math.isfinite(self.hires_scale) and self.hires_scale > 1):
            raise ConfigError(f"{setting('hires_scale')} must be a number above 1 (2 doubles each side), got "
                              f"{self.hires_scale}")
        if self.hires_scale and (self.hires_width or self.hires_height):
            raise ConfigError(f"give {setting('hires_scale')} or {setting('hires_width')}/{setting('hires_height')}, "
                              f"not both (the web UI's Upscale by or its Resize width/height to)")
        check_side(setting("hires_width"), self.hires_width)
        check_side(setting("hires_height"), self.hires_height)
        if self.hires_steps is not None and self.hires_steps < 1:
            raise ConfigError(f"{setting('hires_steps')} must be >= 1, got {self.hires_steps}")
        if self.hires_guidance is not None and not (math.isfinite(self.hires_guidance) and self.hires_guidance >= 1):
            raise ConfigError(f"{setting('hires_guidance')} must be a finite number of at least 1 (1 turns guidance "
                              f"off), got {self.hires_guidance}")
        if not self.hires():
            named = [setting(name) for name in ("hires_steps", "hires_upscaler", "hires_sampler", "hires_prompt",
                                                "hires_negative_prompt", "hires_guidance", "hires_model")
                     if getattr(self, name) not in (None, "")]  # (an empty hires prompt is the web UI's: none)
            if named:
                verb = "set" if len(named) > 1 else "sets"
                raise ConfigError(f"{' and '.join(named)} {verb} the hires fix, which {setting('hires_scale')} (or "
                                  f"{setting('hires_width')} and {setting('hires_height')}) turns on; add it, e.g. "
                                  f"{setting('hires_scale', 2)}")
        if self.denoise is not None:
            if not (math.isfinite(self.denoise) and 0 < self.denoise <= 1):
                raise ConfigError(f"{setting('denoise')} must be above 0 and at most 1 (the share of the picture "
                                  f"redrawn), got {self.denoise}")
            if not self.init_image and not self.hires():
                raise ConfigError(f"{setting('denoise')} says how much of a picture is redrawn: give the picture "
                                  f"({setting('init_image')}) or turn on the hires fix ({setting('hires_scale', 2)})")
        if self.init_image and self.hires():
            raise ConfigError(f"{setting('init_image')} and the hires fix do not go together (the web UI's img2img has "
                              f"none): redraw the picture with {setting('init_image')} at the larger "
                              f"{setting('width')} and {setting('height')} instead")
        self._check_mask()
        if self.init_image and not Path(self.init_image).exists():
            raise ConfigError(f"{setting('init_image', self.init_image)} does not exist; give the picture to redraw "
                              f"(or a folder of them)")


    def _check_mask(self) -> None:
        """Refuse a mask without the picture it masks, the mask's settings without a mask, and bad values."""
        named = [setting(name) for name, value in (("mask_blur", self.mask_blur), ("inpaint_fill", self.inpaint_fill),
                                                   ("mask_invert", self.mask_invert or None),
                                                   ("inpaint_area", self.inpaint_area),
                                                   ("masked_padding", self.masked_padding),
                                                   ("inpaint_blend", self.inpaint_blend)) if value is not None]
        if not self.mask:
            if named:
                raise ConfigError(f"{' and '.join(named)} set inpainting, which {setting('mask')} turns on; give the "
                                  f"mask (white where the {setting('init_image')} picture is redrawn)")
            return
        if not self.init_image:
            raise ConfigError(f"{setting('mask', self.mask)} masks a picture: give the picture to redraw with "
                              f"{setting('init_image')}")
        if Path(self.mask).is_dir():  # (the web UI's batch tab takes a folder of masks by name; textinv, one mask)
            raise ConfigError(f"{setting('mask', self.mask)} is a folder; give one mask picture, white where the "
                              f"picture is redrawn (it masks each picture of an {setting('init_image')} folder alike)")
        if not Path(self.mask).is_file():
            raise ConfigError(f"{setting('mask', self.mask)} does not exist{backslash_note(self.mask)}; give the mask "
                              f"picture, white where the picture is redrawn")
        for name, value in (("mask_blur", self.mask_blur), ("masked_padding", self.masked_padding)):
            if value is not None and value < 0:
                raise ConfigError(f"{setting(name)} must be 0 or more pixels, got {value}")
        if self.masked_padding is not None and self.inpaint_area != "masked":
            raise ConfigError(f"{setting('masked_padding')} widens the box {setting('inpaint_area', 'masked')} "
                              f"redraws: add {setting('inpaint_area', 'masked')}")

def _owns(name: str) -> str:
    """Setting `name`'s, as its user writes it (`errors.setting`): --init's on the command line, init's from Python."""
    return setting(name).removesuffix("=") + "'s"


def _namer(said: dict[str, str] | None) -> Callable[[str], str]:
    """A setting's name in a refusal: how `said` says it was given (a --dataset-config key), else as its user writes
    it (`errors.setting`: its flag, or from Python its keyword)."""
    return lambda name: (said or {}).get(name) or setting(name)


def check_drawing(steps: int | None, guidance: float | None, clip_skip: int | None, resolution: int | None) -> None:
    """The drawing settings `generate` and `score` share (None: the default): --steps, --guidance, --clip-skip,
    --resolution; raise ConfigError naming the bad one."""
    if steps is not None and steps < 1:
        raise ConfigError(f"{setting('steps')} must be >= 1, got {steps}")
    check_guidance(guidance)
    if clip_skip is not None:
        check_clip_skip_value(clip_skip)
    check_side(setting("resolution"), resolution)


def is_warmup_length(value) -> bool:
    """Whether `value` is a tag warm-up's length as kohya's token_warmup_step takes it (--tag-warmup-steps): a whole
    number of steps, or a share of the steps below 1 (0: no warm-up)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            and (value < 1 or value == int(value)))


def training_size(value) -> int | list[int] | None:
    """--resolution as train reads it: one side of a square (a number, or its text), or [width, height] from
    "WIDTHxHEIGHT", kohya's "WIDTH,HEIGHT" (its `prepare_dataset_args` reads the first as the width) or a list of
    two; a pair of equal sides is that square's side, so "512x512" trains as 512 does. None stays None.

    >>> training_size("512x768"), training_size("512,512"), training_size([768, 512])
    ([512, 768], 512, [768, 512])
    """
    if isinstance(value, str):
        sides = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", value.lower())
        if not sides:
            raise ConfigError(f"{setting('resolution')} must be a number of pixels (512) or WIDTHxHEIGHT (512x768), "
                              f"got {value!r}")
        value = [int(sides[1]), int(sides[2])] if sides[2] else int(sides[1])
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{setting('resolution')} as a pair must be two whole numbers [width, height], got "
                              f"{value!r}")
        value = value[0] if value[0] == value[1] else list(value)
    return value


def check_training_size(resolution: int | list | None, buckets: bool) -> None:
    """Refuse a --resolution (`training_size`'s) of a side that is not a multiple of 8 (`check_side`, naming the
    nearest), and WIDTHxHEIGHT with --buckets, whose sizes are made about one square's area."""
    if not isinstance(resolution, list):
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)):
            raise ConfigError(f"{setting('resolution')} takes a whole number of pixels (512) or [width, height] "
                              f"([512, 768]), got {resolution!r}")
        check_side(setting("resolution"), resolution)
        return
    for name, side in zip(("width", "height"), resolution):
        check_side(f"{_owns('resolution')} {name}", side)
    if buckets:
        area = round((resolution[0] * resolution[1]) ** 0.5 / 64) * 64
        raise ConfigError(f"{setting('buckets')} makes its sizes about one square's area: give "
                          f"{setting('resolution')} one number with it, e.g. {area} (about "
                          f"{resolution[0]}x{resolution[1]}'s area), or leave out {setting('buckets')}")


def kohya_pair_note(value, names) -> str | None:
    """What to give for kohya's "W,H" resolution (its command line's form, which its GUI writes into its config
    file), or None where `value` is not one; `names`: the command's settings (generate has width and height).
    train takes the pair itself (`training_size`).

    >>> kohya_pair_note("512,512", ["resolution"])
    "512,512 is kohya's W,H: textinv's --resolution is one side of a square; give --resolution 512"
    """
    found = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", value) if isinstance(value, str) else None
    if not found:
        return None
    width, height = int(found[1]), int(found[2])
    if width == height:
        fix = f"give --resolution {width}"
    elif "width" in names and "height" in names:
        fix = f"give --width {width} --height {height}"
    else:
        fix = f"give --resolution {max(width, height)} (the longer side)"
    return f"{value} is kohya's W,H: textinv's --resolution is one side of a square; {fix}"


def stepped_rate_note(value) -> str | None:
    """What to give for the web UI's stepped learning rate given as --lr (its one "Embedding Learning rate" field
    takes both), or None where `value` is not one.

    >>> stepped_rate_note("0.05:10, 0.005")
    "'0.05:10, 0.005' is the web UI's stepped rate (RATE:STEP, ..., RATE): give it as --lr-steps '0.05:10, 0.005'"
    """
    if not isinstance(value, str) or not re.fullmatch(r"[\d.eE+-]+\s*:\s*-?\d+(\s*,.*)?", value.strip()):
        return None
    return f"{value!r} is the web UI's stepped rate (RATE:STEP, ..., RATE): give it as --lr-steps {value!r}"


def check_side(flag: str, pixels: int | None, multiple: int = 8) -> None:
    """Refuse an image side (None: the default) that is not a positive multiple of `multiple` pixels, naming the
    flag and the nearest sizes that are, or one far beyond any model's (it would only run out of memory).
    Diffusers' SD and SDXL pipelines refuse a side that is no multiple of 8, and the latents are the picture's size
    over the VAE's scale factor (8 for SD), so no pixel is dropped."""
    if pixels is None:
        return
    if pixels > MAX_RESOLUTION:
        raise ConfigError(f"{flag} must be a multiple of 8 from 8 to {MAX_RESOLUTION}, got {pixels}; leave it out "
                          "for the model's own size (512 for SD 1.x, 1024 for SDXL)")
    if pixels >= multiple and pixels % multiple == 0:
        return
    below, above = pixels // multiple * multiple, -(-pixels // multiple) * multiple
    nearest = [size for size in dict.fromkeys((below, above)) if size >= multiple] or [multiple]
    raise ConfigError(f"{flag} must be a multiple of {multiple} pixels, got {pixels}; the nearest: "
                      + " or ".join(map(str, nearest)))


from .formats import FORMATS as EMBEDDING_FORMATS
from .formats import check_suffix, format_for
from .formats import on_disk
from .hub import hub_reference


@named_settings
@dataclass
class MergeConfig:
    """Everything that defines a merge (`textinv merge`): a new embedding made of embeddings and words."""

    out: str = opt(None, "the embedding file to write; its format from the extension (.safetensors, .pt, .bin, "
                         ".png) or --to; a folder (out/) gets the format's file name", path="file", cli=False)
    terms: list = opt([], "the new word's vectors, one term after another (concatenation); a term is parts joined "
                          "by + (a weighted sum, vector by vector); a part is an embedding file (or a training "
                          "run's folder, or a hub id) or 'words' in single quotes (their tokens' rows of --model's "
                          "vocabulary), then [start:stop] to take some of its vectors, then *weight; e.g. "
                          "\"dog.pt*0.7 + cat.pt*0.3\" \"style.pt[0:2]\" \"'golden retriever'\" (in quotes: the "
                          "shell reads * [ ' itself)", cli=False)
    token: str = opt(None, "the new embedding's token, e.g. '<dog-cat>'")
    model: str = opt(None, "the model whose vocabulary 'words' are read from (needed for words); every part must "
                           "fit it", path="source")
    revision: str = opt(None, REVISION_HELP)
    variant: str = opt(None, VARIANT_HELP)
    to: str = opt(None, "format to write (default: from OUT's extension, as convert)", choices=EMBEDDING_FORMATS)
    overwrite: bool = opt(False, "replace OUT if it exists (without it, an existing OUT is refused)")

    def validate(self) -> "MergeConfig":
        from .merge import parse_term  # (here: merge.py imports this module)

        check_types(self)
        check_choices(self)
        if not self.out:
            raise ConfigError("OUT is required: the embedding file to write, e.g. dog-cat.safetensors")
        if self.token is None:
            raise ConfigError(f"{setting('token')} is required: the word the new embedding is written as in prompts, "
                              f"e.g. '<dog-cat>'")
        if not self.token or any(c.isspace() for c in self.token):
            raise ConfigError(f"{given('token', self.token)} must be one word without spaces, e.g. '<dog-cat>': the "
                              f"word the new embedding is written as in prompts")
        if not self.terms:
            raise ConfigError("nothing to merge: give one or more terms, e.g. \"dog.pt*0.5 + cat.pt*0.5\"")
        named = [setting(name) for name in ("revision", "variant") if getattr(self, name)]
        if named and not self.model:
            raise ConfigError(f"{' and '.join(named)} picks which version of {setting('model')} to load; give "
                              f"{setting('model')} too, or leave it out")
        expand_home(self)  # (`out/` keeps its slash: a folder to write into)
        if Path(self.out).is_file() and not self.overwrite:
            raise ConfigError(f"{self.out} already exists; pass {setting('overwrite', True)} to replace it, or choose "
                              f"another OUT")
        # an extension that names no format, or not --to's: said before any work (SDXL's formats take the same
        # extensions as SD's, so the parts need not be read to tell)
        check_suffix(self.out, format_for(self.out, self.to, False), self.token)
        for term in self.terms:  # (each term's syntax: said before anything is loaded)
            parse_term(term)
        return self


def _help(name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}[name]


CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml, or a name without a suffix), TOML (.toml) or JSON file, as a dict; keys
    may use - or _. Any other suffix (.ini, .cfg, .txt) and a file that holds no settings are refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist{backslash_note(path)}")
    suffix = path.suffix.lower()
    example = {".toml": "steps = 3000", ".json": '{"steps": 3000}'}.get(suffix, "steps: 3000")
    if suffix and suffix not in CONFIG_SUFFIXES:  # (read as YAML, an INI file fails with a parser's riddle)
        raise ConfigError(f"config file {path}: textinv reads YAML (.yaml, .yml), TOML (.toml) or JSON (.json), not "
                          f"{suffix}; write the settings as `steps: 3000` lines in a .yaml file")
    try:
        text = read_text(path)  # (UTF-8, or UTF-16 with its byte-order mark)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from e
    if not text.strip():  # (json.loads would say "Expecting value"; YAML and TOML would give no settings at all)
        raise ConfigError(f"config file {path} is empty; write the settings in it (e.g. `{example}`), or leave "
                          f"out --config")
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    if data is None:  # (YAML of comments only)
        raise ConfigError(f"config file {path} holds no settings, only comments; write one per line (e.g. "
                          f"`steps: 3000`), or leave out --config")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value (e.g. `{example}`), got "
                          f"{type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for name in ("lr_steps", "max_grad_norm", "max_grad_value"):  # YAML 1.1 reads 1:30 as 90 (base 60)
        if suffix in (".yaml", ".yml") and _base_60(text, name) and isinstance(data.get(name), (int, float)):
            raise ConfigError(f"config file {path}: put {name} in quotes ({name}: \"1:30\"): YAML reads an unquoted "
                              f"RATE:STEP of whole numbers as one number, here {data[name]}")
    return data


def _base_60(text: str, name: str) -> bool:
    """Whether YAML `text` gives setting `name` (spelt with - or _) a number of YAML 1.1's base 60 (1:30, 90)."""
    key = name.replace("_", "[-_]")
    return re.search(rf"^[ \t]*{key}[ \t]*:[ \t]*[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+", text, re.MULTILINE) is not None


def build(cls, *layers: dict[str, Any]):
    """An instance of config class `cls` from layered dicts (later ones win); unknown keys are refused.

    >>> build(TrainConfig, {"steps": 10}, {"steps": 20}).steps
    20
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        check_known(cls, layer)
        check_alternatives(cls, layer)
        for pair in ALTERNATIVES.get(cls.__name__, {}):
            if any(layer.get(name) is not None for name in pair):
                for name in pair:
                    merged.pop(name, None)
        merged.update(layer)
    return cls(**typed_settings(cls, merged))


def check_alternatives(cls, settings: dict[str, Any], where: str = "") -> None:
    """Refuse settings of config class `cls` that give two settings of one `ALTERNATIVES` pair (`where`: e.g. " in
    train.yaml")."""
    for pair, message in ALTERNATIVES.get(cls.__name__, {}).items():
        if all(settings.get(name) is not None for name in pair):
            raise ConfigError(message() + (f"; {where.strip()} gives both" if where else ""))


def typed_settings(cls, settings: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`settings` (known settings of config class `cls`) each as its field's type (`_coerce`); a value that cannot
    be meant as it is refused naming the setting and `where` it came from (e.g. " in train.yaml")."""
    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)
    out = {}
    for key, value in settings.items():
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[key]
        if key == "resolution" and cls is TrainConfig:  # (one side, or WIDTHxHEIGHT: `training_size`)
            value, kind = training_size(value), int
            if isinstance(value, list):
                out[key] = value
                continue
        elif key == "resolution" and (note := kohya_pair_note(value, fields)):
            raise ConfigError(f"setting 'resolution'{where}: {note}")
        if key == "lr" and (note := stepped_rate_note(value)):
            raise ConfigError(f"setting 'lr'{where}: {note}")
        out[key] = _coerce(key, kind, value, default, where)
    return out


def check_known(cls, settings: dict[str, Any], where: str = "") -> None:
    """Refuse a key that is no setting of config class `cls` (`where`: e.g. " in train.yaml"), naming the nearest
    setting, as a typo most often is."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in settings if key not in names]
    if where and cls is TrainConfig and unknown and set(unknown) <= {"general", "datasets"}:
        raise ConfigError(f"unknown settings {', '.join(map(repr, unknown))}{where}: the file is kohya's dataset "
                          f"config ([general] and [[datasets]] tables); give it to --dataset-config, not --config")
    if where and {"compute_environment", "distributed_type"} & set(unknown):  # (`accelerate config` writes both)
        file = where.removeprefix(" in ")
        raise ConfigError(f"{file} is an accelerate config (accelerate config writes it): give it to accelerate "
                          f"launch --config_file {file} -m textinv {_COMMANDS.get(cls.__name__, 'train')} ..., and "
                          f"textinv's own settings to --config; "
                          + ("train takes its mixed_precision from accelerate launch where --precision is left out"
                             if cls is TrainConfig else "its mixed_precision is not read by textinv: give --precision"))
    tables = [key for key in unknown if isinstance(settings[key], dict)]
    if where.lower().endswith(".toml") and tables:  # (kohya's --config_file: its tables' keys are read as one list)
        inner = [f"{key!r}: {hint}" for table in tables for key in settings[table] if key not in names
                 and (hint := foreign_hint(str(key), _COMMANDS.get(cls.__name__, ""), as_key=True))]
        raise ConfigError(f"{where.removeprefix(' in ')}: {' and '.join(f'[{key}]' for key in tables)} "
                          f"{'are tables' if len(tables) > 1 else 'is a table'}, as kohya's --config_file groups "
                          f"its settings; textinv reads settings at the top level: write them without the table "
                          f"headers" + "".join(f"\n  {hint}" for hint in inner))
    other = _command_of(settings) if unknown and where else None
    if other:  # a whole file meant for another command: its first key's nearest name here would mislead
        keys = ", ".join(map(repr, unknown[:4])) + (", ..." if len(unknown) > 4 else "")
        raise ConfigError(f"unknown settings {keys}{where}: the file holds settings of {other}, so it is most "
                          f"likely a config of that command; give it to that command's --config")
    # other tools' names (a config of the diffusers script's): all at once, one a line as the command line's (a
    # kohya GUI config holds dozens), and not the nearest by spelling, which would most often be the wrong setting
    others = [f"{key!r}: {hint}" for key in unknown
              if (hint := foreign_hint(str(key), _COMMANDS.get(cls.__name__, ""), as_key=True))]
    if len(others) == 1:
        raise ConfigError(f"unknown setting{where}: {others[0]}")
    if others:
        raise ConfigError(f"unknown settings{where}:" + "".join(f"\n  {other}" for other in others))
    for key in unknown:
        near = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"unknown setting {key!r}{where}; {hint}known settings: {', '.join(names)}")


_COMMANDS = {"TrainConfig": "train", "GenerateConfig": "generate"}  # (config class -> its command, for `foreign`)


def _command_of(keys) -> str | None:
    """The commands (`textinv train`, generate, score) whose settings include all `keys`, or None."""
    commands = {"train": TrainConfig, "generate": GenerateConfig, "score": ScoreConfig}
    fits = [name for name, cls in commands.items() if set(keys) <= {f.name for f in dataclasses.fields(cls)}]
    return " or ".join(f"`textinv {name}`" for name in fits) or None


def config_file_settings(cls, path: str | Path) -> dict[str, Any]:
    """The settings of config class `cls` in the file `path` (`--config`): every key known, every value of its
    setting's type (errors name the file), and each relative path read from the file's folder, not the working
    directory, as compose files and pyproject.toml are read: a config kept beside its pictures, or in a repository,
    works from anywhere. A `path="source"` setting (`--model`) is a path only when it names something beside the
    file or reads as one as `--model` reads it (`./`, `../`, a trailing slash, a checkpoint's suffix:
    `models._is_local_path`); else it is a hub id or bundled name, as it stands.

    >>> config_file_settings(TrainConfig, "configs/dog.yaml")  # images: ../photos/dog  # doctest: +SKIP
    {'images': '/home/me/project/photos/dog'}
    """
    where = f" in {path}"
    settings = read_config_file(path)
    check_known(cls, settings, where)
    check_alternatives(cls, settings, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    folder = Path(path).expanduser().absolute().parent
    out = {}
    for key, value in typed_settings(cls, settings, where).items():
        kind = fields[key].metadata.get("path")
        if kind and key == "concepts":
            value = [_concept_from(folder, item) for item in value]
        elif kind == "prompts":  # (only an entry that names a file of prompts is a path)
            from .sample_prompts import is_prompt_file

            value = [_path_from(folder, item.strip(), "file") if is_prompt_file(item) else item for item in value]
        elif kind and key == "subsets":
            value = [{**item, "images": _path_from(folder, item["images"], "file")}
                     if isinstance(item, dict) and item.get("images") else item for item in value]
        elif kind and isinstance(value, list):
            value = [_path_from(folder, item, kind) for item in value]
        elif kind:
            value = _path_from(folder, value, kind)
        out[key] = value
    return out


def _path_from(folder: Path, value, kind: str):
    """`value` read from `folder` when it is a relative local path (see `config_file_settings`)."""
    if not isinstance(value, str) or not value.strip() or value.startswith("~") or Path(value).is_absolute():
        return value
    if kind == "embedding":  # (a hub id stays one: `hub.hub_reference`, from the file's folder)
        from .hub import hub_reference

        if hub_reference(value, folder) is not None:
            return value
    if kind == "source":  # (read as `--model` reads a value, from the file's folder)
        from .models import BUNDLED_MODELS, _is_local_path

        if value in BUNDLED_MODELS or not ((folder / value).exists() or _is_local_path(value, folder)):
            return value  # a hub id or a bundled name
    return str((folder / value).resolve())


def _concept_from(folder: Path, item):
    """A `concepts` entry with its folder read from `folder`: a mapping's images, or FOLDER of FOLDER=TOKEN[=INIT]
    (the longest part before an = that is a folder there, as `TrainConfig.concept_list` splits it)."""
    if isinstance(item, dict):
        return {**item, "images": _path_from(folder, item["images"], "file")} if item.get("images") else item
    parts = item.split("=")
    cut = next((cut for cut in range(len(parts) - 1, 0, -1)
                if len(parts) - cut in (1, 2) and (folder / "=".join(parts[:cut])).is_dir()), 1)
    return "=".join([_path_from(folder, "=".join(parts[:cut]), "file"), *parts[cut:]])


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(name: str, kind: type, value: Any, default: Any, source: str = "") -> Any:
    """A setting's value as its field's type. Config files hand over strings where a number is meant (PyYAML reads
    `lr: 1e-4` as a string) and `"false"`, which Python would take as true; these become the number and the bool.
    Anything that cannot be meant as the type is refused with the setting's name (and `source`: " in FILE")."""
    where = f"setting {name!r}{source}"
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{where} needs a value (default: {default!r}); leave it out to get the default")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if kind is int and isinstance(number, float) and number.is_integer():
            number = int(number)
        if kind is float and isinstance(number, int):
            number = float(number)
        if not isinstance(number, kind):
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{where} must be {what}, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        # (YAML 1.1, which PyYAML reads, takes an unquoted no, yes, off or on as a bool: accelerate's config writes
        # mixed_precision: 'no' quoted for that reason)
        quote = " (YAML reads an unquoted yes, no, on or off as true or false: put the word in quotes)" \
            if isinstance(value, bool) else ""
        raise ConfigError(f"{where} must be text, got {type(value).__name__} {value!r}{quote}")
    if kind is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list (or one text), got {type(value).__name__} {value!r}")
        out = []
        for item in items:
            # (only they take mappings; an empty one is most often YAML's reading of a bare {})
            if isinstance(item, dict) and (name not in ("concepts", "subsets", "sample_prompts") or not item):
                raise ConfigError(f"{where}: the entry {item!r} is a mapping, not text (YAML reads an unquoted "
                                  f"{{...}}, such as a bare {{}}, as one); put it in quotes, e.g. '{{}}'")
            if isinstance(item, dict) or (isinstance(item, (str, int, float)) and not isinstance(item, bool)):
                out.append(item if isinstance(item, (str, dict)) else str(item))
            else:
                raise ConfigError(f"{where}: each entry must be text, got {type(item).__name__} {item!r}")
        return out
    return value


# The last line of the config.yaml a run writes (`save_config`). It is written whole, but a copy of it cut short at a
# line still parses, and --resume would take each setting lost for its default; the header says the line follows
# (`SETTINGS_END_NOTE`), so a run's file without it is told from one an older textinv wrote, which resumes as it is.
# A --config file never needs it (`run_folder.read_run_settings` alone looks).
SETTINGS_END = "# end of settings"
SETTINGS_END_NOTE = f'# the settings end with the line "{SETTINGS_END}": a copy of this file without it was cut short'


# what one command does to its folder, not how the run learns (--resume, --overwrite, --resume-or-start): config.yaml
# records them as off, and a resume takes them from the command, not the record
COMMAND_ONLY = ("resume", "overwrite", "resume_or_start")


def save_config(config, path: str | Path, processes: int = 1, ran_on: str | None = None,
                resolved: dict[str, Any] | None = None, length: str | None = None,
                read_from: str | list[str] | None = None) -> None:
    """Write a config as YAML, atomically, with a header saying how to reuse it (and, for a data-parallel run, with
    how many processes: each draws --batch samples, so the same result needs as many), what it ran with (the
    library versions, and `ran_on`, e.g. "cpu, torch.float32, 2 threads": a bit-for-bit rerun needs the same), as
    `resolved`, what settings left to the default became (a later version's default may differ) and, as `length`,
    how --epochs became the `steps` the file holds (`train.steps_for_epochs`), and as `read_from` (a line, or
    several), which --dataset-config its `subsets` and the settings it gave came from, and which kohya sample prompts
    file its `sample_prompts`. Its last line is `SETTINGS_END`, which a copy cut short lacks."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    from .io import write_text

    rerun = f"textinv train --config {Path(path).name} --out NEW_DIR"
    if processes > 1:
        rerun = f"accelerate launch --num_processes {processes} -m {rerun} (trained by {processes} processes)"
    header = f"# textinv {__version__} settings; rerun with: {rerun}\n"
    libraries = []
    for name in ("torch", "diffusers", "transformers"):
        try:
            libraries.append(f"{name} {version(name)}")
        except PackageNotFoundError:  # (a source checkout of one, say)
            libraries.append(f"{name} ?")
    header += f"# ran with {', '.join(libraries)}, python {platform.python_version()}"
    header += f" on {ran_on}\n" if ran_on else "\n"
    if resolved:
        header += "# defaults as resolved: " + yaml.safe_dump(resolved, default_flow_style=True, sort_keys=False,
                                                           width=1000)
    if length:
        header += f"# {length}\n"
    for note in [read_from] if isinstance(read_from, str) else read_from or []:
        header += f"# {note}\n"
    # (`COMMAND_ONLY`: recorded as off, so the file reruns the run elsewhere; a resumed run's record would otherwise
    # say resume: true)
    settings = {k: (False if k in COMMAND_ONLY else v) for k, v in dataclasses.asdict(config).items()}
    header += SETTINGS_END_NOTE + "\n"
    write_text(path, header + yaml.safe_dump(settings, sort_keys=False) + SETTINGS_END + "\n")


DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # score's judge: the paper's


@named_settings
@dataclass
class ScoreConfig:
    """Settings of `textinv score`; saved in its scores.json."""

    embedding: str = opt(None, "the learned embedding: a file of any supported format, or a training run's --out "
                               "folder (its pictures, model and init word are then the defaults), or a hub id "
                               "(owner/name)", path="embedding")
    images: str = opt(None, "the concept's training pictures (default: the training run's, read from the "
                            "config.yaml beside the embedding)", path="file")
    model: str = opt(None, "the model it was learned for (default: the training run's, else the embedding's "
                           "base model): diffusers folder, single file, hub id or a bundled name", path="source")
    revision: str = opt(None, "a hub id's branch, tag or commit to load (default: the training run's, else main); "
                              "hub ids only")
    variant: str = opt(None, "the weights' variant to load (e.g. fp16), for a hub id or a diffusers folder (default: "
                             "the training run's, else the plain weights)")
    out: str = opt("score-out", "folder for report.html, report.png, scores.json and the pictures; an earlier "
                                "report there is replaced once the new one is complete", path="file")
    prompts: list = opt([], "edit prompts, {} (or the token) where the concept goes (default: six for --property)")
    property: str = opt(None, "object or style: picks the default prompts (default: the embedding's, else object)",
                        choices=PROPERTIES)
    init: str = opt(None, "baseline: this word in the token's place (default: the embedding's init word; 'none' "
                          "leaves the baseline out)")
    description: str = opt(None, "baseline: your own words for the concept in the token's place, e.g. 'a corgi "
                                 "with a red collar' (the paper's human-caption baseline)")
    clip: str = opt(DEFAULT_CLIP, "the CLIP model that judges (the paper's ViT-B/32): hub id or a local folder",
                    path="source")
    n: int = opt(8, "pictures per prompt and method (the paper drew 64)", short="-n")
    seed: int = opt(0, "seed of the first picture of every prompt; picture i uses seed + i")
    steps: int = opt(None, "denoising steps (default: 25, as generate's)")
    guidance: float = opt(None, "classifier-free guidance scale (default: the model's own; 7.5 for SD)")
    negative_prompt: str = opt("", "negative prompt for every picture")
    sampler: str = opt("default", "sampling method (see textinv generate --help)", choices=SAMPLERS,
                       spellings=SAMPLER_SPELLINGS, listed=SAMPLERS_LISTED)
    clip_skip: int = opt(None, "text-encoder layer read, counted from the end (default: the embedding's)")
    compare: list = opt([], "further embeddings of the same concept to score beside it at the same seeds, e.g. "
                            "a run's embeddings/* to find its best step (each shown by its file name), or hub ids "
                            "as --embedding takes", path="embedding")
    token: str = opt(None, "the token's name while scoring (default: the file's); for an embedding whose name the "
                           "model's tokenizer already knows as a word, e.g. an A1111 file named 'dog'")
    resolution: int = opt(None, "picture size (a square's side); default: the width and height the embeddings were "
                                "trained at where not square, as generate draws them, else the model's native size")
    precision: str = opt(None, "weights' precision; auto = fp16 on a CUDA GPU, else fp32; default: accelerate "
                               "launch's --mixed_precision fp16 or bf16 (or its config file's), else auto",
                         choices=PRECISIONS)
    device: str = opt("auto", DEVICE_HELP)
    single_file_config: str = opt(None, "for a single-file model offline: a local diffusers folder of the same family "
                                        "(default: the training run's, when the model is the run's)", path="source")
    vae: str = opt(None, "use this VAE instead of the model's: folder, file or hub id (default: the training run's, "
                         "when the model is the run's)", path="source")
    prediction_type: str = opt(None, "override the model's prediction type (default: the training run's, when the "
                                     "model is the run's)", choices=("epsilon", "v_prediction"))

    def validate(self) -> "ScoreConfig":
        check_types(self)  # (a Python caller's prompts="..." or steps="8")
        expand_home(self)  # (and a Python caller's Paths as text, which the report and scores.json write)
        if not self.embedding:
            raise ConfigError(f"{setting('embedding')} is required: the embedding file, or the training run's "
                              f"{setting('out')} folder")
        if not on_disk(self.embedding).exists() and hub_reference(self.embedding) is None:  # (FILE::NAME: FILE)
            raise ConfigError(f"{setting('embedding', self.embedding)} does not exist")
        check_choices(self)
        check_installed(self.sampler)
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"{setting('n')} must be a whole number >= 1, got {self.n!r}")
        check_seed(self.seed, self.n)  # (picture i uses seed + i)
        check_drawing(self.steps, self.guidance, self.clip_skip, self.resolution)
        if self.description is not None and not self.description.strip():
            raise ConfigError(f"{setting('description')} is empty; give the words you would use for the concept, or "
                              f"leave it out")
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise ConfigError(f"{given('token', self.token)} must be one word without spaces, e.g. '<my-dog>'")
        for prompt in self.prompts:  # (a config file's list may hold a mapping: YAML reads `- {}` as one)
            if not isinstance(prompt, str):
                raise ConfigError(f"{given('prompts', prompt)} is not text; in a YAML file put a prompt that starts "
                                  "with {} in quotes: - \"{} on a beach\"")
        return self
