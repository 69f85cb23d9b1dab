"""How much the training objective sees of each word (issue 3): the denoising loss that textual inversion minimises,
on one benchmark concept's training pictures, for several prompts, by timestep band. Every prompt is scored on the
same noise, timesteps and pictures, so the differences between prompts are paired and precise even where the
losses themselves vary a lot.

    python -m benchmarks.loss_by_words                       # the teal star: learn it, then compare words
    python -m benchmarks.loss_by_words --concept candy-heart --draws 800
    python -m benchmarks.loss_by_words --no-learn --prompt "a photo of a cyan solid star" "a photo of a cyan star"

By default it learns the concept as the quality benchmark does (1000 steps, training seed 0) and scores the learned
word beside the init word, the concept's best description, that description with another fill, and the learned word
followed by the concept's fill word. A prompt whose loss is lower explains the pictures better; a word that moves the
loss by a fraction of a percent is one the objective hardly sees, however clearly guidance later draws it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))


def fixed_draws(latents: torch.Tensor, n: int, num_timesteps: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` (picture, timestep, noise) triples drawn once, shared by every prompt."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, len(latents), (n,), generator=g)
    return {"latents": latents[which], "timestep": torch.randint(0, num_timesteps, (n,), generator=g),
            "noise": torch.randn((n, *latents.shape[1:]), generator=g)}


@torch.no_grad()
def prompt_losses(model, prompt: str, draws: dict[str, torch.Tensor], chunk: int = 100) -> torch.Tensor:
    """The per-draw denoising loss (n,) with `prompt` as every draw's caption."""
    from textinv.train import diffusion_loss

    scheduler = model.noise_scheduler()
    ids = [tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids for _, tok, _ in model.encoders]
    out = []
    for i in range(0, len(draws["timestep"]), chunk):
        part = {k: v[i:i + chunk] for k, v in draws.items()}
        n = len(part["timestep"])
        out.append(diffusion_loss(model, scheduler, part["latents"], part["noise"], part["timestep"],
                                  [x.expand(n, -1) for x in ids]))
    return torch.cat(out)


def band_means(losses: torch.Tensor, timesteps: torch.Tensor) -> list[float]:
    return [losses[(timesteps >= lo) & (timesteps < hi)].mean().item() for lo, hi in BANDS]


def default_prompts(concept, token: str | None) -> list[str]:
    """The learned word (if any), the init word, the best description, and the description with another fill."""
    from textinv.shapes.evaluate import best_description, fill

    description = best_description(concept)
    fill_word = next((w for w in ("solid", "striped", "dotted", "checkered") if w in description.split()), None)
    prompts = ([fill("a photo of {}", token, False), f"{fill('a photo of {}', token, False)} {fill_word}"]
               if token else [])
    prompts += [fill("a photo of {}", concept.init_word, True), fill("a photo of {}", description, True)]
    if fill_word:
        other = "dotted" if fill_word != "dotted" else "striped"
        prompts += [fill("a photo of {}", description.replace(fill_word, other), True),
                    fill("a photo of {}", " ".join(w for w in description.split() if w != fill_word), True)]
    return prompts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="teal-star", help="a benchmark concept (token without <>)")
    p.add_argument("--prompt", nargs="+", help="prompts to score (default: see above); '{}' is the learned word")
    p.add_argument("--no-learn", action="store_true", help="score words only; learn nothing")
    p.add_argument("--steps", type=int, default=1000, help="training steps when learning")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the training pictures and run")
    p.add_argument("--lr", type=float, default=5e-3, help="learning rate when learning")
    p.add_argument("--vectors", type=int, default=1, help="vectors of the learned word")
    p.add_argument("--init", choices=("word", "description"), default="word", help="what the learned word starts from")
    p.add_argument("--draws", type=int, default=400, help="(picture, timestep, noise) draws per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="shapes")
    args = p.parse_args(argv)
    if args.draws < len(BANDS) * 10:
        p.error(f"--draws must be at least {len(BANDS) * 10} (ten per timestep band)")
    torch.set_num_threads(args.threads)

    from textinv.generate import install_embedding, unload_embeddings
    from textinv.models import load_model
    from textinv.shapes import world
    from textinv.shapes.demo import find_concept
    from textinv.shapes.evaluate import EvalConfig, learn
    from textinv.tokens import expand_prompt
    from textinv.latent_cache import encode_latents

    concept = find_concept(args.concept)
    model = load_model(args.model)
    token = None
    if not args.no_learn:
        with tempfile.TemporaryDirectory(prefix="textinv-loss-") as tmp:
            settings = EvalConfig(steps=args.steps, train_seed=args.train_seed, lr=args.lr, vectors=args.vectors,
                                  init=args.init).validate()
            learned = learn(model, concept, settings, Path(tmp))
        install_embedding(model, learned.embedding)
        token = concept.token
    prompts = [q.replace("{}", token or "{}") for q in args.prompt] if args.prompt else default_prompts(concept, token)
    pixels = world.render(concept.training_scenes(EvalConfig().images, args.train_seed)) * 2 - 1  # [-1, 1]
    mean, _ = encode_latents(model.vae, pixels)  # the model's VAE is deterministic: its std is a floor
    draws = fixed_draws(mean * model.vae.config.scaling_factor, args.draws,
                        model.noise_scheduler().config.num_train_timesteps, args.seed)
    try:
        print(f"{concept.name}: denoising loss on its {EvalConfig().images} training pictures (seed {args.train_seed}),"
              f" {args.draws} draws (seed {args.seed}); difference to the first prompt, paired, with its standard error")
        print("| prompt | loss | vs first | " + " | ".join(f"t {lo}-{hi}" for lo, hi in BANDS) + " |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in BANDS) + " |")
        first = None
        for prompt in prompts:
            losses = prompt_losses(model, expand_prompt(prompt, token, args.vectors) if token else prompt, draws)
            first = losses if first is None else first
            diff = losses - first
            spread = diff.std().item() / len(diff) ** 0.5
            print(f"| `{prompt}` | {losses.mean():.4f} | {diff.mean():+.4f} ± {spread:.4f} | "
                  + " | ".join(f"{m:.4f}" for m in band_means(losses, draws["timestep"])) + " |", flush=True)
    finally:
        unload_embeddings(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
