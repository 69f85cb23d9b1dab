"""Training speed of the real trainer: our path, a reference-like mode of it, and each speed lever on its own.

    python -m benchmarks.train_speed --arch sd15 --batch 1 8 32                       # on a GPU
    python -m benchmarks.train_speed --arch sd15 --batch 1 8 --modes textinv channels-last compile-blocks cudagraphs
    python -m benchmarks.train_speed --arch sd15 --batch 32 --modes fast --wall-samples 12000   # load + a whole run
    python -m benchmarks.train_speed --arch sdxl --batch 1 4 --modes textinv fast               # SDXL at 1024
    python -m benchmarks.train_speed --arch tiny --batch 1 4 --steps 5                # anywhere (CI runs this)

Each mode is `textinv.train.train` with a few `TrainConfig` settings (the MODES table below), timed over warm-up
steps then timed steps, side by side in one process on one pipeline, so every figure is a ratio on one machine:
- `textinv`: our path (cached latents, frozen weights in the chosen precision, only the new vectors trained);
- `reference`: what the diffusers example does (VAE encoder every step, the whole vocabulary table in AdamW with
  the old rows copied back, fp32 text encoder);
- one mode per lever on top of ours: channels-last, regional or whole-UNet torch.compile, CUDA graphs (`graphs`:
  the step captured with `--cuda-graphs`; `cudagraphs`: inductor's, after compiling the whole UNet), all of them
  (`fast`), and gradient checkpointing (for memory); `buckets` times --buckets on pictures of three proportions
  (3:2, 2:3, 1:1: a step's samples go through the UNet in one call per shape).
It prints ms/step, samples/s, peak GPU memory (allocated and reserved by PyTorch), the fraction of the bf16 limit,
the first step's time (setup and compiling), which measured batch fits in 12 and 24 GiB, and with `--wall-samples`
the wall time of a whole run of `textinv train` in a new process on the model saved to disk, from the process's
start to its exit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from textinv.config import TrainConfig
from textinv.models import Model
from textinv.speed import uncompile
from textinv.tokens import scratch_tokens
from textinv.train import resolve_precision, train

from .architectures import ARCHITECTURES, FLOP_PER_SAMPLE, RESOLUTION, build

# issue 4's practical bf16 limit of the SXM parts (their dense bf16 peak is ~989 TFLOP/s, the H200's the same);
# the H100 PCIe and NVL are slower parts (lower clocks and power), so no fraction is given for them
PEAK_BF16_FLOPS = {"H100": 790e12, "H200": 790e12}
SLOWER_PARTS = ("PCIe", "NVL")
CARDS_GIB = (12, 24)  # consumer cards: which batch fits

MODES = {
    "textinv": {},
    "reference": {"reference_like": True},
    "channels-last": {"channels_last": True},
    "compile-blocks": {"compile": "blocks"},
    "compile-unet": {"compile": "unet"},
    "cudagraphs": {"compile": "unet", "compile_mode": "reduce-overhead"},  # (inductor's graphs, after compiling)
    "graphs": {"cuda_graphs": True},  # (--cuda-graphs: the step captured by PyTorch as it runs, no compiling)
    "graphs-blocks": {"cuda_graphs": True, "compile": "blocks"},
    "fast": {"compile": "unet", "compile_mode": "reduce-overhead", "channels_last": True},
    "checkpointing": {"gradient_checkpointing": True},
    "cudnn-benchmark": {},  # cuDNN times its convolution algorithms at the first step's shapes (BACKEND_FLAGS)
    "buckets": {"buckets": True},  # on pictures of three proportions: one UNet call per shape in a step
}
"""Benchmark modes: `TrainConfig` settings on top of our default path."""

BACKEND_FLAGS = {"cudnn-benchmark": (torch.backends.cudnn, "benchmark", True)}
"""Modes that are a PyTorch backend flag rather than a setting: (module, attribute, value), set for the mode's run
and put back after it. To be measured before it becomes a setting."""


def _images(folder: Path, n: int = 4, size: int = 512, mixed: bool = False) -> Path:
    """`n` random pictures: squares, or (`mixed`) in turn 3:2, 2:3 and 1:1, which train at three buckets."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = [(size * 3 // 2, size), (size, size * 3 // 2), (size, size)] if mixed else [(size, size)]
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _images_of(work: Path, mode: str) -> Path:
    """The pictures a mode trains on: those of three proportions for `buckets`, squares for the rest."""
    return work / ("images-mixed" if MODES[mode].get("buckets") else "images")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_unet(unet) -> None:
    """Undo the UNet levers a mode applied (compiled modules, NHWC weights, checkpointing) for the next mode."""
    uncompile(unet)
    unet.to(memory_format=torch.contiguous_format)
    if unet.is_gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    unet.eval()
    torch._dynamo.reset()


