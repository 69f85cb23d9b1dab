"""The cost of reading the training pictures: time and peak memory of `load_training_images` on big files.

    python -m benchmarks.load_pictures                         # 8 photos of 6000x4000 (JPEG), one 20000x10000 PNG
    python -m benchmarks.load_pictures --resolution 512 1024 --kinds jpeg
    python -m benchmarks.load_pictures --textinv ../old-checkout   # the same on another version of textinv

The pictures are made once into --data (smooth colour fields, edges and fine grain, so that they compress and decode
as photos do: ~8.7 MB a JPEG at quality 92; the PNG ~250 MB). Each (kind, resolution) is loaded in a fresh process,
so that its peak resident memory (`ru_maxrss`) is its own; "+MiB" is that peak less the process's before loading.
Run it with OMP_NUM_THREADS=1 to compare versions on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, warnings
sys.path.insert(0, sys.argv[1])
from textinv.data import find_images, load_training_images
paths = find_images(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
wall, cpu = time.perf_counter(), time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    load_training_images(paths, int(sys.argv[3]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # (KiB on Linux)
print(json.dumps({"files": len(paths), "wall": wall, "cpu": cpu, "peak": peak / 1024, "added": (peak - before) / 1024}))
"""


def photo(width: int, height: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    fields = Image.fromarray(rng.integers(0, 256, (height // 200 + 2, width // 200 + 2, 3), dtype=np.uint8))
    base = np.asarray(fields.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    y, x = np.mgrid[0:height, 0:width]
    edges = (((x // 97 + y // 61) % 2) * 40).astype(np.int16)[..., None]
    grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(base + edges + grain, 0, 255).astype(np.uint8))


def make(data: Path) -> None:
    from PIL import Image

    for k in range(8):
        path = data / "jpeg" / f"photo{k}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(6000, 4000, k).save(path, quality=92)
    path = data / "png" / "scan.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(10000, 5000, 99).resize((20000, 10000), Image.Resampling.BILINEAR).save(path, compress_level=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/textinv-load-pictures", help="where the pictures are made (once)")
    p.add_argument("--kinds", nargs="+", default=["jpeg", "png"], choices=["jpeg", "png"])
    p.add_argument("--resolution", type=int, nargs="+", default=[64, 512, 1024])
    p.add_argument("--textinv", default=str(Path(__file__).resolve().parent.parent),
                   help="the checkout whose textinv is measured (default: this one)")
    args = p.parse_args(argv)
    make(Path(args.data))
    print(f"textinv from {args.textinv}")
    print("| pictures | resolution | wall s | CPU s | peak RSS MiB | +MiB while loading |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in args.kinds:
        for resolution in args.resolution:
            out = subprocess.run([sys.executable, "-c", CHILD, args.textinv, str(Path(args.data) / kind),
                                  str(resolution)], capture_output=True, text=True, env=dict(os.environ))
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.splitlines()[-1])
            what = f"{r['files']} x 6000x4000 JPEG" if kind == "jpeg" else "1 x 20000x10000 PNG"
            print(f"| {what} | {resolution} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak']:.0f} | {r['added']:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
