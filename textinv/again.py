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
  Seed, Variation seed (and strength), Size, Clip skip and Tiling, and its hires fix (Denoising strength, Hires
  upscale or resize, steps, upscaler, sampler, prompt and negative prompt, Forge's Hires CFG Scale: `_a1111_passes`;
  an upscaling network's enlargement is Lanczos's here; a Hires checkpoint must be given: --hires-model), its
  Refiner switch at (the Refiner must be given: --refiner); its TI hashes check the
  --embedding files given (`_check_ti_hashes`), its Lora hashes the LoRA files the prompt's tags find in --lora-dir
  (`_check_lora_hashes`); a grid's X/Y/Z plot (Script, X Type, X Values, ...) is read as --x, --y and --z
  (`_a1111_plot`). An img2img picture is drawn from its picture when --init-image gives it, else from the
  prompt alone; an inpainted one's Mask blur, Mask mode, Masked content, Inpaint area and Masked area padding apply
  when --mask gives its mask (`_a1111_mask`), else it is redrawn whole, with a warning. The rest (Model, Model hash,
  VAE, ...) cannot be applied and is named in a warning;
  the model must be given (--model), and a sampler textinv does not have must be chosen (--sampler).
  The web UI's JPEG, WebP and AVIF keep the same text in their EXIF UserComment, read alike.
