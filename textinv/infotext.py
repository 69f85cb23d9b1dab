"""What a generated picture's PNG text says: the A1111 web UI's one-line `parameters` text (`png_text`, its labels
and quoting, the "TI hashes" and "Lora hashes" lists, `webui_hashes`) and the settings of textinv's own record
(`formats.RECORD_KEY`: `_record`, `shareable_record` for --metadata shareable), which `generate --again` reads back
(see `again`). `generate._Text` puts them together for each picture.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from . import inpaint as inpainting
from . import refine
from .config import GenerateConfig
from .io import absolute
from .models import CHECKPOINT_SUFFIXES, DTYPES, Model
from .samplers import (CHURN_LABELS, churn_given, churn_taken, discard_written, ensd_written, eta_default, eta_label,
                       eta_of, webui_names)


def png_text(params: dict[str, str]) -> PngInfo:
    """PNG text chunks: each setting under its own key, plus A1111's one-line `parameters` summary."""
    info = PngInfo()
    for key, value in params.items():
        info.add_text(key, str(value))
    summary = f"{params['prompt']}\n"
    if params.get("negative_prompt"):
        summary += f"Negative prompt: {params['negative_prompt']}\n"
    labels = {"steps": "Steps", "sampler": "Sampler", "schedule": "Schedule type", "guidance": "CFG scale",
              "seed": "Seed", "variation_seed": "Variation seed", "variation_strength": "Variation seed strength",
              "eta": "Eta", "eta_ddim": "Eta DDIM", "ensd": "ENSD",
              **{f"sigma_{key}": label for key, label in CHURN_LABELS.items()},
              "discard_penultimate_sigma": "Discard penultimate sigma",
              "size": "Size", "model": "Model", "denoise": "Denoising strength", "tiling": "Tiling",
              "emphasis": "Emphasis", "old_prompt_editing": "Old prompt editing timelines",
              "pad_cond_uncond": "Pad conds", "pad_cond_uncond_v0": "Pad conds v0", "mask_blur": "Mask blur",
              "mask_mode": "Mask mode",
              "masked_content": "Masked content", "inpaint_area": "Inpaint area",
              "masked_padding": "Masked area padding", "inpaint_blend": inpainting.BLEND_LABEL,
              "clip_skip": "Clip skip",  # A1111's (it writes a clip skip only above 1)
              "hires_scale": "Hires upscale", "hires_resize": "Hires resize", "hires_steps": "Hires steps",
              "hires_upscaler": "Hires upscaler", "hires_sampler": "Hires sampler",
              "hires_schedule": "Hires schedule type", "hires_prompt": "Hires prompt",
              "hires_negative_prompt": "Hires negative prompt", "hires_guidance": "Hires CFG Scale",
              "hires_model": "Hires checkpoint", "refiner": "Refiner",
              "refiner_switch_at": "Refiner switch at", "lora_hashes": "Lora hashes", "ti_hashes": "TI hashes"}
    sampler, schedule = webui_names(params.get("sampler", "default")) or (None, None)
    values = {**params, "sampler": sampler, "schedule": schedule,
              "clip_skip": params["clip_skip"] if int(params.get("clip_skip", 1)) > 1 else None,
              "model": _model_name(str(params["model"])) if params.get("model") else None}  # (as the web UI names it)
    summary += ", ".join(f"{label}: {_infotext_value(values[k])}" for k, label in labels.items()
                         if values.get(k) is not None)
    # sd-dynamic-prompts' lines after the settings: the templates the prompts were drawn from
    summary += "".join(f"\n{label}: {params[k]}" for k, label in (("template", "Template"),
                                                                   ("negative_template", "Negative Template"))
                       if params.get(k))
    info.add_text("parameters", summary)
    return info


