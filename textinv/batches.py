"""What each training batch draws from: every caption tokenized once (`CaptionBank`, with the checks that a caption
holds its concept's token whole and no other concept's), and the sampler of the random parts of a batch
(`BatchSampler`: pictures in shuffled epochs, flips, captions, latent samples, noise with kohya's settings
(`NoiseOptions`, `pyramid_levels`) and timesteps), whose state goes into checkpoints, seeded for each concept of a
run by `concept_seed`.

Moved out of train.py, which keeps the run and its loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import emphasis
from .config import MAX_TOKEN_LENGTHS, TrainConfig
from .data import CaptionSampler
from .errors import ConfigError
from .tokens import token_names


class CaptionBank:
    """Every caption a picture can get, tokenized once per tokenizer: `ids[k]` (C, 77), and per picture the
    caption rows it draws from. With a `max_token_length` above 75 (--max-token-length 150 or 225) each caption's
    ids are kohya's chunks, (C, n * 77) (`long_caption_ids`). `empty[k]` (1, 77): the empty prompt, which a
    sample whose caption is dropped trains on (--caption-dropout: `BatchSampler`). `expand`: each caption's text
    as it is tokenized (`_read_concepts` gives `generate.expand_all`'s, so a multi-vector token that a model saved
    whole holds is read with all its vectors, as generate reads it)."""

    def __init__(self, tokenizers: list, sampler: CaptionSampler, device, entries: list[str] | None = None,
                 max_token_length: int = emphasis.CHUNK, expand: Callable[[str], str] | None = None):
        # with kohya's tag warm-up, a picture's captions per count of varied tags used, from warmup_min to all (its
        # last level, the one without a warm-up)
        self.tags = sampler.tags
        counts = [sampler.varied_count(i) if sampler.tags.warmup_steps else 0 for i in range(len(sampler))]
        low = sampler.tags.warmup_min
        self.levels = max(max(counts) - low + 1, 1)
        texts, rows, picture_of = _levelled_captions(sampler, counts, self.levels)
        texts = [expand(t) for t in texts] if expand is not None else texts
        self.texts = texts
        self.counts_of_tags = torch.tensor(counts, device=device)  # (I,)
        self.picture_of = picture_of  # each caption's picture
        if entries:
            for tok in tokenizers:
                _check_token_fits(tok, texts, entries, moved=sampler.tags.active and not sampler.tags.keep,
                                  max_token_length=max_token_length)
        self.ids = [_caption_ids(tok, texts, max_token_length).to(device) for tok in tokenizers]
        self.empty = [_caption_ids(tok, [""], max_token_length).to(device) for tok in tokenizers]
        width = max(len(r) for r in rows)
        self.choices = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], device=device)  # (I * L, K)
        self.counts = torch.tensor([len(r) for r in rows], device=device)  # (I * L,)

    def pick(self, image: torch.Tensor, u: torch.Tensor, step: int | None = None,
             dropped: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Token ids (B, 77) per tokenizer (B, n * 77 with kohya's chunks) for pictures `image` (B,) given uniform
        draws `u` (B,) in [0, 1); at `step` (0 = the first) of a tag warm-up, its captions (`tags_used`); the
        samples `dropped` (B,) marks get the empty prompt's (kohya's caption dropout)."""
        level = torch.full_like(image, self.levels - 1)
        warmup = self.tags.warmup_steps
        if step is not None and warmup and step < warmup:
            count, low = self.counts_of_tags[image], self.tags.warmup_min
            used = torch.minimum(count, step * (count - low) // warmup + low)
            level = torch.where(count > low, used - low, level).clamp(0, self.levels - 1)
        row = image * self.levels + level
        k = (u * self.counts[row]).long().clamp(max=self.choices.shape[1] - 1)
        rows = self.choices[row, k]
        picked = [ids[rows] for ids in self.ids]
        if dropped is None:
            return picked
        return [torch.where(dropped[:, None], empty, ids) for ids, empty in zip(picked, self.empty)]  # (B, 77)


def _caption_ids(tokenizer, texts: list[str], max_token_length: int) -> torch.Tensor:
    """`texts`' token ids, (C, 77): one pass of the text encoder, as always; (C, n * 77) kohya's chunks with a
    --max-token-length above 75 (`long_caption_ids`)."""
    if max_token_length == emphasis.CHUNK:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    return long_caption_ids(tokenizer, texts, max_token_length)


def _levelled_captions(sampler: CaptionSampler, counts: list[int], levels: int
                       ) -> tuple[list[str], list[list[int]], list[int]]:
    """Every caption of `sampler`'s pictures (`CaptionBank`), per picture and warm-up level (`counts`: each one's
    varied tags, 0 without a warm-up): the texts, the rows of texts each picture draws from at each level (row
    i * levels + level) and each text's picture."""
    low = sampler.tags.warmup_min
    texts: list[str] = []
    rows: list[list[int]] = []
    picture_of: list[int] = []
    for i, count in enumerate(counts):
        used = [min(low + level, count) for level in range(levels)] if count > low else [None] * levels
        for level, n in enumerate(used):
            if level and n == used[level - 1]:
                rows.append(rows[-1])  # (all used already: the level before's captions)
                continue
            options = sampler.candidates(i, None if n == count or n is None else n)
            rows.append([len(texts) + j for j in range(len(options))])
            texts.extend(options)
            picture_of.extend([i] * len(options))
    return texts, rows, picture_of


def long_caption_ids(tokenizer, texts: list[str], max_token_length: int) -> torch.Tensor:
    """Token ids of captions read to `max_token_length` tokens (150 or 225) as kohya's scripts read them with their
    --max_token_length (sd-scripts' `get_input_ids`, library/strategy_base.py): (C, n * 77), n = max_token_length /
    75 chunks of 77 ids laid end to end. Each caption is tokenized once to max_token_length + 2 ids (start, tokens,
    end, padding; a longer one is cut), then cut every 75 tokens, with no regard for words, tags or a learned
    token's vectors; each chunk gets the start id before its 75 and the caption's last id (its end or padding)
    after them. Every caption has all n chunks: those past its end hold padding. Where the tokenizer pads with
    another id than its end id (SD 2.x's and SDXL's second tokenizer pad with '!'), a chunk whose last token is a
    word ends with the end id, and a chunk of padding only starts with one, as there.

    >>> long_caption_ids(model.tokenizer, ["a photo of a dog"], 150).shape  # doctest: +SKIP
    torch.Size([1, 154])
    """
    width = tokenizer.model_max_length  # 77: a chunk's 75 tokens between its start and end
    end, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer(texts, padding="max_length", max_length=max_token_length + 2, truncation=True,
                    return_tensors="pt", verbose=False).input_ids  # (C, L + 2)
    chunks = []
    for start in range(1, max_token_length + 1, width - 2):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + width - 2], ids[:, -1:]], dim=1)  # (C, 77)
        if pad != end:
            chunk[(chunk[:, -2] != end) & (chunk[:, -2] != pad), -1] = end  # (a full chunk: ... word <end>)
            chunk[chunk[:, 1] == pad, 1] = end  # (an empty one: <start> <end> <pad> ...)
        chunks.append(chunk)
    return torch.stack(chunks, dim=1).reshape(len(texts), -1)  # (C, n * 77)


