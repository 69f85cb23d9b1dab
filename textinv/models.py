"""Loading a Stable Diffusion 1.x/2.x/XL model from wherever the user has it, telling its family, encoding text.

Sources, in the order they are tried:
1. a bundled name (`shapes`, our small embedded model; also the default when no model is given);
2. a local diffusers folder (it has `model_index.json`);
3. a local single-file checkpoint (`.safetensors` / `.ckpt`, the A1111/ComfyUI layout), through diffusers'
   `from_single_file`, with the family read from the checkpoint's keys before anything heavy is loaded;
4. anything else that looks like `owner/name` is a hub id, loaded with `from_pretrained` (needs a network or a
   filled cache). A missing path (`./x`, `~/x`, `a/b/c`, `x.ckpt`, or `models/x` where `models/` is a folder here) is
   reported as missing rather than looked up on the hub.
SDXL pipelines have two tokenizer/text-encoder pairs; `Model.encoders` lists the pairs of any family, and
`encode_text` turns token ids into the UNet's conditioning the way each family's pipeline does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging as _transformers_logging

# Importing diffusers' pipelines makes transformers 5 note, once per image processor they name, that it falls back to
# its Pillow version because torchvision is missing; textinv never uses those processors, and the note would open
# every command's output, so it is heard at error level (transformers logs it once: it stays quiet after this).
_level = _transformers_logging.get_verbosity()
_transformers_logging.set_verbosity_error()
try:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
finally:
    _transformers_logging.set_verbosity(_level)

from .errors import ConfigError, ModelError, backslash_note, setting, warn
from .families import FAMILY_NAMES, family_for_widths
from .formats import embedding_layout, weights_kind
from .io import absolute, file_sha256

BUNDLED_MODELS = {"shapes": Path(__file__).parent / "shapes" / "model"}
DEFAULT_MODEL = "shapes"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# diffusers' single-file model types (infer_diffusers_model_type) -> our family names
_SINGLE_FILE_FAMILIES = {
    "v1": "sd1",
    "inpainting": "sd1",
    "v2": "sd2",
    "inpainting_v2": "sd2",
    "xl_base": "sdxl",
    "xl_refiner": "sdxl",
    "xl_inpaint": "sdxl",
    "playground-v2-5": "sdxl",
}
# single-file kinds that load as one of those families but are not the text-to-image model textinv trains on
_INPAINTING = "an inpainting model"
_NOT_TEXT_TO_IMAGE = {
    "inpainting": _INPAINTING,
    "inpainting_v2": _INPAINTING,
    "xl_inpaint": _INPAINTING,
    "xl_refiner": "an SDXL refiner",
}

PREDICTION_TYPES = ("epsilon", "v_prediction")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_GUIDANCE = 7.5  # SD's classifier-free guidance scale, the default of its pipelines and of A1111


LAUNCHED_AT = "accelerate launch's mixed precision (its --mixed_precision or your accelerate config)"


def launcher_precision() -> str:
    """The mixed precision `accelerate launch` was asked for: its --mixed_precision, else the `accelerate config`
    file's mixed_precision, else "no", which the launcher passes on to the processes it starts as
    ACCELERATE_MIXED_PRECISION (accelerate's utils/launch.py; the diffusers script's Accelerator takes its precision
    from it). "no" without a launcher, too.

    >>> launcher_precision()  # doctest: +SKIP
    'bf16'
    """
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()


def launched_precision(precision: str | None, say: bool, passed: bool = False) -> str:
    """`precision`, or left out (None) `accelerate launch`'s fp16 or bf16 (`launcher_precision`), as the diffusers
    script reads it, and said so where `say`; else auto. The launcher's "no" is every launch's default (a launch
    that asked for nothing), so it leaves auto, as fp8 does, none of textinv's precisions; a model `passed` in runs
    at its own dtype, so leaves auto too (`train`, `generate` and `score` read it so).

    >>> launched_precision(None, say=False)  # doctest: +SKIP
    'bf16'
    """
    if precision is not None:
        return precision
    asked = launcher_precision()
    if passed or asked not in ("fp16", "bf16"):
        return "auto"
    if say:
        print(f"--precision {asked}: {LAUNCHED_AT}, with --precision left out")
    return asked


def precision_name(dtype: torch.dtype) -> str:
    """The --precision that names `dtype` (torch's own name for one it has none for).

    >>> precision_name(torch.bfloat16)
    'bf16'
    """
    return {d: name for name, d in DTYPES.items()}.get(dtype, str(dtype))


def pick_device(setting: str = "auto", flag: str = "--device") -> torch.device:
    """The torch.device a `--device` setting names: auto (CUDA, else MPS on an Apple Silicon Mac, else the CPU),
    cpu, cuda (the current GPU), cuda:N or mps. A device this machine does not have is refused, naming `flag` and
    what there is, before anything loads (`.to("cuda:3")` would fail only once the model had loaded).

    >>> pick_device("cpu")
    device(type='cpu')
    """
    text = str(setting).strip().lower()
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if text == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (sep and not (kind == "cuda" and index.isdecimal())):
        raise ConfigError(f"{flag} {setting!r} is no device; give auto, cpu, cuda, cuda:N (N from 0) or mps")
    gpus = [f"cuda:{i}" for i in range(cuda)]
    there = ", ".join(["cpu", *gpus] + ["mps"] * mps)
    if kind == "cuda" and (not cuda or sep and int(index) >= cuda):
        if not cuda:
            why = ("this PyTorch is a build without CUDA (install its CUDA build)" if torch.version.cuda is None
                   else "PyTorch sees no CUDA device here")
        else:
            why = f"this machine has {cuda} CUDA device{'s' * (cuda > 1)} ({', '.join(gpus)})"
            if os.environ.get("CUDA_VISIBLE_DEVICES"):  # (it renumbers the GPUs it leaves visible from 0)
                why += f", numbered from 0 among CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
        raise ConfigError(f"{flag} {setting}: {why}; use one of: auto, {there}")
    if kind == "mps" and not mps:
        raise ConfigError(f"{flag} {setting}: PyTorch's MPS backend is not available here (Apple Silicon with macOS "
                          f"12.3+ only); use one of: auto, {there}")
    return torch.device(text)


@dataclass
class Model:
    """A loaded SD pipeline and what we know about it. The pipeline's components are the ones we train with."""

    pipeline: StableDiffusionPipeline | StableDiffusionXLPipeline
    family: str  # "sd1", "sd2", "sdxl", or "custom" (a width no public family has, e.g. our bundled model)
    source: str
    prediction_type: str  # "epsilon" or "v_prediction", from the scheduler config unless overridden
    guidance: float = DEFAULT_GUIDANCE  # the guidance scale it samples best at (see `recorded_guidance`)
    prompting: dict = field(default_factory=dict)  # its own init word and caption templates (`recorded_prompting`)
    # what `load_model` was given besides the source (vae, single_file_config, prediction_type): a run on a model
    # passed in records them, so a resume from the command line loads the same model
    loaded_with: dict = field(default_factory=dict)

    def guidance_or_own(self, guidance: float | None) -> float:
        """`guidance` if one was asked for, else the model's own: the one rule every drawing command follows."""
        return self.guidance if guidance is None else guidance

    @property
    def is_xl(self) -> bool:
        return getattr(self.pipeline, "text_encoder_2", None) is not None

    @property
    def is_refiner(self) -> bool:
        """An SDXL refiner: only SDXL's second text encoder (OpenCLIP bigG), as `generate --refiner` loads one."""
        return self.is_xl and self.pipeline.text_encoder is None

    @property
    def encoders(self) -> list[tuple[str, object, torch.nn.Module]]:
        """(component name, tokenizer, text encoder) for each text encoder, in pipeline order (an SDXL refiner's:
        only the second)."""
        pairs = [("text_encoder", self.pipeline.tokenizer, self.pipeline.text_encoder)] * (not self.is_refiner)
        if self.is_xl:
            pairs.append(("text_encoder_2", self.pipeline.tokenizer_2, self.pipeline.text_encoder_2))
        return pairs

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def text_encoder(self):
        return self.pipeline.text_encoder

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def widths(self) -> tuple[int, ...]:
        """Each text encoder's embedding width: (768,) SD 1.x, (1024,) SD 2.x, (768, 1280) SDXL."""
        return tuple(te.get_input_embeddings().embedding_dim for _, _, te in self.encoders)

    @property
    def width(self) -> int:
        """The first text encoder's embedding width."""
        return self.widths[0]

    @property
    def resolution(self) -> int:
        """The image size the UNet was built for (latent size times the VAE's downscale)."""
        return int(self.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def size_note(self, size: int | tuple[int, int]) -> str | None:
        """A warning where a training `size` (a side, or width x height) is over twice or under half the size the
        model was made for (`resolution`): the diffusers script's --resolution 512 typed out of habit on the bundled
        64 px model. SDXL at 512 and SD 1.5 at 1024 are within it; nothing is said of them."""
        width, height = size if isinstance(size, tuple) else (size, size)
        own = self.resolution
        if all(own / 2 <= side <= 2 * own for side in (width, height)):
            return None
        shown = f"{width}x{height}" if width != height else str(width)
        return (f"--resolution {shown} is far from the {own}x{own} pictures {self.source} was made for: it draws "
                f"poorly at a size it never saw, so what the vectors learn there does not carry over to its own, and "
                f"each step costs {width * height / own ** 2:.3g} times as much; leave --resolution out to train at "
                f"{own}")

    def check_trainable(self) -> None:
        """Refuse what textinv's DDPM training objective does not fit: a model sampled on an EDM schedule or with
        normalised latents (Playground v2.5 loads as an SDXL pipeline but is both). It would train without error
        and learn the wrong thing."""
        scheduler = type(self.pipeline.scheduler).__name__
        vae = self.vae.config
        if "EDM" in scheduler or getattr(vae, "latents_mean", None) is not None:
            what = f"an EDM noise schedule ({scheduler})" if "EDM" in scheduler else "normalised latents (latents_mean)"
            raise ModelError(f"{self.source} uses {what}, as Playground v2.5 does; textinv trains models with SD's "
                             f"DDPM schedule (SD 1.x, 2.x, XL and their fine-tunes). Generating with it works.")

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule: the model's own betas, with its prediction type."""
        return DDPMScheduler.from_config(self.pipeline.scheduler.config, prediction_type=self.prediction_type)

    def describe(self) -> str:
        name = FAMILY_NAMES.get(self.family, "custom model")
        widths = "+".join(map(str, self.widths))
        return f"{self.source} ({name}, text width {widths}, {self.resolution}px, {self.prediction_type})"


def webui_checkpoint(source) -> dict[str, str]:
    """What the A1111 web UI's .pt embedding records of the checkpoint it was trained on (its save_embedding):
    `sd_checkpoint`, the checkpoint's short hash (`CheckpointInfo.shorthash`: the first 10 hex digits of the file's
    SHA-256), and `sd_checkpoint_name`, its name (`model_name`: the file's name without its suffix). Only a local
    single file has them, as the web UI loads only those; {} for a diffusers folder, a hub id or a bundled model.
    Reads the whole file once: SHA-256 ran at 0.3 GB/s on a busy 2-core test machine (a 2 GB SD 1.x file: ~7 s).

    >>> webui_checkpoint("shapes")
    {}
    """
    path = Path(str(source)).expanduser()
    if not path.is_file():
        return {}
    return {"sd_checkpoint": file_sha256(path)[:10], "sd_checkpoint_name": path.stem}


def model_fingerprints(model: Model) -> dict[str, str]:
    """Short hashes that tell one model from another whatever it was loaded from (a diffusers folder, the single
    file it was converted from, the same folder moved): each component's class, each weight's shape and 64 of its
    values evenly spread, the tokenizers' words and the noise schedule. A checkpoint keeps them, so a resume may name
    the model where it is now (`--model`) and is refused only if it is another one (`same_model`). Rows added for
    embeddings (an installed token) are not the model's.

    One hash per precision the values can be read in: a model loaded in fp32 gives its fp32, fp16 and bf16 hashes
    (loading it in fp16 rounds the weights as casting them does), one loaded in fp16 only its fp16 one; so a run
    started on a GPU in fp16 and resumed on a CPU in fp32 is still compared exactly. Sampling instead of hashing
    every weight keeps it to milliseconds for SDXL's 3.5B parameters: a fine-tune or merge moves nearly every value.
    """
    from .tokens import ExtendedEmbedding, base_embedding

    shared = hashlib.sha256()  # what does not depend on the precision: classes, shapes, words, the noise schedule
    samples, loaded = [], set()
    components = [("unet", model.unet), ("vae", model.vae)] + [(name, te) for name, _, te in model.encoders]
    for name, module in components:
        shared.update(f"{name} {type(module).__name__}".encode())
        added = {id(m.vectors) for m in module.modules() if isinstance(m, ExtendedEmbedding)}
        for tensor in module.parameters():  # (not buffers, nor configurations: a library upgrade changes those)
            if id(tensor) in added or tensor.is_meta:
                continue
            shared.update(repr(tuple(tensor.shape)).encode())
            flat = tensor.detach().reshape(-1)
            n = min(flat.numel(), 64)
            loaded.add(flat.dtype)
            # (as float32, which holds fp16 and bf16 values exactly, to be fetched from the device in one copy)
            samples.append(flat[torch.arange(n, device=flat.device) * (flat.numel() - 1) // max(n - 1, 1)].float())
    for name, tokenizer, te in model.encoders:  # (the base vocabulary's words: ids past it are added tokens)
        words = [""] * base_embedding(te).num_embeddings
        for word, i in tokenizer.get_vocab().items():
            if i < len(words):
                words[i] = word
        shared.update("\n".join([name, *words]).encode())
    schedule = model.noise_scheduler().config
    shared.update(json.dumps({k: schedule.get(k) for k in _SCHEDULE_KEYS}, default=str).encode())
    values = torch.cat([t.to(samples[0].device) for t in samples]).cpu() if samples else torch.zeros(0)
    hashes = {}
    for precision, dtype in DTYPES.items():
        if not loaded <= {torch.float32, dtype}:  # (values held in another 16-bit type cannot be read in this one)
            continue
        digest = shared.copy()
        digest.update(values.to(dtype).view(torch.uint8).numpy().tobytes())
        hashes[precision] = digest.hexdigest()[:16]
    return hashes


def same_model(saved: dict[str, str], now: dict[str, str]) -> bool | None:
    """Whether two `model_fingerprints` are of one model: compared in a precision both hold; None when they share
    none (a run started in fp16 and resumed in bf16, each a rounding of weights neither kept)."""
    common = [p for p in DTYPES if p in saved and p in now]
    return all(saved[p] == now[p] for p in common) if common else None


# what a noise schedule trains with (a newer diffusers adds settings for sampling)
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                  "rescale_betas_zero_snr")


def check_model_object(model) -> None:
    """Refuse a `model=` argument (of `train`, `generate`, `score`) that is not a `Model` from `load_model`, naming
    what it is and how to get one: a name or path, or a diffusers pipeline, would fail later on a missing attribute.

    >>> check_model_object("shapes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    textinv.errors.ModelError: model= takes a Model from textinv.models.load_model, got str 'shapes'; ...
    """
    if model is None or isinstance(model, Model):
        return
    if isinstance(model, (str, os.PathLike)):
        fix = (f"pass load_model({os.fspath(model)!r}) (load it once for several calls), or leave model= out and "
               f"give the config's model={os.fspath(model)!r}")
        what = f"{type(model).__name__} {os.fspath(model)!r}"
    else:
        fix = ("load the model's folder or file with load_model (it checks the family, freezes the weights and "
               "reads the prediction type); its .pipeline is the diffusers pipeline, for diffusers' own calls")
        what = type(model).__name__
    raise ModelError(f"model= takes a Model from textinv.models.load_model, got {what}; {fix}")


def check_clip_skip(model: Model, clip_skip: int) -> int:
    """The clip skip `model` reads for `clip_skip`, or an error for one it cannot take.

    SDXL reads its encoders' penultimate layers already (its pipelines keep that), so its 1 and 2 are that reading,
    returned as 1: "clip skip 2", as SDXL fine-tunes (Pony, Illustrious) ask for, is what the web UI draws (it
    ignores clip skip on SDXL) and ComfyUI's "stop at -2" (SDXL's default there). Deeper skips, on which the two
    differ, are refused; so is one past an SD 1.x/2.x encoder's layers.

    >>> check_clip_skip(load_model("stabilityai/stable-diffusion-xl-base-1.0"), 2)  # doctest: +SKIP
    1
    """
    clip_skip = read_clip_skip(model, clip_skip)
    if clip_skip == 1:
        return 1
    if model.is_xl:
        raise ConfigError(f"{setting('clip_skip', clip_skip)}: SDXL reads its text encoders' penultimate layers "
                          "(clip skip 2 in the web UI's and ComfyUI's counting, which 1 and 2 both mean here); 3 or "
                          "more is not taken on SDXL (the web UI ignores it there): leave it at 1 or 2")
    layers = model.text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise ConfigError(f"{setting('clip_skip', clip_skip)} is more than the {layers} layers of {model.source}'s "
                          f"text encoder; 2 is the usual value (the penultimate layer)")
    return clip_skip


def read_clip_skip(model: Model, clip_skip: int) -> int:
    """The clip skip `model` reads for `clip_skip`, unchecked (`check_clip_skip` checks): SDXL's 2 is its own 1."""
    return 1 if model.is_xl and clip_skip == 2 else clip_skip


def encode_text(model: Model, ids: list[torch.Tensor], clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The UNet's text conditioning for token ids (one (B, 77) tensor per text encoder), as the pipelines make it.

    SD 1.x/2.x: the encoder's last hidden state (B, 77, C) (SD 2.x's config already drops its last layer).
    SDXL: both encoders' penultimate hidden states concatenated (B, 77, 768 + 1280), and the pooled, projected
    output of the second (B, 1280). The pooled vector is read at the first end-of-text token: transformers picks
    the position of the largest id for configs with the old `eos_token_id=2`, which is a new token's position
    once tokens are added, so we do not rely on it.
    `clip_skip` (SD 1.x/2.x; the web UI's and kohya's numbering): 1 reads the last layer, 2 the one before it
    (through the encoder's final layer norm, as they do), and so on.
    Returns (hidden states, pooled or None).
    """
    if not model.is_xl:
        if clip_skip == 1:
            return model.text_encoder(ids[0])[0], None
        encoder = model.text_encoder
        hidden = encoder(ids[0], output_hidden_states=True).hidden_states[-clip_skip]
        norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm  # transformers 5, 4
        return norm(hidden), None
    hidden, pooled = [], None
    for (name, tokenizer, encoder), token_ids in zip(model.encoders, ids):
        out = encoder(token_ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if name == "text_encoder_2":
            eos = (token_ids == tokenizer.eos_token_id).int().argmax(dim=-1)  # (B,)
            last = out.last_hidden_state[torch.arange(len(token_ids), device=token_ids.device), eos]  # (B, C)
            pooled = encoder.text_projection(last)
    return torch.cat(hidden, dim=-1), pooled


def xl_time_ids(original_hw: torch.Tensor, crop_tl: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """SDXL's micro-conditioning per sample: (orig_h, orig_w, crop_top, crop_left, target_h, target_w), (B, 6);
    `target` is the square's side, or each sample's (h, w), (B, 2)."""
    target_hw = torch.full_like(original_hw, target) if isinstance(target, int) else target
    return torch.cat([original_hw, crop_tl, target_hw], dim=1).float()


class _ShapeOnly:
    """A stand-in tensor that knows only its shape, so checkpoint keys can be inspected without loading weights."""

    def __init__(self, shape):
        self.shape = torch.Size(shape)


class _LazyKeys(Mapping):
    """A read-only mapping over a safetensors file's header: keys and shapes, no tensor data."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._keys = list(self._file.keys())
        self._known = set(self._keys)

    def __getitem__(self, key):
        if key not in self._known:
            raise KeyError(key)
        return _ShapeOnly(self._file.get_slice(key).get_shape())

    def __contains__(self, key):
        return key in self._known

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def tensor(self, key):
        return self._file.get_tensor(key)


_LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint"


@contextlib.contextmanager
def _lightning_callbacks_readable():
    """Let torch's weights-only load read the ModelCheckpoint callback state that PyTorch Lightning pickled into
    SD's original .ckpt files (sd-v1-4.ckpt and their fine-tunes), as the web UI's safe unpickler allows it: a
    stand-in class of that name receives it, nothing is imported or run."""
    stand_in = type("ModelCheckpoint", (), {"__module__": _LIGHTNING_CALLBACK})
    with torch.serialization.safe_globals([stand_in]):
        yield


def _unreadable(path: Path, error: Exception, kind: str = "checkpoint", folder: str = "the model's") -> ModelError:
    """A one-line error for a checkpoint (or another `kind` of file, a VAE's) that cannot be read; torch's
    weights-only refusal, several lines with terminal escapes, becomes the global it met and what to do (`folder`:
    whose diffusers folder to pass instead)."""
    text = str(error)
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
        if found and found.group(1) == "torch.nn.modules.container.ParameterDict" and kind == "checkpoint":
            return ModelError(_embedding_given(path))  # the paper's embedding .pt
        what = f" ({found.group(1)})" if found else ""
        return ModelError(f"cannot read {kind} {path}: it holds pickled Python objects beyond its weights{what}, "
                          f"which textinv does not load; convert it to .safetensors (any tool that loads it can save "
                          f"one) or pass {folder} diffusers folder")
    return ModelError(f"cannot read {kind} {path}: {_first_line(error)}. Is it a complete .safetensors/.ckpt file?")


_OLD_TEXT_ENCODER = "cond_stage_model.transformer."


def _old_text_encoder_layout(keys) -> bool:
    """SD 1.x text encoder weights saved by transformers before 4.x: `cond_stage_model.transformer.encoder...`,
    without the `text_model.` level diffusers looks for (the web UI and ComfyUI rename them)."""
    found = [k for k in keys if k.startswith(_OLD_TEXT_ENCODER)]
    return bool(found) and not any(k.startswith(_OLD_TEXT_ENCODER + "text_model.") for k in found)


def _old_layout_text_encoder(keys, config: str | None, dtype: torch.dtype):
    """The checkpoint's own SD 1.x text encoder from the old key layout, built the way diffusers builds it."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, fetch_diffusers_config
    from transformers import CLIPTextModel

    tensor = keys.tensor if isinstance(keys, _LazyKeys) else keys.__getitem__
    state = {_OLD_TEXT_ENCODER + "text_model." + k[len(_OLD_TEXT_ENCODER):]: tensor(k)
             for k in keys if k.startswith(_OLD_TEXT_ENCODER)}
    config = config or fetch_diffusers_config(keys)["pretrained_model_name_or_path"]
    return create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", config=config,
                                                torch_dtype=dtype)


def checkpoint_prediction(path: str | os.PathLike, keys) -> tuple[str | None, bool]:
    """What a single file says of its prediction type, as the web UI and ComfyUI read it: (prediction type or
    None, zero terminal SNR).

    - empty `v_pred` / `ztsnr` tensors, the mark of v-prediction (zero-SNR) SDXL fine-tunes (ComfyUI);
    - a `<name>.yaml` beside the file, the original LDM config the web UI reads first: `parameterization: "v"`
      (SD 2.x 768 models), else epsilon.
    """
    if "v_pred" in keys:
        return "v_prediction", "ztsnr" in keys
    import yaml

    config = Path(path).with_suffix(".yaml")
    try:
        model = yaml.safe_load(config.read_text(encoding="utf-8"))["model"]
        target, params = model.get("target", ""), model.get("params") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):  # none, or not an LDM config
        return None, False
    if not str(target).startswith("ldm.") or not isinstance(params, dict):
        return None, False
    return ("v_prediction" if params.get("parameterization") == "v" else "epsilon"), False


# where a single file keeps its text encoder(s) and its VAE (diffusers' LDM_VAE_KEYS), and the VAE files web-UI users
# pair a checkpoint saved without one with
_TEXT_ENCODER_PREFIXES = {"sd1": ("cond_stage_model.transformer.",), "sd2": ("cond_stage_model.model.",),
                          "sdxl": ("conditioner.embedders.0.", "conditioner.embedders.1.")}
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_USUAL_VAES = {
    "sd1": "vae-ft-mse-840000-ema-pruned.safetensors (stabilityai/sd-vae-ft-mse)",
    "sd2": "vae-ft-mse-840000-ema-pruned.safetensors (stabilityai/sd-vae-ft-mse)",
    "sdxl": "sdxl_vae.safetensors (stabilityai/sdxl-vae) or the fp16-fixed one (madebyollin/sdxl-vae-fp16-fix)",
}


def _saved_without_vae(keys, family: str) -> bool:
    """A checkpoint with its UNet and text encoder(s) but no VAE: web UIs prune it out of some shared files, to be
    used with a separate VAE file. (A file that lacks more is left to diffusers' 'not a complete checkpoint'.)"""
    names = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in names)

    return all(map(has, _TEXT_ENCODER_PREFIXES[family])) and not any(map(has, _VAE_PREFIXES))


def checkpoint_family(path: str | os.PathLike) -> str:
    """The family of a single-file checkpoint, read from its keys and shapes ("sd1", "sd2", "sdxl").

    Raises ModelError for a file that is not a Stable Diffusion checkpoint or is a kind we do not train.
    """
    return _inspect_checkpoint(path)[0]


def _inspect_checkpoint(path: str | os.PathLike, inpainting: bool = False, refiner: bool = False):
    """(family, keys) of a single-file checkpoint; keys maps its weight names to tensors or shapes. `inpainting`:
    an inpainting model is taken too, `refiner`: the SDXL refiner (`load_model`)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ModelError(f"checkpoint {path} is empty (0 bytes): the download did not finish; download it again")
    try:
        if path.suffix.lower() == ".safetensors":
            keys = _LazyKeys(path)
        else:
            # mmap avoids reading gigabytes just to see the keys, but torch maps only its zip format: older .ckpt
            # files are plain pickles, which diffusers reads too
            with _lightning_callbacks_readable():
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            keys = state.get("state_dict", state) if isinstance(state, dict) else {}
    except Exception as e:  # safetensors and torch raise many types for a bad file
        raise _unreadable(path, e) from e
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelError(_not_a_checkpoint(path, keys))
    kind = infer_diffusers_model_type(keys)
    taken = (inpainting and _NOT_TEXT_TO_IMAGE.get(kind) == _INPAINTING) or (refiner and kind == "xl_refiner")
    if kind in _NOT_TEXT_TO_IMAGE and not taken:
        raise ModelError(_not_text_to_image(path, _NOT_TEXT_TO_IMAGE[kind]))
    family = _SINGLE_FILE_FAMILIES.get(kind)
    if family is None:
        raise ModelError(f"{path} is a '{kind}' checkpoint; textinv trains Stable Diffusion 1.x and 2.x models")
    return family, keys


def _not_a_checkpoint(path: Path, keys) -> str:
    """What a file without SD's UNet weights is, from its keys, and where it goes instead: web-UI users keep
    embeddings, LoRAs and VAEs beside their checkpoints, and a diffusers folder's component files look like one."""
    names = list(keys)
    small = len(names) <= 8 and all(len(getattr(keys[k], "shape", (0, 0, 0))) in (1, 2) for k in names)
    kind = (weights_kind(names) or (None,))[0]
    if kind == "LoRA":
        return (f"{path} is a LoRA, not a model: --model takes the Stable Diffusion model it was made for; apply "
                f"the LoRA when drawing, with `textinv generate --lora-dir {path.parent}` and <lora:{path.stem}> in "
                f"the prompt")
    if names and (embedding_layout(names) or small):
        return _embedding_given(path)
    if kind == "VAE":
        return f"{path} is a VAE alone, not a whole model: pass it to --vae, and the model to --model"
    if kind in ("UNet", "text encoder"):
        folder = path.parent.parent
        where = f" ({folder})" if (folder / "model_index.json").is_file() else ""
        return (f"{path} holds only the {kind} of a diffusers model: pass the model's folder, the one with "
                f"model_index.json{where}")
    return (f"{path} is not a Stable Diffusion checkpoint (no 'model.diffusion_model.*' weights); --model takes an "
            f"SD 1.x/2.x/XL checkpoint, a diffusers folder or a hub id")


def _embedding_given(path) -> str:
    return (f"{path} is a textual-inversion embedding, not a model: --model takes the Stable Diffusion model it is "
            f"used with; give the embedding to `textinv generate --embedding` (or `train --init-embedding` to go on "
            f"training it)")


def _not_text_to_image(location, what: str) -> str:
    return (f"{location} is {what}; textinv needs a base text-to-image model (such as stable-diffusion-v1-5 or "
            f"stable-diffusion-xl-base-1.0)" + ("; `textinv generate` draws with it from a picture (--init-image, "
                                                "with --mask for the part to redraw)" if what == _INPAINTING else ""))


def _index_family(folder: Path) -> str | None:
    """"sdxl" for an SDXL folder, None for another SD folder (the widths decide later); refuse other pipelines."""
    record = folder / "model_index.json"
    try:
        index = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: invalid JSON or not UTF-8
        raise ModelError(f"{record} is damaged or incomplete ({e}); download or copy the model folder again") from e
    if not isinstance(index, dict):
        raise ModelError(f"{record} is damaged or incomplete (a JSON {type(index).__name__}, not an object); download "
                         f"or copy the model folder again")
    name = index.get("_class_name", "")
    if not name.startswith("StableDiffusion") or name.startswith("StableDiffusion3") or "text_encoder_3" in index:
        raise ModelError(f"{folder} holds a {name or 'unnamed'} pipeline; textinv trains Stable Diffusion 1.x, "
                         f"2.x and XL models")
    if "text_encoder_2" in index or "XL" in name:
        return "sdxl"
    return None


# a component's weights: plain (`model.safetensors`), sharded (`-00001-of-00002`), a variant (`model.fp16.safetensors`)
_WEIGHTS = re.compile(r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>\w+))??(?:-\d+-of-\d+)?"
                      r"\.(?:safetensors|bin)$")


def _folder_variant(folder: Path, xl: bool, wanted: str | None = None) -> str | None:
    """Check that a diffusers folder has every component textinv loads, before diffusers tries (its errors name a
    file, not the missing part). Returns the weights variant to load ("fp16") when some component has only variant
    files, as a download of just `*.fp16.safetensors` gives; else None. `wanted` (--variant) must be one the folder
    has: refused, listing the ones it has, when no component holds its files.

    The SDXL refiner lists no first text encoder: `_check_text_to_image` names it once loaded.
    """
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    needed = ["unet", "vae", "scheduler"] + (["text_encoder_2", "tokenizer_2"] if xl else ["text_encoder", "tokenizer"])
    if xl and index.get("text_encoder") not in (None, [None, None]):
        needed += ["text_encoder", "tokenizer"]
    variants, every = set(), set()
    for name in needed:
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelError(f"{folder} is not a complete text-to-image model: its model_index.json lists no {name}; "
                             f"textinv needs unet, vae, scheduler, text_encoder and tokenizer")
        sub = folder / name
        files = [f.name for f in sub.iterdir() if f.is_file()] if sub.is_dir() else []
        if not files:
            raise ModelError(f"{folder} is incomplete: its {name}/ folder is missing or empty; download or copy "
                             f"the whole model folder again")
        if name.startswith("tokenizer"):  # (its files differ: vocab.json + merges.txt, or OpenCLIP's)
            continue
        config = "scheduler_config.json" if name.startswith("scheduler") else "config.json"
        if config not in files:  # (transformers reinitialises a text encoder of its default size without it)
            raise ModelError(f"{folder} is incomplete: {name}/ has no {config}; download or copy the whole model "
                             f"folder again")
        if name.startswith("scheduler"):
            continue
        found = [m.group("variant") for m in map(_WEIGHTS.match, files) if m]
        if not found:
            raise ModelError(f"{folder} is incomplete: {name}/ has no weights (no .safetensors or .bin file); "
                             f"download or copy the whole model folder again")
        every.update(found)
        if None not in found:  # variant files only
            variants.update(found)
    if wanted is not None:
        if wanted not in every:
            has = ", ".join(sorted(v for v in every if v)) or "none"
            plain = "its plain weights" if None in every else "its only variant"
            raise ModelError(f"--variant {wanted}: {folder} has no {wanted} weights (its variants: {has}); give one "
                             f"of those, or leave --variant out to load {plain}")
        return wanted
    if len(variants) > 1:
        raise ModelError(f"{folder} has weights of several variants ({', '.join(sorted(variants))}) and no plain ones; "
                         f"keep one variant's files")
    return variants.pop() if variants else None


def source_is_xl(source: str | os.PathLike | None) -> bool | None:
    """Whether a `--model` value is an SDXL model (the SDXL refiner too), read without loading it (a folder's
    model_index.json, a file's keys); None for a hub id, known only once loaded."""
    kind, location = resolve_source(source)
    if kind in ("bundled", "folder"):
        return _index_family(Path(location)) == "sdxl"
    if kind == "file":
        return _inspect_checkpoint(location, inpainting=True, refiner=True)[0] == "sdxl"
    return None


def source_is_inpainting(source: str | os.PathLike | None) -> bool | None:
    """Whether a `--model` value is an inpainting model (a UNet that also reads a mask and a masked picture), read
    without loading it (a folder's unet/config.json, a file's keys); None for a hub id, or a folder that does not
    tell."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    kind, location = resolve_source(source)
    if kind == "file":
        keys = _inspect_checkpoint(location, inpainting=True, refiner=True)[1]
        return _NOT_TEXT_TO_IMAGE.get(infer_diffusers_model_type(keys)) == _INPAINTING
    if kind == "hub":
        return None
    try:
        unet = json.loads((Path(location) / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((Path(location) / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # (noisy latents, the masked picture's latents and the mask: what `_check_text_to_image` tells once loaded)
    return unet.get("in_channels") == 2 * vae.get("latent_channels", 4) + 1


def source_is_sdxl_refiner_file(source: str | os.PathLike | None) -> bool:
    """Whether a `--model` value is a single file of the SDXL refiner (its own configs: another UNet, one text
    encoder), read from its keys without loading it."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    kind, location = resolve_source(source)
    if kind != "file":
        return False
    return infer_diffusers_model_type(_inspect_checkpoint(location, refiner=True)[1]) == "xl_refiner"


def resolve_source(source: str | os.PathLike | None) -> tuple[str, str]:
    """Classify a `--model` value: ("bundled" | "folder" | "file" | "hub", location). Raises for a bad path."""
    source = DEFAULT_MODEL if source in (None, "") else str(source)
    if source in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[source]
        if not (folder / "model_index.json").exists():
            raise ModelError(f"the bundled model '{source}' is missing from this install ({folder}); reinstall textinv")
        return "bundled", str(folder)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelError(f"{path} is a folder but not a diffusers model (no model_index.json). "
                             f"{_folder_hint(path)}")
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelError(f"{path} is not a model checkpoint (expected one of {', '.join(CHECKPOINT_SUFFIXES)})")
        return "file", str(path)
    if _is_local_path(source):
        raise ModelError(f"model {source!r} not found: the path {path} does not exist{backslash_note(source)}. Check "
                         f"the path, or give a hub id 'owner/name' or a bundled model ({', '.join(BUNDLED_MODELS)}).")
    if not _is_hub_id(source):
        from .config import _near  # (the nearest name, as a mistyped choice's: `load_model("shapez")`)

        raise ModelError(
            f"model {source!r} not found: no such folder or file{backslash_note(source)}, and not a hub id of the "
            f"form 'owner/name'. Bundled models: {', '.join(BUNDLED_MODELS)}{_near(source, BUNDLED_MODELS) or '.'}"
        )
    return "hub", source


def _folder_hint(path: Path) -> str:
    """What to give instead of a folder without model_index.json: the diffusers model it is a part of, or the
    checkpoint files in it (a web UI's models/Stable-diffusion folder), else the kinds of model textinv takes."""
    here = path.resolve()
    if (here.parent / "model_index.json").is_file():
        return f"It is the {here.name}/ part of the diffusers model {here.parent}: pass that folder."
    run = _training_run_hint(path)
    if run:
        return run
    files = sorted(f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in (".safetensors", ".ckpt"))
    if files:
        listed = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        return f"It holds checkpoint files ({listed}): pass one of them, e.g. {path / files[0]}."
    return ("Give a diffusers folder, a .safetensors/.ckpt checkpoint, or a hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'.")


def _training_run_hint(path: Path) -> str | None:
    """For a folder a training run wrote (textinv's --out, with its config.yaml, or the diffusers script's
    --output_dir, with learned_embeds.safetensors or .bin), which `from_pretrained(output_dir)` reads only where the
    script saved the whole model: its embedding goes to --embedding, and the model it trained on to --model."""
    from .config import read_config_file

    if (path / "config.yaml").is_file():
        try:
            model = read_config_file(path / "config.yaml").get("model")
        except ConfigError:
            model = None
        given = f"--model {model}" if isinstance(model, str) else "--model (the one it was trained on)"
        return (f"It is a textinv training run: its embedding goes to `textinv generate --embedding {path}` (or "
                f"`train --init-embedding`), its model to {given}.")
    learned = [name for name in ("learned_embeds.safetensors", "learned_embeds.bin") if (path / name).is_file()]
    if learned:
        return (f"It holds a textual-inversion embedding ({learned[0]}), no model: give it to `textinv generate "
                f"--embedding {path}` (or `train --init-embedding`), with the model it was trained on as --model (the "
                f"diffusers script saves the whole model there only with --save_as_full_pipeline).")
    return None


def _is_local_path(text: str, base: Path | None = None) -> bool:
    """Whether a value that names nothing on disk was meant as a local path rather than a hub id 'owner/name':
    it starts with . / ~, has a backslash or more than one slash, ends in a slash or a checkpoint suffix, or its
    first part is a folder in `base` (default: the working directory; `models/sd15` with a `models/` folder
    there). A --config file's values are read from its folder (`config.config_file_settings`)."""
    if text.startswith((".", "~")) or Path(text).is_absolute() or "\\" in text or text.count("/") > 1:
        return True
    if text.endswith("/") or Path(text).suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    return "/" in text and (Path(base or ".") / text.split("/")[0]).is_dir()


def shareable_name(value, always_local: bool = False) -> tuple[str, bool]:
    """A model (or file) setting as a shared file records it, and whether that is reduced: a local file or folder by
    its name alone (where it lies tells who made the file and how their folders are laid out: /home/alice/...), a
    bundled model or hub id as it is. `always_local`: the value is a path unless it is an embedding's hub id
    (`hub.hub_reference`: an embedding file, or owner/name[/file] naming nothing here).

    >>> shareable_name("shapes"), shareable_name("/home/alice/models/sd15/")
    (('shapes', False), ('sd15', True))
    """
    text = str(value)
    if not value or text in BUNDLED_MODELS:
        return value, False
    if always_local:
        from .hub import hub_reference

        if hub_reference(text) is not None:
            return value, False
    if always_local or Path(text).expanduser().exists() or _is_local_path(text):
        return Path(absolute(text)).name or text, True
    return value, False


def _is_hub_id(text: str) -> bool:
    """'owner/name' with the characters the Hugging Face hub allows."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


class EarlyInterrupt:
    """Ctrl-C while a model (and a run's pictures) load stops at once, as Python's own handler does, and is noted:
    Python drops an exception raised inside an object's `__del__` (printing "Exception ignored in"), and a Ctrl-C
    landing in one, as the loading collects garbage, was lost and the work went on. Whoever holds it stops on
    `noted` once the loading is done (`interrupt_kept`; `stopping._StopRequest` as train's loop begins, or, data
    parallel, at its first step boundary with the other processes). Only Python's own handler, in the main thread,
    is replaced, or another `EarlyInterrupt`'s (a block within a block: both note the Ctrl-C, so the inner one,
    which ends first, stops on it), and put back on exit."""

    def __init__(self):
        self.noted = False
        self._previous = None

    def __enter__(self):
        handler = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and (
                handler is signal.default_int_handler or isinstance(getattr(handler, "__self__", None),
                                                                    EarlyInterrupt)):
            self._previous = handler  # (before `_handle` goes in: it hands the signal on to it)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.noted = True
        self._previous(signum, frame)  # (Python's raises KeyboardInterrupt; an outer block's notes it, then raises)

    def check(self) -> None:
        """KeyboardInterrupt if a Ctrl-C came (one that Python dropped: a raised one has stopped the work already)."""
        if self.noted:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@contextlib.contextmanager
def interrupt_kept():
    """The block (a model loading) under `EarlyInterrupt`, which it yields: a Ctrl-C in it that Python dropped inside
    a `__del__` raises KeyboardInterrupt as the block ends, before any work is done with what it loaded (or
    earlier, where the block calls its `check`). In a block within a block, the inner one's end raises it.

    >>> with interrupt_kept():
    ...     model = load_model("shapes")  # doctest: +SKIP
    """
    with EarlyInterrupt() as early:
        yield early
    early.check()


def load_model(
    source: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    prediction_type: str | None = None,
    single_file_config: str | None = None,
    vae: str | os.PathLike | None = None,
    revision: str | None = None,
    variant: str | None = None,
    inpainting: bool = False,
    refiner: bool = False,
) -> Model:
    """Load an SD 1.x/2.x/XL pipeline from a bundled name, diffusers folder, single file or hub id; all frozen.
    `revision` (a hub id's branch, tag or commit) and `variant` (its weights' variant, "fp16"; a folder's too) are
    diffusers' `from_pretrained(revision=, variant=)`. `inpainting`: an inpainting model (a UNet that also reads a
    mask and a masked picture, sd-v1-5-inpainting) is taken too, for `generate --init-image`; `refiner`: the SDXL
    refiner (only SDXL's second text encoder) too, for `generate --refiner`.

    >>> model = load_model("shapes")            # doctest: +SKIP
    >>> model.family, model.resolution          # doctest: +SKIP
    ('custom', 64)
    """
    # 1. the options against the kind of source, before anything is read from it
    kind, location = _check_load_options(source, prediction_type, vae, revision, variant)
    # 2. what the source says of itself (family, a folder's variant, a single file's prediction), checked
    found = _inspect_source(kind, location, single_file_config, vae, variant, inpainting, refiner)
    # 3. the pipeline, every failure said as a ModelError
    pipe = _load_pipeline(found, dtype, vae, revision, variant)
    # 4. checked as a model textinv works with, its VAE set, frozen and moved
    family = _set_up_pipeline(pipe, found, dtype, vae, inpainting, refiner)
    model = Model(pipeline=pipe, family=family, source=str(source or DEFAULT_MODEL), prediction_type="epsilon")
    for _, tokenizer, encoder in model.encoders:
        _check_tokenizer(tokenizer, encoder, location)
    for module in [pipe.unet, pipe.vae] + [te for _, _, te in model.encoders]:
        module.requires_grad_(False)
        module.eval()
    with _quiet_diffusers():  # (fp16 on the CPU: "cannot run ... will fail", once per module; it runs, `_warn_slow`)
        pipe.to(device)
    _warn_slow(dtype, device)
    # 5. the prediction type its scheduler follows, then what it was loaded with and what it records of itself
    model.prediction_type = _set_prediction_type(pipe, location, prediction_type, found)
    model.loaded_with = {k: str(v) for k, v in (("vae", vae), ("single_file_config", found.single_file_config),
                                                ("prediction_type", prediction_type), ("revision", revision),
                                                ("variant", variant)) if v}
    _read_records(model, kind, location, revision)
    return model


@dataclass
class _Source:
    """What `load_model` knows of its source before loading it. `variant`: the one a folder is loaded with (asked
    for, or the only one its files have); `keys`, `file_prediction` and `zero_snr`: a single file's;
    `single_file_config`: as given, or as `_check_single_file_config` made it, for a single file."""

    kind: str
    location: str
    single_file_config: str | None
    family: str | None = None
    variant: str | None = None
    keys: object = None
    file_prediction: str | None = None
    zero_snr: bool = False


def _check_load_options(source, prediction_type: str | None, vae, revision: str | None,
                        variant: str | None) -> tuple[str, str]:
    """`load_model`'s options checked against the kind of source, before anything is read; its (kind, location)."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"prediction type {prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
    kind, location = resolve_source(source)
    if vae is not None:  # a mistyped --vae is said now, not after the model has loaded
        _check_vae_source(vae)
    what = {"bundled": "a bundled model", "folder": "a local folder", "file": "a single file"}.get(kind)
    if revision and what:  # (a folder or file is one version of the model: there is no other to pick)
        raise ModelError(f"--revision {revision} is for a hub id; --model {source} is {what}, which holds one version "
                         f"only: leave --revision out, or give --model as the hub id 'owner/name'")
    if variant and kind == "file":
        raise ModelError(f"--variant {variant} is for a hub id or a diffusers folder; --model {source} is a single "
                         f"file, whose weights are what they are: leave --variant out")
    return kind, location


def _inspect_source(kind: str, location: str, single_file_config: str | None, vae, variant: str | None,
                    inpainting: bool, refiner: bool) -> _Source:
    """What a folder's files or a single file's keys say of the model, checked; a hub id says nothing before it
    is loaded."""
    found = _Source(kind, location, single_file_config)
    if kind in ("bundled", "folder"):
        found.family = _index_family(Path(location))
        found.variant = _folder_variant(Path(location), xl=found.family == "sdxl", wanted=variant)
        if single_file_config is not None:  # (stacklevel: load_model's caller)
            warn(f"--single-file-config is for a single-file checkpoint; {location} is a diffusers folder "
                 f"with its own configs, so it is not used", stacklevel=3)
    elif kind == "file":
        suffix = Path(location).suffix
        if suffix.lower() == ".safetensors" and suffix != ".safetensors":
            raise ModelError(f"{location}: diffusers reads a file as safetensors only by a lower-case suffix; rename "
                             f"it to {Path(location).with_suffix('.safetensors').name}")
        found.family, found.keys = _inspect_checkpoint(location, inpainting, refiner)
        if single_file_config is not None:
            found.single_file_config = _check_single_file_config(single_file_config, found.family)
        found.file_prediction, found.zero_snr = checkpoint_prediction(location, found.keys)
        if vae is None and _saved_without_vae(found.keys, found.family):
            raise ModelError(f"{location} is a {FAMILY_NAMES[found.family]} checkpoint saved without its VAE (no "
                             f"first_stage_model.* weights): pass the VAE it is used with as --vae, usually "
                             f"{_USUAL_VAES[found.family]} (a .safetensors file, a diffusers VAE folder or a hub id)")
    return found


def _load_pipeline(found: _Source, dtype: torch.dtype, vae, revision: str | None, variant: str | None):
    """The pipeline, by diffusers' loader for the kind of source; its failures as a ModelError that says why."""
    common = dict(torch_dtype=dtype)  # (newer diffusers call it `dtype` and warn; older ones know only this)
    try:
        # (transformers' bars inside diffusers' one; the filter is the block's own, not left in the caller's process)
        with _one_progress_bar(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
            if found.kind == "hub":  # the family is known only after loading: let diffusers pick the pipeline class
                from diffusers import DiffusionPipeline

                with _quiet_diffusers():  # its "couldn't connect" lines: our error below says it once
                    return _from_hub(DiffusionPipeline, found.location, common, revision=revision, variant=variant)
            cls = StableDiffusionXLPipeline if found.family == "sdxl" else StableDiffusionPipeline
            if cls is StableDiffusionPipeline:
                common.update(safety_checker=None, requires_safety_checker=False)
            if found.kind == "file":
                return _from_single_file(cls, found, common, dtype, vae)
            folder_variant = {"variant": found.variant} if found.variant else {}
            return cls.from_pretrained(found.location, **common, **folder_variant)
    except ModelError:
        raise
    except Exception as e:
        raise _load_error(e, found, revision, variant) from e


def _from_single_file(cls, found: _Source, common: dict, dtype: torch.dtype, vae):
    """`cls.from_single_file`, with a --vae and an old-layout SD 1 text encoder loaded first and passed in."""
    if found.single_file_config:
        common["config"] = found.single_file_config
    with _quiet_diffusers(), _lightning_callbacks_readable():  # its "attempting to download" lines
        if vae is not None:
            # loaded first and passed in, as diffusers takes a component the file lacks: a file saved without its
            # VAE has none to replace, and one with a VAE need not load it. Its config is the one diffusers would
            # give the file's own VAE (the folder's or hub model's vae/)
            from diffusers import AutoencoderKL

            with warnings.catch_warnings():  # (huggingface_hub's deprecation notes, for a hub id)
                warnings.simplefilter("ignore")
                own = AutoencoderKL.load_config(found.single_file_config or _single_file_config_repo(found.keys),
                                                subfolder="vae")
            common["vae"] = _load_vae(vae, dtype, own)
        if found.family == "sd1" and _old_text_encoder_layout(found.keys):  # diffusers would not find it
            common["text_encoder"] = _old_layout_text_encoder(found.keys, found.single_file_config, dtype)
        return cls.from_single_file(found.location, **common)


def _load_error(e: Exception, found: _Source, revision: str | None, variant: str | None) -> ModelError:
    """The ModelError for diffusers' failure `e` to load the source: not cached and no network, an incomplete
    checkpoint, or its own words with a hint by the kind of source."""
    location, family, single_file_config = found.location, found.family, found.single_file_config
    # (a variant whose files are not there is diffusers' ValueError, cached or not)
    variant_missing = variant and isinstance(e, ValueError) and "variant" in str(e)
    if found.kind == "hub" and (isinstance(e, (OSError, ConnectionError)) or variant_missing):  # not cached, no network
        return _hub_not_cached(location, revision, variant)
    if found.kind == "file" and isinstance(e, (OSError, ConnectionError)) and not (
            single_file_config and Path(single_file_config).is_dir()):
        # its configs are fetched from the hub (a hub --single-file-config, or the repo diffusers picks for the
        # file's kind); huggingface_hub's own text says to unset HF_HUB_OFFLINE, no help without a network
        repo = single_file_config or _single_file_config_repo(found.keys)
        name = FAMILY_NAMES[family]
        return ModelError(f"{location} is a {name} checkpoint, which holds weights only: its configs and "
                          f"tokenizer come from the hub model {repo!r}, which is not in the local Hugging Face "
                          f"cache and the hub could not be reached{offline_note()}. Pass --single-file-config with "
                          f"a local diffusers folder of a {name} model (its configs and tokenizer are read, not its "
                          f"weights), or run once with a network")
    if found.kind == "file" and type(e).__name__ == "SingleFileComponentError":  # a component's weights are missing
        return ModelError(f"cannot load model {location!r}: {_first_line(e)}: it is not a complete checkpoint (a "
                          f"UNet-only or pruned file?); textinv needs one with the UNet, VAE and text encoder(s), "
                          f"or the model's diffusers folder")
    hint = (
        f" A single file needs the model's config files: they come from the hub (network) or pass "
        f"--single-file-config with a local diffusers folder of the same family ({FAMILY_NAMES[family]})."
        if found.kind == "file"
        else " Hub ids need a network or a filled Hugging Face cache; or download the model and pass its folder."
        if found.kind == "hub"
        else ""
    )
    return ModelError(f"cannot load model {location!r}: {type(e).__name__}: {_first_line(e)}.{hint}")


def _hub_not_cached(location: str, revision: str | None, variant: str | None) -> ModelError:
    """The ModelError for a hub id (at a revision or variant asked for) that is not cached, with no network."""
    offline = offline_note()
    if revision or variant:
        which = " and ".join(part for part in (revision and f"revision {revision!r}",
                                               variant and f"variant {variant!r}") if part)
        flags = " ".join(part for part in (revision and f"--revision {revision}",
                                           variant and f"--include '*.{variant}.*' '*.json' '*.txt'") if part)
        return ModelError(f"model {location!r} with {which} is not in the local Hugging Face cache and the hub could "
                          f"not be reached{offline}: check the name, or download it where there is a network (`hf "
                          f"download {location} {flags}`)")
    return ModelError(f"model {location!r} is not in the local Hugging Face cache and the hub could not be "
                      f"reached{offline}: download it where there is a network (`hf download {location}`) and pass "
                      f"its folder, or pass a local folder or .safetensors file")


def _set_up_pipeline(pipe, found: _Source, dtype: torch.dtype, vae, inpainting: bool, refiner: bool) -> str:
    """Check the loaded pipeline is a text-to-image SD model textinv works with, then set its VAE (a --vae, SDXL's
    kept in fp32) and quiet its progress bar; its family."""
    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ModelError(f"{found.location} is a {type(pipe).__name__}; textinv trains Stable Diffusion 1.x, 2.x "
                         f"and XL")
    _check_text_to_image(pipe, found.location, inpainting, refiner)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # it is not part of what we train or judge
    is_xl = isinstance(pipe, StableDiffusionXLPipeline)
    width = (pipe.text_encoder or pipe.text_encoder_2).get_input_embeddings().embedding_dim
    family = "sdxl" if is_xl else (found.family or family_for_widths((width,)) or "custom")
    if vae is not None and found.kind != "file":  # (a single file's --vae went in with its other parts)
        pipe.vae = _load_vae(vae, dtype, pipe.vae.config)
    if is_xl and dtype == torch.float16 and (vae is None or getattr(pipe.vae.config, "force_upcast", True)):
        # SDXL's VAE overflows in fp16, so it stays in fp32, for training's encoding as well as for decoding. A --vae
        # stays in fp16 only when its config says it can (`force_upcast: false`, as the fp16-fixed VAE's does; the
        # pipeline reads the same flag to upcast before decoding): the stock SDXL VAE given as --vae says true, and
        # a single file takes the model's config, which says true too
        pipe.vae.to(torch.float32)
        _decode_any_dtype(pipe.vae)
    pipe.set_progress_bar_config(disable=True)
    return family


def _set_prediction_type(pipe, location: str, prediction_type: str | None, found: _Source) -> str:
    """The prediction type the model is trained and sampled with, checked, and its scheduler made to follow it
    (and a single file's zero terminal SNR); returns it."""
    own = pipe.scheduler.config.get("prediction_type", "epsilon")
    # the user's word, else what a single file says of itself (the config diffusers paired it with knows nothing
    # of the file: SDXL's base config for a v-pred fine-tune), else the scheduler's
    pred = prediction_type or found.file_prediction or own
    if pred not in PREDICTION_TYPES:
        raise ModelError(f"{location}'s scheduler predicts {pred!r}, which textinv does not support; pass "
                         f"--prediction-type epsilon or v_prediction")
    changes = {"prediction_type": pred} if pred != own else {}
    if found.zero_snr and not pipe.scheduler.config.get("rescale_betas_zero_snr", False):
        changes["rescale_betas_zero_snr"] = True
    if changes:  # sampling must follow them too, not only training (`Model.noise_scheduler`)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **changes)
    return pred


def _read_records(model: Model, kind: str, location: str, revision: str | None) -> None:
    """`model.guidance` and `.prompting` from the training record a folder (or the hub model, at the revision it
    was loaded at) holds beside it; SD's defaults where it holds none."""
    if kind in ("bundled", "folder"):
        model.guidance = recorded_guidance(Path(location))
        model.prompting = recorded_prompting(Path(location))
    elif kind == "hub":  # the same model pushed to the hub says the same, from the revision it was loaded at
        from .hub import _fetch_quietly

        record = _fetch_quietly(location, TRAINING_RECORD, revision=revision)
        if record is not None:  # (its snapshot folder; most hub models have none: SD's defaults)
            model.guidance = recorded_guidance(record.parent)
            model.prompting = recorded_prompting(record.parent)


def _from_hub(cls, repo: str, options: dict, revision: str | None = None, variant: str | None = None):
    """`cls.from_pretrained(repo)`, its plain weights, else its fp16 variant's (`*.fp16.safetensors`): a cache that
    holds only those (diffusers' `variant="fp16"` fetched them, or `hf download --include '*.fp16.*'`) was said
    not to be in the cache at all. The error, when both fail, is the plain weights' (not cached, no network).
    A `revision` or `variant` given is loaded as it is, with no fallback: what was asked for, or an error."""
    if revision or variant:
        return cls.from_pretrained(repo, **options, **{k: v for k, v in (("revision", revision),
                                                                          ("variant", variant)) if v})
    try:
        return cls.from_pretrained(repo, **options)
    except (OSError, ValueError) as plain:
        try:
            return cls.from_pretrained(repo, **options, variant="fp16")
        except Exception:
            raise plain from None


def _single_file_config_repo(keys) -> str:
    """The hub model diffusers takes a single file's configs from, by the file's kind (SD 1.5's, SDXL base's...)."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        return fetch_diffusers_config(keys)["pretrained_model_name_or_path"]
    except Exception:  # it only reads keys, but a future diffusers may refuse a kind: the message still stands
        return "of its kind"


def offline_note() -> str:
    """' (HF_HUB_OFFLINE is set)' when it is, for an error that says the hub could not be reached; else ''."""
    return " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""


def _warn_slow(dtype: torch.dtype, device) -> None:
    """Say that fp16 on the CPU (the diffusers script's `--mixed_precision fp16`, typed out of habit) is slow:
    PyTorch runs it, without the CPU kernels fp32 and bf16 have (10 steps of the shapes model on one thread: 8 s,
    2 s in fp32 or bf16; README: about 6 times slower)."""
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        warn("fp16 on the CPU runs, but slowly: PyTorch has few half-precision CPU kernels (its steps take several "
             "times as long as fp32's); give --precision fp32 (auto's choice on the CPU, exact) or bf16",
             stacklevel=3)


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' log at error level only, for the block: its download and connection notes, which the error we
    raise on failure says once, in our words."""
    from diffusers.utils import logging as diffusers_logging

    with _log_level_error(diffusers_logging):
        yield


@contextlib.contextmanager
def _one_progress_bar():
    """Only diffusers' progress bar over a pipeline's components, for the block: transformers 5 draws its own
    "Loading weights" bar for each text encoder inside it, and the nested bars fill the terminal with half lines."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_transformers():
    """transformers' log at error level only, for the block (its notes on falling back to the Pillow image
    processor, or on weights it reports missing when a second adapter loads)."""
    from transformers.utils import logging as transformers_logging

    with _log_level_error(transformers_logging):
        yield


@contextlib.contextmanager
def _log_level_error(library_logging):
    """A Hugging Face library's `utils.logging` at error level for the block, then back to what it was."""
    level = library_logging.get_verbosity()
    library_logging.set_verbosity_error()
    try:
        yield
    finally:
        library_logging.set_verbosity(level)


def _first_line(error: BaseException) -> str:
    """An exception's message as one line: diffusers' own messages run to several, with code to paste."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(".")


def _check_single_file_config(value: str | os.PathLike, family: str) -> str:
    """`single_file_config` as diffusers takes it: an existing local folder, or a hub id. A value that looks like a
    local path but names nothing is refused here rather than sent to the hub, and so is a folder that is not a
    diffusers model or is of another family than the checkpoint (`family`)."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"--single-file-config {text!r} is not a diffusers model folder (no model_index.json); "
                             f"give the folder of a {FAMILY_NAMES[family]} model in diffusers layout")
        theirs = _folder_family(path)
        if theirs is not None and theirs != family:
            raise ModelError(f"--single-file-config {text!r} is a {FAMILY_NAMES[theirs]} model but the checkpoint is "
                             f"{FAMILY_NAMES[family]}; give a diffusers folder of the checkpoint's family")
        return str(path)
    if path.exists() or _is_local_path(text) or not _is_hub_id(text):
        raise ModelError(f"--single-file-config {text!r} is not a folder (it does not exist or is a file); give a "
                         f"local diffusers folder of the model's family (with model_index.json) or a hub id "
                         f"'owner/name'")
    return text


def _folder_family(folder: Path) -> str | None:
    """A diffusers folder's family from its model_index.json and text encoder config, without loading weights;
    None if that does not tell."""
    if _index_family(folder) == "sdxl":
        return "sdxl"
    try:
        width = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return family_for_widths((width,)) if isinstance(width, int) else None


def _check_text_to_image(pipe, location: str, inpainting: bool = False, refiner: bool = False) -> None:
    """Refuse pipelines that load as SD/SDXL but are not the text-to-image model: an SDXL refiner (no first text
    encoder; unless `refiner`), an inpainting (unless `inpainting`) or other image-conditioned UNet (more input
    channels than the VAE's latents)."""
    if pipe.text_encoder is None or pipe.tokenizer is None:
        if getattr(pipe, "text_encoder_2", None) is not None:
            if refiner:
                return

            raise ModelError(_not_text_to_image(location, "an SDXL refiner (it has only text_encoder_2)"))
        raise ModelError(f"{location} has no text encoder or tokenizer; textinv needs a complete text-to-image model")
    channels, latents = pipe.unet.config.in_channels, pipe.vae.config.latent_channels
    if channels == 2 * latents + 1:  # noisy latents + masked-image latents + mask
        if inpainting:
            return
        raise ModelError(_not_text_to_image(location, _INPAINTING))
    if channels != latents:
        raise ModelError(_not_text_to_image(
            location, f"an image-conditioned model (its UNet takes {channels} input channels, the VAE makes {latents}; "
                      f"e.g. depth-to-image, InstructPix2Pix or an upscaler)"))


def _decode_any_dtype(vae) -> None:
    """Let an fp32 VAE decode fp16 latents, by casting what enters its decoder to the VAE's dtype.

    The SDXL pipeline casts latents to the VAE's dtype only when it upcasts an fp16 VAE itself (`force_upcast`);
    with the VAE already in fp32 its fp16 latents would meet fp32 weights ("Input type (c10::Half) and bias type
    (float) should be the same").
    """
    first = vae.post_quant_conv if vae.post_quant_conv is not None else vae.decoder

    def cast(module, args):
        return (args[0].to(vae.dtype), *args[1:])

    first.register_forward_pre_hook(cast)


TRAINING_RECORD = "training.json"  # what `textinv.shapes.pretrain --export` writes beside the model's configs


def _training_record(folder: Path) -> dict:
    """A model folder's `training.json` (what `textinv.shapes.pretrain --export` writes; a hub model's is read from
    its snapshot folder in the Hugging Face cache), or `{}` where there is none or it cannot be read as a JSON
    object."""
    try:
        record = json.loads((folder / TRAINING_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_guidance(folder: Path) -> float:
    """The classifier-free guidance scale a model folder says it samples best at, else SD's 7.5. A model written by
    `textinv.shapes.pretrain` records it in its `training.json` (`config.sample_guidance`): the small shapes model
    draws its captions best at 3 (at 7.5 it gets fewer shapes, colours and styles right)."""
    config = _training_record(folder).get("config")
    value = config.get("sample_guidance") if isinstance(config, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_GUIDANCE


def recorded_prompting(folder: Path) -> dict[str, dict]:
    """A model folder's own words for training it, per `--property`: `{"object": {"init": WORD, "templates": [...]},
    "style": {...}}`, from its `training.json` (`prompting`), else `{}`. SD's defaults (the paper's templates, the
    property's word as the init) assume SD's vocabulary; the small shapes model knows only its world's 65 words (760
    tokens with their pieces), in which "object" is six single letters and "a painting in the style of" half
    fragments, so it says its own."""
    recorded = _training_record(folder).get("prompting")
    prompting = {}
    for prop, entry in recorded.items() if isinstance(recorded, dict) else ():
        if not isinstance(entry, dict):
            continue
        init, templates = entry.get("init"), entry.get("templates")
        templates = templates if isinstance(templates, list) else []
        prompting[prop] = {"init": init if isinstance(init, str) and init.strip() else None,
                           "templates": [t for t in templates if isinstance(t, str) and "{}" in t]}
    return prompting


def _check_vae_source(source) -> None:
    """Refuse a `--vae` that names nothing: a local-looking path that does not exist, or a value that is neither a
    path nor a hub id."""
    text = str(source)
    if Path(text).expanduser().exists():
        return
    if _is_local_path(text) or not _is_hub_id(text):
        raise ModelError(f"--vae {text!r} not found: the path {Path(text).expanduser()} does not exist. Give a VAE "
                         f"folder (with config.json), a .safetensors file, or a hub id 'owner/name'")


def _load_vae(source, dtype: torch.dtype, own: Mapping):
    """A replacement VAE (e.g. SDXL's fp16-fixed one) from a folder, a single file or a hub id.

    A single file holds weights only, in the original layout (`encoder.*`, as vae-ft-mse-840000-ema-pruned and
    sdxl_vae are saved, or `first_stage_model.*`) or diffusers'; its architecture and scaling factor are taken from
    `own`, the model's own VAE config (diffusers would otherwise fetch SD 1.5's config from the hub for any VAE
    file: offline that fails, and for SDXL it gives the wrong scaling factor, 0.18215 instead of 0.13025)."""
    import tempfile

    from diffusers import AutoencoderKL

    path = Path(source).expanduser()
    weights = str(path)
    if path.is_file() and path.suffix.lower() != ".safetensors":
        weights = _pickled_vae(path)
    try:
        if path.is_file():
            with tempfile.TemporaryDirectory(prefix="textinv-vae-config-") as config:
                (Path(config) / "config.json").write_text(json.dumps(dict(own)), encoding="utf-8")
                return AutoencoderKL.from_single_file(weights, config=config, torch_dtype=dtype)
        folder = path / "vae" if (path / "vae" / "config.json").exists() else path
        if path.exists():
            loaded = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype)
        else:  # a hub id
            with _quiet_diffusers(), warnings.catch_warnings():  # (and huggingface_hub's deprecation notes)
                warnings.simplefilter("ignore")
                loaded = AutoencoderKL.from_pretrained(str(source), torch_dtype=dtype)
    except Exception as e:
        if not path.exists() and isinstance(e, (OSError, ConnectionError)):
            offline = offline_note()
            raise ModelError(f"--vae {str(source)!r} is not in the local Hugging Face cache or the hub could not be "
                             f"reached{offline}: download it where there is a network and pass its folder or "
                             f".safetensors file") from e
        raise ModelError(f"cannot load the VAE {str(source)!r}: {type(e).__name__}: {_first_line(e)}. Give a diffusers "
                         f"VAE folder (with config.json), a single .safetensors or .ckpt file, or a hub id") from e
    if loaded.config.latent_channels != own["latent_channels"]:
        raise ModelError(f"the VAE {str(source)!r} makes {loaded.config.latent_channels}-channel latents but the "
                         f"model's UNet works on {own['latent_channels']}; give a VAE of the model's family (an SD "
                         f"1.x/2.x/XL VAE has 4)")
    return loaded


def _pickled_vae(path: Path) -> dict:
    """The weights of a VAE kept as a pickle (vae-ft-mse-840000-ema-pruned.ckpt, under `state_dict`; the web UI's
    `.vae.pt` files), read by torch's weights-only loader, which runs none of the file's code. diffusers would read
    it so too, but its error for a refused file says neither what was refused nor why; and Lightning's callback
    state, which .ckpt files may hold, is allowed here as in a model checkpoint."""
    try:
        with _lightning_callbacks_readable():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise _unreadable(path, e, kind="VAE file", folder="a VAE's") from e
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # (as diffusers unwraps it)
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"cannot load the VAE {str(path)!r}: it holds a {type(state).__name__}, not a VAE's weights")
    return state


def _check_tokenizer(tokenizer, text_encoder, location: str) -> None:
    """A tokenizer folder without its files silently loads as a 2-token tokenizer: catch that here."""
    rows = text_encoder.get_input_embeddings().num_embeddings
    size = len(tokenizer)
    if size != rows:
        raise ModelError(
            f"the tokenizer of {location} has {size} entries but its text encoder has {rows} token rows; the "
            f"tokenizer folder is incomplete or belongs to another model (it needs vocab.json + merges.txt or "
            f"tokenizer.json)"
        )
