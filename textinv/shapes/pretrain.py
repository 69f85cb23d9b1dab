"""Pretraining the embedded `shapes` model from scratch: a small latent diffusion pipeline for the shapes world.

The result is an ordinary diffusers `StableDiffusionPipeline` folder (CLIP tokenizer with the world's words, CLIP
text encoder, UNet2DConditionModel, AutoencoderKL, a multistep scheduler), so textinv loads, trains and samples it
exactly as it does Stable Diffusion. Training follows latent diffusion (Rombach et al., CVPR 2022) in two stages:

1. `vae`:  an autoencoder, 64x64x3 pixels <-> 16x16x4 latents, on MSE + L1 reconstruction and a tiny KL term.
   The objects' pixels weigh `object_weight` times more than the background's (an object is a few percent of a
   picture; a plain MSE spends the autoencoder on backgrounds and returns objects in the wrong colour), and the
   decoder reads the posterior mean: a sampled latent with the early, wide posterior hides the colour, and the
   exported VAE is deterministic anyway (`make_deterministic`), as SD's nearly is. A `--decoder-only` chunk
   trains the decoder alone (SD's own VAE updates, "ft-MSE", were decoder fine-tunes): the latents stay exactly
   what the UNet learned on, so it sharpens the pictures of a trained UNet without a refit, and it can run beside a
   UNet chunk in the same work folder (one core each);
2. `unet`: the UNet and the text encoder together on the frozen VAE's latents, with 10% empty captions so
   classifier-free guidance works (Ho & Salimans, 2022) and an EMA of the weights that is what gets exported.
   The noise schedule is SD's scaled-linear one rescaled to zero terminal SNR, with v-prediction and "trailing"
   sampling steps (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024). With
   SD's own schedule the last timestep keeps 7% of the signal, so the model learned to read the background colour
   from the mean of its noisy input instead of from the caption: sampling from pure noise then drew a background
   by chance (measured: right in 22% of pictures; 91% when the starting noise got the right mean). Loss weights
   cap the low-noise end (Min-SNR, Hang et al., ICCV 2023, in the "SNR + 1" form that keeps full weight where the
   picture must come from the text alone).

Every batch is freshly sampled and rendered with tensor ops (`world.sample_batch` + `world.render`), so no picture
is ever seen twice. A run is split in chunks bounded by `--minutes`; each stage checkpoints into `--work` every few
minutes (weights, optimizer moments, step, RNG states) and a re-run carries on from there.

    python -m textinv.shapes.pretrain --stage vae  --work runs/shapes-pretrain --minutes 15
    python -m textinv.shapes.pretrain --stage unet --work runs/shapes-pretrain --minutes 60
    python -m textinv.shapes.pretrain --stage vae  --work runs/shapes-pretrain --minutes 30 --decoder-only
    python -m textinv.shapes.pretrain --export --work runs/shapes-pretrain --out textinv/shapes/model
    python -m textinv.shapes.pretrain --quick --work /tmp/q      # all of it on tiny sizes, in seconds
    python -m textinv.shapes.pretrain --from-model textinv/shapes/model --work runs/more   # go on from an export
    python -m textinv.shapes.pretrain --from-model textinv/shapes/model --keep vae --work runs/wide   # its VAE, and
    python -m textinv.shapes.pretrain --stage unet --work runs/wide --set unet_layers=2 ...        # a new UNet
    python -m textinv.shapes.pretrain --from-model textinv/shapes/model --work runs/angle --set angle_caption_share=0.5
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textinv.errors import ConfigError
from textinv.graphs import CapturedStep
from textinv.io import sync_folder, write_text
from textinv.shapes import world
from textinv.shapes.evaluate import PROMPTING

STAGES = ("vae", "unet")
# The sizes each stage's checkpoints are tied to: once a stage has a checkpoint they come from the work folder's
# config.json, and a different value from the CLI is refused (`_config_for`).
ARCHITECTURE = {
    "vae": ("vae_channels", "vae_groups"),
    "unet": ("unet_channels", "unet_attention", "unet_groups", "unet_heads", "unet_layers", "text_width",
             "text_layers", "text_heads"),
}


@dataclass
class PretrainConfig:
    """Sizes and training settings of the shapes model. Written to `<work>/config.json` on the first run."""

    # Architecture. The VAE's 3 blocks downscale twice: 64x64 pixels -> 16x16 latents.
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_groups: int = 8
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_attention: tuple[bool, ...] = (False, True, True)  # cross-attention per level (16x16, 8x8, 4x4)
    unet_groups: int = 16
    unet_heads: tuple[int, ...] = (8,)  # attention heads per level, or one count for every level
    unet_layers: int = 1  # ResNet blocks per level on the way down (one more on the way up); SD has 2
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    # Stage 1: autoencoder.
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    object_weight: float = 8.0  # extra reconstruction weight on object pixels (0: plain MSE + L1)
    vae_posterior: str = "mode"  # what the decoder reads in training: "mode" (the mean) or "sample"
    vae_part: str = "all"  # what a VAE chunk trains: "all", or "decoder" (the latents stay as they are)
    # Stage 2: UNet + text encoder.
    unet_batch: int = 32
    unet_lr: float = 1.5e-3
    empty_caption_prob: float = 0.1
    min_snr_gamma: float = 5.0  # 0 turns Min-SNR weighting off
    # extra denoising-loss weight on the latent pixels the objects cover (0: the plain mean over all of them), as
    # `object_weight` does for the VAE: the fill is a small part of a picture and of its loss
    unet_object_weight: float = 0.0
    prediction_type: str = "v_prediction"  # or "epsilon" (the first exports' choice; needs zero_terminal_snr off)
    zero_terminal_snr: bool = True  # rescale the betas so the last timestep is pure noise; sample "trailing"
    ema_decay: float = 0.998
    # The share of a patterned object's captions that name its fill's orientation ("with vertical stripes",
    # world.ORIENTATIONS). The fills come out as incoherent mazes; one reading (README, "The bundled model and its
    # benchmark") is that a caption that never names the angle asks for every angle at once, and the UNet must
    # commit to one early in sampling: training with the angle named tests it. At 0 the captions and every random
    # draw are the ones before the setting existed.
    angle_caption_share: float = 0.0
    # Whether the tokenizer and text encoder hold the orientation words (appended after the world's, whose ids stay):
    # set by a share above 0, and kept by a work folder once set, so that a later chunk at share 0 still loads its
    # text encoder. Without them (the default) the tokenizer is the committed model's, so a run at share 0 starts
    # from the same initial weights as before.
    angle_words: bool = False
    # The guidance scale the model samples best at, recorded in the export's training.json for textinv's tools to
    # default to (`models.recorded_guidance`). 2026-12-02 caption check (256 captions, all four core attributes
    # right): 0.41 at 2, 0.44 at 3, 0.43 at 4, 0.38 at 7.5.
    sample_guidance: float = 3.0
    # Both stages.
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_minutes: float = 3.0
    seed: int = 0

    def __post_init__(self):
        self.vae_channels = tuple(int(c) for c in self.vae_channels)
        self.unet_channels = tuple(int(c) for c in self.unet_channels)
        self.unet_attention = tuple(bool(a) for a in self.unet_attention)
        heads = self.unet_heads if isinstance(self.unet_heads, (list, tuple)) else (self.unet_heads,)
        self.unet_heads = tuple(int(h) for h in heads)  # first configs stored one int
        if len(self.vae_channels) != 3:
            raise ConfigError(f"vae_channels needs 3 levels (a 4x downscale), got {self.vae_channels}")
        if len(self.unet_attention) != len(self.unet_channels):
            raise ConfigError(f"unet_attention has {len(self.unet_attention)} entries for "
                              f"{len(self.unet_channels)} UNet levels {self.unet_channels}; give one per level")
        for name in ("vae_channels", "unet_channels"):
            groups = self.vae_groups if name == "vae_channels" else self.unet_groups
            if any(c % groups for c in getattr(self, name)):
                raise ConfigError(f"every entry of {name} {getattr(self, name)} must be a multiple of its group "
                                  f"norm's {groups} groups")
        if self.text_width % self.text_heads:
            raise ConfigError(f"text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")
        if len(self.unet_heads) not in (1, len(self.unet_channels)):
            raise ConfigError(f"unet_heads has {len(self.unet_heads)} entries for {len(self.unet_channels)} UNet "
                              f"levels {self.unet_channels}; give one count for all or one per level")
        if min(self.unet_heads) < 1:
            raise ConfigError(f"unet_heads must be at least 1 at every level, got {self.unet_heads}")
        split = [c for c, a, h in zip(self.unet_channels, self.unet_attention, self.heads_per_level) if a and c % h]
        if split:
            raise ConfigError(f"unet_channels {split} at attention levels must be multiples of their unet_heads "
                              f"{self.unet_heads}")
        for name in ("vae_batch", "unet_batch", "warmup", "text_layers", "unet_layers", "text_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vae_lr", "unet_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vae_posterior not in ("mode", "sample"):
            raise ConfigError(f"vae_posterior must be 'mode' or 'sample', got {self.vae_posterior!r}")
        if self.vae_part not in ("all", "decoder"):
            raise ConfigError(f"vae_part must be 'all' or 'decoder', got {self.vae_part!r}")
        for name in ("object_weight", "unet_object_weight"):  # (nan and inf passed `< 0`: every loss was nan)
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ConfigError("zero_terminal_snr needs prediction_type 'v_prediction': at the last timestep the "
                              "input is pure noise, so predicting the noise says nothing about the picture")
        if not 0.0 <= self.empty_caption_prob < 1.0:
            raise ConfigError(f"empty_caption_prob must be in [0, 1), got {self.empty_caption_prob}")
        if not self.sample_guidance > 0:
            raise ConfigError(f"sample_guidance must be positive, got {self.sample_guidance}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.angle_caption_share <= 1.0:
            raise ConfigError(f"angle_caption_share must be a share in [0, 1], got {self.angle_caption_share}")
        self.angle_words = bool(self.angle_words) or self.angle_caption_share > 0

    @property
    def heads_per_level(self) -> tuple[int, ...]:
        return self.unet_heads * len(self.unet_channels) if len(self.unet_heads) == 1 else self.unet_heads


QUICK = dict(vae_channels=(8, 8, 16), vae_groups=4, unet_channels=(16, 32), unet_attention=(False, True),
             unet_groups=8, unet_heads=2, text_width=32, text_layers=1, text_heads=2, vae_batch=4, unet_batch=4,
             warmup=2, checkpoint_minutes=0.0)
"""Tiny sizes for `--quick`, the end-to-end test of this file."""


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's parts, built in code
# ---------------------------------------------------------------------------------------------------------------

def build_tokenizer_for_world(angle_words: bool = False):
    """A CLIPTokenizer in which every word a caption can use is one token (`world.VOCABULARY`). `angle_words`: the
    orientation words (`world.ORIENTATION_WORDS`) too, numbered after all the others, so every id of the tokenizer
    without them (the committed model's) stays the same.

    >>> tok = build_tokenizer_for_world()
    >>> len(tok.tokenize("crescent"))
    1
    >>> build_tokenizer_for_world(angle_words=True).get_vocab()["crescent</w>"] == tok.get_vocab()["crescent</w>"]
    True
    """
    from textinv.vocab import build_tokenizer

    appended = list(world.ORIENTATION_WORDS) if angle_words else []
    words = list(world.VOCABULARY)
    tokenizer = build_tokenizer(words, appended=appended)
    split = [w for w in words + appended if len(tokenizer.tokenize(w)) != 1]
    if split:  # a bug in vocab.py, not a user error: say which words
        raise RuntimeError(f"world words still split into several tokens: {split}")
    return tokenizer


def build_text_encoder(config: PretrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(config: PretrainConfig):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention))
    return UNet2DConditionModel(
        sample_size=world.RESOLUTION // 4, in_channels=4, out_channels=4, block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers, down_block_types=down, up_block_types=up,
        cross_attention_dim=config.text_width, norm_num_groups=config.unet_groups,
        # diffusers' attention_head_dim is the number of heads (its old misnomer); one int as the first exports had
        attention_head_dim=config.unet_heads[0] if len(config.unet_heads) == 1 else config.unet_heads,
    )


def build_vae(config: PretrainConfig, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, layers_per_block=1, norm_num_groups=config.vae_groups, sample_size=world.RESOLUTION,
        scaling_factor=scaling_factor,
    )


def build_scheduler(config: PretrainConfig | None = None):
    """SD's noise schedule (scaled linear betas, 1000 steps) with DPM-Solver++(2M) for sampling; rescaled to zero
    terminal SNR with trailing steps and the config's prediction type (see the module docstring)."""
    from diffusers import DPMSolverMultistepScheduler

    config = config or PretrainConfig()
    zero = config.zero_terminal_snr
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=config.prediction_type, algorithm_type="dpmsolver++", solver_order=2,
        steps_offset=1, timestep_spacing="trailing" if zero else "leading",
        rescale_betas_zero_snr=zero,
    )
    # SD's own scheduler configs say this too: a DDIM/DDPM made `from_config` of ours must not clip x0 to [-1, 1]
    # (its default), since unit-variance latents are not bounded there.
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False)
    return scheduler


