"""The least time a GPU could spend on a textual-inversion step, op by op: each op's arithmetic and memory traffic
against the card's peak FLOP rate and bandwidth (a roofline), summed by class, worked out without a GPU.

    python -m benchmarks.step_roofline --arch sd15 --batch 32          # SD 1.5 at 512x512, bf16, H200 figures
    python -m benchmarks.step_roofline --arch sd15 --batch 1 8 32 --no-text
    python -m benchmarks.step_roofline --arch tiny --batch 2           # (seconds: for tests)

The step is `benchmarks.step_overhead`'s (text encoder with a learned offset on its token embeddings, UNet, MSE
loss, backward to the offset: frozen weights, no weight gradients), run on PyTorch's `meta` device in bf16 (shapes
only, no arithmetic: SD 1.5 at batch 32 takes a second), attention as FlashAttention
(`textinv.memory.fused_attention`, as the GPU runs it in bf16). For each op that launches a kernel
(`step_ops.NO_KERNEL` and allocations aside):
- FLOPs from PyTorch's own formulas (`torch.utils.flop_counter`'s registry, the one `FlopCounterMode` uses): 2*M*K*N
  a matmul; a convolution_backward only the gradients its output_mask asks for (here the input's alone);
  FlashAttention 4*B*H*Lq*Lk*D forward and 2.5x that backward (it recomputes the scores: 5 matmuls to the
  forward's 2); every other op 0;
- bytes: every tensor it reads (its inputs, a broadcast dimension once) and writes (its outputs), each once: the
  least traffic, as if nothing were read twice or spilled;
- its floor: max(FLOPs / peak FLOP rate, bytes / bandwidth). An op whose bytes set its floor is bandwidth-bound.
The floors add up to a time no GPU at those figures can beat for these kernels; it is not a prediction of their
times (real kernels reach a fraction of either peak, and small ones are set by their launch and ramp-up).
"""

from __future__ import annotations

import argparse
import collections
import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from .step_ops import NO_KERNEL

PEAK_TFLOPS = 989.0  # H200 SXM (as H100 SXM): dense bf16 tensor-core peak
ISSUE_TFLOPS = 790.0  # issue 4's practical bf16 figure, the one `train_speed` reports against
BANDWIDTH_TBS = 4.8  # H200 HBM3e

# allocations launch nothing; ops that overwrite their first argument do not read it
ALLOCATION = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided"}
WRITE_ONLY = {"aten.copy_", "aten.fill_", "aten.zero_"}

CLASSES = ("matmul", "convolution", "attention", "normalisation", "elementwise", "copies", "reductions", "other")
_CLASS_OF = {
    "matmul": {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm"},
    "convolution": {"aten.convolution", "aten.convolution_backward", "aten._convolution", "aten.cudnn_convolution"},
    "attention": {f"aten._scaled_dot_product_{kind}_attention{part}" for kind in ("flash", "efficient", "cudnn")
                  for part in ("", "_backward")},
    "normalisation": {"aten.native_group_norm", "aten.native_group_norm_backward", "aten.native_layer_norm",
                      "aten.native_layer_norm_backward"},
    "copies": {"aten._to_copy", "aten.clone", "aten.cat", "aten.copy_", "aten.stack"},
    "reductions": {"aten._softmax", "aten._softmax_backward_data", "aten._log_softmax", "aten.argmax"},
}


def op_class(func) -> str:
    """The class an ATen op's kernel belongs to (one of CLASSES), by name, then by PyTorch's own tags."""
    name = str(func.overloadpacket)
    for cls, names in _CLASS_OF.items():
        if name in names:
            return cls
    if torch.Tag.pointwise in func.tags:
        return "elementwise"
    if torch.Tag.reduction in func.tags:
        return "reductions"
    return "other"


def tensor_bytes(t: torch.Tensor) -> int:
    """The bytes a kernel must move to read or write all of `t`: a broadcast (stride-0) dimension counts once."""
    return math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0) * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


@dataclass
class OpCost:
    name: str  # "aten.mm"
    cls: str  # one of CLASSES
    flops: int
    bytes: int

    def floor(self, flops_per_s: float, bytes_per_s: float) -> float:
        """The least seconds this op's kernel can take: its arithmetic or its traffic, whichever is longer."""
        return max(self.flops / flops_per_s, self.bytes / bytes_per_s)

    def bandwidth_bound(self, flops_per_s: float, bytes_per_s: float) -> bool:
        return self.bytes / bytes_per_s > self.flops / flops_per_s


class Roofline(TorchDispatchMode):
    """Records the FLOPs and bytes of every kernel-launching op run inside it (`ops`, one OpCost each).

    >>> with Roofline() as roof:
    ...     _ = torch.ones(2, 3, 4, device="meta") @ torch.ones(4, 5, device="meta")
    >>> [(op.name, op.flops) for op in roof.ops if op.cls == "matmul"]
    [('aten.mm', 240)]
    """

    def __init__(self):
        super().__init__()
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if name in NO_KERNEL or name in ALLOCATION:
            return out
        formula = flop_registry.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        read = _tensors((args[1:] if name in WRITE_ONLY else args, kwargs))
        moved = sum(tensor_bytes(t) for t in read) + sum(tensor_bytes(t) for t in _tensors(out))
        self.ops.append(OpCost(name, op_class(func), int(flops), moved))
        return out


