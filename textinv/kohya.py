"""kohya's dataset config (sd-scripts' `--dataset_config FILE.toml`), read as textinv's settings and pictures.

kohya's training scripts take their pictures from a TOML (or JSON) file instead of `--train_data_dir`:

    [general]
    shuffle_caption = true
    caption_extension = ".txt"

    [[datasets]]
    resolution = 512
    batch_size = 2

      [[datasets.subsets]]
      image_dir = "img/dog"
      num_repeats = 10

      [[datasets.subsets]]
      image_dir = "img/dog-closeups"
      num_repeats = 3
      caption_extension = ".caption"

A subset is a folder of pictures, each trained `num_repeats` times an epoch. A key a subset leaves out is its
dataset's, else `[general]`'s, else the command line's (sd-scripts' library/config_util.py, `BlueprintGenerator`:
subset, dataset, general, command line). `textinv train --dataset-config FILE` reads the file the same way, with
textinv's own settings (flags, --config, defaults) in the command line's place, and gives the run the same pictures,
counts and settings (`apply_dataset_config`): the subsets become `TrainConfig.subsets`, the settings textinv's.

Every key of kohya's schema for its textual inversion (config_util's `ConfigSanitizer`, as train_textual_inversion.py
builds it, and the keys later versions added) is answered by the tables below: mapped onto a textinv setting
(`SETTINGS`, `PICTURES`); taken at the value that changes nothing, refused at any other (`AT_DEFAULT`), or at the
values textinv's own buckets have (`BUCKET_KEYS`); or left unused with a warning (`IGNORED`: keys kohya's textual
inversion makes no use of either, and class_tokens, not captions here as a kohya folder's words are not). A key
kohya does not know is refused, as kohya's schema refuses it, and so is a key in a table kohya does not take it in.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig, check_side, check_training_size, is_warmup_length, training_size
from .data import side_buckets, skip_sides
from .errors import ConfigError, TextinvWarning, backslash_note, first_few, warn
from .errors import setting as written  # (`setting` names a TrainConfig field here)
from .foreign import foreign_hint, setting_of
from .io import read_text

__all__ = ["read_dataset_config", "apply_dataset_config", "dataset_subsets", "DatasetConfigWarning"]

# the tables a key may be written in, as kohya's schema takes it: a dataset's setting in [general] (for every
# dataset) or its [[datasets]]; a subset's in any of the three (a dataset's for its subsets, [general]'s for all);
# a subset's own (its folder, is_reg, alpha_mask) in its [[datasets.subsets]] only
GENERAL, DATASET, SUBSET = "[general]", "[[datasets]]", "[[datasets.subsets]]"
DATASET_KEY = (GENERAL, DATASET)
SUBSET_KEY = (GENERAL, DATASET, SUBSET)
OWN_KEY = (SUBSET,)


class DatasetConfigWarning(TextinvWarning):
    """Keys of kohya's dataset config that textinv leaves unused, as kohya's textual inversion does."""


# ----------------------------------------------------------------------------------------------------------------
# the values kohya's schema takes (voluptuous types there), each a function of the value that raises ValueError with
# what was expected


def _bool(value):
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def _whole(low: int) -> Callable[[Any], int]:
    def check(value):
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            return value
        raise ValueError(f"a whole number >= {low}")
    return check


def _chance(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise ValueError("a chance from 0 up to (not including) 1")


def _rate(value):
    # (1 is a rate too, refused with why by `TrainConfig._check_caption_dropout`, naming the key; the message says
    # it is taken here, where "not including 1" was said of a check that 1 passes)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError("a chance from 0 to 1 (below 1 for the vectors to learn: 1 drops every caption)")


def _text(value):
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError("text")


def _extension(value):
    # kohya appends it to the picture's name without its suffix, and puts the dot in front of one written without
    # ("txt" reads dog1.txt, as its DreamBoothSubset has it)
    if isinstance(value, str) and value.strip(".") and "/" not in value:
        return value if value.startswith(".") else "." + value
    raise ValueError("a file suffix, such as \".txt\" (kohya appends it to the picture's name without its suffix)")


class _Refused(ValueError):
    """A value of the right type that textinv cannot train as it is: its message says why and what to do."""


def _resolution(value):
    # one number, or [width, height] (kohya's "W,H": its BaseDataset reads the first as the width): textinv's
    # --resolution takes both (`config.training_size`: a pair of equal sides is the square's one number)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value):
        value = training_size(value)
    sides = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides):
        raise ValueError("a number of pixels, such as 512, or [width, height], such as [512, 768]")
    try:
        for side in sides:
            check_side("resolution", side)
    except ConfigError as e:  # (a multiple of 8, as --resolution)
        raise _Refused(str(e)) from None
    return value


def _skip_resolution(value):
    # sd-scripts' dataset key (its BaseDataset's skip_image_resolution): one number or [width, height], as it reads
    # resolution, a number n meaning [n, n]; a picture whose own area, before any resize, is at most width x height
    # is left out (`data.picture_set`). Kohya's file takes no "W,H" text: that is its command line's form
    sides = skip_sides(value)
    if sides is not None:
        return sides
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)?", value):
        sides = [int(v) for v in value.split(",")]
        raise _Refused(f"kohya's dataset config takes a number or [width, height], not text (\"W,H\" is its command "
                       f"line's form); write skip_image_resolution = {sides[0] if len(sides) == 1 else sides}")
    raise ValueError("a number of pixels, such as 512, or [width, height], such as [512, 768] (the pictures of at "
                     "most that area are left out)")


def _warmup_steps(value):
    if is_warmup_length(value):
        return value
    raise ValueError("a whole number of steps, or a share of the steps below 1 (0: no warm-up)")


def _string(value):
    if isinstance(value, str):
        return value
    raise ValueError("text (\"\" for none)")


def _anything(value):
    return value


# ----------------------------------------------------------------------------------------------------------------
# the keys


# kohya key -> (tables it may be in, textinv setting, value check): one textinv setting each. A dataset's setting
# (DATASET_KEY) is one for all [[datasets]]; a subset's one for all subsets (textinv has them once per run)
SETTINGS: dict[str, tuple[tuple[str, ...], str, Callable]] = {
    "resolution": (DATASET_KEY, "resolution", _resolution),
    "batch_size": (DATASET_KEY, "batch", _whole(1)),
    "enable_bucket": (DATASET_KEY, "buckets", _bool),
    "bucket_no_upscale": (DATASET_KEY, "bucket_no_upscale", _bool),
    "flip_aug": (SUBSET_KEY, "flip", _bool),
    "random_crop": (SUBSET_KEY, "random_crop", _bool),
    "shuffle_caption": (SUBSET_KEY, "shuffle_tags", _bool),
    "keep_tokens": (SUBSET_KEY, "keep_tags", _whole(0)),
    # (kohya's textual inversion refuses the dropout keys: its sanitizer is built without them; its LoRA scripts and
    # textinv have them. A dropped caption is the empty prompt: `batches.BatchSampler.dropped`)
    "caption_tag_dropout_rate": (SUBSET_KEY, "tag_dropout", _chance),
    "caption_dropout_rate": (SUBSET_KEY, "caption_dropout", _rate),
    "caption_dropout_every_n_epochs": (SUBSET_KEY, "caption_dropout_every", _whole(0)),
    "enable_wildcard": (SUBSET_KEY, "caption_wildcards", _bool),
    # (kohya's textual inversion warms the tags up: its loop gives the dataset each step)
    "token_warmup_min": (SUBSET_KEY, "tag_warmup_min", _whole(0)),
    "token_warmup_step": (SUBSET_KEY, "tag_warmup_steps", _warmup_steps),
    "caption_separator": (SUBSET_KEY, "tag_separator", _text),
    "keep_tokens_separator": (SUBSET_KEY, "keep_tags_separator", _string),
    "secondary_separator": (SUBSET_KEY, "tag_joiner", _string),
    "caption_prefix": (SUBSET_KEY, "caption_prefix", _string),
    "caption_suffix": (SUBSET_KEY, "caption_suffix", _string),
    "alpha_mask": (OWN_KEY, "alpha_mask", _bool),
    "validation_split": (DATASET_KEY, "validation_split", _chance),
    "validation_seed": (DATASET_KEY, "validation_seed", _whole(0)),
}

# a subset's pictures: its folder, each picture's times an epoch, its caption files' suffix, and the size at or
# below which a picture is left out (a dataset's key, given to each of its subsets) (TrainConfig.subsets)
PICTURES: dict[str, tuple[tuple[str, ...], Callable]] = {
    "image_dir": (OWN_KEY, _text),
    "num_repeats": (SUBSET_KEY, _whole(1)),
    "caption_extension": (SUBSET_KEY, _extension),
    "skip_image_resolution": (DATASET_KEY, _skip_resolution),
}

# a dataset's bucket sizes: textinv's buckets are its own (sides from half to twice --resolution, in steps of the
# model's down-sampling): a value that says the same is taken, another refused (`_check_buckets`)
BUCKET_KEYS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "min_bucket_reso": (DATASET_KEY, _whole(1)),
    "max_bucket_reso": (DATASET_KEY, _whole(1)),
    "bucket_reso_steps": (DATASET_KEY, _whole(1)),
}
BUCKET_STEPS = (64, 32)  # textinv's bucket step: the model's down-sampling, 64 pixels for SD 1.x/2.x, 32 for SDXL

# kohya key -> (tables, the values that change nothing (kohya's default), what to do instead of any other)
AT_DEFAULT: dict[str, tuple[tuple[str, ...], tuple, str]] = {
    "color_aug": (SUBSET_KEY, (False,), "textinv has no colour augmentation: it encodes each picture once (kohya "
                                        "refuses color_aug with --cache_latents too); remove it"),
    "face_crop_aug_range": (SUBSET_KEY, (), "textinv has no face-crop augmentation; remove it"),
    "is_reg": (OWN_KEY, (False,), "textinv trains no regularisation pictures: a token learns only from captions that "
                                  "hold it, and kohya's textual inversion, which keeps them, trains them with the "
                                  "concept's captions when it uses its templates (--use_object_template) and spends "
                                  "steps on them otherwise; remove the subset"),
    "resize_interpolation": (SUBSET_KEY, (), "textinv resizes with Lanczos (bicubic when enlarging); remove it"),
    "metadata_file": (OWN_KEY, (), "textinv reads each picture's caption from a file beside it (kohya's fine-tuning "
                                   "metadata is made from such files): give the subset's image_dir, with a NAME.txt "
                                   "caption beside each picture, and no metadata_file"),
    "conditioning_data_dir": (OWN_KEY, (), "textinv's masks are the pictures' own alpha channels: put each mask into "
                                           "its picture's alpha channel and set alpha_mask = true"),
}

# kohya key -> (tables, why it is left unused): keys kohya's textual inversion takes and makes no use of either, and
# class_tokens (kohya's caption for a picture without one, where textinv draws the templates), said in one warning
IGNORED: dict[str, tuple[tuple[str, ...], str]] = {
    "class_tokens": (SUBSET_KEY, "not captions here, as a kohya folder's words are not: a picture without a caption "
                                 "file gets the templates, as kohya's --use_object_template gives it; write the words "
                                 "into caption files to train with them"),
    "cache_info": (SUBSET_KEY, "not needed: textinv reads each picture once a run"),
    "network_multiplier": (DATASET_KEY, "a LoRA setting, which textual inversion does not use"),
    "custom_attributes": (SUBSET_KEY, "for kohya's custom training scripts; its textual inversion does not read them"),
}

KEYS: dict[str, tuple[tuple[str, ...], Callable]] = {
    **{key: (places, check) for key, (places, _, check) in SETTINGS.items()},
    **PICTURES, **BUCKET_KEYS,
    **{key: (places, _anything) for key, (places, _, _) in AT_DEFAULT.items()},
    **{key: (places, _anything) for key, (places, _) in IGNORED.items()},
}


# ----------------------------------------------------------------------------------------------------------------
# reading the file


@dataclasses.dataclass
class DatasetConfig:
    """What a kohya dataset config says, each subset's keys resolved as kohya resolves them (its own, else its
    dataset's, else [general]'s); `read_dataset_config`."""

    path: Path
    datasets: list[dict[str, tuple[Any, str]]]  # per [[datasets]]: dataset key -> (value, where it was written)
    subsets: list[dict[str, tuple[Any, str]]]  # per subset: key -> (value, where it was written)
    subset_of: list[int]  # each subset's [[datasets]] number (from 0)
    places: list[str]  # each subset's place in the file, "[[datasets]] D, [[datasets.subsets]] S"


def read_dataset_config(path: str | os.PathLike) -> DatasetConfig:
    """kohya's dataset config at `path` (TOML, or JSON as kohya also reads), every key checked against kohya's
    schema for its textual inversion: where it may be written and its value's type. Errors name the file, the table
    and the key. Keys are resolved per subset as kohya resolves them; nothing is mapped onto textinv's settings yet
    (`apply_dataset_config` does).

    >>> read_dataset_config("dataset.toml").subsets[0]["num_repeats"]  # doctest: +SKIP
    (10, '[[datasets]] 1, [[datasets.subsets]] 1')
    """
    path = Path(path).expanduser()
    data = _load_dataset_config(path)
    _check_top(path, data)
    general = _table(path, data.get("general", {}), GENERAL, "[general]")
    if not isinstance(data.get("datasets", []), list):  # ([datasets] written for [[datasets]])
        raise ConfigError(f"{path}: datasets must be a list of tables, [[datasets]] (two brackets), got "
                          f"{type(data['datasets']).__name__}")
    datasets, subsets, subset_of, places = [], [], [], []
    for d, dataset in enumerate(data.get("datasets", []), start=1):
        resolved = {**general, **_table(path, dataset, DATASET, f"[[datasets]] {d}")}
        datasets.append(resolved)
        for place, values in _dataset_subsets(path, d, dataset, resolved):
            subsets.append(values)
            subset_of.append(d - 1)
            places.append(place)
    if not subsets:
        raise ConfigError(f"{path} holds no [[datasets]]: kohya's dataset config lists them, each with its "
                          f"[[datasets.subsets]] of pictures (image_dir = \"img/dog\", num_repeats = 10)")
    return DatasetConfig(path, datasets, subsets, subset_of, places)


def _load_dataset_config(path: Path) -> dict:
    """The tables of the dataset config file at `path` (.toml or .json, UTF-8 or UTF-16 with its byte-order mark),
    as read; refused where there is no such file or it cannot be read."""
    if not path.is_file():
        raise ConfigError(f"{written('dataset_config', path)} does not exist{backslash_note(path)}; give kohya's "
                          f"dataset config file (.toml)")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):  # (kohya's load_user_config reads these two)
        raise ConfigError(f"{written('dataset_config', path)}: kohya's dataset config is a .toml (or .json) file, not "
                          f"{suffix or 'a file without a suffix'}")
    try:
        text = read_text(path)  # (UTF-8, or UTF-16 with its byte-order mark)
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{written('dataset_config', path)} is not UTF-8 text ({e.reason} at byte {e.start}): "
                          f"save it as UTF-8") from e
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse {written('dataset_config', path)}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{written('dataset_config', path)} must hold [general] and [[datasets]] tables, got "
                          f"{type(data).__name__}")
    return data


def _dataset_subsets(path: Path, d: int, dataset: dict, resolved: dict) -> list[tuple[str, dict]]:
    """The subsets of [[datasets]] `d` (from 1) that kohya trains, each as its place in the file and its keys
    resolved over the dataset's (`resolved`); a subset whose folder an earlier one of the dataset names is left out,
    with a warning."""
    where = f"[[datasets]] {d}"
    items = dataset.get("subsets")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: {where} has no [[datasets.subsets]]: each of kohya's datasets lists its "
                          f"folders of pictures, e.g. [[datasets.subsets]] with image_dir = \"img/dog\"")
    kept = []
    for s, subset in enumerate(items, start=1):
        place = f"{where}, [[datasets.subsets]] {s}"
        values = {**resolved, **_table(path, subset, SUBSET, place)}
        if "image_dir" not in values:
            _refuse_at_default(path, values)  # (a fine-tuning subset's metadata_file: what to do instead)
            raise ConfigError(f"{path}: {place} has no image_dir; kohya's subsets each name their folder of "
                              f"pictures, e.g. image_dir = \"img/dog\"")
        folder = values["image_dir"][0]
        first = next((at for at, other in kept if other["image_dir"][0] == folder), None)
        if first:  # (kohya's DreamBoothDataset takes a folder once: its subsets are equal by image_dir alone)
            warn(DatasetConfigWarning(f"{path}: {place} left out: its image_dir {folder!r} is that of "
                                      f"{first} in the same dataset, and kohya trains only the first "
                                      f"subset of a folder; remove it, or merge the two"), stacklevel=4)
            continue
        kept.append((place, values))
    return kept


def _check_top(path: Path, data: dict) -> None:
    others = [key for key in data if key not in ("general", "datasets")]
    if not others:
        return
    if {key.replace("-", "_") for key in others} <= {f.name for f in dataclasses.fields(TrainConfig)}:
        raise ConfigError(f"{written('dataset_config', path)} holds textinv settings ({', '.join(others[:4])}), not "
                          f"kohya's [general] and [[datasets]]: give it to --config")
    # kohya's training settings (its --config_file, which its GUI saves beside the dataset config) given here; a
    # dataset key at the top (written above [general]) is said below, though kohya's training settings have it too
    hints = [hint for key in others if key not in KEYS and (hint := foreign_hint(key, "train"))]
    if hints:
        raise ConfigError(f"{written('dataset_config', path)} holds kohya's training settings (its --config_file: "
                          f"{first_few(others)}), not its dataset config ([general] and [[datasets]]): give "
                          f"--dataset-config the dataset file, and those settings as textinv's flags or --config keys "
                          f"({hints[0]})")
    key = others[0]
    where = f" (it is a {_places(KEYS[key][0])} key)" if key in KEYS else ""
    raise ConfigError(f"{path}: unknown key {key!r} at the top{where}; kohya's dataset config holds [general] and "
                      f"[[datasets]] tables only")


def _table(path: Path, table, kind: str, place: str) -> dict[str, tuple[Any, str]]:
    """The keys of one table (`kind`: GENERAL, DATASET or SUBSET), each checked, as key -> (value, `place`)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {place} must be a table of key = value, got {type(table).__name__} {table!r}")
    out = {}
    for key, value in table.items():
        if key == "subsets" and kind == DATASET:
            continue
        if key not in KEYS:
            raise ConfigError(f"{path}: {place}: {_unknown(key)}")
        places, check = KEYS[key]
        if kind not in places:
            raise ConfigError(f"{path}: {place}: {key} is a {_places(places)} key, which kohya's schema refuses in "
                              f"{kind}; move it there")
        try:
            out[key] = (check(value), place)
        except _Refused as e:
            raise ConfigError(f"{path}: {place}: {key} = {_toml(value)}: {e}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: {place}: {key} must be {e}, got {_toml(value)}") from None
    return out


