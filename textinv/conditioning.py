"""Prompt conditioning: what turns a pass's prompts and negatives into the pipeline's conditioning arguments and the
hooks on the UNet that draw it, as the A1111 web UI (or ComfyUI) reads the prompts.

`encode_prompts` encodes prompts whose tokens are already expanded (chunks of 77, emphasis; see `emphasis`).
`_prompted` gives a pass (`generate._pass`) its conditioning: `_layout` lays out its sub-prompts (AND), stretches of
steps (prompt editing) and chunks, `_conditioning` encodes each stretch, `_switching_conditioning` switches
stretches between steps, and `_length_mask` or `_composing` hook the UNet to hide the padding or draw composable
diffusion.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch

from . import emphasis
from .models import Model, encode_text


@torch.no_grad()
def encode_prompts(model: Model, prompts: list[str], chunks: int = 1,
                   clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Conditioning for prompts whose tokens are already expanded: hidden states (B, 77 * k, C) and, for SDXL, the
    pooled embedding (B, C2), made as in training (`models.encode_text`) and read as the A1111 web UI reads them
    (see `emphasis`): a prompt of more than 75 tokens, or with `BREAK`, in k chunks of 77 laid end to end (every
    prompt padded with empty chunks to the longest's count, and to at least `chunks`: a prompt and its negative
    must have as many); SDXL's pooled embedding is the first chunk's. Emphasis (`(word:1.3)`, `[word]`) scales
    each token's hidden state by its weight, then each chunk is scaled back to its unweighted mean; the pooled
    embedding is left unweighted, as there; SDXL's two encoders are each scaled back to their own mean, as the web
    UI wraps and weighs each on its own. A prompt of up to 75 tokens without emphasis is encoded exactly as in
    training (with the same `clip_skip`)."""
    rows = _prompt_chunks(model, prompts)
    return _encode_chunks(model, rows, max([chunks] + [len(c) for per in rows for c in per]), clip_skip)


def _prompt_chunks(model: Model, prompts: list[str], comfy: bool = False, clip_l: list[str] | None = None
                   ) -> list[list[list[tuple[list[int], list[float]]]]]:
    """Each prompt's 77-id chunks (`emphasis.token_chunks`; `comfy`: as ComfyUI cuts them,
    `emphasis.comfy_token_chunks`) in each text encoder's tokenizer: [encoder][prompt]. `clip_l`: SDXL's CLIP-L
    texts in place of the prompts (ComfyUI's CLIPTextEncodeSDXL text_l), one a prompt."""
    cut = emphasis.comfy_token_chunks if comfy else emphasis.token_chunks
    left_out = model.__dict__.get("_comfy_left_out", {}) if comfy else {}
    return [[[_left_out(c, left_out.get(name), tok.pad_token_id) for c in cut(tok, p)]
             for p in (clip_l if clip_l is not None and name == "text_encoder" and model.is_xl else prompts)]
            for name, tok, _ in model.encoders]


def _left_out(chunk: tuple[list[int], list[float]], ids: set[int] | None, pad: int) -> tuple[list[int], list[float]]:
    """A chunk without the ids of an embedding its encoder does not read (`generate.install_embedding`'s
    `comfy`), the chunk closed up and padded at its end, as ComfyUI leaves out an embedding of another width; the
    weights stay by place, as there, so those after it fall on the tokens that moved up."""
    if not ids:
        return chunk
    kept = [i for i in chunk[0] if i not in ids]
    return kept + [pad] * (len(chunk[0]) - len(kept)), chunk[1]


