"""How many ATen ops a training step dispatches: about one GPU kernel each, so on a GPU whose host launches a
kernel in ~30 us this predicts the time a launch-bound step takes, without a GPU.

    python -m benchmarks.step_ops                       # SD 1.5's textual-inversion step and the shapes UNet's
    python -m benchmarks.step_ops --ti-arch tiny        # (a tiny model instead of SD 1.5's)

- `ti`: the textual-inversion step of `benchmarks.step_overhead` (text encoder with a learned offset, UNet, loss,
  backward to the offset) at SD 1.5's size, run on PyTorch's `meta` device: shapes only, no memory, no arithmetic,
  so the full-size step is counted in seconds on any machine. On an H200 (2026-12-04) torch.profiler counted 2,794
  kernels in that step with the text encoder and 2,327 without; this count gives 2,854 and 2,123 (within 10%: off
  the GPU, attention takes SDPA's math path, casts and batched matmuls, where the GPU runs flash kernels).
- `shapes`: one step of the shapes model's UNet pretraining (`textinv.shapes.pretrain.train_unet`'s body: text
  encoder, UNet, loss, backward, gradient clipping, AdamW as on a GPU (foreach), the EMA), on the CPU at a small
  batch (the count does not depend on the batch), at the UNet sizes `benchmarks.gpu_session` trains. A foreach op
  launches a few kernels (its tensors in chunks), so the optimizer's and the EMA's rows count low.
`computing` leaves out views, detaches and reads of CPU scalars, which launch nothing.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that launch no kernel: views and aliases, and `.item()` of a CPU scalar (AdamW's step counters)
NO_KERNEL = {"aten.detach", "aten.view", "aten.t", "aten.transpose", "aten._unsafe_view", "aten._local_scalar_dense",
             "aten.expand", "aten.permute", "aten.reshape", "aten.as_strided", "aten.slice", "aten.select",
             "aten.unsqueeze", "aten.squeeze", "aten.alias", "aten.split", "aten.split_with_sizes", "aten.chunk",
             "aten.unbind", "aten.lift_fresh", "profiler._record_function_enter_new",
             "profiler._record_function_exit"}


class OpCount(TorchDispatchMode):
    """Counts every ATen op dispatched inside it, by name (`counts`)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def computing(self) -> int:
        return sum(n for name, n in self.counts.items() if name not in NO_KERNEL)


def counted(run) -> OpCount:
    with OpCount() as count:
        run()
    return count


def ti_step_ops(arch: str = "sd15") -> dict[str, OpCount]:
    """The textual-inversion step's ops, with and without the text encoder ({"with text": ..., "without": ...})."""
    from .architectures import build
    from .step_overhead import make_step

    device = "cpu" if arch.startswith("tiny") else "meta"
    dtype = torch.bfloat16 if device == "meta" else torch.float32
    pipe = build(arch, device, dtype)
    out = {}
    for with_text in (True, False):
        step, _, hook = make_step(pipe, 1, with_text, device, dtype)
        try:
            out["with text" if with_text else "without"] = counted(step)
        finally:
            hook.remove()
    return out


def shapes_step_ops(settings: dict) -> dict[str, OpCount]:
    """One shapes-UNet pretraining step's ops by part: forward, backward, clip, adamw, ema."""
    from diffusers import DDPMScheduler

    from textinv.shapes import pretrain
    from textinv.losses import denoising_loss

    config = pretrain.PretrainConfig(**settings, unet_batch=2)
    tokenizer = pretrain.build_tokenizer_for_world()
    text_encoder = pretrain.build_text_encoder(config, tokenizer).train()
    unet = pretrain.build_unet(config).train()
    scheduler = DDPMScheduler.from_config(pretrain.build_scheduler(config).config)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    # foreach: AdamW's default for CUDA tensors (on CPU ones it steps each tensor in turn: 4,788 ops here)
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=config.weight_decay, foreach=True)
    ema = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    noise, t = torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (2,), generator=g)
    ids = torch.randint(0, len(tokenizer), (2, tokenizer.model_max_length), generator=g)
    losses = []

    def forward():
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        losses.append(denoising_loss(scheduler, pred, latents, noise, t, config.prediction_type,
                                     config.min_snr_gamma, plus_one=True).mean())

    def backward():
        opt.zero_grad(set_to_none=True)
        losses[-1].backward()

    def ema_update():
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - config.ema_decay)

    parts = {"forward": forward, "backward": backward,
             "clip": lambda: torch.nn.utils.clip_grad_norm_(params, config.grad_clip), "adamw": opt.step,
             "ema": ema_update}
    for run in parts.values():  # (once uncounted: AdamW makes its state at its first step)
        run()
    return {name: counted(run) for name, run in parts.items()}


def _row(name: str, count: OpCount, top: int) -> str:
    most = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in count.counts.most_common()
                     if op not in NO_KERNEL)
    most = ", ".join(most.split(", ")[:top])
    return f"{name:<22} {count.computing:>9,} {sum(count.counts.values()):>9,}   {most}"


def main(argv=None) -> int:
    from textinv.shapes.pretrain import parse_setting

    from .gpu_session import SHAPES_UNET

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ti-arch", choices=("sd15", "sdxl", "tiny", "tiny-xl"), default="sd15")
    p.add_argument("--top", type=int, default=6, help="the most frequent computing ops listed per row")
    args = p.parse_args(argv)
    settings = dict(parse_setting(setting) for setting in SHAPES_UNET)  # (as `pretrain --set` reads them)
    print(f"{'step, part':<22} {'computing':>9} {'all ops':>9}   most frequent computing ops")
    for name, count in ti_step_ops(args.ti_arch).items():
        print(_row(f"ti {args.ti_arch}, {name}", count, args.top), flush=True)
    parts = shapes_step_ops(settings)
    for name, count in parts.items():
        print(_row(f"shapes, {name}", count, args.top), flush=True)
    total = sum(c.computing for c in parts.values())
    print(f"{'shapes, whole step':<22} {total:>9,} {sum(sum(c.counts.values()) for c in parts.values()):>9,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