def _places(places: tuple[str, ...]) -> str:
    return " or ".join(places)


def _unknown(key: str) -> str:
    if key == "subsets":
        return "subsets belong to a [[datasets]] table ([[datasets.subsets]])"
    textinv = {f.name for f in dataclasses.fields(TrainConfig)}
    ours = {textinv_name: kohya for kohya, (_, textinv_name, _) in SETTINGS.items()}
    ours.update(images="image_dir", repeats="num_repeats")
    if setting_of(key) in ours:  # (textinv's name written in kohya's file)
        return f"unknown key {key!r}: that is textinv's name; kohya's file calls it {ours[setting_of(key)]}"
    if setting_of(key) in textinv:
        return (f"unknown key {key!r}: that is a textinv setting, not one of kohya's dataset keys; give it as "
                f"{written(setting_of(key))}")
    near = difflib.get_close_matches(key, list(KEYS), n=1)
    return f"unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "; kohya's keys: " + ", ".join(KEYS))


def _refuse_at_default(path: Path, values: dict[str, tuple[Any, str]]) -> None:
    """Refuse a key of `AT_DEFAULT` given at a value that changes something, naming it and what to do."""
    for key, (value, place) in values.items():
        if key in AT_DEFAULT:
            _, accepted, fix = AT_DEFAULT[key]
            if not any(value == ok and isinstance(value, bool) == isinstance(ok, bool) for ok in accepted):
                raise ConfigError(f"{path}: {place}: {key} = {_toml(value)}: {fix}")


