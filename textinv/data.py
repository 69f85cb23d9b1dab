"""The training images and their captions.

Textual Inversion learns from 3-10 pictures of one concept (Gal et al. 2023, section 4). This module turns a folder
of pictures into training samples, in four steps:

1. `find_images`: which files in the folder are pictures (Pillow must be able to read them: the name alone
   does not decide), or in its `<repeats>_<words>` subfolders for kohya's layout (`picture_repeats`);
2. `load_image`: one picture as upright 8-bit sRGB, whatever its colour mode, bit depth or EXIF rotation;
3. `prepare_image`: a square `(3, resolution, resolution)` float32 tensor in [-1, 1], the range the VAE expects;
4. captions: the image's own caption file (`dog1.txt` beside `dog1.jpg`) or one of the paper's prompt templates,
   with the placeholder put where the marker `{}` (or A1111's `[name]`) stands.

`load_training_images` runs steps 1-3 for a list of files and reads the captions; `CaptionSampler` gives each
training sample its prompt. The images are decoded once: 3-10 tensors of 3 x 512 x 512 floats take a few MB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, DataError, TextinvWarning, backslash_note, first_few, setting, warn
from .io import read_text

__all__ = [
    "OBJECT_TEMPLATES",
    "STYLE_TEMPLATES",
    "PROPERTIES",
    "MAX_IMAGE_PIXELS",
    "SkippedFilesWarning",
    "SmallImageWarning",
    "AnimatedImageWarning",
    "CaptionWithoutMarkerWarning",
    "UnreadTemplatesWarning",
    "TrainingImage",
    "CaptionSampler",
    "expand_wildcards",
    "read_caption_lines",
    "find_images",
    "kohya_repeats",
    "picture_repeats",
    "picture_names",
    "describe_kohya",
    "PictureSet",
    "picture_set",
    "load_image",
    "to_rgb",
    "prepare_image",
    "load_training_images",
    "read_caption",
    "filename_words",
    "read_template_file",
    "make_caption",
    "check_property",
    "default_templates",
    "flip_default",
    "random_hflip",
]


# The prompt templates of the paper's code, as the diffusers example also uses them ("imagenet_templates_small"
# and "imagenet_style_templates_small", a subset of CLIP's ImageNet prompts). The style list really has two
# entries twice; they are kept so that sampling matches the reference.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

PROPERTIES = ("object", "style")

MARKER = "{}"  # where the placeholder goes in a template or caption
A1111_MARKER = "[name]"  # the same, as AUTOMATIC1111's template files write it
FILEWORDS = "[filewords]"  # A1111: the image's own caption text

# Pillow refuses images over 2 x 89.5 megapixels as possible decompression bombs (and warns above 89.5). Training
# pictures are the user's own files, and a 100-megapixel photo is ordinary, so we lift Pillow's check while opening
# and apply this larger limit of our own: 300 megapixels is about 0.9 GB as 8-bit RGB.
MAX_IMAGE_PIXELS = 300_000_000

# Huge pictures are first shrunk by whole-pixel averaging (a JPEG already as it is decoded: `_read`) to no less
# than this many times their training size, then filtered (Lanczos): fast, and the same quality. Pillow's docs find
# a gap of 3 indistinguishable from filtering the whole picture; with 1 (decoding a JPEG at the smallest scale that
# still covers the training size) a photo's fine detail changed by up to 72 of 255 levels (BENCHMARKS.md).
_REDUCING_GAP = 3.0

# Files that operating systems leave in folders: never the user's data, so skipped without a word.
_OS_LITTER = {"thumbs.db", "desktop.ini"}

# Camera RAW files are TIFF inside, so Pillow opens them, but what it reads is the small preview in the first
# directory (often 160x120), not the photo: they are skipped with a hint to export them instead.
_CAMERA_RAW = {".dng", ".cr2", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef", ".srw",
               ".3fr", ".erf", ".kdc", ".mos", ".iiq", ".rwl"}

_PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif",
                     ".jxl"}

# a caption file beside its picture: `.txt` (diffusers, A1111, kohya) or kohya's default `.caption`, in the cases
# a file made on Windows or macOS (where names ignore case) may have; the first found is read
CAPTION_SUFFIXES = (".txt", ".caption")
_CAPTION_NAMES = tuple(v for s in CAPTION_SUFFIXES for v in dict.fromkeys((s, s.upper(), s[0] + s[1:].capitalize())))

# The kinds whose further frames are an animation's or a document's pages, of which only the first is read. Pillow
# counts others' pictures as frames too, that are none: a phone JPEG's (MPO) preview, depth or HDR gain map, and a
# Photoshop file's layers (PSD: what is read is the picture they make together)
_FRAMED_FORMATS = {"GIF", "PNG", "WEBP", "AVIF", "TIFF"}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")


class SkippedFilesWarning(TextinvWarning):
    """Some files in the image folder are not pictures Pillow can read, or some of its subfolders are not read
    (kohya's layout), and were left out."""


class SmallImageWarning(TextinvWarning):
    """A picture is smaller than the training resolution and will be upscaled (and so blurred)."""


class AlphaMaskWarning(TextinvWarning):
    """--alpha-mask was asked for, but none of a concept's pictures has any transparency."""


class AnimatedImageWarning(TextinvWarning):
    """A training picture is animated (GIF, APNG, WebP) or has several pages (TIFF): only its first frame is
    trained."""


class CaptionWithoutMarkerWarning(TextinvWarning):
    """A caption file has no `{}` or `[name]` marker, so the placeholder is put in front of its text."""


class UnreadTemplatesWarning(TextinvWarning):
    """--templates without `[filewords]` where pictures have caption files: those train on their captions alone."""


class EmptyCaptionWarning(TextinvWarning):
    """A caption file is empty, which textinv reads as no caption (its picture trains on the templates), where
    kohya's scripts train on the empty text."""


class CaptionLinesWarning(TextinvWarning):
    """A caption file holds several lines, which textinv joins into one caption where kohya's scripts take the
    first."""


# ----------------------------------------------------------------------------------------------------------------
# 1. Finding the images


def find_images(folder: str | os.PathLike, purpose: str = "train") -> list[Path]:
    """The pictures in `folder` (not its subfolders), sorted by name; or, for a folder in kohya's layout, the
    pictures of its `<repeats>_<words>` subfolders (`kohya_repeats`), folder by folder. `purpose`: what the
    pictures are for, "train" or "score", which a folder without pictures is refused in the words of
    (`_no_pictures`).

    A file counts as a picture if Pillow can read its header, whatever its name says, except camera RAW files
    (`.dng`, `.cr2`, `.nef`...), where Pillow would read only the small preview inside. Hidden files, OS litter
    (`Thumbs.db`, `desktop.ini`) and caption files beside a picture (`dog1.txt` next to `dog1.jpg`) are expected
    and skipped quietly; any other file is skipped with one `SkippedFilesWarning` that names them all. Only
    regular files (or links to them) are opened: a named pipe or a device is skipped, as is a broken link.

    kohya's layout (sd-scripts' DreamBooth folders, `--train_data_dir img/` with `img/10_mydog dog/`): when
    `folder` holds no pictures itself but subfolders named `<repeats>_<words>`, their pictures are read (one level
    down, not deeper); each is trained `repeats` times as often (`picture_repeats`). A subfolder without the
    prefix, or with 0 repeats, is skipped with a warning, as kohya skips it. When `folder` holds pictures itself,
    only they are read, with one warning naming the subfolders left out (kohya's or not).

    >>> find_images("photos/my_cat")  # doctest: +SKIP
    [PosixPath('photos/my_cat/cat1.jpg'), PosixPath('photos/my_cat/cat2.png')]
    >>> find_images("img")  # img/10_cat/, img/3_cat toy/  # doctest: +SKIP
    [PosixPath('img/10_cat/cat1.jpg'), PosixPath('img/10_cat/cat2.png'), PosixPath('img/3_cat toy/toy.jpg')]
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"the image folder {folder} does not exist{backslash_note(folder)}; give the folder that holds "
                        f"your pictures")
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder; give the folder that holds your pictures")
    images, subfolders = _scan(folder, say_subfolders=True)
    kohya = [p for p in subfolders if kohya_repeats(p.name) is not None]
    if not images and kohya:
        return _kohya_images(folder, subfolders)
    if not images and subfolders:
        raise DataError(_no_pictures(folder, subfolders, purpose))
    if not images:
        raise DataError(f"no images found in {folder}; put 3-10 .jpg/.png/.webp pictures of your concept there")
    return images


def _no_pictures(folder: Path, subfolders: list[Path], purpose: str) -> str:
    """Why `folder`, which holds `subfolders` and no pictures, is refused as the pictures to `purpose` ("train",
    "score"). A training run's --out (its config.yaml, checkpoints/, samples/) is the likely mistake when scoring,
    as score takes that folder for --embedding: its subfolders hold no pictures, so none is suggested. Else
    kohya's layout, which puts the pictures one level down ("train/10_sks dog/"), is said rather than "no images"."""
    from .run_folder import CONFIG_FILE  # (run_folder imports this module)
    if (folder / CONFIG_FILE).is_file():
        where = (f"; give the run with {setting('embedding', str(folder))}, and with {setting('images')} the "
                 f"folder of the pictures themselves (or leave it out: the run's config.yaml says where they are)"
                 if purpose == "score" else "; give the folder of the pictures themselves")
        return f"{folder} is a training run's folder (it holds {CONFIG_FILE}), not a folder of pictures{where}"
    return (f"no images found in {folder}, and its subfolders ({_names(subfolders)}) are not searched; give the "
            f"folder that holds the pictures itself, e.g. {subfolders[0]}, or name the subfolders as kohya does, "
            f"<repeats>_<words> (such as 10_{subfolders[0].name}), to {purpose} "
            f"{'on' if purpose == 'train' else 'with'} them all")


def _subfolders_left_out(folder: Path, subfolders: list[Path], subject: str, subset: bool = False) -> str:
    """What `find_images` says of the `subfolders` of a `folder` that holds pictures itself, which it does not read
    (those named in kohya's layout it would read without the pictures); `subject`: the folder as the words name it.
    With `subset`, `folder` is a kohya subset's image_dir, whose subfolders kohya does not read either (its
    glob_images looks in the folder only, and its schema has no key to search deeper)."""
    kohya = [p for p in subfolders if kohya_repeats(p.name) is not None]
    said = f"{subject} holds pictures itself, so only they are read, not its subfolders ({_names(subfolders)})"
    if subset:
        return (f"{said}: a kohya subset's pictures are those in its folder (image_dir), not in its subfolders; to "
                f"train on theirs, move them into {folder}, or give each subfolder as a subset of its own")
    if kohya:
        return (f"{said}; to train on its kohya folders ({_names(kohya)}) too, move the pictures into a folder of "
                f"their own such as {folder / '1_pictures'}")
    return (f"{said}: subfolders are not searched; to train on their pictures, move them into {folder}, or give a "
            f"subfolder as the folder of pictures")


def _names(paths: Sequence[Path]) -> str:
    return first_few([p.name for p in paths], 5)


def _scan(folder: Path, caption_extension: str | None = None, say_subfolders: bool = False,
          subset: bool = False) -> tuple[list[Path], list[Path]]:
    """The pictures and the subfolders in `folder`, each sorted by name; other files are named in one
    `SkippedFilesWarning` (`find_images`), and with `say_subfolders` so are the subfolders of a folder that holds
    pictures (`_subfolders_left_out`, `subset`: of a kohya subset's folder), in the same one. `caption_extension`: a
    kohya subset's, whose caption files (NAME + it) are expected beside the pictures too."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"cannot list the image folder {folder}: {e}") from e

    images: list[Path] = []
    others: list[Path] = []
    subfolders: list[Path] = []
    for path in entries:
        if path.name.startswith(".") or path.name.lower() in _OS_LITTER:
            continue
        if path.is_dir():
            subfolders.append(path)
            continue
        # is_file follows links; opening a named pipe would wait forever for a writer, and a device never ends
        picture = path.is_file() and path.suffix.lower() not in _CAMERA_RAW and _is_image(path)
        (images if picture else others).append(path)

    stems = {_nfc(p.stem) for p in images}
    captions = {_nfc(p.with_suffix("").name + caption_extension) for p in images} if caption_extension else set()
    skipped = [p for p in others if not (((p.suffix in _CAPTION_NAMES and _nfc(p.stem) in stems)
                                          or _nfc(p.name) in captions) and p.is_file())]
    said = []
    if skipped:
        names = ", ".join(_describe_skipped(p) for p in skipped)
        said.append(f"skipped {len(skipped)} file(s) in {folder} that are not pictures: {names}")
    if say_subfolders and images and subfolders:
        said.append(_subfolders_left_out(folder, subfolders, "and it" if said else str(folder), subset))
    if said:
        warn(SkippedFilesWarning("; ".join(said)), stacklevel=3)
    return images, subfolders


# kohya's DreamBooth folders: sd-scripts (config_util's `generate_dreambooth_subsets_config_by_subdirs`) splits a
# subfolder's name at "_", reads the first part as the repeat count and the rest as the class words, and skips a
# folder whose first part is no number (with a warning) or whose count is below 1. kohya also takes a bare number
# ("10"); the underscore is required here, so that dated folders such as "2024" are not read as 2024 repeats.
_KOHYA_FOLDER = re.compile(r"(\d+)_(.*)", re.ASCII | re.DOTALL)
MAX_KOHYA_REPEATS = 10_000  # kohya folders are counted 1-100 or so; a larger count is a date or an id


def kohya_repeats(name: str) -> int | None:
    """The repeat count a kohya folder name gives its pictures ("10_mydog dog": 10; "0_old": 0), or None for a
    name that is not `<repeats>_<words>`. The words are kohya's class words, its caption for a picture without a
    caption file; textinv's captions come from the caption files and templates, so they are not used.

    >>> kohya_repeats("10_mydog dog"), kohya_repeats("003_my_toy"), kohya_repeats("extra"), kohya_repeats("10")
    (10, 3, None, None)
    """
    match = _KOHYA_FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


def _kohya_images(folder: Path, subfolders: list[Path]) -> list[Path]:
    """The pictures of `folder`'s kohya subfolders (`find_images`), the others named in one warning."""
    images: list[Path] = []
    skipped = []
    for sub in subfolders:
        repeats = kohya_repeats(sub.name)
        if repeats is None:
            skipped.append(f"{sub.name} (not named <repeats>_<words>, such as 10_{sub.name})")
        elif repeats < 1:
            skipped.append(f"{sub.name} (0 repeats)")
        elif repeats > MAX_KOHYA_REPEATS:  # a date-named folder ("20240101_trip"): its epoch table would not fit
            raise DataError(f"{sub} reads as {repeats:,} repeats in kohya's <repeats>_<words> layout (at most "
                            f"{MAX_KOHYA_REPEATS:,}); rename it with the count you mean, e.g. 10_{sub.name}")
        else:
            found = _scan(sub)[0]
            images += found
            if not found:
                skipped.append(f"{sub.name} (no pictures in it)")
    if skipped:
        warn(SkippedFilesWarning(f"skipped {len(skipped)} subfolder(s) of {folder}, which is read in "
                                 f"kohya's layout: {', '.join(skipped)}"), stacklevel=3)
    if not images:
        raise DataError(f"no images found in the kohya folders of {folder}; put the pictures of your concept in a "
                        f"subfolder named <repeats>_<words>, such as {folder / '10_mydog'}")
    return images


def picture_repeats(folder: str | os.PathLike, paths: Sequence[Path]) -> list[int]:
    """How many times each picture of `find_images(folder)` is trained per epoch, before --repeats: its kohya
    folder's count, 1 for a picture directly in `folder`.

    >>> picture_repeats("img", [Path("img/10_cat/cat1.jpg"), Path("img/3_cat toy/toy.jpg")])
    [10, 3]
    """
    folder = Path(folder)
    return [1 if p.parent == folder else kohya_repeats(p.parent.name) or 1 for p in paths]


def picture_names(folder: str | os.PathLike, paths: Sequence[Path]) -> list[str]:
    """The pictures' paths within `folder`, as a checkpoint records them ("cat1.jpg", "10_cat/cat1.jpg").

    >>> picture_names("img", [Path("img/10_cat/cat1.jpg")])
    ['10_cat/cat1.jpg']
    """
    return [Path(p).relative_to(folder).as_posix() for p in paths]


def describe_kohya(folder: str | os.PathLike, paths: Sequence[Path]) -> str | None:
    """One line saying what was read from a folder in kohya's layout, or None for a plain folder.

    >>> describe_kohya("img", [Path("img/10_cat/a.jpg"), Path("img/10_cat/b.jpg"), Path("img/3_toy/c.jpg")])
    'img: 2 kohya folders, 10_cat (2 pictures x10), 3_toy (1 x3)'
    """
    folder = Path(folder)
    counts: dict[Path, int] = {}
    for p in paths:
        if p.parent != folder:
            counts[p.parent] = counts.get(p.parent, 0) + 1
    if not counts:
        return None
    parts = [f"{sub.name} ({n}{(' picture' + 's' * (n != 1)) if i == 0 else ''} x{kohya_repeats(sub.name)})"
             for i, (sub, n) in enumerate(counts.items())]
    return f"{folder}: {len(counts)} kohya folder{'s' if len(counts) > 1 else ''}, {', '.join(parts)}"


@dataclass
class PictureSet:
    """A concept's pictures as a run trains them (`picture_set`), in the order its sampler's table counts them."""

    where: str  # what a message names: the folder, or the kohya subsets' folders
    paths: list[Path]
    repeats: list[int]  # each picture's times per epoch before --repeats: its kohya folder's or subset's count
    caption_extensions: list[str | None]  # each caption file is NAME + this (None: NAME.txt, else NAME.caption)
    # as a checkpoint records them: within the folder; for subsets, the subset's number (from 1) and the name within
    # its folder ("2/a.png"), so a run whose folders moved is still checked by them (`run_folder.check_resumable`)
    names: list[str]
    described: str | None  # one line saying what was read (kohya's layout or subsets); None for a plain folder

    def picked(self, order: list[int]) -> "PictureSet":
        """These pictures at indices `order`, in that order (a checkpoint's order; a validation split's part)."""
        if order == list(range(len(self.paths))):
            return self
        return dataclasses.replace(self, paths=[self.paths[k] for k in order],
                                   repeats=[self.repeats[k] for k in order],
                                   caption_extensions=[self.caption_extensions[k] for k in order],
                                   names=[self.names[k] for k in order])


def picture_set(images: str | os.PathLike | None = None, subsets: Sequence[dict] = (),
                purpose: str = "train") -> PictureSet:
    """The pictures of the folder `images` (`find_images`: plain, or in kohya's layout), or of kohya dataset
    `subsets`: mappings of `images` (a folder, read as kohya reads a subset's image_dir: the pictures in it, not in
    its subfolders), `repeats` and `caption_extension`, and `skip_image_resolution` where its dataset gave one (the
    pictures of at most that area left out, `_larger_than`), as `TrainConfig.subset_list` gives them (what
    `--dataset-config` read from a kohya file). `purpose`: what they are for (`find_images`).

    >>> picture_set(subsets=[{"images": "img/a", "repeats": 10, "caption_extension": None}]).repeats  # doctest: +SKIP
    [10, 10]
    """
    if images is not None:
        paths = find_images(images, purpose)
        return PictureSet(str(images), paths, picture_repeats(images, paths), [None] * len(paths),
                          picture_names(images, paths), describe_kohya(images, paths))
    paths: list[Path] = []
    repeats: list[int] = []
    extensions: list[str | None] = []
    names: list[str] = []
    parts = []
    for number, subset in enumerate(subsets, start=1):
        folder, count, extension = Path(subset["images"]), subset["repeats"], subset["caption_extension"]
        if not folder.is_dir():  # (--dataset-config checked it; a recorded run's folder may have gone since)
            raise DataError(f"the subset folder {folder} does not exist{backslash_note(folder)}; put it back, or "
                            f"train without that subset")
        found, subfolders = _scan(folder, extension, say_subfolders=True, subset=True)
        if not found:
            below = (f" (a subset's pictures are those in its folder, not in its subfolders: give each of "
                     f"{_names(subfolders)} as a subset of its own)" if subfolders else "")
            raise DataError(f"no images found in {folder}, a kohya subset's folder (image_dir){below}; put the "
                            f"subset's pictures there, or remove the subset")
        if subset.get("skip_image_resolution"):
            found = _larger_than(folder, found, subset["skip_image_resolution"])
        paths += found
        repeats += [count] * len(found)
        extensions += [extension] * len(found)
        names += [f"{number}/{p.relative_to(folder).as_posix()}" for p in found]
        pictures = f"{len(found)}{(' picture' + 's' * (len(found) != 1)) if not parts else ''}"
        parts.append(f"{folder.name} ({pictures} x{count}{f', captions {extension}' if extension else ''})")
    folders = ", ".join(str(subset["images"]) for subset in subsets)
    return PictureSet(f"the kohya subsets {folders}", paths, repeats, extensions, names,
                      f"{len(parts)} kohya subset{'s' * (len(parts) != 1)}: {', '.join(parts)}")


def skip_sides(value) -> list[int] | None:
    """kohya's skip_image_resolution as [width, height] (one number n is [n, n], as kohya reads it), or None when it
    is neither a whole number of pixels nor two of them (each caller says how to write it where it was read).

    >>> skip_sides(512), skip_sides([512, 768]), skip_sides("512")
    ([512, 512], [512, 768], None)
    """
    def pixels(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if pixels(value):
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(pixels, value)):
        return list(value)
    return None


def _larger_than(folder: Path, paths: list[Path], skip: Sequence[int]) -> list[Path]:
    """The pictures of a kohya subset's `folder` that its dataset's skip_image_resolution [width, height] keeps: as
    sd-scripts' datasets filter them, those whose own area (width x height as stored, before any resize; a rotation
    leaves it as it is) is larger than width x height, the others named in one `SkippedFilesWarning`. A subset left
    with none is refused, as an empty one is.

    >>> _larger_than(Path("dog"), [Path("dog/small.png"), Path("dog/big.png")], [512, 512])  # doctest: +SKIP
    [PosixPath('dog/big.png')]
    """
    width, height = skip
    sizes = {}
    for path in paths:
        with _open_image(path) as img:  # (the header alone: the size, nothing decoded)
            sizes[path] = img.size
    small = [p for p in paths if sizes[p][0] * sizes[p][1] <= width * height]  # (kohya's `<=`: at most, not below)
    if not small:
        return paths
    listed = ", ".join(f"{p.name} ({sizes[p][0]}x{sizes[p][1]})" for p in small)
    if len(small) == len(paths):
        raise DataError(f"no picture in {folder}, a kohya subset's folder (image_dir), is larger in area than its "
                        f"skip_image_resolution {width}x{height}, which leaves out all {len(small)}: {listed}; give "
                        f"a smaller skip_image_resolution, or remove the subset")
    warn(SkippedFilesWarning(f"skipped {len(small)} picture(s) in {folder} of at most {width}x{height} "
                             f"pixels in area (its skip_image_resolution, as kohya skips them): {listed}"),
         stacklevel=3)
    return [p for p in paths if p not in small]


def _describe_skipped(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"{path.name} (a broken link)"
    if not path.is_file():
        return f"{path.name} (not a regular file)"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:  # (copied with another user's permissions, say: not to be taken for a damaged picture)
        return f"{path.name} (cannot be opened: {e.strerror or e}; give yourself read permission, e.g. chmod u+r)"
    if path.suffix in _CAPTION_NAMES:
        return f"{path.name} (a caption with no picture of the same name)"
    if path.suffix.lower() in _CAMERA_RAW:
        return f"{path.name} (camera RAW: Pillow reads only its small preview; export it as JPEG or PNG)"
    if path.suffix.lower() in (".eps", ".ps", ".epsf") and _is_image(path, need_ghostscript=False):
        return f"{path.name} (EPS needs Ghostscript installed; or convert it to PNG)"
    if path.suffix.lower() in _PICTURE_SUFFIXES and path.stat().st_size == 0:
        return f"{path.name} (an empty file: copy the picture again)"
    if (kind := _undecodable_kind(path)) is not None:
        return f"{path.name} ({kind})"
    if path.suffix.lower() in _PICTURE_SUFFIXES:
        return (f"{path.name} (named as a picture but unreadable: damaged, not what its name says, or a kind Pillow "
                "cannot decode, such as float TIFF; re-save it as PNG or JPEG)")
    return path.name


def _undecodable_kind(path: Path) -> str | None:
    """What to do with a picture of a kind, by its name, that this Pillow cannot decode at all (a phone's HEIC, JPEG
    XL, AVIF before Pillow 11.2): such a file is not damaged, and converting it is the fix; None for other names,
    and for these where a plugin taught Pillow the kind (its damaged files are just damaged)."""
    suffix = path.suffix.lower()
    kinds = {".heic": "HEIC", ".heif": "HEIC", ".jxl": "JPEG XL", ".avif": "AVIF"}
    if suffix not in kinds or suffix in Image.registered_extensions():
        return None
    kind = kinds[suffix]
    tip = {"HEIC": "; an iPhone takes JPEG photos with Settings > Camera > Formats > Most Compatible",
           "AVIF": ", or use Pillow 11.2 or later built with AVIF"}.get(kind, "")
    return f"{kind}, which this Pillow cannot read: convert it to JPEG or PNG{tip}"


def _is_image(path: Path, need_ghostscript: bool = True) -> bool:
    """Whether Pillow recognises the file (it reads the header only; a truncated picture still counts).

    EPS counts only where Ghostscript is installed: Pillow knows its header but needs Ghostscript to draw it.
    """
    try:
        with _open_image(path) as img:
            if img.format == "EPS" and need_ghostscript:
                from PIL import EpsImagePlugin

                return bool(EpsImagePlugin.has_ghostscript())
            return True
    except Exception:  # Pillow's format plugins raise many kinds of error on bytes that are not theirs
        return False


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """`Image.open` without Pillow's decompression-bomb check; `load_image` applies `MAX_IMAGE_PIXELS` instead.

    Pillow's limit is a module global, so it is lifted only for the `open` call, where the check happens. The file
    is opened here, not by Pillow, so that closing it leaves a loaded picture usable: `Image.close` would free the
    pixels, and keeping them past it took a copy of the whole picture (600 MB for a 200-megapixel scan).
    """
    with open(path, "rb") as file:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(file)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        yield img


# ----------------------------------------------------------------------------------------------------------------
# 2. Loading one image


def load_image(path: str | os.PathLike, shown_at: int | None = None) -> Image.Image:
    """Read a picture as upright 8-bit RGB in sRGB.

    The EXIF orientation is applied first (phones store portraits sideways with an "Orientation" tag); then
    `to_rgb` converts the colours. A missing, corrupt or truncated file raises `DataError` naming it. `shown_at`:
    the picture is only ever seen scaled to about this many pixels a side (a thumbnail, CLIP's 224), so a big JPEG
    may be decoded at a reduced scale that keeps `_REDUCING_GAP` times that (see `_read`).

    >>> load_image("photos/my_cat/cat1.jpg").mode  # doctest: +SKIP
    'RGB'
    """
    need = None if shown_at is None else (lambda full: (shown_at, shown_at))
    return _read(Path(path), False, need).image


def load_image_and_alpha(path: str | os.PathLike, alpha: bool = True) -> tuple[Image.Image, Image.Image | None]:
    """`load_image`'s RGB picture and its transparency as an upright 8-bit "L" image (255: opaque), or None for
    a picture without any (`alpha_channel`) or when `alpha` is off (it is not read then)."""
    read = _read(Path(path), alpha)
    return read.image, read.alpha


class _Picture(NamedTuple):
    """One picture as `_read` reads it."""

    image: Image.Image  # upright 8-bit sRGB
    alpha: Image.Image | None  # its transparency (`load_image_and_alpha`)
    full: tuple[int, int]  # its full upright size (W, H)
    area: tuple[float, float, float, float]  # (left, top, right, bottom) of the picture in `image`'s pixels
    frames: int  # of an animation or a multi-page file, of which `image` is the first; else 1


def _read(path: Path, alpha: bool, need: Callable[[tuple[int, int]], tuple[int, int]] | None = None) -> _Picture:
    """`load_image_and_alpha`, with the picture's full upright size, area and number of frames (`_Picture`).

    `need` gives the size (W, H) the picture trains at from its full upright size: a JPEG is then decoded at the
    smallest scale of 1/2, 1/4 or 1/8 that keeps it `_REDUCING_GAP` times as large. libjpeg scales it in the
    frequency domain as it decodes (Pillow's `draft`), in a fraction of the time and memory (at 1/8, 64 times fewer
    pixels), averaging pixels as `_fit`'s shrinking would anyway. A side of 4001 at 1/8 ends in a part-pixel
    (500.125 of 501), on the left or the top once EXIF has turned the picture: hence the area. Other formats are
    decoded whole.
    """
    try:
        with _open_image(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} textinv reads; "
                    "shrink it (it is scaled down to the size it is used at anyway)"
                )
            # (Pillow opens the first frame; counting an animation's walks its file, so only where it has a second)
            framed = img.format in _FRAMED_FORMATS and getattr(img, "is_animated", False)
            frames = img.n_frames if framed else 1
            orientation = img.getexif().get(0x0112, 1)  # (EXIF's Orientation; 5-8 swap the sides)
            turned = orientation in (5, 6, 7, 8)
            full = (height, width) if turned else (width, height)
            extent = (float(width), float(height))  # the picture's width and height in decoded pixels
            if need is not None:
                w, h = (math.ceil(side * _REDUCING_GAP) for side in need(full))
                drafted = img.draft(None, (h, w) if turned else (w, h))  # (None for formats other than JPEG)
                if drafted is not None:
                    extent = drafted[1][2:]
            img.load()  # decode now, inside the try, so that a truncated file fails here and not later
            ImageOps.exif_transpose(img, in_place=True)  # (in place: a copy of the whole picture otherwise)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"the picture {path} does not exist") from e
    except UnidentifiedImageError as e:  # (only a file given by name gets here: a folder's are skipped by `_is_image`)
        raise DataError(_unidentified(path)) from e
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError... on bad bytes
        raise DataError(f"cannot read the picture {path} ({e}); it may be corrupt or cut short: "
                        "re-export it (a training folder's: or move it out of the folder)") from e
    try:
        img = _eight_bit(img)  # (once, for both)
        return _Picture(to_rgb(img), alpha_channel(img) if alpha else None, full, _area(extent, img.size, orientation),
                        frames)
    except Exception as e:  # a colour mode Pillow cannot convert, or a decoder or colour library failing
        raise DataError(f"cannot convert {path} (colour mode {img.mode}) to RGB: {e}; re-save it as RGB") from e


def _unidentified(path: Path) -> str:
    """What is wrong with a file Pillow does not take for a picture of any kind it knows, and the fix."""
    if path.stat().st_size == 0:
        return (f"cannot read the picture {path}: it is an empty file (a copy or download that did not finish); "
                "copy it again")
    if (kind := _undecodable_kind(path)) is not None:
        return f"cannot read the picture {path}: it is {kind}"
    return (f"cannot read the picture {path}: Pillow recognises no picture in it (not what its name says, or a kind "
            "it cannot decode); re-save it as PNG or JPEG")


def _area(extent: tuple[float, float], size: tuple[int, int], orientation: int
          ) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) a stored picture of `extent` (W, H) covers in its upright decoded picture
    of `size`: the stored right and bottom edges, where part-pixels are, end up on the left or the top for some
    EXIF orientations (2 mirrors left-right, 3 turns half round, 4 mirrors top-bottom, 5-8 also swap the sides)."""
    w, h = extent[::-1] if orientation in (5, 6, 7, 8) else extent
    left = size[0] - w if orientation in (2, 3, 6, 7) else 0.0
    top = size[1] - h if orientation in (3, 4, 7, 8) else 0.0
    return (left, top, left + w, top + h)


def alpha_channel(img: Image.Image) -> Image.Image | None:
    """The transparency of a picture of any mode as 8-bit "L" (0: transparent, 255: opaque), or None if it has
    none: an alpha channel (RGBA, LA, PA, premultiplied RGBa) or a transparent colour (a palette entry, or PNG's
    tRNS grey or RGB value, 16-bit grey included). The transparency `to_rgb` composites onto white.

    >>> alpha_channel(Image.new("LA", (1, 1), (9, 70))).getpixel((0, 0)), alpha_channel(Image.new("RGB", (1, 1)))
    (70, None)
    """
    img = _eight_bit(img)
    return img.convert("RGBA").getchannel("A") if _has_transparency(img) else None


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey as 8-bit (`_gray_to_8bit`, a transparent value kept as alpha); others as they are."""
    return _gray_to_8bit(img) if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F") else img


