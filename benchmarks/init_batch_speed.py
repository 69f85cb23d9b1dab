"""img2img over a folder of --init-image pictures of one size, at --batch-size 1 (a pipeline call a picture, as every
folder drew before its pictures shared calls) and at one batch of them all; then a folder of as many pictures of two
sizes taking turns (64x64 and 96x48, drawn at 64x64 and 88x40), at one batch of them all.

    python -m benchmarks.init_batch_speed                  # 6 pictures of 64x64, 25 steps, --denoise 0.75, 1 thread
    python -m benchmarks.init_batch_speed --pictures 8 --steps 10 --repeat 5 --threads 2 --device cuda

The folder holds `--pictures` pictures of the bundled shapes model's 64x64 (a shape of its own colour each, drawn
with Pillow), redrawn with one prompt and seed on the shapes model (--model another, on --device), into a new
folder each time, after one warm-up run. The pictures of both are the same (`tests/test_passes.py` checks that); the
figures are seconds per folder (median, min-max) and the pipeline calls a folder takes. The folder of two sizes
takes a call a size (`tests/test_generate.py` checks that each picture is the one it draws alone); before a call
took only pictures next to each other in the folder, one a picture here.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from .xyz_speed import loaded_model, machine_line, model_arguments, timed_generate, timing_row

COLOURS = ["red", "blue", "green", "yellow", "white", "purple", "orange", "cyan", "magenta", "black"]


def make_folder(folder: Path, count: int, sizes: tuple[tuple[int, int], ...] = ((64, 64),)) -> None:
    """`count` pictures in `folder`, of `sizes` (W, H) in turn: a shape on a background, each of its own colours."""
    folder.mkdir()
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        picture = Image.new("RGB", (width, height), COLOURS[i % len(COLOURS)])
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        ImageDraw.Draw(picture).ellipse(box, fill=COLOURS[(i + 3) % len(COLOURS)])
        picture.save(folder / f"{i:02d}.png")


def folder_seconds(loaded, out: Path, batch_size: int, repeat: int, **settings) -> tuple[list[float], int]:
    """Seconds of each of `repeat` runs of `settings` at `batch_size` drawn on `loaded` (after one warm-up), and the
    pipeline calls one run takes."""
    return timed_generate(loaded, out / str(batch_size), repeat, batch_size=batch_size, **settings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(p)
    p.add_argument("--pictures", type=int, default=6, help="pictures in the folder, all drawn in one call")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--denoise", type=float, default=0.75)
    p.add_argument("--repeat", type=int, default=3, help="folders timed at each batch size (after one warm-up)")
    args = p.parse_args(argv)

    model, device = loaded_model(args)
    print(f"{machine_line(model, device, args)}, {args.pictures} pictures of 64x64, --steps {args.steps} "
          f"--denoise {args.denoise}")
    print("| --batch-size | pipeline calls | s per folder (median, min-max) |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="textinv-init-") as tmp:
        make_folder(Path(tmp) / "pictures", args.pictures)
        settings = dict(prompt=["a red star on a blue background"], n=1, seed=1, steps=args.steps,
                        denoise=args.denoise, model=args.model, init_image=str(Path(tmp) / "pictures"))
        for batch_size in (1, args.pictures):
            times, calls = folder_seconds(model, Path(tmp), batch_size, args.repeat, **settings)
            print(timing_row(batch_size, calls, times), flush=True)
        print(f"\n{args.pictures} pictures of 64x64 and 96x48 in turn:\n")
        print("| folder | --batch-size | pipeline calls | s per folder (median, min-max) |")
        print("| --- | --- | --- | --- |")
        make_folder(Path(tmp) / "two-sizes", args.pictures, ((64, 64), (96, 48)))
        settings["init_image"] = str(Path(tmp) / "two-sizes")
        times, calls = folder_seconds(model, Path(tmp) / "two-sizes-out", args.pictures, args.repeat, **settings)
        print(timing_row(f"two sizes in turn | {args.pictures}", calls, times), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