- ComfyUI's graph, its `prompt` text (the API format: {node id: {"class_type", "inputs"}}, an input from another node
  a link [node id, output index]; its `workflow` text, the editor's layout, is translated into it where the
  `prompt` is missing, `comfy_workflow`), or a workflow saved as a .json file, in either format
  (`_from_comfy_file`). From the saved picture its
  links are followed back through VAEDecode to the KSampler or KSamplerAdvanced it comes from (SamplerCustom and
  SamplerCustomAdvanced read as the KSampler that draws the same, or refused naming the part textinv lacks:
  `_lower_custom`; of several samplers,
  that one; the others are named; a hires fix's two passes are read as textinv's hires fix, its first pass's
  settings the drawing's: `_comfy_hires`; an img2img from a LoadImage as textinv's, its steps counted as textinv
  counts them: `_comfy_img2img`): its seed, steps, cfg, sampler and scheduler (as textinv's sampler,
  `samplers.from_comfy`); the prompts of the CLIPTextEncode nodes its links reach (through pass-through nodes, to a
  Primitive or string node holding the text; SDXL's text_g; a ConditioningCombine's as textinv's AND); the
  EmptyLatentImage's size; clip skip from CLIPSetLastLayer; each LoraLoader as a `<lora:...>` tag added to the
  prompt. A denoise below 1 that is no img2img or hires fix textinv draws, a batch, a VAELoader are said; every
  other node the picture passed through (ControlNet, upscalers, custom nodes) is named in one warning as not applied.
  The checkpoint must be given (--model), and a prompt, sampler or value textinv cannot read is asked for by its flag.
  A graph whose picture comes from no sampler it reads is refused.

An A1111 embedding PNG (an embedding kept in a picture's `sd-ti-embedding` text, or hidden in its pixels) is no drawn
picture: it is refused with the flag that loads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from . import __version__
from .config import GenerateConfig, build, typed_settings
from .data import MAX_IMAGE_PIXELS, _open_image
from .dynamic import literal
from .embedding_names import COMFY_BARE_TOKENS, COMFY_TOKEN, embedding_files, file_digest, folder_embeddings
from .emphasis import _COMFY_EMBEDDING, as_words, lora_tags
from .comfy_workflow import api_graph, is_api_graph, is_editor_workflow
from .errors import ConfigError, warn
from .formats import (PNG_CHUNK, RECORD_KEY, bundled_names, exif_comment, holds_png_embedding, load_embedding, on_disk,
                      split_bundle)
from .hub import hub_reference
from .infotext import HIRES_SETTINGS, MASK_SETTINGS, hash_name
from .io import file_sha256
from .inpaint import BLENDS, FILL_LABELS, INVERTED_LABEL, MASKED_PADDING, ONLY_MASKED_LABEL
from .loras import lora_files, lora_sha256
from .run_folder import _nfc
from .refine import SPELLINGS as UPSCALER_SPELLINGS, final_size, hires_size, pass_steps
from .samplers import SPELLINGS as SAMPLER_SPELLINGS
from .samplers import (CHURN_LABELS, COMFY_UNLIKE, EVEN_SPACINGS, churn_taken, discards, drawn_steps, eta_kind,
                       eta_label, from_comfy, from_webui)

# what the record holds beside the settings, and the settings a redraw takes from the command, not the picture
# (template, negative_template: what a dynamic prompt was drawn from, not redrawn)
_RECORD_EXTRAS = ("textinv_version", "batch_seeds", "settings", "embedding_sha256", "init_image_sha256", "mask_sha256",
                  "by_name", "template", "negative_template", COMFY_BARE_TOKENS,
                  "xyz_partial")  # (`xyz.PARTIAL_KEY`: a stopped X/Y/Z plot's grid's cells not drawn, `_partial_plot`)
_NOT_RECORDED = ("out", "n")
# the per-key text textinv wrote before it wrote the record (0.x): read as settings
_OLD_KEYS = ("prompt", "negative_prompt", "seed", "steps", "sampler", "guidance", "size", "clip_skip", "model",
             "embeddings")
_A1111_USED = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "TI hashes",
               "Lora hashes", "Denoising strength", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler",
               "Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt", "Variation seed",
               "Variation seed strength", "Tiling", "Emphasis", "Mask blur", "Mask mode", "Masked content",
               "Inpaint area", "Masked area padding", "Inpaint blend", "Refiner", "Refiner switch at",
               "Hires CFG Scale", "Hires checkpoint", "Old prompt editing timelines", "ENSD", "Pad conds",
               "Pad conds v0")
# sd-dynamic-prompts' templates, where a version writes them among the settings (else after them:
# `_without_templates`): the prompts above are what was drawn, so a redraw needs nothing of them
_A1111_DRAWN_FROM = ("Template", "Negative Template")


@dataclass
class Picture:
    """The settings read from a picture's text, as `GenerateConfig` fields."""

    path: Path
    origin: str  # "textinv", "a1111" or "comfyui"
    settings: dict[str, Any]
    batch_seeds: list[int] = field(default_factory=list)  # the seeds drawn in its pipeline call (textinv's record)
    version: str | None = None  # the textinv that drew it
    digests: list = field(default_factory=list)  # each --embedding file's SHA-256 when drawn (None: a folder)
    needs: dict[str, str] = field(default_factory=dict)  # setting -> why it must be given beside --again
    by_name: list[str] = field(default_factory=list)  # settings recorded by name, not path (--metadata shareable)
    notes: list[str] = field(default_factory=list)  # warnings, said once what must be given is there
    ti_hashes: dict[str, str] = field(default_factory=dict)  # the web UI's "TI hashes": name -> short SHA-256
    lora_hashes: dict[str, str] = field(default_factory=dict)  # its "Lora hashes": name -> short hash (lora_sha256)
    init_digest: str | None = None  # the --init-image's SHA-256 when drawn
    mask_digest: str | None = None  # and its --mask's
    # an img2img picture whose init picture its text does not hold: what is said, and the settings that change (None:
    # dropped), when it is drawn without one (--init-image not given: from the prompt alone), and what is said with one
    without_init: list[str] = field(default_factory=list)
    text_only: dict[str, Any] = field(default_factory=dict)
    with_init: list[str] = field(default_factory=list)
    without_mask: list[str] = field(default_factory=list)  # what is said of an inpainted picture drawn without --mask
    # a textinv picture drawn under --emphasis comfy before an embedding's token written bare was words there (its
    # record lacks COMFY_BARE_TOKENS): the token drew the embedding
    bare_tokens_drawn: bool = False


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
    flags = _init_in_folder(picture, flags)
    replaced = _replaced(flags, picture.settings)
    settings = {k: v for k, v in picture.settings.items() if k not in replaced}
    for name, why in picture.needs.items():
        if name not in flags and name not in replaced:
            raise ConfigError(why)
    _check_paths_given(picture, settings, flags)
    _eta_taken(picture, settings, flags)
    _churn_taken(picture, settings, flags)
    _discard_taken(picture, settings, flags)
    from_text = not (flags.get("init_image") or settings.get("init_image"))
    for note in picture.notes + (picture.without_init if from_text else picture.with_init):
        warn(note, stacklevel=2)
    if from_text:  # (a ComfyUI img2img's steps are counted otherwise from text: its sampler's own are drawn)
        _take_text_only(picture, settings, flags)
    if not _is_grid(picture):  # (a grid's record holds the command's prompts, templates that draw each cell's)
        _as_drawn(settings)
    _drop_unused(picture, settings, flags, from_text)
    _check_files(picture, settings, flags)
    keep = _batch_kept(picture, settings, flags)
    if picture.origin == "textinv" and picture.version != __version__:
        warn(f"{picture.path} was drawn by textinv {picture.version or '(unknown version)'}, this is "
             f"{__version__}: the redraw may differ from it", stacklevel=2)
    return build(GenerateConfig, settings, flags), keep


def _take_text_only(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Nothing: `settings` take the picture's for a redraw from the prompt alone (`Picture.text_only`) but `flags`'."""
    for name, value in picture.text_only.items():
        if name in flags:
            continue
        if value is None:
            settings.pop(name, None)
        else:
            settings[name] = value


def _drop_unused(picture: Picture, settings: dict[str, Any], flags: dict[str, Any], from_text: bool
                 ) -> None:
    """Nothing: drops from `settings` the --token, denoise and mask settings the redraw has no use for."""
    recorded = settings.get("embedding", [])
    # the record's --token names are its files'; another count of --embedding is other files (the same count: the
    # same files, moved)
    if "embedding" in flags and "token" not in flags and len(flags["embedding"]) != len(recorded):
        settings.pop("token", None)
    if not (flags.get("init_image") or settings.get("init_image") or _hires({**settings, **flags})):
        settings.pop("denoise", None)  # (a web UI img2img picture redrawn from text: its denoise has nothing to do)
    if not (flags.get("mask") or settings.get("mask")):  # (no mask to apply them to: redrawn whole, or from text)
        for name in MASK_SETTINGS:
            settings.pop(name, None)
        for note in picture.without_mask if not from_text else []:
            warn(note, stacklevel=3)


def _check_files(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Nothing: refuses a file the redraw names that is gone or is not the one the picture was drawn with."""
    _check_still_there(picture, settings, flags)
    _check_unchanged(picture, flags.get("embedding", settings.get("embedding", [])))
    if picture.bare_tokens_drawn:  # (the hashes below are checked on the prompts as they draw now)
        _name_bare_tokens(settings, flags)
    _check_init_unchanged(picture, flags.get("init_image", settings.get("init_image")))
    _check_init_unchanged(picture, flags.get("mask", settings.get("mask")), "mask")
    _check_ti_hashes(picture, flags.get("embedding", []), flags.get("token", []), _prompts(flags, settings))
    _check_lora_hashes(picture, _prompts(flags, settings), flags.get("lora_dir", []))


def _batch_kept(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> set[int] | None:
    """The seeds whose pictures to write (None: all), `settings`' seed, n and batch size set to the batch of them."""
    keep = None
    settings["n"] = 1
    seed, batch = settings.get("seed"), picture.batch_seeds
    if not {"seed", "n", "batch_size"} & set(flags) and len(batch) > 1 and seed in batch:
        # a dynamic prompt's batch holds the seeds that drew its prompt, which need not follow one another: the
        # picture is then drawn first in a batch of as many (its other rows' noise does not reach it; their number
        # decides how the kernels sum)
        first = batch[0] if batch == list(range(batch[0], batch[0] + len(batch))) else seed
        settings.update(seed=first, n=len(batch), batch_size=len(batch))
        if settings.get("variation_seed") is not None:  # (each picture's is its own: the batch's first's with it)
            settings["variation_seed"] -= seed - first
        keep = {seed}
    if _is_grid(picture):
        # an X/Y/Z plot's grid (`xyz`): its seeds are each cell's, all drawn and written, in batches of the size it
        # drew with
        settings["n"], keep = len(batch) or 1, None
        batch_size = picture.settings.get("batch_size", settings.get("batch_size"))
        if batch_size is not None:  # (a web UI grid records none: the default's)
            settings["batch_size"] = batch_size
    return keep


def _eta_taken(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Drop the picture's eta from `settings`, with a warning, where `flags` give samplers that take none, or take
    the web UI's other one (its Eta and Eta DDIM are two settings: `samplers.eta_of`); an --eta given is the
    command's, checked as given."""
    if "eta" not in settings or "eta" in flags:
        return
    kind = eta_kind(_sampler_named(flags.get(key, settings.get(key))) for key in ("sampler", "hires_sampler"))
    drawn = eta_kind(_sampler_named(settings.get(key)) for key in ("sampler", "hires_sampler"))
    if kind and (not drawn or kind == drawn):
        return
    if not kind:
        warn(f"{picture.path} was drawn at eta {settings.pop('eta')}, which the sampler given does not take: it "
             f"draws without", stacklevel=3)
        return
    given = next(flags.get(key) for key in ("sampler", "hires_sampler") if flags.get(key))
    warn(f"{picture.path} was drawn at {drawn} {settings.pop('eta')}, which {given} does not take (its {kind} "
         f"is the web UI's other setting): it draws at its own default", stacklevel=3)


def _churn_taken(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Drop the picture's sigma churn settings from `settings`, with a warning, where `flags` give samplers none of
    which takes them (`samplers.churn_taken`); any of them given is the command's, checked as given."""
    names = [_sampler_named(flags.get(key, settings.get(key))) for key in ("sampler", "hires_sampler")]
    taken = {key for name in names if name for key in churn_taken(name)}
    drawn = [f"sigma_{key}" for key in CHURN_LABELS if f"sigma_{key}" in settings and key not in taken]
    if not drawn or {f"sigma_{key}" for key in CHURN_LABELS} & set(flags):
        return
    said = ", ".join(f"{name.replace('_', ' ')} {settings.pop(name)}" for name in drawn)
    warn(f"{picture.path} was drawn at {said}, which the sampler given does not take: it draws without",
         stacklevel=3)


def _discard_taken(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Drop the picture's --discard-penultimate-sigma from `settings`, with a warning, where `flags` give samplers
    none of which takes it (`samplers.discards`)."""
    if not settings.get("discard_penultimate_sigma") or "discard_penultimate_sigma" in flags:
        return
    names = [_sampler_named(flags.get(key, settings.get(key))) for key in ("sampler", "hires_sampler")]
    if any(discards(name, True) for name in names if name):
        return
    settings.pop("discard_penultimate_sigma")
    warn(f"{picture.path} was drawn with its next-to-last sigma discarded, which the sampler given does not take: "
         f"it draws without", stacklevel=3)


def _sampler_named(name: Any) -> str | None:
    """A sampler as textinv names it, from any of its spellings (None: not given)."""
    return SAMPLER_SPELLINGS.get(str(name).strip().lower(), str(name)) if name else None


def _is_grid(picture: Picture) -> bool:
    """Whether `picture` is an X/Y/Z plot's grid (`xyz`): its record holds the axes."""
    return any(picture.settings.get(axis) for axis in ("x", "y", "z"))


_HIRES_SIZE = ("hires_scale", "hires_width", "hires_height")


def _as_drawn(settings: dict[str, Any]) -> None:
    """The picture's prompts in `settings` made `dynamic.literal`: each is what the picture drew (sd-dynamic-prompts'
    templates are not among them), so a `{`, `}` or `__name__` in it is text, as the web UI without the extension,
    and textinv before it, drew it."""
    for name in ("negative_prompt", "hires_prompt", "hires_negative_prompt", "prompt_l", "negative_prompt_l"):
        if settings.get(name):
            settings[name] = literal(settings[name])
    if settings.get("prompt"):
        settings["prompt"] = [literal(prompt) for prompt in settings["prompt"]]


def _init_in_folder(picture: Picture, flags: dict[str, Any]) -> dict[str, Any]:
    """`flags` with an --init-image folder that holds the picture's own init picture (by its name: one of the
    folder's an --init-image folder drew, or a picture given by name with --metadata shareable) given as that file,
    so the redraw is the picture's, not one of every picture in the folder."""
    given, recorded = flags.get("init_image"), picture.settings.get("init_image")
    if not given or not recorded or not Path(given).expanduser().is_dir() or _is_grid(picture):  # (a grid: all)
        return flags
    inside = Path(given).expanduser() / Path(str(recorded)).name
    return {**flags, "init_image": str(inside)} if inside.is_file() else flags


def _prompts(flags: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The redraw's prompts whose `<lora:...>` tags it draws: each --prompt and the hires fix's."""
    hires = flags.get("hires_prompt", settings.get("hires_prompt"))
    return list(flags.get("prompt", settings.get("prompt", []))) + ([hires] if hires else [])


def _hires(settings: dict[str, Any]) -> bool:
    return any(settings.get(name) for name in _HIRES_SIZE)


def _replaced(flags: dict[str, Any], settings: dict[str, Any]) -> set[str]:
    """The picture's `settings` that `flags` replace by drawing them another way, which beside them would be refused
    as if both had been given: a hires size (--hires-scale, --hires-width, --hires-height) replaces the picture's
    hires size and its --init-image, --init-image its hires fix, --variation-strength 0 its variation seed; a switch
    from one pass to the other its --denoise too (the other pass's, whose default then applies)."""
    gone: set[str] = set()
    if _hires(flags):
        gone |= {*_HIRES_SIZE, "init_image", *MASK_SETTINGS} | ({"denoise"} if settings.get("init_image") else set())
    if flags.get("init_image"):
        gone |= set(HIRES_SETTINGS) | ({"denoise"} if _hires(settings) else set())
    if "variation_strength" in flags and not flags["variation_strength"]:
        gone.add("variation_seed")
    return gone - set(flags)


def read_picture(path: str | Path) -> Picture:
    """The settings in a picture's PNG text: textinv's record, else an older textinv's per-key text, else the A1111 web
    UI's `parameters`, else ComfyUI's graph (its `prompt` text, a WebP's EXIF Model tag); else the web UI's text in its
    EXIF UserComment (how it saves a JPEG, WebP or AVIF); else ComfyUI's editor layout (its `workflow`). A .json file
    is a ComfyUI workflow (`_from_comfy_file`). A file without any of them, an A1111 embedding PNG, and a file that is
    no picture are refused."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--again {path}: no such file; give a picture that textinv, the web UI or ComfyUI drew")
    if path.suffix.lower() == ".json":
        return _from_comfy_file(path)
    try:
        with _open_image(path) as image:  # (Pillow's decompression-bomb error lifted: the limit is textinv's, here)
            size = image.size
            if size[0] * size[1] > MAX_IMAGE_PIXELS:  # (before its text: a PNG's means decoding all of it)
                raise ConfigError(f"--again {path} is {size[0]}x{size[1]} pixels, more than the "
                                  f"{MAX_IMAGE_PIXELS:,} textinv reads: no picture textinv, the web UI or ComfyUI "
                                  f"drew; give the picture as it was saved")
            text = {**_comfy_exif(image), **(getattr(image, "text", None) or {})}  # (a PNG's own text first)
            comment = exif_comment(image)
    except ConfigError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ConfigError(f"--again {path}: cannot read it as a picture ({e})") from None
    if PNG_CHUNK in text:
        raise ConfigError(f"--again {path} is an A1111 embedding (an embedding kept in a picture's {PNG_CHUNK!r} "
                          f"text), not a drawn picture's settings: load it with --embedding {path}")
    # the PNG's text first: it is what textinv, the web UI and ComfyUI write there (an EXIF beside it may be a
    # camera's). The web UI's text before ComfyUI's graph: a ComfyUI node that writes both chose what it wrote there
    if RECORD_KEY in text:
        return _from_record(path, text[RECORD_KEY])
    if "textinv_version" in text and "prompt" in text:
        return _from_old_keys(path, text)
    if "parameters" in text:
        return _from_a1111(path, text["parameters"])
    graph = comfy_graph(text)
    if graph is not None:
        return _from_comfyui(path, graph, size)
    parameters = web_ui_parameters(comment)
    if parameters:
        return _from_a1111(path, parameters)
    workflow = _json_object(text.get("workflow"))
    if is_editor_workflow(workflow):  # (the editor's layout alone: the graph it ran, translated from it)
        return _from_comfyui(path, json.dumps(api_graph(workflow, path)), size)
    if holds_png_embedding(path):  # (its text chunk stripped, by an image host: the copy hidden in its pixels)
        raise ConfigError(f"--again {path} is an A1111 embedding (an embedding hidden in a picture's pixels, its "
                          f"{PNG_CHUNK!r} text gone), not a drawn picture's settings: load it with --embedding {path}")
    comment = decode_user_comment(comment) if comment is not None else ""
    if comment:  # a camera's or an editor's comment: no "Steps: .., Seed: .." line
        shown = comment if len(comment) <= 60 else comment[:57] + "..."
        raise ConfigError(f"--again {path}: its EXIF UserComment {shown!r} is not the web UI's generation "
                          f"parameters (no 'Steps: ..., Seed: ...' line): give a picture that textinv, the web UI or "
                          f"ComfyUI drew")
    raise ConfigError(f"--again {path} holds no generation settings (no textinv record, no A1111 'parameters' text, "
                      f"no ComfyUI 'prompt' graph, no EXIF UserComment): give a picture that textinv, the web "
                      f"UI or ComfyUI drew, with its metadata kept (some editors and sites remove it, and textinv's "
                      f"--metadata none writes none)")


def has_settings(text: dict[str, str], comment: bytes | None) -> bool:
    """Whether a picture's PNG text or EXIF UserComment (`formats.exif_comment`) holds generation settings of a kind
    `read_picture` reads, readable or not: what tells a drawn picture from a photo (`formats`, `textinv inspect`)."""
    return (RECORD_KEY in text or ("textinv_version" in text and "prompt" in text) or "parameters" in text
            or comfy_graph(text) is not None or web_ui_parameters(comment) is not None
            or is_editor_workflow(_json_object(text.get("workflow"))))


def holds_settings(path: str | Path) -> bool:
    """`has_settings` of the picture at `path`; False for a file that is no picture, or one too large to read."""
    from PIL import UnidentifiedImageError

    try:
        with _open_image(Path(path)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:  # (too large for `read_picture` to read)
                return False
            return has_settings({**_comfy_exif(image), **(getattr(image, "text", None) or {})}, exif_comment(image))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


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
        warn(f"{path} records settings this textinv ({__version__}) does not know, from textinv "
             f"{version or '(unknown)'}: {', '.join(map(str, unknown))}; they are ignored, so the redraw may "
             f"differ (draw it with that textinv for the same picture)", stacklevel=3)
    settings = _typed(path, {k: v for k, v in record["settings"].items() if k in fields and k not in _NOT_RECORDED})
    if settings.get("mask") and "inpaint_blend" not in settings:
        settings["inpaint_blend"] = "noised"  # (drawn before the choice, when textinv had diffusers' way only)
    batch = record.get("batch_seeds")
    batch = [s for s in batch if isinstance(s, int) and not isinstance(s, bool)] if isinstance(batch, list) else []
    digests = record.get("embedding_sha256")
    digests = digests if isinstance(digests, list) else []
    by_name = record.get("by_name")
    by_name = [k for k in by_name if k in settings] if isinstance(by_name, list) else []
    init, mask = record.get("init_image_sha256"), record.get("mask_sha256")
    partial = record.get("xyz_partial")
    needs = _partial_plot(path, settings, partial) if isinstance(partial, dict) else {}
    return Picture(path, "textinv", settings, batch, version, digests, needs=needs, by_name=by_name,
                   init_digest=init if isinstance(init, str) else None,
                   mask_digest=mask if isinstance(mask, str) else None,
                   bare_tokens_drawn=settings.get("emphasis") == "comfy" and COMFY_BARE_TOKENS not in record)


def _partial_plot(path: Path, settings: dict[str, Any], partial: dict) -> dict[str, str]:
    """The grid of an X/Y/Z plot stopped part-way (`xyz._stopped`): its cells not drawn are black, so it is no whole
    plot and holds no settings of theirs for a redraw of what it shows alone; drawn again it is refused, naming them,
    unless its first axis is given beside `--again` (then the whole plot is drawn, as asked). `needs` for that."""
    key = next((k for k in ("x", "y", "z") if settings.get(k)), None)
    missing = [n for n in partial.get("missing", []) if isinstance(n, int) and not isinstance(n, bool)]
    if key is None or not missing:
        return {}
    cells = partial.get("cells")
    of = f" of its {cells}" if isinstance(cells, int) and not isinstance(cells, bool) else ""
    return {key: f"--again {path} is the grid of an X/Y/Z plot stopped part-way: its {_numbered(missing)}{of} "
                 f"{'were' if len(missing) > 1 else 'was'} not drawn (black in it), so it is no whole plot to draw "
                 f"again; to draw the whole plot, give its axis beside --again: --{key} {shlex.quote(settings[key])}; "
                 f"to draw one cell, give --again that cell's picture (its xyz_plot text names each cell's files)"}


def _numbered(numbers: list[int]) -> str:
    """Cells by their numbers, runs of them as ranges.

    >>> _numbered([4]), _numbered([2, 3]), _numbered([1, 2, 4, 5, 6, 7, 9]), _numbered([31, 32, 33])
    ('cell 4', 'cells 2 and 3', 'cells 1, 2, 4-7 and 9', 'cells 31-33')
    """
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    said = [part for r in runs for part in ([f"{r[0]}-{r[-1]}"] if len(r) > 2 else map(str, r))]
    if len(said) == 1:
        return f"cell{'s' * (len(runs[0]) > 1)} {said[0]}"
    return f"cells {', '.join(said[:-1])} and {said[-1]}"


def _from_old_keys(path: Path, text: dict[str, str]) -> Picture:
    """A picture from a textinv that wrote each setting under its own key only (no record)."""
    raw = {k: text[k] for k in _OLD_KEYS if k in text}
    if "size" in raw:
        raw["width"], raw["height"] = _size(path, raw.pop("size"), "size")
    embeddings = raw.pop("embeddings", "")
    raw["embedding"] = [e for e in embeddings.split(", ") if e] if embeddings else []
    raw["prompt"] = [raw["prompt"]]
    warn(f"{path} was drawn by textinv {text['textinv_version']}, which did not record the precision, "
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
    lines = _without_templates(text.strip().split("\n"))
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


def _without_templates(lines: list[str]) -> list[str]:
    """The web UI's lines without sd-dynamic-prompts' "Template:" and "Negative Template:" after the settings line
    (each as written, over as many lines as it has): the prompts above them are what was drawn."""
    for at in range(1, len(lines)):
        if lines[at].startswith(("Template: ", "Negative Template: ")) and len(_A1111_PAIR.findall(lines[at - 1])) >= 3:
            return lines[:at]
    return lines


def _before_new_timelines(version: str | None) -> bool:
    """Whether the web UI `version` (its infotext's "Version") is before 1.6.0, whose pictures with a `[` in the
    prompt it redraws on the old prompt editing timelines, reading it as its infotext_versions does: the first two
    parts between dashes ("v1.5.1-12-gabc": v1.5.1-12), a PEP 440 version; none, or one it cannot read: not before.

    >>> _before_new_timelines("v1.5.2"), _before_new_timelines("1.6.0-RC-28-ga0af285"), _before_new_timelines(None)
    (True, True, False)
    """
    if version is None:
        return False
    match = re.match(r"([^-]+-[^-]+)-.*", version)
    try:
        return Version(match.group(1) if match else version) < Version("1.6.0")
    except InvalidVersion:
        return False


def _from_a1111(path: Path, text: str) -> Picture:
    prompt, negative, fields = parse_a1111_parameters(text)
    settings: dict[str, Any] = {"prompt": [prompt], "negative_prompt": negative}
    names = {"Steps": "steps", "CFG scale": "guidance", "Seed": "seed", "Clip skip": "clip_skip",
             "Variation seed": "variation_seed", "Variation seed strength": "variation_strength", "Tiling": "tiling",
             "Emphasis": "emphasis", "Old prompt editing timelines": "old_prompt_editing", "ENSD": "ensd",
             "Pad conds": "pad_cond_uncond", "Pad conds v0": "pad_cond_uncond_v0"}
    for label, name in names.items():
        if label in fields:
            settings[name] = fields[label]
    if _before_new_timelines(fields.get("Version")) and "[" in prompt and "old_prompt_editing" not in settings:
        settings["old_prompt_editing"] = True  # (as the web UI redraws it: infotext_versions.backcompat)
    if _before_new_timelines(fields.get("Version")) and str(fields.get("Sampler", "")).strip() in ("DDIM", "PLMS") \
            and "pad_cond_uncond_v0" not in settings:
        settings["pad_cond_uncond_v0"] = True  # (likewise: DDIM padded so before 1.6)
    notes = []
    if str(settings.get("emphasis", "")).strip().lower() == "none":  # (the web UI's None: brackets read as words)
        notes.append(f"{path} was drawn with the web UI's Emphasis None, its brackets read as words; textinv reads "
                     f"them as weights: --emphasis ignore leaves the weights out")
        settings["emphasis"] = "ignore"
    if "Size" in fields:
        settings["width"], settings["height"] = _size(path, fields["Size"], "Size")
    needs = {}
    model = ", ".join(f"{k} {fields[k]}" for k in ("Model", "Model hash") if fields.get(k)) or "its model is not named"
    needs["model"] = _model_needed(f"--again {path} was drawn by the A1111 web UI ({model})", "--model")
    if fields.get("Refiner"):  # (found as the model is: by the file or folder given)
        needs["refiner"] = _model_needed(f"--again {path} was drawn by the A1111 web UI with the Refiner "
                                         f"{fields['Refiner']}", "--refiner")
        if fields.get("Refiner switch at"):
            settings["refiner_switch_at"] = fields["Refiner switch at"]
    _a1111_sampler(path, fields, False, settings, needs)
    without_init: list[str] = []
    without_mask: list[str] = []
    _a1111_passes(path, fields, settings, needs, notes, without_init, without_mask)
    used = (_a1111_eta(fields, settings) + _a1111_churn(fields, settings) + _a1111_discard(fields, settings)
            + _a1111_plot(path, fields, settings, needs, notes))
    unused = [k for k in fields if k not in _A1111_USED + _A1111_DRAWN_FROM + used]
    if unused:
        named = f" ({fields['VAE']})" if fields.get("VAE") else ""  # (the web UI's file name of its VAE)
        vae = f"--vae gives its VAE{named}; " if {"VAE", "VAE hash"} & set(unused) else ""
        notes.append(f"{path}: not applied from its A1111 parameters: {', '.join(unused)} ({vae}--model, --embedding "
                      f"and --lora-dir give models, embeddings and LoRAs; face restoration, a seed resized "
                      f"and the like textinv does not do); its samplers and noise are diffusers', so expect a "
                      f"picture close to the web UI's, not the same pixels")
    return Picture(path, "a1111", _typed(path, settings), needs=needs, notes=notes, without_init=without_init,
                   without_mask=without_mask,
                   ti_hashes=parse_webui_hashes(fields.get("TI hashes", "")),
                   lora_hashes=parse_webui_hashes(fields.get("Lora hashes", "")))


def _a1111_plot(path: Path, fields: dict[str, str], settings: dict[str, Any], needs: dict[str, str],
                notes: list[str]) -> tuple[str, ...]:
    """The axes of the web UI's X/Y/Z plot (its grid's, and first cell's, `Script: X/Y/Z plot`, `X Type`, `X Values`,
    ...) into `settings` as --x, --y and --z, so that --again draws the plot, as the web UI's PNG Info restores the
    script; a seed or Var. seed axis with the seeds it drew (`Fixed X Values`: -1 drawn), a Hires upscaler axis's
    upscaling networks as Lanczos (`_a1111_upscaler`, as the picture's own), a Sampler or Hires sampler axis's
    samplers on the schedule type they drew on (`_a1111_plot_samplers`; one textinv lacks into `needs`). An
    axis textinv has none of (Checkpoint name, Styles, ...: the note says how to get the same with textinv,
    `xyz.WEBUI_ONLY`), or whose values are model files the web UI names its own way (Refiner checkpoint), is left out
    with a note. Returns the fields read."""
    # (here: xyz imports generate, as this does)
    from .xyz import _SEED_AXES, _SPELLINGS, AXES, SCRIPT, WEBUI_ONLY, split_values

    if str(fields.get("Script", "")).strip() != SCRIPT:
        return ()
    kinds = _a1111_plot_kinds(fields)
    for key in "XYZ":
        kind, values = str(fields.get(f"{key} Type", "")).strip(), fields.get(f"{key} Values", "")
        if not kind:
            continue
        name = _SPELLINGS.get(kind.lower())
        if name is None or name == "refiner":
            known = WEBUI_ONLY.get(kind.lower())
            why = (f"names models as the web UI finds them: give the files beside --again, --{key.lower()} "
                   f"'refiner=FILE,...'" if name else f"is no axis textinv has ({known[1]})" if known else
                   f"is no axis textinv has (its axes: {', '.join(AXES)})")
            notes.append(f"{path} is the web UI's X/Y/Z plot; its {key} axis, {kind} ({values}), {why}: the plot "
                         f"is drawn without it")
            continue
        if name in _SEED_AXES:
            values = fields.get(f"Fixed {key} Values") or values
        if name == "hires-upscaler":  # (as the picture's own: an upscaling network read as Lanczos, with its note)
            values = ",".join(_a1111_upscaler(path, value, notes) for value in split_values(values))
        if name in ("sampler", "hires-sampler"):
            plotted = "schedule" in kinds  # (a Schedule type axis sets each cell's schedule: `xyz._scheduled`)
            on = (fields.get("Schedule type") if name == "sampler" else
                  _a1111_hires_schedule(fields, plotted, next(iter(split_values(values)), "")))
            moved = plotted and (name == "sampler" or "Hires schedule type" not in fields)
            values = _a1111_plot_samplers(path, key, kind, name, values, on, moved, needs)
            if values is None:
                continue
        settings[key.lower()] = f"{name}={values}"
    return ("Script", *(f"{fixed}{key} {what}" for key in "XYZ" for fixed, what in
                         (("", "Type"), ("", "Values"), ("Fixed ", "Values"))))


def _a1111_plot_kinds(fields: dict[str, str]) -> set[str]:
    """textinv's names of the axes of the web UI's X/Y/Z plot `fields` hold (none where they hold no plot)."""
    from .xyz import _SPELLINGS, SCRIPT

    if str(fields.get("Script", "")).strip() != SCRIPT:
        return set()
    return {_SPELLINGS[kind] for key in "XYZ" if (kind := str(fields.get(f"{key} Type", "")).strip().lower())
            in _SPELLINGS}


def _a1111_plot_samplers(path: Path, key: str, kind: str, name: str, values: str, on: str | None, moved: bool,
                         needs: dict[str, str]) -> str | None:
    """The web UI's Sampler or Hires sampler axis `values` (its `key` axis, textinv's axis `name`) as textinv's
    samplers, each on the schedule type its cell drew it on, `on` (`from_webui`'s schedule): the axis
    sets each cell's sampler alone, its schedule staying the picture's (a Sampler's Schedule type; a Hires sampler's
    Hires schedule type, else the first pass's: `_a1111_hires_schedule`; a sampler that carries one in its name,
    "DPM++ 2M Karras", keeps its own, as the web UI reads it: `from_webui`), and textinv's sampler name carries the
    schedule. Where a Schedule type axis gives each cell's (`moved`), a sampler textinv lacks on the picture's is read
    as it is (`xyz._scheduled` puts it on the cell's); else None, the axis asked for in `needs`."""
    from .xyz import split_values

    items = split_values(values)
    ours = [from_webui(item, on) or (item if moved else None) for item in items]
    if None not in ours:
        return ",".join(ours)
    lacking = ", ".join(repr(item) for item, drawn in zip(items, ours) if drawn is None)
    needs[key.lower()] = (f"--again {path} is the web UI's X/Y/Z plot, its {key} axis, {kind} ({values}), drew "
                          f"{lacking}{f' on Schedule type {on}' if on else ''}, which textinv does not "
                          f"have: give the axis beside --again, --{key.lower()} '{name}=...', with samplers textinv "
                          f"has (textinv generate --help lists them)")
    return None


def _a1111_hires_schedule(fields: dict[str, str], plotted: bool, hires: str) -> str | None:
    """The schedule type the web UI's hires pass drew the picture's Hires sampler `hires` (a Hires sampler axis's
    first value: the first cell's) on, and with it every other value, as `from_webui`'s schedule: its Hires schedule
    type, else the first pass's (the web UI's "Use same scheduler": it writes a Hires schedule type only where the
    two differ). That is its Schedule type where that was chosen: where a Schedule type axis gives each cell's
    (`plotted`: the hires samplers are read on the picture's, and `xyz._scheduled` moves them with the cell's),
    where it is not the Sampler's own (Euler on Karras), or where `hires` on it is not on its own (else written);
    one that is the Sampler's own (DPM++ 2M on Karras) may be the web UI's Automatic, each hires sampler's own."""
    if fields.get("Hires schedule type"):
        return fields["Hires schedule type"]
    first, sampler = fields.get("Schedule type"), fields.get("Sampler", "")
    own = from_webui(hires, "Automatic")
    if not first or plotted or from_webui(sampler, first) != from_webui(sampler, "Automatic") or (
            own != from_webui(hires, "Uniform") and own != from_webui(hires, first)):
        return first
    return "Automatic"


def _a1111_upscaler(path: Path, upscaler: str, notes: list[str]) -> str:
    """The web UI's Hires upscaler `upscaler` as textinv's: one of its own by the web UI's name, else Lanczos, with a
    note (the web UI's others are upscaling networks, which textinv does not run)."""
    name = upscaler.strip().lower()
    if name in UPSCALER_SPELLINGS:
        return UPSCALER_SPELLINGS[name]
    said = (f"{path} was enlarged for its hires fix by the web UI's {upscaler.strip()!r}, an upscaling network textinv "
            f"does not run: it is enlarged with Lanczos (--hires-upscaler), then redrawn as the web UI redrew it, so "
            f"expect the finer detail to differ")
    if said not in notes:
        notes.append(said)
    return "lanczos"


def _a1111_sampler(path: Path, fields: dict[str, str], hires: bool, settings: dict[str, Any],
                   needs: dict[str, str]) -> None:
    """The web UI's `Sampler` and `Schedule type` (`hires`: its `Hires sampler` and `Hires schedule type`, which it
    writes only where it differs from the first pass's: `_a1111_hires_schedule`) into `settings` as textinv's
    sampler, or into `needs` when textinv has none such."""
    sampler, schedule = ("Hires sampler", "Hires schedule type") if hires else ("Sampler", "Schedule type")
    if sampler not in fields:
        return
    name = "hires_sampler" if hires else "sampler"
    plotted = "schedule" in _a1111_plot_kinds(fields)  # (a Schedule type axis: `_a1111_hires_schedule`)
    on = _a1111_hires_schedule(fields, plotted, fields[sampler]) if hires else fields.get(schedule)
    ours = from_webui(fields[sampler], on)
    if ours:
        settings[name] = ours
        return
    said = ", Schedule type ".join(s for s in (fields[sampler], on) if s)
    needs[name] = (f"--again {path} was {'redrawn by its hires fix' if hires else 'drawn'} with the web UI's sampler "
                   f"{said!r}, which textinv does not have: choose one with --{name.replace('_', '-')} (textinv "
                   f"generate --help lists them){'' if hires else ', or default'}")


def _a1111_eta(fields: dict[str, str], settings: dict[str, Any]) -> tuple[str, ...]:
    """The web UI's "Eta" (its ancestral and SDE samplers', written where not 1) or "Eta DDIM" (DDIM's, where not 0)
    into `settings` as --eta, where the first of the picture's samplers (the first pass's, then the hires fix's) that
    takes one takes that one (`samplers.eta_kind`, `samplers.eta_of`); the label read, or none (the other pass's
    kind's, or one on samplers that take none, is then named as not applied)."""
    label = eta_kind([settings.get("sampler"), settings.get("hires_sampler")])  # (the other's is named)
    if label in fields:
        settings["eta"] = fields[label]
        return (label,)
    return ()


def _a1111_churn(fields: dict[str, str], settings: dict[str, Any]) -> tuple[str, ...]:
    """The web UI's "Sigma churn", "Sigma tmin", "Sigma tmax" and "Sigma noise" (each written where not its
    default) into `settings` as --sigma-churn, --sigma-tmin, --sigma-tmax and --sigma-noise, where one of the
    picture's samplers takes them (`samplers.churn_taken`: Euler, Heun, DPM2; DPM2 a, DPM++ 2S a and the SDE samplers
    the noise alone); the labels read (any other is then named as not applied)."""
    taken = {key for name in (settings.get("sampler"), settings.get("hires_sampler")) if name
             for key in churn_taken(name)}
    read = {key: label for key, label in CHURN_LABELS.items() if label in fields and key in taken}
    settings.update((f"sigma_{key}", fields[label]) for key, label in read.items())
    return tuple(read.values())


def _a1111_discard(fields: dict[str, str], settings: dict[str, Any]) -> tuple[str, ...]:
    """The web UI's "Discard penultimate sigma: True" (its "Always discard next-to-last sigma", written where it made a
    sampler discard it) into `settings` as --discard-penultimate-sigma, where one of the picture's samplers takes it
    (`samplers.discards`); the label read, or none (named as not applied)."""
    label = "Discard penultimate sigma"
    if str(fields.get(label, "")).strip().lower() != "true":
        return ()
    if not any(discards(settings.get(key) or "", True) for key in ("sampler", "hires_sampler")):
        return ()
    settings["discard_penultimate_sigma"] = True
    return (label,)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _model_needed(drawn: str, flag: str) -> str:
    """What --again says of a model the web UI's text names (`drawn`: which model drew it), which textinv cannot
    find by that name: it must be given, with `flag`."""
    return (f"{drawn}; textinv cannot find a model by the web UI's name or hash: give it with {flag} (its file or "
            f"folder)")


def _a1111_passes(path: Path, fields: dict[str, str], settings: dict[str, Any], needs: dict[str, str],
                  notes: list[str], without_init: list[str], without_mask: list[str]) -> None:
    """The web UI's hires fix and img2img fields into `settings` (`Denoising strength`, `Hires upscale` or
    `Hires resize`, `Hires steps`, `Hires upscaler`, `Hires sampler`, `Hires prompt`, `Hires negative prompt`: the
    web UI writes these two only where they differ from the picture's; Forge's `Hires CFG Scale`), what cannot be
    read into `needs` (a `Hires checkpoint`: its model, as the Model's), what is
    drawn otherwise into `notes` (an img2img picture drawn without its picture: `without_init`; an inpainted one
    without its mask: `without_mask`)."""
    if "Denoising strength" in fields:
        settings["denoise"] = fields["Denoising strength"]
    if "Hires upscale" in fields and _number(fields["Hires upscale"]) == 1:  # (an enlargement by 1: no second pass)
        notes.append(f"{path}: its Hires upscale 1 enlarges nothing, and the web UI then draws no second pass: it is "
                     f"drawn in one")
        fields = {k: v for k, v in fields.items() if not k.startswith("Hires ")}
        fields.pop("Denoising strength", None)
    if "Hires upscale" in fields:
        settings["hires_scale"] = fields["Hires upscale"]
    elif "Hires resize" in fields:
        width, height = _size(path, fields["Hires resize"], "Hires resize")
        settings.update({name: side for name, side in (("hires_width", width), ("hires_height", height))
                         if side.strip("0")})  # (the web UI writes a side it derives as 0)
    if "Hires steps" in fields and _number(fields["Hires steps"]) != 0:  # (the web UI's 0: the first pass's steps)
        settings["hires_steps"] = fields["Hires steps"]
    if fields.get("Hires upscaler") is not None:
        settings["hires_upscaler"] = _a1111_upscaler(path, fields["Hires upscaler"], notes)
    _a1111_sampler(path, fields, True, settings, needs)
    for label, name in (("Hires prompt", "hires_prompt"), ("Hires negative prompt", "hires_negative_prompt"),
                        ("Hires CFG Scale", "hires_guidance")):
        if fields.get(label) and {"Hires upscale", "Hires resize"} & set(fields):
            settings[name] = fields[label]
    if _number(settings.get("hires_guidance")) == 0:  # (reForge's 0: the first pass's CFG scale)
        del settings["hires_guidance"]
    if fields.get("Hires checkpoint") and {"Hires upscale", "Hires resize"} & set(fields):  # (as the Model is)
        needs["hires_model"] = _model_needed(f"--again {path} was redrawn by its hires fix with the web UI's Hires "
                                             f"checkpoint {fields['Hires checkpoint']}", "--hires-model")
    if "Denoising strength" in fields and not ({"Hires upscale", "Hires resize"} & set(fields)):
        without_init.append(f"{path} was drawn by the web UI's img2img from a picture of its own, which its text "
                            f"does not hold: give that picture with --init-image, or it is drawn from the prompt alone")
        _a1111_mask(path, fields, settings, without_mask)


def _a1111_mask(path: Path, fields: dict[str, str], settings: dict[str, Any], without_mask: list[str]) -> None:
    """The web UI's inpainting fields of an img2img picture into `settings`, applied where --mask is given: Mask blur
    (written only above 0: none is 0), Mask mode, Masked content, Inpaint area and Masked area padding, and
    textinv's Inpaint blend (written for noised only); an inpainted picture (one of them written) is said to need
    its mask."""
    settings["mask_blur"] = fields.get("Mask blur", "0")
    if fields.get("Mask mode", "").strip().lower() == INVERTED_LABEL.lower():
        settings["mask_invert"] = True
    fills = {label: fill for fill, label in FILL_LABELS.items()}
    content = fields.get("Masked content", "").strip().lower()
    if content in fills:
        settings["inpaint_fill"] = fills[content]
    if fields.get("Inpaint area", "").strip().lower() == ONLY_MASKED_LABEL.lower():
        settings["inpaint_area"] = "masked"
        settings["masked_padding"] = fields.get("Masked area padding", str(MASKED_PADDING))
    if fields.get("Inpaint blend", "").strip().lower() in BLENDS:
        settings["inpaint_blend"] = fields["Inpaint blend"].strip().lower()
    if {"Mask blur", "Mask mode", "Masked content", "Inpaint area"} & set(fields):
        without_mask.append(f"{path} was inpainted by the web UI through a mask its text does not hold: give it "
                            f"with --mask (and the picture with --init-image), or the whole picture is redrawn")


def parse_webui_hashes(text: str) -> dict[str, str]:
    """The web UI's "TI hashes" (or "Lora hashes") value as {name: short hash}; `infotext.webui_hashes` writes it.

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


# --- ComfyUI: the API-format graph in the picture's "prompt" text ---------------------------------------------------

_COMFY_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
_COMFY_DECODERS = ("VAEDecode", "VAEDecodeTiled")  # (tiled: the same decoder in pieces, for memory)
_COMFY_ENCODERS = ("CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner")
# the nodes whose effect the redraw has, read into its settings or named in a note of their own; any other node the
# saved picture comes from changes it in a way textinv does not apply, and is named
# what a node that only holds a value (core's PrimitiveString, a custom string or seed node) calls it
_COMFY_VALUE_NAMES = {"value", "text", "string", "prompt", "seed", "noise_seed", "int", "float", "number"}
_COMFY_READ = {"SaveImage", "PreviewImage", *_COMFY_DECODERS, *_COMFY_SAMPLER_NODES, *_COMFY_ENCODERS,
               "EmptyLatentImage", "CLIPSetLastLayer", "CheckpointLoaderSimple", "CheckpointLoader", "LoraLoader",
               "LoraLoaderModelOnly", "VAELoader", "Reroute"}


_EXIF_MODEL = 0x0110  # EXIF's Model tag, where ComfyUI's WebP saver (SaveAnimatedWEBP) writes "prompt:" + its graph


_EXIF_MAKE = 0x010F  # and its Make tag, where it writes "workflow:" + the editor's layout


def _comfy_exif(image) -> dict[str, str]:
    """The graph a ComfyUI WebP keeps in its EXIF Model tag ("prompt:{...}") and the layout in its Make tag
    ("workflow:{...}"), under the PNG text keys ComfyUI gives them in a PNG: {"prompt": graph, "workflow": layout},
    each where there is one."""
    exif, found = image.getexif(), {}
    for tag, key in ((_EXIF_MODEL, "prompt"), (_EXIF_MAKE, "workflow")):
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.startswith(key + ":{"):
            found[key] = value[len(key) + 1:]
    return found


def _json_object(text: str | None) -> Any:
    """`text` read as JSON (a picture's 'workflow'), None where it is none."""
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _from_comfy_file(path: Path) -> Picture:
    """A ComfyUI workflow saved as a file: its API format ("Save (API Format)") read as a picture's 'prompt' graph,
    its editor format ("Save") translated into that (`comfy_workflow.api_graph`). No picture gives the size drawn."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--again {path}: cannot read it as a ComfyUI workflow's JSON ({e})") from None
    if is_api_graph(data):
        return _from_comfyui(path, text, None)
    if is_editor_workflow(data):
        return _from_comfyui(path, json.dumps(api_graph(data, path)), None)
    raise ConfigError(f"--again {path} is no ComfyUI workflow: neither the editor's format (ComfyUI's \"Save\": "
                      f"\"nodes\" and \"links\") nor the API format (\"Save (API Format)\": each node by its id, with "
                      f"its \"class_type\" and \"inputs\"); give one of those, or a picture that textinv, the web UI "
                      f"or ComfyUI drew")


def comfy_graph(text: dict[str, str]) -> str | None:
    """The ComfyUI graph a picture's PNG text holds (its "prompt" text, a JSON object), None when it has none; an
    older textinv's "prompt" is its plain prompt (`read_picture` reads that first, by its "textinv_version")."""
    graph = text.get("prompt")
    return graph if isinstance(graph, str) and graph.lstrip().startswith("{") else None


Link = tuple[str, int]  # (node id, output index): where a ComfyUI input comes from


class _ComfyGraph:
    """A ComfyUI API-format graph, {node id: {"class_type": ..., "inputs": {...}}}, where an input another node gives
    is a link [node id, output index]. Links are followed back from the saved picture; the nodes only read for a value
    (a primitive holding the prompt) are kept apart from those the picture passed through (`passed`)."""

    def __init__(self, path: Path, nodes: dict[str, dict]):
        self.path, self.nodes = path, nodes
        self.value_nodes: set[str] = set()

    def link(self, value) -> Link | None:
        if (isinstance(value, list) and len(value) == 2 and str(value[0]) in self.nodes
                and isinstance(value[1], int) and not isinstance(value[1], bool)):
            return str(value[0]), value[1]
        return None

    def cls(self, node: str) -> str:
        return str(self.nodes[node].get("class_type", "?"))

    def named(self, node: str) -> str:
        custom = self.custom(node)
        return f"{custom.cls if custom else self.cls(node)} node {node}"

    def custom(self, node: str) -> _CustomSampling | None:
        """What a KSampler read from ComfyUI's custom sampling nodes was read from (`_lower_custom`); None for
        another node."""
        return self.nodes[node].get(_CUSTOM)

    def seed_input(self, sampler: str) -> str:
        """The name of a sampler node's seed input: KSamplerAdvanced's noise_seed, KSampler's seed."""
        return "noise_seed" if self.cls(sampler) == "KSamplerAdvanced" else "seed"

    def inputs(self, node: str) -> dict[str, Any]:
        inputs = self.nodes[node].get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def value(self, node: str, name: str, kinds: tuple[type, ...]):
        """Input `name` of `node` as a plain value of one of `kinds`, through links to nodes that only pass one value
        on (ComfyUI's Primitive nodes, a string or seed node, a reroute); None when it is not one."""
        value, seen = self.inputs(node).get(name), set()
        while (source := self.link(value)) is not None and source[0] not in seen:
            seen.add(source[0])
            self.value_nodes.add(source[0])
            given = self.inputs(source[0])
            if len(given) != 1:
                return None
            (key, value), = given.items()
            if self.link(value) is None and key.lower() not in _COMFY_VALUE_NAMES:
                return None  # (a node that reads its value from elsewhere: a text file's path is no prompt)
        return value if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds) else None

    def upstream(self, node: str, names: tuple[str, ...]) -> Link | None:
        """Where the data `node` passes on comes from: its first input of `names` that is a link, else its only
        link."""
        inputs = self.inputs(node)
        for name in names:
            if (source := self.link(inputs.get(name))) is not None:
                return source
        links = [source for value in inputs.values() if (source := self.link(value)) is not None]
        return links[0] if len(links) == 1 else None

    def chain(self, link: Link | None, names: tuple[str, ...]) -> list[str]:
        """The nodes a link passes back through, nearest first, following `names` (e.g. "model" through LoRA loaders
        to the checkpoint loader)."""
        nodes: list[str] = []
        while link is not None and link[0] not in nodes:
            nodes.append(link[0])
            link = self.upstream(link[0], names)
        return nodes

    def sampler_of(self, save: str) -> tuple[str | None, str | None, bool, str]:
        """(the sampler the picture a save node saves comes from (None: none textinv reads), its decoder, whether a
        node between them changed the picture's pixels or size, the last node reached)."""
        link, decoder, changed, last = self.upstream(save, ("images", "image")), None, False, save
        seen = {save}
        while link is not None and link[0] not in seen:
            last = link[0]
            seen.add(last)
            if self.cls(last) in _COMFY_SAMPLER_NODES:
                return last, decoder, changed, last
            if self.cls(last) in _COMFY_DECODERS and decoder is None:
                decoder, link = last, self.upstream(last, ("samples",))
                continue
            changed = True  # an upscaler, a face fixer, a latent upscale after the sampler, ...
            # (a sampler's latent_image is not followed: the picture comes from that sampler, which textinv lacks)
            names = ("samples", "latent") if decoder else ("image", "images", "pixels")
            link = self.upstream(last, names)
        return None, decoder, changed, last

    def latent_size(self, link: Link | None, seen: frozenset[str] = frozenset()
                    ) -> tuple[int, int, int, str] | None:
        """(width, height, batch size, the EmptyLatentImage's id) of the latent a sampler starts from, through other
        samplers and latent upscales (a hires pass); None when it starts from another (a picture's: img2img) or the
        links go round in a loop (an edited graph: ComfyUI runs none)."""
        if link is None or link[0] in seen:
            return None
        node, cls, ints = link[0], self.cls(link[0]), (int,)
        seen = seen | {node}
        if cls == "EmptyLatentImage":
            size = [self.value(node, name, ints) for name in ("width", "height", "batch_size")]
            return None if None in size else (*size, node)
        if cls in _COMFY_SAMPLER_NODES:
            return self.latent_size(self.link(self.inputs(node).get("latent_image")), seen)
        base = self.latent_size(self.link(self.inputs(node).get("samples")), seen)
        if base is None or cls not in ("LatentUpscale", "LatentUpscaleBy"):
            return None
        width, height, batch, empty = base
        if cls == "LatentUpscaleBy":  # as ComfyUI rounds it: in latent pixels, 8 picture pixels each
            scale = self.value(node, "scale_by", (int, float))
            return None if scale is None else (round(width / 8 * scale) * 8, round(height / 8 * scale) * 8, batch,
                                               empty)
        new_width, new_height = self.value(node, "width", ints), self.value(node, "height", ints)
        if new_width is None or new_height is None:
            return None
        if new_width == 0 and new_height == 0:
            return base
        if new_width == 0:  # 0: the other side's scale, keeping the shape
            new_width = round(width * new_height / height / 8) * 8
        elif new_height == 0:
            new_height = round(height * new_width / width / 8) * 8
        return new_width, new_height, batch, empty

    def prompt(self, link: Link | None) -> tuple[str | None, list[str], str]:
        """(the text, its text encoders' ids, "") of the conditioning a link carries, through nodes that pass one on
        (ControlNet's, a reroute: named as not applied where they change it); (None, [], why) when it is no text
        textinv can read.

        ComfyUI's ConditioningCombine joins its conditionings' lists, and its sampler averages the predictions of
        a list's k conditionings, cond = (1/k) sum_i cond_i (comfy/samplers.py: each one's output times its strength
        and area mask, 1 without them, over their sum), then guides uncond + cfg (cond - uncond). That is composable
        diffusion's uncond + sum_i w_i cfg (cond_i - uncond) at w_i = 1/k: the prompts joined by `AND` at 1/k
        each (`emphasis.composable_parts`; at weight 1 each it would guide k times as hard)."""
        parts, why = self._prompt_parts(link, [])
        if parts is None:
            return None, [], why
        # (ComfyUI reads AND as a word, textinv as composable diffusion: as `and`, the same tokens to CLIP)
        texts, encoders = [as_words(text) for text, _ in parts], [encoder for _, encoder in parts]
        if len(parts) == 1:
            return texts[0], encoders, ""
        return " AND ".join(f"{text}:{1 / len(parts):.12g}" for text in texts), encoders, ""

    def _prompt_parts(self, link: Link | None, seen: list[str], combine: str | None = None
                      ) -> tuple[list[tuple[str, str]] | None, str]:
        """([(text, its encoder's id), ...] a link's conditioning is made of (one; a ConditioningCombine's: each
        of its two inputs', in order), ""), or (None, why); `seen`: the nodes on the way here; `combine`: the
        ConditioningCombine whose input this is, where a node that changes a conditioning (an area, a strength, a
        step range: ComfyUI's prompt editing is two step ranges combined) makes it no plain average."""
        seen = list(seen)
        while link is not None and link[0] not in seen:
            node, index = link
            seen.append(node)
            if combine and self.cls(node) not in (*_COMFY_ENCODERS, "ConditioningCombine", "Reroute"):
                return None, (f"its {self.named(combine)} joins a conditioning that {self.named(node)} changed (an "
                              f"area, a strength, a step range), which textinv's AND does not draw")
            if self.cls(node) in _COMFY_ENCODERS:
                text = self.value(node, "text_g" if self.cls(node) == "CLIPTextEncodeSDXL" else "text", (str,))
                if text is None:
                    return None, f"the text of its {self.named(node)} comes from a node textinv cannot read"
                return [(text, node)], ""
            if self.cls(node) == "ConditioningZeroOut":  # (its text is not drawn: zeros are, which no text gives)
                return None, (f"its {self.named(node)} gives zeros, which textinv draws in place of a sampler's "
                              f"negative prompt alone (--zero-negative)")
            if self.cls(node) == "ConditioningCombine":
                parts: list[tuple[str, str]] = []
                for name in ("conditioning_1", "conditioning_2"):
                    more, why = self._prompt_parts(self.link(self.inputs(node).get(name)), seen, node)
                    if more is None:
                        return None, why
                    parts += more
                return parts, ""
            # (ControlNetApplyAdvanced passes both on: its output 0 is the positive, 1 the negative)
            link = self.upstream(node, ("conditioning", "positive" if index == 0 else "negative"))
        reached = f"reaches {self.named(seen[-1])}, not" if seen else "is not a link to"
        return None, f"it {reached} a text encoder textinv can follow it to"

    def passed(self, start: str) -> list[str]:
        """Every node the saved picture comes from, save the nodes only read for a value, in the graph's order."""
        found, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node in found or node in self.value_nodes:
                continue
            found.add(node)
            todo += [source[0] for value in self.inputs(node).values() if (source := self.link(value)) is not None]
        return [node for node in self.nodes if node in found]


def _from_comfyui(path: Path, text: str, picture_size: tuple[int, int] | None) -> Picture:
    """A picture ComfyUI saved: its settings read from the sampler the saved picture comes from and the nodes that
    sampler's inputs reach (the prompts' text encoders, the empty latent, the checkpoint, LoRA and VAE loaders, clip
    skip); what the graph holds beside them that changes the picture is named. `picture_size`: the saved picture's,
    None for a workflow file (`_from_comfy_file`)."""
    # 1. the graph, and the sampler the saved picture comes from
    graph = _parsed_comfy_graph(path, text)
    notes: list[str] = []
    save, sampler, decoder, changed = _comfy_saved(graph, picture_size, notes)
    decoded = graph.link(graph.inputs(decoder).get("samples")) if decoder else None
    if graph.custom(sampler) and decoded == (sampler, 1):
        notes.append(f"{path}: its ComfyUI picture is the denoised_output of {graph.named(sampler)}, the model's "
                     f"estimate at its last step, where textinv's is the sampler's output, so the redraw may differ")
    settings: dict[str, Any] = {"emphasis": "comfy"}  # (its CLIPTextEncode's prompt syntax and weighting)
    needs: dict[str, str] = {}
    # 2. its passes: a hires fix's two (the first's settings are the drawing's, the second's the hires fix's), or
    # an img2img's
    hires = _comfy_hires(graph, sampler, picture_size, changed, needs, notes)
    read, second = {sampler}, sampler
    _comfy_other_samplers(graph, sampler, hires, notes)
    if hires is not None:
        settings.update(hires.settings)
        read |= hires.read
        sampler = hires.first
    _comfy_drawing(graph, sampler, settings, needs)
    _comfy_custom_settings(graph, sampler, second if hires else None, settings, notes)
    # img2img: its steps counted as textinv's img2img counts them; drawn from the prompt alone, the sampler's own
    img2img = _comfy_img2img(graph, sampler, changed, notes) if hires is None else None
    if img2img is not None:
        settings.update(img2img.settings)
        read |= img2img.read
    elif hires is None:
        _comfy_partial(graph, sampler, notes)
    # 3. what the sampler's inputs reach: the prompts (and clip skip), the size, the model, LoRAs and VAE
    clip = _comfy_prompts(graph, sampler, settings, needs, notes, read)
    _comfy_size(graph, sampler, picture_size, changed, settings, notes)
    _comfy_sdxl_sizes(graph, save, settings, notes)
    unread = _comfy_model(graph, sampler, decoder, clip, settings, needs, notes)
    # 4. what else the saved picture passed through, named as not applied
    other = [graph.named(n) for n in graph.passed(save)
             if (graph.cls(n) not in _COMFY_READ and n not in read) or n in unread]
    if other:
        notes.append(f"{path}: not applied from its ComfyUI graph: {', '.join(other)} (textinv draws with the model, "
                     f"prompts, LoRAs and VAE alone), so the redraw is without them")
    if img2img is None:
        return Picture(path, "comfyui", _typed(path, settings), needs=needs, notes=notes)
    return Picture(path, "comfyui", _typed(path, settings), needs=needs, notes=notes,
                   without_init=img2img.without_init, text_only={"steps": img2img.own_steps, "denoise": None},
                   with_init=img2img.with_init)


def _parsed_comfy_graph(path: Path, text: str) -> _ComfyGraph:
    """The graph in a picture's ComfyUI 'prompt' text, checked to be one."""
    try:
        nodes = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--again {path}: its ComfyUI 'prompt' text is not JSON ({e}); the file was "
                          f"altered") from None
    if not isinstance(nodes, dict) or not all(isinstance(n, dict) for n in nodes.values()):
        raise ConfigError(f"--again {path}: its ComfyUI 'prompt' text holds no graph of nodes; the file was altered")
    graph = _ComfyGraph(path, {str(k): v for k, v in nodes.items()})
    _lower_custom(graph)
    return graph


# --- ComfyUI's custom sampling: SamplerCustom and SamplerCustomAdvanced, read as the KSampler that draws the same ----

_COMFY_CUSTOM = ("SamplerCustom", "SamplerCustomAdvanced")
_CUSTOM = "_textinv_custom"  # a lowered node's key: what it was read from (`_CustomSampling`)
_REFUSED = "_textinv_refused"  # a custom sampler's key that textinv cannot follow: why (`_comfy_saved` says it)
# SD's largest and smallest noise levels (ComfyUI's ModelSamplingDiscrete on the scaled_linear betas SD 1.x, 2.x and
# SDXL share), its KarrasScheduler's and ExponentialScheduler's defaults: the range textinv's _karras and _exponential
# span on those models
_SD_SIGMAS = (14.614642, 0.0291675)
# ComfyUI's sampler nodes with settings (comfy_extras/nodes_custom_sampler.py; SamplerTCD: its TCD sampler, whose eta
# is TCD's gamma): the KSampler sampler_name each runs, and its settings' defaults, as the KSampler runs that name
_COMFY_SAMPLER_OPTIONS = {
    "SamplerEulerAncestral": ("euler_ancestral", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerDPMPP_2S_Ancestral": ("dpmpp_2s_ancestral", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerDPMPP_SDE": ("dpmpp_sde", {"eta": 1.0, "s_noise": 1.0, "r": 0.5}),
    "SamplerDPMPP_2M_SDE": ("dpmpp_2m_sde", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerDPMPP_3M_SDE": ("dpmpp_3m_sde", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerLMS": ("lms", {"order": 4}),
    "SamplerTCD": ("tcd", {"eta": 0.3}),
}
# the samplers ComfyUI's KSampler runs on the schedule of one step more less its next-to-last sigma
# (comfy/samplers.py, DISCARD_PENULTIMATE_SIGMA_SAMPLERS), as textinv's dpm2 and dpm2_a do; a custom sampler runs them
# on the sigmas it is given
_COMFY_DISCARDING = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")


@dataclass
class _CustomSampling:
    """What a SamplerCustom or SamplerCustomAdvanced node draws, as textinv's settings."""

    cls: str  # the node's own class, which names it
    sampler: str | None  # textinv's sampler; None: none draws it (`why`)
    why: str  # what it draws that textinv does not ("" where `sampler` is one)
    settings: dict[str, Any]  # --eta and --sigma-noise where its sampler node's are not its defaults


def _lower_custom(graph: _ComfyGraph) -> None:
    """Nothing: each SamplerCustom and SamplerCustomAdvanced in `graph` is replaced by the KSampler that draws as it
    does (a KSamplerAdvanced where it adds no noise), so the hires fix, img2img, prompts, size, model and LoRAs are
    read from it as from a KSampler; its own class, textinv's sampler (or why none draws it) and --eta, --sigma-noise
    are kept beside it (`_CustomSampling`). One whose parts textinv cannot follow (a custom guider, noise or sigmas)
    keeps its type and says why (`_REFUSED`), where the saved picture comes from it (`_comfy_saved`).

    A custom sampler runs its sampler node on the sigmas its scheduler node gives, from the noise its noise node
    draws, guided by its guider (comfy_extras/nodes_custom_sampler.py): KSamplerSelect's sampler_name and
    BasicScheduler's scheduler, steps and denoise are a KSampler's; KarrasScheduler and ExponentialScheduler (and
    PolyexponentialScheduler at rho 1, which is exponential) over SD's whole noise range, Karras's at rho 7, are its
    karras and exponential schedulers; CFGGuider gives cfg and both prompts, BasicGuider the positive alone, which is
    cfg 1 (ComfyUI then skips the negative; so does diffusers at guidance 1); RandomNoise gives the seed, DisableNoise
    none (a pass over a latent it was given)."""
    for node in [n for n in graph.nodes if graph.cls(n) in _COMFY_CUSTOM]:
        lowered = _custom_as_ksampler(graph, node)
        if isinstance(lowered, str):
            graph.nodes[node] = {**graph.nodes[node], _REFUSED: lowered}
        else:
            graph.nodes[node] = lowered


class _Unfollowed(Exception):
    """A part of a custom sampler textinv cannot follow (`_custom_part`)."""


def _custom_part(graph: _ComfyGraph, node: str, name: str, kinds: tuple[str, ...]) -> str:
    """The node of `kinds` that input `name` of custom sampler `node` links to; raises `_Unfollowed` naming what it
    links to where that is none of them."""
    source = graph.link(graph.inputs(node).get(name))
    if source is not None and graph.cls(source[0]) in kinds:
        return source[0]
    what = graph.named(source[0]) if source is not None else "no node"
    raise _Unfollowed(f"its {name} comes from {what}, where textinv reads {' or '.join(kinds)}")


def _custom_as_ksampler(graph: _ComfyGraph, node: str) -> dict | str:
    """The KSampler (or KSamplerAdvanced) node that draws as custom sampler `node`, with its `_CustomSampling`; why
    textinv cannot follow it, where it cannot."""
    inputs = graph.inputs(node)
    try:
        if graph.cls(node) == "SamplerCustomAdvanced":
            guider = _custom_part(graph, node, "guider", ("CFGGuider", "BasicGuider"))
            noise = _custom_part(graph, node, "noise", ("RandomNoise", "DisableNoise"))
            given = graph.inputs(guider)
            basic = graph.cls(guider) == "BasicGuider"
            guided = {"model": given.get("model"), "positive": given.get("conditioning" if basic else "positive"),
                      "cfg": 1.0 if basic else given.get("cfg")}
            if not basic:
                guided["negative"] = given.get("negative")
            seed, add_noise = graph.inputs(noise).get("noise_seed"), graph.cls(noise) == "RandomNoise"
        else:
            guided = {name: inputs.get(name) for name in ("model", "positive", "negative", "cfg")}
            seed, add_noise = inputs.get("noise_seed"), graph.value(node, "add_noise", (bool,))
            if add_noise is None:
                raise _Unfollowed("its add_noise comes from a node textinv cannot read it from")
        sampler = _custom_part(graph, node, "sampler", ("KSamplerSelect", *_COMFY_SAMPLER_OPTIONS))
        sigmas = _custom_part(graph, node, "sigmas", ("BasicScheduler", "KarrasScheduler", "ExponentialScheduler",
                                                      "PolyexponentialScheduler", "SDTurboScheduler",
                                                      "BetaSamplingScheduler"))
    except _Unfollowed as e:
        return (f"--again {graph.path}: its ComfyUI {graph.named(node)} is custom sampling textinv cannot follow: {e}; "
                f"draw it with `textinv generate` and its settings as flags")
    name, options, why = _custom_sampler(graph, sampler)
    scheduler, steps, denoise, schedule_why = _custom_sigmas(graph, sigmas)
    ours, drawn = None, {}
    if not why and not schedule_why and name is not None and scheduler is not None:
        if name == "tcd":  # (textinv's tcd draws on the model's own spacing alone)
            ours = "tcd" if scheduler.lower() in EVEN_SPACINGS else None
        else:
            ours = from_comfy(name, scheduler)
        if ours is None:
            why = f"its sampler {name!r} on the {scheduler!r} schedule, which textinv does not have"
    if ours is not None:
        why, drawn = _custom_options(graph, sampler, ours, options)
        ours = None if why else ours
    custom = _CustomSampling(graph.cls(node), ours, why or schedule_why, drawn)
    shared = {**guided, "sampler_name": name, "scheduler": scheduler, "latent_image": inputs.get("latent_image")}
    if add_noise:
        return {"class_type": "KSampler", _CUSTOM: custom,
                "inputs": {**shared, "seed": seed, "steps": steps, "denoise": denoise}}
    # (no noise added: a pass over the latent it is given, ComfyUI's KSamplerAdvanced from the step its denoise
    # starts at, of the schedule BasicScheduler cut its sigmas from)
    run, part = graph.value(sigmas, "steps", (int,)), graph.value(sigmas, "denoise", (int, float))
    if run is None:
        return (f"--again {graph.path}: its ComfyUI {graph.named(node)} adds no noise, and its steps come from a node "
                f"textinv cannot read them from; draw it with `textinv generate` and its settings as flags")
    schedule = int(run / part) if part is not None and 0 < part <= 0.9999 else run
    return {"class_type": "KSamplerAdvanced", _CUSTOM: custom,
            "inputs": {**shared, "add_noise": "disable", "noise_seed": seed, "steps": schedule,
                       "start_at_step": schedule - run, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}


def _custom_sampler(graph: _ComfyGraph, node: str) -> tuple[str | None, dict[str, Any], str]:
    """(the KSampler sampler_name a custom sampler's sampler node runs, its settings by name, why textinv has no such
    sampler or ""): KSamplerSelect's name, or a sampler node's with its settings (`_COMFY_SAMPLER_OPTIONS`)."""
    if graph.cls(node) == "KSamplerSelect":
        name = graph.value(node, "sampler_name", (str,))
        if name in ("uni_pc", "uni_pc_bh2"):  # (`samplers.COMFY_UNLIKE`: textinv has no such sampler at all)
            return name, {}, (f"its sampler {name!r}, whose last step goes to sigma 0.001 where textinv's "
                              f"{name.replace('uni_pc', 'unipc')} steps to the model's smallest noise level "
                              f"({graph.named(node)})")
        if name in _COMFY_DISCARDING:
            return name, {}, (f"its sampler {name!r} on the sigmas it is given, where ComfyUI's KSampler, as textinv "
                              f"draws it, discards the next-to-last sigma ({graph.named(node)})")
        return name, {}, "" if name else f"a sampler name {graph.named(node)} takes from a node textinv cannot read"
    name, defaults = _COMFY_SAMPLER_OPTIONS[graph.cls(node)]
    if graph.cls(node) == "SamplerDPMPP_2M_SDE" and graph.value(node, "solver_type", (str,)) == "heun":
        name = "dpmpp_2m_sde_heun"
    options = {key: graph.value(node, key, (int, float)) for key in defaults}
    unread = [key for key, value in options.items() if value is None]
    if unread:
        return name, {}, f"its {graph.named(node)}'s {', '.join(unread)}, from a node textinv cannot read it from"
    return name, {key: value for key, value in options.items() if value != defaults[key]}, ""


def _custom_options(graph: _ComfyGraph, node: str, ours: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """("", the settings) of sampler node `node`'s `options` (those not at their defaults) where textinv's sampler
    `ours` draws them as ComfyUI does: its eta as --eta, its s_noise as --sigma-noise (k-diffusion's, both); else
    (why it does not, {})."""
    named = graph.named(node)
    if "eta" in options and ours == "tcd":
        return (f"its {named} at eta {options['eta']:g}, TCD's gamma, where textinv's tcd draws at gamma 0.3 "
                f"(ComfyUI's default) only"), {}
    if "eta" in options and not 0 <= options["eta"] <= 1:
        return f"its {named} at eta {options['eta']:g}, where textinv's --eta is 0 to 1", {}
    if "s_noise" in options and "noise" not in churn_taken(ours):
        return (f"its {named} at s_noise {options['s_noise']:g}, which textinv's {ours} does not take (--sigma-noise "
                f"scales the SDE samplers', dpm2_a's and dpm++2s_a's fresh noise)"), {}
    if "r" in options:
        return f"its {named} at r {options['r']:g}, where textinv's dpm++sde takes its midpoint at r 0.5 only", {}
    if "order" in options:
        return f"its {named} of order {options['order']}, where textinv's lms is of order 4 only", {}
    names = {"eta": "eta", "s_noise": "sigma_noise"}
    return "", {names[key]: float(value) for key, value in options.items()}


def _custom_sigmas(graph: _ComfyGraph, node: str) -> tuple[str | None, Any, Any, str]:
    """(the KSampler scheduler, steps and denoise whose sigmas a custom sampler's scheduler node gives, why textinv
    draws no such schedule or ""): BasicScheduler's own; KarrasScheduler's, ExponentialScheduler's and
    PolyexponentialScheduler's where they span SD's range (`_SD_SIGMAS`) as textinv's _karras (at rho 7) and
    _exponential (Polyexponential at rho 1) do."""
    cls, inputs, named = graph.cls(node), graph.inputs(node), graph.named(node)
    steps = inputs.get("steps")
    if cls == "BasicScheduler":
        return graph.value(node, "scheduler", (str,)), steps, inputs.get("denoise", 1.0), ""
    if cls in ("SDTurboScheduler", "BetaSamplingScheduler"):
        what = ("SD Turbo's timesteps (999, 899, ...: every 100th from the top)" if cls == "SDTurboScheduler" else
                "steps at beta quantiles of the model's timesteps (not the web UI's Beta, which textinv's _beta is)")
        return None, steps, 1.0, f"its {named}'s {what}, which no textinv schedule draws"
    scheduler = "karras" if cls == "KarrasScheduler" else "exponential"
    said = {name: graph.value(node, name, (int, float)) for name in ("sigma_max", "sigma_min", "rho") if
            name in inputs}
    wanted = {"sigma_max": _SD_SIGMAS[0], "sigma_min": _SD_SIGMAS[1]}
    wanted.update({"rho": 7.0} if cls == "KarrasScheduler" else {"rho": 1.0} if "rho" in said else {})
    if all(said.get(name) is not None and math.isclose(said[name], value, rel_tol=1e-5)
           for name, value in wanted.items()):
        return scheduler, steps, 1.0, ""
    given = ", ".join(f"{name} {value:.8g}" if value is not None else f"{name} (unread)" for name, value in
                      said.items())
    ours = ", ".join(f"{name} {value:.8g}" for name, value in wanted.items())
    return None, steps, 1.0, (f"its {named}'s sigmas at {given}, where textinv's _{scheduler} schedule spans the "
                              f"model's whole noise range (SD's, SDXL's: {ours})")


def _comfy_other_samplers(graph: _ComfyGraph, sampler: str, hires: _ComfyHires | None, notes: list[str]) -> None:
    """A note naming the samplers the saved picture does not come from (they are not applied)."""
    others = [n for n in graph.nodes if graph.cls(n) in _COMFY_SAMPLER_NODES and n != sampler
              and not (hires and n == hires.first)]
    if others:
        described = "; ".join(f"{graph.named(n)}: seed {graph.value(n, graph.seed_input(n), (int,))}, "
                              f"{graph.value(n, 'steps', (int,))} steps" for n in others)
        first = f", and its hires fix's first pass {graph.named(hires.first)}, which are" if hires else " and which is"
        notes.append(f"{graph.path}: its ComfyUI graph has other samplers than {graph.named(sampler)}, which the "
                     f"saved picture comes from{first} read: {described} (not applied)")


def _comfy_drawing(graph: _ComfyGraph, sampler: str, settings: dict[str, Any], needs: dict[str, str]) -> None:
    """The sampler's seed, steps and guidance (or what it needs given, where another node gives them), and its
    sampler and schedule (`_comfy_sampler`)."""
    named = graph.named(sampler)
    for name, setting, kinds in ((graph.seed_input(sampler), "seed", (int,)), ("steps", "steps", (int,)),
                                 ("cfg", "guidance", (int, float))):
        value = graph.value(sampler, name, kinds)
        if value is None:
            needs[setting] = (f"--again {graph.path}: its ComfyUI {named} takes its {name} from a node textinv cannot "
                              f"read it from: give it with --{setting}")
        else:
            settings[setting] = value
    _comfy_sampler(graph, sampler, False, settings, needs)


def _comfy_custom_settings(graph: _ComfyGraph, sampler: str, second: str | None, settings: dict[str, Any],
                           notes: list[str]) -> None:
    """A custom sampler's --eta and --sigma-noise into `settings` (`_CustomSampling`), and a hires fix's second
    pass's (`second`) where the first's sampler takes none (one --eta is the first pass's, else the hires pass's:
    `samplers.eta_of`); `notes` say where textinv draws the second pass at others than ComfyUI did."""
    custom, other = graph.custom(sampler), graph.custom(second) if second else None
    drawn = dict(custom.settings) if custom else {}
    given = other.settings if other else {}
    drawn.update((key, value) for key, value in given.items()
                 if key not in drawn and not _takes(settings.get("sampler"), key))
    settings.update(drawn)
    hires = {key: value for key, value in drawn.items()
             if _takes(settings.get("hires_sampler", settings.get("sampler")), key)}
    if second and hires != given:
        def said(values: dict[str, Any]) -> str:
            return ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in values.items()) or "its defaults"

        notes.append(f"{graph.path}: its ComfyUI hires fix's second pass ({graph.named(second)}) draws at "
                     f"{said(given)}, where textinv's --eta and --sigma-noise, one for both passes, draw it at "
                     f"{said(hires)}")


def _takes(sampler: str | None, setting: str) -> bool:
    """Whether textinv's `sampler` takes `setting` as a ComfyUI sampler node's: --eta as k-diffusion's eta (the web
    UI's Eta, not DDIM's), --sigma-noise as its s_noise."""
    if not sampler:
        return False
    return eta_label(sampler) == "Eta" if setting == "eta" else "noise" in churn_taken(sampler)


def _comfy_prompts(graph: _ComfyGraph, sampler: str, settings: dict[str, Any], needs: dict[str, str],
                   notes: list[str], read: set[str]) -> list[str]:
    """The sampler's positive and negative prompts (or what it needs given), and the clip skip of the CLIP that
    encodes the positive one; returns that CLIP's chain of nodes (its LoRAs are read from it)."""
    path, named, inputs = graph.path, graph.named(sampler), graph.inputs(sampler)
    clip: list[str] = []
    for side, setting in (("positive", "prompt"), ("negative", "negative_prompt")):
        link = graph.link(inputs.get(side))
        if side == "negative" and graph.custom(sampler) and "negative" not in inputs:
            settings["negative_prompt"] = ""  # (a BasicGuider's: cfg 1, which draws none)
            continue
        if side == "negative" and link is not None and graph.cls(link[0]) == "ConditioningZeroOut":
            settings["negative_prompt"], settings["zero_negative"] = "", True  # (zeros, on any model)
            read.add(link[0])
            continue
        prompt, encoders, why = graph.prompt(link)
        if prompt is not None and side == "negative" and len(encoders) > 1:
            prompt, why = None, (f"it combines {len(encoders)} prompts (ConditioningCombine), whose predictions "
                                 f"ComfyUI averages; textinv's negative prompt is one text")
        if prompt is None:
            needs[setting] = (f"--again {path}: the {side} prompt of its ComfyUI {named} is no text textinv can read "
                              f"({why}): give it with --{setting.replace('_', '-')}")
            continue
        settings[setting] = [prompt] if setting == "prompt" else prompt
        _comfy_clip_l(graph, encoders, side, settings, needs, notes)
        if side == "positive":
            # (a ConditioningCombine it went through is drawn, as AND: not named as not applied)
            read.update(n for n in graph.passed(graph.link(inputs[side])[0]) if graph.cls(n) == "ConditioningCombine")
            clips = [graph.inputs(encoder).get("clip") for encoder in encoders]
            if any(other != clips[0] for other in clips[1:]):
                notes.append(f"{path}: its combined prompts are encoded by other CLIPs (another clip skip or LoRA "
                             f"on one: {', '.join(map(graph.named, encoders))}); textinv encodes every prompt with "
                             f"one: the first's, {graph.named(encoders[0])}'s")
            clip = graph.chain(graph.link(clips[0]), ("clip",))
            skip = _comfy_clip_skip(graph, clip, needs, notes)
            if skip is not None:
                settings["clip_skip"] = skip
    return clip


def _comfy_clip_l(graph: _ComfyGraph, encoders: list[str], side: str, settings: dict[str, Any],
                  needs: dict[str, str], notes: list[str]) -> None:
    """A CLIPTextEncodeSDXL's text_l where it is not its text_g (which is the prompt): SDXL's CLIP-L text of that
    side (`--prompt-l`, `--negative-prompt-l`), as it encodes it; asked for where a node gives it that textinv cannot
    read, and said where it is one of several combined prompts (textinv's CLIP-L text is one a prompt)."""
    setting, flag = ("prompt_l", "--prompt-l") if side == "positive" else ("negative_prompt_l", "--negative-prompt-l")
    for encoder in (e for e in encoders if graph.cls(e) == "CLIPTextEncodeSDXL"):
        text_g, text_l = (graph.value(encoder, name, (str,)) for name in ("text_g", "text_l"))
        if text_l is None and graph.link(graph.inputs(encoder).get("text_l")) is not None:
            needs[setting] = (f"--again {graph.path}: the text_l of its {graph.named(encoder)} comes from a node "
                              f"textinv cannot read: give it with {flag}")
        elif text_l is not None and text_l.strip() != text_g.strip() and len(encoders) > 1:
            notes.append(f"{graph.path}: its {graph.named(encoder)} gives SDXL's CLIP-L the {side} text {text_l!r} "
                         f"apart from its text_g, one of {len(encoders)} combined prompts; textinv gives CLIP-L a "
                         f"prompt's text_g there")
        elif text_l is not None and text_l.strip() != text_g.strip():
            settings[setting] = as_words(text_l)  # (the same tokens as AND to CLIP, as its text_g)


def _comfy_size(graph: _ComfyGraph, sampler: str, picture_size: tuple[int, int] | None, changed: bool,
                settings: dict[str, Any], notes: list[str]) -> None:
    """The size the sampler drew at: its empty latent's, else the saved picture's where nothing resized it."""
    path, named = graph.path, graph.named(sampler)
    size = graph.latent_size(graph.link(graph.inputs(sampler).get("latent_image")))
    if size is not None:
        settings["width"], settings["height"], batch, empty = size
        if batch > 1:
            notes.append(f"{path} is one of a batch of {batch} ({graph.named(empty)}): ComfyUI draws a batch's "
                         f"noise from one seed, so the seed draws the batch's first picture again; the others have no "
                         f"seed of their own")
    elif not changed and picture_size is not None:  # the decoder's picture as saved: the size the sampler drew at
        settings["width"], settings["height"] = picture_size
    elif "width" not in settings:  # (an img2img's scale node gave it)
        after = "a workflow file holds no picture" if picture_size is None else "the picture was resized after"
        notes.append(f"{path}: its ComfyUI graph does not say the size {named} drew at (it did not start from an "
                     f"EmptyLatentImage, and {after}): give --width and --height")


def _comfy_sdxl_sizes(graph: _ComfyGraph, save: str, settings: dict[str, Any], notes: list[str]) -> None:
    """A note for each CLIPTextEncodeSDXL that told SDXL another size than the one drawn: its width, height, crop
    and target size are SDXL's size conditioning ("time ids"), which textinv sets to the size drawn, no crop."""
    drawn = (settings.get("width"), settings.get("height"))
    for node in graph.passed(save):
        if graph.cls(node) != "CLIPTextEncodeSDXL":
            continue
        said = [graph.value(node, name, (int,)) for name in ("width", "height", "crop_w", "crop_h", "target_width",
                                                             "target_height")]
        if said != [*drawn, 0, 0, *drawn]:
            notes.append(f"{graph.path}: its {graph.named(node)} tells SDXL an original size of {said[0]}x{said[1]}, "
                         f"a crop at ({said[2]}, {said[3]}) and a target size of {said[4]}x{said[5]}; textinv tells "
                         f"it the size drawn, {drawn[0]}x{drawn[1]}, and no crop, so the redraw differs")


def _comfy_model(graph: _ComfyGraph, sampler: str, decoder: str | None, clip: list[str], settings: dict[str, Any],
                 needs: dict[str, str], notes: list[str]) -> list[str]:
    """The model (always needed given: ComfyUI names it as its own folder does), the LoRAs on it and on `clip` (as
    tags added to the prompt) and a VAE loaded beside the checkpoint; returns the LoRA nodes not read."""
    path = graph.path
    model = graph.chain(graph.link(graph.inputs(sampler).get("model")), ("model",))
    loaded = [(what, graph.value(model[-1], key, (str,))) for key, what in
              (("ckpt_name", "checkpoint"), ("unet_name", "diffusion model"))] if model else []
    model_named = next((f"{what} {name}" for what, name in loaded if name), "its model is not named")
    needs["model"] = (f"--again {path} was drawn by ComfyUI ({model_named}); textinv cannot find a model by ComfyUI's "
                      f"name: give it with --model (its file or folder)")
    tags, unread = _comfy_loras(graph, model, clip)
    if tags:
        if "prompt" in settings:
            settings["prompt"] = [settings["prompt"][0] + " " + " ".join(tags)]
        added = "added to its prompt" if "prompt" in settings else "(write them in the --prompt given)"
        notes.append(f"{path}: its LoRAs are drawn by the tags {' '.join(tags)} {added}, with ComfyUI's strength_clip "
                     f"(then strength_model where it differs) as multipliers; give --lora-dir with the folder that "
                     f"holds them (ComfyUI's models/loras); a --prompt given instead has them only if it writes them")
    vae = graph.link(graph.inputs(decoder).get("vae")) if decoder else None
    if vae is not None and graph.cls(vae[0]) == "VAELoader":
        notes.append(f"{path} was decoded with ComfyUI's VAE {graph.value(vae[0], 'vae_name', (str,))} "
                     f"({graph.named(vae[0])}), not its checkpoint's: give it with --vae (its file or folder)")
    return unread


def _comfy_saved(graph: _ComfyGraph, size: tuple[int, int] | None, notes: list[str]
                ) -> tuple[str, str, str | None, bool]:
    """(the save node, the sampler its picture comes from, their decoder, whether a node between them changed the
    picture). Of save nodes leading to several samplers, the one whose size is the picture's, else the last, said in
    `notes`. A graph with none textinv can follow is refused."""
    consumed = {source[0] for n in graph.nodes for v in graph.inputs(n).values() if (source := graph.link(v))}
    saves = ([n for n in graph.nodes if graph.cls(n) == "SaveImage"]
             or [n for n in graph.nodes if graph.cls(n) == "PreviewImage"]
             # (a custom node's saver: what takes pictures and gives nothing on)
             or [n for n in graph.nodes if graph.link(graph.inputs(n).get("images")) and n not in consumed])
    found, reached = [], []
    for save in saves:
        sampler, decoder, changed, last = graph.sampler_of(save)
        if sampler is None:
            reached.append(last)
        else:
            found.append((save, sampler, decoder, changed))
    refused = [graph.nodes[n][_REFUSED] for n in reached if _REFUSED in graph.nodes[n]]
    if not found and refused:
        raise ConfigError(refused[0])
    if not found:
        where = (f"its saved picture comes from {', '.join(map(graph.named, reached))}" if reached
                 else "it has no SaveImage or PreviewImage node")
        raise ConfigError(f"--again {graph.path}: textinv reads the KSampler, KSamplerAdvanced, SamplerCustom or "
                          f"SamplerCustomAdvanced a ComfyUI picture comes from, and {where}, not such a sampler: draw "
                          f"it with `textinv generate` and its settings as flags")
    chosen = found[-1]
    if len({f[1] for f in found}) > 1:
        fits = [f for f in found if not f[3] and (drawn := graph.latent_size(graph.link(graph.inputs(f[1]).get(
            "latent_image")))) is not None and drawn[:2] == size]
        chosen = fits[-1] if fits else chosen
        notes.append(f"{graph.path}: its ComfyUI graph saves the pictures of {len({f[1] for f in found})} samplers; "
                     f"read as {graph.named(chosen[1])}'s{', its size the picture' + chr(39) + 's' if fits else ''}: "
                     f"give another's settings as flags if it drew this one")
    return chosen


def _comfy_partial(graph: _ComfyGraph, sampler: str, notes: list[str]) -> None:
    """Note a sampler that refined a latent it was given (img2img, a hires pass, an SDXL refiner's last steps):
    textinv draws from noise with all its steps, so the redraw is another picture."""
    named = graph.named(sampler)
    if _comfy_full(graph, sampler):
        return
    if graph.cls(sampler) == "KSampler":
        denoise = graph.value(sampler, "denoise", (int, float))
        how = f"with denoise {denoise}" if denoise is not None else "with a denoise textinv cannot read"
    else:
        start = graph.value(sampler, "start_at_step", (int,))
        end, steps = graph.value(sampler, "end_at_step", (int,)), graph.value(sampler, "steps", (int,))
        noise = graph.value(sampler, "add_noise", (str,))
        how = f"from step {start} to {end} of {steps}{' without adding noise' if noise == 'disable' else ''}"
    notes.append(f"{graph.path} was drawn by ComfyUI's {named} {how}: it refined a picture it was given (img2img, "
                 f"or a pass over another sampler's), and textinv draws it from noise (text to image), so the redraw "
                 f"is another picture")


# ComfyUI's upscale_method as textinv's --hires-upscaler: for latents (LatentUpscale, LatentUpscaleBy) and for
# pictures (ImageScale, ImageScaleBy). textinv has the web UI's upscalers; a method it lacks reads as the nearest it
# has, which is said. (torch's "area" enlarging by a whole factor averages one latent a pixel: nearest's; "bislerp" is
# bilinear along arcs.)
_COMFY_LATENT_METHODS = {"bilinear": "latent", "bicubic": "latent-bicubic", "nearest-exact": "latent-nearest-exact",
                         "area": "latent-nearest", "bislerp": "latent"}
_COMFY_PICTURE_METHODS = {"lanczos": "lanczos", "nearest-exact": "nearest", "area": "nearest", "bilinear": "lanczos",
                          "bicubic": "lanczos"}
# (the methods textinv has as they are, the rest read as the nearest)
_COMFY_SAME_METHODS = {"latent": {"bilinear", "bicubic", "nearest-exact"}, "picture": {"lanczos", "nearest-exact"}}
_COMFY_PICTURE_SCALERS = ("ImageScale", "ImageScaleBy", "ImageUpscaleWithModel")


@dataclass
class _ComfyHires:
    """A ComfyUI graph's hires fix, as textinv's settings."""

    first: str  # the first pass's sampler, whose settings are the drawing's
    settings: dict[str, Any]  # denoise and the hires_* settings
    read: set[str]  # the nodes read into them: the first sampler, the upscalers, VAEEncode, ...


def _comfy_hires(graph: _ComfyGraph, second: str, size: tuple[int, int] | None, changed: bool, needs: dict[str, str],
                 notes: list[str]) -> _ComfyHires | None:
    """The web UI's hires fix a ComfyUI graph drew, read into textinv's settings: a first sampler from an
    EmptyLatentImage, its latent enlarged (LatentUpscale, LatentUpscaleBy) or its picture (VAEDecode, then
    ImageScale, ImageScaleBy or ImageUpscaleWithModel, then VAEEncode), redrawn by `second` (the sampler the saved
    picture of `size` comes from; `changed`: resized after it) over the last of a longer schedule. None when the graph
    is not of that shape: `second` is then read alone, as a picture it refined (`_comfy_partial`).

    ComfyUI's KSampler at denoise d runs its `steps` as the last of a schedule int(steps / d) long
    (comfy/samplers.py, KSampler.set_steps), as the web UI counts its Hires steps (`refine.pass_steps`): its steps
    are --hires-steps and its denoise --denoise. KSamplerAdvanced's start_at_step s of `steps` is the same pass of
    steps - s, its denoise the one whose schedule is `steps` long."""
    redraw = _comfy_refine(graph, second)
    link = graph.link(graph.inputs(second).get("latent_image"))
    upscaled = _comfy_upscaled(graph, link) if redraw is not None and link is not None else None
    if upscaled is None:
        return None
    scalers, passed, enlarged, link = upscaled
    first_pass = _comfy_first_pass(graph, link)
    if first_pass is None:
        return None
    first, (width, height) = first_pass
    target = _comfy_hires_target(graph, scalers, enlarged, (width, height), None if changed else size)
    if target is None:
        return None  # (a pass at the first's size or smaller is no hires fix textinv draws)
    read = {second, *passed}
    settings = {"hires_steps": redraw[0], "denoise": redraw[1]}
    settings.update(_comfy_hires_size(graph, scalers, (width, height), target, notes))
    settings["hires_upscaler"] = _comfy_upscaler(graph, scalers, read, notes)
    read |= {first, *scalers}
    pairs = [(graph.value(n, "sampler_name", (str,)), graph.value(n, "scheduler", (str,))) for n in (first, second)]
    if graph.custom(first) or graph.custom(second):  # (a custom pass: the samplers textinv draws them with)
        pairs = [_comfy_drawn_by(graph, n, pair) for n, pair in zip((first, second), pairs)]
    if pairs[1] != pairs[0]:
        _comfy_sampler(graph, second, True, settings, needs)
    _note_comfy_passes_differ(graph, first, second, notes)
    return _ComfyHires(first, settings, read)


def _comfy_drawn_by(graph: _ComfyGraph, node: str, pair: tuple[Any, Any]) -> Any:
    """The sampler textinv draws a sampler node's pass with, else why it has none (a custom sampler's), else its
    ComfyUI `pair` (sampler_name, scheduler)."""
    custom = graph.custom(node)
    if custom:
        return custom.sampler or custom.why
    return (all(pair) and from_comfy(*pair)) or pair


def _comfy_upscaled(graph: _ComfyGraph, link: Link) -> tuple[list[str], list[str], tuple | None, Link | None] | None:
    """(`link`'s upscalers, VAEEncode and decoder, a latent upscale's size, the link they enlarge), or None: none."""
    if graph.cls(link[0]) in ("LatentUpscale", "LatentUpscaleBy"):
        return [link[0]], [], graph.latent_size(link), graph.link(graph.inputs(link[0]).get("samples"))
    if graph.cls(link[0]) != "VAEEncode":
        return None
    scalers, passed = [], [link[0]]
    link = graph.link(graph.inputs(link[0]).get("pixels"))
    while link is not None and graph.cls(link[0]) in _COMFY_PICTURE_SCALERS and link[0] not in scalers:
        scalers.insert(0, link[0])
        link = graph.link(graph.inputs(link[0]).get("image"))
    if not scalers or link is None or graph.cls(link[0]) not in _COMFY_DECODERS:
        return None
    passed.append(link[0])
    return scalers, passed, None, graph.link(graph.inputs(link[0]).get("samples"))


def _comfy_first_pass(graph: _ComfyGraph, link: Link | None) -> tuple[str, tuple[int, int]] | None:
    """(the sampler `link` comes from, its EmptyLatentImage's (width, height)), or None where it is no first pass."""
    if link is None or graph.cls(link[0]) not in _COMFY_SAMPLER_NODES or not _comfy_full(graph, link[0]):
        return None
    empty = graph.link(graph.inputs(link[0]).get("latent_image"))
    start = graph.latent_size(empty) if empty is not None and graph.cls(empty[0]) == "EmptyLatentImage" else None
    return None if start is None else (link[0], start[:2])


def _comfy_hires_target(graph: _ComfyGraph, scalers: list[str], enlarged: tuple | None, start: tuple[int, int],
                        size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (width, height) `scalers` enlarge the first pass's `start` to, in whole latents; None where no larger."""
    if graph.cls(scalers[0]) in ("LatentUpscale", "LatentUpscaleBy"):
        target = enlarged and enlarged[:2]
    else:
        target = _comfy_picture_enlarged(graph, scalers, start, size)
    target = target and (target[0] // 8 * 8, target[1] // 8 * 8)  # (in whole latents, as ComfyUI's VAE takes it)
    if not target or target[0] < start[0] or target[1] < start[1] or target == start:
        return None
    return target


def _note_comfy_passes_differ(graph: _ComfyGraph, first: str, second: str, notes: list[str]) -> None:
    """Nothing: `notes` get what the hires pass `second` draws otherwise than `first` (textinv draws the first's)."""
    path = graph.path
    seeds = [graph.value(n, graph.seed_input(n), (int,)) for n in (first, second)]
    if seeds[0] != seeds[1]:
        notes.append(f"{path}: its ComfyUI hires fix draws its second pass's noise from seed {seeds[1]} "
                     f"({graph.named(second)}), its first's from {seeds[0]}; textinv draws both passes from one seed, "
                     f"the first's, so expect the finer detail to differ")
    differ = [what for name, what in (("cfg", "cfg"), ("positive", "positive prompt"),
                                      ("negative", "negative prompt"), ("model", "model"))
              if _comfy_given(graph, first, name) != _comfy_given(graph, second, name)]
    if differ:
        notes.append(f"{path}: its ComfyUI hires fix's second pass ({graph.named(second)}) has another "
                     f"{', '.join(differ)} than its first ({graph.named(first)}); textinv redraws with the first's")


@dataclass
class _ComfyImg2Img:
    """A ComfyUI graph's img2img, as textinv's settings."""

    settings: dict[str, Any]  # steps and denoise, counted as textinv's img2img counts them; a size ComfyUI scaled to
    own_steps: int  # the sampler's own steps: what a redraw from the prompt alone runs
    read: set[str]  # the nodes read into them: LoadImage, its scale nodes, VAEEncode
    without_init: list[str]  # said when it is drawn without --init-image
    with_init: list[str]  # said when it is drawn from one


_COMFY_PIXEL_ENCODERS = ("VAEEncode", "VAEEncodeTiled")  # (tiled: the same encoder in pieces, for memory)


def _comfy_img2img(graph: _ComfyGraph, sampler: str, changed: bool, notes: list[str]) -> _ComfyImg2Img | None:
    """The img2img a ComfyUI graph drew, read into textinv's settings: LoadImage (through ImageScale or ImageScaleBy),
    VAEEncode, then `sampler` over the last of a schedule, the seed's noise added (`_comfy_schedule`); `changed`: the
    saved picture was resized after it. None when the graph is not of that shape.

    ComfyUI runs a KSampler's `steps` at denoise d as the last of a schedule int(steps / d) long, as the web UI counts
    Hires steps; textinv's img2img, as the web UI's, runs int(denoise x steps) + 1 of --steps (`refine.pass_steps`).
    So the same pass is --steps int(steps / d) at a --denoise that runs `steps` of them: d itself where it does (0.6
    of 20: 20 of 33), else the shortest that does (0.5 of 20: 20 of 40, --denoise 0.48), said where none does; on
    ComfyUI's ddim_uniform at a schedule it draws more steps of, as many fewer (`_comfy_from_the_end`)."""
    counted = _comfy_schedule(graph, sampler)
    link = graph.link(graph.inputs(sampler).get("latent_image"))
    if counted is None or link is None or graph.cls(link[0]) not in _COMFY_PIXEL_ENCODERS:
        return None
    encoder, scalers = link[0], []
    link = graph.link(graph.inputs(encoder).get("pixels"))
    while link is not None and graph.cls(link[0]) in ("ImageScale", "ImageScaleBy") and link[0] not in scalers:
        scalers.insert(0, link[0])
        link = graph.link(graph.inputs(link[0]).get("image"))
    if link is None or graph.cls(link[0]) != "LoadImage":
        return None
    loader, (schedule, run) = link[0], counted
    given = graph.value(sampler, "denoise", (int, float)) if graph.cls(sampler) == "KSampler" else None
    path, named, name = graph.path, graph.named(sampler), graph.value(loader, "image", (str,))
    # (ComfyUI's last `run` of the schedule: fewer of it, as textinv counts, where its ddim_uniform draws more)
    ours = _comfy_from_the_end(graph, sampler, schedule, run) if given is not None and run < schedule else run
    if ours < 1:
        ours = run
        notes.append(f"{path}: its ComfyUI {named} ran the last {run} of the {_comfy_drawn(graph, sampler, schedule)} "
                     f"steps its ddim_uniform draws on a schedule of {schedule}; textinv's img2img, as the web UI's, "
                     f"runs that schedule's steps from int(--denoise x --steps) + 1 before its end on, so it draws "
                     f"{_comfy_drawn(graph, sampler, schedule) - schedule + run} of them")
    denoise = _img2img_denoise(schedule, ours, given)
    if denoise is None:
        denoise = given if given is not None else run / schedule
        notes.append(f"{path}: its ComfyUI {named} ran the last {run} steps of a schedule of {schedule}; textinv's "
                     f"img2img runs int(--denoise x --steps) + 1 of --steps (at most 0.999 of them, as the web UI), "
                     f"and no --denoise runs {ours} of {schedule}: read as --steps {schedule} --denoise {denoise:g}, "
                     f"which runs {pass_steps(schedule, denoise, hires=False)[1]}")
    settings: dict[str, Any] = {"steps": schedule, "denoise": denoise}
    last = scalers[-1] if scalers else None
    sides = ([graph.value(last, side, (int,)) for side in ("width", "height")]
             if last is not None and graph.cls(last) == "ImageScale" else [None, None])  # (0: the other's scale)
    if changed and all(sides):  # (the saved picture was resized after: the size ComfyUI drew at is the scale node's)
        settings["width"], settings["height"] = (side // 8 * 8 for side in sides)
    with_init = []
    if all(sides) and graph.value(last, "crop", (str,)) == "disabled":
        with_init.append(f"{path}: ComfyUI stretched its picture {name!r} to {sides[0]}x{sides[1]} "
                         f"({graph.named(last)}); textinv cuts --init-image to the drawing's proportions from the "
                         f"middle, then resizes it, so a picture of other proportions is redrawn unstretched")
    what = f"the picture {name!r}" if name else "a picture"
    without_init = [f"{path} was drawn by ComfyUI's img2img from {what} ({graph.named(loader)}), which its graph "
                    f"names but does not hold: give that picture with --init-image, or it is drawn from the prompt "
                    f"alone, with the {run} steps of {named}"]
    return _ComfyImg2Img(settings, run, {loader, encoder, *scalers}, without_init, with_init)


def _comfy_schedule(graph: _ComfyGraph, sampler: str) -> tuple[int, int] | None:
    """(the schedule's steps, the steps run: its last ones) of a sampler that adds the seed's noise to the latent it
    is given and runs to the schedule's end, as ComfyUI counts them: KSampler's `steps` of int(steps / denoise) (all
    of them above a denoise of 0.9999), KSamplerAdvanced's steps - start_at_step of `steps`. None for any other."""
    steps = graph.value(sampler, "steps", (int,))
    if steps is None or steps < 1:
        return None
    if graph.cls(sampler) == "KSampler":
        denoise = graph.value(sampler, "denoise", (int, float))
        if denoise is None or not 0 < denoise <= 1:
            return None
        return (steps, steps) if denoise > 0.9999 else (int(steps / denoise), steps)
    start = _advanced_start(graph, sampler, steps)
    return None if start is None else (steps, steps - start)


def _comfy_from_the_end(graph: _ComfyGraph, sampler: str, schedule: int, steps: int) -> int:
    """The steps textinv's pass runs of a `schedule`-step schedule for KSampler `sampler`'s last `steps` of it:
    ComfyUI takes a pass at a denoise below 1 as the schedule's last steps + 1 sigmas (comfy/samplers.py,
    KSampler.set_steps), textinv (as the web UI: sigmas[steps - t_enc - 1:]) its sigmas from step schedule - run on.
    Those are the same steps where the schedule holds `schedule`; where ComfyUI's ddim_uniform draws more
    (`_comfy_drawn`: 29 at 28), textinv runs as many fewer of `schedule` to draw ComfyUI's last `steps` (19 of 28
    for ComfyUI's 20 at denoise 0.7); 0 or fewer where none does."""
    return steps - (_comfy_drawn(graph, sampler, schedule) - schedule)


def _comfy_drawn(graph: _ComfyGraph, sampler: str, schedule: int) -> int:
    """The steps ComfyUI's KSampler `sampler` draws on a schedule of `schedule` (`samplers.drawn_steps`)."""
    pair = graph.value(sampler, "sampler_name", (str,)), graph.value(sampler, "scheduler", (str,))
    name = all(pair) and from_comfy(*pair)
    return drawn_steps(name, schedule) if name else schedule


def _advanced_start(graph: _ComfyGraph, sampler: str, steps: int) -> int | None:
    """The start_at_step of a KSamplerAdvanced (`steps` long) that adds the seed's noise and runs from there to the
    schedule's end, else None."""
    start, end = graph.value(sampler, "start_at_step", (int,)), graph.value(sampler, "end_at_step", (int,))
    if graph.value(sampler, "add_noise", (str,)) != "enable" or start is None or end is None or not (
            0 <= start < steps <= end):
        return None
    return start


def _img2img_denoise(schedule: int, run: int, given: float | None) -> float | None:
    """The --denoise at which textinv's img2img of --steps `schedule` runs `run` of them (`refine.pass_steps`):
    `given` where it does, else the one of fewest digits; None when none does.

    >>> _img2img_denoise(33, 20, 0.6), _img2img_denoise(40, 20, 0.5), _img2img_denoise(10, 6, None)
    (0.6, 0.48, 0.5)
    """
    lowest = (run - 1) / schedule  # (int(denoise x schedule) must be run - 1)
    tries = ([given] if given is not None else []) + ([1.0] if run == schedule else [])  # (1: all of them)
    tries += [max(math.ceil(lowest * 10 ** digits - 1e-9), 1) / 10 ** digits for digits in range(1, 8)]
    return next((d for d in tries if 0 < d <= 1 and pass_steps(schedule, d, hires=False) == (schedule, run)), None)


def _comfy_sampler(graph: _ComfyGraph, node: str, hires: bool, settings: dict[str, Any],
                   needs: dict[str, str]) -> None:
    """A ComfyUI sampler node's sampler_name and scheduler into `settings` as textinv's sampler (`hires`: the hires
    fix's second pass, its --hires-sampler), or into `needs` when textinv has none such (`_a1111_sampler`'s twin)."""
    name = "hires_sampler" if hires else "sampler"
    sampler_name, scheduler = graph.value(node, "sampler_name", (str,)), graph.value(node, "scheduler", (str,))
    custom = graph.custom(node)
    ours = custom.sampler if custom else from_comfy(sampler_name, scheduler) if sampler_name and scheduler else None
    if ours:
        settings[name] = ours
        return
    if custom:
        needs[name] = (f"--again {graph.path} was {'redrawn by its hires fix' if hires else 'drawn'} by ComfyUI's "
                       f"{graph.named(node)} with {custom.why}: choose a sampler with --{name.replace('_', '-')} "
                       f"(textinv generate --help lists them){'' if hires else ', or default'}")
        return
    unlike = f" ({sampler_name}: {COMFY_UNLIKE[sampler_name]})" if sampler_name in COMFY_UNLIKE else ""
    needs[name] = (f"--again {graph.path} was {'redrawn by its hires fix' if hires else 'drawn'} with ComfyUI's "
                   f"sampler {sampler_name!r} and scheduler {scheduler!r} ({graph.named(node)}), which textinv does "
                   f"not have{unlike}: choose one with --{name.replace('_', '-')} (textinv generate --help lists them)"
                   f"{'' if hires else ', or default'}")


def _comfy_given(graph: _ComfyGraph, node: str, name: str):
    """What input `name` of a sampler gives, to compare two samplers': a prompt's text (two encoders of one text
    are one prompt), cfg's value, else the input as it is (a link: the same model is the same node)."""
    value = graph.inputs(node).get(name)
    if name in ("positive", "negative"):
        text = graph.prompt(graph.link(value))[0]
        return value if text is None else text
    return graph.value(node, name, (int, float)) if name == "cfg" else value


def _comfy_full(graph: _ComfyGraph, sampler: str) -> bool:
    """Whether a sampler drew from noise with all its steps (KSampler's denoise 1, KSamplerAdvanced's noise added
    and every step run)."""
    if graph.cls(sampler) == "KSampler":
        return graph.value(sampler, "denoise", (int, float)) == 1
    start, end = graph.value(sampler, "start_at_step", (int,)), graph.value(sampler, "end_at_step", (int,))
    steps, noise = graph.value(sampler, "steps", (int,)), graph.value(sampler, "add_noise", (str,))
    return start == 0 and noise == "enable" and steps is not None and end is not None and end >= steps


def _comfy_refine(graph: _ComfyGraph, sampler: str) -> tuple[int, float] | None:
    """(the steps run, the denoise) of a sampler that redrew the latent it was given as the web UI's hires fix
    redraws (`refine.pass_steps`): the seed's noise added, the last of a longer schedule run to its end (a KSampler's
    on ComfyUI's ddim_uniform at a schedule it draws more steps of: as many fewer, `_comfy_from_the_end`). None for
    any other sampler."""
    steps = graph.value(sampler, "steps", (int,))
    if steps is None or steps < 1:
        return None
    if graph.cls(sampler) == "KSampler":
        denoise = graph.value(sampler, "denoise", (int, float))
        if denoise is None or not 0 < denoise < 1:
            return None
        schedule = int(steps / denoise)  # (ComfyUI's last `steps` of it: fewer of it where ddim_uniform draws more)
        run = _comfy_from_the_end(graph, sampler, schedule, steps)
        if run == steps:
            return steps, float(denoise)
    else:
        start = _advanced_start(graph, sampler, steps)
        if not start:  # (none, or from step 0: a whole pass, no redrawing)
            return None
        schedule, run = steps, steps - start
    # the shortest denoise whose schedule is `schedule` long, as the web UI writes one (0.5, not 0.4999...)
    for digits in range(2, 8):
        for denoise in (round(run / schedule, digits), round(run / (schedule + 0.5), digits)):
            if run > 0 and 0 < denoise < 1 and pass_steps(run, denoise, hires=True) == (schedule, run):
                return run, denoise
    return None


def _comfy_picture_enlarged(graph: _ComfyGraph, scalers: list[str], start: tuple[int, int],
                            saved: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size (W, H) ComfyUI's picture upscalers enlarge a picture of `start` to, as its ImageScale and
    ImageScaleBy round; an upscaling network's (ImageUpscaleWithModel) is the saved picture's when nothing resized
    it after (`saved`), else unknown (None)."""
    size: tuple[int, int] | None = start
    for node in scalers:
        cls = graph.cls(node)
        if cls == "ImageUpscaleWithModel":
            size = None  # (its scale is the network's: 4x-UltraSharp's 4, ... which the graph does not say)
        elif cls == "ImageScaleBy":
            scale = graph.value(node, "scale_by", (int, float))
            size = None if scale is None or size is None else (round(size[0] * scale), round(size[1] * scale))
        else:
            width, height = graph.value(node, "width", (int,)), graph.value(node, "height", (int,))
            if width is None or height is None:
                return None
            if width and height:
                size = (width, height)
            elif size is not None and (width or height):  # (0: the other side's scale, keeping the shape)
                size = (width or max(1, round(size[0] * height / size[1])),
                        height or max(1, round(size[1] * width / size[0])))
    return size or saved


def _comfy_hires_size(graph: _ComfyGraph, scalers: list[str], start: tuple[int, int], target: tuple[int, int],
                      notes: list[str]) -> dict[str, Any]:
    """--hires-scale, or --hires-width and/or --hires-height, that draw a first pass of `start` at `target` (W, H) as
    the web UI sizes it (`refine.hires_size`): the scale ComfyUI's node gave or one side where either does, else both
    (the enlargement cropped to them from the middle, said where ComfyUI did otherwise)."""
    (width, height), (to_width, to_height) = start, target
    last = scalers[-1]
    scale = graph.value(last, "scale_by", (int, float)) if graph.cls(last).endswith("By") else None
    tries = [{"hires_scale": float(scale)}] if scale is not None and scale > 1 else []
    tries += [{"hires_width": to_width}, {"hires_height": to_height},
              {"hires_width": to_width, "hires_height": to_height}]
    for given in tries:  # (the last, both sides, always gives it: `target` is in whole latents)
        if final_size(*hires_size(width, height, given.get("hires_scale"), given.get("hires_width"),
                                  given.get("hires_height"))) == target:
            break
    if len(given) == 2:
        crop = graph.value(last, "crop", (str,))
        how = ("cut the middle at their proportions, then enlarged that; textinv enlarges, then cuts whole latents "
               "from the middle (the web UI's way): the same middle, its edges interpolated a little differently"
               if crop == "center" else
               "stretched the picture to them; textinv enlarges it to cover them and cuts the overhang from the "
               "middle (the web UI's way), so the redraw keeps the shapes' proportions where ComfyUI's changed them")
        notes.append(f"{graph.path}: its ComfyUI hires fix enlarged its first pass of {width}x{height} to "
                     f"{to_width}x{to_height} ({graph.named(last)}), other proportions: ComfyUI {how}")
    return given


def _comfy_upscaler(graph: _ComfyGraph, scalers: list[str], read: set[str], notes: list[str]) -> str:
    """The --hires-upscaler of ComfyUI's upscale nodes (their upscale_method; an upscaling network's enlargement is
    Lanczos's), a method textinv does not have said in `notes`; an upscaling network's loader added to `read`."""
    networks = [n for n in scalers if graph.cls(n) == "ImageUpscaleWithModel"]
    if networks:
        loader = graph.link(graph.inputs(networks[0]).get("upscale_model"))
        name = loader and graph.value(loader[0], "model_name", (str,))
        if loader is not None and graph.cls(loader[0]) == "UpscaleModelLoader":
            read.add(loader[0])
        notes.append(f"{graph.path}: its ComfyUI hires fix enlarged its first pass with the upscaling network "
                     f"{name or '(not named)'} ({graph.named(networks[0])}), which textinv does not run: it is "
                     f"enlarged with Lanczos (--hires-upscaler lanczos), then redrawn as ComfyUI redrew it, so expect "
                     f"the finer detail to differ")
        return "lanczos"
    node = scalers[-1]
    kind = "latent" if graph.cls(node).startswith("Latent") else "picture"
    methods = _COMFY_LATENT_METHODS if kind == "latent" else _COMFY_PICTURE_METHODS
    method = graph.value(node, "upscale_method", (str,))
    ours = methods.get(method, "latent" if kind == "latent" else "lanczos")
    if method not in _COMFY_SAME_METHODS[kind]:
        notes.append(f"{graph.path}: its ComfyUI hires fix enlarged its first pass's {kind} with {method!r} "
                     f"({graph.named(node)}), which textinv does not have: read as --hires-upscaler {ours}, the "
                     f"nearest it has")
    return ours


def _comfy_clip_skip(graph: _ComfyGraph, clip: list[str], needs: dict[str, str], notes: list[str]) -> int | None:
    """The clip skip of the nearest CLIPSetLastLayer on the prompt's CLIP (its stop_at_clip_layer -1 is clip skip 1,
    -2 is 2, ...: SD 1.x's counting); none there: 1, the layer ComfyUI reads by default (SD 2.x's and SDXL's
    penultimate, which textinv's 1 means on them too). Counted on the full encoder, ComfyUI's layer means another
    one on SD 2.x and SDXL, whose family the picture does not say: `notes` says so."""
    for node in clip:
        if graph.cls(node) == "CLIPSetLastLayer":
            layer = graph.value(node, "stop_at_clip_layer", (int,))
            if layer is None or layer >= 0:
                needs["clip_skip"] = (f"--again {graph.path}: its ComfyUI {graph.named(node)} stops at a layer textinv "
                                      f"cannot read (ComfyUI's are -1, -2, ...): give --clip-skip")
                return None
            notes.append(f"{graph.path}: its ComfyUI {graph.named(node)} stops at layer {layer}, read as clip skip "
                         f"{-layer}, as ComfyUI means it on SD 1.x; on SD 2.x its -2 is textinv's clip skip 1 "
                         f"(diffusers' SD 2.x encoder ends at that layer) and -1 a layer textinv cannot read, and on "
                         f"SDXL -1 is the last layers, which textinv does not draw (its 1 and 2 are both SDXL's "
                         f"penultimate): for those give --clip-skip 1")
            return -layer
    return 1


def _comfy_loras(graph: _ComfyGraph, model: list[str], clip: list[str]) -> tuple[list[str], list[str]]:
    """The `<lora:name:te:unet>` tags that apply the LoRA loaders on the sampler's model and the prompt's CLIP as
    ComfyUI applied them (a loader's strength_clip on the text encoder when the prompt's CLIP passed through it, its
    strength_model on the UNet when the model did, else 0), and the loaders no tag can give (a name a tag cannot
    hold, a strength from a node textinv cannot read)."""
    tags, unread = [], []
    for node in dict.fromkeys([*reversed(model), *reversed(clip)]):  # (in the order ComfyUI applied them)
        if graph.cls(node) not in ("LoraLoader", "LoraLoaderModelOnly"):
            continue
        name = Path(re.split(r"[\\/]", graph.value(node, "lora_name", (str,)) or "")[-1]).stem  # (its subfolder off)
        te = graph.value(node, "strength_clip", (int, float)) if node in clip else 0
        unet = graph.value(node, "strength_model", (int, float)) if node in model else 0
        if not name or re.search(r"[:<>]", name) or te is None or unet is None:
            unread.append(node)
        elif te or unet:
            tags.append(f"<lora:{name}:{te:g}>" if te == unet else f"<lora:{name}:{te:g}:{unet:g}>")
    return tags, unread


def _name_bare_tokens(settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """The picture's prompts in `settings` with each embedding's token written bare as `embedding:TOKEN`, for a
    textinv picture drawn under --emphasis comfy when a bare token drew the embedding (`Picture.bare_tokens_drawn`),
    which is words there now, as in ComfyUI: so it draws as it was drawn. The tokens are the --embedding files'
    (given anew or recorded) or their --token; an embeddings folder's files were named `embedding:NAME` already."""
    entries = flags.get("embedding", settings.get("embedding", []))
    tokens = list(flags.get("token", settings.get("token") or [])) + [None] * len(entries)
    with warnings.catch_warnings():  # (a folder whose files no prompt names: said when it is drawn)
        warnings.simplefilter("ignore")
        files = embedding_files(entries, tokens[:len(entries)], "")
        named = {token or load_embedding(path).token for path, token in files}
    if not named:
        return
    either = "|".join(re.escape(token) for token in sorted(named, key=len, reverse=True))
    # an embedding:NAME as it is, else a token wherever it stands, as the tokenizer cut it out of the text
    found = re.compile(rf"{_COMFY_EMBEDDING.pattern}|(?P<token>(?i:{either}))")
    by_case = {token.lower(): token for token in named}
    for name in ("prompt", "negative_prompt", "hires_prompt", "hires_negative_prompt", "prompt_l",
                 "negative_prompt_l"):
        value = settings.get(name)
        if isinstance(value, list):
            settings[name] = [_as_named(text, found, by_case) for text in value]
        elif value:
            settings[name] = _as_named(value, found, by_case)


def _as_named(text: str, found: re.Pattern, tokens: dict[str, str]) -> str:
    """`text` with each token `found` matches (outside an `embedding:NAME`) written `embedding:TOKEN` (`tokens`: by
    lowercased token). CLIP's tokenizer cut a learned token out of the text wherever it stood, glued to a word or a
    mark too (`a<zz>dog`, `[cat:<zz>:0.5]`, `<zz>-style`, `<zz>.`), and read the word's parts apart: so the name is
    set apart by a space from a word before it and from what follows it but where ComfyUI's name ends anyway (a
    space, `,()[]|:`), which reads the same ids and keeps `embedding:<zz>.` from naming a file `<zz>.`."""
    def named(match: re.Match) -> str:
        if match.group("token") is None:
            return match.group(0)
        before = " " if re.match(r"\w", text[max(match.start() - 1, 0):match.start()]) else ""
        after = "" if re.match(r"[\s,()\[\]|:]|$", text[match.end():]) else " "
        return f"{before}{COMFY_TOKEN}{tokens[match.group('token').lower()]}{after}"

    return found.sub(named, text)


def _check_unchanged(picture: Picture, files: list[str]) -> None:
    """Warn of an embedding file whose bytes are not those the picture was drawn with (retrained or replaced at the
    same path, or another file given for it): the redraw then draws other vectors. Given anew (--embedding), the
    files are compared in order when their count is the record's, as the moved files they usually are."""
    if len(files) != len(picture.digests):
        return
    changed = [f for f, old in zip(files, picture.digests)
               if isinstance(old, str) and file_digest(f) not in (None, old)]  # (a run's folder: its file's)
    if changed:
        warn(f"{picture.path} was drawn with other contents of {', '.join(changed)} (the file was retrained "
             f"or replaced since): the redraw uses the file as it is now, so it will differ", stacklevel=3)


def _check_init_unchanged(picture: Picture, init_image: str | None, name: str = "init_image") -> None:
    """Warn of an --init-image (`name` "mask": a --mask) whose bytes are not those the picture was drawn from
    (replaced at its path, or another picture given for it): the redraw then starts from another picture."""
    digest = picture.mask_digest if name == "mask" else picture.init_digest
    if not digest or not init_image or not Path(init_image).expanduser().is_file():
        return
    if file_sha256(Path(init_image).expanduser()) != digest:
        warn(f"{picture.path} was drawn from other contents of {init_image} (--{name.replace('_', '-')}; "
             f"the picture was replaced since, or another given for it): the redraw starts from it as it is "
             f"now, so it will differ", stacklevel=3)


def _check_ti_hashes(picture: Picture, files: list[str], tokens: list[str], prompts: list[str] = ()) -> None:
    """Warn of an --embedding file that is not the one a web UI picture names: its "TI hashes" give each embedding's
    name and the first digits of its file's SHA-256 (`infotext.webui_hashes`). A file whose SHA-256 begins with one
    of them is that embedding, whatever its name; one named as an embedding there (its file name, or its --token; in
    a folder given, the files so named) whose SHA-256 does not is another file or version. The embeddings no file
    given answers to are named too: without them the prompt reads their names as words. Names are compared in one
    Unicode form (`run_folder.same_names`): a file copied from macOS keeps café's accent apart (NFD). An embedding
    bundled in a LoRA is listed with the LoRA's name for its hash (the web UI's BundledTIHash): one whose LoRA a
    `<lora:...>` tag of the `prompts` names comes with it, so no file is looked for."""
    if not picture.ti_hashes:
        return
    tagged = {_nfc(tag.name).lower() for prompt in prompts for tag in lora_tags(prompt)[1]}
    wanted = {_nfc(name).lower(): (name, short) for name, short in picture.ti_hashes.items()
              if _nfc(short).lower() not in tagged}
    given: list[tuple[str, Path]] = []  # (the name it answers to, the file)
    bundles: list[tuple[str, str, str]] = []  # (the name it answers to, its LoRA's name, the entry)
    for i, entry in enumerate(files):
        path, token = Path(entry).expanduser(), tokens[i] if i < len(tokens) and tokens[i] else None
        names = [split_bundle(entry)[1]] if split_bundle(entry)[1] else bundled_names(path)[:1]
        if path.is_dir():
            given += [(_nfc(f.stem), f) for f in folder_embeddings(path) if _nfc(f.stem).lower() in wanted]
        elif names:  # (FILE::NAME, or a LoRA that bundles one: listed with the LoRA's name, BundledTIHash)
            bundles.append((_nfc(token or names[0]), _nfc(on_disk(entry).stem), entry))
        elif path.is_file():
            given.append((_nfc(token or path.stem), path))
    found, other = set(), []
    for name, lora, entry in bundles:
        if name.lower() in wanted:
            found.add(name.lower())
            if wanted[name.lower()][1].lower() != lora.lower():
                other.append(f"{entry} (bundled in the LoRA {lora}; the picture's {wanted[name.lower()][0]} "
                             f"{wanted[name.lower()][1]})")
    for name, file in given:
        digest = file_digest(str(file))
        same = [key for key, (_, short) in wanted.items() if digest.startswith(short)]
        found.update(same)
        if not same and name.lower() in wanted:
            found.add(name.lower())
            other.append(f"{file} (its SHA-256 begins {digest[:12]}; the picture's {wanted[name.lower()][0]} "
                         f"{wanted[name.lower()][1]})")
    if other:
        warn(f"{picture.path} was drawn with other embedding files than " + ", ".join(other) + " (its TI "
             "hashes): another file or version of the embedding, so the redraw will differ", stacklevel=3)
    missing = [name for key, (name, _) in wanted.items() if key not in found]
    if missing:
        warn(f"{picture.path} was drawn with the embeddings {', '.join(missing)} (its TI hashes), which no "
             f"--embedding given is: pass their files (or the web UI's embeddings folder), or the prompt "
             f"reads their names as words", stacklevel=3)


def _check_lora_hashes(picture: Picture, prompts: list[str], folders: list[str]) -> None:
    """Warn of a LoRA file that is not the one a web UI picture names: its "Lora hashes" give each LoRA's name and the
    first digits of the hash the web UI gives it (`loras.lora_sha256`); the file each `<lora:...>` tag of the
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
        warn(f"{picture.path} was drawn with other LoRA files than " + ", ".join(other) + " (its Lora "
             "hashes): another file or version of the LoRA, so the redraw will differ", stacklevel=3)


def _check_paths_given(picture: Picture, settings: dict[str, Any], flags: dict[str, Any]) -> None:
    """Refuse to redraw a picture drawn with `--metadata shareable` until every file or folder it names without a
    path (`Picture.by_name`) is given as a flag, naming each flag and the name recorded; the LoRA folders count only
    when the prompts name a LoRA. Their names alone are not looked for: a file of the same name is not the same file
    (the embeddings' SHA-256 then tell whether the ones given are, `_check_unchanged`)."""
    prompts = _prompts(flags, settings)
    asks = []
    for name in picture.by_name:
        value = settings.get(name)  # (the redraw's: none where a flag replaced it, `_replaced`)
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
    prompts = _prompts(flags, settings)
    for f in dataclasses.fields(GenerateConfig):
        kind = f.metadata.get("path")
        if not kind or f.name in flags or f.name in _NOT_RECORDED or not settings.get(f.name):
            continue
        if f.name == "lora_dir" and not any(lora_tags(p)[1] for p in prompts):
            continue
        values = settings[f.name] if isinstance(settings[f.name], list) else [settings[f.name]]
        for value in values:
            where = on_disk(value) if kind == "embedding" else Path(value).expanduser()  # (FILE::NAME: FILE)
            if kind == "source" and not where.is_absolute():  # a hub id or bundled name, or an old relative path
                continue
            if kind == "embedding" and hub_reference(value) is not None:  # (read from the hub, or its cache)
                continue
            if not where.exists():
                flag = "--" + f.name.replace("_", "-")
                every = " (every one: it replaces the picture's list)" if isinstance(settings[f.name], list) else ""
                raise ConfigError(f"--again {picture.path}: its {flag} {value} no longer exists (moved or deleted?); "
                                  f"pass {flag} with where it is now{every}")
