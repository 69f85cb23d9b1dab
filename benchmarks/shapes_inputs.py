"""How fast the CPU makes the shapes UNet stage's inputs (scenes, pictures, caption ids, noise, timesteps), as
`pretrain --stage unet` makes them on a GPU run: one thread draws, `--render-threads` render a batch each.

    python -m benchmarks.shapes_inputs                          # 1 and 2 render threads, 1 torch thread
    python -m benchmarks.shapes_inputs --render-threads 1 2 4 8 --threads 1 2 --batch 256

A row is the time per batch once the pipeline is full (after a warm-up of a batch per render thread), median of
`--repeats` runs of `--batches` batches; the "in turn" row makes each batch alone, as a CPU run does, and "draws
only" times the drawing thread's part alone (the scenes, captions, caption ids, noise, timesteps): however many
threads render, a batch takes at least that. On a GPU the step takes a few ms at batch 256, so this time is the
step's when it is the longer one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def ms_per_batch(batch: int, render_threads: int | str, batches: int) -> float:
    """Milliseconds per batch made ahead with `render_threads`, or "in turn" (no thread), or "draws only" (what the
    drawing thread does alone: no pictures; a bound on the rate however many threads render)."""
    from textinv.shapes.pretrain import (PretrainConfig, _Ahead, _CaptionIds, _unet_draws, _unet_pictures,
                                         build_tokenizer_for_world)

    config = PretrainConfig(unet_batch=batch)
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    ids_of = _CaptionIds(build_tokenizer_for_world())
    finish = (lambda drawn: drawn) if render_threads == "draws only" else (lambda drawn: _unet_pictures(drawn, False))
    threaded = isinstance(render_threads, int)
    with _Ahead(lambda: _unet_draws(config, g, rng, ids_of, (4, 16, 16), 1000), finish, threaded,
                render_threads if threaded else 1) as ahead:
        for _ in range(render_threads if threaded else 1):  # fills the pipeline (and the caption ids' table)
            ahead.next()
        start = time.perf_counter()
        for _ in range(batches):
            ahead.next()
        return (time.perf_counter() - start) / batches * 1000


def _ms(ms: float) -> str:
    """A time in ms to a tenth, or to three digits below 1 ms (a batch made ahead can be ready at once: not 0.0)."""
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.3g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op threads (pretrain --threads)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=16, help="batches timed per run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, batch {args.batch}")
    print("| torch threads | render threads | ms per batch (median, min-max) | batches/s |")
    print("| --- | --- | --- | --- |")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for render_threads in ["draws only", "in turn", *args.render_threads]:
            times = [ms_per_batch(args.batch, render_threads, args.batches) for _ in range(args.repeats)]
            ms = statistics.median(times)
            print(f"| {threads} | {render_threads} | {_ms(ms)} ({_ms(min(times))}-{_ms(max(times))}) | "
                  f"{1000 / ms:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
