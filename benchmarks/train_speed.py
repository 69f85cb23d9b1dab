"""Training speed of the real trainer, side by side with a reference-like mode of it.

    python -m benchmarks.train_speed --arch sd15 --batch 1 8 32            # on a GPU
    python -m benchmarks.train_speed --arch tiny --batch 1 4 --steps 5     # anywhere (CI runs a fast version)

For each batch size it times `textinv.train.train` (warm-up steps, then timed steps) in two modes:
- `textinv`: our path (cached latents, frozen weights in the chosen precision, only the new vectors trained);
- `reference`: what the diffusers example does (VAE encoder every step, the whole vocabulary table in AdamW with
  the old rows copied back, fp32 text encoder), so every speedup is a ratio measured on one machine in one run.
It prints samples/s, ms/step, peak GPU memory and, for sd15 on a GPU, the fraction of the bf16 limit.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from textinv.config import TrainConfig
from textinv.models import Model
from textinv.train import train

from .architectures import FLOP_PER_SAMPLE, build

PEAK_BF16_FLOPS = {"H100": 790e12, "H200": 790e12}  # dense bf16, as issue 4 uses


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_mode(pipe, mode: str, batch: int, warmup: int, steps: int, precision: str, device: str, work: Path,
              resolution: int | None, concepts: int = 1) -> dict:
    """Train `warmup + steps` steps of the real trainer; time the last `steps`."""
    stamps: list[float] = []

    def on_step(step: int) -> None:
        if step > warmup:
            _sync(device)
            stamps.append(time.perf_counter())
        elif step == warmup:
            _sync(device)
            stamps.append(time.perf_counter())

    tokenizer, te_dtype = copy.deepcopy(pipe.tokenizer), pipe.text_encoder.dtype
    model = Model(pipeline=pipe, family="sd1", source="benchmark", prediction_type="epsilon")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tag = f"{mode}-{batch}-{concepts}"
    one = dict(images=str(work / "images"), token=f"<bench-{tag}>", init="dog")
    if concepts > 1:  # K concepts in one run (each with the same pictures: compute is what is measured)
        one = dict(concepts=[f"{work / 'images'}=<bench-{tag}-{k}>=dog" for k in range(concepts)])
    config = TrainConfig(**one, out=str(work / tag), steps=warmup + steps, batch=batch, save_every=0,
                         sample_every=0, log_every=max(warmup + steps, 1), precision=precision, resolution=resolution,
                         reference_like=(mode == "reference"), overwrite=True)
    train(config, model=model, progress=False, on_step=on_step)
    seconds = (stamps[-1] - stamps[0]) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    # undo what training added, so the next mode starts from the same pipeline
    emb = pipe.text_encoder.get_input_embeddings()
    pipe.text_encoder.set_input_embeddings(emb.base)
    emb.base.weight.requires_grad_(False)
    pipe.tokenizer = tokenizer
    pipe.text_encoder.to(te_dtype)
    return {"mode": mode, "batch": batch, "ms_per_step": seconds * 1e3, "samples_per_s": concepts * batch / seconds,
            "peak_gib": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny", choices=("tiny", "sd15"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--modes", nargs="+", default=["textinv", "reference"], choices=("textinv", "reference"))
    p.add_argument("--resolution", type=int, default=None, help="default: the architecture's (512 for sd15)")
    p.add_argument("--concepts", type=int, default=1,
                   help="also time K concepts in one run against K separate runs (concepts per hour)")
    p.add_argument("--run-steps", type=int, default=3000, help="steps of a whole run, for concepts per hour")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    from textinv.train import resolve_precision

    dtype = resolve_precision(args.precision, torch.device(device))
    started = time.perf_counter()
    pipe = build(args.arch, device, dtype)
    _sync(device)
    load_s = time.perf_counter() - started  # building stands in for loading a checkpoint
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"# train_speed {datetime.date.today()} arch={args.arch} device={name} dtype={dtype} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'mode':<10} {'batch':>5} {'ms/step':>9} {'samples/s':>10} {'peak GiB':>9} {'of limit':>9}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _images(work / "images")
        for batch in args.batch:
            for mode in args.modes:
                r = time_mode(pipe, mode, batch, args.warmup, args.steps, args.precision, device, work,
                              args.resolution)
                peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
                limit = (peak_flops / FLOP_PER_SAMPLE[args.arch]) if (peak_flops and args.arch in FLOP_PER_SAMPLE) else None
                frac = f"{r['samples_per_s'] / limit:.1%}" if limit else "-"
                print(f"{mode:<10} {batch:>5} {r['ms_per_step']:>9.1f} {r['samples_per_s']:>10.2f} "
                      f"{r['peak_gib']:>9.2f} {frac:>9}", flush=True)
                results.append(r)
            by_mode = {r["mode"]: r for r in results if r["batch"] == batch}
            if len(by_mode) == 2:
                print(f"{'':<10} {batch:>5} speedup over reference: "
                      f"{by_mode['textinv']['samples_per_s'] / by_mode['reference']['samples_per_s']:.2f}x")
        if args.concepts > 1:
            print(f"# {args.concepts} concepts in one run vs {args.concepts} separate runs of {args.run_steps} steps "
                  f"(model load {load_s:.1f} s counted once per run)")
            for batch in args.batch:
                single = next(r for r in results if r["mode"] == "textinv" and r["batch"] == batch)
                joint = time_mode(pipe, "textinv", batch, args.warmup, args.steps, args.precision, device, work,
                                  args.resolution, concepts=args.concepts)
                separate_s = args.concepts * (load_s + args.run_steps * single["ms_per_step"] / 1e3)
                joint_s = load_s + args.run_steps * joint["ms_per_step"] / 1e3
                print(f"concepts {batch:>5} {joint['ms_per_step']:>9.1f} ms/step joint; concepts per hour: joint "
                      f"{3600 * args.concepts / joint_s:.1f} vs separate {3600 * args.concepts / separate_s:.1f} "
                      f"({separate_s / joint_s:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