def _has_transparency(img: Image.Image) -> bool:
    """An alpha channel, or a transparent colour (palette entry, PNG tRNS value)."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB in sRGB (the conversions `load_image` applies).

    - Transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparent colour) is composited onto
      white: a cut-out object on white is what product photos show and what prompts like "a photo of a {}"
      describe; black would read as a dark background and teach the token one.
    - 16-bit grey ("I;16", "I;16B"...) is scaled, not clipped: 65535 becomes 255 and 32768 becomes 128.
      32-bit "I" and float "F" have no fixed range, so it is read from the data: floats within [0, 1] are scaled
      by 255, values within 0..255 kept, within 0..65535 scaled as 16-bit, anything else (negative values, say)
      stretched from its minimum to its maximum; a constant picture outside those ranges becomes mid-grey (128).
      A transparent grey value (PNG's tRNS) makes exactly the pixels of that value transparent.
    - An embedded ICC profile (CMYK from print work, Display P3 from phones, Adobe RGB) is converted to sRGB;
      if the profile cannot be used, or there is none, Pillow's plain conversion is used (for CMYK that is
      R = 255 - C - K, clipped, and likewise for G and B).

    >>> to_rgb(Image.new("CMYK", (1, 1), (255, 0, 0, 0))).getpixel((0, 0))
    (0, 255, 255)
    """
    icc = img.info.get("icc_profile")
    img = _eight_bit(img)
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")  # the "over" operator, white underneath
    if icc and img.mode == "P":  # a palette holds RGB colours, in the profile's space like any RGB picture's
        img = img.convert("RGB")
    if icc and img.mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(img, icc)
        if converted is not None:
            return converted
    return img if img.mode == "RGB" else img.convert("RGB")


