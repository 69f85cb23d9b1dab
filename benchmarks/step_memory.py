"""The GPU memory a textual-inversion step needs, worked out without a GPU: which batch fits a 12 GiB or a 24 GiB card,
with and without gradient checkpointing (issue 4).

    python -m benchmarks.step_memory --arch sd15 --batch 1 8 32                # SD 1.5 at 512x512, bf16
    python -m benchmarks.step_memory --arch sdxl --batch 1 4 --resolution 1024
    python -m benchmarks.step_memory --arch sd15 --fit 12 24                   # the largest batch per card size

The trainer's own step (`textinv.train.diffusion_loss` on a model with a learned token installed as `textinv train`
installs it, then the backward) runs on PyTorch's `meta` device: shapes without memory or arithmetic, so SD 1.5 and
SDXL take a second or two on any machine. Every op's new outputs are counted while their storage lives
(`LiveMemory`), rounded up to 512 bytes as the CUDA caching allocator rounds them, and the most at once is the
step's peak; the frozen weights (UNet, text encoders and the VAE, which the trainer keeps on the device) are added.
Attention runs as the GPU runs it in bf16 (`flash_attention`: FlashAttention saves its inputs, output and
log-sum-exp for the backward, not the score matrix the meta device's own math path would keep).

Checked against the H200's measurements of the trainer (2026-12-04, BENCHMARKS.md, `torch.cuda.max_memory_allocated`
at batch 1 / 8 / 32: 2.83 / 7.95 / 25.48 GiB): see BENCHMARKS.md "GPU memory, worked out on the CPU". What the
count leaves out: the CUDA context (~0.5 GiB, outside PyTorch's figures), the caching allocator's reserve beyond
what is allocated (+1% to +4% on the H200), and library workspaces (cuBLAS, cuDNN).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .architectures import build

GiB = 2 ** 30
BLOCK = 512  # the CUDA caching allocator rounds every allocation up to this many bytes
CONTEXT_GIB = 0.5  # the CUDA context and kernels, which no PyTorch figure includes
RESERVE = 1.04  # reserved over allocated: the caching allocator's blocks, the most the H200 showed (batch 32)


def _storages(tree) -> list:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class LiveMemory(TorchDispatchMode):
    """Counts the bytes of the storages the ops inside it create, while those storages live: `now` and `peak`.

    A storage an op returns that one of its inputs already had (a view, an in-place op) is not new; a storage made
    before the block (weights, inputs) is never counted, even through a view of it.

    >>> with LiveMemory() as live:                       # doctest: +SKIP
    ...     step()
    >>> live.peak                                        # bytes
    """

    def __init__(self, block: int = BLOCK):
        super().__init__()
        self.block = block
        self.live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0

    def _freed(self, size: int) -> None:
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = WeakIdKeyDictionary({s: True for s in _storages((args, kwargs))})
        for storage in _storages(out):
            if storage in self.live or storage in inputs:
                continue
            size = math.ceil(storage.nbytes() / self.block) * self.block
            self.live[storage] = weakref.ref(storage, lambda _, size=size: self._freed(size))
            self.now += size
        self.peak = max(self.peak, self.now)
        return out


def _flash(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
           _plain=F.scaled_dot_product_attention):
    if attn_mask is not None or enable_gqa or query.dtype not in (torch.float16, torch.bfloat16):
        return _plain(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                      enable_gqa=enable_gqa)
    return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                scale=scale)[0]


@contextlib.contextmanager
def flash_attention():
    """`F.scaled_dot_product_attention` as a GPU runs it in half precision, FlashAttention, also on the meta device
    (whose own choice is the math path: the (B, heads, L, L) scores kept for the backward, 268 MB a sample and layer
    at SD 1.5's 64x64 level). Without a mask and in fp16/bf16 only; anything else runs as it would have."""
    plain = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash
    try:
        yield
    finally:
        F.scaled_dot_product_attention = plain


def weight_bytes(pipe) -> int:
    """The frozen weights the trainer keeps on the device: UNet, text encoder(s) and VAE, parameters and buffers."""
    modules = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return sum(math.ceil(t.numel() * t.element_size() / BLOCK) * BLOCK for m in modules if m is not None
               for t in [*m.parameters(), *m.buffers()])


def trainer_model(arch: str, dtype: torch.dtype = torch.bfloat16, device: str = "meta"):
    """A `textinv.models.Model` of the random-weight architecture on `device`, frozen, with one learned token
    installed in each text encoder as `textinv train` installs it. Returns (model, the token's ids per encoder)."""
    from textinv.models import Model
    from textinv.tokens import add_tokens, base_embedding, init_vectors, token_names

    pipe = build(arch, device, dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    model = Model(pipeline=pipe, family="sdxl" if "xl" in arch else "sd1", source=arch, prediction_type="epsilon")
    names = token_names("<concept>", 1)
    for _, tok, te in model.encoders:
        table = base_embedding(te).weight
        add_tokens(tok, te, names, init_vectors(table, [0], 1))
    return model, [tok.convert_tokens_to_ids(names)[0] for _, tok, _ in model.encoders]


def step_peak(model, token_ids: list[int], batch: int, resolution: int, checkpointing: bool = False) -> int:
    """The most bytes a training step (forward, loss, backward to the learned vectors) holds at once beyond the
    weights, on `model`'s device (the meta device: no arithmetic)."""
    from textinv.models import xl_time_ids
    from textinv.train import diffusion_loss

    unet = model.unet
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # (as the trainer: diffusers checkpoints only in training mode)
    else:
        unet.disable_gradient_checkpointing()
        unet.eval()
    device = next(unet.parameters()).device
    side = resolution // model.pipeline.vae_scale_factor
    scheduler = model.noise_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    with LiveMemory() as live, flash_attention():
        latents = torch.zeros(batch, unet.config.in_channels, side, side, device=device)  # (the trainer's: fp32)
        noise = torch.zeros_like(latents)
        timesteps = torch.zeros(batch, dtype=torch.long, device=device)
        ids = []
        for (_, tok, _), token in zip(model.encoders, token_ids):
            row = [tok.bos_token_id, token] + [tok.eos_token_id] * (tok.model_max_length - 2)
            ids.append(torch.tensor([row] * batch, device=device))
        time_ids = None
        if model.is_xl:
            time_ids = xl_time_ids(torch.tensor([[resolution, resolution]] * batch), torch.zeros(batch, 2),
                                   resolution).to(device)
        diffusion_loss(model, scheduler, latents, noise, timesteps, ids, time_ids=time_ids).mean().backward()
    return live.peak


def card_fits(allocated: float, card_gib: float) -> bool:
    """Whether a step whose PyTorch allocation peaks at `allocated` GiB fits a card of `card_gib` GiB: the caching
    allocator's reserve (RESERVE) and the CUDA context (CONTEXT_GIB) on top."""
    return allocated * RESERVE + CONTEXT_GIB <= card_gib


def largest_batch(peak_gib, card_gib: float, limit: int = 4096) -> int:
    """The largest batch whose step fits the card (0 if not even batch 1), `peak_gib(batch)` being the step's
    allocated peak with the weights; memory grows with the batch, so a doubling then a bisection finds it."""
    if not card_fits(peak_gib(1), card_gib):
        return 0
    low, high = 1, 2
    while high <= limit and card_fits(peak_gib(high), card_gib):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if card_fits(peak_gib(mid), card_gib) else (low, mid)
    return low


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "tiny-xl", "sd15", "sdxl"), default="sd15")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--resolution", type=int, help="pictures' side in pixels (default: the architecture's own)")
    p.add_argument("--fit", type=float, nargs="*", default=[12, 24], metavar="GIB",
                   help="card sizes in GiB to find the largest batch for (none: skip)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    model, token_ids = trainer_model(args.arch, dtype)
    resolution = args.resolution or model.resolution
    weights = weight_bytes(model.pipeline) / GiB
    print(f"{args.arch} at {resolution}x{resolution}, {args.precision}: frozen weights {weights:.2f} GiB "
          f"(UNet, text encoder(s), VAE); a card fits a step when allocated x {RESERVE} + {CONTEXT_GIB} GiB <= its size")
    print(f"{'checkpointing':<14} {'batch':>6} {'step GiB':>9} {'allocated GiB':>14}")
    for checkpointing in (False, True):
        def peak_gib(batch: int, checkpointing=checkpointing) -> float:
            return weights + step_peak(model, token_ids, batch, resolution, checkpointing) / GiB

        for batch in args.batch:
            total = peak_gib(batch)
            print(f"{'yes' if checkpointing else 'no':<14} {batch:>6} {total - weights:>9.2f} {total:>14.2f}",
                  flush=True)
        for card in args.fit:
            print(f"{'yes' if checkpointing else 'no':<14} largest batch in {card:g} GiB: "
                  f"{largest_batch(peak_gib, card)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
