"""Running out of GPU memory: torch's error turned into a `DeviceMemoryError` that says where it ran out, how much
the device has, and the settings that need less there.

torch raises `torch.OutOfMemoryError` on CUDA (`torch.cuda.OutOfMemoryError` is the same class) and a plain
RuntimeError whose message begins "MPS backend out of memory" on Apple's MPS backend. `train`, `generate` and
`score` keep a note of what they are doing as they go; their top-level function turns the error into the message
once the frames that held the failing step's tensors are gone (`release`), so a notebook can try again with other
settings in the same process. Nothing is retried with other settings: that would change the result unasked.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import re
import traceback
import weakref
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from .errors import DeviceMemoryError

MPS_MESSAGE = "MPS backend out of memory"
T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device running out of memory (CUDA's or MPS's), and nothing else.

    >>> is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.9 GB, ...)"))
    True
    >>> is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    False
    """
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and str(error).lstrip().startswith(MPS_MESSAGE))


def release(error: BaseException, device: torch.device | str | None = None) -> None:
    """Let go of what the frames `error` came through hold (a step's activations and gradients: gigabytes), and
    of the chain of errors it was raised in: a notebook keeps the last error (`sys.last_exc`), and with it every
    tensor those frames held, until the next error. Frames still running are left as they are. With a CUDA
    `device`, the memory torch's allocator then holds unused goes back to the GPU, where other programs see it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        error = error.__context__
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def smaller_side(pixels: int) -> int:
    """A side about 3/4 of `pixels` to suggest, in whole steps of 64 (SD's latents' and UNet's) from 256 up, of 8
    below (the tiny test models' sizes): 512 -> 384, 1024 -> 768.

    >>> smaller_side(512), smaller_side(1024), smaller_side(16)
    (384, 768, 8)
    """
    grain = 64 if pixels >= 256 else 8
    return max(grain, pixels * 3 // 4 // grain * grain)


def sides(resolution: int | tuple[int, int]) -> tuple[int, int]:
    """A training size as (width, height): a square's side `resolution`, or (W, H) as given (--resolution
    WIDTHxHEIGHT).

    >>> sides(512), sides((512, 768))
    ((512, 512), (512, 768))
    """
    return (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)


def smaller_size(resolution: int | tuple[int, int]) -> str:
    """The --resolution to suggest for fewer pixels: each side `smaller_side` (about 3/4 of it, so about 9/16 of the
    pixels), one number for a square.

    >>> smaller_size(512), smaller_size((512, 768))
    ('384', '384x576')
    """
    if isinstance(resolution, int):
        return str(smaller_side(resolution))
    return "x".join(str(smaller_side(side)) for side in resolution)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def device_note(device: torch.device | str, error: BaseException | None = None) -> str:
    """What the device can tell of its memory: its size and this process's peak use on CUDA, the limit and the use
    now on MPS, nothing elsewhere; and the allocation that failed, from torch's message.

    >>> device_note("cpu", RuntimeError("MPS backend out of memory (...). Tried to allocate 256.00 MB on private pool"))
    'torch tried to allocate 256.00 MB more'
    """
    device = torch.device(device)
    parts = []
    tried = re.search(r"Tried to allocate ([\d.]+ ?[KMGT]?i?B)", str(error or ""))
    if tried:
        parts.append(f"torch tried to allocate {tried.group(1)} more")
    try:
        if device.type == "cuda":
            total = torch.cuda.mem_get_info(device)[1]
            peak = torch.cuda.max_memory_allocated(device)
            parts.append(f"{device} has {_gib(total)} and this process's tensors took up to {_gib(peak)} of it")
            if peak < total / 2:  # (the rest is not this run's: a web UI or another run may hold it)
                parts.append("other programs may hold much of the rest (nvidia-smi lists them)")
        elif device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
            parts.append(f"MPS may use {_gib(torch.mps.recommended_max_memory())}, this process holds "
                         f"{_gib(torch.mps.driver_allocated_memory())} there")
    except RuntimeError:  # (a device that cannot say: only what is known)
        pass
    return "; ".join(parts)


def out_of_memory_as(run: Callable[[], T], describe: Callable[[BaseException], DeviceMemoryError],
                     device: Callable[[], torch.device | str | None]) -> T:
    """`run()`'s result; if it runs out of device memory, `describe(error)` raised instead, once `release` has let go
    of what the failed frames held and given the allocator's unused memory on `device()` back (read then: where the
    run got to). Raised outside the handler, so it carries no context: the error a notebook keeps holds none of the
    failed work's tensors, and another try fits where this one did. `train`, `generate` and `score` end so.

    >>> out_of_memory_as(lambda: 4, lambda e: DeviceMemoryError(str(e)), lambda: None)
    4
    """
    failure = None
    try:
        return run()
    except RuntimeError as e:  # (torch.OutOfMemoryError is one)
        if not is_out_of_memory(e):
            raise
        release(e, device())
        failure = describe(e)
    raise failure


def memory_error(device: torch.device | str, doing: str, fixes: list[str], after: str = "",
                 error: BaseException | None = None, changes: str = "the result") -> DeviceMemoryError:
    """The error to raise: where it ran out (`doing`), what the device tells (`device_note`), the `fixes` that
    apply there, the one that changes `changes` least first, and `after`: what was kept, and how to go on."""
    note = device_note(device, error)
    text = f"out of memory on {torch.device(device)} {doing}" + (f": {note}" if note else "")
    if fixes:
        text += (f". Settings that need less memory, from the one that changes {changes} least: "
                 + "; ".join(fixes))
    if after:
        text += ". " + after
    return DeviceMemoryError(text)


# ---------------------------------------------------------------------------------------------------------------
# The memory a training step needs, worked out without running it: the step on PyTorch's meta device (shapes, no
# memory, no arithmetic), its new tensors counted while they live. Within 0.12 GiB of an H200's measurements of SD
# 1.5 at batch 1, 8 and 32 (BENCHMARKS.md, "GPU memory, worked out on the CPU"); `benchmarks/step_memory.py` prints
# it for the full-size architectures.

BLOCK = 512  # the CUDA caching allocator rounds every allocation up to this many bytes
RESERVE = 1.04  # reserved over allocated: the caching allocator's blocks, the most an H200 showed (SD 1.5, batch 32)
# what the H200 allocated beyond the count at every batch it measured (0.11-0.12 GiB: cuBLAS's and cuDNN's
# workspaces, which no op returns): kept free when a batch to run is suggested
WORKSPACE = 2 ** 27


def in_blocks(nbytes: int, block: int = BLOCK) -> int:
    """`nbytes` as the CUDA caching allocator holds them: rounded up to whole blocks.

    >>> in_blocks(1), in_blocks(512), in_blocks(513)
    (512, 512, 1024)
    """
    return math.ceil(nbytes / block) * block


def _storages(tree) -> list:
    from torch.utils._pytree import tree_flatten

    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class LiveMemory(TorchDispatchMode):
    """Counts the bytes of the storages the ops inside it create, while those storages live: `now` and `peak`.

    A storage an op returns that one of its inputs already had (a view, an in-place op, an `out=` tensor) is not new,
    unless the op made it larger (an `out=` tensor too small for the result, `resize_`): then what it grew by is; a
    storage made before the block (weights, inputs) is never counted otherwise, even through a view of it.

    >>> with LiveMemory() as live:                       # doctest: +SKIP
    ...     step()
    >>> live.peak                                        # doctest: +SKIP
    """

    def __init__(self, block: int = BLOCK):
        super().__init__()
        self.block = block
        # each counted storage: (the weak reference whose callback takes its bytes off when it dies, [its bytes])
        self.live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0

    def _freed(self, counted: list[int]) -> None:
        self.now -= counted[0]

    def _rounded(self, storage) -> int:
        return in_blocks(storage.nbytes(), self.block)

    def _count(self, storage, size: int) -> None:
        if storage in self.live:
            self.live[storage][1][0] += size
        else:
            counted = [size]
            self.live[storage] = (weakref.ref(storage, lambda _, counted=counted: self._freed(counted)), counted)
        self.now += size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = WeakIdKeyDictionary({s: self._rounded(s) for s in _storages((args, kwargs))})  # (the inputs' bytes)
        out = func(*args, **(kwargs or {}))
        for storage in _storages(out):
            size = self._rounded(storage)
            if storage in before:  # (an input's: new only where the op grew it)
                if size > before[storage]:
                    self._count(storage, size - before[storage])
                    before[storage] = size
            elif storage not in self.live:
                self._count(storage, size)
        self.peak = max(self.peak, self.now)
        return out


def _fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
           _plain=F.scaled_dot_product_attention):
    # (meta tensors only: another thread's attention on a real device runs as it would have while the block lasts)
    if attn_mask is not None or enable_gqa or query.device.type != "meta":
        return _plain(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                      enable_gqa=enable_gqa)
    return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                scale=scale)[0]


@contextlib.contextmanager
def fused_attention():
    """`F.scaled_dot_product_attention` as a GPU runs it, fused (FlashAttention in fp16/bf16, the memory-efficient
    kernel in fp32: both keep the inputs, the output and a log-sum-exp for the backward), also on the meta device,
    whose own choice is the math path: the (B, heads, L, L) scores kept for the backward, 268 MB a sample and layer
    at SD 1.5's 64x64 level. On meta tensors without a mask only; any other call runs as it would have."""
    plain = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = plain


