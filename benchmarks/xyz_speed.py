"""An X/Y/Z plot's time with its cells drawn together (`generate.generate_together`: cells alike but for their
prompts and seeds share pipeline calls) and drawn one `generate` run a cell, as before.

    python -m benchmarks.xyz_speed                     # a 3x3 Prompt S/R x Seed grid, --batch-size 9, 1 thread
    python -m benchmarks.xyz_speed --threads 2 --steps 10 --repeat 5 --batch-size 4 --x sampler=euler,euler_a

The grid is drawn on the bundled shapes model (64x64; --model another, on --device) with its own guidance, -n 1,
the same seeds each time, into a new folder each time, after one warm-up grid; "one run a cell" is `xyz._groups`
made to give each cell alone, which draws what the plot drew before it grouped cells (a run and a pipeline call of
one picture a cell here). The pictures of both are the same; the figures are seconds per grid (median, min-max) and
the pipeline calls a grid takes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def timed_generate(loaded, out: Path, repeat: int, patches=(), **settings) -> tuple[list[float], int]:
    """Seconds of each of `repeat` `generate` runs of `settings` on `loaded` (after one warm-up run), each into a
    new folder under `out`, with `patches` (`mock.patch` objects) on; and the pipeline calls (`render`) one run
    takes. Also `init_batch_speed`'s."""
    import contextlib
    from unittest import mock

    from textinv import generate as generate_module
    from textinv.config import GenerateConfig

    calls, render = [], generate_module.render

    def counted(*a, **k):
        calls.append(1)
        return render(*a, **k)

    times = []
    with contextlib.ExitStack() as stack:
        for patch in (mock.patch.object(generate_module, "render", counted), *patches):
            stack.enter_context(patch)
        for i in range(repeat + 1):
            calls.clear()
            start = time.perf_counter()
            generate_module.generate(GenerateConfig(out=str(out / str(i)), **settings), model=loaded, progress=False)
            times.append(time.perf_counter() - start)
    return times[1:], len(calls)


def grid_seconds(loaded, out: Path, per_cell: bool, repeat: int, **settings) -> tuple[list[float], int]:
    """Seconds of each of `repeat` grids of `settings` drawn on `loaded` (after one warm-up), and the pipeline calls
    one grid takes; `per_cell`: each cell drawn alone (`xyz._groups` giving one cell a group), as before cells were
    grouped."""
    from unittest import mock

    from textinv import xyz

    alone = [mock.patch.object(xyz, "_groups", lambda ready, order: [[i] for i in order])] if per_cell else []
    return timed_generate(loaded, out / str(per_cell), repeat, alone, **settings)


def model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and machine options of a generation benchmark (also `init_batch_speed`'s)."""
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="auto", help="as generate's --device (auto: a GPU where there is one)")
    p.add_argument("--precision", default="auto", help="as generate's (auto: fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--threads", type=int, default=1)


def loaded_model(args):
    """`model_arguments`' model, loaded on their device and precision, torch on their threads: (model, device)."""
    from textinv.generate import drawing_dtype
    from textinv.models import load_model, pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    return load_model(args.model, dtype=drawing_dtype(args.precision, device), device=device), device


def machine_line(model, device, args) -> str:
    """What the figures were measured on: torch, `loaded_model`'s device and dtype, the threads, the model (also
    `init_batch_speed`'s, whose settings follow it)."""
    return f"torch {torch.__version__}, {device}, {model.unet.dtype}, {args.threads} thread(s), {args.model}"


def timing_row(label, calls: int, times: list[float]) -> str:
    """A table row of `timed_generate`'s figures: `label`, the pipeline calls a run takes, seconds a run as median
    (min-max) (also `init_batch_speed`'s)."""
    return f"| {label} | {calls} | {statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f}) |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=9)
    p.add_argument("--repeat", type=int, default=3, help="grids timed in each way (after one warm-up)")
    p.add_argument("--x", default="prompt-sr=star,circle,square", help="the grid's --x (its prompt: a red star ...)")
    p.add_argument("--y", default="seed=1-3")
    args = p.parse_args(argv)

    model, device = loaded_model(args)
    settings = dict(prompt=["a red star on a blue background"], n=1, steps=args.steps, batch_size=args.batch_size,
                    model=args.model, x=args.x, y=args.y)
    print(f"{machine_line(model, device, args)}, --steps {args.steps} --batch-size {args.batch_size}: "
          f"x {settings['x']}, y {settings['y']}")
    print("| cells drawn | pipeline calls | s per grid (median, min-max) |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="textinv-xyz-") as tmp:
        for per_cell, name in ((True, "one run a cell (before)"), (False, "together")):
            times, calls = grid_seconds(model, Path(tmp), per_cell, args.repeat, **settings)
            print(timing_row(name, calls, times), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