def _toml(value) -> str:
    return json.dumps(value) if isinstance(value, (bool, str, list)) else repr(value)


# ----------------------------------------------------------------------------------------------------------------
# mapping it onto textinv's settings


def apply_dataset_config(config: TrainConfig) -> TrainConfig:
    """`config` with its --dataset-config read: the file's subsets as `subsets` (folders made absolute, a relative
    one read from the working directory as kohya reads it), and the settings it gives (`SETTINGS`) as textinv's;
    `dataset_config` becomes None (config.yaml records what the file gave, so a resume or rerun reads the same).

    A setting the file gives is refused when `config` gives another value too (a flag, --config, or a run's saved
    settings: anything but textinv's default), and when the file gives it differently for two subsets or datasets
    (textinv has it once a run). Where a subset leaves it to the command line, textinv's setting is that subset's,
    as in kohya. What the file leaves out is textinv's, as kohya takes it from its command line.

    >>> apply_dataset_config(TrainConfig(dataset_config="d.toml", token="<dog>", out="run")).subsets  # doctest: +SKIP
    [{'images': '/home/me/img/dog', 'repeats': 10, 'caption_extension': '.txt'}]
    """
    read = read_dataset_config(config.dataset_config)
    path = read.path
    given = written("images") if config.images else written("concepts") if config.concepts else None
    if given:  # (kohya ignores --train_data_dir beside a dataset config; here the pictures are named once)
        raise ConfigError(f"{given} and {written('dataset_config', path)} both name the pictures: give one of them "
                          f"(the file's subsets are its folders)")
    for values in read.subsets:
        _refuse_at_default(path, values)
    changes, said = _file_settings(config, read)
    _check_captions(config, changes, said)
    resolution = changes.get("resolution", config.resolution)
    buckets = changes.get("buckets", config.buckets)
    if changes.get("bucket_no_upscale") and not buckets:  # (kohya's buckets are off: it goes unread there)
        warn(DatasetConfigWarning(f"{path}: bucket_no_upscale = true left unused: the buckets are off (no "
                                  f"enable_bucket, nor --buckets), and kohya ignores it then too"),
             stacklevel=3)
        del changes["bucket_no_upscale"]
    try:  # ([width, height] with buckets: textinv's are made about one square's area, not kohya's w x h)
        check_training_size(training_size(resolution), buckets)
    except ConfigError as e:
        raise ConfigError(f"{path}: resolution = {resolution} with enable_bucket (or {written('buckets')}): "
                          f"{e}") from None
    _check_buckets(read, resolution, buckets, changes.get("bucket_no_upscale", config.bucket_no_upscale))
    _warn_ignored(read)
    subsets = _file_subsets(config, read)
    return dataclasses.replace(config, **changes, subsets=subsets, dataset_config=None)