def _encode_chunks(model: Model, rows, count: int, clip_skip: int, emphasis_mode: str = "original",
                   means: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode_prompts` on prompts already cut into chunks (`_prompt_chunks`), each padded to `count` chunks, with
    the weights applied as `emphasis_mode` (`emphasis.MODES`) says. `means`: for each prompt, None (each chunk
    scaled back to its own mean) or the factors its chunks are scaled back by (`_schedule_means`)."""
    widths = [te.config.hidden_size for _, _, te in model.encoders]
    hidden, pooled = [], None
    for k in range(count):
        h, pool, weights = _chunk_states(model, rows, k, clip_skip)
        grouped = [m is not None and k < len(m) for m in means or []]
        if emphasis_mode == "comfy":
            h = _comfy_weighted(model, h, weights, clip_skip)
        elif emphasis_mode != "ignore" and (any(grouped) or not all(bool((w == 1).all()) for w in weights)):
            parts = []
            for e, (part, w) in enumerate(zip(h.split(widths, dim=-1), weights)):  # SDXL: each encoder's part to
                before = part.mean(dim=(1, 2), keepdim=True)  # its own mean, as the web UI weighs each on its own
                weighed = part * w.to(part.device, part.dtype)[..., None]
                # a prompt without emphasis is left as it is drawn alone (its mean can be 0: 0 / 0 would be NaN)
                plain = (w == 1).all(dim=1).to(part.device)[:, None, None]
                if emphasis_mode != "no-norm":
                    factor = before / weighed.mean(dim=(1, 2), keepdim=True)
                    for row in (i for i, g in enumerate(grouped) if g):  # (its schedule's factor, for every text)
                        factor[row], plain[row] = means[row][k][e], False
                    weighed = weighed * factor
                parts.append(torch.where(plain, part, weighed))
            h = torch.cat(parts, dim=-1)
        hidden.append(h)
        pooled = pool if k == 0 else pooled
    dtype = model.unet.dtype
    return torch.cat(hidden, dim=1).to(dtype), (pooled.to(dtype) if pooled is not None else None)


def _comfy_weighted(model: Model, h: torch.Tensor, weights: list, clip_skip: int) -> torch.Tensor:
    """Hidden states (B, 77, C) weighted as ComfyUI's CLIPTextEncode weighs them (comfy/sd1_clip.py,
    encode_token_weights): a token of weight w moved from the empty prompt's state at its place, z_empty + w (z -
    z_empty), each encoder's part by its own weights; nothing scaled back to a mean, and a token of weight 1 as it
    is."""
    if all(bool((w == 1).all()) for w in weights):
        return h
    ids = [torch.tensor([emphasis.token_chunks(tok, "")[0][0]], device=te.device) for _, tok, te in model.encoders]
    empty = encode_text(model, ids, clip_skip)[0]  # (1, 77, C): start, end, padding
    widths = [te.config.hidden_size for _, _, te in model.encoders]
    parts = []
    for part, base, w in zip(h.split(widths, dim=-1), empty.split(widths, dim=-1), weights):
        w = w.to(part.device, part.dtype)[..., None]
        parts.append(torch.where(w == 1, part, base + w * (part - base)))
    return torch.cat(parts, dim=-1)


def _chunk_states(model: Model, rows, k: int, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None, list]:
    """The hidden states (B, 77, C) and pooled embedding of every prompt's `k`th chunk in `rows`
    (`_prompt_chunks`; an empty chunk for a prompt with fewer), and each encoder's weights (B, 77)."""
    ids, weights = [], []
    for (_, tok, te), per_prompt in zip(model.encoders, rows):
        empty = emphasis.token_chunks(tok, "")[0]
        part = [c[k] if k < len(c) else empty for c in per_prompt]
        ids.append(torch.tensor([p[0] for p in part], device=te.device))
        weights.append(torch.tensor([p[1] for p in part]))
    h, pool = encode_text(model, ids, clip_skip)
    return h, pool, weights


def _schedule_means(model: Model, schedules: list[list[tuple[int, str]]], clip_skip: int,
                    emphasis_mode: str) -> list:
    """For each prompt schedule (`emphasis.prompt_schedule`) with more than one text and some emphasis, the factors
    (one per chunk and encoder) that scale its texts' weighted chunks back to their unweighted mean over all of its
    texts at once, as the web UI encodes a prompt's schedule in one batch and scales back the batch (the chunks of
    a text with fewer chunks empty); None for the others, which are scaled back each to its own mean."""
    widths = [te.config.hidden_size for _, _, te in model.encoders]
    means = []
    for schedule in schedules:
        rows = _prompt_chunks(model, [text for _, text in schedule])
        if emphasis_mode != "original" or len(schedule) < 2 or all(w == 1 for per in rows for c in per
                                                                   for _, ws in c for w in ws):
            means.append(None)
            continue
        factors = []
        for k in range(max(len(c) for per in rows for c in per)):
            h, _, weights = _chunk_states(model, rows, k, clip_skip)
            factors.append([part.mean() / (part * w.to(part.device, part.dtype)[..., None]).mean()
                            if not bool((w == 1).all()) else 1.0 for part, w in zip(h.split(widths, dim=-1), weights)])
        means.append(factors)
    return means


class _Layout(NamedTuple):
    """How `generate._pass` lays out its prompts (see `_layout`)."""

    composed: bool
    owners: list[int]
    weights: list[float]
    ends: list[int]
    texts: list[list[str]]
    rows: list
    negative_rows: list
    chunks: int
    kept: list[list[int]]
    lengths: tuple | None
    schedules: list[list[tuple[int, str]]]
    padded: bool = False


def _layout(model: Model, prompts: list[str], negative_prompt: str | list[str], steps: int,
            first_pass: int | None = None, old_editing: bool = False, comfy: bool = False,
            clip_l: tuple[str | None, str | None] = (None, None), pad: str | None = None) -> _Layout:
    """The sub-prompts, stretches of steps and chunks of 77 a pass over `steps` steps draws `prompts` with
    (`first_pass`: the first pass's steps, where this is the hires fix's pass: `emphasis.prompt_schedule`'s `first`;
    `old_editing`: its `old`; `comfy`: the prompts read and cut into chunks as ComfyUI's CLIPTextEncode does,
    `emphasis.comfy_syntax` and `emphasis.comfy_token_chunks`; `negative_prompt`: every prompt's, or a list of each
    one's; `clip_l`: SDXL's CLIP-L text of every prompt and of the negatives where it is not theirs, as ComfyUI's
    CLIPTextEncodeSDXL gives its text_l, comfy alone: it has no prompt editing or AND there, and a text of fewer
    chunks than the other encoder's gets empty ones, as there).

    Prompt editing and alternation (`emphasis.prompt_schedule`) give stretches of steps (`ends`: each one's last step)
    with texts of their own (`texts[stretch]`: each sub-prompt's, then each prompt's negative's); a prompt without them
    is one stretch. Composable diffusion (`emphasis.composable_parts`): a prompt with AND is its sub-prompts (`owners`:
    each one's prompt, `weights`), each encoded and scheduled on its own as a prompt of its own, then combined at each
    UNet call (`_composing`); a batch without AND is drawn as it always was. `rows`, `negative_rows`: each stretch's
    chunks (`_prompt_chunks`; a negative row for each sub-prompt, its prompt's), every one padded to `chunks`; `kept`:
    each stretch's chunk count the UNet reads of each sub-prompt row; `lengths`: what `_length_mask` or `_composing`
    hide of the padding, each stretch's (None: nothing); `schedules`: each sub-prompt's schedule, then each prompt's
    negative's.

    `pad`: where a picture's prompt and negative differ in chunks, "empty" (the web UI's pad_cond_uncond) has the
    UNet read both at the longer's length, the shorter's extra chunks empty (`_padded_lengths`), "v0" (its
    pad_cond_uncond_v0) the negative at the prompt's (`_repeat_negative_last`); `padded`: whether it did at the last
    step, where the web UI writes "Pad conds: True" (or "Pad conds v0: True")."""
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if comfy:
        prompts, negatives = [emphasis.comfy_syntax(p) for p in prompts], [emphasis.comfy_syntax(n) for n in negatives]
    clip_l = [None if text is None else emphasis.comfy_syntax(text) for text in clip_l]
    composed = any(emphasis.has_and(p) for p in prompts)
    parts = [emphasis.composable_parts(p) if composed else [(p, 1.0)] for p in prompts]
    owners = [i for i, per in enumerate(parts) for _ in per]  # each sub-prompt's prompt
    weights = [w for per in parts for _, w in per]
    subprompts = [text for per in parts for text, _ in per]
    schedules = [emphasis.prompt_schedule(text, steps, first_pass, old_editing) for text in subprompts + negatives]
    ends = sorted({end for schedule in schedules for end, _ in schedule})
    texts = [[next(text for end, text in schedule if last <= end) for schedule in schedules] for last in ends]
    count = len(subprompts)
    own_l = None if clip_l[0] is None else [clip_l[0]] * count
    rows = [_prompt_chunks(model, stretch[:count], comfy, own_l) for stretch in texts]
    negative_l = None if clip_l[1] is None else [clip_l[1]] * len(prompts)
    negative_chunks = [_prompt_chunks(model, stretch[count:], comfy, negative_l) for stretch in texts]  # (a picture's)
    negative_rows = [[[per[i] for i in owners] for per in r] for r in negative_chunks]  # (a sub-prompt's: its own's)
    chunks = max(len(c) for r in rows + negative_rows for per in r for c in per)  # (every stretch: as many)
    # the web UI reads a prompt and its negative each at its own length at each step (it pads neither by default):
    # the empty chunks that make them one length here are hidden from the UNet's cross-attention, each stretch's
    own_negative = [_counts(r, len(prompts)) for r in negative_chunks]  # (each picture's negative's)
    kept = _kept(rows, owners) if composed else []
    own = kept if composed else [_counts(r, count) for r in rows]
    padded = pad is not None and any(n != own_negative[-1][o] for n, o in zip(own[-1], owners))
    if pad == "v0":
        own_negative = [_longest(per, owners) for per in own]
    elif pad == "empty":
        own, own_negative = _padded_lengths(own, own_negative, owners)
    counts = {n for per in own + own_negative for n in per}
    lengths = (own, own_negative, chunks) if counts != {chunks} else None
    return _Layout(composed, owners, weights, ends, texts, rows, negative_rows, chunks, kept, lengths, schedules,
                   padded)


def _padded_lengths(own: list[list[int]], own_negative: list[list[int]], owners: list[int]) -> tuple[list, list]:
    """Each stretch's chunk counts the UNet reads of the (sub-)prompt rows (`own[s]`, sub-prompt j of picture
    `owners[j]`) and of each picture's negative row, padded as the web UI's pad_cond_uncond pads them
    (CFGDenoiser.pad_cond_uncond): the shorter of a prompt and its negative to the longer's length, with empty
    chunks (its encoding of the empty prompt, as an empty chunk here is encoded). Under composable diffusion a
    picture's sub-prompts are read at its longest's length (`_kept`), which the negative is compared with."""
    padded_own, padded_negative = [], []
    for per, negative in zip(own, own_negative):
        padded_own.append([max(n, negative[o]) for n, o in zip(per, owners)])
        padded_negative.append([max(n, longest) for n, longest in zip(negative, _longest(per, owners))])
    return padded_own, padded_negative


def _longest(per: list[int], owners: list[int]) -> list[int]:
    """Each picture's longest (sub-)prompt's chunk count, of one stretch's counts `per` (sub-prompt j: picture
    `owners[j]`'s)."""
    return [max(n for n, o in zip(per, owners) if o == i) for i in range(max(owners) + 1)]


def _repeat_negative_last(conditioning: list[dict], at: _Layout) -> None:
    """The negative's rows made each picture's prompt's length as the web UI's pad_cond_uncond_v0 makes it
    (CFGDenoiser.pad_cond_uncond_v0): a shorter one's last vector repeated to it (a longer one is cut: `_layout`'s
    lengths hide the rest). Row j is sub-prompt j's, its picture `at.owners[j]`'s negative, each at its own length,
    filled in place in each stretch's `negative_prompt_embeds` (rows, 77 * chunks, C)."""
    # (no lengths: every row is read at all the chunks)
    every = at.lengths[1] if at.lengths is not None else [[at.chunks] * (max(at.owners) + 1) for _ in conditioning]
    for c, negative_rows, targets in zip(conditioning, at.negative_rows, every):
        hidden = c["negative_prompt_embeds"].clone()
        width = hidden.shape[1] // at.chunks  # (tokens a chunk)
        for j, (n, i) in enumerate(zip(_counts(negative_rows, len(at.owners)), at.owners)):
            hidden[j, n * width:targets[i] * width] = hidden[j, n * width - 1]
        c["negative_prompt_embeds"] = hidden


def _kept(rows, owners: list[int]) -> list[list[int]]:
    """Each stretch's (`rows[s]`: its sub-prompts' chunks) chunk count the UNet reads of each sub-prompt row under
    composable diffusion: its picture's longest sub-prompt's (`_repeat_last`)."""
    kept = []
    for per_encoder in rows:
        counts = _counts(per_encoder, len(owners))
        longest = {i: max(n for n, o in zip(counts, owners) if o == i) for i in set(owners)}
        kept.append([longest[i] for i in owners])
    return kept


def _counts(per_encoder, rows: int) -> list[int]:
    """Each of the first `rows` rows' chunk count in one stretch's chunks (SDXL: the longer of both encoders')."""
    return [max(len(enc[j]) for enc in per_encoder) for j in range(rows)]


def _prompted(model: Model, pipe, unet, prompts: list[str], negative_prompt: str | list[str] | None, steps: int,
              clip_skip: int, size: tuple[int, int], emphasis_mode: str, stretch: list[int],
              first_pass: int | None = None, old_editing: bool = False, clip_l: tuple = (None, None),
              pad_conds: str | None = None
              ) -> tuple[list[int], list[dict], list]:
    """`model`'s conditioning of a pass (`generate._pass`) and what draws it: the stretches' last steps (`_layout`), the
    pipeline's conditioning arguments for each stretch, and the hooks on `unet` (`pipe`'s, or a refiner's) that
    draw composable diffusion or hide the padding (`stretch`: the stretch the next UNet call is in)."""
    width, height = size
    zeros = negative_prompt is None  # (`generate.render`'s zeros)
    at = _layout(model, prompts, "" if zeros else negative_prompt, steps, first_pass, old_editing,
                 emphasis_mode == "comfy", clip_l, pad_conds)
    count = len(at.owners)  # (the sub-prompts; each prompt's negative's texts follow them in `at.texts`)
    # SDXL's pipeline zeroes an empty negative; the web UI does so when it is empty at every step, ComfyUI's
    # CLIPTextEncode never (its ConditioningZeroOut does, on any model: `zeros`); each row's, by its prompt's negative
    zero_negative = [zeros or (model.is_xl and pipe.config.force_zeros_for_empty_prompt and emphasis_mode != "comfy"
                               and not any(s[count + i] for s in at.texts)) for i in at.owners]
    means = _schedule_means(model, at.schedules, clip_skip, emphasis_mode)
    means = (means[:count], [means[count + i] for i in at.owners])  # (the sub-prompts', each row's negative's)
    conditioning = [_conditioning(model, r, n, zero_negative, at.chunks, clip_skip, (height, width), emphasis_mode,
                                  means, pad_conds == "empty" and not zeros)
                    for r, n in zip(at.rows, at.negative_rows)]
    if pad_conds == "v0":
        _repeat_negative_last(conditioning, at)
    if not at.composed:
        return at.ends, conditioning, [_length_mask(pipe, *at.lengths, stretch, unet)] if at.lengths else []
    # the pipeline's own arguments hold one row a picture (its first sub-prompt's, which `_composing` replaces by
    # all of them at each UNet call)
    firsts = [at.owners.index(i) for i in range(len(prompts))]
    given = [_rows(c, firsts) for c in conditioning]
    _repeat_last(conditioning, at.rows, at.kept, at.chunks)
    return at.ends, given, _composing(pipe, conditioning, stretch, at.owners, at.weights, at.lengths, unet)


def _length_mask(pipe, own: list[list[int]], own_negative: list[list[int]], chunks: int, stretch: list[int],
                 unet=None):
    """A hook on the UNet that gives each call an `encoder_attention_mask` keeping each prompt's own `own[s][i]`
    chunks (and its negative's `own_negative[s][i]`) of the `chunks` every one was padded to, in the stretch `s` of
    prompt editing the call is in (`stretch[0]`): the same as the web UI's UNet calls at each one's own length at
    that step (CFGDenoiser.forward, with pad_cond_uncond off, its default). `unet`: the one hooked (default
    `pipe`'s)."""
    def add_mask(module, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        own_now, negative_now = own[stretch[0]], own_negative[stretch[0]]
        counts = (negative_now if pipe.do_classifier_free_guidance else []) + own_now
        if hidden is None or hidden.shape[0] != len(counts):
            return None
        return args, {**kwargs, "encoder_attention_mask": _chunk_mask(counts, chunks, hidden)}

    return (unet or pipe.unet).register_forward_pre_hook(add_mask, with_kwargs=True)


def _chunk_mask(counts: list[int], chunks: int, hidden: torch.Tensor) -> torch.Tensor:
    """An `encoder_attention_mask` (rows, tokens) keeping the first `counts[r]` of the `chunks` chunks of row r."""
    length = hidden.shape[1]
    return torch.stack([torch.arange(length) < n * (length // chunks) for n in counts]).to(hidden.device)


def _repeat_last(conditioning: list[dict], rows, kept: list[list[int]], chunks: int) -> None:
    """Lay out composable diffusion's sub-prompts as the web UI does (prompt_parser.reconstruct_multicond_batch,
    stack_conds): a sub-prompt shorter than the longest of its picture's (in chunks of 77) is padded to it with
    copies of its own last vector, not with empty chunks, and the UNet reads every sub-prompt at that length
    (`kept[s]`, `_kept`: each sub-prompt row's in stretch s). Each stretch's (`conditioning[s]`, `rows[s]`: its
    sub-prompts' chunks) `prompt_embeds` (K, 77 * `chunks`, C) are so filled in place.

    The web UI pads to the longest of its whole batch; here, of the picture's own sub-prompts, so a picture is its
    own at any batch size and among any batch-mates."""
    for c, per_encoder, longest in zip(conditioning, rows, kept):
        hidden = c["prompt_embeds"].clone()  # (K, 77 * chunks, C)
        width = hidden.shape[1] // chunks  # (tokens a chunk)
        for j, n in enumerate(_counts(per_encoder, len(longest))):
            hidden[j, n * width:longest[j] * width] = hidden[j, n * width - 1]
        c["prompt_embeds"] = hidden


def _rows(conditioning: dict, index: list[int]) -> dict:
    """`_conditioning`'s arguments with only the rows `index` of each tensor (the sizes are kept)."""
    return {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in conditioning.items()}


def _composing(pipe, conditioning: list[dict], stretch: list[int], owners: list[int], weights: list[float],
               lengths: tuple | None, unet=None) -> list:
    """Hooks on the UNet that draw composable diffusion (`emphasis.composable_parts`) with the pipeline unchanged.

    `conditioning[stretch[0]]` holds one row per sub-prompt (sub-prompt j belongs to picture `owners[j]`, weight
    `weights[j]`) and its picture's negative's. Each UNet call is run on [uncond (B rows); cond_1 ... cond_K] instead of
    the pipeline's [uncond; cond] (or [cond] without guidance), and gives back [uncond; uncond + sum_j w_j (cond_j -
    uncond)] (without guidance: the second part alone), so the pipeline's own guidance step, uncond + g (x - uncond),
    draws the web UI's uncond + sum_j w_j g (cond_j - uncond) (sd_samplers_cfg_denoiser.combine_denoised; the same in
    the UNet's output as in the denoised picture, both being affine in it). Guidance 1, which diffusers draws without
    the negative, still draws it here, as the web UI does. `lengths`: (kept, own_negative, chunks): each stretch's chunk
    counts of the sub-prompt rows read (`_repeat_last`: a picture's longest) and of each picture's negative (its own,
    or as `_padded_lengths` pads it), of the `chunks` all are padded to; or None (all are read whole). A step costs
    K + 1 UNet rows a picture. `unet`: the one hooked (default `pipe`'s)."""
    count = len(set(owners))
    firsts = [owners.index(i) for i in range(count)]  # (each picture's first row: its negative's)
    state = {}

    def expand(module, args, kwargs):
        kwargs = dict(kwargs)
        args = list(args)
        if len(args) > 2:  # (encoder_hidden_states passed by position)
            kwargs["encoder_hidden_states"] = args.pop(2)
        sample, t = args[0], args[1]
        guided = sample.shape[0] == 2 * count
        if not guided and sample.shape[0] != count:
            return None
        state["guided"] = guided
        c = conditioning[stretch[0]]
        x = sample[-count:]  # (B, C, h, w): each picture's latents, the same in both halves
        args[0] = torch.cat([x, x[owners]])  # (B + K, C, h, w)
        if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == sample.shape[0]:
            args[1] = torch.cat([t[-count:], t[-count:][owners]])
        hidden = torch.cat([c["negative_prompt_embeds"][firsts], c["prompt_embeds"]])
        kwargs["encoder_hidden_states"] = hidden
        added = kwargs.get("added_cond_kwargs")
        if added is not None and "text_embeds" in added:  # SDXL: each sub-prompt's pooled embedding, the time ids
            ids = added["time_ids"]
            kwargs["added_cond_kwargs"] = {
                **added, "text_embeds": torch.cat([c["negative_pooled_prompt_embeds"][firsts],
                                                   c["pooled_prompt_embeds"]]),
                "time_ids": torch.cat([ids[:count], ids[-count:][owners]])}
        if lengths is not None:
            kept, own_negative, chunks = lengths
            counts = own_negative[stretch[0]] + kept[stretch[0]]
            kwargs["encoder_attention_mask"] = _chunk_mask(counts, chunks, hidden)
        return tuple(args), kwargs

    def combine(module, args, kwargs, output):
        if "guided" not in state:
            return None
        guided = state.pop("guided")
        out = output[0] if isinstance(output, tuple) else output.sample
        uncond = out[:count]
        mixed = uncond.clone()
        for j, (i, w) in enumerate(zip(owners, weights)):
            mixed[i] += w * (out[count + j] - uncond[i])
        out = torch.cat([uncond, mixed]) if guided else mixed
        if isinstance(output, tuple):
            return (out,) + tuple(output[1:])
        output.sample = out
        return output

    unet = unet or pipe.unet
    return [unet.register_forward_pre_hook(expand, with_kwargs=True),
            unet.register_forward_hook(combine, with_kwargs=True)]


def _conditioning(model: Model, rows, negative_rows, zero_negative: list[bool], chunks: int, clip_skip: int,
                  size: tuple[int, int], emphasis_mode: str = "original", means: tuple = (None, None),
                  pad: bool = False) -> dict:
    """The pipeline's conditioning arguments for prompts and their negatives already cut into chunks;
    `zero_negative`: each row's, True for zeros in place of its negative (SDXL's for an empty negative prompt;
    ComfyUI's ConditioningZeroOut on any model); `size`: (height, width), SDXL's original and
    target size micro-conditioning (its time ids), in the order diffusers and SDXL's training use; `means`: the
    prompts' and the negatives' `_encode_chunks` means; `pad`: an SDXL empty negative's zeros are its first chunk
    alone, the web UI's pad_cond_uncond padding them with the empty prompt's encoding (`_padded_lengths`)."""
    cond, pooled = _encode_chunks(model, rows, chunks, clip_skip, emphasis_mode, means[0])
    uncond, neg_pooled = _encode_chunks(model, negative_rows, chunks, clip_skip, emphasis_mode, means[1])
    if any(zero_negative):
        zeroed = uncond.shape[1] // chunks if pad else uncond.shape[1]  # (an empty negative's one chunk, padded)
        zero = torch.tensor(zero_negative, device=uncond.device)
        head = torch.where(zero[:, None, None], torch.zeros_like(uncond[:, :zeroed]), uncond[:, :zeroed])
        uncond = torch.cat([head, uncond[:, zeroed:]], dim=1)
        neg_pooled = None if pooled is None else torch.where(zero[:, None], torch.zeros_like(pooled), neg_pooled)
    if not model.is_xl:
        return dict(prompt_embeds=cond, negative_prompt_embeds=uncond)
    return dict(prompt_embeds=cond, negative_prompt_embeds=uncond, pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=neg_pooled, original_size=size, target_size=size)


def _switching_conditioning(model: Model, steps: int, ends: list[int], conditioning: list[dict],
                            current: list[int], per_call: bool = False) -> dict:
    """Pipeline arguments that give each sampling step its stretch's conditioning, as the web UI does: step s,
    counted from 0, takes the first stretch whose last step `ends[k]` is at least s (so an edit at step 5 of 10
    switches after 6 steps, and `[a|b]` draws a, a, b, a, ...). Diffusers calls `callback_on_step_end` after each
    iteration and what it returns replaces the tensors the next ones read (under classifier-free guidance the
    negative's and the prompt's, laid end to end). An iteration's step is its timestep's place among the
    schedule's distinct timesteps: PNDM repeats one (steps + 1 iterations), Heun-like samplers take two per step; a
    sampler that draws more steps than asked (ComfyUI's ddim_uniform, the web UI's DDIM schedule type: 31 at 30)
    counts each on past the schedule's last, as the web UI's step counter does. `per_call`: an iteration's step is its place among the iterations, one model call each, as the web UI counts
    a second-order sampler's steps (`samplers.step_multiplier`).
    `current` ([0] to start) holds the stretch the next iteration is in, which `_composing` reads too."""
    names = ["prompt_embeds"] + (["add_text_embeds"] if model.is_xl else [])
    step_of: list[int] = []  # each iteration's step, from 0 (the timesteps are set once sampling starts)

    def switch(pipe, i, t, tensors):
        if not step_of:  # (an img2img pass runs the schedule's last `num_timesteps` only)
            timesteps = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) - pipe.num_timesteps:].tolist()
            place = {value: n for n, value in enumerate(dict.fromkeys(timesteps))}
            more = len(place) > steps  # (its steps past the last take the last stretch)
            step_of.extend(range(len(timesteps)) if per_call else (place[value] if more else
                                                                   place[value] * steps // len(place)
                                                                   for value in timesteps))
        if i + 1 >= len(step_of):
            return {}
        k = min(bisect.bisect_left(ends, step_of[i + 1]), len(ends) - 1)  # the next iteration's stretch
        if k == current[0]:
            return {}
        current[0] = k
        return _step_tensors(pipe, conditioning[k], model.is_xl)

    return dict(callback_on_step_end=switch, callback_on_step_end_tensor_inputs=names)


def _step_tensors(pipe, c: dict, xl: bool, time_ids: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """What a step callback returns to condition the next iterations on `c` (`_conditioning`'s arguments): the
    prompt's embeddings (SDXL: and pooled ones; `time_ids` where given), each with the negative's laid before them
    under classifier-free guidance, as the pipeline lays them out."""
    pairs = {"prompt_embeds": (c["negative_prompt_embeds"], c["prompt_embeds"])}
    if xl:
        pairs["add_text_embeds"] = (c["negative_pooled_prompt_embeds"], c["pooled_prompt_embeds"])
    if time_ids is not None:
        pairs["add_time_ids"] = time_ids
    guided = pipe.do_classifier_free_guidance
    return {name: torch.cat(pair) if guided else pair[1] for name, pair in pairs.items()}