def meta_twin(model, vectors: int = 1):
    """`model` (a `textinv.models.Model`) rebuilt on the meta device from its components' configs, each in its own
    dtype (a text encoder may be kept in fp32 beside a bf16 UNet) and training mode, with `vectors` learned rows in
    each text encoder as `textinv train` installs them; no memory is used. Returns (the twin, each encoder's first
    learned id). Its VAE is left out (a step does not use it)."""
    from types import SimpleNamespace

    from .models import Model
    from .tokens import ExtendedEmbedding, base_embedding

    pipe = model.pipeline
    dtype = next(model.unet.parameters()).dtype
    with torch.device("meta"):
        unet = type(model.unet).from_config(model.unet.config).to(dtype)
        encoders = [type(te)(te.config).to(base_embedding(te).weight.dtype).train(te.training)
                    for _, _, te in model.encoders]
    first_ids = []
    for te in encoders:
        te.requires_grad_(False)
        table = base_embedding(te)
        te.set_input_embeddings(ExtendedEmbedding(table, torch.zeros(vectors, table.embedding_dim, device="meta")))
        first_ids.append(table.num_embeddings)
    unet.requires_grad_(False)
    parts = dict(unet=unet, vae=None, scheduler=pipe.scheduler, vae_scale_factor=pipe.vae_scale_factor,
                 tokenizer=pipe.tokenizer, text_encoder=encoders[0])
    if model.is_xl:
        parts.update(tokenizer_2=pipe.tokenizer_2, text_encoder_2=encoders[1])
    twin = Model(pipeline=SimpleNamespace(**parts), family=model.family, source=model.source,
                 prediction_type=model.prediction_type)
    return twin, first_ids