def _icc_to_srgb(img: Image.Image, icc: bytes) -> Image.Image | None:
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
    except Exception:  # no LittleCMS, a broken profile, or one for another colour space: use the plain way
        return None


def _gray_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grey to 8-bit "L" (or "LA"), by the rules in `to_rgb`'s docstring.

    A transparent value in `img.info` becomes an alpha channel marking exactly the pixels of that value: as an
    8-bit key it would also hide every neighbouring value that rounds to the same 8-bit level (257 of them in
    16-bit data), such as the dark detail next to a black key.
    """
    raw = np.asarray(img)
    values = raw.astype(np.float32)  # any byte order in, native float32 out
    if img.mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0  # 65535 / 257 = 255 exactly
    else:
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        if low >= 0 and high <= 1 and img.mode == "F":
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        elif low >= 0 and high <= 65535:
            scaled = values / 257.0
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:  # one value, outside the known ranges: nothing to stretch, so mid-grey (infinities stay extreme)
            scaled = values - low + 128.0
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    transparent = img.info.get("transparency")
    if isinstance(transparent, (int, float)) and not isinstance(transparent, bool):
        alpha = np.where(raw == transparent, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey


# ----------------------------------------------------------------------------------------------------------------
# 3. Preparing an image for training


def prepare_image(img: Image.Image, resolution: int, center_crop: bool = True,
                  size: tuple[int, int] | None = None, area: tuple[float, float, float, float] | None = None
                  ) -> torch.Tensor:
    """A training image: float32 tensor of shape (3, resolution, resolution), or (3, H, W) for `size` (W, H) (an
    aspect-ratio bucket, see `bucket_size`), values in [-1, 1].

    With `center_crop` the largest centred box of the target's proportions is kept and scaled to it (for a square,
    the short side becomes `resolution`); without it the whole picture is squeezed to the target, changing its
    proportions. Shrinking uses Lanczos (sharp, no aliasing); enlarging uses bicubic, whose overshoot rings less
    than Lanczos' on small pictures. `area` (left, top, right, bottom): where the picture lies in `img`, when not
    exactly on its whole pixels (a JPEG decoded at a reduced scale, see `load_training_images`).

    >>> prepare_image(Image.new("RGB", (640, 480), "white"), 512).shape
    torch.Size([3, 512, 512])
    >>> prepare_image(Image.new("RGB", (640, 480), "white"), 512, size=(576, 448)).shape
    torch.Size([3, 448, 576])
    """
    if img.mode != "RGB":
        raise ValueError(f"prepare_image takes an RGB image, got mode {img.mode!r}; read pictures with load_image")
    pixels = torch.from_numpy(np.array(_fit(img, size or (resolution, resolution), center_crop, area),
                                       dtype=np.uint8))  # (H, W, 3), 0..255
    return unit_pixels(pixels.permute(2, 0, 1)).contiguous()  # (3, H, W), -1..1


def prepare_alpha(alpha: Image.Image, resolution: int, center_crop: bool = True,
                  size: tuple[int, int] | None = None, area: tuple[float, float, float, float] | None = None
                  ) -> torch.Tensor:
    """An "L" transparency (`alpha_channel`) cropped and scaled as `prepare_image` does its picture: (1, H, W)
    float32 in [0, 1], 1 where the picture is opaque.

    >>> prepare_alpha(Image.new("L", (640, 480), 255), 64).shape
    torch.Size([1, 64, 64])
    """
    values = np.array(_fit(alpha, size or (resolution, resolution), center_crop, area), dtype=np.float32) / 255.0
    return torch.from_numpy(values).clamp(0.0, 1.0)[None]  # (bicubic can overshoot a little)


def _fit(img: Image.Image, size: tuple[int, int], center_crop: bool,
         area: tuple[float, float, float, float] | None = None) -> Image.Image:
    """`img` (or its `area`) cropped to its largest centred box of `size`'s proportions (or squeezed) and scaled to
    `size` (W, H)."""
    for side in size:
        _check_resolution(side)
    left, top, right, bottom = area or (0.0, 0.0, float(img.width), float(img.height))
    width, height = right - left, bottom - top
    target_w, target_h = size
    if center_crop:
        if width * target_h > height * target_w:  # wider than the target: the full height, the middle of the width
            box_w, box_h = height * target_w / target_h, height
        else:
            box_w, box_h = width, width * target_h / target_w
        # the crop as a box in source pixels: resize reads only around it, so cropping and scaling are one pass
        box = (left + (width - box_w) / 2, top + (height - box_h) / 2,
               left + (width + box_w) / 2, top + (height + box_h) / 2)
    else:
        box = (left, top, right, bottom)
    enlarging = box[2] - box[0] < target_w or box[3] - box[1] < target_h
    resample = Image.Resampling.BICUBIC if enlarging else Image.Resampling.LANCZOS
    return img.resize((target_w, target_h), resample=resample, box=box, reducing_gap=_REDUCING_GAP)


def covering(img: Image.Image, size: tuple[int, int], area: tuple[float, float, float, float] | None = None
             ) -> Image.Image:
    """`img` (or its `area`) scaled, in its own proportions, to the smallest size that covers `size` (W, H): for a
    square, its short side becomes the resolution. `--random-crop` cuts its windows from it, as kohya's
    `trim_and_resize_if_required` resizes the short side and then cuts a window at a random place.

    >>> covering(Image.new("RGB", (640, 480)), (64, 64)).size
    (85, 64)
    """
    left, top, right, bottom = area or (0.0, 0.0, float(img.width), float(img.height))
    scale = max(size[0] / (right - left), size[1] / (bottom - top))
    return scaled(img, (max(size[0], round((right - left) * scale)), max(size[1], round((bottom - top) * scale))),
                  area)


def scaled(img: Image.Image, size: tuple[int, int], area: tuple[float, float, float, float] | None = None
           ) -> Image.Image:
    """`img` (or its `area`) scaled to `size` (W, H) as a whole: Lanczos shrinking, bicubic enlarging (as `_fit`).

    >>> scaled(Image.new("RGB", (640, 480)), (320, 240)).size
    (320, 240)
    """
    left, top, right, bottom = area or (0.0, 0.0, float(img.width), float(img.height))
    enlarging = size[0] > right - left or size[1] > bottom - top
    resample = Image.Resampling.BICUBIC if enlarging else Image.Resampling.LANCZOS
    return img.resize(size, resample=resample, box=(left, top, right, bottom), reducing_gap=_REDUCING_GAP)


def _bytes(img: Image.Image) -> torch.Tensor:
    """An RGB picture as (3, H, W), an "L" alpha as (1, H, W), uint8 0..255: a quarter of float32's memory, turned
    into floats a batch at a time (`unit_pixels`, `unit_alpha`)."""
    values = torch.from_numpy(np.array(img, dtype=np.uint8))
    return values[None] if img.mode == "L" else values.permute(2, 0, 1)


def unit_pixels(values: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 3, H, W) as float32 in [-1, 1], the numbers `prepare_image` gives.

    >>> unit_pixels(torch.tensor([0, 255], dtype=torch.uint8))
    tensor([-1.,  1.])
    """
    return values.to(torch.float32) / 127.5 - 1.0