def step_roofline(arch: str = "sd15", batch: int = 32, with_text: bool = True) -> Roofline:
    """The ops of one textual-inversion step (`step_overhead.make_step`) of architecture `arch` at `batch`, on the
    meta device in bf16, attention as FlashAttention."""
    from textinv.memory import fused_attention

    from .architectures import build
    from .step_overhead import make_step

    pipe = build(arch, "meta", torch.bfloat16)
    step, _, hooks = make_step(pipe, batch, with_text, "meta", torch.bfloat16)
    try:
        with Roofline() as roof, fused_attention():
            step()
    finally:
        hooks.remove()
    return roof


@dataclass
class ClassSum:
    ops: int = 0
    flops: int = 0
    bytes: int = 0
    floor_s: float = 0.0  # at the peak FLOP rate
    floor_issue_s: float = 0.0  # at the issue's FLOP rate
    bandwidth_s: float = 0.0  # the part of floor_s from bandwidth-bound ops


def by_class(ops: list[OpCost], flops_per_s: float, bytes_per_s: float,
             issue_flops_per_s: float) -> dict[str, ClassSum]:
    """Per class (CLASSES' order, then "total"): op count, FLOPs, bytes and the sum of the ops' floors."""
    sums = {cls: ClassSum() for cls in (*CLASSES, "total")}
    for op in ops:
        floor = op.floor(flops_per_s, bytes_per_s)
        for s in (sums[op.cls], sums["total"]):
            s.ops += 1
            s.flops += op.flops
            s.bytes += op.bytes
            s.floor_s += floor
            s.floor_issue_s += op.floor(issue_flops_per_s, bytes_per_s)
            s.bandwidth_s += floor if op.bandwidth_bound(flops_per_s, bytes_per_s) else 0.0
    return sums


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("tiny", "tiny-xl", "sd15", "sdxl"), default="sd15")
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument("--text", action=argparse.BooleanOptionalAction, default=True,
                   help="run the text encoder with the learned offset (--no-text: the offset on the UNet's context)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak, TFLOP/s (H200: 989)")
    p.add_argument("--issue-tflops", type=float, default=ISSUE_TFLOPS,
                   help="a second FLOP rate for the floor's last column (issue 4's practical 790 TFLOP/s)")
    p.add_argument("--bandwidth-tbs", type=float, default=BANDWIDTH_TBS, help="memory bandwidth, TB/s (H200: 4.8)")
    p.add_argument("--top", type=int, default=8, help="also list the N ops (by name) with the largest floors")
    args = p.parse_args(argv)
    for name in ("peak_tflops", "issue_tflops", "bandwidth_tbs"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.batch) < 1:
        p.error(f"--batch must be 1 or more, got {min(args.batch)}")
    flops_per_s, issue_per_s, bytes_per_s = args.peak_tflops * 1e12, args.issue_tflops * 1e12, args.bandwidth_tbs * 1e12
    for batch in args.batch:
        roof = step_roofline(args.arch, batch, args.text)
        sums = by_class(roof.ops, flops_per_s, bytes_per_s, issue_per_s)
        total = sums["total"]
        print(f"# {args.arch}, batch {batch}, text encoder {'yes' if args.text else 'no'}, bf16: floor = per op "
              f"max(FLOP / {args.peak_tflops:g} TFLOP/s, bytes / {args.bandwidth_tbs:g} TB/s), summed", flush=True)
        print(f"{'class':<14} {'ops':>6} {'TFLOP':>8} {'GB':>8} {'floor ms':>9} {'bw-bound':>9} "
              f"{f'ms @{args.issue_tflops:g}':>9} {'of floor':>9}")
        for cls, s in sums.items():
            if cls == "total":
                print("-" * 78)
            print(f"{cls:<14} {s.ops:>6,} {s.flops / 1e12:>8.4g} {s.bytes / 1e9:>8.4g} {s.floor_s * 1e3:>9.4g} "
                  f"{s.bandwidth_s / max(s.floor_s, 1e-30):>9.0%} {s.floor_issue_s * 1e3:>9.4g} "
                  f"{s.floor_s / max(total.floor_s, 1e-30):>9.0%}")
        print(f"# {total.flops / batch / 1e12:.3f} TFLOP a sample; bandwidth-bound ops {total.bandwidth_s * 1e3:.2f} "
              f"of the {total.floor_s * 1e3:.2f} ms floor ({total.bandwidth_s / max(total.floor_s, 1e-30):.0%}); "
              f"the arithmetic alone at {args.peak_tflops:g} TFLOP/s {total.flops / flops_per_s * 1e3:.2f} ms",
              flush=True)
        if args.top:
            named: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0])
            for op in roof.ops:
                entry = named[op.name]
                entry[0] += 1
                entry[1] += op.floor(flops_per_s, bytes_per_s)
                entry[2] += op.bandwidth_bound(flops_per_s, bytes_per_s)
            for name, (n, floor, bound) in sorted(named.items(), key=lambda kv: -kv[1][1])[:args.top]:
                print(f"#   {floor * 1e3:8.2f} ms {n:5d}x  {name.removeprefix('aten.')} ({bound} bandwidth-bound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