def _check_token_fits(tokenizer, texts: list[str], entries: list[str], moved: bool = False,
                      max_token_length: int = emphasis.CHUNK) -> None:
    """Refuse captions that training's window (the text encoder's 77 tokens, or --max-token-length's) cuts inside
    the token's entries (`entries`: the token and its `_1`... names). The rest of a long caption may be cut, as
    everywhere, but a caption whose token is cut teaches nothing, or trains only the first of its vectors. `moved`:
    tag shuffling may have moved the token's tag back (the fix is then to keep it in place)."""
    ids = set(tokenizer.convert_tokens_to_ids(entries))
    limit = max_token_length + 1  # the start marker and the tokens read; the place after them is the end marker
    for text, full in zip(texts, tokenizer(texts, verbose=False).input_ids):
        # every entry inside the window <=> its first mention is whole (a later mention may be cut, as any words)
        if len(full) > limit + 1 and ids & set(full) and not ids <= set(full[:limit]):
            reads = ("the text encoder reads the first 77" if max_token_length == emphasis.CHUNK else
                     f"--max-token-length {max_token_length} reads the first {limit + 1}")
            longer = next((n for n in MAX_TOKEN_LENGTHS if n > max_token_length and ids <= set(full[:n + 1])), None)
            raise ConfigError(f"the training caption {text!r} is {len(full)} tokens long and {reads}, so it cuts the "
                              f"token's {len(entries)} vector(s); shorten the caption or template, put the token "
                              f"earlier in it, or use fewer --vectors"
                              + (f", or read more of it with --max-token-length {longer} (kohya's layout: 75-token "
                                 f"chunks)" if longer else "")
                              + ("; --shuffle-tags moved it back: --keep-tags 1 keeps a first tag that holds it "
                                 "in place" if moved else ""))


