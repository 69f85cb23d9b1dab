"""Running out of memory in training: what `train` was doing (`_Where`, kept up to date as it goes) and the message
that says it (`_memory_error`): the settings that need less there, the batch that fits where it can be worked out
on the model's meta-device twin (`_batches_that_fit`), and how the run goes on. `textinv.memory` holds what
training, generation and scoring share.

Moved out of train.py, which keeps the run and its loop.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .errors import ON_COMMAND_LINE, setting
from .memory import WORKSPACE, largest_batch, memory_error, meta_twin, sides, smaller_size, step_bytes
from .models import Model, precision_name
from .run_folder import checkpoints


@dataclass
class _Where:
    """What `_train` is doing, kept up to date as it goes, for the message if the device runs out of memory:
    `stage` is load, latents, step or grid; `step` the step being taken (or whose grid is drawn); `saved` the step
    the run was saved at when it ran out; `writing`: this run has written its config.yaml."""

    config: TrainConfig
    dtype: torch.dtype
    stage: str = "load"
    step: int = 0
    resolution: int | tuple[int, int] | None = None  # (a square's side, or (W, H): --resolution WIDTHxHEIGHT)
    prompts: int = 0
    at_once: int = 0  # (a grid's pictures drawn together, `sample_grid`'s `drawing`: prompts with options apart)
    drawn_at: tuple[int, int] | None = None  # (their width and height)
    saved: int | None = None
    writing: bool = False
    model: Model | None = None  # (once loaded: which batch fits is worked out on its meta-device twin)
    clip_skip: int = 1
    held: int | None = None  # (on a GPU: torch's allocated bytes as the steps began, `_allocated`)
    progress: bool = False  # (say so on stderr while the batch that fits is worked out: seconds, before the error)


def _memory_error(where: _Where, device: torch.device, error: BaseException):
    """The `DeviceMemoryError` for running out of memory at `where`: the settings that need less there, the one
    that changes what is learned least first, and how the run goes on."""
    config = where.config
    size = "x".join(map(str, sides(where.resolution))) if where.resolution else "its size"
    size = f"about {size}" if config.buckets else size
    precision = precision_name(where.dtype)
    # each fix: its settings (as its user writes them: `errors.setting`), what it does, and whether a --resume may take
    # it (it changes nothing that is learned)
    half = "fp16" if device.type == "mps" or device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    fixes = [(setting("precision", half), "", False)] if where.dtype == torch.float32 else []
    if where.resolution and where.stage != "load":
        smaller = smaller_size(where.resolution)  # (a square's side a number, as Python gives it: resolution=384)
        fixes.append((setting("resolution", int(smaller) if smaller.isdigit() else smaller),
                      "the pictures are learned at that size", False))
    fit = None
    if where.stage == "load":
        doing = f"loading the model ({precision})"
    elif where.stage == "latents":
        doing = f"caching the pictures' latents (the VAE encoding them at {size}, {precision})"
    elif where.stage == "grid":
        doing, fixes = _grid_out_of_memory(where)
    else:
        doing, fit = _step_out_of_memory(where, device, size, precision, fixes)
    after = _how_the_run_goes_on(where, fixes)
    listed = [f"{flags} ({why})" if why else flags for flags, why, _ in fixes]
    if where.stage == "step" and fit:
        after = f"{_what_fits(config, fit, size, precision)}. {after}"
    return memory_error(device, doing, listed, after, error)


def _grid_out_of_memory(where: _Where) -> tuple[str, list[tuple[str, str, bool]]]:
    """`_memory_error` drawing a sample grid: what was drawn, and the fixes (each its settings, what it does, and
    whether a --resume may take it)."""
    # the pictures drawn at once: all the grid's, or with a sample prompts file's options those of one set of
    # settings, at their own size (the grid's is the training size, never "about" it)
    n = where.at_once or where.prompts
    width, height = where.drawn_at or (sides(where.resolution) if where.resolution else (None, None))
    drawn = f"{width}x{height}" if width else "its size"
    held = (f"{n} prompt{'s' * (n > 1)}" if n == where.prompts else
            f"{n} of its {where.prompts} prompts at once")
    doing = f"drawing the sample grid of step {where.step} ({held} at {drawn})"
    fixes = [(f"fewer {setting('sample_prompts')}", f"the grid draws {'its' if n == where.prompts else 'these'} {n} "
              f"at once", True)] * (n > 1) + [(setting("sample_every", 0), "no grids", True)]
    if where.config.cuda_graphs:  # (the captured step's memory stays reserved while the grid is drawn)
        fixes.append((_off("cuda_graphs"), "the training step's memory is then free for the grid", True))
    return doing, fixes


def _step_out_of_memory(where: _Where, device: torch.device, size: str, precision: str,
                        fixes: list[tuple[str, str, bool]]) -> tuple[str, tuple[int, int] | None]:
    """`_memory_error` in a training step: what the step was, with the fixes that suit it put first in `fixes`,
    and the samples that fit (`_batches_that_fit`), where it can say."""
    config = where.config
    concepts = len(config.concept_list())
    per_step = config.batch * config.grad_accum
    fit = _batches_that_fit(where, device, config.batch * concepts)
    batch = f"batch {config.batch}" + (f" per concept x {concepts} concepts" if concepts > 1 else "") + \
        (f" x grad-accum {config.grad_accum}" if config.grad_accum > 1 else "")
    doing = f"in training step {where.step} ({batch}, {size}, {precision}" + \
        (f", {setting('gradient_checkpointing', True)}" if config.gradient_checkpointing else "") + \
        (f", {setting('cuda_graphs', True)})" if config.cuda_graphs else ")")
    if config.batch > 1:  # the largest batch that divides it: the same samples a step, in more passes
        part = next(d for d in range(config.batch // 2, 0, -1) if config.batch % d == 0)
        if fit and fit[0] >= concepts:  # (the largest such batch worked out to fit)
            part = next(d for d in range(part, 0, -1) if config.batch % d == 0 and d * concepts <= fit[0])
        fixes.insert(0, (_together(setting("batch", part), setting("grad_accum", per_step // part)),
                         f"the same {per_step} samples a step, drawn in {per_step // part} passes", False))
    if not config.gradient_checkpointing:
        fixes.insert(0, (setting("gradient_checkpointing", True), "the same result, about a third slower", True))
    if config.cuda_graphs:  # (a captured step keeps a pool of its own for the whole run)
        fixes.insert(0, (_off("cuda_graphs"), "the same result, slower at small batches", True))
    return doing, fit


def _how_the_run_goes_on(where: _Where, fixes: list[tuple[str, str, bool]]) -> str:
    """`_memory_error`'s last sentence: what is saved of the run (nothing, or its last checkpoint), and which of
    `fixes` a --resume may take."""
    config = where.config
    resume = _resume(config)
    resumable = [flags for flags, _, ok in fixes if ok]
    at = where.saved
    if at is None and where.writing and checkpoints(Path(config.out)):  # (saving was cut short: the last on disk)
        at = int(checkpoints(Path(config.out))[-1].stem.rsplit("-", 1)[1])
    if not where.writing:  # (before config.yaml: an --overwrite had not cleared the old run yet either)
        after = f"Nothing was written: {setting('out', config.out)} is left as it was"
    elif not at:
        after = f"No step had finished: run it again with one of them and {setting('overwrite', True)}"
    elif at == config.steps:  # (the last step's grid)
        after = f"The run had finished: its embedding and checkpoint of step {at} are saved; only the grid is missing"
    elif resumable:
        after = (f"The run is saved at step {at}: {resume} continues it with "
                 f"{' or '.join(resumable)}, which change{'s' * (len(resumable) == 1)} nothing that is learned")
    else:
        after = f"The run is saved at step {at} ({resume} continues it as it was)"
    if where.writing and at and len(resumable) < len(fixes):
        after += f"; {'the other settings' if resumable else 'these settings'} change what is learned: they start " \
                 f"the run again with {setting('overwrite', True)}, or in another {setting('out')}"
    return after


def _resume(config: TrainConfig) -> str:
    """How the run in `config.out` goes on, as its user gives it: the command to paste on the command line (the
    folder quoted for the shell), the settings to give from Python (a config's `overwrite=True` or
    `resume_or_start=True` turned off: either is refused beside `resume=True`)."""
    if ON_COMMAND_LINE.get():
        return f"textinv train --out {shlex.quote(str(config.out))} --resume"
    turned_off = [setting(name, False) for name in ("overwrite", "resume_or_start") if getattr(config, name)]
    return ", ".join([setting("out", config.out), setting("resume", True), *turned_off])


def _together(*said: str) -> str:
    """Settings given together, as their user writes them: flags one after another on the command line
    (`--batch 2 --grad-accum 2`), keywords separated by commas from Python (`batch=2, grad_accum=2`)."""
    return (" " if ON_COMMAND_LINE.get() else ", ").join(said)


def _off(name: str) -> str:
    """Switch `name`, on in the run, turned off as its user does it: its flag left out on the command line (`no
    --cuda-graphs`: a switch off by default has no --no- flag), `cuda_graphs=False` from Python."""
    return f"no {setting(name)}" if ON_COMMAND_LINE.get() else setting(name, False)


def _what_fits(config: TrainConfig, fit: tuple[int, int], size: str, precision: str) -> str:
    """The samples a step could take at once (--batch x concepts), without and with gradient checkpointing, and
    the --batch that gives them: "a step" in the fixes is --batch x --grad-accum samples of each concept."""
    concepts = len(config.concept_list())

    def per_concept(n: int, first: bool) -> str:
        if concepts == 1 or not n:
            return ""
        if n < concepts:
            return " (not one per concept)"
        batch = setting("batch", n // concepts)
        return f" ({batch} for its {concepts} concepts)" if first else f" ({batch})"

    plain, kept = fit
    worked = (f"Worked out for this model ({size}, {precision}): the room this GPU has takes "
              + (f"{plain} sample{'s' * (plain != 1)} at once" if plain else "not one sample")
              + per_concept(plain, True))
    if not config.gradient_checkpointing:
        worked += f", {kept or 'not one'} with {setting('gradient_checkpointing', True)}{per_concept(kept, False)}"
    return worked


def _batches_that_fit(where: _Where, device: torch.device, batch: int) -> tuple[int, int] | None:
    """The most samples a training step of the run's model and size can take on this CUDA device, without and with
    gradient checkpointing, worked out on the model's meta-device twin (`textinv.memory`: within 0.12 GiB of an
    H200's measurements) for the room the GPU has now (free, plus what torch holds), beside what the run holds
    between steps. None where it cannot say: not a CUDA device, pictures of several shapes, a captured step (its
    own memory pool, as inductor's CUDA graphs keep one), the reference-like mode's step (the VAE every step, the
    whole table trained), a step of `batch` it works out to fit (so the figures do not explain this failure), or a
    model it cannot rebuild on the meta device."""
    config = where.config
    graphs = config.cuda_graphs or (config.compile != "off" and config.compile_mode in ("reduce-overhead",
                                                                                       "max-autotune"))
    if device.type != "cuda" or where.model is None or not where.resolution or config.buckets or graphs \
            or config.reference_like:
        return None
    try:
        free, total = torch.cuda.mem_get_info(device)
        room, held = free + torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
        # a process held to part of the GPU (torch.cuda.set_per_process_memory_fraction: a notebook sharing it) may
        # reserve only that part, however much is free
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # (torch 2.5 on)
        if fraction is not None:
            room = min(room, int(fraction(device) * total))
        # what the run held between steps: by now its frames are let go of, its cached latents with them
        held = max(where.held or 0, held) + WORKSPACE  # (and the libraries' workspaces, which the count cannot see)
        if where.progress:
            print(f"out of memory in training step {where.step}: working out how many samples fit on {device} "
                  f"(seconds; Ctrl-C skips it)", file=sys.stderr, flush=True)
        twin, first_ids = meta_twin(where.model, config.vectors or 1)  # (left out, unvalidated: 1)

        def needs(checkpointing: bool):
            return lambda n: held + step_bytes(twin, first_ids, n, where.resolution, checkpointing, where.clip_skip,
                                               config.max_token_length)

        plain = largest_batch(needs(config.gradient_checkpointing), room)
        if plain >= batch:
            return None
        return plain, (plain if config.gradient_checkpointing else largest_batch(needs(True), room))
    # (an estimate must never hide the error it would explain; a Ctrl-C during its seconds of work, before anything
    # shows, means "stop waiting": the error without it)
    except (Exception, KeyboardInterrupt):
        return None


def _allocated(device: torch.device) -> int | None:
    """The bytes torch has allocated on a CUDA `device` (None elsewhere): read as the steps begin, what the run holds
    between steps (weights, cached latents, the learned vectors) for `_batches_that_fit`."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None