def _file_settings(config: TrainConfig, read: DatasetConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the file gives (`SETTINGS`) as textinv's (setting: value), and where each was given (setting:
    "FILE's key (place)", for `_check_warmup_wildcards`); refused where the file gives one twice, or `config`
    another (`_check_beside_config`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    said: dict[str, str] = {}
    for key, (places, setting, _) in SETTINGS.items():
        units = read.datasets if places == DATASET_KEY else read.subsets
        found = [unit.get(key) for unit in units]
        present = [v for v in found if v is not None]
        if not present:
            continue
        value, place = _one_value(read.path, key, places, setting, present)
        _check_beside_config(config, read, key, places, setting, (value, place), found, defaults[setting])
        changes[setting] = value
        said[setting] = f"{read.path}'s {key} ({place})"
    return changes, said


def _once(places: tuple[str, ...]) -> str:
    """Where a key of `places` is given once for all the pictures."""
    return "in [general]" if places != OWN_KEY else "in every [[datasets.subsets]]"


def _one_value(path: Path, key: str, places: tuple[str, ...], setting: str, present: list[tuple[Any, str]]
               ) -> tuple[Any, str]:
    """The (value, place) the file gives `key` in every dataset or subset of `present`: refused where they differ."""
    (value, place), *rest = present
    for other, other_place in rest:
        if other != value:
            what = "[[datasets]]" if places == DATASET_KEY else "subsets"
            raise ConfigError(f"{path}: {key} differs between {what} ({place}: {_toml(value)}, {other_place}: "
                              f"{_toml(other)}); textinv has one {_flag(setting)} for all its pictures: give "
                              f"one value {_once(places)}, or train them apart")
    return value, place


def _check_beside_config(config: TrainConfig, read: DatasetConfig, key: str, places: tuple[str, ...], setting: str,
                         given: tuple[Any, str], found: list[tuple[Any, str] | None], default: Any) -> None:
    """Refuse the file's `given` (value, place) of `key` where `config` gives `setting` another value than its
    `default` (a resume: other than the run's), or where a dataset or subset of `found` leaves `key` out (None) and
    so takes `config`'s other value, as kohya takes its command line's."""
    path, (value, place) = read.path, given
    current = getattr(config, setting)
    if current != default and current != value:
        if config.resume:
            raise ConfigError(f"{_resuming(config, path)}: its {key} = {_toml(value)} ({place}) is not the run's "
                              f"{_given(setting, current)}; {_RESUME_FIX}")
        raise ConfigError(f"{_given(setting, current)} and {path}'s {key} = {_toml(value)} ({place}) "
                          f"both give the {setting.replace('_', ' ')}: leave one out")
    if any(v is None for v in found):  # (those take the command line's: textinv's setting, as it is)
        ours = config.use_flip if setting == "flip" else current
        if ours != value:
            missing = next(i for i, v in enumerate(found) if v is None)
            which = f"[[datasets]] {missing + 1}" if places == DATASET_KEY else read.places[missing]
            raise ConfigError(f"{path}: {which} gives no {key}, so it takes textinv's {_flag(setting)} "
                              f"({_shown(ours)}), where {place} gives {_toml(value)}; textinv has one "
                              f"{_flag(setting)} for all its pictures: give {key} {_once(places)}")


def _file_subsets(config: TrainConfig, read: DatasetConfig) -> list[dict[str, Any]]:
    """The file's subsets (`_subset`), refused where `config` gives others (a resume: other than the run's, but for
    where the folders are now)."""
    path = read.path
    subsets = [_subset(read, i, values, config.resume) for i, values in enumerate(read.subsets)]
    # a resume given the file again: its record agrees, but for where the folders are now (the run moved: its
    # pictures are checked by name and bytes against the checkpoint's, `run_folder.check_resumable`)
    moved = config.resume and _but_folders(config.subset_list()) == _but_folders(subsets)
    if config.subsets and config.subset_list() != subsets and not moved:
        if config.resume:
            raise ConfigError(f"{_resuming(config, path)}: its subsets ({_listed(subsets)}) are not the run's "
                              f"({_listed(config.subset_list())}): given again, the file must hold the run's "
                              f"subsets in the run's order, each with its num_repeats, caption_extension and "
                              f"skip_image_resolution (only image_dir may differ, where a folder moved); {_RESUME_FIX}")
        raise ConfigError(f"{path}'s subsets ({_listed(subsets)}) and the subsets given "
                          f"({_listed(config.subset_list())}) "
                          f"both name the pictures: give one of them")
    return subsets


def dataset_subsets(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The subsets of kohya's dataset config at `path`, as `TrainConfig.subsets` holds them (`apply_dataset_config`'s,
    without the settings), for what needs only the pictures and their caption files (`textinv caption`).

    >>> dataset_subsets("dataset.toml")  # doctest: +SKIP
    [{'images': '/home/me/img/dog', 'repeats': 10, 'caption_extension': '.caption'}]
    """
    read = read_dataset_config(path)
    return [_subset(read, i, values) for i, values in enumerate(read.subsets)]


# (a resume reads the run's config.yaml, which holds what the file gave when the run started)
_RESUME_FIX = ("resume without --dataset-config (the run's config.yaml records what the file gave when the run "
               "started), or start a new run")


def _but_folders(subsets: list[dict]) -> list[dict]:
    return [{**subset, "images": None} for subset in subsets]


def _resuming(config: TrainConfig, path: Path) -> str:
    return f"cannot resume {config.out} with {written('dataset_config', path)}"


def _check_captions(config: TrainConfig, changes: dict[str, Any], said: dict[str, str]) -> None:
    """`TrainConfig`'s checks of the caption settings, made on the file's values here so that a refusal names the
    keys that gave them (`said`), not flags the user never typed."""
    given = copy.copy(config)
    for setting, value in changes.items():
        setattr(given, setting, value)
    given._check_tag_separators(said)
    given._check_tag_warmup(said)
    given._check_caption_dropout(said)


def _flag(setting: str) -> str:
    """A textinv setting as its user writes it: --flag on the command line, keyword= from Python (`errors.setting`)."""
    return written(setting)


def _given(setting: str, value) -> str:
    """Setting `setting` of `value` as its user writes it (`errors.setting`): --batch 5 or batch=5; a switch on or
    off, a pair as the command line shows them (--buckets on, --resolution [512, 768])."""
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return written(setting, value if plain else _shown(value))


def _shown(value) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _listed(subsets: list[dict]) -> str:
    return ", ".join(f"{s['images']} x{s['repeats']}" + (f" {s['caption_extension']}" if s["caption_extension"]
                                                          else "")
                     + (" skip_image_resolution {}x{}".format(*s["skip_image_resolution"])
                        if s.get("skip_image_resolution") else "") for s in subsets)


def _subset(read: DatasetConfig, i: int, values: dict[str, tuple[Any, str]], resume: bool = False
            ) -> dict[str, Any]:
    """Subset `i` as `TrainConfig.subsets` holds it; its folder must exist. A relative image_dir is read from the
    working directory, as kohya reads it. `resume`: the file given to a resume, which needs it not."""
    folder, place = values["image_dir"]
    where = Path(folder).expanduser()
    if not where.is_dir():
        what = "is a file, not a folder" if where.exists() else f"does not exist{backslash_note(folder)}"
        relative = "" if where.is_absolute() else (f" (kohya reads a relative path from the working directory, "
                                                   f"{Path.cwd()})")
        raise ConfigError(f"{read.path}: {place}: image_dir {folder!r} {what}{relative}; give the folder of the "
                          f"subset's pictures" + (f", or {_RESUME_FIX}" if resume else ""))
    extension, skip = values.get("caption_extension"), values.get("skip_image_resolution")
    subset = {"images": str(where.resolve()), "repeats": values.get("num_repeats", (1, ""))[0],
              "caption_extension": extension[0] if extension else None}
    if skip:  # (its dataset's, else [general]'s: kohya's is a dataset's setting; recorded only where given)
        subset["skip_image_resolution"] = skip[0]
    return subset


def _check_buckets(read: DatasetConfig, resolution: int | None, buckets: bool, no_upscale: bool) -> None:
    """Refuse bucket sizes that make other buckets than textinv's (`data.bucket_sizes`: sides from half to twice the
    resolution, in the model's steps); without buckets kohya ignores them, and textinv with a warning, and so are
    min_bucket_reso and max_bucket_reso with bucket_no_upscale (each picture's size makes its bucket). A value that
    does not bind is taken: at 512, kohya's GUI's max_bucket_reso = 2048 beside min_bucket_reso = 256 makes the
    buckets 1024 makes (no side of 256 or more pairs with more than 1024 in 512x512's area)."""
    given = {(key, place): value for dataset in read.datasets for key, (value, place) in dataset.items()
             if key in BUCKET_KEYS}
    if given and not buckets:
        places = ", ".join(dict.fromkeys(f"{key} ({place})" for key, place in given))
        warn(DatasetConfigWarning(f"{read.path}: {places} left unused: the buckets are off (no "
                                  f"enable_bucket, nor --buckets), and kohya ignores them then too"),
             stacklevel=4)
        return
    sizes = [(key, place) for key, place in given if key != "bucket_reso_steps"]
    if no_upscale and sizes:
        places = ", ".join(dict.fromkeys(f"{key} ({place})" for key, place in sizes))
        warn(DatasetConfigWarning(f"{read.path}: {places} left unused: with bucket_no_upscale each "
                                  f"picture's own size makes its bucket, and kohya ignores them then too"),
             stacklevel=4)
        given = {(key, place): value for (key, place), value in given.items() if key == "bucket_reso_steps"}
    for (key, place), value in given.items():
        if key == "bucket_reso_steps" and value not in BUCKET_STEPS:
            raise ConfigError(f"{read.path}: {place}: bucket_reso_steps = {value}: textinv's buckets step by "
                              f"the model's own down-sampling, 64 pixels (SDXL: 32); remove it")
        if key != "bucket_reso_steps" and resolution is None:
            raise ConfigError(f"{read.path}: {place}: {key} = {value} needs the resolution it is measured "
                              f"against: give resolution (e.g. 512 in [general]) or {written('resolution')}")
    for dataset in read.datasets:
        sizes = {key: dataset[key] for key in ("min_bucket_reso", "max_bucket_reso") if key in dataset}
        if not sizes or no_upscale:
            continue
        ours = {"min_bucket_reso": resolution / 2, "max_bucket_reso": 2 * resolution}
        if all(value == ours[key] for key, (value, _) in sizes.items()):
            continue
        steps = (dataset["bucket_reso_steps"][0],) if "bucket_reso_steps" in dataset else BUCKET_STEPS

        def same(step: int) -> bool:  # (kohya's buckets from these sizes are those from textinv's own)
            own = (-(-resolution // (2 * step)) * step, 2 * resolution)
            sides = [sizes[key][0] if key in sizes else side for key, side in zip(ours, own)]
            return kohya_buckets(resolution, step, *sides) == kohya_buckets(resolution, step, *own)
        if all(same(step) for step in steps):
            continue
        key, (value, place) = next((k, v) for k, v in sizes.items() if v[0] != ours[k])
        raise ConfigError(f"{read.path}: {place}: {key} = {value}: textinv's buckets have sides from half to "
                          f"twice the resolution, {resolution / 2:g} to {2 * resolution} at {resolution}; set "
                          f"{key} = {ours[key]:g}, or remove it")


def kohya_buckets(resolution: int, step: int, smallest: int, largest: int) -> set[tuple[int, int]]:
    """The bucket sizes kohya's sd-scripts make at `resolution` with min_bucket_reso `smallest` and max_bucket_reso
    `largest` (its `make_bucket_resolutions`): `data.side_buckets`, with the square of the resolution in `step`s.

    >>> kohya_buckets(512, 64, 256, 2048) == kohya_buckets(512, 64, 256, 1024)
    True
    """
    square = resolution // step * step
    return {(square, square)} | side_buckets(resolution, step, smallest, largest)


def _warn_ignored(read: DatasetConfig) -> None:
    found: dict[str, list[str]] = {}
    for unit in [*read.datasets, *read.subsets]:
        for key, (_, place) in unit.items():
            if key in IGNORED and place not in found.setdefault(key, []):
                found[key].append(place)
    if found:
        said = "; ".join(f"{key} ({', '.join(places)}): {IGNORED[key][1]}" for key, places in found.items())
        warn(DatasetConfigWarning(f"{read.path}: left unused: {said}"), stacklevel=4)
