"""Does torch.compile keep the UNet's gradients right on this machine? Run before timing the compile levers.

    python -m benchmarks.compile_check --arch sd15 --compile unet            # on the GPU, bf16
    python -m benchmarks.compile_check --arch tiny --compile unet            # anywhere

It compiles a frozen UNet of the architecture as `textinv train --compile` does and runs the trainer's own check
(`textinv.train.check_compiled_unet`): the output and the gradient sent back to the text conditioning, compiled vs
plain, on inputs of a training step's shapes. torch 2.13's CPU inductor fails it for `--compile unet` (zero gradients
through the frozen up-blocks); the trainer then drops the compile with a warning.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from textinv.models import Model
from textinv.speed import check_compiled_unet, speed_up_unet, unet_example
from textinv.train import resolve_precision

from .architectures import ARCHITECTURES, build


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny", choices=ARCHITECTURES)
    p.add_argument("--compile", default="unet", choices=("blocks", "unet"))
    p.add_argument("--mode", default="default", help="torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = build(args.arch, device, resolve_precision(args.precision, torch.device(device)))
    model = Model(pipeline=pipe, family="sdxl" if "xl" in args.arch else "sd1", source="check",
                  prediction_type="epsilon")
    example = unet_example(model, args.batch, (4, pipe.unet.config.sample_size, pipe.unet.config.sample_size))
    speed_up_unet(pipe.unet, args.compile, args.mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        kept = check_compiled_unet(pipe.unet, example)
    print(f"torch {torch.__version__} on {device}, {args.arch}, --compile {args.compile} --compile-mode {args.mode}: "
          + ("compiled UNet matches the plain one" if kept else f"WRONG, training falls back: {caught[-1].message}"))
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
