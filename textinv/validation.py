"""Validation loss: the denoising loss of a run's vectors at draws fixed for the whole run.

The training loss moves mostly with what each step happens to draw (a timestep near 1000 costs many times one near
0), so its curve says little about the vectors from one log interval to the next. Scored on the same draws every
time (each picture at `draws` timesteps spread evenly over the training range, each with its own latent sample,
noise and caption, drawn once from --validation-seed), the loss changes only with the vectors: differences between
two steps are paired, and small ones are real. On pictures held out of training (--validation-split, kohya's
`validation_split`) a rise while the training loss still falls is the run learning its own pictures rather than the
concept; without a split it is the training pictures', a smooth curve of how well the vectors fit them.

The loss is the run's own (`train.grouped_loss`, with its min-SNR or kohya weighting and loss type, and the
pictures' alpha with --alpha-mask), without the noise settings' random parts (offset, pyramid and perturbation
noise), which would make it a draw again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import PictureSet

DRAWS = 16  # per picture: 16 timesteps 62 apart over SD's 1000


def held_out(count: int, share: float, seed: int) -> list[int]:
    """Which of `count` pictures (indices, ascending) a share `share` of them holds out: round(share x count), at
    least one and leaving at least one to train on, chosen by `seed`.

    >>> held_out(5, 0.2, 0)
    [4]
    """
    keep = min(count - 1, max(1, round(share * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:keep].tolist())


def held_out_by_subset(sizes: Sequence[int], share: float, seed: int) -> list[int]:
    """Which pictures of kohya subsets of `sizes` pictures each, laid end to end, a share `share` holds out, counted
    as kohya counts them (its `split_train_val` runs on each subset alone): round(share x a subset's pictures) of
    each, none where that rounds to 0; at most all but one of it, as kohya trains ceil((1 - share) x its pictures)
    (and a picture it holds out too, where the two counts overlap: textinv never trains one it holds out).

    >>> held_out_by_subset([5, 5], 0.1, 0), len(held_out_by_subset([3, 3], 0.5, 0))  # (round(0.5) = 0, round(1.5) = 2)
    ([], 4)
    """
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for n in sizes:
        keep = min(n - 1, round(share * n))
        out += sorted((start + torch.randperm(n, generator=g)[:keep]).tolist())
        start += n
    return out


def subset_sizes(pictures: PictureSet) -> list[int]:
    """How many pictures each kohya subset of `pictures` holds, in order (their names start with the subset's
    number, "2/a.png", or in kohya's folder layout with its folder, "10_dog/a.png")."""
    return list(Counter(name.split("/", 1)[0] for name in pictures.names).values())


def split_pictures(pictures: PictureSet, share: float, seed: int, by_subset: bool = False,
                   then: Sequence[str] | None = None) -> tuple[PictureSet, PictureSet]:
    """`pictures` as (the ones trained on, the ones held out: `held_out`, or with `by_subset`, kohya subsets'
    pictures, `held_out_by_subset`), each in its own order. `then`: the names of the pictures a run held out before,
    held out again where every one of them is among `pictures` (a resumed run's split, whatever today's count)."""
    count, before = len(pictures.paths), set(then or ())
    if then is not None and before <= set(pictures.names):
        out = [k for k, name in enumerate(pictures.names) if name in before]
    else:
        out = held_out_by_subset(subset_sizes(pictures), share, seed) if by_subset else held_out(count, share, seed)
    kept = [k for k in range(count) if k not in out]
    return pictures.picked(kept), pictures.picked(out)


@dataclass
class FixedDraws:
    """One concept's validation draws, made once: `n` samples, each a picture at a timestep with its noise and
    caption, laid out as a training micro-batch is (`train._micro_batch`), and scored in chunks."""

    latents: torch.Tensor | list  # (n, 4, h, w), or with pictures of several shapes a list of n (4, h_i, w_i)
    noise: torch.Tensor | list
    timesteps: torch.Tensor  # (n,)
    ids: list[torch.Tensor]  # per tokenizer: (n, 77) (kohya's chunks: n, k x 77)
    time_ids: torch.Tensor | None  # (n, 6) for SDXL
    pixel_weight: torch.Tensor | list | None  # with --alpha-mask

    def __len__(self) -> int:
        return len(self.timesteps)

    def chunk(self, at: slice) -> dict:
        """Samples `at` as `train.grouped_loss` takes a micro-batch."""
        def part(x):
            return None if x is None else x[at]
        return {"latents": part(self.latents), "noise": part(self.noise), "timesteps": self.timesteps[at],
                "ids": [ids[at] for ids in self.ids], "cond_ids": part(self.time_ids),
                "pixel_weight": part(self.pixel_weight)}


def fixed_draws(mean, std, bank, time_ids, pixel_weight, pictures: int, draws: int, timesteps: tuple[int, int],
                seed: int, scaling: float, device) -> FixedDraws:
    """`draws` samples of each of a concept's `pictures` (the first of its cached latents `mean`/`std`: unmirrored),
    at timesteps spread evenly over [timesteps[0], timesteps[1]): the middles of `draws` equal stretches; the latent
    samples, noise and captions drawn from `seed`. `bank` is the pictures' `batches.CaptionBank`, `time_ids` and
    `pixel_weight` their SDXL time ids and alpha weights (None where unused)."""
    low, high = timesteps
    steps = torch.tensor([low + (2 * j + 1) * (high - low) // (2 * draws) for j in range(draws)])
    image = torch.arange(pictures).repeat_interleave(draws)  # (n,): picture i's draws together
    g = torch.Generator().manual_seed(seed)
    listed = isinstance(mean, list)
    shapes = [tuple(mean[int(i)].shape) for i in image] if listed else [tuple(mean.shape[1:])] * len(image)
    eps = [torch.randn(s, generator=g) for s in shapes]
    noise = [torch.randn(s, generator=g) for s in shapes]
    caption = torch.rand(len(image), generator=g)
    latents = [(mean[int(i)] + std[int(i)] * e.to(device)) * scaling for i, e in zip(image, eps)]
    noise = [x.to(device) for x in noise]
    weight = [pixel_weight[int(i)] for i in image] if pixel_weight is not None else None
    if not listed:
        latents, noise = torch.stack(latents), torch.stack(noise)
        weight = torch.stack(weight) if weight is not None else None
    on_device = image.to(device)
    return FixedDraws(latents, noise, steps.repeat(pictures).to(device), bank.pick(on_device, caption.to(device)),
                      time_ids[on_device] if time_ids is not None else None, weight)


@torch.no_grad()
def validation_loss(draws: FixedDraws, loss_of, batch: int) -> torch.Tensor:
    """The mean loss over `draws`, scored `batch` samples at a time by `loss_of` (a micro-batch dict -> (B,)
    per-sample losses), as a 0-d tensor on the draws' device (no host sync)."""
    total = sum(loss_of(draws.chunk(slice(at, at + batch))).float().sum() for at in range(0, len(draws), batch))
    return total / len(draws)
