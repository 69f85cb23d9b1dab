"""Stability AI's ModelSpec keys in an embedding's safetensors metadata: what textinv writes, and what it reads.

ModelSpec (github.com/Stability-AI/ModelSpec) defines `modelspec.*` keys in a safetensors file's `__metadata__` that
say what a file is, so tools need not guess from tensor shapes: SwarmUI reads `modelspec.architecture` to tell an
SD 1.x embedding from an SDXL one, model browsers show the title, resolution and date. kohya's sd-scripts write them
into every model they save, embeddings included. For a textual-inversion embedding textinv writes:

    modelspec.sai_model_spec   "1.0.1" (the version that defines "/" as the adapter separator used below; kohya's)
    modelspec.architecture     BASE + "/textual-inversion", BASE one of stable-diffusion-v1, stable-diffusion-v2-512,
                               stable-diffusion-v2-768-v (SD 2.x with v-prediction), stable-diffusion-xl-v1-base
    modelspec.implementation   the codebase whose names the tensors follow: "diffusers" for the diffusers layouts
                               ({token: tensor}), "https://github.com/Stability-AI/generative-models" for kohya's
                               emb_params and the clip_l/clip_g file (what kohya writes for them)
    modelspec.title            the token, unless the file had a title of its own
    modelspec.date             ISO 8601, when the embedding was saved (a converted file keeps its date)
    modelspec.hash_sha256      "0x" + SHA-256 of the tensor bytes (all of the file after its header)
    modelspec.resolution       "512x512": the training resolution, when recorded
    modelspec.prediction_type  "epsilon" or "v", when recorded
    modelspec.encoder_layer    the clip skip (2: the penultimate layer), when it is not 1

Only a known family gets them: an embedding of another width (the bundled shapes model, a test model) has no
architecture to name. Any other `modelspec.*` key a file carried (author, description, license...) is kept.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Mapping

from .families import FAMILY_NAMES, FAMILY_WIDTHS, describe_widths, family_for_widths

PREFIX = "modelspec."
VERSION = "1.0.1"
TEXTUAL_INVERSION = "textual-inversion"
# the adapter names a textual inversion goes by: the spec's and kohya's, and OneTrainer's ".../embedding" (its
# resources/sd_model_spec/*-embedding.json)
_TEXTUAL_INVERSION_ADAPTERS = (TEXTUAL_INVERSION, "embedding")
# ModelSpec's architecture ids of the base models (its "Architecture ID listing"), by textinv family
SD1, SD2_512, SD2_768_V, SDXL = ("stable-diffusion-v1", "stable-diffusion-v2-512", "stable-diffusion-v2-768-v",
                                 "stable-diffusion-xl-v1-base")
BASE_FAMILIES = {SD1: "sd1", SD2_512: "sd2", SD2_768_V: "sd2", SDXL: "sdxl"}
GENERATIVE_MODELS = "https://github.com/Stability-AI/generative-models"
IMPLEMENTATIONS = {"diffusers": "diffusers", "diffusers-sdxl": "diffusers", "kohya": GENERATIVE_MODELS,
                   "sdxl": GENERATIVE_MODELS}
PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v"}  # textinv's (diffusers') names -> ModelSpec's
# adapters that are some kind of LoRA (kohya writes "lora"; LyCORIS' variants by their own names)
_LORA_ADAPTERS = ("lora", "lycoris", "loha", "lokr", "locon", "dora")


def split(architecture: str) -> tuple[str, str | None]:
    """A ModelSpec architecture as (base, adapter): "stable-diffusion-v1/lora" -> ("stable-diffusion-v1", "lora"),
    a whole model's -> (base, None). The 1.0.0 draft joined the two with "-" (stable-diffusion-v1-lora); read too.

    >>> split("stable-diffusion-xl-v1-base/textual-inversion")
    ('stable-diffusion-xl-v1-base', 'textual-inversion')
    """
    text = architecture.strip().lower()
    if "/" in text:
        base, adapter = text.split("/", 1)
        return base, adapter
    for adapter in (*_TEXTUAL_INVERSION_ADAPTERS, *_LORA_ADAPTERS):
        if text.endswith("-" + adapter):
            return text[:-len(adapter) - 1], adapter
    return text, None


def architecture_of(metadata: Mapping[str, str]) -> str | None:
    """A file's `modelspec.architecture`, or None."""
    value = metadata.get(PREFIX + "architecture")
    return value.strip() if isinstance(value, str) and value.strip() else None