COUNTED_STEPS = 256  # the most step counts `step_bytes` keeps (a few hundred bytes each)
_counted: dict = {}  # (`_step_key`) -> bytes, oldest first


def _module_key(module, modes: bool = True) -> str:
    """What a meta-device module's step depends on: its class and config, and each parameter's name, shape, dtype
    and whether it learns (the learned rows' count among them), and with `modes` each submodule's training mode
    (dropout); as the SHA-256 of their text (a full-size UNet's is ~100 KB)."""
    config = (module if hasattr(module, "to_json_string") else module.config).to_json_string()  # (diffusers', HF's)
    described = repr((type(module), config,
                      [(name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in module.named_parameters()],
                      [m.training for m in module.modules()] if modes else None))
    return hashlib.sha256(described.encode()).hexdigest()


def _step_key(twin, first_ids, batch, resolution, checkpointing, clip_skip, max_token_length) -> tuple:
    """Everything `step_bytes`'s count depends on: the twin's parts (`_module_key`), its tokenizers' ids and
    lengths, noise schedule and prediction type, the step's settings, torch's default dtype and whether it keeps
    gradients, and the loss and attention code the step runs (a test may swap them)."""
    from . import losses

    pipe = twin.pipeline
    encoders = tuple((_module_key(te), type(tok), tok.bos_token_id, tok.eos_token_id, tok.model_max_length)
                     for _, tok, te in twin.encoders)
    # (the UNet's modes are the step's own: set from `checkpointing`)
    return (_module_key(twin.unet, modes=False), encoders, pipe.scheduler.to_json_string(), twin.prediction_type,
            pipe.vae_scale_factor, tuple(first_ids), batch, sides(resolution), checkpointing, clip_skip,
            max_token_length, torch.get_default_dtype(), torch.is_grad_enabled(), losses.diffusion_loss,
            fused_attention)


def step_bytes(twin, first_ids: list[int], batch: int, resolution: int | tuple[int, int],
               checkpointing: bool = False, clip_skip: int = 1, max_token_length: int = 75) -> int:
    """The most bytes a training step of `batch` samples at `resolution` (a square's side, or (W, H): --resolution
    WIDTHxHEIGHT) (forward, loss, backward to the learned vectors) holds at once beyond what the run holds between
    steps, on a meta-device model (`meta_twin`); with `max_token_length` 150 or 225 (--max-token-length) each
    caption is its 2 or 3 chunks, as the trainer's.

    Each count (a second or more on a full-size model) is kept for the process, for any twin of the same model and
    settings (`_step_key`): working out what fits asks for the same batches again (without and with checkpointing,
    and each time a run runs out of memory in a notebook). The latest `COUNTED_STEPS` counts are kept."""
    key = _step_key(twin, first_ids, batch, resolution, checkpointing, clip_skip, max_token_length)
    if key not in _counted:
        if len(_counted) >= COUNTED_STEPS:
            del _counted[next(iter(_counted))]
        _counted[key] = _step_peak(twin, first_ids, batch, resolution, checkpointing, clip_skip, max_token_length)
    return _counted[key]


def _step_peak(twin, first_ids, batch, resolution, checkpointing, clip_skip, max_token_length) -> int:
    """`step_bytes`'s count, run on the meta device."""
    from .models import xl_time_ids
    from .losses import diffusion_loss

    unet = twin.unet
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # (as the trainer: diffusers checkpoints only in training mode)
    else:
        unet.disable_gradient_checkpointing()
        unet.eval()
    width, height = sides(resolution)
    scale = twin.pipeline.vae_scale_factor
    scheduler = twin.noise_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to("meta")
    with LiveMemory() as live, fused_attention():
        # (B, C, H/f, W/f), fp32 as the trainer's
        latents = torch.zeros(batch, unet.config.in_channels, height // scale, width // scale, device="meta")
        timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
        ids = []
        for (_, tok, _), first in zip(twin.encoders, first_ids):
            row = [tok.bos_token_id, first] + [tok.eos_token_id] * (tok.model_max_length - 2)
            chunks = max_token_length // (tok.model_max_length - 2)  # (kohya's, `batches.long_caption_ids`)
            ids.append(torch.tensor([row * chunks] * batch, device="meta"))
        time_ids = None
        if twin.is_xl:
            size = torch.tensor([[height, width]] * batch)  # (SDXL's time ids are (h, w))
            time_ids = xl_time_ids(size, torch.zeros(batch, 2), size).to("meta")
        diffusion_loss(twin, scheduler, latents, torch.zeros_like(latents), timesteps, ids, time_ids=time_ids,
                       clip_skip=clip_skip).mean().backward()
    return live.peak


def largest_batch(step: Callable[[int], int], room: int, limit: int = 4096) -> int:
    """The largest batch whose step fits in `room` bytes (0 if not even batch 1), `step(batch)` being its bytes,
    each allocation in the caching allocator's blocks (RESERVE). A step's memory grows linearly with the batch
    (SD 1.5: to 0.1%), so two batches give the line, and the batch it puts at the edge is checked; where the line
    misses, the edge is found by doubling the stride away from its guess, then halving: at most about twice
    log2(`limit`) batches, each a second or more of work on a full-size model.

    >>> largest_batch(lambda b: 100 + 10 * b, room=int(200 * RESERVE))
    10
    """
    step = functools.lru_cache(maxsize=None)(step)  # (each batch worked out once: a second each on SD 1.5)

    def fits(batch: int) -> bool:
        return step(batch) * RESERVE <= room

    if not fits(1):
        return 0
    one, two = step(1), step(2)
    per = max(1, two - one)
    guess = max(1, min(limit, int((room / RESERVE - one) // per) + 1))
    # a batch that fits (low) and one above it that does not (high), found 1, 2, 4, 8, ... batches from the guess
    low, high, away = (guess, None, 1) if fits(guess) else (None, guess, 1)
    while high is None:
        if low == limit:
            return limit
        nearer = min(limit, guess + away)
        low, high = (nearer, None) if fits(nearer) else (low, nearer)
        away *= 2
    while low is None:
        nearer = max(1, guess - away)  # (batch 1 fits: checked)
        low, high = (nearer, high) if fits(nearer) else (None, nearer)
        away *= 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