def _check_no_other_tokens(tokenizer, bank: CaptionBank, pictures: list, spec: dict, others: list[str],
                           vectors: int) -> None:
    """Refuse a caption of this concept that the tokenizer reads as holding another concept's token (`others`):
    its samples would train that token too, from pictures not of its concept, where the concept's own run reads
    the text as plain word pieces. Concepts of one run learn independently, each as in a run of its own."""
    for other in others:
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(token_names(other, vectors)), device=bank.ids[0].device)
        found = torch.isin(bank.ids[0], ids).any(dim=1).nonzero().flatten().tolist()
        if found:
            text, picture = bank.texts[found[0]], pictures[bank.picture_of[found[0]]].path.name
            raise ConfigError(f"the caption of {picture} in {spec['images']} ({text!r}) names {other}, "
                              f"another concept's token in this run: its samples would train {other} too, which "
                              f"its own run would not; write that concept otherwise in the caption, or learn the "
                              f"two in separate runs")


@dataclass(frozen=True)
class NoiseOptions:
    """kohya's noise settings beyond the plain --noise-offset (`BatchSampler` draws their random parts, `_draw`
    puts them together with the latents: `composed_noise`). `of` gives None when all are off."""

    offset_random_strength: bool = False  # --noise-offset-random-strength
    adaptive_scale: float = 0.0  # --adaptive-noise-scale
    multires_iterations: int = 0  # --multires-noise-iterations
    multires_discount: float = 0.3  # --multires-noise-discount
    ip_gamma: float = 0.0  # --ip-noise-gamma
    ip_random_strength: bool = False  # --ip-noise-gamma-random-strength

    @classmethod
    def of(cls, config: TrainConfig) -> "NoiseOptions | None":
        options = cls(config.noise_offset_random_strength, config.adaptive_noise_scale,
                      config.multires_noise_iterations, config.multires_noise_discount, config.ip_noise_gamma,
                      config.ip_noise_gamma_random_strength)
        on = options.offset_random_strength or options.adaptive_scale or options.multires_iterations \
            or options.ip_gamma
        return options if on else None


def pyramid_levels(generator: torch.Generator, n: int, shape: tuple[int, ...], iterations: int,
                   discount: float) -> torch.Tensor:
    """Multi-resolution noise (Whitaker 2023, "Multi-Resolution Noise for Diffusion Model Training"; kohya's
    --multires_noise_iterations): the sum over levels i = 0, 1, ... of normal noise drawn at the size over r^i (r
    uniform in [2, 4) anew each level, one for the batch), scaled up bilinearly and weighed discount^i, until a side
    is 1 pixel. (n, *shape); the noise it is added to is then rescaled to unit spread (`composed_noise`).

    >>> pyramid_levels(torch.Generator().manual_seed(0), 2, (4, 8, 8), 3, 0.3).shape
    torch.Size([2, 4, 8, 8])
    """
    channels, height, width = shape
    total = torch.zeros((n, channels, height, width))
    for i in range(iterations):
        r = 2 + 2 * torch.rand(1, generator=generator).item()
        h, w = max(1, int(height / r ** i)), max(1, int(width / r ** i))
        level = torch.randn((n, channels, h, w), generator=generator)
        total += F.interpolate(level, size=(height, width), mode="bilinear") * discount ** i
        if h == 1 or w == 1:
            break
    return total


def concept_seed(seed: int, index: int) -> int:
    """The data seed of concept `index` in a run seeded `seed` (the first concept's is the run's own)."""
    return seed + 1_000_003 * index


