"""Generating images with learned tokens.

`generate(config)` loads the model, installs each embedding file's vectors as new tokens (any format textinv reads),
expands multi-vector tokens in the prompts, and writes one PNG per image with the prompt, seed and settings in the
PNG's text chunks (also as the A1111 `parameters` text, which many image viewers and UIs show, with the web UI's
"TI hashes" and "Lora hashes" of the embeddings and LoRAs the picture drew with, `webui_hashes`), and every setting
that shapes the picture as one JSON record (`RECORD_KEY`), which `textinv generate --again` draws it again from (see
`again`). `--metadata` says how much: shareable (the default) names local files and folders without saying where
they are (`shareable_record`), full gives their absolute paths, none writes no text. Image i of a prompt uses seed +
i, so any single image can be made again on its own.

The --embedding entries' files, and the names the prompts call them by, are worked out in `embedding_names`; the
prompts' <lora:...> tags are found in --lora-dir and applied in `loras`. What the second passes share (the hires
fix's settings, the steps a pass runs) is in `refine`, and --refiner's hand-over in `refiner`; the passes are drawn
here.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import json
import math
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from . import __version__, dynamic, emphasis, refine
from . import inpaint as inpainting
from .inpaint import Inpaint
from .infotext import (_model_name, _mask_params, _noise_params, _record, _refiner_params, _variation_seed,
                       hash_name, passes_denoise, png_text, shareable_record, webui_hashes)
from .conditioning import _Layout, _layout, _prompted, _switching_conditioning
from .config import GenerateConfig, check_config_object, check_side
from .data import load_image, prepare_image
from .embedding_names import (COMFY_BARE_TOKENS, COMFY_TOKEN, _comfy_folder_tokens, _comfy_names, _comfy_unnamed,
                              _named, _optional_prompts, _read_embeddings, embedding_files, file_digest)
from .errors import ConfigError, DataError, FormatError, ModelError, TokenError, setting, warn, warns_at_caller
from .families import describe_widths
from .formats import (BUNDLE_SEPARATOR, RECORD_KEY, LearnedEmbedding, ModelSpecWarning, bundled_names, load_bundled,
                      load_embedding, split_bundle)
from .io import absolute, atomic_path, clear_stale_temporaries, file_sha256, output_folder_kept_if_used
from .loras import _lora_set, apply_loras, lora_files, lora_sha256, unload_loras
from .memory import memory_error, out_of_memory_as, smaller_side
from .models import (DTYPES, Model, check_clip_skip, check_model_object, interrupt_kept, launched_precision, load_model,
                     pick_device, precision_name, read_clip_skip, resolve_source, source_is_inpainting,
                     source_is_sdxl_refiner_file, source_is_xl)
from .refine import Hires, _check_hires, _pass_schedule, check_hires_model
from .refiner import (AESTHETIC_SCORES, Refiner, _check_refiner_passes, _handing_on, _refiner_start, check_refiner,
                      refiner_switches)
from .hub import hub_reference
from .run_folder import _nfc
from .samplers import (Churn, check_churn, check_discard, check_eta, check_pass, ensd_reaches, eta_label, eta_of,
                       scheduler_for, step_multiplier, webui_hires_names)
from .tokens import (add_tokens, expand_prompt, saved_tokens, scratch_tokens, token_clash, token_names,
                     tokenizer_copy)

DEFAULT_STEPS = 25


def check_fits(model: Model, emb: LearnedEmbedding,
               pair_hint: str = "pass both files to --embedding") -> None:
    """Refuse an embedding whose widths or text encoders are not the model's, naming both widths and families
    (and, for one half of an SDXL pair, `pair_hint`: how the caller's command takes both). An SDXL embedding fits a
    model of one text encoder as wide as its CLIP-L half (SD 1.x): that half is used (`uses_clip_l_half`)."""
    if uses_clip_l_half(model, emb):
        return
    if model.is_refiner:  # (its one encoder is SDXL's second, OpenCLIP-G: an embedding's clip_g half goes in)
        vectors = emb.vectors.get("text_encoder_2")
        if vectors is None or vectors.shape[-1] != model.widths[0]:
            raise FormatError(f"embedding {emb.token!r} has width {describe_widths(emb.widths)}: it holds no vectors "
                              f"for the SDXL refiner {model.source}'s one text encoder (OpenCLIP-G, width "
                              f"{model.widths[0]}), which reads an SDXL embedding's clip_g half; give "
                              f"{setting('refiner')} a model this embedding was made for, or draw without "
                              f"{setting('refiner')}")
        return
    if emb.widths != model.widths or set(emb.vectors) != {name for name, _, _ in model.encoders}:
        base = emb.metadata.get("base_model")  # (--model left out is the bundled model: say which one it needs)
        raise FormatError(
            f"embedding {emb.token!r} has width {describe_widths(emb.widths)} but the model {model.source} has "
            f"width {describe_widths(model.widths)}; use an embedding trained for this model's family"
            + (f" (this one was trained on {base!r}: give that as {setting('model')})" if base else "")
            + ("; if it is one half of an SDXL embedding kept as two files (diffusers' SDXL script: learned_embeds"
               f" and learned_embeds_2), {pair_hint}"
               if model.is_xl and len(emb.widths) == 1 and emb.widths[0] in model.widths else "")
        )


def uses_clip_l_half(model: Model, emb: LearnedEmbedding) -> bool:
    """Whether `emb` is an SDXL embedding (clip_l + clip_g) and `model` has one text encoder as wide as its clip_l
    half, as SD 1.x's CLIP-L is: ComfyUI then uses that half (its SD 1.x tokenizer reads a file's "clip_l"), so do
    we; the A1111 web UI skips such a file. SD 2.x (1024 wide) fits neither half."""
    return (not model.is_xl and len(emb.widths) == 2 and len(model.widths) == 1
            and emb.widths[0] == model.widths[0])


def warn_clip_l_half(model: Model, emb: LearnedEmbedding, stacklevel: int = 3) -> None:
    """Say that only an SDXL embedding's clip_l half goes into this model (`uses_clip_l_half`), and why it may not
    draw as on SDXL."""
    warn(f"embedding {emb.token!r} is an SDXL embedding (width {describe_widths(emb.widths)}); the model "
         f"{model.source} has one text encoder of width {describe_widths(model.widths)}, so only its clip_l "
         f"half (the CLIP-L encoder's vectors) is used, as ComfyUI does. It was trained for SDXL, which reads "
         f"CLIP-L's penultimate layer, so it may draw differently ({setting('clip_skip', 2)} reads that layer)",
         stacklevel=stacklevel)


def comfy_vectors(model: Model, emb: LearnedEmbedding) -> dict[str, torch.Tensor | None] | None:
    """For --emphasis comfy, an embedding that does not fit `model` as it is (`check_fits`; None where it does):
    the vectors ComfyUI applies to each of its text encoders, by name. Its tokenizer of each encoder reads the
    file's vectors of that encoder (an SDXL file's clip_l or clip_g half, another file's one tensor) and leaves out,
    with a warning, those of another width (comfy/sd1_clip.py: "shape mismatch when trying to apply embedding,
    embedding will be ignored"): here the file's vectors as wide as the encoder, None where none are (left out of
    that encoder's reading: an SD 1.x file on SDXL goes into CLIP-L alone, and into neither the SDXL refiner's one
    encoder nor SD 2.x's; an SD 2.x file fits none of SDXL's)."""
    try:
        check_fits(model, emb)
        return None
    except FormatError:
        pass
    return {name: next((v for v in emb.vectors.values() if v.shape[-1] == width), None)
            for (name, _, _), width in zip(model.encoders, model.widths)}


def _warn_comfy_left_out(model: Model, emb: LearnedEmbedding, placed: dict[str, torch.Tensor | None]) -> None:
    """Say which of the model's text encoders read `emb` under --emphasis comfy (`comfy_vectors`) and which leave
    it out, as ComfyUI warns of the shape mismatch."""
    widths = dict(zip([name for name, _, _ in model.encoders], model.widths))
    taken = [widths[name] for name, vectors in placed.items() if vectors is not None]
    if len(taken) == len(placed):  # (read by every encoder: nothing left out)
        return
    if not taken:
        warn(f"embedding {emb.token!r} has width {describe_widths(emb.widths)} and fits none of {model.source}'s "
             f"text encoders (width {describe_widths(model.widths)}): it is left out of the prompt, which is drawn "
             f"without the concept, as ComfyUI does (it warns of a shape mismatch); give a model of the family "
             f"the embedding was made for to draw it", stacklevel=3)
        return
    others = [str(widths[name]) for name, vectors in placed.items() if vectors is None]
    warn(f"embedding {emb.token!r} has width {describe_widths(emb.widths)}: it is applied to the SDXL model "
         f"{model.source}'s text encoder of width {taken[0]} alone and left out of the other's (width "
         f"{', '.join(others)}) reading of the prompt, as ComfyUI does (it warns of a shape mismatch), so it may "
         f"draw weaker than on the family it was made for", stacklevel=3)


def _comfy_hint() -> str:
    """What a refusal of an embedding of another width adds: the setting that draws it as ComfyUI does."""
    return (f"; ComfyUI leaves vectors of another width out of the prompt with a warning, and so does "
            f"{setting('emphasis', 'comfy')}")


def install_embedding(model: Model, emb: LearnedEmbedding, comfy: bool = False) -> None:
    """Add one learned embedding to the model's tokenizer(s) and text encoder(s); all checks happen first.

    Refuses an embedding whose width does not fit the model (naming both widths and their families) and a token
    that clashes with one the tokenizer already has. SDXL embeddings go into both encoders, each half into its own;
    on an SD 1.x model only their clip_l half, with a warning (`uses_clip_l_half`). `comfy` (--emphasis comfy): an
    embedding that does not fit goes into the encoders of its width only, as ComfyUI applies it (`comfy_vectors`:
    an SD 1.x file on SDXL into CLIP-L; one that fits no encoder into none), with a warning; the other encoders'
    tokenizers get its token too, whose ids `conditioning._prompt_chunks` takes out of those encoders' chunks, as
    ComfyUI does. Undo with `unload_embeddings`.
    """
    if not isinstance(emb, LearnedEmbedding):  # (a file's path: loaded by load_embedding, which reads any format)
        raise FormatError(f"install_embedding takes a LearnedEmbedding, got {type(emb).__name__}"
                          + (f"; pass load_embedding({os.fspath(emb)!r})" if isinstance(emb, (str, os.PathLike))
                             else ""))
    placed = comfy_vectors(model, emb) if comfy else None
    if placed is None:
        try:
            check_fits(model, emb)
        except FormatError as refused:
            raise FormatError(f"{refused}{_comfy_hint()}") from None
    else:
        _warn_comfy_left_out(model, emb, placed)
    if uses_clip_l_half(model, emb):  # (add_tokens below takes each of the model's encoders' own half: clip_l)
        warn_clip_l_half(model, emb)
    if emb.num_vectors > emphasis.CHUNK:
        # no prompt window holds it: the token is split across chunks (as ComfyUI splits it), each read by its own
        # pass of the text encoder, so its vectors never see one another as one token's do (the web UI fails on it)
        chunks = math.ceil(emb.num_vectors / emphasis.CHUNK)
        warn(f"embedding {emb.token!r} has {emb.num_vectors} vectors, more than the {emphasis.CHUNK} one "
             f"pass of the text encoder reads: it is split across {chunks} chunks of the prompt, read apart, "
             f"so it may not draw as one token (embeddings have 1-75 vectors; the A1111 web UI cannot use "
             f"this one)", stacklevel=2)
    names = token_names(emb.token, emb.num_vectors)
    clash = token_clash([tokenizer for _, tokenizer, _ in model.encoders], names)  # (every encoder before any change)
    if clash is not None:
        name, error = clash
        if error is None:  # (check_new_token's message speaks of training)
            raise TokenError(f"cannot add embedding {emb.token!r}: the model's tokenizer has {name!r} already, as "
                             f"a word of its own or a learned token saved into the model (as the diffusers "
                             f"script's --save_as_full_pipeline saves it, which draws without --embedding); "
                             f"pass another name for the embedding with {setting('token')}")
        raise TokenError(f"cannot add embedding {emb.token!r}: {error} (pass a different name with "
                         f"{setting('token')})") from error
    if not hasattr(model, "_pristine"):  # what unload_embeddings restores: the tokens go into copies of the tokenizers
        model._pristine = [(name, tok, te.get_input_embeddings()) for name, tok, te in model.encoders]
        for name, tok, _ in model._pristine:
            setattr(model.pipeline, _tokenizer_of(name), tokenizer_copy(tok))
    for name, tokenizer, encoder in model.encoders:
        vectors = emb.vectors[name] if placed is None else placed[name]
        if vectors is None:  # (rows never read: `conditioning._prompt_chunks` takes their ids out of its chunks)
            add_tokens(tokenizer, encoder, names, torch.zeros(len(names), encoder.config.hidden_size))
            model.__dict__.setdefault("_comfy_left_out", {}).setdefault(name, set()).update(
                tokenizer.convert_tokens_to_ids(names))
        else:
            add_tokens(tokenizer, encoder, names, vectors)


def unload_embeddings(model: Model) -> None:
    """Remove every embedding `install_embedding` added: the tokenizer objects and embedding tables the model had
    before are put back (the embeddings went into copies), so vocabulary sizes and outputs are as before."""
    pristine = getattr(model, "_pristine", None)
    if pristine is None:
        return
    for name, tokenizer, table in pristine:
        setattr(model.pipeline, _tokenizer_of(name), tokenizer)
        getattr(model.pipeline, name).set_input_embeddings(table)
    del model._pristine
    model.__dict__.pop("_comfy_left_out", None)


def _tokenizer_of(encoder: str) -> str:
    """The pipeline's name for a text encoder's tokenizer: text_encoder_2 -> tokenizer_2."""
    return encoder.replace("text_encoder", "tokenizer")


def expand_all(prompt: str, embeddings: list[LearnedEmbedding], model: Model | None = None) -> str:
    """Expand every loaded multi-vector token in `prompt`, and, given the `model`, those saved in its tokenizer
    (`tokens.saved_tokens`: a model the diffusers script saved whole)."""
    counts = saved_tokens(model.encoders[0][1]) if model is not None else {}
    counts.update((emb.token, emb.num_vectors) for emb in embeddings)
    for token, n in counts.items():
        prompt = expand_prompt(prompt, token, n, others=counts)
    return prompt


@torch.no_grad()
def render(
    model: Model,
    prompts: list[str],
    seeds: list[int],
    steps: int = DEFAULT_STEPS,
    resolution: int | None = None,
    guidance: float | None = None,
    negative_prompt: str | list[str] | None = "",
    sampler: str = "default",
    clip_skip: int = 1,
    width: int | None = None,
    height: int | None = None,
    start: list[Image.Image] | None = None,
    denoise: float | None = None,
    hires: Hires | None = None,
    variation: tuple[list[int], float] | None = None,
    tiling: bool = False,
    emphasis_mode: str = "original",
    inpaint: Inpaint | None = None,
    refiner: Refiner | None = None,
    old_editing: bool = False,
    eta: float | None = None,
    ensd: int = 0,
    clip_l: tuple[str | None, str | None] = (None, None),
    churn: Churn | None = None,
    discard: bool = False,
    pad_conds: str | None = None,
) -> list[Image.Image]:
    """One image per (already expanded) prompt, image i from `torch.Generator().manual_seed(seeds[i])`, at
    `guidance` (by default the model's own, `Model.guidance`), with `sampler` (see `samplers.scheduler_for`), reading
    the text encoder's layer `clip_skip` from the end (`models.encode_text`), `width` x `height` pixels (each by
    default `resolution`, by default the model's own size). `negative_prompt` is every prompt's, or a list of each
    one's (pictures of different negatives share the call, each drawn as alone, as the web UI stacks a batch's
    conds); None guides against zeros in its place, on any model, as ComfyUI's ConditioningZeroOut on a sampler's
    negative does. `clip_l`: SDXL's CLIP-L text of every prompt and of the negatives (already expanded; None:
    theirs), as ComfyUI's CLIPTextEncodeSDXL gives its text_l apart from its text_g, with `emphasis_mode` comfy
    (`_layout`).

    `start` (one RGB picture per prompt) draws img2img: each picture, cropped to the size, redrawn `denoise` of the
    way (default `refine.IMG2IMG_DENOISE`; `refine.pass_steps` counts the steps as the web UI does). `hires`
    redraws the pictures drawn enlarged (`Hires`, the web UI's hires fix). Both start from the seed's noise, as the
    web UI's passes do: a seed gives its picture at any batch size. `variation` (each picture's variation seed, and
    the strength) blends each pass's noise toward the variation seed's (`seed_noise`), and `tiling` draws pictures
    that wrap around at their edges (`_tiled`), each as the web UI does; `emphasis_mode` is its Emphasis setting
    (`emphasis.MODES`), `old_editing` its old prompt editing timelines (`emphasis.prompt_schedule`). `inpaint`
    (with `start`) redraws only the mask's part of each picture (`inpaint`, the web UI's inpainting); a model made
    for it (a UNet of 9 input channels) draws only from pictures. `refiner` draws the last steps (`Refiner`; all of
    an img2img pass or second pass that starts past its switch, `_refined`), of the hires fix's second pass where
    there is one, as the web UI's default (hires_fix_refiner_pass: second pass): of `hires.model`'s pass, where it
    has one.

    `eta` is an ancestral or SDE sampler's or DDIM's (None: the sampler's own, `samplers.eta_default`), `ensd` the
    web UI's Eta noise seed delta: each pass's noise at every step is drawn from seed + `ensd` (`_step_noise`).
    `churn` is the web UI's sigma churn settings (`samplers.Churn`), for each pass whose sampler takes them (Euler,
    Heun, DPM2; DPM2 a, DPM++ 2S a and the SDE samplers the noise alone: `samplers.churn_taken`); `discard` its
    "Always discard next-to-last sigma", for each pass whose sampler takes it (`samplers.discards`).
    `pad_conds` reads a prompt and its negative of different chunk counts at one length, where by default (None)
    each is read at its own: "empty" is the web UI's "Pad prompt/negative prompt to be same length"
    (pad_cond_uncond: both at the longer's, the shorter's extra chunks empty, `conditioning._padded_lengths`), "v0"
    its "Pad prompt/negative prompt (v0)" (pad_cond_uncond_v0, its DDIM's way before 1.6: the negative at the
    prompt's, its last vector repeated or cut, `conditioning._repeat_negative_last`).

    Generators live on the CPU so a seed gives the same starting noise on every machine, and each image's noise
    is its own seed's whatever else is in the batch. A prompt with `AND` is drawn by composable diffusion, as the
    web UI draws it (`emphasis.composable_parts`, `conditioning._composing`): its k sub-prompts cost k + 1 UNet
    rows a step.
    """
    # (a prompt as a str was drawn as one prompt per letter; seeds too few failed in diffusers' batch check)
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"render takes a list of prompts, got {type(prompts).__name__} {_shown(prompts)}"
                          + (f"; e.g. [{prompts!r}]" if isinstance(prompts, str) else ""))
    if not isinstance(seeds, (list, tuple, range)) or len(seeds) != len(prompts):
        raise ConfigError(f"render takes one seed for each prompt: got seeds={_shown(seeds)} for {len(prompts)} "
                          f"prompt(s); e.g. seeds=list(range({len(prompts)}))")
    pipe = model.pipeline
    if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
        raise ConfigError(f"render takes one negative prompt, or one for each prompt: got {len(negative_prompt)} "
                          f"negative prompts for {len(prompts)} prompts")
    width, height = width or resolution or model.resolution, height or resolution or model.resolution
    multiple = math.lcm(8, pipe.vae_scale_factor)  # diffusers' pipelines want 8; the VAE its own scale factor
    check_side(setting("width"), width, multiple)
    check_side(setting("height"), height, multiple)
    guidance = model.guidance_or_own(guidance)
    _check_sampling(model, steps, guidance)
    check_clip_skip(model, clip_skip)
    second_model = _check_passes(model, steps, sampler, start, denoise, hires, inpaint, refiner, discard)
    check_eta(eta, [sampler] + ([hires.sampler] if hires is not None and hires.sampler else []))
    check_churn(churn or Churn(), [sampler] + ([hires.sampler] if hires is not None and hires.sampler else []))
    check_discard(discard, [sampler] + ([hires.sampler] if hires is not None and hires.sampler else []))
    if pad_conds not in PAD_MODES:
        raise ConfigError(f"pad_conds must be one of {PAD_MODES}, got {pad_conds!r}: \"empty\" for the web UI's "
                          "pad_cond_uncond, \"v0\" for its pad_cond_uncond_v0, None for neither")
    drawing = dict(prompts=prompts, seeds=seeds, guidance=guidance, negative_prompt=negative_prompt,
                   clip_skip=clip_skip, emphasis_mode=emphasis_mode, old_editing=old_editing, eta=eta, ensd=ensd,
                   clip_l=clip_l, churn=churn, discard=discard, pad_conds=pad_conds)
    others = ([refiner.model.unet, refiner.model.vae] if refiner else []) + (
        [second_model.unet, second_model.vae] if second_model is not model else [])
    with _tiled(pipe, tiling, *others):
        if start is not None:
            return _redrawn(model, start, inpaint, steps, denoise or refine.IMG2IMG_DENOISE, sampler,
                            (width, height), variation, refiner=refiner, **drawing)
        return _text_to_image(model, steps, sampler, (width, height), hires, variation, refiner, **drawing)


def _shown(value) -> str:
    """`value`'s repr, cut short for an error message."""
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."


def _check_passes(model: Model, steps: int, sampler: str, start: list[Image.Image] | None, denoise: float | None,
                  hires: Hires | None, inpaint: Inpaint | None, refiner: Refiner | None,
                  discard: bool = False) -> Model:
    """Refuse, before drawing, passes `render` cannot draw (its arguments); return the model of the hires fix's
    second pass (`model` where it has none of its own, or there is no hires fix)."""
    if start is not None and hires is not None:  # (what GenerateConfig refuses, not dropped here unsaid)
        raise ConfigError("render takes `start` (img2img) or `hires` (the hires fix), not both, as the web UI's "
                          "img2img has no hires fix: redraw the pictures at the larger width and height instead")
    second_model = (hires.model or model) if hires is not None else model  # (the hires fix's second pass's)
    if hires is not None:
        _check_hires(model, second_model, hires, steps, sampler, discard)
    if start is not None:  # (refused now, not once its pictures are encoded)
        _pass_schedule(model, steps, denoise or refine.IMG2IMG_DENOISE, False, sampler, discard=discard)
    else:  # (text to image: all its steps)
        check_pass(model.pipeline.scheduler, sampler, steps, steps, setting("steps", steps), discard=discard)
    if refiner is not None:
        img2img = (denoise or refine.IMG2IMG_DENOISE) if start is not None else None
        _check_refiner_passes(second_model, refiner, steps, sampler, img2img, hires, discard)
    if inpaint is not None and start is None:
        raise ConfigError("render's `inpaint` masks the pictures in `start` (--mask needs --init-image)")
    if start is None and model.pipeline.unet.config.in_channels == 9:
        raise ConfigError(f"{model.source} is an inpainting model (its UNet reads a mask and a picture): it redraws "
                          f"a picture (--init-image, with --mask for the part to redraw) and cannot draw from text")
    return second_model


def _text_to_image(model: Model, steps: int, sampler: str, size: tuple[int, int], hires: Hires | None,
                   variation: tuple[list[int], float] | None, refiner: Refiner | None, ensd: int = 0, **drawing
                   ) -> list[Image.Image]:
    """The pictures of a text-to-image pass at `size` (W, H) from the seeds' noise (with their `variation`), then
    with `hires` its hires fix's second pass (`_hires_pass`); `refiner` draws the last steps of the last pass."""
    pipe = model.pipeline
    width, height = size
    generators = [torch.Generator().manual_seed(s) for s in drawing["seeds"]]
    # (C, H/f, W/f), as the pipelines and the web UI lay out the noise: a square's is what it always was
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = seed_noise(generators, shape, variation).to(pipe.device, pipe.unet.dtype)
    _step_noise(generators, drawing["seeds"], ensd, sampler)
    in_latents = hires is not None and refine.UPSCALERS[hires.upscaler].mode is not None
    first = _pass(model, pipe, steps, sampler, size, latents=latents, generator=generators,
                  num_inference_steps=steps, height=height, width=width,
                  output_type="latent" if in_latents else "pil", refiner=None if hires else refiner, **drawing)
    if hires is None:
        return first
    return _hires_pass(model, first, steps, sampler, size, hires, variation, refiner, ensd=ensd, **drawing)


def _hires_pass(model: Model, first: torch.Tensor | list[Image.Image], steps: int, sampler: str,
                size: tuple[int, int], hires: Hires, variation: tuple[list[int], float] | None,
                refiner: Refiner | None, **drawing) -> list[Image.Image]:
    """The hires fix's second pass over `first`, the first pass's latents (an upscaler that works on latents) or
    pictures, drawn at `size` (W, H) by `model`: enlarged (`Hires.sizes`), then redrawn by `hires.model` (or
    `model`) with `hires`'s settings, the first pass's where it gives none; its sampler at the eta `samplers.eta_of`
    gives it."""
    second_model, factor = hires.model or model, model.pipeline.vae_scale_factor
    enlarged, crop, final = hires.sizes(*size, factor)
    if refine.UPSCALERS[hires.upscaler].mode is not None:
        latents = refine.upscale_latents(first, enlarged, crop, hires.upscaler, factor)
    else:
        pictures = refine.upscale_pictures(first, enlarged, hires.upscaler, factor)
        pixels = torch.stack([prepare_image(p, 0, size=p.size) for p in pictures])
        # (the web UI decodes with the first pass's checkpoint and encodes with the hires one, loaded between)
        latents = refine.cropped(refine.encode(second_model.vae, pixels), crop)
    if hires.switch is not None:
        hires.switch()
    second = {**drawing, "eta": eta_of(drawing["eta"], hires.sampler or sampler, [sampler, hires.sampler or sampler]),
              **({"prompts": [hires.prompt] * len(drawing["prompts"])} if hires.prompt is not None else {}),
              **({"negative_prompt": hires.negative_prompt} if hires.negative_prompt is not None else {}),
              **({"guidance": hires.guidance} if hires.guidance is not None else {})}
    return _refined(second_model, latents, hires.steps or steps, hires.denoise, True, hires.sampler or sampler,
                    final, variation, refiner=refiner, first_pass=steps * step_multiplier(sampler), **second)


def _step_noise(generators: list[torch.Generator], seeds: list[int], ensd: int, sampler: str) -> None:
    """Seed `generators`, which drew each picture's starting noise and go on to draw its sampler's noise at every
    step, with seed + `ensd` (the web UI's Eta noise seed delta; 0: they go on as they are), as the web UI's
    ImageRNG does once a pass's starting noise is drawn. Not for an SDE sampler, whose noise the web UI draws from a
    Brownian tree of the seed that the delta does not reach (`samplers.ensd_reaches`)."""
    if ensd and ensd_reaches(sampler):
        for generator, seed in zip(generators, seeds):
            generator.manual_seed(seed + ensd)


def seed_noise(generators: list[torch.Generator], shape: tuple[int, ...],
               variation: tuple[list[int], float] | None = None) -> torch.Tensor:
    """Each picture's starting noise (B, *shape), drawn from its own generator; with `variation` (each picture's
    variation seed, strength s) blended s of the way toward the variation seed's own noise, as the web UI's Variation
    seed does (its `slerp`: along the noise's second axis; s = 1 is the variation seed's noise)."""
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    if not variation or not variation[1]:
        return noise
    seeds, strength = variation
    other = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return torch.stack([_slerp(strength, a, b) for a, b in zip(noise, other)])


def _slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` (t = 0) to `b` (t = 1) along dim 1 of (C, H, W) noise, as the web UI
    interpolates a variation seed's; nearly parallel noise (it never is) falls back to a straight line."""
    dot = (a / a.norm(dim=1, keepdim=True) * (b / b.norm(dim=1, keepdim=True))).sum(1)  # (C, W)
    if dot.mean() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.acos(dot)
    return (torch.sin((1 - t) * omega) / torch.sin(omega)).unsqueeze(1) * a + \
        (torch.sin(t * omega) / torch.sin(omega)).unsqueeze(1) * b


@contextlib.contextmanager
def _tiled(pipe, tiling: bool, *more: torch.nn.Module | None):
    """With `tiling`, every convolution of the UNet and the VAE (and of `more`: a refiner's UNet and VAE) pads
    circularly for the block, as the web UI's Tiling does: the picture wraps around at its edges, so copies of it
    tile without a seam (textures, patterns)."""
    parts = [pipe.unet, pipe.vae, *(m for m in more if m is not None)]
    convolutions = [m for part in parts for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    modes = [m.padding_mode for m in convolutions]
    if tiling:
        for m in convolutions:
            m.padding_mode = "circular"
    try:
        yield
    finally:
        for m, mode in zip(convolutions, modes):
            m.padding_mode = mode


def _refined(model: Model, latents: torch.Tensor, steps: int, denoise: float, hires: bool, sampler: str,
             size: tuple[int, int], variation: tuple[list[int], float] | None, seeds: list[int],
             pixels: tuple[torch.Tensor, torch.Tensor] | None = None,
             redraw: tuple[torch.Tensor, str, str] | None = None, ensd: int = 0, **drawing) -> list[Image.Image]:
    """The pictures of an img2img pass over `latents` (B, C, h, w) at `denoise`, `steps` counted as
    `refine.pass_steps` counts them (`hires`: the hires fix's), drawn at `size` (W, H), its noise the seeds' (with
    their `variation`), as the web UI's passes draw theirs. `redraw` (the latent mask (B, 1, h, w), 1 where drawn;
    the --inpaint-fill; the --inpaint-blend) keeps the rest of `latents` at every step (`inpaint.blend_denoised`,
    or `inpaint.blend_step` for noised); an inpainting model reads `pixels` (the
    pictures (B, 3, H, W) and their masks (B, 1, H, W)) at every step. `drawing`'s refiner draws the pass's last
    steps (`_pass`), or all of it where its first step is past the switch, as the web UI's does."""
    discard = drawing.get("discard", False)
    schedule, run = _pass_schedule(model, steps, denoise, hires, sampler, discard=discard)
    refiner, given = drawing.get("refiner"), model
    if refiner is not None and _refiner_start(model, refiner, sampler, schedule, run, discard)[0] == 0:
        # a pass that starts past the switch is the refiner's all through, as the web UI's (its apply_refiner runs
        # before each model call): its UNet and text encoder draw, its VAE decodes
        model, drawing = refiner.model, {**drawing, "refiner": None}
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    noise = seed_noise(generators, tuple(latents.shape[1:]), variation)
    _step_noise(generators, seeds, ensd, sampler)
    on_step = on_unet = None
    inpainting_model = model.pipeline.unet.config.in_channels == 9
    if redraw is not None:
        latents = inpainting.start_latents(latents, redraw[0], redraw[1], noise)
        if redraw[2] == "noised":
            on_step = inpainting.blend_step(latents, noise, redraw[0])
        else:
            on_step = inpainting.keep_init(latents, redraw[0])
            on_unet = inpainting.blend_denoised(latents, redraw[0])
    pipe = refine.image_to_image(model.pipeline, noise)
    if model is not given and model.is_xl:  # (conditioned as in a hand-on: `refiner._refiner_time_ids`, `_prompted`)
        pipe.register_to_config(force_zeros_for_empty_prompt=given.pipeline.config.force_zeros_for_empty_prompt,
                                requires_aesthetics_score=model.is_refiner)
        high, low = AESTHETIC_SCORES
        drawing.update(aesthetic_score=high, negative_aesthetic_score=low)
    hook = None
    if inpainting_model and pixels is not None:
        hook = inpainting.conditioning_hook(pipe.unet, pixels[1], pixels[0],
                                            lambda p: refine.encode(pipe.vae, p))
    try:
        # (the web UI schedules an img2img pass's prompt editing over all its --steps, the hires fix's on from
        # the first pass: `_pass`)
        return _pass(model, pipe, run, sampler, size, seeds=seeds, image=latents, generator=generators,
                     num_inference_steps=schedule, strength=refine.strength(schedule, run), output_type="pil",
                     on_step=on_step, on_unet=on_unet, **({} if hires else {"edit_steps": steps}), **drawing)
    finally:
        if hook is not None:
            hook.remove()


def _redrawn(model: Model, start: list[Image.Image], inpaint: Inpaint | None, steps: int, denoise: float,
             sampler: str, size: tuple[int, int], variation: tuple[list[int], float] | None, **drawing
             ) -> list[Image.Image]:
    """The pictures of img2img over `start` (each RGB at its own size) drawn at `size` (W, H), or with `inpaint`
    only where its mask is white, laid back into each picture (`inpaint.prepare`, `inpaint.paste_back`)."""
    pipe = model.pipeline
    if inpaint is None:
        pixels = torch.stack([prepare_image(p, 0, size=size) for p in start])  # (B, 3, H, W)
        masks = torch.ones(len(start), 1, size[1], size[0])  # (an inpainting model's: all of it redrawn)
        return _refined(model, refine.encode(pipe.vae, pixels), steps, denoise, False, sampler, size, variation,
                        pixels=(pixels, masks), **drawing)
    ready = [inpainting.prepare(inpaint, p, size, pipe.vae_scale_factor) for p in start]
    pixels = inpainting.prepared_pixels(ready, size)
    masks = torch.stack([r.pixel_mask for r in ready])  # (B, 1, H, W)
    redraw = torch.stack([r.redraw for r in ready]).to(pipe.device)  # (B, 1, h, w)
    drawn = _refined(model, refine.encode(pipe.vae, pixels), steps, denoise, False, sampler, size, variation,
                     pixels=(pixels, masks), redraw=(redraw, inpaint.fill, inpaint.blend), **drawing)
    return [inpainting.paste_back(d, r) for d, r in zip(drawn, ready)]


def _pass(model: Model, pipe, steps: int, sampler: str, size: tuple[int, int], prompts: list[str], seeds: list[int],
          guidance: float, negative_prompt: str | list[str] | None, clip_skip: int, emphasis_mode: str,
          on_step=None, on_unet=None, refiner: Refiner | None = None, first_pass: int | None = None,
          edit_steps: int | None = None, old_editing: bool = False, eta: float | None = None,
          clip_l: tuple[str | None, str | None] = (None, None), churn: Churn | None = None, discard: bool = False,
          pad_conds: str | None = None, **call):
    """One pipeline call (`pipe`: the model's text-to-image pipeline or its img2img one) that runs `steps` sampling
    steps with `sampler` for `prompts`, conditioned on `size` (W, H) (SDXL's time ids), with `call`'s other
    arguments; its images (or latents). `on_step` (a `callback_on_step_end` that changes the latents: inpainting's
    `blend_step`) runs after each step, after prompt editing's switch; `on_unet` (a function of `pipe` giving hook
    handles: inpainting's `blend_denoised`) hooks the UNet after the prompt's own hooks, so its output hook sees
    the output the pipeline gets. `refiner` draws the pass's last steps (`_handing_on`). `first_pass`: the first
    pass's steps, where this is the hires fix's pass, whose prompt editing counts on from them (`_layout`);
    `edit_steps`: the steps its prompt editing is scheduled over where not the steps it runs (an img2img pass runs
    the last of them, its steps counted from 0, as the web UI counts them). A second-order sampler's steps count
    as its model calls (`step_multiplier`: two a step), as the web UI counts them; `old_editing`: the web UI's old
    prompt editing timelines (`emphasis.prompt_schedule`'s `old`); `clip_l`: `_layout`'s; `churn`: the sigma churn
    of a sampler that takes it (`samplers.scheduler_for`), its noise drawn by the pass's generators; `discard`: the
    next-to-last sigma discarded where the sampler takes that; `pad_conds`: the prompt and its negative read at one
    length (`render`'s, `_layout`'s `pad`)."""
    # We encode the prompts ourselves: the pipeline's own textual-inversion prompt rewriting would expand our
    # already expanded multi-vector tokens a second time (it replaces "<t>" inside "<t>_1" as well).
    stretch = [0]  # the stretch the next UNet call is in (kept by `_switching_conditioning`)
    given_unet, given_vae = pipe.unet, pipe.vae
    multiplier = step_multiplier(sampler)
    prompting = (prompts, negative_prompt, (edit_steps or steps) * multiplier, clip_skip, size, emphasis_mode, stretch,
                 first_pass, old_editing, clip_l, pad_conds)
    ends, given, hooks = _prompted(model, pipe, pipe.unet, *prompting)
    kwargs = dict(given[0])
    switching = _switching_conditioning(model, steps, ends, given, stretch, multiplier > 1) if len(ends) > 1 else {}
    if refiner is not None:
        _, refined, refiner_hooks = _prompted(refiner.model, pipe, refiner.model.unet, *prompting)
        hooks += refiner_hooks
        switching = _handing_on(refiner, given, refined, stretch, size, switching.get("callback_on_step_end"))
    kwargs.update(switching)
    if on_step is not None:
        kwargs.update(_also_each_step(kwargs, on_step))
    hooks += on_unet(pipe) if on_unet is not None else []
    if on_unet is not None and refiner is not None:  # (the refiner's UNet held to the kept latents too)
        pipe.unet = refiner.model.unet
        try:
            hooks += on_unet(pipe)
        finally:
            pipe.unet = given_unet
    was_training, own_scheduler = pipe.unet.training, pipe.scheduler
    pipe.unet.eval()
    pipe.scheduler = scheduler_for(own_scheduler, sampler, seeds, eta=eta, churn=churn,
                                   generators=call.get("generator"), discard=discard)
    if eta is not None and eta_label(sampler) == "Eta DDIM":  # (diffusers' DDIM takes its eta from the pipeline)
        call["eta"] = eta
    try:
        # the generators also draw an ancestral sampler's noise at each step (euler_a): a seed gives its picture
        with warnings.catch_warnings():
            # DPM++ SDE's Brownian tree (torchsde) is asked for noise at its own top and bottom sigma, read back in
            # float32 a hair outside the float64 range it was made with: harmless, and said at every step
            warnings.filterwarnings("ignore", message=r"Should have t[ab](<=t1|>=t0)", category=UserWarning)
            result = pipe(**kwargs, guidance_scale=guidance, **call)
    finally:
        for hook in hooks:
            hook.remove()
        pipe.unet, pipe.vae = given_unet, given_vae  # (the refiner's after a hand-on)
        pipe.unet.train(was_training)
        pipe.scheduler = own_scheduler
    return result.images if call.get("output_type") == "latent" else list(result.images)


def _also_each_step(kwargs: dict, on_step) -> dict:
    """The pipeline's step callback arguments with `on_step` run after the one `kwargs` hold (if any), each one's
    tensors given back, and the latents among the tensors it is handed."""
    first = kwargs.get("callback_on_step_end")
    names = list(kwargs.get("callback_on_step_end_tensor_inputs", []))

    def both(pipe, i, t, tensors):
        out = first(pipe, i, t, tensors) if first is not None else {}
        return {**out, **on_step(pipe, i, t, tensors)}

    return dict(callback_on_step_end=both, callback_on_step_end_tensor_inputs=names + ["latents"])


def _check_sampling(model: Model, steps: int, guidance: float) -> None:
    """Refuse what the pipelines take without complaint or fail on mid-call: more steps than the model's training
    timesteps (DDIM/PNDM raise, Euler quietly repeats timesteps and draws noise) and an infinite guidance scale
    (it passes `>= 1` and draws NaN, black pictures)."""
    if not math.isfinite(guidance):
        raise ConfigError(f"{setting('guidance')} must be a finite number, got {guidance}")
    check_steps(model, steps)


def check_steps(model: Model, steps: int, name: str = "steps") -> None:
    """Refuse more sampling steps than the model's training timesteps (`name`: the setting that gave them)."""
    most = model.pipeline.scheduler.config.get("num_train_timesteps")
    if most and steps > most:
        raise ConfigError(f"{setting(name, steps)} is more than the {most} noise levels {model.source} was trained "
                          f"with; use at most {most} (25-50 is usual)")


def make_grid(images: list[Image.Image], cols: int) -> Image.Image:
    """Images in a grid with `cols` columns, each at the top left of a cell of the widest's width and the tallest's
    height (pictures of one size fill their cells)."""
    w, h = max(img.width for img in images), max(img.height for img in images)
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


def _used_embeddings(model: Model, embeddings: list[LearnedEmbedding],
                     passes: list[tuple[list[str], int, int | None]], old_editing: bool = False
                     ) -> list[LearnedEmbedding]:
    """The embeddings a picture draws with, found as the web UI finds them: by their token among its prompts'
    tokens, at any step (prompt editing can bring one in or take it out), each pass's prompts (`passes`: the prompts,
    the steps they are scheduled over and the first pass's, as `_schedule_passes` gives them) on its own schedule,
    on the timelines drawn (`old_editing`)."""
    tokenizer = model.encoders[0][1]
    ids: set[int] = set()
    for prompts, steps, first_pass in passes:
        for prompt in prompts:
            for _, text in emphasis.prompt_schedule(prompt, steps, first_pass, old_editing):
                ids.update(tokenizer(emphasis.plain_text(text), add_special_tokens=False,
                                     verbose=False).input_ids)
    return [emb for emb in embeddings if tokenizer.convert_tokens_to_ids(emb.token) in ids]


def trained_clip_skip(emb: LearnedEmbedding) -> str | None:
    """The clip skip an embedding file says it was trained with, as a string of digits: textinv's record, else the
    ModelSpec `encoder_layer` kohya's sd-scripts write (its --clip_skip, counted as textinv counts); None: unsaid."""
    for key in ("clip_skip", "modelspec.encoder_layer"):
        value = str(emb.metadata.get(key, "")).strip()
        if value.isdecimal() and int(value) >= 1:
            return value
    return None


def generation_clip_skip(model: Model, asked: int | None, embeddings: list[LearnedEmbedding]) -> int:
    """The clip skip to draw with on `model`: `asked` (--clip-skip), else the one the embeddings were trained with
    (textinv records it in each file), else 1; as `model` reads it (`models.check_clip_skip`: SDXL's 2 is its 1).
    An embedding trained with another one than is drawn with is warned about: its vectors were fitted to another
    layer's output."""
    # (a file's own number as this model reads it; one it cannot take is render's error)
    trained = {e.token: read_clip_skip(model, int(n)) for e in embeddings if (n := trained_clip_skip(e)) is not None}
    clip_skip = check_clip_skip(model, asked) if asked else (
        next(iter(trained.values())) if len(set(trained.values())) == 1 else 1)
    other = {token: n for token, n in trained.items() if n != clip_skip}
    if other:
        warn(f"drawing with clip skip {clip_skip}, but " + ", ".join(f"{t} was trained with {n}"
             for t, n in other.items()) + f": pass {setting('clip_skip')} as it was trained", stacklevel=3)
    return clip_skip


def trained_size(emb: LearnedEmbedding) -> tuple[int, int] | None:
    """The (width, height) an embedding file says it was trained at: textinv's record ("512", a square's side, or
    "512x768" from --resolution WIDTHxHEIGHT), else the ModelSpec resolution kohya's sd-scripts write ("512x768");
    None: unsaid, or not a size a picture can be drawn at (a side that is no multiple of 8).

    >>> trained_size(LearnedEmbedding("<t>", {"text_encoder": torch.zeros(1, 768)}, {"resolution": "512x768"}))
    (512, 768)
    """
    for key in ("resolution", "modelspec.resolution"):
        found = re.fullmatch(r"(\d+)(?:x(\d+))?", str(emb.metadata.get(key, "")).strip())
        if found:
            size = int(found[1]), int(found[2] or found[1])
            return size if all(side > 0 and side % 8 == 0 for side in size) else None
    return None


def generation_size(model: Model, embeddings: list[LearnedEmbedding]) -> tuple[int, int] | None:
    """The (width, height) to draw at where no size is given: the one `embeddings` (those the prompts draw with)
    were trained at where it is not a square and none was trained at another (`trained_size`; a file that does not
    say is left out); None: the model's own. Embeddings trained at different sizes, one of them not square, are
    warned about: the model's own square is drawn, which suits none of them better than another."""
    sizes = {e.token: size for e in embeddings if (size := trained_size(e)) is not None}
    if len(set(sizes.values())) > 1:
        if any(w != h for w, h in sizes.values()):
            warn(f"drawing at {model.resolution}x{model.resolution}, the model's own size: " + ", ".join(
                 f"{t} was trained at {w}x{h}" for t, (w, h) in sizes.items())
                 + f"; pass {setting('width')} and {setting('height')}",
                 stacklevel=3)
        return None
    size = next(iter(sizes.values()), None)
    return size if size and size[0] != size[1] else None


def _slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: letters and digits of any script (with their combining marks, as
    Devanagari's vowel signs or a decomposed accent), the rest as '-'; at most `limit` of them and 3 `limit` bytes
    in UTF-8 (a file name holds 255 bytes: 40 letters of 4 bytes, as CJK's rarer characters are, beside an
    --init-image picture's name, a seed and the temporary name's letters were more).

    >>> len(_slug("𠀀" * 60).encode()), len(_slug("猫" * 60))
    (120, 40)
    """
    kept = "".join(c if c.isalnum() or unicodedata.category(c).startswith("M") else "-" for c in text)
    short = re.sub(r"-+", "-", kept).strip("-")[:limit]
    return short.encode()[:3 * limit].decode(errors="ignore").strip("-") or "image"


@warns_at_caller  # (its warnings name the user's line: `errors.warn`)
def generate(config: GenerateConfig, model: Model | None = None, progress: bool = True,
             keep_seeds: set[int] | None = None, refiner: Model | None = None) -> list[Path]:
    """Write `config.n` images for each prompt (and each picture of an --init-image folder) into `config.out`;
    return their paths, absolute. With `keep_seeds`, every seed is drawn but only those seeds' pictures are written
    (`again`: a picture redrawn in the batch it was drawn in, as a batch's kernels round otherwise than one
    picture's).

    >>> from textinv.config import GenerateConfig
    >>> generate(GenerateConfig(prompt=["a photo of <my-dog>"], embedding=["runs/dog/learned_embeds.safetensors"]))  # doctest: +SKIP
    [PosixPath('/.../renders/000-a-photo-of-my-dog-s0.png'), ...]

    A `model` passed in (`models.load_model`) comes back as it came: the embeddings and LoRAs are taken out again;
    so does a `refiner` passed in (`refiner_model`'s), which --refiner then names, loaded already.
    Running out of GPU memory raises `errors.DeviceMemoryError`, which says where and what needs less.
    With `config.x`, `.y` or `.z` it draws the web UI's X/Y/Z plot instead (`xyz.plot`).
    """
    check_config_object(config, GenerateConfig)
    config = launched(config, model, progress)
    if config.x or config.y or config.z:
        from .xyz import plot

        return [Path(absolute(p)) for p in plot(config, model, progress, keep_seeds, refiner)]
    return generate_together([config], model, progress, keep_seeds, refiner)[0]


def generate_together(configs: list[GenerateConfig], model: Model | None = None, progress: bool = True,
                      keep_seeds: set[int] | None = None, refiner: Model | None = None,
                      suffixes: list[str] | None = None) -> list[list[Path]]:
    """`generate` of each of `configs` in one run: the pictures of all of them share pipeline calls, up to
    --batch-size pictures a call, where nothing but what a call mixes tells them apart (`_batches`); each picture is
    the one its own `generate` draws, as a seed's picture is at any --batch-size (the same but for the rounding of a
    batch's kernels), written with its own name and text (its batch's seeds: those of the call it was drawn in, which
    --again draws it among). The configs must be alike but for their prompts, negative prompts and seeds
    (`together`: the X/Y/Z plot's cells of a Prompt S/R or Seed axis, `xyz.plot`). Their pictures' paths, absolute,
    config by config; `keep_seeds`, `model` and `refiner` as `generate`'s (every config's); `suffixes`: each one's
    files' suffix (`_new_run_suffix`; None: as each would take it drawn alone, one after the other: `_run_suffixes`).
    Running out of memory is said as `generate` says it.

    >>> cells = [GenerateConfig(prompt=["a dog"], seed=1), GenerateConfig(prompt=["a cat"], seed=5)]
    >>> generate_together(cells)  # doctest: +SKIP
    [[PosixPath('/.../renders/000-a-dog-s1.png'), ...], [PosixPath('/.../renders/000-a-cat-s5.png'), ...]]
    """
    where = _Where()
    parts = out_of_memory_as(lambda: _generate(configs, model, progress, keep_seeds, where, refiner, suffixes),
                             lambda e: _memory_error(where, e), lambda: where.device)
    return [[Path(absolute(p)) for p in paths] for paths in parts]  # (as train's files: found from any folder)


def together(checked: Checked) -> tuple:
    """What the runs of `generate_together` must share, given what `checked_settings` read of each: every setting but
    the prompts, the negative prompt, the seed and the variation seed (each picture's own in a pipeline call), the
    embeddings, the ones the prompts' LoRAs bundle among them, and the prompts themselves where the size they draw
    at comes from the embeddings they write (`_trained_size_given`). Runs of equal keys draw as each alone."""
    config = checked.config
    sized = not (config.width or config.height or config.resolution or config.init_image) and any(
        size[0] != size[1] for size in map(trained_size, checked.embeddings) if size)
    words = [(job.prompt, job.negative) for job in checked.jobs] if sized else None
    return (replace(config, prompt=[], negative_prompt="", seed=0, variation_seed=None), list(checked.paths),
            checked.bundled, sorted((token, stand_in[1]) for token, stand_in in checked.stand_ins.items()), words)


def run_names(checked: Checked) -> list[tuple[int, str]]:
    """The file names of the pictures of the run `checked_settings` read, without the run's suffix, each with its
    seed (`_file_names`)."""
    return [(seed, name) for (_, _, seed), name in _file_names(checked.config, checked.jobs,
                                                                  checked.pictures.sources).items()]


def launched(config: GenerateConfig, model: Model | None, progress: bool) -> GenerateConfig:
    """`config` with --precision left out (None) read as `accelerate launch`'s fp16 or bf16, said so where
    `progress`, else as auto (`models.launched_precision`; a `model` passed in draws at its own dtype)."""
    return replace(config, precision=launched_precision(config.precision, progress, passed=model is not None))


@dataclass
class _Where:
    """What `generate` is doing, kept up to date as it goes, for the message if the device runs out of memory:
    loading the model or, once it is there (`installing`, say), what it installs (`batch` 0), or drawing `batch`
    pictures at once; `written` so far, into `out`."""

    device: torch.device | None = None
    installing: str = ""
    dtype: torch.dtype = torch.float32
    batch: int = 0
    width: int = 0
    height: int = 0
    written: int = 0
    out: str = ""


def _memory_error(where: _Where, error: BaseException):
    """The `DeviceMemoryError` for running out of memory at `where`, with the settings that need less there (as its
    user writes them: `errors.setting`), the one that changes the pictures least first."""
    precision = precision_name(where.dtype)
    mps = where.device is not None and where.device.type == "mps"
    half = [setting("precision", "fp16") + (" (on MPS it can draw black pictures)" if mps else "")] \
        if where.dtype == torch.float32 else []
    if not where.batch:  # (a model passed in was not loaded here: installing what the prompts name ran out)
        return memory_error(where.device or "cpu", f"{where.installing or 'loading the model'} ({precision})", half,
                            error=error, changes="the pictures")
    fixes = [f"{setting('batch_size', where.batch // 2)} (the same pictures, up to float rounding)"] * \
        (where.batch > 1) + half
    fixes.append(f"{setting('resolution', smaller_side(where.width))} (other pictures)" if where.width == where.height
                 else f"a smaller {setting('width')} and {setting('height')} (other pictures)")
    kept = f"Pictures written before it: {where.written}, in {where.out}" if where.written else "No picture was written"
    return memory_error(where.device or "cpu", f"drawing {where.batch} picture{'s' * (where.batch != 1)} at once at "
                        f"{where.width}x{where.height} ({precision})", fixes, kept, error, changes="the pictures")


class Checked(NamedTuple):
    """What `checked_settings` read: the settings validated (a copy), the prompts' jobs (`_jobs`), the embeddings
    and their files, the LoRA files, the --init-image pictures (`_InitPictures`, each read once), the --mask's
    `Inpaint`, the LoRA each embedding bundled in one comes from (`_add_bundled`: token -> LoRA name), and the
    bundled embeddings an --embedding of their name kept out (`_add_bundled`), by lowercased token."""

    config: GenerateConfig
    jobs: list
    embeddings: list
    paths: list
    loras: list
    pictures: "_InitPictures"
    inpaint: Inpaint | None
    bundled: dict
    stand_ins: dict


def checked_settings(config: GenerateConfig) -> Checked:
    """What `generate` checks and reads before the model loads, each bad setting refused with its error here (a
    missing embedding file or LoRA, a prompt's broken {variants}, a picture or mask that cannot be read). `xyz.plan`
    checks each cell of a plot with it."""
    config = copy.copy(config).validate()  # (a copy: --seed -1 draws its seed into it, not into the caller's config)
    # composed (NFC), as the text encoders' tokenizers read them: a prompt pasted from a Finder file name is not, and
    # its words would miss the tokens and names compared with them here
    config.prompt, config.negative_prompt = [_nfc(p) for p in config.prompt], _nfc(config.negative_prompt)
    # (the web UI's: an empty hires prompt is the pass's own)
    config.hires_prompt = _nfc(config.hires_prompt) if config.hires_prompt else None
    config.hires_negative_prompt = _nfc(config.hires_negative_prompt) if config.hires_negative_prompt else None
    config.prompt_l, config.negative_prompt_l = (_nfc(p) if p is not None else None
                                                 for p in (config.prompt_l, config.negative_prompt_l))
    jobs = _jobs(config)
    # the prompts as drawn, each job's and its negative: what names the embeddings and LoRAs
    drawn = replace(config, prompt=[job.prompt for job in jobs] + [job.negative for job in jobs])
    # (ComfyUI's embedding:NAME names a file too; under --emphasis comfy it alone does, as there)
    written = drawn.prompt + [text or "" for text in _optional_prompts(config)]  # (every prompt, as written)
    said = " ".join(written).lower()
    if config.emphasis == "comfy":
        said = " ".join(emphasis.comfy_embeddings(said)[1])
    files = embedding_files(config.embedding, config.token or [None] * len(config.embedding), said)
    if config.emphasis == "comfy":
        files = _comfy_folder_tokens(files, config.embedding)
    embeddings, paths = _read_embeddings(files)
    if config.emphasis == "comfy":
        embeddings, paths = _comfy_unnamed(embeddings, paths, written)
    renamed = {path for path, tok in files if tok is not None}
    (texts, config.negative_prompt, config.hires_prompt, config.hires_negative_prompt, config.prompt_l,
     config.negative_prompt_l, said) = _comfy_names(drawn, embeddings, paths, renamed)
    jobs = [replace(job, prompt=prompt, negative=negative)
            for job, prompt, negative in zip(jobs, texts[:len(jobs)], texts[len(jobs):])]
    seen: dict[str, str] = {}
    for emb, path in zip(embeddings, paths):  # a clash between two files, before the model loads
        if emb.token in seen:
            raise TokenError(_clash(emb.token, path, seen[emb.token], config.embedding))
        seen[emb.token] = str(path)
        if emb.token.lower() not in said:  # a typo in the prompt would leave the embedding silently unused
            warn(f"{emb.token!r} (from {path}) is in no {setting('prompt')} or {setting('negative_prompt')}; write it "
                 f"in the prompt where the concept goes, e.g. 'a photo of {emb.token}'", stacklevel=2)
    loras = lora_files([tag for prompt in [job.prompt for job in jobs] + [config.hires_prompt or ""]
                        for tag in emphasis.lora_tags(prompt)[1]], config.lora_dir)
    stand_ins: dict[str, tuple[LearnedEmbedding, str, str]] = {}
    if config.emphasis == "comfy":  # (ComfyUI's LoRA loader leaves a LoRA's bundled embeddings unread)
        bundled = {}
        _warn_comfy_bundles(loras, said)
    else:
        bundled = _add_bundled(loras, embeddings, paths, said, stand_ins)
    _check_bundled_prompted(config, jobs, bundled, loras)
    pictures = _InitPictures(refine.init_pictures(config.init_image))  # (a bad picture: said before the model loads)
    inpaint = mask_settings(config, pictures.sizes)  # (a bad mask too)
    return Checked(config, jobs, embeddings, paths, loras, pictures, inpaint, bundled, stand_ins)


def _clash(token: str, path: str, other: str, given: list[str]) -> str:
    """Why two embedding files cannot both be loaded under `token`, and the fix: --token renames a file given as
    its own --embedding, but a file found in an embeddings folder takes its file's name and no --token (the same
    name in two subfolders: the web UI keeps whichever it reads last, so which one it draws is not knowable)."""
    if path in given and other in given:
        return (f"{path} and {other} both define the token {token!r}; rename one with --token (one --token per "
                f"--embedding, in order)")
    return (f"{path} and {other} both define the token {token!r}: a file in an --embedding folder is called by its "
            f"file's name, as in the web UI (which draws whichever of the two it reads last), and takes no --token; "
            f"rename one of the files and write its new name in the prompt where it is meant")


def _add_bundled(loras: dict[str, Path], embeddings: list[LearnedEmbedding], paths: list[str],
                 said: str, stand_ins: dict | None = None) -> dict[str, str]:
    """Add the embeddings the prompts' LoRA files bundle (`formats.load_bundled`) to `embeddings` (and their
    `FILE::NAME` to `paths`), as the A1111 web UI installs them with their LoRA (extensions-builtin/Lora/networks.py);
    return the LoRA each comes from, by token. As there, a bundled name that an --embedding already gives is skipped
    with a warning (its embeddings folder's file wins), kept in `stand_ins` (lowercased token -> (embedding, its
    FILE::NAME, its LoRA)) for a file that turns out not to fit the model (`_fitting`), and the LoRA's multipliers
    do not touch the vectors. Two LoRAs
    that bundle one name with different vectors are refused: which the web UI draws is not knowable from here. Only
    the names the prompts write (`said`, lowercased) are added, as a web UI embeddings folder's files are: the others
    draw nothing, and a name textinv cannot install (one of several words) fails no prompt that does not use it."""
    given = {emb.token.lower() for emb in embeddings}
    added: dict[str, LearnedEmbedding] = {}  # (by token, lowercased: CLIP's tokenizers read them so)
    bundled: dict[str, str] = {}
    said = emphasis.lora_tags(said)[0]  # (a tag's own name writes no embedding: <lora:mystyle> bundling "mystyle")
    for name, path in loras.items():
        for emb in load_bundled(path):
            key = emb.token.lower()
            if key not in said:
                continue
            if any(c.isspace() for c in emb.token):  # (the web UI matches the words; a token here is one word)
                one = re.sub(r"\s+", "-", emb.token.strip())
                raise ConfigError(f"<lora:{name}> bundles {emb.token!r}, which a prompt writes: a name of several "
                                  f"words, which textinv cannot install (a token is one word); take it out under one "
                                  f"word with: textinv convert \"{path}{BUNDLE_SEPARATOR}{emb.token}\" {one}.pt "
                                  f"--token {one}, then give --embedding {one}.pt and write {one}")
            if key in given:
                warn(f"<lora:{name}> bundles the embedding {emb.token!r}, which an {setting('embedding')} gives too: "
                     f"the {setting('embedding')} is drawn (where it fits the model), as the web UI skips a bundled "
                     f"embedding its embeddings folder has", stacklevel=3)
                if stand_ins is not None:
                    stand_ins.setdefault(key, (emb, f"{path}{BUNDLE_SEPARATOR}{emb.token}", name))
            elif key in added:
                other = added[key]
                if other.widths != emb.widths or any(not torch.equal(other.vectors[k], emb.vectors[k])
                                                     for k in emb.vectors):
                    raise TokenError(f"<lora:{bundled[other.token]}> and <lora:{name}> both bundle an embedding "
                                     f"{emb.token!r}, with other vectors: which one the web UI draws is not knowable; "
                                     f"give the one meant as --embedding {path}{BUNDLE_SEPARATOR}{emb.token}")
            else:
                embeddings.append(emb)
                paths.append(f"{path}{BUNDLE_SEPARATOR}{emb.token}")
                added[key], bundled[emb.token] = emb, name
    return bundled


def _warn_comfy_bundles(loras: dict[str, Path], said: str) -> None:
    """Under --emphasis comfy, warn of an embedding a prompt's LoRA bundles whose name the prompts (`said`,
    lowercased) write as a word: ComfyUI's LoRA loader leaves a LoRA's bundle_emb keys unread (comfy/lora.py, "lora
    key not loaded") and finds `embedding:NAME` in its embeddings folders alone, so the name is words, as here."""
    words = emphasis.comfy_embeddings(emphasis.lora_tags(said)[0], lambda name: "")[0]
    for name, path in loras.items():
        for bundle in [b for b in bundled_names(path) if _named(b, words)]:
            warn(f"<lora:{name}> bundles the embedding {bundle!r}, which the prompt writes: ComfyUI does not read a "
                 f"LoRA's bundled embeddings, nor does {setting('emphasis', 'comfy')}, so it is words; to draw it, "
                 f"give {setting('embedding', f'{path}{BUNDLE_SEPARATOR}{bundle}')} and write embedding:{bundle}",
                 stacklevel=3)


def _fitting(config: GenerateConfig, jobs: list, model: Model, embeddings: list[LearnedEmbedding], paths: list[str],
             loras: dict[str, Path], bundled: dict[str, str], stand_ins: dict) -> None:
    """Put in the place of an --embedding that does not fit `model` (another width) the embedding of its name a
    prompt's LoRA bundles (`_add_bundled`'s `stand_ins`), where that one fits, with a warning naming the file
    skipped: the web UI skips an embeddings folder's file of another shape (textual_inversion.py), so the LoRA's
    bundle is the one it has under that name (Lora/networks.py). Where neither fits, `install_embedding` refuses the
    --embedding, as before."""
    for i, emb in enumerate(embeddings):
        stand_in = stand_ins.get(emb.token.lower())
        if stand_in is None or _fits(model, emb) or not _fits(model, stand_in[0]):
            continue
        bundle, path, lora = stand_in
        _check_bundled_prompted(config, jobs, {bundle.token: lora}, loras)  # (its LoRA's passes only, as a bundle)
        warn(f"{paths[i]} (embedding {emb.token!r}, width {describe_widths(emb.widths)}) does not fit the "
             f"model {model.source} (width {describe_widths(model.widths)}) and is skipped: <lora:{lora}>'s "
             f"bundled {bundle.token!r} is drawn, as the web UI skips an embedding of another shape",
             stacklevel=4)
        embeddings[i], paths[i] = bundle, path
        bundled[bundle.token] = lora


def _fits(model: Model, emb: LearnedEmbedding) -> bool:
    try:
        check_fits(model, emb)
    except FormatError:
        return False
    return True


def _check_bundled_prompted(config: GenerateConfig, jobs: list, bundled: dict[str, str],
                            loras: dict[str, Path]) -> None:
    """Refuse a prompt that writes a bundled embedding's name without the LoRA that bundles it in its pass: the web
    UI has the name only while that LoRA is on, and reads it as words elsewhere; here the token is the model's for
    the whole run, so it would draw the embedding."""
    if not bundled:
        return
    hires_tags = emphasis.lora_tags(config.hires_prompt)[1] if config.hires_prompt else None
    for job in jobs:
        words, tags = emphasis.lora_tags(job.prompt)
        passes = [([words, job.negative], tags)]
        if config.hires_prompt or config.hires_negative_prompt:
            passes.append(([emphasis.lora_tags(config.hires_prompt or "")[0], config.hires_negative_prompt or ""],
                           tags if hires_tags is None else hires_tags))
        for texts, on in passes:
            on = {tag.name for tag in on}
            texts = [emphasis.lora_tags(t)[0] for t in texts]  # (a tag's own name is no word of the prompt)
            for token, lora in bundled.items():
                said = next((t for t in texts if re.search(rf"(?<!\w){re.escape(token)}(?!\w)", t, re.IGNORECASE)),
                            None)
                if said is not None and lora not in on:
                    raise ConfigError(
                        f"{said[:60]!r} writes {token!r}, an embedding bundled in <lora:{lora}>, which its pass does "
                        f"not apply: the web UI has a bundled embedding only while its LoRA is on (elsewhere it reads "
                        f"the name as words); add <lora:{lora}:0> to that prompt (its embeddings without its weights), "
                        f"or give it as --embedding {loras[lora]}{BUNDLE_SEPARATOR}{token}")


def _generate(configs: list[GenerateConfig], model: Model | None, progress: bool, keep_seeds: set[int] | None,
              where: _Where, refiner: Model | None = None, suffixes: list[str] | None = None) -> list[list[Path]]:
    """`generate_together`'s work; `where`: what it is doing, kept up to date for `_memory_error`."""
    check_model_object(model)
    checked: list[Checked] = []
    for config in configs:  # (the first's --init-image pictures are every run's: one run's held, not each one's)
        read = checked_settings(config)
        checked.append(read._replace(pictures=None) if checked else read)
    if any(together(c) != together(checked[0]) for c in checked[1:]):
        raise ConfigError("generate_together draws runs that differ in their prompts, negative prompts and seeds "
                          "alone (`together`): draw the others with generate, one by one")
    config = checked[0].config
    device = pick_device(config.device) if model is None else None  # (a device it lacks: before --out is made)
    # a file in the way or no permission: said now, not after the model has loaded; refused later, and left empty,
    # the folder made for the run goes again
    with output_folder_kept_if_used(config.out):
        return _load_and_draw(checked, model, device, progress, keep_seeds, where, refiner, suffixes)


def _load_and_draw(checked: list[Checked], model: Model | None, device, progress: bool, keep_seeds: set[int] | None,
                   where: _Where, refiner: Model | None, suffixes: list[str] | None) -> list[list[Path]]:
    """`_generate`'s work in its --out: the models loaded (unless `model` is given; on `device`), the embeddings
    installed, the pictures drawn and written."""
    config, _, embeddings, paths, _, pictures, inpaint, bundled, stand_ins = checked[0]
    jobs = [c.jobs for c in checked]
    loras = {name: file for c in checked for name, file in c.loras.items()}  # (one set a call: `_mixable`)
    clear_stale_temporaries(config.out, PICTURE_NAME)  # (a killed run's half-written pictures)
    check_refiner_source(config, model)
    check_hires_source(config, model)
    with interrupt_kept():  # (a Ctrl-C that Python dropped inside a __del__ as they load stops it here)
        if model is None:
            where.device, where.dtype = device, drawing_dtype(config.precision, device)
            model = drawing_model(config, where.dtype, device)
        where.device, where.dtype, where.out = model.unet.device, model.unet.dtype, str(config.out)
        refiner = refiner_model(config, model, refiner)
        second = hires_model(config, model)
    if (config.prompt_l, config.negative_prompt_l) != (None, None) and (not model.is_xl or model.is_refiner):
        raise ConfigError(f"{setting('prompt_l')} and {setting('negative_prompt_l')} give SDXL's CLIP-L its own "
                          f"text; {model.source} has one text encoder: leave them out, or give the prompt itself")
    # (up to the first picture: a model passed in, or one loaded, takes the embeddings now, the LoRAs by prompt)
    what = " and ".join(name for name, given in (("the embeddings", embeddings), ("the LoRAs", loras)) if given)
    where.installing = f"installing {what} in the model" if what else "preparing to draw"
    with handed_back(model), handed_back(refiner.model) if refiner else contextlib.nullcontext(), \
            handed_back(second) if second else contextlib.nullcontext():
        _fitting(config, [job for part in jobs for job in part], model, embeddings, paths, loras, bundled, stand_ins)
        for emb, path in zip(embeddings, paths):
            try:
                install_embedding(model, emb, config.emphasis == "comfy")
            except FormatError as refused:  # (the file said: a folder's or a hub's may hold many, or another name)
                raise FormatError(f"{path}: {refused}") from None
            if refiner:  # (its clip_g half, for an SDXL refiner: `check_fits`)
                install_embedding(refiner.model, emb, config.emphasis == "comfy")
            if second:
                install_embedding(second, emb, config.emphasis == "comfy")
        digests = {entry: file_digest(entry) for entry in config.embedding}  # (the record's: a web UI folder's is None)
        try:
            return _draw_all([c.config for c in checked], model, embeddings, loras, progress, keep_seeds, digests,
                             _embedding_sums(embeddings, paths, digests), where, pictures, inpaint, jobs, refiner,
                             second, {**_given_bundles(embeddings, paths), **bundled}, suffixes)
        finally:
            unload_loras(model)
            if second:
                unload_loras(second)


def check_refiner_source(config: GenerateConfig, model: Model | None = None) -> None:
    """Refuse --refiner of another family than --model (or `model`, loaded already), from what their sources tell
    (`models.source_is_xl`; a hub id's is not known before it loads), an inpainting model
    (`models.source_is_inpainting`; a hub id's is refused once loaded), or --model itself, before either loads;
    `check_refiner` checks the loaded models."""
    if not config.refiner:
        return
    xl = model.is_xl if model is not None else source_is_xl(config.model)
    with _said_of_refiner(config.refiner):
        theirs = source_is_xl(config.refiner)
        where = _where_model_is(config.refiner)
        inpainting_model = source_is_inpainting(config.refiner)
    if inpainting_model:
        raise ConfigError(f"{setting('refiner', config.refiner)} is an inpainting model (its UNet reads a mask and a "
                          f"masked picture besides the latents): a refiner goes on with the model's latents alone; "
                          f"give a text-to-image model or the SDXL refiner")
    if model is None and where == _where_model_is(config.model):
        raise ConfigError(f"{setting('refiner', config.refiner)} is {setting('model', config.model)}: the web UI "
                          f"draws without a refiner when its Refiner is the model loaded; leave {setting('refiner')} "
                          f"out, or give another model")
    _refuse_other_family(setting("refiner", config.refiner), theirs, xl, config,
                         "a refiner continues the model's latents, so it must be of the same kind (the SDXL refiner "
                         "or another SDXL model for SDXL, an SD 1.x/2.x model for SD 1.x/2.x)")


def check_hires_source(config: GenerateConfig, model: Model | None = None) -> None:
    """Refuse --hires-model of another family than --model (or `model`, loaded already), from what their sources
    tell, before either loads; `check_hires_model` checks the loaded models."""
    if not config.hires_model:
        return
    xl = model.is_xl if model is not None else source_is_xl(config.model)
    _refuse_other_family(setting("hires_model", config.hires_model), source_is_xl(config.hires_model), xl, config,
                         "the hires fix's second pass redraws the first pass's latents, so both must be of the same "
                         "family")


def _refuse_other_family(given: str, theirs: bool | None, xl: bool | None, config: GenerateConfig, why: str) -> None:
    """Refuse a second model (`given`: its flag and source) whose source says SDXL (`theirs`) where --model's says
    otherwise (`xl`), or the reverse; None: not known before it loads. `why`: why they must match."""
    if xl is not None and theirs is not None and xl != theirs:
        name = {True: "an SDXL model", False: "an SD 1.x/2.x model"}
        raise ConfigError(f"{given} is {name[theirs]} and {setting('model', config.model)} {name[xl]}: {why}")


def hires_model(config: GenerateConfig, model: Model) -> Model | None:
    """--hires-model loaded as `model` is (its precision and device, --vae and --single-file-config: the web UI's
    VAE setting holds for every checkpoint; --variant for a hub id or folder: a single file has none), checked
    against it (`check_hires_model`); None without one."""
    if not config.hires_model:
        return None
    variant = None if resolve_source(config.hires_model)[0] == "file" else config.variant
    loaded = load_model(config.hires_model, dtype=model.unet.dtype, device=model.unet.device, variant=variant,
                        single_file_config=config.single_file_config, vae=config.vae)
    check_hires_model(model, loaded)
    return loaded


def refiner_model(config: GenerateConfig, model: Model, loaded: Model | None = None) -> Refiner | None:
    """--refiner loaded as `model` is (its precision and device), checked against it (`check_refiner`), or `loaded`
    (this so already: the X/Y/Z plot's, once for all its cells); None without one."""
    if not config.refiner:
        return None
    if loaded is None:
        with _said_of_refiner(config.refiner):
            loaded = load_model(config.refiner, dtype=model.unet.dtype, device=model.unet.device, refiner=True,
                                **_refiner_settings(config))
        check_refiner(model, loaded)
    return Refiner(loaded, config.switch_at())


def _refiner_settings(config: GenerateConfig) -> dict:
    """The --model settings --refiner loads with where they fit it: --vae (the web UI's VAE setting holds for every
    checkpoint, the refiner too, whose VAE decodes the pictures it took over in: `_handing_on`), --variant for a hub
    id or folder (a single file has no variants), --single-file-config for a single file of --model's kind (the SDXL
    refiner's file has its own configs, which a folder of --model's kind does not give). --revision and
    --prediction-type are --model's alone: a revision names a commit of --model's repository, and the refiner's
    prediction type is its own (`check_refiner` refuses one that differs), as the web UI reads each checkpoint's."""
    settings = {"vae": config.vae}
    if resolve_source(config.refiner)[0] != "file":
        return {**settings, "variant": config.variant}
    if source_is_sdxl_refiner_file(config.refiner):
        return settings
    return {**settings, "single_file_config": config.single_file_config}


def _where_model_is(source: str | None) -> tuple[str, str]:
    """`models.resolve_source`'s (kind, location), a folder's or file's resolved, so that two spellings of one path
    compare equal."""
    kind, location = resolve_source(source)
    return kind, str(Path(location).resolve()) if kind in ("folder", "file") else location


@contextlib.contextmanager
def _said_of_refiner(source: str):
    """A `models` error about --refiner's `source` (a path that is not there, an embedding or a LoRA, a hub id not
    downloaded) said of --refiner: `models` says --model of the model it reads."""
    try:
        yield
    except ModelError as e:
        raise ModelError(f"--refiner {source}: {str(e).replace('--model', '--refiner')}") from e


def drawing_model(config: GenerateConfig, dtype: torch.dtype, device) -> Model:
    """The model `config` draws with, loaded with its settings (an inpainting UNet let through for --init-image)."""
    return load_model(config.model, dtype=dtype, device=device, prediction_type=config.prediction_type,
                      single_file_config=config.single_file_config, vae=config.vae, revision=config.revision,
                      variant=config.variant, inpainting=bool(config.init_image))


def mask_settings(config: GenerateConfig, sizes: dict[Path, tuple[int, int]]) -> Inpaint | None:
    """--mask read (`inpaint.read_mask`) with its settings as they resolve (the web UI's defaults), refused where it
    redraws nothing of one of the --init-image pictures (`sizes`: each one's (W, H)); None without it."""
    if not config.mask:
        return None
    inpaint = Inpaint(inpainting.read_mask(config.mask, config.mask_invert),
                      inpainting.MASK_BLUR if config.mask_blur is None else config.mask_blur,
                      config.inpaint_fill or "original", config.mask_invert, config.inpaint_area or "whole",
                      inpainting.MASKED_PADDING if config.masked_padding is None else config.masked_padding,
                      config.inpaint_blend or "denoised")
    for source, size in sizes.items():
        inpaint.check_fits(size, config.mask, str(source))
    return inpaint


def _jobs(config: GenerateConfig) -> list[dynamic.Job]:
    """The prompts and negative prompt the pictures draw, from their templates (`dynamic.jobs`: the web UI's
    sd-dynamic-prompts syntax); read and checked before anything loads."""
    for flag, text, whose in (("--hires-prompt", config.hires_prompt, "the hires fix's prompts take"),
                              ("--hires-negative-prompt", config.hires_negative_prompt, "the hires fix's prompts take"),
                              ("--prompt-l", config.prompt_l, "SDXL's CLIP-L texts take"),
                              ("--negative-prompt-l", config.negative_prompt_l, "SDXL's CLIP-L texts take")):
        if text and dynamic.is_dynamic(dynamic.parse(text, flag)):
            raise ConfigError(f"{flag} {text!r}: {whose} no {{a|b}} variants, __wildcards__ or ${{variables}} (one "
                              f"is drawn for every picture); write the text out, or \\{{, $\\{{ and \\_ for the "
                              f"characters")
    seeds = [config.seed + i for i in range(config.n)]
    return dynamic.jobs(config.prompt, config.negative_prompt, seeds, config.wildcards_dir, config.combinatorial,
                        config.max_prompts or dynamic.MAX_PROMPTS)


@contextlib.contextmanager
def handed_back(model: Model):
    """The embeddings `install_embedding` adds inside the block are taken out again on exit. A model that holds
    embeddings installed before (a notebook's `install_embedding`) keeps those, and only those: the block's go into
    copies of its tokenizers (`scratch_tokens`), so the next call can install the same file again."""
    if not hasattr(model, "_pristine"):  # (a clean model: install_embedding copies the tokenizers itself)
        try:
            yield
        finally:
            unload_embeddings(model)
        return
    with scratch_tokens(model):
        yield


def _embedding_sums(embeddings: list[LearnedEmbedding], labels: list[str],
                    digests: dict[str, str | None]) -> dict[str, str]:
    """Each embedding's file's SHA-256 by its token (`digests` holds those already read), for the web UI's "TI
    hashes": the hash of the one file the web UI would load. An embedding made of two files (a diffusers SDXL pair,
    given as two or found beside the first) is no such file and gets none; a diffusers run folder's is its
    learned_embeds file's."""
    from .formats import _resolve

    sums = {}
    for emb, label in zip(embeddings, labels):
        if not Path(label).exists() and hub_reference(label) is None:  # (a pair's label: "first + second")
            continue
        file = _resolve(label)
        if len(emb.widths) == 2 and _one_half(file):  # its half beside it
            continue
        sums[emb.token] = digests.get(label) or file_digest(str(file))
    return sums


def _given_bundles(embeddings: list[LearnedEmbedding], labels: list[str]) -> dict[str, str]:
    """The LoRA each --embedding bundled in one comes from (`FILE::NAME`, or a LoRA file that bundles it alone), by
    token, as the web UI names a LoRA: its file's name without the suffix. Its "TI hashes" list a bundled embedding
    with that name for a hash (BundledTIHash), the only way it has to draw one: with its LoRA on."""
    found = {}
    for emb, label in zip(embeddings, labels):
        file, name = split_bundle(label)
        if name is not None or bundled_names(file):
            found[emb.token] = Path(file).stem
    return found


def _one_half(file: Path) -> bool:
    """Whether `file` alone holds one text encoder's vectors (a diffusers-sdxl pair's first file). Its modelspec says
    SDXL, which one half contradicts: read alone here on purpose, so not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelSpecWarning)
        return len(load_embedding(file, pair=False).widths) == 1


def drawing_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The weights' dtype for drawing: `precision` as asked, and for "auto" fp16 on a CUDA GPU, fp32 on the CPU
    and on Apple's MPS (diffusers' MPS guide draws SD in fp32; the A1111 web UI's macOS defaults upcast sampling
    and keep the VAE in fp32, as an fp16 UNet and VAE can give black pictures there)."""
    if precision != "auto":
        return DTYPES[precision]
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _sizes(config: GenerateConfig, model: Model, init: tuple[int, int] | None
           ) -> tuple[int, int, Hires | None, tuple[int, int]]:
    """The first pass's width and height (an --init-image's from its picture's size `init`, `refine.start_size`),
    the hires fix (None: off) and the pictures' own size (W, H)."""
    width = config.width or config.resolution or model.resolution
    height = config.height or config.resolution or model.resolution
    if init is not None:
        width, height = refine.start_size(init, config.width, config.height,
                                          config.resolution or model.resolution,
                                          math.lcm(8, model.pipeline.vae_scale_factor))
    if not config.hires():
        return width, height, None, (width, height)
    hires = Hires(config.hires_scale, config.hires_width, config.hires_height, config.hires_steps,
                  passes_denoise(config), config.hires_upscaler or refine.DEFAULT_UPSCALER, config.hires_sampler,
                  guidance=config.hires_guidance)
    return width, height, hires, hires.sizes(width, height, model.pipeline.vae_scale_factor)[2]


def _trained_size_given(config: GenerateConfig, model: Model, embeddings: list[LearnedEmbedding],
                        prompts: list[str]) -> GenerateConfig:
    """`config` with --width and --height the size the embeddings its `prompts` draw with were trained at
    (`generation_size`), where it gives no size of its own (none of --width, --height, --resolution, and no
    --init-image, whose picture's proportions decide): pictures then record the size they were drawn at."""
    if config.width or config.height or config.resolution or config.init_image:
        return config
    used = _used_embeddings(model, embeddings, [(prompts, config.steps or DEFAULT_STEPS, None)],
                            config.old_prompt_editing)
    size = generation_size(model, used)
    return replace(config, width=size[0], height=size[1]) if size else config


def _warn_large(model: Model, drawn: tuple[int, int], stacklevel: int = 3) -> None:
    area = drawn[0] * drawn[1] / model.resolution ** 2
    if area > 4:  # compute grows with the pixels, and quality falls off far from the training size
        warn(f"{drawn[0]}x{drawn[1]} is {area:.3g}x the pixels of the {model.resolution}x{model.resolution} "
             f"{model.source} was trained at: each picture takes about {area:.3g}x as long, and models "
             f"draw poorly far from their training size", stacklevel=stacklevel)


def _warn_small(model: Model, size: tuple[int, int], stacklevel: int = 3) -> None:
    """Warn of a first pass `size` with a side under a quarter of the model's own (8x8, or 1008x8, on SD's 512): the
    UNet sees a few latent pixels on that side and draws noise or mush, though nothing fails."""
    own = model.resolution
    if min(size) < own / 4:
        warn(f"{size[0]}x{size[1]} is far below the {own}x{own} {model.source} was trained at, a side under a quarter "
             f"of its own: models draw noise or mush there; draw at {own}x{own} or near it", stacklevel=stacklevel)


def _draw_all(configs: list[GenerateConfig], model: Model, embeddings: list[LearnedEmbedding],
              loras: dict[str, Path], progress: bool, keep_seeds: set[int] | None, digests: dict[str, str | None],
              embedding_sums: dict[str, str], where: _Where | None = None, pictures: _InitPictures | None = None,
              inpaint: Inpaint | None = None, jobs: list[list[dynamic.Job]] | None = None,
              refiner: Refiner | None = None, second: Model | None = None,
              bundled: dict[str, str] | None = None, suffixes: list[str] | None = None) -> list[list[Path]]:
    """`generate_together`'s drawing and writing of the runs of `configs` (alike but for their prompts and seeds:
    `together`), their pictures' paths run by run; `digests`: each --embedding's SHA-256 (None: a web UI folder),
    `embedding_sums`: each embedding's file's, by its token (`_embedding_sums`); `where`: what it is doing
    (`_memory_error`); `pictures`: the --init-image pictures each prompt redraws (`_InitPictures`; None: no
    picture), each drawn with every seed of the prompt's; `inpaint`: their mask and its settings (--mask); `jobs`:
    each run's prompts and negative prompts as drawn from their templates, and their seeds (`_jobs`; None: each
    --prompt with every seed); `refiner`: --refiner loaded, its embeddings installed (`refiner_model`); `second`:
    --hires-model so (`hires_model`); `bundled`: the LoRA each embedding bundled in one came from, by token
    (`_add_bundled`); `suffixes`: each run's files' (None: `_run_suffixes`)."""
    config = configs[0]  # (what every run's pictures draw with: their prompts and seeds are their jobs')
    pictures = pictures or _InitPictures([None])
    steps = config.steps or DEFAULT_STEPS
    guidance = model.guidance_or_own(config.guidance)  # (render checks it, and the steps, before drawing)
    clip_skip = generation_clip_skip(model, config.clip_skip, embeddings)
    parts = jobs or [[dynamic.Job(i, p, c.negative_prompt, tuple(range(c.seed, c.seed + c.n)))
                      for i, p in enumerate(c.prompt)] for c in configs]
    jobs = [job for part in parts for job in part]
    # each prompt's and negative prompt's words and LoRAs, all read (a bad tag refused) before any picture is drawn
    texts = [emphasis.lora_tags(job.prompt) for job in jobs]
    negatives = {job.negative: emphasis.lora_tags(job.negative) for job in jobs}
    drawn = [words for words, _ in texts + list(negatives.values())] + [emphasis.lora_tags(config.hires_prompt or "")[0]]
    config = _trained_size_given(config, model, embeddings, drawn)  # (each run's alike: `together`)
    configs = [replace(c, width=config.width, height=config.height) for c in configs]
    _warn_unapplied(config, jobs, negatives)
    _warn_unknown_tokens(config, model, drawn)
    names = _file_names(config, jobs, pictures.sources)
    part = [p for p, these in enumerate(parts) for _ in these]  # (each job's run)
    mine = [[name for (index, _, seed), name in names.items() if part[index] == p and (keep_seeds is None or
             seed in keep_seeds)] for p in range(len(parts))]
    run = _Run(config, model, embeddings, loras, _hires_prompts(config, embeddings, model), steps, guidance, clip_skip,
               pictures, inpaint, recorded_sums=[digests[e] for e in config.embedding], embedding_sums=embedding_sums,
               mask_sum=file_sha256(Path(config.mask)) if config.mask else None, where=where or _Where(),
               keep_seeds=keep_seeds, names=names, mine=mine,
               suffix=list(suffixes) if suffixes is not None else _run_suffixes(Path(config.out), mine),
               refiner=refiner, hires_model=second, bundled=bundled or {}, configs=configs, part=part,
               written=[[] for _ in parts], order=list(reversed(names)))
    prompts = [_prompt(run, *texts[index], negatives[job.negative][0]) for index, job in enumerate(jobs)]
    bar = tqdm(total=sum(len(job.seeds) for job in jobs) * len(pictures.sources), disable=not progress,
               desc="generate", unit="img")
    try:  # (closed on a failure too: the error is then said on a line of its own, not after the bar)
        try:
            # (a Ctrl-C that Python dropped inside a __del__ as a batch draws stops it before the next batch is drawn)
            with interrupt_kept() as kept:
                for batch in _batches(run, jobs, prompts):
                    kept.check()
                    _draw_batch(run, jobs, prompts, batch, bar)
        finally:  # (stopped part-way: a Ctrl-C, a failed call or write; counted in what is said of it below)
            _write_held(run)
    except KeyboardInterrupt as stop:
        if isinstance(stop, GenerationInterrupted):
            raise
        done, total = sum(map(len, run.written)), sum(map(len, run.mine))  # (--again's: the kept seeds' alone)
        raise GenerationInterrupted(f"{done} of {total} picture{'s' * (total != 1)} had been written to {config.out}, "
                                    f"each whole" if done else f"none of {total} picture{'s' * (total != 1)} had "
                                    f"been written") from None
    finally:
        bar.close()
    return run.written


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C while `generate` drew; its text says how many pictures had been written, and where (each whole: every
    write is atomic), which `textinv generate` says after "interrupted"."""


class _InitPictures:
    """The --init-image pictures (`refine.init_pictures`; [None]: none), each read once a run, before the model
    loads (a bad one is said then): its SHA-256, which its pictures record so that --again tells a file replaced at
    its path, its size, and the picture itself, kept for every prompt that redraws it while the kept ones add up to
    at most `KEEP_PIXELS` (past that, a folder of big photos is read again for each batch rather than held)."""

    KEEP_PIXELS = 64_000_000  # (about 190 MB of RGB: 15 pictures of 2048 x 2048)

    def __init__(self, sources: list[Path | None]):
        self.sources = sources
        self.sums: dict[Path, str] = {}
        self.sizes: dict[Path, tuple[int, int]] = {}
        self.kept: dict[Path, Image.Image] = {}
        room = self.KEEP_PIXELS
        for source in sources:
            if source is None:
                continue
            try:
                picture = load_image(source)
            except DataError as e:  # (said as the flag, as --mask says its picture)
                raise DataError(f"{setting('init_image', source)}: {e}") from None
            self.sums[source], self.sizes[source] = file_sha256(source), picture.size
            if picture.width * picture.height <= room:
                self.kept[source] = picture
                room -= picture.width * picture.height

    def picture(self, source: Path | None) -> Image.Image | None:
        """The picture of `source` (None: none), as `load_image` reads it."""
        if source is None:
            return None
        return self.kept[source] if source in self.kept else load_image(source)


def _warn_unapplied(config: GenerateConfig, jobs: list[dynamic.Job],
                    negatives: dict[str, tuple[str, list[emphasis.LoraTag]]]) -> None:
    """Warn of what the prompts write that is not applied: LoRA tags in a negative prompt, and the web UI's syntax
    textinv reads as words (`emphasis.unsupported`)."""
    negative_loras = [tag for _, tags in negatives.values() for tag in tags]
    negative_loras += emphasis.lora_tags(config.hires_negative_prompt or "")[1]
    if negative_loras:
        warn("LoRA tags in the negative prompt are not applied (only the prompt's are): "
             + ", ".join(f"<lora:{t.name}>" for t in negative_loras), stacklevel=3)
    for text in dict.fromkeys([job.prompt for job in jobs] + list(negatives) + [config.hires_prompt or "",
                                                                               config.hires_negative_prompt or ""]):
        if emphasis.unsupported(text):
            warn(f"{text[:60]!r} uses the web UI's " + ", ".join(emphasis.unsupported(text)) + ", which "
                 "textinv does not apply: they are read as words", stacklevel=3)


_TOKEN_LIKE = re.compile(r"<[^<>\s:|]+>")  # a learned token's usual spelling (not the web UI's <lora:...> tags)


def _warn_unknown_tokens(config: GenerateConfig, model: Model, texts: list[str]) -> None:
    """Warn of a `<token>` the prompts write (`texts`: their words, LoRA tags taken out) that no embedding given and
    nothing in the model's vocabulary is: it is drawn as the pieces of words its letters make, without any concept,
    most often because the embedding's file was not given, or because it is misspelled (the learned token nearest
    it is named). Case does not count, as it does not to the tokenizer (`<MY-DOG>` draws `<my-dog>`). Not under
    --emphasis comfy, where a bare token is words and `embedding:NAME` names a file (said on their own)."""
    if config.emphasis == "comfy":
        return
    tokenizer = model.encoders[0][1]
    learned = {token.lower(): token for token in tokenizer.get_added_vocab() if _TOKEN_LIKE.fullmatch(token)}
    unknown = [word for word in dict.fromkeys(w for text in texts for w in _TOKEN_LIKE.findall(text))
               if word.lower() not in learned
               and tokenizer.convert_tokens_to_ids(word.lower()) == tokenizer.unk_token_id]
    if unknown:
        near = {word: difflib.get_close_matches(word.lower(), learned, 1) for word in unknown}
        named = [word + "".join(f" (the learned {learned[n]} misspelled?)" for n in near[word]) for word in unknown]
        # (a file to give helps only a token that is not a misspelling of one already given)
        fix = (f"fix the spelling in {_written_in(config, unknown)}" if all(near.values()) else
               f"give the file with {setting('embedding')} (a file or a folder of them)")
        warn(f"{', '.join(named)} {'is' if len(unknown) == 1 else 'are'} in no embedding given and not in the "
             f"model's vocabulary: drawn as pieces of words, without a concept; {fix}", stacklevel=3)


def _written_in(config: GenerateConfig, words: list[str]) -> str:
    """The settings whose text writes any of `words` (`--prompt or --negative-prompt`), for a warning that says where
    to change them; "the prompt" where none does (a word a wildcard file gave)."""
    names = [name for name in ("prompt", "negative_prompt", "hires_prompt", "hires_negative_prompt")
             if any(word in text for word in words for text in _texts(getattr(config, name)))]
    return " or ".join(setting(name) for name in names) or "the prompt"


def _texts(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _file_names(config: GenerateConfig, jobs: list[dynamic.Job], sources: list[Path | None]
                ) -> dict[tuple[int, Path | None, int], str]:
    """Each picture's file name, without the run's suffix, by its prompt's place, its --init-image picture and its
    seed: the prompt's number and words, the picture's name (an --init-image folder's, `_source_labels`), the seed.
    The words are those of the first pass's last step, scheduled as it is (`_schedule_passes`): `[a:b:7]` of 2 steps
    draws "a" throughout."""
    folder = config.init_image is not None and Path(config.init_image).is_dir()
    labels = _source_labels(sources) if folder else {source: "" for source in sources}
    steps = (config.steps or DEFAULT_STEPS) * step_multiplier(config.sampler)
    return {(index, source, seed): f"{job.index:03d}-"
                                   f"{_slug(emphasis.words_drawn(job.prompt, steps, config.old_prompt_editing))}"
                                   f"{labels[source]}-s{seed}"
            for index, job in enumerate(jobs) for source in sources for seed in job.seeds}


@dataclass(frozen=True)
class _HiresPrompts:
    """The hires fix's own prompts, read as the first pass's are: the prompt's words (None: the first pass's) and
    its LoRA tags, and the negative prompt expanded (None: the first pass's)."""

    text: str | None
    tags: list[emphasis.LoraTag]
    negative: str | None


def _hires_prompts(config: GenerateConfig, embeddings: list[LearnedEmbedding], model: Model) -> _HiresPrompts:
    text, tags = emphasis.lora_tags(config.hires_prompt) if config.hires_prompt else (None, [])
    negative = emphasis.lora_tags(config.hires_negative_prompt or "")[0]
    return _HiresPrompts(text, tags, expand_all(negative, embeddings, model) if config.hires_negative_prompt else None)


@dataclass
class _Run:
    """What every picture of one `generate_together` call shares as `_draw_all` draws them (`recorded_sums`: each
    --embedding's SHA-256 as the record lists them; `embedding_sums`: by token, for the web UI's hashes;
    `mask_sum`: the --mask's SHA-256), each picture's file name (`names`: by its prompt's place, --init-image picture
    and seed), and what it has done so far. Each of its runs (`configs`, each job's by its place: `part`) has the
    names it writes (`mine`), its suffix (`_run_suffixes`) and the paths written (`written`); `config` is the
    first's, which every picture draws with (their prompts and seeds are their jobs')."""

    config: GenerateConfig
    model: Model
    embeddings: list[LearnedEmbedding]
    loras: dict[str, Path]
    hires: _HiresPrompts
    steps: int
    guidance: float
    clip_skip: int
    pictures: _InitPictures
    inpaint: Inpaint | None
    recorded_sums: list[str | None]
    embedding_sums: dict[str, str]
    mask_sum: str | None
    where: _Where
    keep_seeds: set[int] | None
    names: dict[tuple[int, Path | None, int], str]
    mine: list[list[str]]
    suffix: list[str]
    lora_sums: dict[str, str] = field(default_factory=dict)  # each LoRA's web UI hash (`lora_sha256`), read once
    warned: set[tuple[int, int]] = field(default_factory=set)  # the sizes `_warn_large` has warned of
    warned_small: set[tuple[int, int]] = field(default_factory=set)  # the first passes' sizes `_warn_small` has seen
    loras_on: dict | None = None  # the LoRAs active on the model (`_lora_set`; None: not known)
    refiner: Refiner | None = None  # --refiner (`refiner_model`)
    hires_model: Model | None = None  # --hires-model (`hires_model`)
    written: list[list[Path]] = field(default_factory=lambda: [[]])
    bundled: dict[str, str] = field(default_factory=dict)  # token -> the LoRA that bundles it (`_add_bundled`)
    configs: list[GenerateConfig] = field(default_factory=list)
    part: list[int] = field(default_factory=list)
    # the pictures not yet written, the next last (`names`' order, reversed), and those drawn but held until the
    # pictures ahead of them are written, each with its PNG text and its call's seeds (`_write_batch`)
    order: list[tuple[int, Path | None, int]] = field(default_factory=list)
    drawn: dict[tuple[int, Path | None, int], tuple[Image.Image, _Text, list[int]]] = field(default_factory=dict)

    def config_of(self, index: int) -> GenerateConfig:
        """The settings of the run job `index` is of: its record's, its variation seeds' (counted from its --seed)."""
        return self.configs[self.part[index]]


@dataclass(frozen=True)
class _Prompt:
    """One job's prompt as it draws: `expanded` (every multi-vector token written out), its LoRA `tags`, the
    `negative` prompt expanded, whether the hires fix `switch`es to the hires prompt's LoRAs for its pass, and the
    web UI's `hashes` of what it draws with."""

    expanded: str
    tags: list[emphasis.LoraTag]
    negative: str
    switch: bool
    hashes: dict


def _batches(run: _Run, jobs: list[dynamic.Job], prompts: list[_Prompt]
             ) -> Iterator[list[tuple[int, Path | None, int]]]:
    """The pictures (their job's place, --init-image picture, seed), a pipeline call's at a time, each call's in the
    order they are written, the calls in the order of their first picture: each job's seeds over each --init-image
    picture (or none), up to --batch-size pictures a call (which bounds the memory). Pictures of different prompts
    (dynamic prompts' draws, several --prompt, the runs of `generate_together`) share a call where nothing but their
    words tells them apart (`_mixable`), so a varied template draws full batches, and pictures of different
    --init-image pictures share one where they draw at one size (`_start_size`), each row from its own picture (and
    its own part of the --mask: `render`'s `start`), wherever they lie in the run, so a folder of photos of a few
    sizes draws a few calls, not one each time the size changes; each is still the picture its seed draws alone, as a
    seed's picture is at any batch size, and is written in its turn (`_write_batch`)."""
    starts = {source: _start_size(run, source) for source in run.pictures.sources}
    filling: dict[tuple, list[tuple[int, Path | None, int]]] = {}  # (each kind's last call, by what it shares)
    batches: list[list[tuple[int, Path | None, int]]] = []
    for index, job in enumerate(jobs):
        mixable = _mixable(run, prompts[index])  # (its prompt's, whatever the picture: laid out once a job)
        for source in run.pictures.sources:
            kind = (starts[source], mixable)
            for seed in job.seeds:
                batch = filling.get(kind)
                if batch is None or len(batch) == run.config.batch_size:
                    batch = filling[kind] = []
                    batches.append(batch)
                batch.append((index, source, seed))
    yield from batches


def _start_size(run: _Run, source: Path | None) -> tuple[int, int] | None:
    """The size (W, H) the pictures redrawn from --init-image picture `source` are drawn at (None: no picture), from
    its size as read before the model loaded (`_InitPictures`): pictures of different sizes never share a call."""
    if source is None:
        return None
    return _sizes(run.config, run.model, run.pictures.sizes[source])[:2]


def _schedule_passes(run: _Run) -> list[tuple[int, int | None]]:
    """(steps, the first pass's) each pass schedules prompt editing over (`_pass`): the first pass's --steps (an
    img2img's all of them, a second-order sampler's model calls), then the hires fix's, counted on from the first's."""
    config = run.config
    first = run.steps * step_multiplier(config.sampler)
    passes: list[tuple[int, int | None]] = [(first, None)]
    if config.hires():
        steps = refine.pass_steps(config.hires_steps or run.steps, passes_denoise(config), True)[1]
        passes.append((steps * step_multiplier(config.hires_sampler or config.sampler), first))
    return passes


def _mixable(run: _Run, prompt: _Prompt) -> tuple:
    """What pictures of different prompts must share to be drawn in one pipeline call as each is drawn alone: the
    LoRAs (one set a call), and in each pass, the number of sub-prompts (AND), of chunks of 77 the prompt and its
    negative are padded to (long prompts, BREAK), and whether the padding is hidden from the UNet (`_layout`), each
    of which changes how the UNet's kernels run. Their negative prompts may differ: each row of the call has its
    own picture's (`render`), as the web UI's batch stacks each picture's."""
    shapes = tuple((len(at.owners) if at.composed else 0, at.chunks, at.lengths is not None)
                   for at in _pass_layouts(run, prompt))
    return tuple(_lora_set(prompt.tags).items()), prompt.switch, shapes


def _pass_layouts(run: _Run, prompt: _Prompt) -> list[_Layout]:
    """How each pass (`_schedule_passes`) lays out `prompt` and its negative as `render` draws them (`_layout`): the
    first pass's, then the hires fix's with its own prompt and negative where given (`_source_pass` hands them to
    `render`). Under --zero-negative the negative is laid out empty, as `_prompted` lays out the zeros (a negative
    prompt beside it is refused, so each is empty there anyway)."""
    config, model, hires = run.config, run.model, run.hires
    negative = "" if config.zero_negative else prompt.negative
    texts = [(prompt.expanded, negative),
             (prompt.expanded if hires.text is None else expand_all(hires.text, run.embeddings, model),
              negative if hires.negative is None else hires.negative)]
    return [_layout(model, [text], negative, steps, first_pass, config.old_prompt_editing, config.emphasis == "comfy",
                    pad=_pad_mode(config))
            for (steps, first_pass), (text, negative) in zip(_schedule_passes(run), texts)]


def _draw_batch(run: _Run, jobs: list[dynamic.Job], prompts: list[_Prompt], batch: list[tuple[int, Path | None, int]],
                bar) -> None:
    """Draw one of `_batches`' batches in one `render` call, its LoRAs made active first, and write its pictures in
    their turn (`_write_batch`)."""
    config, model = run.config, run.model
    first, source, _ = batch[0]
    # (each row's, each picture decoded and each job's text made once a batch)
    inits = {s: run.pictures.picture(s) for s in dict.fromkeys(s for _, s, _ in batch)}
    passes = {(index, s): _source_pass(run, jobs[index], prompts[index], s, run.config_of(index))
              for index, s in dict.fromkeys((index, s) for index, s, _ in batch)}
    # (the same for every row: its size, `_start_size`, and its hires prompt)
    width, height, hires, drawn, _ = passes[first, source]
    seeds = [seed for _, _, seed in batch]
    run.where.batch, (run.where.width, run.where.height) = len(batch), drawn
    variation = ([_variation_seed(run.config_of(index), seed) for index, _, seed in batch],
                 config.variation_strength) if config.variation_strength else None
    prompt = prompts[first]
    if run.loras_on != _lora_set(prompt.tags):
        apply_loras(model, prompt.tags, run.loras)
    run.loras_on = None  # (unknown until render is done: the hires fix may switch)
    clip_l = tuple(text if text is None else expand_all(text, run.embeddings, model)
                   for text in (config.prompt_l, config.negative_prompt_l))
    negatives = [prompts[index].negative for index, _, _ in batch]  # (each picture's own: `_mixable`)
    negative = negatives if len(set(negatives)) > 1 else negatives[0]
    images = render(model, [prompts[index].expanded for index, _, _ in batch], seeds, run.steps,
                    guidance=run.guidance, negative_prompt=None if config.zero_negative else negative,
                    sampler=config.sampler, clip_skip=run.clip_skip, width=width, height=height,
                    start=None if source is None else [inits[s] for _, s, _ in batch],
                    denoise=passes_denoise(config), hires=hires,
                    variation=variation, tiling=config.tiling, emphasis_mode=config.emphasis, inpaint=run.inpaint,
                    refiner=run.refiner, old_editing=config.old_prompt_editing, eta=config.eta, ensd=config.ensd,
                    clip_l=clip_l, churn=config.churn(), discard=config.discard_penultimate_sigma,
                    pad_conds=_pad_mode(config))
    # (the hires fix's LoRAs went to --hires-model, where there is one: `_hires_switch`)
    run.loras_on = _lora_set(run.hires.tags if prompt.switch and run.hires_model is None else prompt.tags)
    _write_batch(run, batch, images, {row: made[4] for row, made in passes.items()}, bar)


def write_failed(error: OSError, out: Path, written: int) -> ConfigError:
    """The error for a picture that could not be written into `out` after `written` were: a full disk, a folder made
    read-only, or removed (moved, its disk unmounted) while drawing."""
    kept = (f"the {written} picture{'s' * (written != 1)} written before it {'are' if written != 1 else 'is'} in {out}"
            if written else "no picture was written")
    if not out.is_dir():
        return ConfigError(f"{setting('out', out)} was removed (or moved, or its disk unmounted) while drawing, after "
                           f"{written} picture{'s' * (written != 1)} had been written to it; nothing more was "
                           f"written: give the folder back, or another {setting('out')}, and run the command again")
    name = Path(error.filename).name if error.filename else "a picture"
    fix = {errno.ENOSPC: "make room", errno.EDQUOT: "make room", errno.EROFS: f"choose another {setting('out')}"}.get(
        error.errno, f"make the folder writable, or choose another {setting('out')}")
    return ConfigError(f"{setting('out', out)}: cannot write {name} ({error.strerror or error}); {kept}: {fix}, then "
                       f"run the command again")


def _write_batch(run: _Run, batch: list[tuple[int, Path | None, int]], images: list[Image.Image],
                 texts: dict[tuple[int, Path | None], _Text], bar) -> None:
    """Write the pictures of `batch` (`_batches`), drawn in one call, in the order a run writes its pictures
    (`_Run.order`: that of their names): a picture drawn before one ahead of it (an --init-image folder's picture in
    a call with a picture of its size further on) is held until that one is written, so the files are written, and
    listed, in that order whatever calls drew them; a run stopped part-way writes those it holds then (`_write_held`).
    Only `keep_seeds`' are written when given, each with its job's PNG text for its --init-image picture (`texts`, by
    the job's place and the picture; none under --metadata none) and the seeds of its call."""
    chunk = [seed for _, _, seed in batch]
    for (index, source, seed), img in zip(batch, images):
        run.drawn[index, source, seed] = img, texts[index, source], chunk
    bar.update(len(batch))  # (drawn: a held picture is done too)
    while run.order and run.order[-1] in run.drawn:
        _write_drawn(run, run.order.pop())


def _write_held(run: _Run) -> None:
    """Write the pictures `_write_batch` holds (drawn, but behind one not yet written) in the run's order, as it
    would have written them, when the run stops part-way: a Ctrl-C, an error in a later call (out of memory), or a
    picture that could not be written. A held one that cannot be written either is left out, the others tried, and
    what stopped the run is what is raised (a full disk's error, with the count of pictures written before it)."""
    for key in [key for key in reversed(run.order) if key in run.drawn]:
        with contextlib.suppress(ConfigError):  # (`write_failed`'s: the error in flight is said instead)
            _write_drawn(run, key)


def _write_drawn(run: _Run, key: tuple[int, Path | None, int]) -> None:
    """Write the picture `key` drawn (`_Run.drawn`, which lets go of it) with its job's PNG text and its call's
    seeds, unless `keep_seeds` leave it out."""
    index, _, seed = key
    img, text, chunk = run.drawn.pop(key)
    if run.keep_seeds is not None and seed not in run.keep_seeds:  # (drawn only as the kept one's batch)
        return
    _write_one(run, key, img, text.png(run.config_of(index), seed, chunk) if run.config.metadata != "none" else None)


def _write_one(run: _Run, key: tuple[int, Path | None, int], img: Image.Image, info: PngInfo | None) -> None:
    """Write the picture `key` (its job's place, --init-image picture and seed) under its name with the suffix of
    its run, with the PNG text `info`."""
    config, part = run.config, run.part[key[0]]
    try:
        path, run.suffix[part] = _save_new(img, Path(config.out), run.names[key], run.suffix[part], run.mine[part],
                                           info)
    except OSError as e:
        raise write_failed(e, Path(config.out), run.where.written) from e
    run.written[part].append(path)
    run.where.written += 1


def _prompt(run: _Run, words: str, tags: list[emphasis.LoraTag], negative: str) -> _Prompt:
    """A job's prompt (`words` and LoRA `tags`) and `negative` words made ready to draw (`_draw_batch` makes its LoRAs
    active)."""
    negative = expand_all(negative, run.embeddings, run.model)  # (a learned negative needs all its vectors)
    expanded = expand_all(words, run.embeddings, run.model)
    # the web UI activates the hires prompt's LoRAs for the second pass (its hr_extra_network_data), and every
    # network it does not name with none: a hires prompt without tags draws that pass without LoRAs
    hires = run.hires
    switch = run.config.hires() and hires.text is not None and _lora_set(hires.tags) != _lora_set(tags)
    hashes = {}
    if run.config.metadata != "none":
        drawn_loras = tags + (hires.tags if switch else [])  # (both passes')
        second = [words if hires.text is None else hires.text, negative if hires.negative is None else hires.negative]
        hashes = _prompt_hashes(run, drawn_loras, [words, negative], second)
    return _Prompt(expanded, tags, negative, switch, hashes)


def _prompt_hashes(run: _Run, loras: list[emphasis.LoraTag], first: list[str], second: list[str]
                   ) -> dict[str, str]:
    """The web UI's hashes of the LoRAs and embeddings a prompt draws with (`first`: the first pass's prompt and
    negative prompt, `second`: the hires fix's, when it draws one), by which civitai links them."""
    for tag in loras:
        if tag.name not in run.lora_sums:
            run.lora_sums[tag.name] = lora_sha256(run.loras[tag.name])
    passes = [(prompts, *steps) for prompts, steps in zip([first, second], _schedule_passes(run))]
    used = _used_embeddings(run.model, run.embeddings, passes, run.config.old_prompt_editing)
    # a bundled embedding's "hash" is its LoRA's name (the web UI's BundledTIHash, with its default "Add Lora name
    # as TI hashes for bundled Textual Inversion")
    bundled = ", ".join(f"{hash_name(e.token)}: {run.bundled[e.token]}" for e in used if e.token in run.bundled)
    files = webui_hashes({e.token.removeprefix(COMFY_TOKEN): run.embedding_sums[e.token] for e in used
                          if e.token in run.embedding_sums and e.token not in run.bundled})  # (a folder's file by name)
    return {"lora_hashes": webui_hashes({tag.name: run.lora_sums[tag.name] for tag in loras}),
            "ti_hashes": ", ".join(text for text in (files, bundled) if text)}


def _source_pass(run: _Run, job: dynamic.Job, prompt: _Prompt, source: Path | None, config: GenerateConfig
                 ) -> tuple[int, int, Hires | None, tuple[int, int], _Text]:
    """What a job's pictures from one --init-image picture `source` (None: none) draw at: the first pass's width and
    height, the hires fix with this prompt's second pass, the pictures' size (warned of when large; the first pass
    when small) and their PNG text (recording `config`, its run's settings)."""
    model = run.model
    width, height, hires, drawn = _sizes(config, model, run.pictures.sizes.get(source))
    if hires is not None:  # (with this prompt's second pass)
        text = run.hires.text
        hires = replace(hires, prompt=expand_all(text, run.embeddings, run.model) if text is not None else None,
                        negative_prompt=run.hires.negative, model=run.hires_model, switch=_hires_switch(run, prompt))
    if drawn not in run.warned:
        run.warned.add(drawn)
        _warn_large(model, drawn, stacklevel=5)
    if (width, height) not in run.warned_small:  # (the first pass: where the picture is composed)
        run.warned_small.add((width, height))
        _warn_small(model, (width, height), stacklevel=5)
    shared = _record(config, model, run.steps, run.guidance, run.clip_skip, width, height, source)
    img2img = (passes_denoise(config) or refine.IMG2IMG_DENOISE) if source is not None else None
    second = (hires.model or model) if hires is not None else model  # (the model of the pass the refiner draws in)
    refined = run.refiner is not None and refiner_switches(second, run.refiner, run.steps, config.sampler, img2img,
                                                            hires, config.discard_penultimate_sigma)
    png = _Text(job.prompt, prompt.expanded, shared, prompt.hashes, run.recorded_sums, hires, source, job,
                run.pictures.sums.get(source), run.mask_sum, refined, _pads(run, prompt))
    return width, height, hires, drawn, png


PAD_MODES = (None, "empty", "v0")  # `render`'s pad_conds


def _pad_mode(config: GenerateConfig) -> str | None:
    """`render`'s `pad_conds` for --pad-cond-uncond-v0 (the web UI's v0 first, where both are on) or
    --pad-cond-uncond."""
    return "v0" if config.pad_cond_uncond_v0 else "empty" if config.pad_cond_uncond else None


def _pads(run: _Run, prompt: _Prompt) -> dict:
    """The PNG text of --pad-cond-uncond (or -v0) where it pads the prompt or its negative at the last step of a pass
    (the hires fix's with its own prompts where given, `_pass_layouts`): the web UI's "Pad conds: True" (or "Pad
    conds v0: True"), from its sampler's padded_cond_uncond, read once a pass is done; empty where nothing was
    padded."""
    mode = _pad_mode(run.config)
    if mode is None:
        return {}
    padded = any(at.padded for at in _pass_layouts(run, prompt))
    return {"pad_cond_uncond_v0" if mode == "v0" else "pad_cond_uncond": "True"} if padded else {}


def _hires_switch(run: _Run, prompt: _Prompt) -> Callable[[], None] | None:
    """What makes the hires fix's second pass draw with its LoRAs (`Hires.switch`; None: those of the first pass, on
    its model already): the hires prompt's where they differ from the prompt's (`_Prompt.switch`), else the prompt's,
    made active on the model that draws that pass, as the web UI activates the pass's networks once the Hires
    checkpoint is loaded (processing.py's sample_hr_pass: its hr_extra_network_data)."""
    tags = run.hires.tags if prompt.switch else prompt.tags
    if run.hires_model is not None:
        return lambda: apply_loras(run.hires_model, tags, run.loras)
    return (lambda: apply_loras(run.model, tags, run.loras)) if prompt.switch else None


@dataclass
class _Text:
    """What the PNG text of a prompt's pictures from one --init-image picture (or none) is made of: the `prompt` as
    given and `expanded`, `_record`'s settings (`shared`, reduced by `shareable_record` under --metadata shareable),
    the web UI's `hashes`, the embeddings' SHA-256 (`sums`), the hires fix, the init picture (None: none), the
    prompts' `job` (their negative prompt and templates, `dynamic.Job`), and the SHA-256 of the init picture and of
    its --mask (None: none), so --again tells a file replaced at its path, as it tells an embedding's."""

    prompt: str
    expanded: str
    shared: dict
    hashes: dict
    sums: list
    hires: Hires | None
    source: Path | None
    job: dynamic.Job
    init_sum: str | None = None
    mask_sum: str | None = None
    refined: bool = False  # whether the refiner took over in drawing them (`refiner_switches`)
    padded: dict = field(default_factory=dict)  # --pad-cond-uncond's PNG text (`_pads`)

    def __post_init__(self):
        self.by_name: list[str] = []  # the settings recorded by name only, which --again asks for
        if self.shared["metadata"] == "shareable":
            self.shared, self.by_name = shareable_record(self.shared)

    def png(self, config: GenerateConfig, seed: int, chunk: list[int]) -> PngInfo:
        """The text of the picture of `seed`, drawn in one pipeline call with the seeds `chunk`: each setting under
        its own key, the web UI's `parameters`, and the record `--again` reads."""
        shared, job = self.shared, self.job
        settings = {**shared, "prompt": [self.prompt], "negative_prompt": job.negative, "seed": seed}
        if config.variation_strength:
            settings["variation_seed"] = _variation_seed(config, seed)
        # the templates the prompts were drawn from, where they differ (sd-dynamic-prompts' Template fields)
        templates = {k: v for k, v in (("template", job.template), ("negative_template", job.negative_template))
                     if v is not None}
        record = {"textinv_version": __version__, "batch_seeds": chunk, "settings": settings,
                  "embedding_sha256": self.sums, **({"init_image_sha256": self.init_sum} if self.init_sum else {}),
                  **({"mask_sha256": self.mask_sum} if self.mask_sum else {}),
                  **({"by_name": self.by_name} if self.by_name else {}), **templates,
                  **({COMFY_BARE_TOKENS: "words"} if config.emphasis == "comfy" else {})}
        return png_text({"prompt": self.prompt, "expanded_prompt": self.expanded,
                         "negative_prompt": job.negative, "seed": seed, "steps": shared["steps"],
                         "sampler": config.sampler, "guidance": shared["guidance"],
                         "size": f"{shared['width']}x{shared['height']}",  # (width first, as A1111)
                         "clip_skip": shared["clip_skip"], "model": shared["model"],
                         "embeddings": ", ".join(shared["embedding"]), "precision": shared["precision"],
                         **{k: ", ".join(v) if isinstance(v, list) else v for k, v in shared.items()
                            if k in ("token", "revision", "variant", "vae", "prediction_type", "single_file_config",
                                     "lora_dir") and v},
                         **_pass_params(config, self.hires, self.source, self.prompt),
                         **(_refiner_params(config) if self.refined else {}),
                         **_noise_params(config, seed),
                         **_old_editing_params(config, self.hires, [self.prompt, job.negative], shared["steps"]),
                         **self.padded,
                         **{k: v for k, v in self.hashes.items() if v}, "textinv_version": __version__,
                         **templates, RECORD_KEY: json.dumps(record)})


def _save_new(img: Image.Image, out: Path, name: str, run: str, names: list[str], info: PngInfo | None
              ) -> tuple[Path, str]:
    """Write `img` as `out/<name><run>.png` (`run`: this run's suffix, `_new_run_suffix`), never over a file: when
    another run drawing into `out` took the name since, this run moves to the next suffix free for all its `names`.
    The path written, and the run's suffix from then on. A removed `out` is not made again (FileNotFoundError): a
    folder on a disk unmounted mid-run would be made on the disk below it."""
    while True:
        if not out.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(out))
        path = out / f"{name}{run}.png"
        try:
            with atomic_path(path, replace=False) as tmp:
                img.save(tmp, format="PNG", pnginfo=info)
            return path, run
        except FileExistsError:
            run = _new_run_suffix(out, names)


# the names `_save_new` gives pictures (`_file_names`, then the run's suffix): the temporary files of these alone are
# removed when a run starts (`io.clear_stale_temporaries`)
PICTURE_NAME = re.compile(r"\d{3,}-.*-s-?\d+(-\d+)?\.png")


def _source_labels(sources: list[Path]) -> dict[Path, str]:
    """Each --init-image folder picture's part of its files' names: '-' and its name's first 24 letters and digits,
    and where two pictures' are alike (a.png and a.jpg, two screenshots of one minute) its place in the folder too,
    so each picture's files are its own, not taken for another run's (`_new_run_suffix`).

    >>> list(_source_labels([Path("a.jpg"), Path("a.png"), Path("b.png")]).values())
    ['-a-1', '-a-2', '-b']
    """
    slugs = [_slug(source.stem, 24) for source in sources]
    return {source: f"-{slug}" + (f"-{place}" if slugs.count(slug) > 1 else "")
            for place, (source, slug) in enumerate(zip(sources, slugs), 1)}


def _old_editing_params(config: GenerateConfig, hires: Hires | None, texts: list[str], steps: int) -> dict:
    """The PNG text of --old-prompt-editing: the web UI's "Old prompt editing timelines: True", which it writes only
    where the old timelines change a schedule of `texts` (the prompt and its negative) in the first pass of `steps`
    or the `hires` fix's (empty where they do not)."""
    if not config.old_prompt_editing:
        return {}
    first = steps * step_multiplier(config.sampler)
    passes = [(first, None)]  # (each pass's steps as `_pass` schedules them, the first pass's for the hires fix's)
    if hires is not None:
        run = refine.pass_steps(hires.steps or steps, hires.denoise, True)[1]
        passes.append((run * step_multiplier(hires.sampler or config.sampler), first))
    if any(emphasis.prompt_schedule(t, n, at, old=True) != emphasis.prompt_schedule(t, n, at)
           for n, at in passes for t in texts):
        return {"old_prompt_editing": "True"}
    return {}


def _pass_params(config: GenerateConfig, hires: Hires | None, source: Path | None = None, prompt: str = "") -> dict:
    """The PNG text of --init-image's and the hires fix's settings, as `png_text` writes them into `parameters`
    (the web UI's labels; empty without either)."""
    if config.init_image:
        return {"init_image": Path(source or config.init_image).name, "denoise": passes_denoise(config),
                **_mask_params(config)}
    if hires is None:
        return {}
    params = {"denoise": hires.denoise, "hires_upscaler": refine.UPSCALERS[hires.upscaler].label}
    if hires.scale:
        params["hires_scale"] = f"{hires.scale:g}"
    else:
        params["hires_resize"] = f"{hires.width or 0}x{hires.height or 0}"
    if hires.steps:
        params["hires_steps"] = hires.steps
    if hires.sampler and hires.sampler != config.sampler:
        params["hires_sampler"], params["hires_schedule"] = (webui_hires_names(hires.sampler, config.sampler)
                                                             or (None, None))
    if config.hires_prompt and config.hires_prompt != prompt:
        params["hires_prompt"] = config.hires_prompt
    if config.hires_negative_prompt and config.hires_negative_prompt != config.negative_prompt:
        params["hires_negative_prompt"] = config.hires_negative_prompt
    if hires.guidance is not None:  # (Forge writes its Hires CFG Scale whenever the hires fix is on)
        params["hires_guidance"] = f"{hires.guidance:g}"
    if config.hires_model:  # (the web UI's short title: the checkpoint's name, here without its hash)
        params["hires_model"] = _model_name(config.hires_model)
    return {k: v for k, v in params.items() if v is not None}


def _new_run_suffix(out: Path, names, taken: set[str] = frozenset()) -> str:
    """'' when none of this run's file names is taken in `out` (nor in `taken`: names with their suffix that runs
    drawn with it will write), else '-2', '-3', ...: the first suffix free for every name, so a second run into the
    same folder (another embedding, more steps, the same prompt and seeds) keeps the first run's pictures, as A1111
    does, and its own share one suffix."""
    names = list(names)
    run = 1
    while any(f"{name}{'' if run == 1 else f'-{run}'}" in taken or
              (out / f"{name}{'' if run == 1 else f'-{run}'}.png").exists() for name in names):
        run += 1
    return "" if run == 1 else f"-{run}"


def _run_suffixes(out: Path, runs: list[list[str]]) -> list[str]:
    """Each run's suffix (`_new_run_suffix`) where `runs` (each one's file names) are drawn together
    (`generate_together`): as each would take it drawn alone, one after the other, each after the runs before it
    had written their pictures."""
    suffixes: list[str] = []
    taken: set[str] = set()
    for names in runs:
        suffixes.append(_new_run_suffix(out, names, taken))
        taken.update(f"{name}{suffixes[-1]}" for name in names)
    return suffixes
