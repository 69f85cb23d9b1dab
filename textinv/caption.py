"""Caption the training pictures with BLIP, as the web UI's "Use BLIP for caption" preprocessing and kohya's
finetune/make_captions.py do: a caption file beside each picture, which `textinv train` then reads.

    textinv caption --images photos/my-dog --prefix "a photo of {},"     # photos/my-dog/dog1.txt, ...
    textinv train --images photos/my-dog --token "<my-dog>" --init dog --out runs/my-dog

The captioner is BLIP (Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation"): a ViT reads the picture and a text decoder writes what it sees,
after BLIP's own captioning prompt "a picture of", which is cut off again (the released caption decoder was
fine-tuned with it; the original code does the same). The default model is Salesforce/blip-image-captioning-large,
transformers' port of the ViT-L caption weights kohya's script loads; the base model (ViT-B) is half the size and
writes plainer captions, and a training folder of 3-10 pictures is captioned once, so the larger one is the default.

The pictures are exactly those `train` reads (`data.find_images`: the folder's, or those of its kohya
`<repeats>_<words>` subfolders; or a kohya dataset config's subsets, each captioned into the file it reads),
decoded as it decodes them (`data.load_image`: EXIF rotation, any colour mode as RGB). Sampling follows kohya's
defaults: nucleus sampling (top-p 0.9) with BLIP's repetition penalty 1.1, or beam search with `beam_search`;
lengths count BLIP's prompt too, as in both.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DEVICE_HELP, PRECISIONS, check_choices, check_types, opt
from .data import (CAPTION_SUFFIXES, _PICTURE_SUFFIXES, PictureSet, _caption, _read_text, caption_file, load_image,
                   picture_set)
from .errors import ConfigError, DataError, ModelError, given, setting
from .io import clear_stale_temporaries, write_text

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
BLIP_PROMPT = "a picture of"  # BLIP's captioning prompt (its blip_decoder's `prompt`), cut from each caption
PROMPT_TOKENS = 4  # the prompt as the decoder starts from it: [DEC] a picture of (counted in the lengths)
SAMPLING_REPETITION_PENALTY = 1.1  # what BLIP's generate() passes when it samples (1.0 for beam search)
DEFAULT_TOP_P = 0.9  # kohya's
BLIP_SIDE = 384  # the side the Salesforce models' processor resizes pictures to


@dataclass
class CaptionConfig:
    """Settings of `textinv caption`."""

    images: str = opt(None, "the folder of pictures, as train's --images (kohya's <repeats>_<words> subfolders "
                            "too); each gets a caption file beside it", path="file")
    dataset_config: str = opt(None, "kohya's dataset config (.toml or .json) instead of --images: each subset's "
                                    "pictures get the caption file it reads (its caption_extension)", path="file")
    model: str = opt(DEFAULT_BLIP, "the BLIP captioning model: hub id or a local folder (BlipForConditionalGeneration "
                                   "with its processor), e.g. Salesforce/blip-image-captioning-base", path="source")
    revision: str = opt(None, "a hub id's branch, tag or commit to load; default: main; hub ids only")
    prefix: str = opt("", "text before each caption, e.g. 'a photo of {},' to put the token ({}) in it; joined "
                          "with a space")
    suffix: str = opt("", "text after each caption, e.g. ', in the style of {}'; joined with a space")
    caption_extension: str = opt(".txt", "the caption files' suffix: NAME.txt, or .caption, train reads either; "
                                         "another is for a --dataset-config subset's caption_extension")
    overwrite: bool = opt(False, "replace the caption files that are there; without it a picture that has one "
                                 "keeps it")
    beam_search: bool = opt(False, "beam search (--num-beams) instead of nucleus sampling (--top-p), as kohya's")
    num_beams: int = opt(1, "beams, with --beam-search (1: the most likely word each time, as the web UI)")
    top_p: float = opt(None, f"nucleus sampling's top-p, without --beam-search (default: {DEFAULT_TOP_P})")
    max_length: int = opt(75, "most tokens of a caption, BLIP's 4-token prompt included")
    min_length: int = opt(5, "fewest tokens of a caption, BLIP's 4-token prompt included")
    batch: int = opt(1, "pictures captioned at once")
    seed: int = opt(42, "seed of the sampling: the same pictures, seed and batch give the same captions")
    precision: str = opt("auto", "the model's precision; auto = fp16 on a CUDA GPU, else fp32", choices=PRECISIONS)
    device: str = opt("auto", DEVICE_HELP)

    def validate(self) -> "CaptionConfig":
        check_types(self)
        check_choices(self)
        if not self.images and not self.dataset_config:
            raise ConfigError(f"{setting('images')} is required: the folder of pictures to caption, as train's "
                              f"{setting('images')} (or {setting('dataset_config')}, kohya's dataset config)")
        if self.images and self.dataset_config:
            raise ConfigError(f"{setting('images')} and {setting('dataset_config')} both name the pictures: give one "
                              f"of them (the file's subsets are its folders)")
        _check_extension(self.caption_extension)
        for name in ("num_beams", "max_length", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{setting(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_length <= PROMPT_TOKENS:
            raise ConfigError(f"{setting('max_length', self.max_length)} leaves no room for a word: it counts BLIP's "
                              f"{PROMPT_TOKENS}-token prompt too; give at least {PROMPT_TOKENS + 1}, e.g. 75")
        if not 0 <= self.min_length <= self.max_length:
            raise ConfigError(f"{setting('min_length', self.min_length)} must be from 0 to {setting('max_length')} "
                              f"({self.max_length})")
        if self.beam_search and self.top_p is not None:
            raise ConfigError(f"{setting('top_p')} is for nucleus sampling; with {setting('beam_search')} give "
                              f"{setting('num_beams')}, or leave out {setting('beam_search')} to sample")
        if not self.beam_search and self.num_beams != 1:
            raise ConfigError(f"{setting('num_beams', self.num_beams)} is for beam search: add "
                              f"{setting('beam_search')} (without it captions are sampled, with {setting('top_p')})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{setting('top_p')} is a probability mass in (0, 1], got {self.top_p}")
        return self


def _check_extension(extension: str) -> None:
    """Refuse a caption suffix that would name no caption file beside the picture, or the picture itself."""
    if not extension.startswith(".") or len(extension) < 2 or any(c in extension for c in "/\\"):
        raise ConfigError(f"{given('caption_extension', extension)} is no file suffix; give one such as .txt or "
                          f".caption")
    if extension.lower() in _PICTURE_SUFFIXES:
        raise ConfigError(f"{setting('caption_extension', extension)} is a picture's suffix: a caption file could "
                          f"replace a picture; give .txt or .caption")


@dataclass
class Blip:
    """A BLIP captioning model and its processor (transformers'), on its device."""

    model: object
    processor: object
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class CaptionResult:
    written: list[Path] = field(default_factory=list)  # the caption files written
    kept: list[Path] = field(default_factory=list)  # the caption files that were there, left as they were
    empty: list[Path] = field(default_factory=list)  # the empty caption files that were there (train: no caption)


def caption_pictures(config: CaptionConfig, blip: Blip | None = None) -> CaptionResult:
    """Write a caption file beside each picture of `config.images` (one line printed for each, then a summary);
    `blip` is loaded from `config.model` when not given. Pictures that have a caption file keep it unless
    `config.overwrite` (an empty one is no caption to train: it is written). A picture train could not read either
    refuses the folder, before the model loads.

    >>> caption_pictures(CaptionConfig(images="photos/my-dog", prefix="a photo of {},"))  # doctest: +SKIP
    photos/my-dog/dog1.jpg -> dog1.txt: a photo of {}, a dog lying on a red sofa
    ...
    """
    from .models import pick_device

    config.validate()
    pictures = _pictures(config)
    _check_readable(pictures.paths)
    device = pick_device(config.device)
    result = CaptionResult()
    todo = _uncaptioned(pictures, config, result)
    _check_targets(todo, pictures.paths)
    _clear_stale(todo)
    if todo:
        blip = blip or load_blip(config.model, device, _dtype(config.precision, device), config.revision)
        with _seeded(config.seed, blip.device):
            for start in range(0, len(todo), config.batch):
                _caption_batch(blip, todo[start:start + config.batch], config, result)
    print(_summary(result))
    return result


def _pictures(config: CaptionConfig) -> PictureSet:
    """The pictures train reads: `config.images`' (`data.find_images`), or the subsets of `config.dataset_config`
    (`kohya.dataset_subsets`), each with its caption_extension."""
    if config.dataset_config:
        from .kohya import dataset_subsets

        return picture_set(subsets=dataset_subsets(config.dataset_config))
    return picture_set(Path(config.images).expanduser())


def _uncaptioned(pictures: PictureSet, config: CaptionConfig, result: CaptionResult) -> list[tuple[Path, Path]]:
    """The pictures to caption, each with the file its caption goes to: the caption file it has, which train reads,
    with --overwrite or when it is empty (train reads that as no caption; added to `result.empty`), else NAME + the
    extension (its subset's caption_extension, else --caption-extension). Those that keep their caption file are
    added to `result.kept`, and said."""
    todo = []
    for path, subsets in zip(pictures.paths, pictures.caption_extensions, strict=True):
        extension = subsets or config.caption_extension
        there = _caption_there(path, extension, exact=subsets is not None)
        if there is not None and not config.overwrite:
            if _caption(_read_text(there, "caption file")) is None:  # (as train reads it: `data.read_caption`)
                result.empty.append(there)
            else:
                result.kept.append(there)
                print(f"{path}: kept {there.name}")
                continue
        todo.append((path, there or _target(path, extension)))
    return todo


def _check_readable(pictures: list[Path]) -> None:
    """Refuse the folder, before the model loads, when a picture cannot be decoded (cut short, damaged, too
    large), naming each: train decodes every picture before its first step and refuses the folder for any of them
    (`find_images` has left out the files that are no picture at all, with a warning, as for train)."""
    bad = []
    for path in pictures:
        try:
            load_image(path, shown_at=BLIP_SIDE)  # (as a batch decodes it: a big JPEG at a reduced scale)
        except DataError as e:
            bad.append(str(e))
    if bad:
        raise DataError(f"{len(bad)} of the {len(pictures)} pictures cannot be read, and train would refuse the "
                        f"folder for them too: {'; '.join(bad)}")


def _check_targets(todo: list[tuple[Path, Path]], pictures: list[Path]) -> None:
    """Refuse, before any caption is written, two pictures whose captions would go to one file (dog.jpg and
    dog.png: train reads dog.txt for both, and the second caption would replace the first) and a caption file that
    would be written over a picture (a PNG named dog.txt)."""
    seen: dict[Path, Path] = {}
    for path, target in todo:
        if target in pictures:
            raise DataError(f"{path}: its caption file {target.name} would be written over the picture "
                            f"{target.name}; rename the picture to its kind's suffix (.png, .jpg)")
        if target in seen:
            raise DataError(f"{seen[target].name} and {path.name} would share the caption file {target.name} in "
                            f"{target.parent} (train reads it for both); rename one of them")
        seen[target] = path


def _clear_stale(todo: list[tuple[Path, Path]]) -> None:
    """Remove the temporary files a killed run left of the caption files to write (`io.clear_stale_temporaries`):
    those of these names alone, in a folder of the user's own files."""
    names: dict[Path, list[str]] = {}
    for _, target in todo:
        names.setdefault(target.parent, []).append(re.escape(target.name))
    for folder, these in names.items():
        clear_stale_temporaries(folder, re.compile("|".join(these)))


def _caption_batch(blip: Blip, todo: list[tuple[Path, Path]], config: CaptionConfig, result: CaptionResult) -> None:
    """Caption `todo`'s pictures at once and write each caption to its file, adding it to `result.written`, and say
    it."""
    texts = describe(blip, [load_image(p, shown_at=_side(blip)) for p, _ in todo], config)
    for (path, target), text in zip(todo, texts, strict=True):
        line = _joined(config.prefix, text, config.suffix)
        write_text(target, line + "\n")  # (atomic: an interrupted write leaves the old file, or none)
        result.written.append(target)
        print(f"{path} -> {target.name}{' (was empty)' if target in result.empty else ''}: {line}")


def _caption_there(picture: Path, extension: str, exact: bool = False) -> Path | None:
    """The caption file the picture has: for .txt and .caption, the one of the names train reads that it reads
    first (`data.caption_file`: NAME.txt before NAME.caption), else, or when `exact` (a kohya subset's
    caption_extension, the only name train reads then), NAME + `extension`."""
    named = caption_file(picture) if not exact and extension.lower() in CAPTION_SUFFIXES else None
    return named or caption_file(picture, extension)


def _target(picture: Path, extension: str) -> Path:
    return picture.with_name(picture.with_suffix("").name + extension)


def _joined(prefix: str, text: str, suffix: str) -> str:
    """The caption as written: prefix, BLIP's words and suffix, one space between, spaces tidied.

    >>> _joined("a photo of {},", "a dog on a sofa", ", at night")
    'a photo of {}, a dog on a sofa, at night'
    """
    return " ".join(" ".join(part.split()) for part in (prefix, text, suffix) if part.strip()).replace(" ,", ",")


def _summary(result: CaptionResult) -> str:
    kept = (f", kept {len(result.kept)} that had one (--overwrite replaces them)" if result.kept else "")
    return f"wrote {len(result.written)} caption file(s){kept}"


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    from .generate import drawing_dtype  # (the same rule: fp16 on a CUDA GPU, fp32 on the CPU and Apple's MPS)

    return drawing_dtype(precision, device)


def _side(blip: Blip) -> int:
    """The side BLIP's processor resizes pictures to (384 for the Salesforce models): a big JPEG is decoded at a
    reduced scale that keeps enough of it (`data.load_image`'s `shown_at`)."""
    size = getattr(blip.processor.image_processor, "size", None)  # (a dict, or transformers 5's SizeDict)
    sides = [size.get(k) if isinstance(size, dict) else getattr(size, k, None) for k in ("height", "width")]
    return max([s for s in sides if s] or [BLIP_SIDE])


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """torch's random numbers seeded for the block (the sampling's), and given back to what they were after it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def describe(blip: Blip, pictures: list, config: CaptionConfig) -> list[str]:
    """BLIP's caption of each picture (PIL RGB images), without its prompt.

    >>> describe(blip, [load_image("photos/my-dog/dog1.jpg")], CaptionConfig(images="x"))  # doctest: +SKIP
    ['a dog lying on a red sofa']
    """
    inputs = blip.processor(images=pictures, text=[BLIP_PROMPT] * len(pictures), return_tensors="pt").to(blip.device)
    if config.beam_search:
        search = dict(num_beams=config.num_beams)
    else:
        search = dict(do_sample=True, top_p=config.top_p or DEFAULT_TOP_P,
                      repetition_penalty=SAMPLING_REPETITION_PENALTY)
    ids = blip.model.generate(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                              max_length=config.max_length, min_length=config.min_length, **search)
    # (B, prompt + new): generate drops the prompt's closing [SEP], so its words are the first width - 1 ids
    prompt = inputs["input_ids"].shape[1] - 1
    return [" ".join(text.split()) for text in blip.processor.batch_decode(ids[:, prompt:], skip_special_tokens=True)]


def load_blip(source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              revision: str | None = None) -> Blip:
    """transformers' BLIP captioner (BlipForConditionalGeneration and BlipProcessor) from a hub id or a local
    folder, as `score`'s CLIP judge is loaded: the Hugging Face cache first, the hub only when it answers. Raises
    ModelError naming `source` and the fix.

    >>> load_blip("Salesforce/blip-image-captioning-base", "cuda", torch.float16)  # doctest: +SKIP
    """
    from .models import _is_local_path

    local = Path(source).expanduser().exists() or _is_local_path(source)
    if revision and local:
        raise ModelError(f"--revision {revision} is for a hub id; --model {source} is a local folder, which holds "
                         f"one version only: leave --revision out")
    model, info, processor = _from_pretrained(source, revision, local)
    # transformers fills the weights a folder lacks (a BLIP question-answering or retrieval model's, another
    # model's) at random, and says so only in a log line: such a captioner would write noise
    missing = [k for k in info["missing_keys"] if k in dict(model.named_parameters())]
    if missing:
        raise ModelError(f"--model {source!r} is not a whole BLIP captioning model: {len(missing)} of its weights "
                         f"are not there ({', '.join(missing[:2])} ...) and would be random; give a captioning "
                         f"model, e.g. {DEFAULT_BLIP}")
    return Blip(model.to(device=device, dtype=dtype).eval(), processor, source)


def _from_pretrained(source: str, revision: str | None, local: bool):
    """(model, loading info, processor) of `source`; ModelError when it cannot be had."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from .models import offline_note, quiet_transformers
    from .score import _hub_reachable

    def load(**options):
        options.update({"revision": revision} if revision else {})
        with quiet_transformers():  # (its note on falling back to the Pillow image processor)
            model, info = BlipForConditionalGeneration.from_pretrained(source, output_loading_info=True, **options)
            return model, info, BlipProcessor.from_pretrained(source, **options)

    try:
        try:  # the cache first: offline, the hub's client retries each file for most of a minute
            return load(local_files_only=True)
        except OSError:
            if local or not _hub_reachable(source):
                raise
            return load()
    except Exception as e:
        if local and not Path(source).expanduser().exists():  # a mistyped folder is not a hub id to download
            raise ModelError(f"--model {source!r}: the folder {Path(source).expanduser()} does not exist; check the "
                             f"path, or give a BLIP captioning model's hub id, e.g. {DEFAULT_BLIP}") from None
        if not local and isinstance(e, (OSError, ConnectionError)):
            at = f" at revision {revision}" if revision else ""
            raise ModelError(f"--model {source!r}{at}, the BLIP captioning model, is not in the local Hugging Face "
                             f"cache and the hub could not be reached{offline_note()}; connect once to download it "
                             f"(`hf download {source}`), or give --model a local folder holding a BLIP captioning "
                             f"model (BlipForConditionalGeneration's save_pretrained, with its processor)") from None
        raise ModelError(f"--model {source!r} could not be loaded as a BLIP captioning model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); give a hub id or folder of one, e.g. "
                         f"{DEFAULT_BLIP}") from None
