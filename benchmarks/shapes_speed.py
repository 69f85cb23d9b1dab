"""The bundled shapes model's CPU limits (issue 3): one 64x64 picture at 25 steps under 1 s, a training step at
batch 4 under 200 ms, on 2 cores.

    python -m benchmarks.shapes_speed                  # 1 and 2 threads
    python -m benchmarks.shapes_speed --threads 2 --pictures 10 --steps 300
    python -m benchmarks.shapes_speed --threads 1 --precision fp32 bf16   # the GPU's precision, on this CPU

A picture is drawn alone (batch 1, classifier-free guidance on, the model's own guidance), as `textinv generate -n 1`
does; the training step is the real trainer's (`textinv.train.train` on the demo's example pictures), timed after
a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "teal-star"


def picture_seconds(model, pictures: int, steps: int = 25) -> list[float]:
    from textinv.generate import render

    render(model, ["a red star"], [0], steps=2)  # warm-up
    times = []
    for i in range(pictures):
        start = time.perf_counter()
        render(model, ["a small red star on a blue background"], [i], steps=steps)
        times.append(time.perf_counter() - start)
    return times


def train_step_ms(model, steps: int, warmup: int, batch: int = 4, precision: str = "fp32") -> float:
    from textinv.config import TrainConfig
    from textinv.tokens import scratch_tokens
    from textinv.train import train

    stamps = []
    with tempfile.TemporaryDirectory(prefix="textinv-speed-") as tmp, scratch_tokens(model):  # (again next time)
        train(TrainConfig(images=str(EXAMPLES), token="<speed>", init="star", out=str(Path(tmp) / "run"),
                          steps=warmup + steps, batch=batch, save_every=0, sample_every=0, log_every=max(1, steps),
                          precision=precision),
              model=model, progress=False, on_step=lambda step: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[warmup - 1]) / steps * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pictures", type=int, default=5, help="pictures timed one by one")
    p.add_argument("--steps", type=int, default=200, help="training steps timed (after --warmup)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"],
                   help="the frozen weights' precision, pictures and training alike")
    args = p.parse_args(argv)

    from textinv.models import DTYPES, load_model

    print(f"torch {torch.__version__}")
    print("| precision | threads | one picture, s (median, min-max) | training step at batch 4, ms |")
    print("| --- | --- | --- | --- |")
    for precision in args.precision:
        model = load_model(args.model, dtype=DTYPES[precision])
        for threads in args.threads:
            torch.set_num_threads(threads)
            pics = picture_seconds(model, args.pictures, args.sample_steps)
            step = train_step_ms(model, args.steps, args.warmup, precision=precision)
            print(f"| {precision} | {threads} | {statistics.median(pics):.3f} ({min(pics):.3f}-{max(pics):.3f}) | "
                  f"{step:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