def unit_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """An alpha (1, H, W) as float32 in [0, 1]: a uint8 one (a `random_windows` window's) divided by 255."""
    return alpha.to(torch.float32) / 255.0 if alpha.dtype == torch.uint8 else alpha


def random_windows(pictures: Sequence[TrainingImage], count: int, seed: int) -> list[TrainingImage]:
    """`count` windows of each picture's training size, each at a random place in its `cover` (kohya's
    random_crop: uniform over the places along the side that overflows), as pictures of their own: window k of
    picture i is item k * len(pictures) + i. The places are drawn from `seed` and the picture's number, so a run
    and its resume cut the same windows. The windows' pixels (and alphas) are views of the cover, not copies, and
    uint8 as it is: `encode_latents` turns them into floats a batch at a time (`unit_pixels`).

    >>> windows = random_windows(load_training_images(paths, 512, random_crop=True), 8, seed=0)  # doctest: +SKIP
    """
    each = []
    for i, p in enumerate(pictures):
        if p.cover is None:
            raise ValueError("random_windows needs pictures loaded with random_crop=True")
        height, width = p.pixels.shape[-2:]
        rng = np.random.default_rng([seed % 2**63, i])  # (numpy takes no negative seed)
        tops = rng.integers(0, p.cover.shape[-2] - height + 1, count)
        lefts = rng.integers(0, p.cover.shape[-1] - width + 1, count)
        each.append([_window(p, t, l) for t, l in zip(tops.tolist(), lefts.tolist())])
    return [windows[k] for k in range(count) for windows in each]


