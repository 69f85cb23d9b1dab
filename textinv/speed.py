"""The frozen UNet's speed levers (channels-last, regional or whole torch.compile, CUDA graphs through the compile
mode) and the check that a compiled UNet still computes what the plain one does.

Each lever is measured on its own by `benchmarks/train_speed.py` (see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib

import torch

from .errors import warn
from .models import Model


def speed_up_unet(unet, compile: str = "off", mode: str = "default", channels_last: bool = False) -> None:
    """Apply the frozen UNet's speed levers in place (each is measured on its own by benchmarks/train_speed.py).

    `channels_last` stores conv weights NHWC, so every activation after `conv_in` is NHWC too (what tensor-core
    convolutions want). `compile="blocks"` is diffusers' regional compilation: each repeated transformer block is
    compiled once and the code is shared, so compiling takes seconds; `"unet"` compiles the whole forward (longer
    compile, more fusion). `mode="reduce-overhead"` adds CUDA graphs, which is what small batches need.
    """
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile == "blocks":
        unet.compile_repeated_blocks(mode=mode)
    elif compile == "unet":
        unet.compile(mode=mode)


def unet_example(model: Model, batch: int, latent_shape, like: torch.Tensor | None = None, tokens: int = 77) -> dict:
    """Random UNet inputs of a training step's shapes (from a private generator: the run's RNG is untouched).
    `like`: a latent (4, h, w) whose memory layout the sample takes, as the training steps' UNet input takes the
    cached latents' (NHWC where oneDNN's VAE made them so, on the CPU): dynamo guards on strides too. `tokens`: the
    conditioning's length, 77, or 2 + --max-token-length with kohya's long captions (`losses.encode_captions`)."""
    unet = model.unet
    g = torch.Generator().manual_seed(0)
    device, dtype = unet.device, unet.dtype
    nhwc = like is not None and not like[None].is_contiguous() and like[None].is_contiguous(
        memory_format=torch.channels_last)
    sample = torch.randn(batch, *latent_shape, generator=g).to(device, dtype)
    example = {"sample": sample.contiguous(memory_format=torch.channels_last) if nhwc else sample,
               "timestep": torch.randint(0, 1000, (batch,), generator=g).to(device),
               "encoder_hidden_states": torch.randn(batch, tokens, unet.config.cross_attention_dim,
                                                    generator=g).to(device, dtype)}
    if model.is_xl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        example["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g).to(device, dtype),
                                        "time_ids": torch.full((batch, 6), 512.0).to(device, dtype)}
    return example


def _unet_and_input_gradient(unet, example: dict) -> tuple[torch.Tensor, ...]:
    """The UNet's output and the gradients it sends back to the text conditioning: the hidden states, and SDXL's
    pooled embedding (the second encoder's vectors learn through it too)."""
    context = example["encoder_hidden_states"].clone().requires_grad_(True)
    rest = {k: v for k, v in example.items() if k not in ("sample", "timestep", "encoder_hidden_states")}
    learned = [context]
    if "added_cond_kwargs" in rest:  # (requiring a gradient as in training: dynamo guards on that too)
        pooled = rest["added_cond_kwargs"]["text_embeds"].clone().requires_grad_(True)
        rest["added_cond_kwargs"] = {**rest["added_cond_kwargs"], "text_embeds": pooled}
        learned.append(pooled)
    # called as the training step calls it (`losses.diffusion_loss`: three positional arguments, the rest by name):
    # dynamo guards on how a compiled function is called, so keywords here would compile the UNet again at the
    # first step, and the graph checked would not be the one that trains
    out = unet(example["sample"], example["timestep"], context, **rest).sample
    out.float().pow(2).mean().backward()
    # (no gradient at all, as a compiler bug may leave it, is a zero one)
    grads = [torch.zeros_like(t, dtype=torch.float32) if t.grad is None else t.grad.float() for t in learned]
    return out.detach().float(), *grads


def uncompile(unet) -> list[tuple[torch.nn.Module, object]]:
    """Make every compiled module of `unet` run eagerly again; returns (module, compiled call) to put them back."""
    compiled = [(m, m._compiled_call_impl) for m in unet.modules() if getattr(m, "_compiled_call_impl", None)]
    for m, _ in compiled:
        m._compiled_call_impl = None
    return compiled


@contextlib.contextmanager
def uncompiled(unet):
    """`unet` runs eagerly inside the block, compiled again after it."""
    compiled = uncompile(unet)
    try:
        yield unet
    finally:
        _recompile(compiled)


def _recompile(compiled: list[tuple[torch.nn.Module, object]]) -> None:
    """Put back the compiled calls `uncompile` took away."""
    for m, call in compiled:
        m._compiled_call_impl = call


def check_compiled_unet(unet, example: dict) -> bool:
    """Run the compiled UNet and the same UNet uncompiled on `example`; if the output or the gradient it sends back
    to the text conditioning (all textual inversion learns from) differ beyond rounding, uncompile it with a
    warning. Seen with torch 2.13's CPU inductor and a whole-UNet compile: frozen up-blocks sent back zero
    gradients, which trains silently wrong. Returns whether the compiled UNet is kept."""
    fast = _unet_and_input_gradient(unet, example)
    compiled = uncompile(unet)
    plain = _unet_and_input_gradient(unet, example)
    errors = [((f - p).norm() / p.norm().clamp(min=1e-12)).item() for f, p in zip(fast, plain)]
    tolerance = 1e-3 if unet.dtype == torch.float32 else 5e-2
    if max(errors) <= tolerance:
        _recompile(compiled)
        return True
    warn(f"torch.compile changed the UNet's result (output {errors[0]:.1e}, gradient to the text "
         f"{max(errors[1:]):.1e} relative to the uncompiled UNet; allowed {tolerance:.0e}): a compiler bug "
         f"in torch {torch.__version__}. Training without --compile; try --compile blocks or another torch.",
         RuntimeWarning, stacklevel=2)
    return False