class BatchSampler:
    """Draws the random parts of each batch from one generator: pictures (in shuffled epochs), flips, captions,
    latent samples, noise and timesteps. Its state (generator, epoch and position in it) goes into checkpoints."""

    def __init__(self, num_images: int, repeats: int | Sequence[int], flip: bool, seed: int,
                 noise_offset: float = 0.0, noise: NoiseOptions | None = None, crops: int = 1,
                 caption_dropout: float = 0.0, dropout_every: int = 0):
        """`repeats`: how many times each picture is in an epoch, one count for all or one per picture (kohya's
        folders: the folder's count times --repeats). `noise_offset`: --noise-offset (0: off); `noise`: kohya's
        other noise settings (None: all off). `crops`: each picture's random windows (--random-crop), of which
        each sample takes one. `caption_dropout`, `dropout_every`: --caption-dropout and --caption-dropout-every
        (0: off), the samples trained on the empty prompt (`dropped`)."""
        counts = torch.tensor([repeats] * num_images if isinstance(repeats, int) else list(repeats))  # (I,)
        # an epoch's pictures, round by round (0, 1, 2, 0, 1, 2, 0, 2...): with one count for all this is
        # arange(I * repeats) % I, the table runs drew from before counts per picture, so their draws are unchanged
        rounds = torch.arange(int(counts.max())).unsqueeze(1)  # (R, 1)
        self.table = torch.arange(num_images).repeat(len(rounds))[(rounds < counts).flatten()]  # (sum of counts,)
        self.num_items = len(self.table)
        self.num_images = num_images
        self.flip = flip
        self.noise_offset = noise_offset
        self.noise = noise or NoiseOptions()
        self.crops = crops
        self.caption_dropout = caption_dropout
        self.dropout_every = dropout_every
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0
        self.epoch = 0  # the epochs begun: the first is 1, as kohya counts them

    def _next_images(self, n: int) -> torch.Tensor:
        return self._next(n)[0]

    def _next(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `n` samples' pictures (n,), and the epoch each is in (n,): an epoch may end inside a batch."""
        picked, epochs = [], []
        while n > 0:
            if self.cursor >= len(self.order):  # a new epoch: every picture its `repeats` times, shuffled
                self.order = self.table[torch.randperm(self.num_items, generator=self.generator)]
                self.cursor = 0
                self.epoch += 1
            take = self.order[self.cursor:self.cursor + n]
            self.cursor += len(take)
            n -= len(take)
            picked.append(take)
            epochs.append(torch.full((len(take),), self.epoch))
        return torch.cat(picked), torch.cat(epochs)

    def dropped(self, epochs: torch.Tensor) -> torch.Tensor:
        """Which samples of `epochs` (each one's epoch, `_next`) are trained on the empty prompt, as kohya's
        `process_caption` drops a caption (library/train_util.py): each with chance `caption_dropout`, and every
        one in an epoch that `dropout_every` divides (its current_epoch % N == 0, counted from 1: epochs N, 2N,
        ...). The chances are drawn last, and only when on, so a run without them draws what it always drew."""
        dropped = torch.zeros(len(epochs), dtype=torch.bool)
        if self.caption_dropout:
            dropped = torch.rand(len(epochs), generator=self.generator) < self.caption_dropout
        if self.dropout_every:
            dropped |= epochs % self.dropout_every == 0
        return dropped

    def draw(self, n: int, latent_shape: tuple[int, ...], timesteps: tuple[int, int]) -> dict[str, torch.Tensor]:
        """`n` samples' random parts; timesteps uniform in [timesteps[0], timesteps[1])."""
        g = self.generator
        images, epochs = self._next(n)
        drawn = {
            "image": images,
            "flip": (torch.rand(n, generator=g) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool),
            "caption": torch.rand(n, generator=g),
            "eps_latent": torch.randn((n, *latent_shape), generator=g),
            "noise": torch.randn((n, *latent_shape), generator=g),
            "timestep": torch.randint(*timesteps, (n,), generator=g),
        }
        if self.noise_offset:
            # offset noise (Guttenberg 2023, "Diffusion with offset noise"; kohya's --noise_offset): one more normal
            # number per sample and channel, times the offset, added over the whole latent, so the noise also moves
            # each channel's mean, which i.i.d. noise barely does. Drawn after the parts above, and only when on: a
            # run without it draws what it always drew. The offset noise is the noise: it is added to the latents and, for
            # v-prediction, is in the velocity target too, as in kohya's scripts.
            # With kohya's random strength the offset is a fraction of it, uniform in [0, X), one for the batch;
            # with its adaptive scale the offset also grows with each sample's latent channel mean, which `_draw`
            # knows (`composed_noise`): then the normal numbers and the strength go there.
            # (n, C, 1, 1)
            strength = torch.rand(1, generator=g) * self.noise_offset if self.noise.offset_random_strength \
                else self.noise_offset
            offset = torch.randn((n, latent_shape[0], 1, 1), generator=g)
            if self.noise.adaptive_scale:
                drawn["offset"] = torch.full((n,), float(strength))  # (n,)
                drawn["offset_normal"] = offset
            else:
                drawn["noise"] += strength * offset
        if self.noise.multires_iterations:  # (added, and the sum rescaled, by `composed_noise`)
            drawn["multires"] = pyramid_levels(g, n, latent_shape, self.noise.multires_iterations,
                                               self.noise.multires_discount)
        if self.noise.ip_gamma:
            # input perturbation (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models";
            # kohya's --ip_noise_gamma): more normal noise, times gamma (or a fraction of it, uniform in [0, gamma),
            # one for the batch), that only the noised latents get (`composed_noise`), not the target
            strength = torch.rand(1, generator=g) * self.noise.ip_gamma if self.noise.ip_random_strength \
                else self.noise.ip_gamma
            drawn["ip_noise"] = strength * torch.randn((n, *latent_shape), generator=g)
        if self.crops > 1:  # (--random-crop: drawn last, and only then, as the noise settings are)
            drawn["crop"] = torch.randint(self.crops, (n,), generator=g)
        if self.caption_dropout or self.dropout_every:
            drawn["dropped"] = self.dropped(epochs)
        return drawn

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "cursor": self.cursor,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.cursor = int(state["cursor"])
        # (a checkpoint of an earlier version holds no epoch: its run had no caption dropout, which alone reads it)
        self.epoch = int(state.get("epoch", 0))