def other_kind(metadata: Mapping[str, str]) -> str | None:
    """What a file is when its modelspec says it is no textual-inversion embedding: "LoRA", "VAE", "checkpoint" (a
    whole model, no adapter), or the adapter's own name ("controlnet"...); None for an embedding or no modelspec.

    >>> other_kind({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    'LoRA'
    """
    architecture = architecture_of(metadata)
    if architecture is None:
        return None
    _, adapter = split(architecture)
    # ("stable-diffusion-v1/": an adapter left blank by the tool that wrote it says no kind; the tensors decide)
    if adapter == "" or adapter in _TEXTUAL_INVERSION_ADAPTERS or _is_textual_inversion_spelling(adapter):
        return None
    if adapter is None:
        return "checkpoint"
    if adapter in _LORA_ADAPTERS:
        return "LoRA"
    return "VAE" if adapter == "vae" else adapter


def _is_textual_inversion_spelling(adapter: str | None) -> bool:
    """Whether an adapter name is another tool's spelling of textual inversion ("textual_inversion",
    "TextualInversion", "ti", "embeddings"): the spec names one, but a file that says what it is in other words is
    still an embedding, not a file to refuse."""
    letters = "".join(c for c in adapter or "" if c.isalnum())
    return letters in ("textualinversion", "ti", "embedding", "embeddings")


def family_of(metadata: Mapping[str, str]) -> str | None:
    """The textinv family ("sd1", "sd2", "sdxl") a file's modelspec names, or None (none, or another base)."""
    architecture = architecture_of(metadata)
    return BASE_FAMILIES.get(split(architecture)[0]) if architecture else None


def fits(family: str, widths: tuple[int, ...]) -> bool:
    """Whether vectors of these widths can be `family`'s: as many encoders, and no other family's widths. Widths no
    family has (a small test model's) fit any family with as many encoders."""
    known = FAMILY_WIDTHS[family]
    return len(widths) == len(known) and family_for_widths(widths) in (None, family)


def contradiction(metadata: Mapping[str, str], widths: tuple[int, ...]) -> str | None:
    """Why a file's modelspec architecture does not fit its vectors (None when it fits or names no family)."""
    family = family_of(metadata)
    if family is None or fits(family, widths):
        return None
    said = f"its modelspec.architecture says {architecture_of(metadata)!r} ({FAMILY_NAMES[family]})"
    if family == "sdxl" and len(widths) == 1:
        half = {FAMILY_WIDTHS["sdxl"][0]: "first (CLIP-L)", FAMILY_WIDTHS["sdxl"][1]: "second (OpenCLIP-G)"}
        which = half.get(widths[0])
        if which:
            return (f"{said}, but it holds only the {which} text encoder's vectors (width {widths[0]}): it is one half "
                    f"of an SDXL embedding; load it with its other half (load_embedding_pair, or `--second` in "
                    f"convert), or it is used as {describe_widths(widths)}")
    return f"{said}, but its vectors are {describe_widths(widths)}: the vectors decide, the metadata is wrong"


def now() -> str:
    """The current time for `modelspec.date`: ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def tensor_hash(data: bytes) -> str:
    """`modelspec.hash_sha256` of a whole safetensors file's bytes: SHA-256 of what follows the header."""
    header = 8 + int.from_bytes(data[:8], "little")
    return "0x" + hashlib.sha256(data[header:]).hexdigest()