def _infotext_value(value) -> str:
    """A value as the web UI writes it into `parameters` (its infotext `quote`): as it is, or as a JSON string when a
    comma, colon or line break in it would split or end its field ("TI hashes" always are)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


_HASH_NAME_SEPARATORS = str.maketrans("", "", ":,")


def webui_hashes(sums: dict[str, str]) -> str:
    """The web UI's "TI hashes" or "Lora hashes" text (sd_hijack_clip, extra_networks_lora): "name: shorthash" for
    each embedding or LoRA by the name the prompt called it, less the colons and commas that would split the list,
    and the first 12 hex digits of its hash (`Embedding.shorthash`: of the file's SHA-256; a LoRA's:
    `loras.lora_sha256`).

    >>> webui_hashes({"easy:negative": "c74b4e810b030f6b3d4b2d5ce4fc52ad53fc16e1bcbf2d8f0b2d27bd0d3a0a8d"})
    'easynegative: c74b4e810b03'
    """
    return ", ".join(f"{hash_name(name)}: {sha[:12]}" for name, sha in sums.items())


def hash_name(name: str) -> str:
    """An embedding's or LoRA's name as the web UI's hashes list it: without the colons and commas that would split
    the list."""
    return name.translate(_HASH_NAME_SEPARATORS)


def _record(config: GenerateConfig, model: Model, steps: int, guidance: float, clip_skip: int, width: int,
            height: int, init_image: Path | None = None) -> dict:
    """The settings every picture of a run records (`formats.RECORD_KEY`), as `GenerateConfig` fields: all that shapes a
    picture, with the defaults as they resolved (steps, guidance, clip skip, size, the weights' precision) and each
    local path absolute (`_where`), so `generate --again` draws the picture again bit for bit on the same machine and
    library versions, from any working directory (`--metadata full`; `shareable_record` makes it fit to share). The
    prompt and seed are each picture's own, and so is `init_image`, the picture it redrew (one of an --init-image
    folder's)."""
    precision = {dtype: name for name, dtype in DTYPES.items()}.get(model.unet.dtype, config.precision)
    return {"negative_prompt": config.negative_prompt, "steps": steps, "sampler": config.sampler,
            "guidance": guidance, "width": width, "height": height, "clip_skip": clip_skip,
            "model": _where(model.source), "revision": model.loaded_with.get("revision"),
            "variant": model.loaded_with.get("variant"), "embedding": [_where(e) for e in config.embedding],
            "token": list(config.token), "precision": precision, "prediction_type": config.prediction_type,
            "single_file_config": _where(config.single_file_config), "vae": _where(config.vae),
            "lora_dir": [_where(d) for d in config.lora_dir], "batch_size": config.batch_size,
            "variation_seed": config.variation_seed, "variation_strength": config.variation_strength,
            "tiling": config.tiling, "emphasis": config.emphasis, "old_prompt_editing": config.old_prompt_editing,
            "zero_negative": config.zero_negative, "prompt_l": config.prompt_l,
            "negative_prompt_l": config.negative_prompt_l,
            # (only where given, so a picture drawn without them reads in a textinv from before them with no warning)
            **({"eta": config.eta} if config.eta is not None else {}),
            **({"ensd": config.ensd} if config.ensd else {}),
            **{f"sigma_{key}": getattr(config, f"sigma_{key}") for key in churn_given(config.churn())},
            **({"discard_penultimate_sigma": True} if config.discard_penultimate_sigma else {}),
            **({"pad_cond_uncond": True} if config.pad_cond_uncond else {}),
            **({"pad_cond_uncond_v0": True} if config.pad_cond_uncond_v0 else {}),
            "init_image": _where(str(init_image) if init_image else None),
            "denoise": passes_denoise(config), **_mask_record(config), "refiner": _where(config.refiner),
            "refiner_switch_at": config.switch_at() if config.refiner else None,
            **{name: getattr(config, name) for name in HIRES_SETTINGS}, "hires_model": _where(config.hires_model),
            **({"hires_upscaler": config.hires_upscaler or refine.DEFAULT_UPSCALER} if config.hires() else {}),
            "metadata": config.metadata}  # (so a redraw is written as the picture was)


def _mask_record(config: GenerateConfig) -> dict:
    """The inpainting settings a picture records, as they resolved (none without --mask)."""
    if not config.mask:
        return {}
    area = config.inpaint_area or "whole"
    return {"mask": _where(config.mask),
            "mask_blur": inpainting.MASK_BLUR if config.mask_blur is None else config.mask_blur,
            "inpaint_fill": config.inpaint_fill or "original", "mask_invert": config.mask_invert,
            "inpaint_area": area, "masked_padding": (inpainting.MASKED_PADDING if config.masked_padding is None
                                                     else config.masked_padding) if area == "masked" else None,
            "inpaint_blend": config.inpaint_blend or "denoised"}


# each path setting a picture records, and whether its value is always a local path (else it may be a bundled
# model's name or a hub id)
_PATH_SETTINGS = {"model": False, "embedding": True, "lora_dir": True, "vae": False, "single_file_config": False,
                  "init_image": True, "mask": True, "refiner": False, "hires_model": False}


MASK_SETTINGS = ("mask", "mask_blur", "inpaint_fill", "mask_invert", "inpaint_area", "masked_padding",
                 "inpaint_blend")


HIRES_SETTINGS = ("hires_scale", "hires_width", "hires_height", "hires_steps", "hires_upscaler", "hires_sampler",
                  "hires_prompt", "hires_negative_prompt", "hires_guidance", "hires_model")


def shareable_record(settings: dict) -> tuple[dict, list[str]]:
    """`_record`'s settings as `--metadata shareable` writes them, and the settings so reduced: each local file or
    folder by its name only (where it lies tells who drew the picture and how their folders are laid out:
    /home/alice/clients/acme/...), a bundled model or hub id as it is; no model hash (a checkpoint is gigabytes to
    read). The embeddings' SHA-256 are kept beside it, so `--again` tells whether the files given for them are the
    ones the picture was drawn with.

    >>> shareable_record({"model": "/home/alice/sd15", "embedding": ["/home/alice/q.pt"], "lora_dir": [],
    ...                   "vae": None, "single_file_config": None})  # doctest: +SKIP
    ({'model': 'sd15', 'embedding': ['q.pt'], ...}, ['model', 'embedding'])
    """
    from .models import shareable_name

    out, by_name = dict(settings), []
    for key, always_local in _PATH_SETTINGS.items():
        if key not in settings:  # (a record from before the setting)
            continue
        value = settings[key]
        named = [shareable_name(v, always_local) for v in (value if isinstance(value, list) else [value])]
        if any(reduced for _, reduced in named):
            names = [name for name, _ in named]
            out[key] = names if isinstance(value, list) else names[0]
            by_name.append(key)
    return out, by_name


def _where(value: str | None) -> str | None:
    """A path setting as a picture records it: a file or folder that exists by its absolute path (the picture
    outlives the working directory it was drawn in), anything else (a bundled name, a hub id: an embedding's too,
    never its file in the cache) as given."""
    from .models import BUNDLED_MODELS

    if not value or str(value) in BUNDLED_MODELS:  # (a bundled name is one even where a folder is so named)
        return value
    return absolute(value) if Path(value).expanduser().exists() else str(value)


def _refiner_params(config: GenerateConfig) -> dict:
    """The PNG text of --refiner, as the web UI writes it (Refiner, Refiner switch at) where it took over: the refiner
    by its name (a file's without its suffix, a folder's, a hub id), without the web UI's hash of the file, as the
    model is (hashing gigabytes for a label); empty without one."""
    if not config.refiner:
        return {}
    return {"refiner": _model_name(config.refiner), "refiner_switch_at": config.switch_at()}


def _model_name(given: str) -> str:
    """A model setting as the web UI names a checkpoint (sd_models.CheckpointInfo.model_name): a file's name without
    its suffix (also a file named without its path, as --metadata shareable records it), a folder's name, a hub id
    (or a bundled name) as given. The web UI's name also holds the folders under its models folder, which textinv has
    none of."""
    source = Path(given.rstrip("/\\"))
    if source.suffix.lower() in CHECKPOINT_SUFFIXES:
        return source.stem
    return source.name if source.exists() else given


def _noise_params(config: GenerateConfig, seed: int) -> dict:
    """The PNG text of a picture's variation seed, eta, ENSD, sigma churn settings and tiling (the web UI's labels;
    empty without them). The eta is written as the web UI writes it, where it is not the sampler's default: "Eta"
    for an ancestral or SDE sampler, "Eta DDIM" for DDIM (the first pass's sampler's, else the hires fix's); "ENSD"
    where the web UI writes it (`samplers.ensd_written`: the first pass's sampler an ancestral one, its eta not 0);
    "Sigma churn", "Sigma tmin", "Sigma tmax" and "Sigma noise" where not the default and a pass's sampler takes them
    (`samplers.churn_taken`: DPM2 a, DPM++ 2S a and the SDE samplers the noise alone); "Discard penultimate sigma:
    True" where it makes a pass's sampler discard it (`samplers.discard_written`)."""
    params = {"tiling": "True"} if config.tiling else {}
    taking = [s for s in (config.sampler, config.hires_sampler) if s and eta_default(s) is not None]
    if config.eta is not None and taking and config.eta != eta_default(taking[0]):
        params["eta_ddim" if eta_label(taking[0]) == "Eta DDIM" else "eta"] = f"{config.eta:g}"
    if config.ensd and ensd_written(config.sampler, eta_of(config.eta, config.sampler, taking)):
        params["ensd"] = config.ensd
    taken = {key for s in (config.sampler, config.hires_sampler) if s for key in churn_taken(s)}
    # (as floats, as the web UI writes them: "Sigma churn: 0.5", "Sigma tmax: 20.0")
    params.update({f"sigma_{key}": float(value) for key, value in churn_given(config.churn()).items() if key in taken})
    if discard_written([s for s in (config.sampler, config.hires_sampler) if s], config.discard_penultimate_sigma):
        params["discard_penultimate_sigma"] = "True"
    if config.emphasis not in ("original", "comfy"):  # (as the web UI: only another than its default; it has no
        # ComfyUI's)
        params["emphasis"] = {"no-norm": "No norm", "ignore": "Ignore"}[config.emphasis]
    if config.variation_strength:
        params.update(variation_seed=_variation_seed(config, seed), variation_strength=config.variation_strength)
    return params


def _variation_seed(config: GenerateConfig, seed: int) -> int:
    """The variation seed of the picture of `seed`: picture i's is --variation-seed + i, as its seed is --seed + i."""
    return config.variation_seed + seed - config.seed


def passes_denoise(config: GenerateConfig) -> float | None:
    """--denoise as it resolved: the default of the pass it is for (None: neither --init-image nor the hires fix)."""
    if config.init_image:
        return config.denoise or refine.IMG2IMG_DENOISE
    return (config.denoise or refine.HIRES_DENOISE) if config.hires() else None


def _mask_params(config: GenerateConfig) -> dict:
    """The PNG text of the inpainting settings, written as the web UI writes them: Mask blur above 0, Mask mode when
    inverted, Masked content other than original, Inpaint area and Masked area padding for only masked; and
    textinv's Inpaint blend where it is not the web UI's way (noised)."""
    if not config.mask:
        return {}
    record = _mask_record(config)
    params = {"mask": Path(config.mask).name, "mask_blur": record["mask_blur"] or None,
              "mask_mode": inpainting.INVERTED_LABEL if config.mask_invert else None,
              "masked_content": inpainting.FILL_LABELS.get(record["inpaint_fill"]),
              "inpaint_blend": record["inpaint_blend"] if record["inpaint_blend"] != "denoised" else None}
    if record["inpaint_area"] == "masked":
        params.update(inpaint_area=inpainting.ONLY_MASKED_LABEL, masked_padding=record["masked_padding"])
    return {k: v for k, v in params.items() if v is not None}