def make_deterministic(vae) -> None:
    """Collapse the VAE's posterior onto its mean: the log-variance outputs of `quant_conv` become a constant -30
    (std 3e-7, the floor diffusers clamps to), so `latent_dist.sample()` is the mean. Our decoder is trained on the
    mean; SD's own posterior is nearly this narrow too. Applied for the UNet stage and on export."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:].zero_()
        vae.quant_conv.bias[c:].fill_(-30.0)


def object_weights(batch: world.SceneBatch, images: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W), mean 1: 1 + `weight` where a pixel differs from the background colour
    (objects, their outlines and shadows, one pixel grown), 1 elsewhere. `images` in [0, 1]."""
    background = batch.background_rgb.view(-1, 3, 1, 1)
    mask = ((images - background).abs().amax(dim=1, keepdim=True) > 0.1).float()  # paper grain stays under 0.06
    w = 1.0 + weight * F.max_pool2d(mask, 3, stride=1, padding=1)
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: a folder per stage, replaced atomically
# ---------------------------------------------------------------------------------------------------------------

def _write_json(path: Path, data) -> None:
    # (a temporary file of its own: a VAE and a UNet chunk started at once both write config.json, and with one
    # shared name one renamed the other's half-written file, and the other stopped on its own rename)
    write_text(path, json.dumps(data, indent=2) + "\n")


