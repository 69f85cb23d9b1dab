"""The GPU memory a textual-inversion step needs, worked out without a GPU: which batch fits a 12 GiB or a 24 GiB card,
with and without gradient checkpointing (issue 4).

    python -m benchmarks.step_memory --arch sd15 --batch 1 8 32                # SD 1.5 at 512x512, bf16
    python -m benchmarks.step_memory --arch sdxl --batch 1 4 --resolution 1024
    python -m benchmarks.step_memory --arch sd15 --fit 12 24                   # the largest batch per card size
    python -m benchmarks.step_memory --model path/to/model.safetensors --fit 8 # a model of your own
    python -m benchmarks.step_memory --arch sd15 --max-token-length 225        # kohya's long captions

The trainer's own step (`textinv.train.diffusion_loss` on a model with a learned token installed as `textinv train`
installs it, then the backward) runs on PyTorch's `meta` device: shapes without memory or arithmetic, so SD 1.5 and
SDXL take a second or two on any machine (`textinv.memory`: `meta_twin`, `step_bytes`). Every op's new outputs are
counted while their storage lives (`LiveMemory`), rounded up to 512 bytes as the CUDA caching allocator rounds them,
and the most at once is the step's peak; the frozen weights (UNet, text encoders and the VAE, which the trainer
keeps on the device) are added. Attention runs as the GPU runs it (`fused_attention`: FlashAttention saves its
inputs, output and log-sum-exp for the backward, not the score matrix the meta device's own math path would keep).
`textinv train` works out the same when a GPU runs out of memory in a step, to say which batch fits.

Checked against the H200's measurements of the trainer (2026-12-04, BENCHMARKS.md, `torch.cuda.max_memory_allocated`
at batch 1 / 8 / 32: 2.83 / 7.95 / 25.48 GiB): see BENCHMARKS.md "GPU memory, worked out on the CPU". What the
count leaves out: the CUDA context (~0.5 GiB, outside PyTorch's figures), the caching allocator's reserve beyond
what is allocated (+1% to +4% on the H200), and library workspaces (cuBLAS, cuDNN).
"""

from __future__ import annotations

import argparse

import torch

from textinv.memory import RESERVE, in_blocks, largest_batch, meta_twin, step_bytes

from .architectures import build
from .step_overhead import text_encoders

GiB = 2 ** 30
CONTEXT_GIB = 0.5  # the CUDA context and kernels, which no PyTorch figure includes


def weight_bytes(pipe) -> int:
    """The frozen weights the trainer keeps on the device: UNet, text encoder(s) and VAE, parameters and buffers."""
    return sum(in_blocks(t.numel() * t.element_size()) for m in (pipe.unet, pipe.vae, *text_encoders(pipe))
               for t in [*m.parameters(), *m.buffers()])


def trainer_model(arch: str, dtype: torch.dtype = torch.bfloat16):
    """The random-weight architecture on the meta device, and its twin with one learned token installed as `textinv
    train` installs it (`textinv.memory.meta_twin`). Returns (the architecture's pipeline, the twin, the token's id
    per encoder)."""
    from textinv.models import Model

    pipe = build(arch, "meta", dtype)
    model = Model(pipeline=pipe, family="sdxl" if "xl" in arch else "sd1", source=arch, prediction_type="epsilon")
    return (pipe, *meta_twin(model))


def card_fits(allocated: float, card_gib: float) -> bool:
    """Whether a step whose PyTorch allocation peaks at `allocated` GiB fits a card of `card_gib` GiB: the caching
    allocator's reserve (RESERVE) and the CUDA context (CONTEXT_GIB) on top."""
    return allocated * RESERVE + CONTEXT_GIB <= card_gib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "tiny-xl", "sd15", "sdxl"), default="sd15")
    p.add_argument("--model", help="a model of your own instead (a diffusers folder, .safetensors file or hub id, as "
                   "`textinv train --model` takes it): its architecture, and its weights' size in --precision")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--resolution", type=int, help="pictures' side in pixels (default: the architecture's own)")
    p.add_argument("--fit", type=float, nargs="*", default=[12, 24], metavar="GIB",
                   help="card sizes in GiB to find the largest batch for (none: skip)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--max-token-length", type=int, choices=(75, 150, 225), default=75,
                   help="the captions' tokens, as `textinv train --max-token-length` reads them (150 and 225: two or "
                        "three passes of the text encoders a sample, and 152 or 227 states for the UNet)")
    args = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    if args.model:  # (loaded on the CPU for its configs and its weights' size; the step runs on its meta twin)
        from textinv.models import load_model

        model = load_model(args.model, dtype=dtype, device="cpu")
        pipe, (twin, token_ids), name = model.pipeline, meta_twin(model), model.source
    else:
        pipe, twin, token_ids = trainer_model(args.arch, dtype)
        name = args.arch
    resolution = args.resolution or twin.resolution
    weights = weight_bytes(pipe) / GiB
    tokens = f", captions of {args.max_token_length} tokens" if args.max_token_length != 75 else ""
    print(f"{name} at {resolution}x{resolution}, {args.precision}{tokens}: frozen weights {weights:.2f} GiB "
          f"(UNet, text encoder(s), VAE); a card fits a step when allocated x {RESERVE} + {CONTEXT_GIB} GiB <= its "
          f"size")
    print(f"{'checkpointing':<14} {'batch':>6} {'step GiB':>9} {'allocated GiB':>14}")
    for checkpointing in (False, True):
        def peak_gib(batch: int, checkpointing=checkpointing) -> float:
            return weights + step_bytes(twin, token_ids, batch, resolution, checkpointing,
                                        max_token_length=args.max_token_length) / GiB

        for batch in args.batch:
            total = peak_gib(batch)
            print(f"{'yes' if checkpointing else 'no':<14} {batch:>6} {total - weights:>9.2f} {total:>14.2f}",
                  flush=True)
        for card in args.fit:
            print(f"{'yes' if checkpointing else 'no':<14} largest batch in {card:g} GiB: "
                  f"{largest_batch(lambda b: peak_gib(b) * GiB, int((card - CONTEXT_GIB) * GiB))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