def run_config(work: Path, mode: str, batch: int, steps: int, concepts: int = 1, **settings) -> TrainConfig:
    tag = f"{mode}-{batch}-{concepts}"
    images = _images_of(work, mode)
    one = dict(images=str(images), token=f"<bench-{tag}>", init="dog")
    if concepts > 1:  # K concepts in one run (each with the same pictures: compute is what is measured)
        one = dict(concepts=[f"{images}=<bench-{tag}-{k}>=dog" for k in range(concepts)])
    return TrainConfig(**one, out=str(work / tag), steps=steps, batch=batch, save_every=0, sample_every=0,
                       log_every=max(steps, 1), overwrite=True, **MODES[mode], **settings)


def _counts() -> tuple[int, int]:
    """(graphs dynamo has compiled, inductor's CUDA-graph skips) so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]


def time_mode(model: Model, mode: str, batch: int, warmup: int, steps: int, precision: str, device: str, work: Path,
              resolution: int | None, concepts: int = 1, profile: bool = False) -> dict:
    """Train `warmup + steps` steps of the real trainer in `mode`; time the last `steps`.

    The device is synchronized only where the clock is read: at the end of the first step (untimed: setup, latent
    caching and compiling are in it), of the warm-up and of the last step. A sync inside the timed steps would
    drain the queue each step, so the host's launches of the next step could not overlap the GPU's work, which is
    not how the trainer runs. Peak memory is that of the training steps: the stats are reset after the first step,
    and the allocator's cached blocks freed before, so the one-off caching of the pictures' latents (the VAE encoder
    at full resolution) and the compile check count in neither the allocated nor the reserved peak. Any error
    is returned as the row's "error", so one failing mode or batch does not stop the others (a GPU lease is short),
    and its traceback goes to stderr, so the lease's log says where it failed, not only its first line.
    `profile`: the host's time from the call to the end of the first step, by operation (`first_step_profile`), is
    printed: what the first step's seconds are, beyond the steps' own time."""
    cuda = device.startswith("cuda")
    stamps: list[float] = []
    first: list[float] = []
    counts: list[tuple[int, int]] = [_counts()]
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
    if profiler is not None:
        profiler.__enter__()
    started = time.perf_counter()

    def on_step(step: int) -> None:
        if step == 1:
            _sync(device)
            first.append(time.perf_counter())
            if profiler is not None:
                profiler.__exit__(None, None, None)
                print(first_step_profile(profiler, mode, batch, first[0] - started), flush=True)
            if cuda:  # (the blocks cached so far go first: the reserved peak restarts from what is reserved)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        if step in (warmup, warmup + steps):
            _sync(device)
            stamps.append(time.perf_counter())
            counts.append(_counts())

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = run_config(work, mode, batch, warmup + steps, concepts, precision=precision, resolution=resolution)
    te_dtypes = [te.dtype for _, _, te in model.encoders]
    result = {"mode": mode, "batch": batch, "concepts": concepts}
    flag = BACKEND_FLAGS.get(mode)
    was = getattr(flag[0], flag[1]) if flag else None
    if flag:
        setattr(flag[0], flag[1], flag[2])
    try:
        with scratch_tokens(model), warnings.catch_warnings(record=True) as caught:  # the next mode starts afresh
            warnings.simplefilter("always")
            train(config, model=model, progress=False, on_step=on_step)
        peak = (torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30) if cuda else (
            float("nan"), float("nan"))  # (read before reset_unet, which copies weights back for channels-last)
    except torch.OutOfMemoryError:
        return {**result, "oom": True}
    except Exception as e:  # noqa: BLE001 (reported in the row; the next measurement still runs)
        print(f"# {mode} at batch {batch} failed:", file=sys.stderr)
        traceback.print_exc()
        return {**result, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    finally:
        if profiler is not None and not first:  # (the run failed before its first step ended)
            profiler.__exit__(None, None, None)
        if flag:
            setattr(flag[0], flag[1], was)
        reset_unet(model.unet)
        for (_, _, te), dtype in zip(model.encoders, te_dtypes):
            te.to(dtype)  # the reference-like mode makes the text encoder fp32
            te.get_input_embeddings().weight.requires_grad_(False)
    seconds = (stamps[-1] - stamps[0]) / steps
    # the compile check's warning (by how much the compiled UNet differed), kept for the table's note
    dropped = next((str(w.message) for w in caught if "torch.compile changed" in str(w.message)), "")
    # a capture that failed: the step ran eagerly, and the row must not pass for a captured one
    uncaptured = next((str(w.message) for w in caught if "could not be captured" in str(w.message)), "")
    return {**result, "ms_per_step": seconds * 1e3, "samples_per_s": concepts * batch / seconds,
            "first_step_s": first[0] - started, "warmup_s": stamps[0] - started, "compile_dropped": dropped,
            "uncaptured": uncaptured,
            # graphs compiled during the timed steps (a recompile was timed), CUDA graphs skipped anywhere in the run
            "recompiled": counts[2][0] - counts[1][0], "cudagraph_skips": counts[-1][1] - counts[0][1],
            "peak_gib": peak[0], "reserved_gib": peak[1]}


def first_step_profile(profiler, mode: str, batch: int, seconds: float, rows: int = 20) -> str:
    """The host's time in the profiled span (a mode's setup and first step), by operation, largest first: its
    self time (the operation's own, not its callees') and total. What a first step of 12 s on a GPU whose steps
    take 0.2 s holds: cuDNN choosing (or compiling) its kernels at each new shape, cuBLAS's and the allocator's
    start, the VAE caching the latents, compiling."""
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    seen = sum(e.self_cpu_time_total for e in events) / 1e6
    lines = [f"# first step profile: {mode} batch {batch}, {seconds:.1f} s to the end of the first step; the "
             f"operations' own host time {seen:.1f} s (the rest: Python between them), largest {rows}:",
             f"#   {'self s':>8} {'total s':>8} {'calls':>7}  operation"]
    lines += [f"#   {e.self_cpu_time_total / 1e6:>8.3f} {e.cpu_time_total / 1e6:>8.3f} {e.count:>7}  {e.key}"
              for e in events[:rows]]
    return "\n".join(lines)


def _flags(mode: str) -> list[str]:
    """The `textinv train` options of a benchmark mode."""
    out = []
    for key, value in MODES[mode].items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def wall_run(pipe, mode: str, batch: int, samples: int, precision: str, device: str, work: Path,
             resolution: int | None, timeout: float | None = None) -> dict:
    """A whole run as a user runs it: `textinv train` in a fresh process on the model saved to disk, timed from
    the process's start to its exit, so the interpreter's imports, CUDA's start, loading the weights, caching the
    latents, compiling (with empty compile caches, as on a fresh machine: this process's warm in-memory and
    on-disk inductor caches would hide it) and saving the embedding are all in the figure."""
    folder = work / "model"
    if not folder.exists():
        pipe.save_pretrained(folder)  # safetensors, in the benchmark's precision
    steps = -(-samples // batch)
    images = _images_of(work, mode)
    command = [sys.executable, "-m", "textinv", "train", "--model", str(folder), "--images", str(images),
               "--token", "<bench-wall>", "--init", "dog", "--out", str(work / f"wall-{mode}-{batch}"),
               "--steps", str(steps), "--batch", str(batch), "--precision", precision, "--save-every", "0",
               "--sample-every", "0", "--overwrite", *_flags(mode)]
    if resolution:
        command += ["--resolution", str(resolution)]
    caches = Path(tempfile.mkdtemp(prefix="wall-caches-", dir=work))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TRITON_CACHE_DIR": str(caches / "triton"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    result = {"mode": mode, "batch": batch, "steps": steps, "samples": steps * batch}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**result, "error": f"stopped after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or [""]
        print(f"# the whole run ({' '.join(command)}) failed; the end of its output:", *lines[-40:], sep="\n",
              file=sys.stderr)  # (its traceback: the row keeps only the last line)
        return {**result, "error": f"exit {done.returncode}: {lines[-1][:200]}"}
    return {**result, "wall_s": wall}


WORKED_OUT = ("textinv", "checkpointing")  # the modes whose memory `benchmarks.step_memory` counts


def worked_out_gib(model: Model, batch: int, resolution: int | None, mode: str) -> float:
    """The allocated peak `benchmarks.step_memory` works out for a step of this mode (the frozen weights, and the
    step counted on the model's meta-device twin), to read beside the measured one."""
    from textinv.memory import meta_twin, step_bytes

    from .step_memory import weight_bytes

    twin, ids = meta_twin(model)
    step = step_bytes(twin, ids, batch, resolution or model.resolution, checkpointing=mode == "checkpointing")
    return (weight_bytes(model.pipeline) + step) / 2 ** 30


def fits(results: list[dict], gib: float) -> dict[str, int]:
    """Per mode, the largest measured batch whose reserved peak memory is within `gib`."""
    out = {}
    for r in results:
        if "ms_per_step" in r and r["reserved_gib"] <= gib:
            out[r["mode"]] = max(out.get(r["mode"], 0), r["batch"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tiny", choices=ARCHITECTURES)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling happens here)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--modes", nargs="+", default=["textinv", "reference"], choices=tuple(MODES))
    p.add_argument("--resolution", type=int, default=None, help="default: the architecture's (512 sd15, 1024 sdxl)")
    p.add_argument("--concepts", type=int, default=1,
                   help="also time K concepts in one run against K separate runs (concepts per hour)")
    p.add_argument("--run-steps", type=int, default=3000, help="steps of a whole run, for concepts per hour")
    p.add_argument("--wall-samples", type=int, default=0,
                   help="also time a whole run of this many samples (the reference recipe: 12000), model load "
                        "included, in the first mode at the largest batch")
    p.add_argument("--wall-timeout", type=float, default=None, help="seconds the whole run may take")
    p.add_argument("--profile-first", action="store_true",
                   help="profile the host's time in the first measurement's setup and first step, by operation")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first timed step starts after a warm-up step)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_precision(args.precision, torch.device(device))
    started = time.perf_counter()
    pipe = build(args.arch, device, dtype)
    _sync(device)
    load_s = time.perf_counter() - started  # building stands in for loading a checkpoint
    pipe.set_progress_bar_config(disable=True)
    model = Model(pipeline=pipe, family="sdxl" if "xl" in args.arch else "sd1", source="benchmark",
                  prediction_type="epsilon")
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"# train_speed {datetime.date.today()} arch={args.arch} device={name} dtype={dtype} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} resolution="
          f"{args.resolution or model.resolution}")
    print(f"{'mode':<15} {'batch':>5} {'ms/step':>9} {'samples/s':>10} {'peak GiB':>9} {'reserved':>9} {'of limit':>9}")
    peak_flops = None if any(x in name for x in SLOWER_PARTS) else next(
        (v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    flop = FLOP_PER_SAMPLE.get(args.arch) if (args.resolution or RESOLUTION.get(args.arch)) == RESOLUTION.get(
        args.arch) else None
    limit = peak_flops / flop if (peak_flops and flop) else None
    if limit:
        print(f"# of limit: samples/s x {flop / 1e12:.2f} TFLOP a sample / {peak_flops / 1e12:.0f} TFLOP/s "
              f"(issue 4's practical bf16 limit; x {peak_flops / 989e12:.2f} gives the fraction of the dense peak)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _images(work / "images", size=RESOLUTION.get(args.arch, 512))
        _images(work / "images-mixed", n=6, size=RESOLUTION.get(args.arch, 512), mixed=True)
        for batch in args.batch:
            for mode in args.modes:
                r = time_mode(model, mode, batch, args.warmup, args.steps, args.precision, device, work,
                              args.resolution, profile=args.profile_first and not results)
                results.append(r)
                if r.get("oom") or r.get("error"):
                    print(f"{mode:<15} {batch:>5} {r.get('error') or 'out of memory'}", flush=True)
                    continue
                frac = f"{r['samples_per_s'] / limit:.1%}" if limit else "-"
                dropped = r["compile_dropped"]
                note = (f" (compile dropped, ran uncompiled: {dropped})" if dropped else "") + (
                    f" (not captured, ran eagerly: {r['uncaptured']})" if r["uncaptured"] else "") + (
                    f" ({r['recompiled']} graph(s) compiled in the timed steps)" if r["recompiled"] else "") + (
                    f" (CUDA graphs skipped {r['cudagraph_skips']}x: see the log)" if r["cudagraph_skips"] else "")
                if mode in WORKED_OUT:  # (beside the measured peak: `benchmarks.step_memory`'s count of the step)
                    note += f" (worked out {worked_out_gib(model, batch, args.resolution, mode):.2f} GiB allocated)"
                print(f"{mode:<15} {batch:>5} {r['ms_per_step']:>9.1f} {r['samples_per_s']:>10.2f} "
                      f"{r['peak_gib']:>9.2f} {r['reserved_gib']:>9.2f} {frac:>9}   first step "
                      f"{r['first_step_s']:.1f} s (setup + compile), warm-up {r['warmup_s']:.1f} s{note}", flush=True)
            by_mode = {r["mode"]: r for r in results if r["batch"] == batch and "ms_per_step" in r}
            if "reference" in by_mode:
                for mode, r in by_mode.items():
                    if mode != "reference":
                        print(f"{'':<15} {batch:>5} {mode} over reference: "
                              f"{r['samples_per_s'] / by_mode['reference']['samples_per_s']:.2f}x")
        if device == "cuda":
            for gib in CARDS_GIB:
                largest = fits(results, gib)
                print(f"# fits in {gib} GiB (largest measured batch, PyTorch's reserved peak; the CUDA context adds "
                      f"~0.5 GiB): " + (", ".join(f"{m} {b}" for m, b in largest.items()) or "none"))
        if args.concepts > 1:
            print(f"# {args.concepts} concepts in one run vs {args.concepts} separate runs of {args.run_steps} steps "
                  f"(model load {load_s:.1f} s counted once per run)")
            for batch in args.batch:
                single = next(r for r in results if r["mode"] == args.modes[0] and r["batch"] == batch)
                joint = time_mode(model, args.modes[0], batch, args.warmup, args.steps, args.precision, device, work,
                                  args.resolution, concepts=args.concepts)
                if "ms_per_step" not in single or "ms_per_step" not in joint:
                    print(f"concepts {batch:>5} not measured: {joint.get('error') or single.get('error') or 'oom'}")
                    continue
                separate_s = args.concepts * (load_s + args.run_steps * single["ms_per_step"] / 1e3)
                joint_s = load_s + args.run_steps * joint["ms_per_step"] / 1e3
                print(f"concepts {batch:>5} {joint['ms_per_step']:>9.1f} ms/step joint; concepts per hour: joint "
                      f"{3600 * args.concepts / joint_s:.1f} vs separate {3600 * args.concepts / separate_s:.1f} "
                      f"({separate_s / joint_s:.2f}x)", flush=True)
        if args.wall_samples:
            w = wall_run(pipe, args.modes[0], max(args.batch), args.wall_samples, args.precision,
                         device, work, args.resolution, args.wall_timeout)
            print(f"wall {w['mode']} batch {w['batch']}: {w['samples']} samples ({w['steps']} steps) " + (
                f"in {w['wall_s']:.1f} s from process start (imports, load, latent caching, compile with empty "
                f"caches, saving: all included)" if "wall_s" in w else f"not measured: {w['error']}"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
