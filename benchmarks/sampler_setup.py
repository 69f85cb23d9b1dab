"""The cost of making a sampler: `samplers.scheduler_for`'s first making and the mean of the next ones, per sampler.

    python -m benchmarks.sampler_setup                      # the samplers whose set-up is slow, and two that are not
    python -m benchmarks.sampler_setup --samplers dpm2_a euler --repeat 20

Every pass of every picture makes its sampler (and the refiner's and Restart's checks make one more), so a set-up of
diffusers' that converts its 1000 training timesteps one by one in Python (DPM2 and DPM2 a, which DPM++ 2S a builds
on; Heun under Restart) is paid per pass unless a made one is kept: textinv keeps it and hands out copies.
The scheduler is SD 1.x's (DDIM, scaled-linear betas, "leading" spacing), made in code: no hub.
"""

from __future__ import annotations

import argparse
import time

SLOW_AND_FAST = ("dpm2_a", "dpm++2s_a", "dpm2", "restart", "euler", "dpm++2m_karras")


def sd1_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, timestep_spacing="leading", steps_offset=1)


def time_making(name: str, repeat: int) -> tuple[float, float]:
    """Seconds of the first `scheduler_for(.., name)` and the mean of the `repeat` after it."""
    from textinv.samplers import scheduler_for

    own = sd1_scheduler()
    start = time.perf_counter()
    scheduler_for(own, name)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeat):
        scheduler_for(own, name)
    return first, (time.perf_counter() - start) / repeat


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", nargs="+", default=list(SLOW_AND_FAST), help="textinv sampler names")
    parser.add_argument("--repeat", type=int, default=10, help="makings timed after the first")
    args = parser.parse_args(argv)
    print("| sampler | first making (ms) | each next one (ms) |")
    print("| --- | --- | --- |")
    for name in args.samplers:
        first, next_one = time_making(name, args.repeat)
        print(f"| {name} | {first * 1000:.1f} | {next_one * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