def _replace_folder(tmp: Path, final: Path) -> None:
    """Swap a fully written `tmp` folder in for `final` (the old one survives until the new one is in place)."""
    old = _recover_folder(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    sync_folder(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _recover_folder(final: Path) -> Path:
    """Put back `final` from its `.old` copy if a process died between the two renames of `_replace_folder`
    (`final` gone, `.old` the last good one); returns the `.old` path. In a work folder, call it under the folder's
    lock: a live chunk's checkpoint looks the same between its renames."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    return old


def _recover_checkpoints(work: Path, stages) -> None:
    """`_recover_folder` for each stage's checkpoint in `work`, under the lock `save_checkpoint` swaps under, so it
    waits for a chunk running beside it to finish its swap instead of undoing it. The lock is taken only when a
    checkpoint looks half swapped."""
    if all((work / stage).exists() or not (work / f"{stage}.old").exists() for stage in stages):
        return
    with _locked(work / "log.json"):
        for stage in stages:
            _recover_folder(work / stage)


def _moments(optimizer, params) -> dict[str, torch.Tensor]:
    """AdamW's moments in bfloat16 (a quarter of fp32 Adam state): enough to resume a run without a jolt."""
    out = {}
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if "exp_avg" in state:
            out[f"m.{i}"] = state["exp_avg"].to("cpu", torch.bfloat16)
            out[f"v.{i}"] = state["exp_avg_sq"].to("cpu", torch.bfloat16)
            out[f"step.{i}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    return out


def _load_moments(optimizer, params, tensors: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(params):
        if f"m.{i}" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"step.{i}"].reshape(()).clone(),
                "exp_avg": tensors[f"m.{i}"].to(p.device, torch.float32),
                "exp_avg_sq": tensors[f"v.{i}"].to(p.device, torch.float32),
            }


def save_checkpoint(folder: Path, modules: dict, optimizer, params, state: dict, ema: dict | None = None) -> None:
    """Weights (fp32, one file per module), EMA weights (fp16), optimizer moments (bf16) and `state.json`."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  str(tmp / f"{name}.safetensors"))
    if ema:
        save_file({k: v.to("cpu", torch.float16).contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    save_file(_moments(optimizer, params), str(tmp / "optimizer.safetensors"))
    _write_json(tmp / "state.json", state)
    with _locked(folder.parent / "log.json"):  # a chunk starting beside this one must not see it half swapped
        _replace_folder(tmp, folder)


def load_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / f"{name}.safetensors"))


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def _lr(step: int, base: float, warmup: int) -> float:
    # Linear warm-up, then constant: a chunked run never knows its last step, and the EMA does the averaging.
    return base * min(1.0, (step + 1) / warmup)


def _generator_state(g: torch.Generator) -> list[int]:
    return g.get_state().tolist()


def _set_generator_state(g: torch.Generator, state: list[int]) -> None:
    g.set_state(torch.tensor(state, dtype=torch.uint8))


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on `path` + ".lock" (POSIX; elsewhere no lock): a VAE and a UNet chunk may run at once
    in one work folder, and each rewrites `log.json` and swaps its checkpoint in under `log.json`'s lock. The
    operating system drops the lock with the process that held it, so a killed chunk blocks no later one. A lock
    file that cannot be written (a read-only disk, another's folder: an export's) is locked as it is, read-only;
    where there is none, nothing that writes there has run."""
    try:
        import fcntl
    except ImportError:  # Windows: two chunks at once in one folder are not supported there
        yield
        return
    lock = path.with_name(path.name + ".lock")
    try:
        handle = open(lock, "a")  # (not "w": an export on a read-only disk changes nothing, not even a date)
    except OSError:
        if not lock.exists():
            yield
            return
        handle = open(lock)
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_chunk(work: Path, stage: str, chunk: dict, update: bool = False) -> None:
    """Add `chunk` to the stage's history in `log.json`, or with `update`, replace its last entry (the running
    chunk's record, written again at each checkpoint)."""
    path = work / "log.json"
    with _locked(path):
        log = json.loads(path.read_text()) if path.exists() else {}
        entry = log.setdefault(stage, {"steps": 0, "wall_seconds": 0.0, "chunks": []})
        if update:
            entry["chunks"][-1] = chunk
        else:
            entry["chunks"].append(chunk)
        entry["steps"] = chunk["step_end"]
        entry["wall_seconds"] = round(sum(c["seconds"] for c in entry["chunks"]), 1)
        _write_json(path, log)


def _images(n: int, g: torch.Generator, device) -> tuple[world.SceneBatch, torch.Tensor]:
    batch = world.sample_batch(n, g, device)
    return batch, world.render(batch, device) * 2 - 1  # (B, 3, 64, 64) in [-1, 1], what the VAE takes


def _optimizer_step(opt, params, loss: torch.Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


class _Ahead:
    """`next()` gives `finish(draw())` for the next step. Enabled, steps are made ahead, so a step's inputs are ready
    when the step before it has been handed to the GPU: one thread calls `draw` for step after step (it alone draws
    the random numbers, one call after another, so they are what calling it in turn gives) and `workers` threads run
    `finish` (rendering: torch ops, which free the GIL) on up to that many steps at once. Each `finish` gets one
    whole step's draws, so it computes exactly what it computes in turn: its tensors have the same sizes and so the
    same splits into vector lanes and intra-op chunks. (Rendering slices of one batch in several threads is not
    exact: some ops, atan2 among them, round the last elements of a split differently; with 8 intra-op threads, 3
    of 24 batches rendered in 2, 4 or 8 slices differed from the whole batch's render.)"""

    def __init__(self, draw, finish, enabled: bool, workers: int = 1):
        self.draw, self.finish, self.enabled, self.workers = draw, finish, enabled, workers
        self.drawer = self.pool = None
        self.queue = collections.deque()  # futures (of the drawer) of futures (of a worker), in step order

    def __enter__(self) -> _Ahead:
        if self.enabled:
            self.drawer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="textinv-draws")
            self.pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="textinv-inputs")
        return self

    def _draw_and_hand_on(self):  # on the drawer thread: the draws in turn, the rest to a worker
        return self.pool.submit(self.finish, self.draw())

    def next(self):
        if not self.enabled:
            return self.finish(self.draw())
        while len(self.queue) <= self.workers:  # the step returned now, and one in the making per worker
            self.queue.append(self.drawer.submit(self._draw_and_hand_on))
        return self.queue.popleft().result().result()

    def settle(self) -> None:
        """Wait until the steps asked for so far are made: then no thread works until the next `next()`. (Before a
        CUDA graph's capture: a render pins its pictures, CUDA calls that a capture forbids on every thread.)"""
        for made in self.queue:
            made.result().result()

    def __exit__(self, *exc) -> None:
        for pool in (self.drawer, self.pool):  # the drawer first: what it hands on must find the workers there
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class _Chunk:
    """What both stages' loops share: a running loss kept on the device (one host sync per log line), log lines,
    a checkpoint every `checkpoint_minutes`, and the chunk's entry in `log.json` with each checkpoint (so a chunk
    that is killed keeps its record up to its last checkpoint). `record`: the settings the entry notes."""

    def __init__(self, stage: str, work: Path, config: PretrainConfig, step: int, save, log_every: int, log,
                 **record):
        self.stage, self.work, self.config, self.save = stage, work, config, save
        self.log_every, self.log, self.record = log_every, log, record
        self.step = self.step0 = step
        self.start = self.last_save = time.perf_counter()
        self.total, self.count = 0.0, 0
        self.logged = False

    def running(self, minutes: float, max_steps: int | None) -> bool:
        return time.perf_counter() - self.start < minutes * 60 and (max_steps is None or self.step < max_steps)

    def tick(self, shown: torch.Tensor, name: str) -> None:
        """After an optimizer step (and anything that belongs to it, e.g. the EMA): count, log, checkpoint."""
        self.step += 1
        self.total, self.count = self.total + shown.detach(), self.count + 1
        if self.log and self.step % self.log_every == 0:
            rate = (self.step - self.step0) / (time.perf_counter() - self.start)
            self.log(f"{self.stage} step {self.step:6d}  {name} {float(self.total) / self.count:.5f}  {rate:.3f} it/s")
            self.total, self.count = 0.0, 0
        minutes = self.config.checkpoint_minutes
        if minutes and time.perf_counter() - self.last_save > minutes * 60:
            self.checkpoint()
            self.last_save = time.perf_counter()

    def checkpoint(self) -> None:
        self.save()
        _log_chunk(self.work, self.stage, {"step_start": self.step0, "step_end": self.step,
                                           "seconds": round(time.perf_counter() - self.start, 1),
                                           **self.record, "ended": _now()}, update=self.logged)
        self.logged = True

    def finish(self) -> int:
        self.checkpoint()
        if self.log:  # a chunk shorter than one log interval would otherwise end without a word
            n = self.step - self.step0
            self.log(f"{self.stage}: {n} step{'' if n == 1 else 's'} in {time.perf_counter() - self.start:.0f} s, "
                     f"now at step {self.step}; checkpoint in {self.work / self.stage}")
        return self.step


def train_vae(config: PretrainConfig, work: Path, minutes: float, device="cpu", max_steps: int | None = None,
              log=print) -> int:
    """Train (or continue) the autoencoder for `minutes` of wall time or up to `max_steps`; returns the step."""
    folder = work / "vae"
    _recover_checkpoints(work, ("vae",))
    torch.manual_seed(config.seed)  # the initial weights of a fresh run come from the seed too
    vae = build_vae(config).to(device).train()
    params = [p for p in vae.parameters()]  # all of them, frozen or not, so the saved moments line up
    if config.vae_part == "decoder":  # no gradient, so AdamW leaves them exactly as they are (no decay either)
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=config.vae_lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    step = encoder_step = 0  # encoder_step: the last step that changed the encoder, i.e. the latents
    if (folder / "state.json").exists():
        state = json.loads((folder / "state.json").read_text())
        vae.load_state_dict(load_weights(folder, "vae"))
        from safetensors.torch import load_file
        _load_moments(opt, params, load_file(str(folder / "optimizer.safetensors")))
        _set_generator_state(g, state["generator"])
        step = state["step"]
        encoder_step = state.get("encoder_step", step)
        log(f"vae: resuming at step {step}" + (" (decoder only)" if config.vae_part == "decoder" else ""))

    def save():
        latents_from = encoder_step if config.vae_part == "decoder" else chunk.step
        save_checkpoint(folder, {"vae": vae}, opt, params, {"step": chunk.step, "generator": _generator_state(g),
                                                            "encoder_step": latents_from})

    chunk = _Chunk("vae", work, config, step, save, 50, log, device=str(device), batch=config.vae_batch,
                   lr=config.vae_lr, object_weight=config.object_weight, posterior=config.vae_posterior,
                   trained=config.vae_part)
    frozen_encoder = torch.no_grad() if config.vae_part == "decoder" else contextlib.nullcontext()
    while chunk.running(minutes, max_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(chunk.step, config.vae_lr, config.warmup)
        batch, x = _images(config.vae_batch, g, device)
        torch.manual_seed(config.seed + chunk.step)  # the posterior's sampling noise: by step, so chunks = one run
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            with frozen_encoder:
                posterior = vae.encode(x).latent_dist
            z = posterior.mode() if config.vae_posterior == "mode" else posterior.sample()
            recon = vae.decode(z).sample
        err = recon.float() - x
        w = object_weights(batch, (x + 1) / 2, config.object_weight)  # (B, 1, H, W)
        rec_loss = (w * err.pow(2)).mean() + 0.1 * (w * err.abs()).mean()
        _optimizer_step(opt, params, rec_loss + config.kl_weight * posterior.kl().mean(), config.grad_clip)
        chunk.tick(rec_loss, "rec")
    return chunk.finish()


@torch.no_grad()
def latent_scale(vae, device, n: int = 512, seed: int = 1234) -> float:
    """1 / std of the VAE's latents over fresh renders: makes latents unit-variance, as SD's 0.18215 does. Its own
    generators draw the renders and the posterior's noise: measuring leaves torch's global one as it was."""
    g, noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    zs = [vae.encode(_images(64, g, device)[1]).latent_dist.sample(generator=noise) for _ in range(max(1, n // 64))]
    return float(1.0 / torch.cat(zs).float().std())


def _tokenize(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


class _CaptionIds:
    """`_tokenize`'s ids for captions, without the tokenizer's cost per call (38 ms a batch of 256 on one CPU
    thread, where a GPU step takes a few): CLIP's tokenizer never merges across whitespace, so a caption's ids are
    its words' ids in turn, each word tokenized once and kept (the world's captions use under a hundred, commas
    attached included)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.words = tokenizer, {}
        self.length = tokenizer.model_max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        rows = []
        for text in texts:
            pieces = [tok.bos_token_id]
            for word in text.split():
                if word not in self.words:
                    self.words[word] = tok(word, add_special_tokens=False).input_ids
                pieces += self.words[word]
            if len(pieces) + 1 > self.length:  # too long to keep whole: the tokenizer's own truncation
                rows.append(_tokenize(tok, [text], "cpu")[0].tolist())
                continue
            rows.append(pieces + [tok.eos_token_id] + [tok.pad_token_id] * (self.length - len(pieces) - 1))
        return torch.tensor(rows, dtype=torch.long).view(len(texts), self.length)


def _unet_draws(config: PretrainConfig, g: torch.Generator, rng: np.random.Generator, ids_of: _CaptionIds,
                latent_shape: tuple[int, ...], timesteps: int) -> tuple[world.SceneBatch, dict, tuple]:
    """One UNet step's random draws, made on the CPU: scenes, caption ids (10% empty), noise and timesteps, drawn
    from `g` and `rng` in the order the loop has always drawn them, and the two generators' states after (what a
    checkpoint at this step keeps). The pictures come after (`_unet_pictures`): rendering draws nothing."""
    batch = world.sample_batch(config.unet_batch, g, "cpu")
    texts = world.captions(batch, rng, config.angle_caption_share)
    drop = rng.random(len(texts)) < config.empty_caption_prob  # unconditional, for classifier-free guidance
    ids = ids_of(["" if d else t for t, d in zip(texts, drop)])  # (B, 77)
    noise = torch.randn((config.unet_batch, *latent_shape), generator=g)
    t = torch.randint(0, timesteps, (config.unet_batch,), generator=g)
    return batch, {"ids": ids, "noise": noise, "t": t}, (_generator_state(g), rng.bit_generator.state)


def _unet_pictures(drawn: tuple, pin: bool, object_weight: float = 0.0,
                   latent_side: int = 16) -> tuple[dict[str, torch.Tensor], tuple]:
    """A step's inputs from its draws (`_unet_draws`): the scenes rendered, (B, 3, 64, 64) in [-1, 1]. `pin`: in
    page-locked memory, so the copies to a GPU need not wait for it. `object_weight` > 0 adds "w", the latent
    pixels' loss weights (B, 1, latent_side, latent_side): `object_weights` averaged over each latent pixel's
    patch, so a latent pixel the object covers weighs up to 1 + `object_weight` times a background one."""
    batch, inputs, states = drawn
    images = world.render(batch, "cpu")
    inputs = {"x": images * 2 - 1, **inputs}
    if object_weight:
        inputs["w"] = F.adaptive_avg_pool2d(object_weights(batch, images, object_weight), latent_side)
    if pin:
        inputs = {k: v.pin_memory() for k, v in inputs.items()}
    return inputs, states


def _unet_inputs(config: PretrainConfig, g: torch.Generator, rng: np.random.Generator, ids_of: _CaptionIds,
                 latent_shape: tuple[int, ...], timesteps: int, pin: bool) -> tuple[dict[str, torch.Tensor], tuple]:
    """One UNet step's inputs, made in turn: pictures, caption ids, noise and timesteps, and the generators' states
    after."""
    return _unet_pictures(_unet_draws(config, g, rng, ids_of, latent_shape, timesteps), pin,
                          config.unet_object_weight, latent_shape[-1])


def _render_threads(n: int | None) -> int:
    """The threads that render the UNet stage's pictures when they are made ahead (a GPU run), a batch each: `n`, or
    by default min(8, the CPU count)."""
    if n is not None and n < 1:
        raise ConfigError(f"render threads must be at least 1, got {n}: give --render-threads 1 or more")
    return min(8, os.cpu_count() or 1) if n is None else n


def _frozen_vae(config: PretrainConfig, work: Path, device) -> tuple[torch.nn.Module, int, int, float | None]:
    """The trained VAE, frozen on `device`, with its step, the step its encoder (so the latents) was last changed
    at and its latent scaling factor where its checkpoint knows it (a VAE kept from an export: the export's)."""
    # Under the lock: a decoder-only VAE chunk running beside this one swaps its checkpoint in under it.
    with _locked(work / "log.json"):
        for stage in (work / "vae", work / "unet"):
            _recover_folder(stage)
        if not (work / "vae" / "state.json").exists():
            raise ConfigError(f"no trained VAE in {work / 'vae'}: run `--stage vae --work {work}` first")
        vae_weights = load_weights(work / "vae", "vae")
        vae_state = json.loads((work / "vae" / "state.json").read_text())
    vae = build_vae(config)
    vae.load_state_dict(vae_weights)
    make_deterministic(vae)
    vae.to(device).eval().requires_grad_(False)
    vae_step = vae_state["step"]
    latents_from = vae_state.get("encoder_step", vae_step)  # a decoder-only chunk leaves the latents as they were
    return vae, vae_step, latents_from, vae_state.get("scaling_factor")


def _unet_models(config: PretrainConfig, device):
    """The tokenizer, the text encoder and UNet (in training mode on `device`, their initial weights from the seed)
    and the noise schedule."""
    from diffusers import DDPMScheduler

    tokenizer = build_tokenizer_for_world(config.angle_words)
    torch.manual_seed(config.seed + 1)  # the initial weights of a fresh run come from the seed too
    text_encoder = build_text_encoder(config, tokenizer).to(device).train()
    unet = build_unet(config).to(device).train()
    noise_scheduler = DDPMScheduler.from_config(build_scheduler(config).config)
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)  # (1000,), read every step
    return tokenizer, text_encoder, unet, noise_scheduler


def _resume_unet(folder: Path, config: PretrainConfig, unet, text_encoder, opt, params, names: list[str],
                 g: torch.Generator, rng: np.random.Generator, device, latents_from: int,
                 log) -> tuple[int, float | None, dict[str, torch.Tensor]]:
    """The UNet stage's checkpoint in `folder` loaded into the models, AdamW and the generators: its step, its
    latent scaling factor (None where the VAE's encoder moved since: to be measured again) and its EMA (`names`:
    the parameters' names, in order). Where there is none: step 0, no scaling factor, the EMA a copy of `params`."""
    if not (folder / "state.json").exists():
        return 0, None, {n: p.detach().clone() for n, p in zip(names, params)}
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    unet.load_state_dict(load_weights(folder, "unet"))
    text_encoder.load_state_dict(load_weights(folder, "text_encoder"), strict=False)
    _load_moments(opt, params, load_file(str(folder / "optimizer.safetensors")))
    _set_generator_state(g, state["generator"])
    rng.bit_generator.state = state["rng"]
    step, scale = state["step"], state["scaling_factor"]
    ema = {k: v.to(device, torch.float32) for k, v in load_weights(folder, "ema").items()}
    log(f"unet: resuming at step {step}")
    trained_on = state.get("latents_from", state.get("vae_step"))  # older checkpoints name only the VAE step
    if trained_on != latents_from:  # the encoder trained on since: its latents moved
        scale = None
        log(f"unet: the VAE's encoder is now at step {latents_from} (was {trained_on}); fine-tuning on its latents")
    was = (state.get("prediction_type", "epsilon"), state.get("zero_terminal_snr", False))  # first exports
    objective = (config.prediction_type, config.zero_terminal_snr)
    if was != objective:
        log(f"unet: fine-tuning from {was[0]} (zero terminal SNR: {was[1]}) to {objective[0]} "
            f"(zero terminal SNR: {objective[1]})")
    return step, scale, ema


def _unet_inputs_ahead(config: PretrainConfig, g: torch.Generator, rng: np.random.Generator, tokenizer, vae,
                       timesteps: int, cuda: bool, ahead: bool | None, render_threads: int) -> _Ahead:
    """The UNet steps' inputs, one step's at each `next()`, with the generators' states after its draws."""
    # On a GPU the next steps' inputs are made on the CPU by threads (rendering is torch ops, which free the GIL)
    # while the device runs this step, and copied without the host waiting; a step never reads the device back (the
    # loss is read once a log line), so nothing makes the host wait for the GPU. One thread draws the random numbers
    # in turn and `render_threads` render whole batches at once: at batch 256 a render is ~170 ms of one core and a
    # GPU step a few ms, so one render thread held an H200 at 6 steps/s. On the CPU, in turn (the cores are the
    # step's). Rendering on the GPU instead made the host wait every step: a render picks each shape's scenes
    # with nonzero(), which reads the device back, after the previous step's kernels.
    side = world.RESOLUTION // 2 ** (len(vae.config.block_out_channels) - 1)  # (the VAE halves it per level)
    latent_shape = (vae.config.latent_channels, side, side)
    ids_of = _CaptionIds(tokenizer)

    def draw():
        return _unet_draws(config, g, rng, ids_of, latent_shape, timesteps)

    def finish(drawn):
        return _unet_pictures(drawn, cuda, config.unet_object_weight, side)

    return _Ahead(draw, finish, ahead if ahead is not None else cuda, workers=render_threads)


def _step_inputs(inputs: dict, vae, scale: float, device, autocast) -> dict[str, torch.Tensor]:
    """A step's inputs on `device`, its pictures encoded to latents."""
    x, ids, noise, t = (inputs[k].to(device, non_blocking=True) for k in ("x", "ids", "noise", "t"))
    with torch.no_grad(), autocast:
        latents = vae.encode(x).latent_dist.sample(generator=None).float() * scale  # (B, 4, 16, 16)
    step_inputs = {"latents": latents, "noise": noise, "t": t, "ids": ids}
    if "w" in inputs:  # (--set unet_object_weight=W)
        step_inputs["w"] = inputs["w"].to(device, non_blocking=True)
    return step_inputs


def _unet_loss(config: PretrainConfig, noise_scheduler, text_encoder, unet, autocast):
    """The UNet step's loss as a function of the step's inputs (`_step_inputs`)."""
    from textinv.losses import denoising_loss

    def step_loss(inputs: dict) -> torch.Tensor:
        """The step's loss, (1,), from the latents, noise, timesteps and caption ids."""
        latents, noise, t = inputs["latents"], inputs["noise"], inputs["t"]
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with autocast:
            context = text_encoder(inputs["ids"])[0]  # (B, 77, width)
            pred = unet(noisy, t, context).sample
        return denoising_loss(noise_scheduler, pred, latents, noise, t, config.prediction_type,
                              config.min_snr_gamma, plus_one=True, pixel_weight=inputs.get("w")).mean()[None]

    return step_loss


def _captured_step(captured: CapturedStep, step_inputs: dict, opt, params, clip: float, inputs_ahead: _Ahead,
                   chunk: _Chunk, log) -> torch.Tensor:
    """`_optimizer_step` with the loss and gradients from a replayed CUDA graph (the same as the plain step's);
    returns the loss. The first step captures it and says how that went, in the log and the chunk's record.

    --cuda-graphs: the forward and backward captured once and replayed (textinv/graphs.py): a step of this small
    UNet is ~1,500 kernels whose launches, not their arithmetic, likely set its time on a GPU
    (`benchmarks/step_ops.py`); its gradients are the graph's outputs, used by clipping and AdamW before the next."""
    if captured.capture and captured.graph is None:  # (this call captures the step)
        # torch.cuda.graph captures in "global" mode: a CUDA call that another thread makes meanwhile (a render
        # thread pinning its pictures: cudaHostAlloc, cudaEventQuery) fails in that thread and breaks the capture.
        # So the renders under way finish first, once (the next are asked for after the step); "thread_local" mode
        # would let them run, unchecked.
        inputs_ahead.settle()
    loss = captured(step_inputs)[0]
    if chunk.step == chunk.step0:  # (the first step: the capture's outcome, in the log and the record)
        chunk.record["cuda_graphs"] = "captured" if captured.graph is not None else \
            f"eager ({captured.failure or 'not on a GPU'})"
        log(f"unet: --cuda-graphs: {chunk.record['cuda_graphs']}")
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss


@torch.no_grad()
def _update_ema(ema_tensors: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """Move the EMA's tensors (in the parameters' order) towards the parameters by 1 - `decay`."""
    # one call for all ~500 tensors: on a GPU a launch each would be ~3 ms of the host's time a step, which sets
    # the rate here; the same lerp per element (on the CPU it is that loop), so the same bits
    torch._foreach_lerp_(ema_tensors, [p.detach() for p in params], 1 - decay)


def train_unet(config: PretrainConfig, work: Path, minutes: float, device="cpu", max_steps: int | None = None,
               log=print, ahead: bool | None = None, render_threads: int | None = None,
               cuda_graphs: bool = False) -> int:
    """Train (or continue) the UNet and the text encoder on the frozen VAE's latents; returns the step.
    `ahead`: make each step's inputs while the previous step runs (default: on a GPU); `render_threads`: with
    `ahead`, render up to this many steps' pictures at once (default: min(8, the CPU count)). The run is the
    same bit for bit either way. `cuda_graphs`: the step's forward and backward captured as a CUDA graph on a GPU
    (`textinv.graphs.CapturedStep`; elsewhere, and if the capture fails, the same computation runs eagerly).

    >>> train_unet(config, Path("runs/shapes"), minutes=20, device="cuda", render_threads=8)  # doctest: +SKIP
    """
    render_threads = _render_threads(render_threads)
    vae, vae_step, latents_from, vae_scale = _frozen_vae(config, work, device)
    tokenizer, text_encoder, unet, noise_scheduler = _unet_models(config, device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    g, rng = torch.Generator().manual_seed(config.seed + 1), np.random.default_rng(config.seed + 1)  # (rng: wording)
    names = [f"{part}.{k}" for part, model in (("unet", unet), ("text_encoder", text_encoder))
             for k, _ in model.named_parameters()]
    step, scale, ema = _resume_unet(work / "unet", config, unet, text_encoder, opt, params, names, g, rng, device,
                                    latents_from, log)
    if scale is None:  # a kept VAE's is the scale of these very weights: measuring it again would only repeat it
        scale = latent_scale(vae, device) if vae_scale is None else vae_scale
        log(f"unet: latent scaling factor {scale:.4f}" + ("" if vae_scale is None else " (the kept VAE's)"))
    torch.manual_seed(config.seed + 1 + step)  # the VAE posterior's sampling noise (none once deterministic)

    drawn = (_generator_state(g), rng.bit_generator.state)  # the generators' states after the last step's draws

    def save():
        save_checkpoint(work / "unet", {"unet": unet, "text_encoder": text_encoder}, opt, params,
                        {"step": chunk.step, "generator": drawn[0], "rng": drawn[1], "scaling_factor": scale,
                         "vae_step": vae_step, "latents_from": latents_from,
                         "prediction_type": config.prediction_type, "zero_terminal_snr": config.zero_terminal_snr},
                        ema)

    chunk = _Chunk("unet", work, config, step, save, 25, log, device=str(device), batch=config.unet_batch,
                   lr=config.unet_lr, vae_step=vae_step)
    cuda = torch.device(device).type == "cuda"
    # (no cast cache with graphs: a cached cast would live in the capture's memory, as PyTorch's notes on graphs say)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda, cache_enabled=not cuda_graphs)

    step_loss = _unet_loss(config, noise_scheduler, text_encoder, unet, autocast)
    captured = CapturedStep(step_loss, params, capture=cuda, accumulate=False) if cuda_graphs else None
    ema_tensors = [ema[n] for n in names]  # (in the parameters' order)
    with _unet_inputs_ahead(config, g, rng, tokenizer, vae, noise_scheduler.config.num_train_timesteps, cuda, ahead,
                            render_threads) as inputs_ahead:
        while chunk.running(minutes, max_steps):
            for group in opt.param_groups:
                group["lr"] = _lr(chunk.step, config.unet_lr, config.warmup)
            inputs, drawn = inputs_ahead.next()
            step_inputs = _step_inputs(inputs, vae, scale, device, autocast)
            if captured is not None:  # (the same loss and gradients, from a replayed CUDA graph)
                loss = _captured_step(captured, step_inputs, opt, params, config.grad_clip, inputs_ahead, chunk, log)
            else:
                loss = step_loss(step_inputs)[0]
                _optimizer_step(opt, params, loss, config.grad_clip)
            # EMA with a short warm-up, so early exports are not dominated by the random init
            _update_ema(ema_tensors, params, min(config.ema_decay, (2 + chunk.step) / (11 + chunk.step)))
            chunk.tick(loss, "loss")
    return chunk.finish()


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_pipeline(config: PretrainConfig, work: Path, use_ema: bool = True):
    """The trained pipeline from a work folder (the UNet stage may be missing: its parts are then random)."""
    from diffusers import StableDiffusionPipeline

    tokenizer = build_tokenizer_for_world(config.angle_words)
    text_encoder, unet = build_text_encoder(config, tokenizer), build_unet(config)
    scale = 1.0
    unet_dir = work / "unet"
    if (unet_dir / "state.json").exists():
        scale = json.loads((unet_dir / "state.json").read_text())["scaling_factor"]
        if use_ema:
            ema = {k: v.float() for k, v in load_weights(unet_dir, "ema").items()}
            unet.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("unet.")})
            te_state = text_encoder.state_dict()
            te_state.update({k[13:]: v for k, v in ema.items() if k.startswith("text_encoder.")})
            text_encoder.load_state_dict(te_state)
        else:
            unet.load_state_dict(load_weights(unet_dir, "unet"))
            text_encoder.load_state_dict(load_weights(unet_dir, "text_encoder"), strict=False)
    vae = build_vae(config, scaling_factor=scale)
    if (work / "vae" / "state.json").exists():
        vae.load_state_dict(load_weights(work / "vae", "vae"))
        make_deterministic(vae)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(config), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export(config: PretrainConfig, work: Path, out: Path, command: str, dtype=torch.float16, log=print) -> Path:
    """Write the diffusers folder to `out` atomically (a sibling temp folder, then a rename), with its record.

    Refused (ConfigError) when `work` has no checkpoint at all, and when `out` is the work folder or holds it, or is
    anything but an earlier export (a folder with `training.json`) or an empty folder: the swap replaces it whole."""
    out = Path(out)
    # under the lock a chunk running beside it swaps its checkpoint in under: no checkpoint is read mid-swap (gone,
    # or the next one's state with the last one's weights); the swap waits the few seconds the reading takes
    with _locked(work / "log.json"):
        pipe, stages = _read_work(config, work, out, log)
    pipe.to(dtype=dtype)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    pipe.tokenizer.save_pretrained(tmp / "tokenizer")  # again: some versions write only tokenizer.json
    _write_vocab_files(pipe.tokenizer, tmp / "tokenizer")
    record = {
        "format": "textinv-shapes-model/1",
        "exported": _now(),
        "command": command,
        "stages": stages,
        "config": asdict(config),
        "parameters": {"unet": count_parameters(pipe.unet), "text_encoder": count_parameters(pipe.text_encoder),
                       "vae": count_parameters(pipe.vae)},
        "scaling_factor": pipe.vae.config.scaling_factor,
        "weights_dtype": str(dtype).replace("torch.", ""),
        "prompting": PROMPTING,  # its own init words and templates for `textinv train` (models.recorded_prompting)
    }
    _write_json(tmp / "training.json", record)
    (tmp / "README.md").write_text(_readme(record))
    for path in tmp.rglob("*"):  # safetensors writes owner-only files; a model folder is for everyone to read
        path.chmod(0o755 if path.is_dir() else 0o644)
    _replace_folder(tmp, out)
    log(f"exported to {out}")
    return out


def _read_work(config: PretrainConfig, work: Path, out: Path, log) -> tuple:
    """`export`'s checks, then the pipeline built from `work`'s checkpoints and its `log.json` (call it holding the
    work folder's lock); a checkpoint a killed chunk left half swapped is put back first."""
    for stage in STAGES:
        _recover_folder(work / stage)
    if not any((work / stage / "state.json").exists() for stage in STAGES):
        raise ConfigError(f"no checkpoints in {work}: train a stage first (--stage vae, then --stage unet), or check "
                          f"the --work path")
    if out.resolve() == work.resolve() or out.resolve() in work.resolve().parents:
        raise ConfigError(f"--out {out} would replace the work folder {work} and its checkpoints; give another folder")
    if out.exists() and not (out.is_dir() and ((out / "training.json").is_file() or not any(out.iterdir()))):
        raise ConfigError(f"--out {out} exists and is not an earlier export (no training.json in it): give a new "
                          f"folder, or remove it first")
    if not (work / "unet" / "state.json").exists():
        log(f"warning: {work / 'unet'} has no checkpoint: the exported UNet and text encoder are untrained")
    log_path = work / "log.json"
    return build_pipeline(config, work), json.loads(log_path.read_text()) if log_path.exists() else {}


def _write_vocab_files(tokenizer, folder: Path) -> None:
    """Make sure the slow-tokenizer files (vocab.json + merges.txt) exist beside tokenizer.json, holding what it
    holds (with the orientation words too, where the tokenizer has them)."""
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return
    vocab = tokenizer.get_vocab()
    # (tokenizers writes a merge as a pair, older versions as one "a b" string)
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))


def _readme(record: dict) -> str:
    stages = "\n".join(f"- `{s}`: {v['steps']} steps in {v['wall_seconds'] / 60:.1f} min on "
                       f"{', '.join(sorted({c['device'] for c in v['chunks']}))}"
                       for s, v in record["stages"].items()) or "- (no training recorded)"
    params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in record["parameters"].items())
    schedule = ("SD's scaled-linear betas rescaled to zero terminal SNR, trailing sampling steps"
                if record["config"].get("zero_terminal_snr") else "SD's scaled-linear betas")
    return f"""# textinv `shapes` model

A small Stable Diffusion-style pipeline (diffusers `StableDiffusionPipeline`) trained from scratch on textinv's
procedural shapes world (`textinv/shapes/world.py`): 64x64 pictures, 16x16x4 latents, a CLIP tokenizer whose
vocabulary is the world's words. It is textinv's default model for trying Textual Inversion offline.

- parameters: {params}
- weights stored as {record['weights_dtype']} (loaded as float32 by `textinv.models.load_model`)
- objective: {record['config'].get('prediction_type', 'epsilon')}, noise schedule {schedule}
- exported {record['exported']} with `{record['command']}`

Training (see `training.json` for every chunk):
{stages}

Reproduce with `python -m textinv.shapes.pretrain --stage vae ...`, `--stage unet ...`, then `--export` (the
module docstring lists the commands).
"""


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

NEW_UNET_RESETS = ("unet_lr", "ema_decay")
"""Settings `--keep vae` puts back to their defaults: an export records its last chunk's, which a final fine-tune
lowers, and a new UNet would start at them (`--set` still changes them)."""


def start_from_model(model_dir: Path, work: Path, keep: tuple[str, ...] = STAGES, settings: dict | None = None,
                     log=print) -> PretrainConfig:
    """Make a new work folder that continues an exported model (e.g. the committed `textinv/shapes/model`), so a
    machine without the original checkpoints can train on: its weights become each kept stage's weights (the
    UNet's and text encoder's also their EMA), their step counts and training log carry over; the optimizer starts
    afresh. `keep=("vae",)` keeps only the autoencoder: the next UNet chunk starts a new UNet and text encoder on
    its latents, with sizes that may differ from the export's (`--set unet_channels=...`). `settings` (`--set`)
    apply to the new folder; a kept UNet may only grow attention at levels that had none (`grow_unet`)."""
    from textinv.models import load_model

    model_dir, work = Path(model_dir), Path(work)
    record = _export_record(model_dir, work, keep)
    exported, config = _continued_config(record, keep, settings)
    steps = {stage: v["steps"] for stage, v in record.get("stages", {}).items()}
    changed = [k for k in ARCHITECTURE["vae"] if getattr(exported, k) != getattr(config, k)]
    if changed:
        raise ConfigError(f"--set {', '.join(changed)}: the VAE is kept from {model_dir}, so its sizes stay")
    added = _grown_levels(exported, config) if "unet" in keep else []
    model = load_model(model_dir)  # float32, as the loader gives every model
    unet = grow_unet(model.unet, config, added, log) if added else None
    tokenizer = build_tokenizer_for_world(config.angle_words)
    if "unet" in keep and len(tokenizer) != model.text_encoder.get_input_embeddings().num_embeddings:
        grow_text_encoder(model.text_encoder, model.tokenizer, tokenizer, log)

    # written beside `work` and renamed into place at the end: a run killed meanwhile leaves no half folder that
    # the next try would take for a run (it clears what a killed try left)
    final, work = work, work.with_name(f".{work.name}.from-model")
    shutil.rmtree(work, ignore_errors=True)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ConfigError(f"{final} holds files but no run; give --from-model a new --work folder (or empty it)")
    _write_kept_stages(work, keep, model, unet, config, record, steps)
    _write_json(work / "config.json", asdict(config))
    _write_json(work / "log.json", {k: v for k, v in record.get("stages", {}).items() if k in keep})
    if final.exists():
        final.rmdir()  # (empty)
    os.replace(work, final)
    log(f"{final}: continues {model_dir} (" + ", ".join(f"{k} step {steps.get(k, 0)}" for k in keep)
        + ("" if "unet" in keep else "; a new UNet and text encoder start at the next --stage unet") + ")")
    return config


def _export_record(model_dir: Path, work: Path, keep: tuple[str, ...]) -> dict:
    """The training record (training.json) of the export in `model_dir`, once `work` is a new folder and `keep`
    names stages --from-model can keep."""
    record_path = model_dir / "training.json"
    if not record_path.is_file():
        raise ConfigError(f"{model_dir} has no training.json: only a folder written by --export can be continued")
    if (work / "config.json").exists():
        raise ConfigError(f"{work} already holds a run; give --from-model a new --work folder")
    unknown = [k for k in keep if k not in STAGES]
    if unknown or "vae" not in keep:
        raise ConfigError(f"--keep {','.join(keep)}: keep 'vae' or 'vae,unet' (a UNet is tied to its VAE's latents)")
    return json.loads(record_path.read_text())


def _continued_config(record: dict, keep: tuple[str, ...], settings: dict | None
                      ) -> tuple[PretrainConfig, PretrainConfig]:
    """The export's config (with a new UNet's rates where the UNet is not kept) and the new folder's, `settings`
    applied to it."""
    config = PretrainConfig(**record["config"])
    if "unet" not in keep:  # a new UNet trains from the start's rates, not the export's last fine-tune's (1e-4)
        for name in NEW_UNET_RESETS:
            setattr(config, name, getattr(PretrainConfig(), name))
    return config, PretrainConfig(**{**asdict(config), **(settings or {})})


def _write_kept_stages(work: Path, keep: tuple[str, ...], model, unet, config: PretrainConfig, record: dict,
                       steps: dict[str, int]) -> None:
    """A checkpoint in `work` for each kept stage, from the exported `model` (`unet`: the grown UNet, if any): its
    weights (the UNet's and text encoder's also as their EMA), no optimizer moments, its step and generators."""
    from safetensors.torch import save_file

    def weights(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in module.state_dict().items()}

    g = torch.Generator().manual_seed(config.seed)
    stage_dirs = {"vae": {"vae": weights(model.vae)},
                  "unet": {"unet": weights(unet or model.unet), "text_encoder": weights(model.text_encoder)}}
    for stage, modules in stage_dirs.items():
        if stage not in keep:
            continue
        folder = work / stage
        folder.mkdir(parents=True)
        for name, tensors in modules.items():
            save_file(tensors, str(folder / f"{name}.safetensors"))
        save_file({}, str(folder / "optimizer.safetensors"))
        state = {"step": steps.get(stage, 0), "generator": _generator_state(g)}
        if stage == "vae":  # (a VAE chunk writes its state afresh, without it: its encoder changes the latents)
            state["scaling_factor"] = record["scaling_factor"]
        if stage == "unet":
            save_file({f"{n}.{k}": v.to(torch.float16) for n, t in modules.items() for k, v in t.items()},
                      str(folder / "ema.safetensors"))
            state.update(rng=np.random.default_rng(config.seed + 1 + state["step"]).bit_generator.state,
                         scaling_factor=record["scaling_factor"], vae_step=steps.get("vae", 0),
                         prediction_type=model.prediction_type,
                         zero_terminal_snr=bool(model.pipeline.scheduler.config.get("rescale_betas_zero_snr")))
        _write_json(folder / "state.json", state)


def _grown_levels(exported: PretrainConfig, config: PretrainConfig) -> list[int]:
    """The UNet levels at which `config` adds attention to a kept, exported UNet (none: the same sizes). Any other
    change of its sizes is refused before anything loads or is written (`--keep vae` starts a new UNet instead)."""
    names = ARCHITECTURE["unet"]
    if all(getattr(exported, k) == getattr(config, k) for k in names):
        return []
    pairs = list(zip(exported.unet_attention, config.unet_attention))
    added = [i for i, (was, now) in enumerate(pairs) if now and not was]
    same_heads = all(h == g for h, g, a in zip(exported.heads_per_level, config.heads_per_level, exported.unet_attention)
                     if a)
    others = [k for k in names if k not in ("unet_attention", "unet_heads") and getattr(exported, k) != getattr(config, k)]
    if others or not same_heads or not added or any(was and not now for was, now in pairs):
        raise ConfigError(
            f"a kept UNet can only gain attention at levels without it (it has unet_attention "
            f"{','.join(str(int(a)) for a in exported.unet_attention)}: e.g. --set unet_attention=1,1,1 --set "
            f"unet_heads=1,8,8); its other sizes stay as exported. For a UNet of other sizes start a new one with "
            f"--keep vae")
    return added


def grow_unet(unet, config: PretrainConfig, added: list[int], log=print):
    """The exported `unet` as a UNet of `config`'s sizes: the same function, with attention (self- and
    cross-attention, diffusers' Transformer2DModel) added at the levels `added`. A new block's output projection
    starts at zero, so the block adds nothing until training moves it: the grown UNet draws exactly what the export
    drew, and fine-tuning starts from there rather than from scratch."""
    grown = build_unet(config)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    levels = len(config.unet_channels)
    new_blocks = tuple(f"down_blocks.{i}.attentions." for i in added) + tuple(
        f"up_blocks.{levels - 1 - i}.attentions." for i in added)
    if unexpected or not missing or any(not k.startswith(new_blocks) for k in missing):  # a diffusers layout change
        raise RuntimeError(f"growing the UNet: unexpected weights {unexpected}, missing {missing[:5]}")
    with torch.no_grad():
        for name, module in grown.named_modules():
            if name.startswith(new_blocks) and name.endswith("proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    sizes = [f"{world.RESOLUTION // 4 // 2 ** i}x{world.RESOLUTION // 4 // 2 ** i}" for i in added]
    log(f"unet: attention added at {', '.join(sizes)} ({len(missing)} new tensors, "
        f"{sum(p.numel() for n, p in grown.named_parameters() if n in missing):,} parameters), starting as the identity")
    return grown


def grow_text_encoder(text_encoder, exported, tokenizer, log=print) -> None:
    """Give `text_encoder` (trained with the tokenizer `exported`) a token row for each entry `tokenizer` adds after
    `exported`'s ids (the orientation words, `build_tokenizer_for_world(angle_words=True)`), in place. Refused
    (ConfigError) unless `tokenizer` keeps every id of `exported`: an old row must go on meaning its old word.

    A new row starts at the mean of the rows of the world's words, the only rows pretraining trained (captions
    never use the byte pieces, whose rows are their random start, decayed): the centre of what the encoder's layers
    were trained on, a word in general rather than any one (in the committed model its norm is 0.30, the word rows'
    2.4, the others' 0.15), from which training moves each new word its own way. A fresh random row would be an
    input the trained layers never saw, and a copy of one word's row (say "striped") would start the new word out
    meaning that word."""
    old, new = exported.get_vocab(), tokenizer.get_vocab()
    moved = [t for t, i in old.items() if new.get(t) != i]
    if moved or len(new) <= len(old):
        raise ConfigError(f"the exported tokenizer ({len(old)} entries) is not the start of the world's with the "
                          f"orientation words ({len(new)} entries; {len(moved)} of its ids differ): only a model "
                          f"pretrained here on the world's words learns them, and one that has them keeps them "
                          f"(leave angle_words as exported)")
    rows = text_encoder.get_input_embeddings().weight.detach()  # (len(old), width)
    words = rows[[old[w + "</w>"] for w in world.VOCABULARY]]
    grown = torch.cat([rows, words.mean(0, keepdim=True).expand(len(new) - len(old), -1)])  # (len(new), width)
    text_encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(grown.clone(), freeze=False))
    text_encoder.config.vocab_size = len(new)
    log(f"text encoder: {len(new) - len(old)} token rows added for the orientation words "
        f"({', '.join(world.ORIENTATION_WORDS)}), each starting at the mean of the world's word rows")


def _as_stored(config: PretrainConfig) -> dict:
    """The config as config.json holds it (tuples as lists), for comparing with what a work folder stored."""
    return json.loads(json.dumps(asdict(config)))


def _config_for(work: Path, overrides: dict, write: bool = True) -> PretrainConfig:
    """The work folder's config with `overrides` applied. A stage's sizes (`ARCHITECTURE`) and the seed are fixed
    once it has a checkpoint; before that they may change (e.g. a new, wider UNet on a kept VAE: `--from-model M
    --keep vae`). `write`: store it as the folder's config.json (training does; an export only reads)."""
    path = work / "config.json"
    if not write and not path.exists():
        raise ConfigError(f"{work} is not a pretraining work folder (no config.json): check the --work path")
    if path.exists():
        stored = json.loads(path.read_text())
        wanted = _as_stored(PretrainConfig(**{**stored, **overrides}))
        stored = _as_stored(PretrainConfig(**stored))  # fields newer than the folder take their defaults
        clash = [k for stage, keys in ARCHITECTURE.items() if (work / stage / "state.json").exists()
                 for k in keys + ("seed",) if wanted[k] != stored[k]]
        if clash:
            raise ConfigError(f"{work} has checkpoints made with another {', '.join(sorted(set(clash)))}; use a new "
                              f"--work folder (--from-model M --keep vae keeps the VAE and starts a new UNet)")
        if (work / "unet" / "state.json").exists() and wanted["angle_words"] and not stored["angle_words"]:
            raise ConfigError(f"{work}'s UNet checkpoint has a text encoder without the orientation words that "
                              f"angle_caption_share > 0 captions use: export it (--export --out M), then start a "
                              f"new folder from it with --from-model M --set angle_caption_share=..., which adds "
                              f"their rows")
        config = PretrainConfig(**{**stored, **overrides})
    else:
        config = PretrainConfig(**overrides)
    if write:
        work.mkdir(parents=True, exist_ok=True)
        _write_json(path, asdict(config))
    return config


def parse_setting(text: str) -> tuple[str, object]:
    """`KEY=VALUE` for one `PretrainConfig` field, VALUE read as the field's type (tuples comma-separated).

    >>> parse_setting("unet_channels=64,128,128")
    ('unet_channels', (64, 128, 128))
    >>> parse_setting("unet_attention=1,1,0")
    ('unet_attention', (True, True, False))
    """
    key, sep, value = text.partition("=")
    types = {f.name: f.type for f in fields(PretrainConfig)}
    if not sep or key not in types:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
    kind = str(types[key])  # "int", "float", "bool", "str" or "tuple[int, ...]" (the module's annotations are text)
    tuple_of = kind[len("tuple["):].split(",")[0] if kind.startswith("tuple[") else None

    def one(v: str, as_type: str):
        v = v.strip().lower() if as_type == "bool" else v.strip()
        try:
            if as_type == "bool":
                return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[v]
            return {"int": int, "float": float, "str": str}[as_type](v)
        except (KeyError, ValueError):
            wanted = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(as_type, as_type)
            raise ConfigError(f"--set {text!r}: {v!r} is not {wanted}") from None

    if tuple_of:
        return key, tuple(one(v, tuple_of) for v in value.split(","))
    return key, one(value, kind)


def main(argv=None) -> int:
    """The command line; a TextinvError (a bad setting, a missing or mismatched folder) is one `error:` line, exit 2."""
    from textinv.errors import TextinvError

    try:
        return _run(argv)
    except TextinvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(argv) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.stage or args.export or args.quick or args.from_model):
        parser.error("give --stage vae|unet, --export, --quick or --from-model")
    if args.stage and args.export:
        parser.error("--stage and --export are separate runs; do one, then the other")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    command = "python -m textinv.shapes.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    _check_options(parser, args)
    overrides = _overrides(args)
    if args.from_model:
        start_from_model(args.from_model, args.work, tuple(k.strip() for k in args.keep.split(",")), overrides)
    config = _config_for(args.work, overrides, write=bool(args.stage or args.quick or args.from_model))
    out = args.out or args.work / "model"
    if args.quick:
        steps = args.steps or 3
        train_vae(config, args.work, args.minutes, args.device, max_steps=steps)
        train_unet(config, args.work, args.minutes, args.device, max_steps=steps,
                   render_threads=args.render_threads)
        export(config, args.work, out, command)
        return 0
    if args.stage == "vae":
        train_vae(config, args.work, args.minutes, args.device, max_steps=args.steps)
    elif args.stage == "unet":
        train_unet(config, args.work, args.minutes, args.device, max_steps=args.steps,
                   render_threads=args.render_threads, cuda_graphs=args.cuda_graphs)
    if args.export:
        export(config, args.work, out, command, dtype=torch.float32 if args.fp32 else torch.float16)
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line's options (each one's help is its --help line)."""
    parser = argparse.ArgumentParser(prog="python -m textinv.shapes.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=STAGES, help="train this stage for --minutes (resuming if possible)")
    parser.add_argument("--export", action="store_true", help="write the diffusers folder to --out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps of both stages, then export")
    parser.add_argument("--work", type=Path, required=True, help="folder for checkpoints, config.json and log.json")
    parser.add_argument("--out", type=Path, help="where --export writes (default: <work>/model)")
    parser.add_argument("--from-model", type=Path, help="start the new --work folder from an exported model (e.g. "
                        "textinv/shapes/model) to train it further without its original checkpoints")
    parser.add_argument("--keep", default="vae,unet", help="with --from-model: the stages to take from it "
                        "('vae' alone: a new UNet and text encoder, e.g. of other sizes, on its autoencoder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a PretrainConfig field "
                        "(e.g. unet_channels=64,128,128 or ema_decay=0.999); sizes only for a stage not started yet")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-time bound of this chunk")
    parser.add_argument("--steps", type=int, help="stop at this total step count of the stage")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, help="batch size of the stage")
    parser.add_argument("--lr", type=float, help="peak learning rate of the stage")
    parser.add_argument("--decoder-only", action="store_true", help="with --stage vae: train the decoder alone, "
                        "so the latents (and a UNet trained on them) stay valid")
    parser.add_argument("--seed", type=int, help="seed of a new work folder")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--render-threads", type=int, help="with a GPU: threads that render the UNet stage's "
                        "pictures, a batch each, each using --threads of its own (default: min(8, CPU count))")
    parser.add_argument("--cuda-graphs", action="store_true", help="with --stage unet on a GPU: capture the step's "
                        "forward and backward as a CUDA graph and replay it (a step of a small UNet is launch-bound)")
    parser.add_argument("--fp32", action="store_true", help="export float32 weights instead of float16")
    return parser


def _check_options(parser: argparse.ArgumentParser, args) -> None:
    """The options that go only with another (or on a GPU) refused where they are given without it, and
    --render-threads checked, before anything is written."""
    _render_threads(args.render_threads)
    if args.keep != "vae,unet" and not args.from_model:
        parser.error("--keep goes with --from-model")
    if args.decoder_only and args.stage != "vae":
        parser.error("--decoder-only goes with --stage vae")
    if args.cuda_graphs and (args.stage != "unet" or not args.device.startswith("cuda")):
        raise ConfigError("--cuda-graphs goes with --stage unet --device cuda (it captures the UNet stage's step on "
                          "a GPU): leave it out here")


def _overrides(args) -> dict:
    """The PretrainConfig fields the command line sets: --quick's sizes, then --set, --seed, and the stage's
    --batch, --lr and --decoder-only."""
    overrides = dict(QUICK) if args.quick else {}
    overrides.update(parse_setting(text) for text in args.set)
    if args.seed is not None:  # before --from-model writes the new folder: its seed, as any new folder's
        overrides["seed"] = args.seed
    if args.stage and args.batch is not None:
        overrides[f"{args.stage}_batch"] = args.batch
    if args.stage and args.lr is not None:
        overrides[f"{args.stage}_lr"] = args.lr
    if args.stage == "vae":
        overrides["vae_part"] = "decoder" if args.decoder_only else "all"
    return overrides


if __name__ == "__main__":
    raise SystemExit(main())