def _window(p: TrainingImage, top: int, left: int) -> TrainingImage:
    """Picture `p`'s window at (top, left) of its cover; one transparent all over (nothing in it to learn, and no
    weight to average the loss by) is its centre instead, which `load_training_images` made sure is not."""
    height, width = p.pixels.shape[-2:]
    at = (slice(None), slice(top, top + height), slice(left, left + width))
    alpha = p.cover_alpha[at] if p.cover_alpha is not None else None
    if alpha is not None and not alpha.max() > 0:
        return dataclasses.replace(p, cover=None, cover_alpha=None)
    return dataclasses.replace(p, pixels=p.cover[at], alpha=alpha, cover=None, cover_alpha=None)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """The aspect-ratio buckets at `resolution`: sizes (W, H) whose sides are multiples of `step` (what the model's
    down-sampling needs: 64 pixels for SD), no larger in area than resolution x resolution, each as large as its
    width allows, sides between half and twice `resolution` (as kohya's buckets: at most 4:1), and the square of
    `resolution` itself, a multiple of `step` or not, so square pictures train as they do without buckets (at a
    resolution between the steps, 624 for SD, no width's largest height is its own: they were cut to 9:10). Every
    size comes with its mirror (H, W), as kohya's `make_bucket_resolutions` adds both: a portrait gets the buckets
    a landscape of the same proportions gets, turned (without them a 320x704 portrait at 512 was cut to 320x768's
    proportions, losing 8% of its height, while a 704x320 landscape trained whole).

    >>> bucket_sizes(512, 64)[:3]
    [(256, 832), (256, 896), (256, 960)]
    >>> (624, 624) in bucket_sizes(624, 64)
    True
    """
    half = -(-resolution // (2 * step)) * step  # (half the resolution, in steps)
    return sorted({(resolution, resolution)} | side_buckets(resolution, step, half, 2 * resolution))


def side_buckets(resolution: int, step: int, smallest: int, largest: int) -> set[tuple[int, int]]:
    """Sizes (W, H) and their mirrors: widths from `smallest` up in `step`s to `largest`, each with the largest height
    in `step`s that keeps the area within resolution x resolution (at most `largest`), kept where that height is
    at least `smallest`: kohya's `make_bucket_resolutions` (min_bucket_reso `smallest`, max_bucket_reso
    `largest`) without its square, and `bucket_sizes` from half to twice the resolution.

    >>> sorted(side_buckets(512, 64, 256, 1024))[:2]
    [(256, 832), (256, 896)]
    """
    sizes, width = set(), smallest
    while width <= largest:
        height = min(largest, resolution * resolution // width // step * step)
        if height >= smallest:
            sizes.update({(width, height), (height, width)})
        width += step
    return sizes


def bucket_size(width: int, height: int, resolution: int, step: int) -> tuple[int, int]:
    """The bucket (W, H) a `width` x `height` picture trains at: the one whose proportions are nearest its own (on a
    log scale, so 2:1 and 1:2 are as far from square), the larger on a tie; square pictures get the square.

    >>> bucket_size(3000, 2000, 512, 64), bucket_size(2000, 3000, 512, 64), bucket_size(800, 800, 512, 64)
    ((640, 384), (384, 640), (512, 512))
    """
    aspect = math.log(width / height)
    return min(bucket_sizes(resolution, step), key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))


def no_upscale_size(width: int, height: int, resolution: int, step: int
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled (W, H), bucket (W, H)) of a `width` x `height` picture with --bucket-no-upscale (kohya's
    bucket_no_upscale, its `BucketManager.select_bucket`): a picture within resolution x resolution keeps its own
    size; a larger one is scaled down to about that area in its own proportions, the side whose rounding to
    `step`s changes them less made a whole number of steps. The bucket is the scaled size cut down to `step`s (the
    picture is cropped to it, never enlarged), a bucket of its own. A side under one step leaves a side of 0.

    >>> no_upscale_size(500, 300, 512, 64), no_upscale_size(3000, 2000, 512, 64)
    (((500, 300), (448, 256)), ((576, 384), (576, 384)))
    """
    def to_steps(x: float) -> int:  # (kohya's round_to_steps: to the nearest pixel, then down to a step)
        x = int(x + 0.5)
        return x - x % step

    def error(w: int, h: int) -> float:  # how far w x h's proportions are from the picture's (a side of 0: far)
        return abs(w / h - aspect) if h else math.inf

    aspect, area = width / height, resolution * resolution
    if width * height <= area:
        size = (width, height)
    else:  # (scaled to the area: sqrt(area x aspect) wide, area / that high; a tie goes to the height, as kohya's)
        by_width = to_steps(math.sqrt(area * aspect))
        by_height = to_steps(area / math.sqrt(area * aspect))
        size = ((by_width, int(by_width / aspect + 0.5))
                if error(by_width, to_steps(by_width / aspect)) < error(to_steps(by_height * aspect), by_height)
                else (int(by_height * aspect + 0.5), by_height))
    return size, (size[0] - size[0] % step, size[1] - size[1] % step)


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError(f"resolution must be a positive whole number of pixels (such as 512), got {resolution!r}")


@dataclass(eq=False)
class TrainingImage:
    """One training picture, decoded and prepared."""

    path: Path
    pixels: torch.Tensor  # (3, resolution, resolution), or (3, H, W) at its bucket; float32 in [-1, 1] (uint8
    # 0..255, and so its alpha, in a `random_windows` window)
    caption: str | None  # the text of the caption file beside it, `[name]` written as `{}`; None if it has none
    original_size: tuple[int, int] = (0, 0)  # (height, width) as loaded, upright: SDXL conditions on it
    alpha: torch.Tensor | None = None  # (1, resolution, resolution) in [0, 1] with `use_alpha` and a transparency
    caption_extension: str | None = None  # a kohya subset's: its caption file is NAME + this (`caption_file`)
    # with --random-crop: the picture scaled to cover its training size, (3, H', W') uint8 0..255 (and its alpha,
    # (1, H', W')), that `random_windows` cuts windows from; dropped once they are encoded. As floats, all of them
    # at once took 2.4 GB more for 500 pictures at 512 px (3:2)
    cover: torch.Tensor | None = None
    cover_alpha: torch.Tensor | None = None
    scaled_size: tuple[int, int] | None = None  # (height, width) it was scaled to before its crop, with
    # --bucket-no-upscale (`no_upscale_size`); else the smallest size that covers its training size

    def crop_top_left(self, center_crop: bool = True) -> tuple[int, int]:
        """(top, left) of the crop in the picture as scaled before it (SDXL's crop ids): resized to cover its
        training size (for a square, the picture whose short side is the resolution), or its `scaled_size`."""
        h, w = self.original_size
        target_h, target_w = self.pixels.shape[-2:]
        if not center_crop or not h or not w:
            return (0, 0)
        scale = max(target_h / h, target_w / w)
        scaled_h, scaled_w = self.scaled_size or (round(h * scale), round(w * scale))
        return (max(0, scaled_h - target_h) // 2, max(0, scaled_w - target_w) // 2)


def load_training_images(
    paths: Sequence[str | os.PathLike], resolution: int | tuple[int, int], center_crop: bool = True,
    use_alpha: bool = False,
    bucket_step: int | None = None, caption_extensions: Sequence[str | None] | None = None,
    random_crop: bool = False, no_upscale: bool = False, wildcards: bool = False,
) -> list[TrainingImage]:
    """Load, prepare and caption each picture in `paths` (typically `find_images(folder)`), as a square of
    `resolution` (or at `resolution` (W, H): --resolution WIDTHxHEIGHT), or with `bucket_step` at its aspect-ratio bucket (`bucket_size`; with `no_upscale` a bucket of its
    own, `no_upscale_size`). `caption_extensions`: each picture's kohya subset's (`read_caption`), None for
    textinv's own. With `random_crop` each picture also keeps its `cover` (`covering`, or with `no_upscale` the
    picture as scaled), for `random_windows`. `wildcards` (--caption-wildcards): a caption file's lines are its
    captions (`CaptionSampler`), so several lines are meant.

    Pictures smaller than their training size are upscaled (never with `no_upscale`: a picture with a side under
    one `bucket_step` raises `DataError`), with one `SmallImageWarning` naming each and its size. With
    `use_alpha` each picture's transparency is kept too (`TrainingImage.alpha`, None for an opaque picture); a
    picture that is transparent all over raises `DataError`.

    >>> images = load_training_images(find_images("photos/my_cat"), 512)  # doctest: +SKIP
    >>> images[0].pixels.shape, images[0].caption  # doctest: +SKIP
    (torch.Size([3, 512, 512]), None)
    """
    fixed = _fixed_size_checked(paths, resolution, bucket_step, no_upscale)
    result: list[TrainingImage] = []
    small: list[str] = []
    several: list[str] = []  # caption files of several lines
    animated: list[str] = []  # pictures of several frames, of which the first is trained
    empty: list[str] = []  # caption files with no text

    def training_size(full: tuple[int, int]) -> tuple[int, int]:  # (W, H) of a picture of upright size `full`
        if no_upscale:  # (what it is read at: the picture as scaled, which its bucket is cut from)
            return no_upscale_size(*full, resolution, bucket_step)[0]
        return bucket_size(*full, resolution, bucket_step) if bucket_step else fixed

    for path, extension in zip(paths, caption_extensions or [None] * len(paths), strict=True):
        path = Path(path)
        # a big JPEG is decoded at a reduced scale, as large as its crop needs (`_read`): a 24-megapixel photo
        # trained at 512 is never held whole
        img, alpha, (width, height), area, frames = _read(path, use_alpha, training_size)
        if frames > 1:
            animated.append(f"{path} ({frames} frames)")
        size = scaled_to = training_size((width, height))
        crop = area
        if no_upscale:
            size, crop = _own_bucket(path, (width, height), area, resolution, bucket_step, center_crop)
        elif width < size[0] or height < size[1]:  # (for a square: the short side below the resolution)
            small.append(f"{path} ({width}x{height})")
        fitted = center_crop and not no_upscale  # (no_upscale's crop is its own: `crop`, then squeezed to size)
        pixels = prepare_image(img, resolution, fitted, size, crop)
        weight = prepare_alpha(alpha, resolution, fitted, size, crop) if alpha is not None else None
        _check_not_all_clear(path, weight)
        found, text = _caption_text(path, extension)
        cover, cover_alpha = (_covers(img, alpha, size, area, scaled_to if no_upscale else None) if random_crop
                              else (None, None))
        result.append(TrainingImage(path=path, pixels=pixels, caption=_caption(text),
                                    original_size=(height, width), alpha=weight, caption_extension=extension,
                                    cover=cover, cover_alpha=cover_alpha,
                                    scaled_size=scaled_to[::-1] if no_upscale else None))
        if not wildcards and (note := _several_lines(found, text)):
            several.append(note)
        if found is not None and _caption(text) is None:
            empty.append(str(found))
    if several:
        _warn_several_lines(several)
    if empty:
        _warn_empty_captions(empty)
    if small:
        _warn_small(small, fixed, bucket_step)
    if animated:
        _warn_animated(animated)
    return result


def _fixed_size_checked(paths: Sequence[str | os.PathLike], resolution: int | tuple[int, int],
                        bucket_step: int | None, no_upscale: bool) -> tuple[int, int]:
    """The (W, H) every picture is trained at without buckets (`load_training_images`), its options checked first."""
    fixed = tuple(resolution) if isinstance(resolution, (tuple, list)) else (resolution, resolution)  # (W, H)
    for side in fixed:
        _check_resolution(side)
    if fixed[0] != fixed[1] and bucket_step:
        raise ValueError("buckets are made about a square's area: give one resolution with bucket_step")
    if not paths:
        raise DataError("no pictures to train on; give 3-10 pictures of your concept")
    if no_upscale and not bucket_step:
        raise ValueError("no_upscale makes each picture a bucket of its own: give its bucket_step too")
    return fixed


def _check_not_all_clear(path: Path, weight: torch.Tensor | None) -> None:
    """Raise `DataError` where a picture's alpha (`weight`; None: opaque) is transparent all over."""
    if weight is not None and not weight.max() > 0:
        raise DataError(f"{path} is transparent all over, so with --alpha-mask none of it would be learned; "
                        "remove it, or fix its alpha channel")


def _several_lines(found: Path | None, text: str) -> str | None:
    """Caption file `found` (of `text`) and its count of lines, for `_warn_several_lines`; None for one or none."""
    lines = sum(1 for line in text.splitlines() if line.strip())
    return f"{found} ({lines} lines)" if lines > 1 else None


def _covers(img: Image.Image, alpha: Image.Image | None, size: tuple[int, int],
            area: tuple[float, float, float, float], scaled_to: tuple[int, int] | None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A picture's `cover` and `cover_alpha` (None without `alpha`), which `random_windows` cuts its crops from: the
    picture resized to cover its training `size`, or with --bucket-no-upscale as scaled (`scaled_to`, W x H), not
    to cover its bucket."""
    def cover(picture: Image.Image) -> torch.Tensor:
        return _bytes(scaled(picture, scaled_to, area) if scaled_to else covering(picture, size, area))

    return cover(img), cover(alpha) if alpha is not None else None


def _warn_several_lines(several: list[str]) -> None:
    """Warn (at `load_training_images`' caller) of the caption files `several` that hold several lines: kohya's
    scripts train on a file's first line, or pick a line per step with enable_wildcard."""
    warn(CaptionLinesWarning(
        f"{len(several)} caption file(s) hold several lines, which textinv joins into one caption (as the web UI "
        f"reads a caption file): {first_few(several)}; kohya's scripts train on the first line only: if the lines "
        f"are alternatives, keep one a file, or give --caption-wildcards to draw one of them each time, as kohya's "
        f"enable_wildcard does"), stacklevel=3)


def _warn_empty_captions(empty: list[str]) -> None:
    """Warn (at `load_training_images`' caller) of the caption files `empty`: a file left empty by a captioning
    tool, or by hand, silently meant "no caption" here and an empty caption in kohya's scripts."""
    warn(EmptyCaptionWarning(
        f"{len(empty)} caption file(s) are empty: {first_few(empty)}; textinv reads an empty caption file as none, "
        f"so those pictures train on the templates (--templates, or the --property's own; with [filewords] templates "
        f"on no words, not their file names), where kohya's scripts train on the empty text; write a caption in "
        f"them, or delete them to say the templates are meant"), stacklevel=3)


def _warn_animated(animated: list[str]) -> None:
    """Warn (at `load_training_images`' caller) of the pictures `animated`, of which only the first frame is read:
    a GIF of a turning object looks like all its views to the eye, but trains one."""
    warn(AnimatedImageWarning(
        f"{len(animated)} picture(s) are animated or have several pages, and only the first frame of each is "
        f"trained: {first_few(animated)}; to train on other frames, save them as pictures of their own"),
        stacklevel=3)


def _warn_small(small: list[str], size: tuple[int, int], bucket_step: int | None) -> None:
    """Warn (at `load_training_images`' caller) of the pictures `small` that are upscaled to their training size."""
    warn(SmallImageWarning(
        f"{len(small)} picture(s) are smaller than the training resolution {size[0]}x{size[1]} "
        f"{'(their buckets) ' if bucket_step else ''}and will be upscaled, which blurs them: "
        f"{', '.join(small)}; use larger pictures or a lower resolution"), stacklevel=3)


def _own_bucket(path: Path, full: tuple[int, int], area: tuple[float, float, float, float], resolution: int,
                step: int, center_crop: bool) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
    """A --bucket-no-upscale picture's bucket (W, H) and the box of `area` (in the decoded picture's pixels) that
    becomes it: the picture scaled to its `no_upscale_size`, then its centre cut to the bucket, as kohya crops
    (whole pixels off each side, the odd one on the right or bottom); without `center_crop`, all of it, squeezed
    by less than a step."""
    (scaled_w, scaled_h), bucket = no_upscale_size(*full, resolution, step)
    if not all(bucket):
        raise DataError(f"{path} is {full[0]}x{full[1]} pixels, a side under the {step}-pixel step of the buckets: "
                        f"with --bucket-no-upscale a picture is never enlarged, so it has no bucket; remove it, "
                        f"enlarge it, or leave out --bucket-no-upscale")
    if not center_crop:
        return bucket, area
    left, top, right, bottom = area
    x, y = (right - left) / scaled_w, (bottom - top) / scaled_h  # (decoded pixels per scaled pixel)
    off_x, off_y = (scaled_w - bucket[0]) // 2, (scaled_h - bucket[1]) // 2
    return bucket, (left + off_x * x, top + off_y * y, left + (off_x + bucket[0]) * x, top + (off_y + bucket[1]) * y)


def latent_weights(pictures: list, size: tuple[int, int], folder) -> torch.Tensor:
    """Each picture's transparency at the latents' size, (2I, 1, h, w): the pictures', then their mirror images',
    as the cached latents are laid out. A latent pixel's weight is the mean alpha of the picture pixels it covers
    (area averaging); an opaque picture weighs 1 everywhere."""
    weights = torch.cat(latent_weights_each(pictures, [size] * len(pictures), folder))  # (I, 1, h, w)
    return torch.cat([weights, weights.flip(-1)])


def latent_weights_each(pictures: list, sizes: list[tuple[int, int]], folder) -> list[torch.Tensor]:
    """`latent_weights` for pictures of several sizes (aspect-ratio buckets): picture i's (1, 1, h_i, w_i) at
    its latents' size `sizes[i]` (the mirror images are the caller's: `w.flip(-1)`)."""
    if all(p.alpha is None for p in pictures):
        warn(AlphaMaskWarning(f"--alpha-mask: no picture in {folder} has an alpha channel or a transparent "
                              f"colour, so every pixel weighs 1; save the pictures as PNGs with the "
                              f"background transparent"), stacklevel=3)
    return [torch.nn.functional.interpolate(
        (unit_alpha(p.alpha) if p.alpha is not None else torch.ones(1, *p.pixels.shape[-2:]))[None],
        size=tuple(size), mode="area") for p, size in zip(pictures, sizes)]


def random_hflip(pixels: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror `pixels` (..., H, W) left to right with probability `p`, drawing from `generator`.

    >>> random_hflip(torch.tensor([[[1.0, 2.0]]]), p=1.0)
    tensor([[[2., 1.]]])
    """
    if torch.rand((), generator=generator).item() < p:
        return pixels.flip(-1)
    return pixels


# ----------------------------------------------------------------------------------------------------------------
# 4. Captions


def check_property(learnable_property: str) -> str:
    """Return `learnable_property` if it is "object" or "style"; else raise ConfigError listing the choices.

    (The reference script treated any other value, a typo included, as "object" without a word.)

    >>> check_property("style")
    'style'
    """
    if learnable_property not in PROPERTIES:
        raise ConfigError(
            f"the learnable property must be one of {', '.join(repr(p) for p in PROPERTIES)}, "
            f"got {learnable_property!r}"
        )
    return learnable_property


def default_templates(learnable_property: str) -> tuple[str, ...]:
    """The paper's prompt templates for an "object" or a "style".

    >>> default_templates("style")[0]
    'a painting in the style of {}'
    """
    return STYLE_TEMPLATES if check_property(learnable_property) == "style" else OBJECT_TEMPLATES


def flip_default(learnable_property: str) -> bool:
    """Whether training mirrors pictures at random by default: yes, for objects and styles alike.

    This is what the paper's code and the diffusers example do (each sample is flipped with p = 0.5). With 3-10
    pictures mirroring is the one augmentation that costs nothing: a style (brushwork, palette) does not change in
    a mirror, and for an object it stops the token from learning which way the object faced. Turn it off for
    concepts that are not mirror-symmetric in meaning: lettering, logos, a face's parting.

    >>> flip_default("object"), flip_default("style")
    (True, True)
    """
    check_property(learnable_property)
    return True


def _has_marker(text: str) -> bool:
    return MARKER in text or A1111_MARKER in text


def warn_unread_templates(path, templates: Sequence[str], sets: Sequence[PictureSet]) -> None:
    """Warn where the template file `path` will not be read for some pictures: without `[filewords]` its templates
    are only for pictures without a caption file (the others train on their captions), where the web UI's
    subject.txt and style.txt leave the caption files unread instead."""
    if any(FILEWORDS in t for t in templates):
        return
    captioned = [p.name for listed in sets for p, ext in zip(listed.paths, listed.caption_extensions)
                 if caption_file(p, ext) is not None]
    if captioned:
        warn(UnreadTemplatesWarning(
            f"{len(captioned)} picture(s) with a caption file train on it instead of the templates of {path} "
            f"({first_few(captioned)}): write [filewords] in the templates where a caption goes to train on both "
            f"(the web UI's templates without it leave the caption files unread)"), stacklevel=2)


WEBUI_TEMPLATES = ("style.txt", "style_filewords.txt", "subject.txt", "subject_filewords.txt")  # (the web UI's own)


def read_template_file(path: str | os.PathLike) -> list[str]:
    """Read prompt templates, one per non-empty line, with `{}` (or A1111's `[name]`) where the token goes.

    Lines keep A1111's `[filewords]`, which `make_caption` fills with the image's caption. `[name]` comes back
    as `{}`. A line without a marker raises DataError naming the file and line: the token would never appear in
    that prompt, so the sample would teach it nothing.

    >>> read_template_file("templates/style_filewords.txt")  # doctest: +SKIP
    ['a painting of [filewords], art by {}', ...]
    """
    path = Path(path)
    if path.name in WEBUI_TEMPLATES and not path.exists():  # (picked by name from a list in the web UI's Train tab)
        raise DataError(f"the template file {path} does not exist; {path.name} is one of the web UI's, in its "
                        f"folder stable-diffusion-webui/textual_inversion_templates/: give that file's path")
    text = _read_text(path, "template file")
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not _has_marker(line):
            raise DataError(
                f"{path}, line {number}: the template {line!r} has no {MARKER} (or {A1111_MARKER}) marker; "
                "put one where the new token goes, as in 'a photo of a {}'"
            )
        templates.append(line.replace(A1111_MARKER, MARKER))
    if not templates:
        raise DataError(f"the template file {path} has no templates; write one per line, as in 'a photo of a {{}}'")
    return templates


def read_caption(image_path: str | os.PathLike, extension: str | None = None) -> str | None:
    """The caption of a picture: the text of the `.txt` file of the same name beside it (`.TXT`, or kohya's
    `.caption`, when there is no `.txt`), or None. `extension`: a kohya subset's caption_extension instead, the
    file's name as kohya makes it, the picture's without its suffix + `extension` (only that file is read).

    Lines are joined with spaces; `[name]` comes back as `{}`. An empty caption file counts as none.

    >>> read_caption("photos/my_cat/cat1.jpg")  # reads photos/my_cat/cat1.txt  # doctest: +SKIP
    'a {} asleep on a red sofa'
    """
    found = caption_file(image_path, extension)
    return _caption(_read_text(found, "caption file")) if found is not None else None


def _caption(text: str) -> str | None:
    """A caption file's text as its caption (`read_caption`): lines joined with spaces, `[name]` as `{}`; None when
    empty."""
    return " ".join(text.split()).replace(A1111_MARKER, MARKER) or None


def read_caption_lines(image_path: str | os.PathLike, extension: str | None = None) -> list[str]:
    """The lines of a picture's caption file (`read_caption`), each stripped, blank ones left out, as kohya reads
    them with its enable_wildcard (`expand_wildcards` is not applied yet); [] without a caption file.

    >>> read_caption_lines("photos/my_cat/cat1.jpg")  # doctest: +SKIP
    ['a {} asleep on a {red|blue} sofa', '{} on the floor']
    """
    text = _caption_text(image_path, extension)[1]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _caption_text(image_path: str | os.PathLike, extension: str | None) -> tuple[Path | None, str]:
    """(a picture's caption file (`caption_file`), its text): (None, "") without one."""
    found = caption_file(image_path, extension)
    return found, (_read_text(found, "caption file") if found is not None else "")


# kohya's wildcard: "{a|b|c}", one choice drawn; not nested, and "{}" (textinv's marker) is none
_WILDCARD_RE = re.compile(r"\{([^}]+)\}")


def expand_wildcards(text: str, rng: np.random.Generator) -> str:
    """`text` with each `{a|b|c}` replaced by one of its choices, drawn uniformly from `rng`, as kohya's
    enable_wildcard reads a caption (sd-scripts' `process_caption`): `{{` and `}}` are a literal brace, choices do
    not nest, and an empty choice (`{red|}`) is no word. `{}`, textinv's marker, is left as it is; inside a choice
    write the token itself or `[name]`.

    >>> expand_wildcards("a {red|blue} car, {{logo}}, {}", np.random.default_rng(0))
    'a blue car, {logo}, {}'
    """
    left, right = "\ue000", "\ue001"  # (private-use characters hold the literal braces while choices are drawn)
    while left in text or right in text:
        left, right = left + "\ue000", right + "\ue001"
    text = text.replace("{{", left).replace("}}", right)
    text = _WILDCARD_RE.sub(lambda m: (choices := m.group(1).split("|"))[rng.integers(len(choices))], text)
    return text.replace(left, "{").replace(right, "}")


def caption_file(image_path: str | os.PathLike, extension: str | None = None) -> Path | None:
    """The caption file beside a picture (`read_caption`), or None. A name with accents may be written in either
    Unicode form (macOS keeps `é` as e + accent, an editor elsewhere writes one letter; Linux tells them apart):
    the caption file named in the other form is found too."""
    image_path = Path(image_path)
    names = ([image_path.with_suffix("").name + extension] if extension
             else [image_path.with_suffix(suffix).name for suffix in _CAPTION_NAMES])
    files = (image_path.with_name(form) for name in names
             for form in dict.fromkeys((name, _nfc(name), unicodedata.normalize("NFD", name))))
    return next((p for p in files if p.is_file()), None)


def _nfc(name: str) -> str:
    """`name` in Unicode's composed form (NFC), where two spellings of one accented name meet."""
    return unicodedata.normalize("NFC", name)


def _read_text(path: Path, what: str) -> str:
    try:
        return read_text(path)
    except FileNotFoundError as e:
        raise DataError(f"the {what} {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise DataError(f"the {what} {path} is not UTF-8 text ({e}); save it as UTF-8") from e
    except OSError as e:
        raise DataError(f"cannot read the {what} {path}: {e}") from e


# "[filewords]" with the comma or semicolon on either side of it, so that removing it leaves no stray separator
_FILEWORDS_RE = re.compile(r"\s*([,;]?)\s*\[filewords\]\s*([,;]?)\s*")


def make_caption(template_or_caption: str, placeholder: str, filewords: str | None = None) -> str:
    """Fill the marker(s) `{}` / `[name]` with `placeholder`, and `[filewords]` with `filewords`.

    `placeholder` is the text of the new token as the tokenizer will see it, already expanded for several vectors
    (such as "<cat> <cat>_1"). With no `filewords`, `[filewords]` is removed together with one separator next to
    it. Whitespace is tidied. Text without a marker raises ConfigError.

    >>> make_caption("a photo of {}, [filewords]", "<cat> <cat>_1")
    'a photo of <cat> <cat>_1'
    >>> make_caption("a painting of [filewords], art by [name]", "<s>", filewords="a harbour at dusk")
    'a painting of a harbour at dusk, art by <s>'
    """
    if not isinstance(placeholder, str) or not placeholder.strip():
        raise ConfigError(f"the placeholder text must be a non-empty string, got {placeholder!r}")
    if not _has_marker(template_or_caption):
        raise ConfigError(f"{template_or_caption!r} has no {MARKER} (or {A1111_MARKER}) marker for the new token")
    if filewords:
        text = template_or_caption.replace(FILEWORDS, filewords)
    else:
        # keep one separator only when the removed words stood between two parts: "a, [filewords], b" -> "a, b"
        text = _FILEWORDS_RE.sub(lambda m: f"{m.group(1)} " if m.group(1) and m.group(2) else " ",
                                 template_or_caption)
    # the marker is filled after [filewords], as A1111 does, so a caption's own "{}" gets the token too
    text = text.replace(A1111_MARKER, placeholder).replace(MARKER, placeholder)
    return " ".join(text.split()).strip(" ,;")


def filename_words(path: str | os.PathLike) -> str | None:
    """A picture's words for `[filewords]` when it has no caption file, as A1111 takes them: its file name without
    the extension and without the numbers and dashes it starts with; None when nothing is left.

    >>> filename_words("dogs/00012-my dog on a sofa.png"), filename_words("dogs/0001.png")
    ('my dog on a sofa', None)
    """
    return " ".join(re.sub(r"^[-\d]+\s*", "", Path(path).stem).split()) or None


class TagOptionsWarning(TextinvWarning):
    """Tag shuffling or dropout, or a caption prefix or suffix, was asked for, but no picture has a caption it could
    change."""


@dataclass(frozen=True)
class TagVariation:
    """The web UI's "shuffle tags" and "drop out tags", kohya's --shuffle_caption, --caption_tag_dropout_rate and
    --keep_tokens: a caption's comma-separated tags are reordered and thinned each time it is used, so the token
    does not learn one order, or learn what a tag that is sometimes missing says.

    The trainer tokenizes every prompt once (`candidates`), so each picture gets `variants` varied captions drawn
    up front from `seed` and each sample picks one of them; with 256 a picture's variants are each used about ten
    times in a 3000-step run of 5 pictures at batch 4. The tag holding the token's marker is never dropped.

    kohya's separators, as its `process_caption` reads them: `separator` (its caption_separator) splits the tags
    instead of ","; a caption holding `keep_separator` (its keep_tokens_separator, e.g. "|||") keeps the tags before
    it in place, and those after a second one at the end, instead of the first `keep`; tags joined by `joiner` (its
    secondary_separator) are one tag, the joiner written as `separator` once the tags are varied. The varied tags
    are joined with ", ", as kohya joins them.

    `wildcards` (kohya's enable_wildcard): a caption file's lines are its captions, and each variant draws one of
    them and its `{a|b|c}` choices (`expand_wildcards`) before its tags are varied, as kohya's `process_caption`
    does, so a picture gets `variants` drawn captions even with no tag shuffled."""

    shuffle: bool = False
    dropout: float = 0.0  # each tag's chance to be left out of a prompt
    keep: int = 0  # the first `keep` tags stay in place and are never dropped
    variants: int = 256
    seed: int = 0
    separator: str = ","
    keep_separator: str = ""
    joiner: str = ""
    wildcards: bool = False  # kohya's enable_wildcard: a line of the caption file and its {a|b} choices drawn
    warmup_min: int = 1  # kohya's token_warmup_min: the varied tags used at the first step
    warmup_steps: int = 0  # kohya's token_warmup_step, in steps: all of them used from this step on (0: always)

    def tags_used(self, step: int | None, count: int) -> int:
        """How many of a caption's `count` varied tags are used at `step` (0 = the first), as kohya's token
        warm-up counts them: from `warmup_min` at step 0 up to all at `warmup_steps`; all when `step` is None.

        >>> [TagVariation(warmup_min=1, warmup_steps=10).tags_used(s, 5) for s in (0, 3, 5, 9, 10)]
        [1, 2, 3, 4, 5]
        """
        if step is None or not self.warmup_steps or step >= self.warmup_steps:
            return count
        return min(count, step * (count - self.warmup_min) // self.warmup_steps + self.warmup_min)

    @property
    def active(self) -> bool:
        return self.shuffle or self.dropout > 0

    def vary(self, text: str, rng: np.random.Generator, used: int | None = None) -> str:
        """`text` with its tags shuffled and/or dropped; with `used` (`tags_used`), only the first `used` of the
        varied tags, in the caption's order, as kohya's warm-up cuts them before it shuffles (but the tag holding
        the token's marker, which stays as it stays under dropout).

        >>> TagVariation(shuffle=True, keep=1).vary("{}, red, on grass, sunny", np.random.default_rng(0))
        '{}, sunny, red, on grass'
        """
        fixed, rest, last = self._parts(text)
        if used is not None:
            rest = rest[:used] + [t for t in rest[used:] if _has_marker(t)]
        if self.dropout > 0:
            draws = rng.random(len(rest))
            rest = [t for t, u in zip(rest, draws) if u >= self.dropout or _has_marker(t)]
        if self.shuffle:
            rest = [rest[i] for i in rng.permutation(len(rest))]
        return self._joined(", ".join(fixed + rest + last))

    def plain(self, text: str) -> str:
        """`text` as it is trained without shuffling or dropout: a `keep_separator`'s parts joined with ", ", the
        `joiner` written as `separator` (kohya leaves its keep_tokens_separator in the text then; it is no word
        of the caption, so here it is taken out as when the tags vary).

        >>> TagVariation(keep_separator="|||", joiner="::").plain("{}, ink ||| cat::black, hat ||| art")
        '{}, ink, cat,black, hat, art'
        """
        if self.keep_separator and self.keep_separator in text:
            text = ", ".join(sum(self._parts(text), []))
        return self._joined(text)

    def _parts(self, text: str) -> tuple[list[str], list[str], list[str]]:
        """The tags kept in front, those varied, and those kept at the end."""
        def tags(part: str) -> list[str]:
            return [t.strip() for t in part.split(self.separator) if t.strip()]
        if self.keep_separator and self.keep_separator in text:
            front, rest = text.split(self.keep_separator, 1)
            rest, _, last = rest.partition(self.keep_separator)
            return tags(front), tags(rest), tags(last)
        every = tags(text)
        return every[:self.keep], every[self.keep:], []

    def varied_count(self, text: str) -> int:
        """How many of `text`'s tags vary (those `tags_used` counts)."""
        return len(self._parts(text)[1])

    def _joined(self, text: str) -> str:
        return text.replace(self.joiner, self.separator) if self.joiner else text


def _joined_words(*parts: str) -> str:
    """`parts` joined with a space, those empty left out (kohya's caption prefix and suffix around a caption)."""
    return " ".join(part for part in parts if part)


def _token_in_front(caption: str, tags: TagVariation) -> str:
    """`caption` (one that does not name the token) with the token's marker put in front: with tag variation a tag
    of its own, not glued to the first one."""
    return f"{MARKER}{tags.separator if tags.active else ''} {caption}"


def _keeping_the_token(tags: TagVariation) -> TagVariation:
    """`tags` for a caption whose token was put in front: --keep-tags counts the file's own tags."""
    return dataclasses.replace(tags, keep=tags.keep + 1) if tags.keep else tags


class CaptionSampler:
    """Gives each training sample its prompt.

    An image with its own caption is trained with that caption; one without gets a template drawn uniformly at
    random from `generator` (so a seed reproduces the sequence). When the templates use `[filewords]`
    (A1111 style), every sample draws a template and the image's caption fills `[filewords]` instead (without a
    caption file, the words of its file name, as A1111 does: `filename_words`).

    A caption may also name the token itself ("a photo of <my-dog> on a sofa"), as kohya's and A1111's captions
    do: it counts as the marker there (any case, as CLIP lower-cases), so the token gets all its vectors and is
    not put in a second time (under `[filewords]` a template's own `[name]` still adds it, as in A1111).
    `placeholder`'s first word is the token, as `expand_prompt` writes it.

    A caption with no marker, outside `[filewords]` use, gets the token in front ("{} <caption>"), with one
    `CaptionWithoutMarkerWarning` naming the files: refusing it would be harsh, and anything longer, such as
    "a photo of {}, ", would be wrong for styles.

    `tags` (`TagVariation`) shuffles and drops the tags of each caption (or of the words that fill `[filewords]`);
    pictures without a caption keep drawing the templates as they are.

    `prefix` and `suffix` (kohya's caption_prefix, caption_suffix) go before and after each caption file's text, a
    space between, before the token is looked for and the tags are varied, as kohya's `process_caption` adds them
    (a prefix naming the token marks it). The templates drawn for a picture without a caption stay as they are,
    as kohya's textual inversion replaces the whole caption, prefix and suffix with it, by its templates.

    >>> sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<cat>", torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> sampler(0)  # doctest: +SKIP
    'a photo of the small <cat>'
    """

    def __init__(
        self,
        images: Sequence[TrainingImage],
        templates: Sequence[str],
        placeholder: str,
        generator: torch.Generator | None = None,
        tags: TagVariation = TagVariation(),
        prefix: str = "",
        suffix: str = "",
    ):
        if isinstance(templates, str) or not templates:
            raise ConfigError("give the prompt templates as a non-empty list of strings, such as OBJECT_TEMPLATES")
        for template in templates:
            if not _has_marker(template):
                raise ConfigError(f"the template {template!r} has no {MARKER} (or {A1111_MARKER}) marker")
        if not isinstance(placeholder, str) or not placeholder.strip():
            raise ConfigError(f"the placeholder text must be a non-empty string, got {placeholder!r}")

        self.templates = [t.replace(A1111_MARKER, MARKER) for t in templates]
        self.placeholder = placeholder
        self.generator = generator
        self.uses_filewords = any(FILEWORDS in t for t in self.templates)
        self.tags = tags

        # the token as written in a caption, alone or already expanded ("<t> <t>_1"), but not one entry ("<t>_1"),
        # and as a whole word: a bare token such as "sks" is not the end of "asks"
        token = re.escape(placeholder.split()[0])
        self._written = re.compile(rf"(?<!\w){token}(?:\s+{token}_\d+)*(?!\w)", re.IGNORECASE)

        self.captions: list[str | None] = []  # per image; None means "draw a template"
        self._token_put_in_front: list[bool] = []  # per image: its caption's first tag is the token we added
        # per image with --caption-wildcards and a caption file: its lines, drawn from (`_drawn`); else None
        self.lines: list[list[str] | None] = []
        unmarked = [name for image in images if (name := self._read(image, prefix, suffix))]
        if unmarked:
            warn(
                CaptionWithoutMarkerWarning(
                    f"{len(unmarked)} caption file(s) have no {MARKER} (or {A1111_MARKER}) marker and do not name the "
                    f"token, so it is put in front of their text: {', '.join(unmarked)}; write {MARKER} where the "
                    "token belongs"
                ),
                stacklevel=2,
            )
        if tags.active and all(c is None for c in self.captions):
            warn(TagOptionsWarning("tag shuffling or dropout was asked for, but no picture has a caption "
                                   "file (or, with [filewords] templates, words in its file name) whose "
                                   "tags it could change; the templates are used as they are"),
                 stacklevel=2)
        if (prefix or suffix) and all(image.caption is None for image in images):
            warn(TagOptionsWarning("a caption prefix or suffix was given, but no picture has a caption "
                                   "file to put it on; the templates are used as they are (kohya's "
                                   "templates replace the whole caption, prefix and suffix with it): "
                                   "write caption files, or put the words into the --templates lines"),
                 stacklevel=2)

    def _read(self, image: TrainingImage, prefix: str, suffix: str) -> str | None:
        """Take in `image`'s caption (or its caption file's lines, with wildcards), prefix and suffix put around it;
        the name of its caption file when the token had to be put in front of it (warned of), else None."""
        caption, written, unmarked = image.caption, self._written, None
        lines = read_caption_lines(image.path, image.caption_extension) if self.tags.wildcards and caption else None
        if lines:  # (kohya puts them around the whole file: the prefix on its first line, the suffix its last)
            lines[0] = _joined_words(prefix, lines[0])
            lines[-1] = _joined_words(lines[-1], suffix)
            if any(not _has_marker(written.sub(MARKER, line)) for line in lines) and not self.uses_filewords:
                unmarked = caption_file(image.path, image.caption_extension).name
        self.lines.append(lines)
        if caption is not None:  # (kohya: prefix + " " + caption + " " + suffix, each only where given)
            caption = _joined_words(prefix, caption, suffix)
        # A1111 takes [filewords] from the file name when there is no caption file; an empty caption file is
        # its picture's words, none (A1111 reads it as ""), not a cue to use a camera's name such as IMG_1234
        if caption is None and self.uses_filewords and caption_file(image.path, image.caption_extension) is None:
            caption = filename_words(image.path)
        if caption is not None:
            caption = written.sub(MARKER, caption)
        front = caption is not None and not self.uses_filewords and not _has_marker(caption)
        if front and not lines:
            unmarked = (caption_file(image.path, image.caption_extension) or image.path.with_suffix(".txt")).name
            caption = _token_in_front(caption, self.tags)
        self.captions.append(caption)
        self._token_put_in_front.append(front)
        return unmarked

    def __len__(self) -> int:
        return len(self.captions)

    def varied_count(self, index: int) -> int:
        """How many tags of image `index`'s caption vary (0 without one): what the warm-up counts (`tags_used`)."""
        caption = self.captions[index]
        return self._tags(index).varied_count(caption) if caption is not None and not self.lines[index] else 0

    def _tags(self, index: int) -> TagVariation:
        if self._token_put_in_front[index] and not self.uses_filewords:
            return _keeping_the_token(self.tags)
        return self.tags

    def candidates(self, index: int, used: int | None = None) -> list[str]:
        """Every prompt image number `index` can get, each equally likely (the trainer tokenizes them once); with
        tag variation or wildcards, `tags.variants` prompts drawn from the seed and the picture's number (a
        multiset). `used`: the prompts of the tag warm-up's step that uses that many varied tags (`tags_used`), its
        share of `tags.variants` (`_level_variants`)."""
        if self.lines[index]:
            return self._drawn(index)
        caption = self.captions[index]
        if caption is not None and (self.tags.active or used is not None):
            # (numpy takes no negative seed; a warm-up level's draws are their own, the whole caption's as before)
            rng = np.random.default_rng([self.tags.seed % 2**63, index] + ([used] if used is not None else []))
            tags = self._tags(index)
            count = tags.variants if used is None else self._level_variants(index)
            if not self.uses_filewords:
                drawn = [make_caption(tags.vary(caption, rng, used), self.placeholder) for _ in range(count)]
            else:
                drawn = [make_caption(self.templates[rng.integers(len(self.templates))], self.placeholder,
                                      filewords=tags.vary(caption, rng, used)) for _ in range(count)]
            return drawn if used is None or len(set(drawn)) > 1 else drawn[:1]
        caption = self.tags.plain(caption) if caption is not None else None
        if caption is not None and not self.uses_filewords:
            return [make_caption(caption, self.placeholder)]
        return [make_caption(t, self.placeholder, filewords=caption) for t in self.templates]

    def _level_variants(self, index: int) -> int:
        """The prompts of each warm-up level of image `index` (`candidates` with `used`): its levels share
        `tags.variants`, as each is trained for a few steps only; 256 for each of a 30-tag caption's 29 levels made
        50 such pictures 384,000 prompts to tokenize up front."""
        levels = max(self.varied_count(index) - self.tags.warmup_min, 1)
        return -(-self.tags.variants // levels)

    def _drawn(self, index: int) -> list[str]:
        """The prompts of a picture whose caption file's lines are its captions (--caption-wildcards): each draws a
        line and its `{a|b}` choices, then marks the token and varies the tags as any caption (kohya's
        `process_caption`: line, choices, tags); one prompt where every draw gives the same."""
        rng = np.random.default_rng([self.tags.seed % 2**63, index])  # (numpy takes no negative seed)
        lines, drawn = self.lines[index], []
        for _ in range(self.tags.variants):
            text = _caption(expand_wildcards(lines[rng.integers(len(lines))], rng)) or ""
            caption = self._written.sub(MARKER, text)
            tags = self.tags
            if not self.uses_filewords and not _has_marker(caption):  # (the token in front, as for any caption)
                caption = _token_in_front(caption, tags)
                tags = _keeping_the_token(tags)
            varied = tags.vary(caption, rng) if tags.active else tags.plain(caption)
            if self.uses_filewords:
                drawn.append(make_caption(self.templates[rng.integers(len(self.templates))], self.placeholder,
                                          filewords=varied))
            else:
                drawn.append(make_caption(varied, self.placeholder))
        return drawn if len(set(drawn)) > 1 else drawn[:1]

    def __call__(self, index: int) -> str:
        """The prompt for image number `index`."""
        if self.lines[index]:
            drawn = self._drawn(index)
            return drawn[int(torch.randint(len(drawn), (), generator=self.generator))]
        caption = self.captions[index]
        caption = self.tags.plain(caption) if caption is not None else None
        if caption is not None and not self.uses_filewords:
            return make_caption(caption, self.placeholder)
        choice = int(torch.randint(len(self.templates), (), generator=self.generator))
        return make_caption(self.templates[choice], self.placeholder, filewords=caption)