def keys_for(token: str, widths: tuple[int, ...], metadata: Mapping[str, str], format: str,
             date: str | None = None) -> dict[str, str]:
    """The modelspec keys for an embedding written as `format` (one of IMPLEMENTATIONS), without the hash (which is
    of the written tensors: `tensor_hash`). `metadata` is the embedding's: textinv's record of its training (family,
    prediction_type, resolution, clip_skip) and any modelspec keys it was read with, which are kept except those
    that describe this file (version, implementation, hash) and an architecture its vectors contradict. `date`
    (default: the one carried, else now) is when it was saved. No family known: no keys, unless the embedding carried
    an architecture of a base textinv does not know (kept as it was).

    >>> keys_for("<my-dog>", (768,), {"family": "sd1"}, "kohya")["modelspec.architecture"]
    'stable-diffusion-v1/textual-inversion'
    """
    carried = {k: v for k, v in metadata.items() if k.startswith(PREFIX) and not k.startswith(PREFIX + "hash_")}
    base = _base(widths, metadata)
    if base is None:
        architecture = architecture_of(metadata)
        if architecture is None or family_of(metadata) is not None or other_kind(metadata) is not None:
            return {}
        base = split(architecture)[0]  # a base textinv does not know (an SDXL refiner's, another model's)
    keys = {**carried, PREFIX + "sai_model_spec": VERSION, PREFIX + "architecture": f"{base}/{TEXTUAL_INVERSION}",
            PREFIX + "implementation": IMPLEMENTATIONS[format]}
    keys.setdefault(PREFIX + "title", token)
    keys.setdefault(PREFIX + "date", date or now())
    resolution = str(metadata.get("resolution", ""))
    if resolution.isdecimal():  # textinv records the square side it trained at, or WIDTHxHEIGHT
        keys[PREFIX + "resolution"] = f"{resolution}x{resolution}"
    elif re.fullmatch(r"\d+x\d+", resolution):
        keys[PREFIX + "resolution"] = resolution
    prediction = PREDICTION_TYPES.get(str(metadata.get("prediction_type", "")))
    if prediction:
        keys[PREFIX + "prediction_type"] = prediction
    clip_skip = str(metadata.get("clip_skip", ""))
    if clip_skip.isdecimal() and int(clip_skip) > 1:  # (1, the last layer, is every model's own reading)
        keys[PREFIX + "encoder_layer"] = clip_skip
    return keys


def _base(widths: tuple[int, ...], metadata: Mapping[str, str]) -> str | None:
    """The base architecture: the family textinv recorded (what it was trained on), else the one the file's
    modelspec names, else the widths' - the first that the vectors do not contradict. SD 2.x is 768-v with
    v-prediction, 512 with epsilon; not recorded, the file's own SD 2.x id or prediction type, else 768-v (the
    text encoder is the same, so it fits both; SwarmUI files every 1024-wide embedding under 768-v too)."""
    recorded, named = metadata.get("family"), family_of(metadata)
    family = next((f for f in (recorded, named, family_for_widths(widths)) if f in FAMILY_WIDTHS and fits(f, widths)),
                  None)
    if family is None:
        return None
    if family != "sd2":
        return {"sd1": SD1, "sdxl": SDXL}[family]
    prediction = PREDICTION_TYPES.get(str(metadata.get("prediction_type", "")))
    if prediction is None and named == "sd2":
        return split(architecture_of(metadata))[0]
    prediction = prediction or metadata.get(PREFIX + "prediction_type")
    return SD2_512 if prediction == "epsilon" else SD2_768_V


def summary(metadata: Mapping[str, str]) -> dict[str, str]:
    """A file's modelspec keys for `inspect`, without the prefix; a thumbnail (an image as a data URL, possibly
    kilobytes long) is named by its size only.

    >>> summary({"modelspec.title": "My dog", "steps": "500"})
    {'title': 'My dog'}
    """
    shown = {}
    for key, value in metadata.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX):]
            shown[name] = f"({len(value)} characters)" if name == "thumbnail" else value
    return shown
