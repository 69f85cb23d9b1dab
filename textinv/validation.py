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

Below those, the run's side of it, moved out of train.py (which calls them as it checks its inputs, before the model
loads, and as it ends): each concept's pictures split by --validation-split at its own seed (`_split_each_concept`:
every concept's `split_pictures`, checked and printed; a resumed run's split as its checkpoint holds it,
`_split_then`), the --validation-images folder checked against the pictures trained on (`_validation_pictures`; on
resume `_warn_other_validation_pictures`), and the closing line that names the step of the lowest loss and its file
(`_lowest_validation`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .batches import concept_seed
from .config import TrainConfig
from .data import PictureSet, picture_set, read_caption
from .errors import ConfigError, DataError, setting, warn
from .run_folder import VALIDATION_LOG, name_changes, read_run_settings, same_names

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


# ---------------------------------------------------------------------------------------------------------------
# a run's validation pictures, checked before the model loads, and its closing line


def _split_then(checkpoint: tuple[Path, dict] | None, config: TrainConfig) -> list[list[str] | None] | None:
    """The pictures a resumed run's checkpoint held out, each concept's, where the run's --validation-split and
    --validation-seed are today's (None otherwise): a run goes on with the split it started with, also one started
    before textinv counted kohya subsets' shares each on its own."""
    if checkpoint is None or not checkpoint[1].get("held_out"):
        return None
    saved = read_run_settings(config.out)
    if (saved.get("validation_split"), saved.get("validation_seed")) != (config.validation_split,
                                                                         config.validation_seed):
        return None
    return checkpoint[1]["held_out"]


def _split_each_concept(config: TrainConfig, specs: list[dict], found: list[PictureSet], seed: int, say: bool,
                        then: list[list[str] | None] | None) -> tuple[list[PictureSet], list[PictureSet]]:
    """Each concept's pictures split by --validation-split (`split_pictures`, concept k's by its own
    seed): (the ones trained on, the ones held out); those held out are printed when `say`. A concept with a single
    picture has none to spare. `then`: the pictures a resumed run held out (`_split_then`), each concept's, taken
    where all of them are still there (a picture added or removed is then said by `check_resumable`)."""
    for spec, pictures in zip(specs, found):
        if len(pictures.paths) < 2:
            raise ConfigError(f"{setting('validation_split', config.validation_split, 'g')}: {pictures.where} holds "
                              f"one picture ({spec['token']}'s), and training needs it; add pictures, or leave out "
                              f"{setting('validation_split')} ({setting('validate_every')} N scores the training "
                              f"pictures instead)")
    # (kohya's subsets, and the folders of its layout, which it makes subsets: each holds out its own share, as
    # kohya counts it; `described` says a concept's pictures are one or the other)
    split = [split_pictures(p, config.validation_split, concept_seed(seed, k), by_subset=p.described is not None,
                            then=names) for k, (p, names) in enumerate(zip(found, then or [None] * len(found)))]
    for pictures, (_, held) in zip(found, split):
        if not held.paths:
            _refuse_none_held(config.validation_split, pictures)
    if say:
        for spec, (_, held) in zip(specs, split):
            mine = f"{spec['token']}: " if len(specs) > 1 else ""
            print(f"{mine}held out for the validation loss: {', '.join(held.names)}")
    return [kept for kept, _ in split], [held for _, held in split]


def _refuse_none_held(share: float, pictures: PictureSet) -> None:
    """Refuse a --validation-split `share` that holds out none of kohya subsets' `pictures` (each subset's
    round(share x its pictures)), naming the share that holds one out."""
    sizes = subset_sizes(pictures)
    fix = (f"give a share above {0.5 / max(sizes):g}" if max(sizes) > 1 else
           "each subset's one picture is trained on: add pictures")
    raise ConfigError(f"{setting('validation_split', share, 'g')} holds out none of {pictures.where}'s pictures, "
                      f"counted as kohya counts them (round({share:g} x each subset's pictures, "
                      f"{', '.join(map(str, sizes))}), leaving one of each to train on); {fix}, or leave out "
                      f"{setting('validation_split')} (validation_split)")


def _validation_pictures(folder: str, trained: PictureSet) -> PictureSet:
    """The pictures of --validation-images, none of them one that is trained on, their caption files read (one that
    cannot be is said before the model loads, as the training pictures' are) with the training pictures' caption
    extension where they share one (kohya's subsets' caption_extension)."""
    shared = trained.caption_extensions[0] if len(set(trained.caption_extensions)) == 1 else None
    try:
        held = picture_set(folder) if shared is None else \
            picture_set(subsets=[{"images": folder, "repeats": 1, "caption_extension": shared}])  # (its files known)
        for path in held.paths:
            read_caption(path, shared)
    except DataError as e:  # (its own words are about the training pictures' folder: say which flag gave it)
        raise DataError(f"{setting('validation_images', folder)}: {e}") from None
    both = {p.resolve() for p in held.paths} & {p.resolve() for p in trained.paths}
    if both:
        raise ConfigError(f"{setting('validation_images', folder)}: {', '.join(sorted(p.name for p in both))} "
                          f"{'is' if len(both) == 1 else 'are'} trained on too ({trained.where}), so "
                          f"{'its' if len(both) == 1 else 'their'} loss says nothing of pictures the word has not "
                          f"seen; keep the validation pictures in a folder of their own")
    return held


def _warn_other_validation_pictures(state: dict, held: PictureSet, step: int) -> None:
    """Warn when --validation-images holds other pictures than the checkpoint's run scored: validation.csv's curve
    then joins the losses of two sets at `step`."""
    then = (state.get("held_out") or [None])[0]
    if then is None or same_names(then, held.names) is not None:
        return
    detail = name_changes(then, held.names)
    warn(f"--validation-images {held.where} holds other pictures than when the run began ({detail}): "
         f"{VALIDATION_LOG} scores those before step {step} and these after it")  # (at `train`'s caller: `warn`)


def _lowest_validation(validated: list[tuple[int, float]], last: int, step_files: Callable[[int], list[Path]]
                       ) -> str:
    """Which step's vectors had the lowest validation loss (summed over the concepts), and where they are saved;
    `step_files`: each concept's embedding file of a step, when it was kept (embeddings/)."""
    step, loss = min(validated, key=lambda entry: entry[1])
    files = step_files(step)
    if step == last:
        kept = "the embedding saved" if len(files) == 1 else "each concept's embedding saved"
    elif step == 0:
        kept = "the starting vectors: training has not lowered it"
    elif all(f.is_file() for f in files):
        kept = f"that step's embedding: {files[0]}" if len(files) == 1 else \
            f"that step's embeddings: {', '.join(map(str, files))}"
    else:
        kept = "no embedding of that step is kept (--save-every N keeps one every N steps)"
    summed = " (summed over the concepts)" if len(files) > 1 else ""
    return f"lowest validation loss{summed} {loss:.6f} at step {step} ({VALIDATION_LOG}); {kept}"
