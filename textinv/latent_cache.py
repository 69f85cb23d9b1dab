"""The latent cache: each training picture encoded by the VAE once, before the loop, and kept as the mean and std of
its latent distribution, with its mirror image's after all of them (`encode_latents`, `_encoded`; pictures of
several shapes with --buckets one at a time, `_latents_each`), its alpha weights with --alpha-mask, --random-crop's
RANDOM_CROPS windows of each picture in its place, and --latent-sampling's reading of them (`sampled_latents`).

The loop then draws z = mean + std * eps for each sample, which is what running the encoder at every step would give
(its output is deterministic), without the VAE in the step. Moved out of train.py, which reads the pictures and
calls `_encoded` for each concept; nothing here knows the run.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import latent_weights, latent_weights_each, unit_pixels


# --random-crop: each picture's windows encoded up front, one of them drawn for each sample (as the caption bank
# holds 256 captions a picture); with 8, each window is used about 300 times in a 3000-step run of 5
# pictures at batch 4, and encoding them costs 8 times the encoding of the centres
RANDOM_CROPS = 8


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor | Sequence[torch.Tensor], batch: int = 8,
                   mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE's latent distribution for each picture (N, 3, H, W) -> 2 x (N, 4, H/8, W/8); with
    `mirrored`, the N mirror images follow: 2 x (2N, 4, H/8, W/8).

    The VAE encoder runs once per picture; training then samples z = mean + std * eps each step, which is exactly
    what running the encoder every step would give (its output is deterministic), for a fraction of the cost.
    `pixels` may be a list of (3, H, W) pictures: only one batch is stacked (and mirrored) at a time. Stacking
    them all with their mirror images took four times the pictures' own memory: 6 GB more for 500 at 512 px.
    uint8 pictures (0..255: --random-crop's windows) are turned into floats a batch at a time (`unit_pixels`).
    """
    means, stds = [], []
    count = len(pixels)
    for start in range(0, count * (2 if mirrored else 1), batch):  # batches as of the pictures then their mirrors
        chunk = torch.stack([_floats(pixels[i % count]).flip(-1) if i >= count else _floats(pixels[i])
                             for i in range(start, min(start + batch, count * (2 if mirrored else 1)))])
        dist = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _floats(pixels: torch.Tensor) -> torch.Tensor:
    """A picture as floats in [-1, 1]: a uint8 one converted, one by one (stacked with float ones, torch would
    promote its 0..255 to floats as they are: a window transparent all over is its float centre)."""
    return unit_pixels(pixels) if pixels.dtype == torch.uint8 else pixels


def _encoded(vae, pictures: list, folder, alpha_mask: bool, device) -> tuple:
    """Pictures' cached latent distributions and alpha weights (None without --alpha-mask): (means, stds, weights),
    each of 2I, the pictures' then their mirror images': tensors (2I, 4, h, w) when the pictures are of one shape,
    else lists (`_latents_each`: --buckets)."""
    if len({p.pixels.shape for p in pictures}) > 1:
        return _latents_each(vae, pictures, folder, alpha_mask, device)
    mean, std = encode_latents(vae, [p.pixels for p in pictures], mirrored=True)  # (2I, 4, h, w)
    return mean, std, latent_weights(pictures, mean.shape[-2:], folder).to(device) if alpha_mask else None


def sampled_latents(mean, std, method: str, seed: int) -> tuple:
    """Cached latent distributions (`_encoded`'s tensors, or lists of them) as --latent-sampling keeps them, the web
    UI's latent sampling method: "random" as they are (each use of a picture draws mean + std * eps anew, as the
    paper's code encodes every step); "deterministic" the means alone (std 0); "once" one draw of each from `seed`
    (its own generator: the run's other draws stay as they are), std 0. The web UI's default is "once".

    >>> mean, std = sampled_latents(torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8), "deterministic", seed=0)
    >>> bool(std.eq(0).all()) and bool(mean.eq(0).all())
    True
    """
    if method == "random":
        return mean, std
    listed = isinstance(mean, list)
    means, stds = (mean, std) if listed else ([mean], [std])
    if method == "once":
        g = torch.Generator().manual_seed(seed)
        means = [m + s * torch.randn(m.shape, generator=g).to(m.device) for m, s in zip(means, stds)]
    stds = [torch.zeros_like(s) for s in stds]
    return (means, stds) if listed else (means[0], stds[0])


@torch.no_grad()
def _latents_each(vae, pictures: list, folder, alpha_mask: bool, device) -> tuple[list, list, list | None]:
    """Cached latent distributions of pictures of several sizes, one at a time: (means, stds, pixel weights), each
    a list of 2I: the pictures', then their mirror images' (as `encode_latents` lays them out)."""
    means, stds = [], []
    for p in pictures:
        mean, std = encode_latents(vae, torch.stack([p.pixels, p.pixels.flip(-1)]))  # (2, 4, h, w)
        means.append(mean)
        stds.append(std)
    means, stds = [m[0] for m in means] + [m[1] for m in means], [s[0] for s in stds] + [s[1] for s in stds]
    weights = None
    if alpha_mask:
        each = [w[0].to(device) for w in latent_weights_each(pictures, [m.shape[-2:] for m in means], folder)]
        weights = each + [w.flip(-1) for w in each]
    return means, stds, weights
