"""Where classifier-free guidance puts a learned in-between hue (issue 3): learn one exact-hue benchmark concept,
then sample "a photo of S*" (and the concept's best description) at several guidance scales and print the probe's
hue error, signed towards the nearest named colour, with its spread.

    python -m benchmarks.hue_by_guidance                              # the teal star, guidance 1 1.5 2 3 5
    python -m benchmarks.hue_by_guidance --concept violet-ring --guidance 1.5 3 --samples 32

The README's figures (teal star, training seed 0, 1000 steps, 16 samples): the learned word's samples are centred on
the concept's hue at guidance 1 and pulled towards the named colour as guidance grows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch


def signed_hue_errors(probe, images, hue: float, towards: float) -> list[float]:
    """The probe's hue of each picture minus `hue`, in degrees, positive on the side of `towards`."""
    from textinv.shapes.evaluate import to_tensor

    side = 1.0 if (towards - hue + 180.0) % 360.0 - 180.0 >= 0 else -1.0
    return [side * ((h - hue + 180.0) % 360.0 - 180.0) for h in probe.predict(to_tensor(images))["hue"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="teal-star", help="an exact-hue benchmark concept (token without <>)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="shapes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from textinv.errors import ConfigError
    from textinv.generate import install_embedding, unload_embeddings
    from textinv.models import load_model
    from textinv.shapes import world
    from textinv.shapes.demo import find_concept
    from textinv.shapes.evaluate import EvalConfig, best_description, fill, learn, sample
    from textinv.shapes.probe import Probe

    concept = find_concept(args.concept)
    if "hue" not in concept.attributes:
        raise ConfigError(f"{concept.name} has no exact hue; choose one of "
                          f"{', '.join(c.token.strip('<>') for c in world.BENCHMARK_CONCEPTS if 'hue' in c.attributes)}")
    hue = concept.attributes["hue"]
    named = world.nearest_color(hue)
    model, probe = load_model(args.model), Probe.load()
    config = EvalConfig(steps=args.steps, train_seed=args.train_seed).validate()
    with tempfile.TemporaryDirectory(prefix="textinv-hue-") as tmp:
        learned = learn(model, concept, config, Path(tmp))
    seeds = [config.seed + i for i in range(args.samples)]
    print(f"{concept.name}: hue {hue} deg; + is towards {named} ({world.COLORS[named][0]:.0f} deg); "
          f"{args.samples} samples each, training seed {args.train_seed}, {args.steps} steps")
    print("| words | guidance | mean error (deg) | spread (deg) |\n| --- | ---: | ---: | ---: |")
    install_embedding(model, learned.embedding)
    try:
        for words in (concept.token, best_description(concept)):
            for scale in args.guidance:
                prompt = fill("a photo of {}", words, article=words != concept.token)
                images = sample(model, [prompt] * len(seeds), seeds, args.sample_steps, scale)
                errors = signed_hue_errors(probe, images, hue, world.COLORS[named][0])
                print(f"| {words} | {scale:g} | {statistics.mean(errors):+.1f} | {statistics.pstdev(errors):.1f} |",
                      flush=True)
    finally:
        unload_embeddings(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
