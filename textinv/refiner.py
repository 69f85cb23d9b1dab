"""The web UI's Refiner (`--refiner`, `--refiner-switch-at`), as `generate.render` draws with it: a second model that
takes over the sampling of a pass part of the way down, the same sampler going on with the same latents. What is
here is the hand-over: which models may take over from which (`check_refiner`), the sampling step it happens at,
read as the web UI reads it from the sampler's noise levels (`_switch_iteration`), and the pipeline step callback
that swaps in the refiner's UNet, conditioning and VAE (`_handing_on`), an SDXL refiner conditioned on its own time
ids (`_refiner_time_ids`). The passes themselves (text to image, img2img, the hires fix's second pass) are drawn in
`generate`; what they share is in `refine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import refine
from .conditioning import _step_tensors
from .config import REFINER_SWITCH_AT, check_refiner_switch
from .errors import ConfigError, setting
from .families import FAMILY_NAMES
from .models import Model
from .refine import Hires
from .samplers import scheduler_for


# the web UI's sdxl_refiner_high_aesthetic_score and sdxl_refiner_low_aesthetic_score: the SDXL refiner's time ids
# end with one for the prompt, the other for the negative prompt
AESTHETIC_SCORES = (6.0, 2.5)


@dataclass(frozen=True)
class Refiner:
    """The web UI's Refiner: `model` (loaded with `load_model(refiner=True)`, the embeddings installed) draws the
    sampling steps of a pass from the first whose noise level is `switch_at` of the way down the model's training
    schedule, the same sampler going on with the same latents (`_handing_on`)."""

    model: Model
    switch_at: float = REFINER_SWITCH_AT


def check_refiner(model: Model, refiner: Model) -> None:
    """Refuse a refiner whose latents are not `model`'s (the web UI's refiner continues the base's latents as they
    are: an SDXL model with an SDXL one, SD 1.x/2.x with SD 1.x/2.x: `refine.same_latents`) or that predicts another
    target."""
    if not refine.same_latents(model, refiner):
        raise ConfigError(f"{setting('refiner', refiner.source)} ({FAMILY_NAMES.get(refiner.family, 'custom model')}) "
                          f"does not draw in the latents of {setting('model', model.source)} "
                          f"({FAMILY_NAMES.get(model.family, 'custom model')}): give an SDXL refiner for an SDXL "
                          f"model, an SD 1.x/2.x model for an SD 1.x/2.x one")
    if refiner.prediction_type != model.prediction_type:
        raise ConfigError(f"{setting('refiner', refiner.source)} predicts {refiner.prediction_type}, "
                          f"{setting('model', model.source)} {model.prediction_type}: textinv's refiner continues the "
                          f"sampler with the refiner's UNet as it is, so both must predict the same (give one of the "
                          f"same prediction type)")


def _check_refiner_passes(model: Model, refiner: Refiner, steps: int, sampler: str, denoise: float | None,
                          hires: Hires | None, discard: bool = False) -> None:
    """Refuse, before drawing, a refiner that does not fit `model` (the pass's it draws in: `check_refiner`) or whose
    switch falls at the first step of a text-to-image pass (`_handing_on` hands on after a step; an img2img pass at
    `denoise` (None: none) or the hires fix's second pass that starts past it is the refiner's all through:
    `generate._refined`). `discard`: --discard-penultimate-sigma, which moves the steps' sigmas."""
    check_refiner_switch(refiner.switch_at)
    check_refiner(model, refiner.model)
    if denoise is None and hires is None and _refiner_span(model, refiner, steps, sampler, denoise, hires,
                                                           discard)[0] == 0:
        raise _past_the_switch(refiner)


def refiner_switches(model: Model, refiner: Refiner, steps: int, sampler: str, denoise: float | None,
                     hires: Hires | None, discard: bool = False) -> bool:
    """Whether `refiner` takes over in the pass it draws in (`_check_refiner_passes`' arguments): the web UI writes
    its Refiner into a picture's text only then (sd_samplers_common.apply_refiner, when it switches)."""
    at, iterations = _refiner_span(model, refiner, steps, sampler, denoise, hires, discard)
    return at < iterations


def _refiner_span(model: Model, refiner: Refiner, steps: int, sampler: str, denoise: float | None,
                  hires: Hires | None, discard: bool = False) -> tuple[int, int]:
    """(the iteration `refiner` takes over at, the iterations) of the pass it draws in: the hires fix's second
    pass, or an img2img pass at `denoise`, or (neither) the text-to-image pass (`_refiner_start`)."""
    if hires is not None:
        steps, denoise, sampler = hires.steps or steps, hires.denoise, hires.sampler or sampler
    schedule, run = refine.pass_steps(steps, denoise, hires is not None) if denoise is not None else (steps, steps)
    return _refiner_start(model, refiner, sampler, schedule, run, discard)


def _refiner_start(model: Model, refiner: Refiner, sampler: str, schedule: int, run: int,
                   discard: bool = False) -> tuple[int, int]:
    """(the iteration `refiner` takes over at, the iterations) of a pass of `model` that runs the last `run` steps
    of a schedule of `schedule` with `sampler` (`_switch_iteration`), its next-to-last sigma discarded with
    `discard` where it takes that."""
    # (a copy of its own: set here, not elsewhere)
    scheduler = scheduler_for(model.pipeline.scheduler, sampler, discard=discard)
    scheduler.set_timesteps(schedule)
    iterations = len(scheduler.timesteps) - (schedule - run) * scheduler.order  # (diffusers' img2img get_timesteps)
    if iterations < len(scheduler.timesteps) and hasattr(scheduler, "set_begin_index"):
        # as the img2img pipeline sets it: Restart plans the steps the pass runs from there on their own
        scheduler.set_begin_index(len(scheduler.timesteps) - iterations)
    return _switch_iteration(scheduler, iterations, refiner.switch_at), iterations


def _past_the_switch(refiner: Refiner) -> ConfigError:
    """The error of a text-to-image pass whose first step is past `refiner`'s switch (`_check_refiner_passes`)."""
    return ConfigError(f"{setting('refiner_switch_at', refiner.switch_at, 'g')} falls at the first step of the "
                       f"text-to-image pass (its sampler's first noise level is already past it), which textinv's "
                       f"refiner takes over only after: give a higher {setting('refiner_switch_at')}")


def _handing_on(refiner: Refiner, given: list[dict], refined: list[dict], stretch: list[int], size: tuple[int, int],
                switching=None) -> dict:
    """Pipeline step-callback arguments that hand the pass on to `refiner` as the web UI does
    (sd_samplers_common.apply_refiner): from the first iteration whose noise level is `refiner.switch_at` of the way
    down (`_switch_iteration`) the pipeline calls the refiner's UNet, given its conditioning (`refined`: each stretch
    of prompt editing's, `conditioning._prompted` with its text encoder and the learned tokens in it). The sampler (the
    pipeline's scheduler) goes on with the same latents and its own state (a multistep sampler's history too), as
    the web UI's k-diffusion loop does, and the refiner's VAE decodes the pass (the web UI decodes with the model
    loaded, the refiner by then). `switching` (prompt editing's callback, over `given`) keeps switching
    stretches, over the refiner's conditioning once handed on. An SDXL refiner's time ids are its own: the size,
    crop and aesthetic score (`AESTHETIC_SCORES`)."""
    names = ["prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if refiner.model.is_xl else [])
    at: list[int] = []  # the iteration the refiner draws from (known once sampling starts)

    def hand_on(pipe, i, t, tensors):
        if not at:
            at.append(_switch_iteration(pipe.scheduler, pipe.num_timesteps, refiner.switch_at))
            if at[0] == 0:  # (the pipeline has drawn it with its own UNet; `_check_refiner_passes` said so before)
                raise _past_the_switch(refiner)
        out = switching(pipe, i, t, tensors) if switching is not None else {}
        if i + 1 != at[0] or at[0] == pipe.num_timesteps:  # (none past the switch: the model's VAE decodes)
            return out
        given[:] = refined  # (prompt editing switches over the refiner's conditioning from now on)
        pipe.unet, pipe.vae = refiner.model.unet, refiner.model.vae  # (the web UI decodes with the refiner loaded)
        c = refined[stretch[0]]
        xl = refiner.model.is_xl
        time_ids = _refiner_time_ids(refiner.model, size, len(c["prompt_embeds"]), c["prompt_embeds"]) if xl else None
        return _step_tensors(pipe, c, xl, time_ids)

    return dict(callback_on_step_end=hand_on, callback_on_step_end_tensor_inputs=names)


def _refiner_time_ids(refiner: Model, size: tuple[int, int], rows: int, like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative's, prompt's) SDXL time ids (rows, n) of a refiner drawing at `size` (W, H): the SDXL refiner's
    (height, width, crop top, crop left, aesthetic score), with `AESTHETIC_SCORES`, as the web UI conditions it
    (sd_models_xl.get_learned_conditioning); another SDXL model's own (height, width, 0, 0, height, width)."""
    width, height = size
    high, low = AESTHETIC_SCORES
    ends = ([low], [high]) if refiner.is_refiner else ([height, width], [height, width])
    return tuple(torch.tensor([[height, width, 0, 0, *end]] * rows, dtype=like.dtype, device=like.device)
                 for end in ends)


def _switch_iteration(scheduler, iterations: int, switch_at: float) -> int:
    """The first of a pass's `iterations` (the last of the scheduler's timesteps) whose noise level is `switch_at`
    of the way down: (T - 1 - level) / T >= switch_at, its level the training timestep whose sigma is nearest the
    iteration's (a sampler without sigmas: its timestep), as the web UI reads it; `iterations` if none is."""
    count = scheduler.config.num_train_timesteps
    levels = _noise_levels(scheduler, len(scheduler.timesteps) - iterations)
    return next((k for k, level in enumerate(levels) if (count - 1 - level) / count >= switch_at), iterations)


def _noise_levels(scheduler, first: int) -> list[int]:
    """Each iteration's (from the `first` of the scheduler's timesteps) training timestep: the one whose sigma is
    nearest the iteration's sigma, where the sampler has sigmas (Euler, DPM++, ...), else its timestep (DDIM)."""
    timesteps = scheduler.timesteps[first:]
    sigmas = _call_sigmas(scheduler)
    table = getattr(scheduler, "alphas_cumprod", None)
    if sigmas is None or table is None or len(sigmas) < len(scheduler.timesteps):
        return [int(t) for t in timesteps]
    table = ((1 - table) / table) ** 0.5  # (T,): the training sigmas
    return [int(torch.argmin((table - float(sigma)).abs())) for sigma in sigmas[first:first + len(timesteps)]]


def _call_sigmas(scheduler):
    """The sigma of each of the scheduler's model calls (None: it has no sigmas): its `sigmas`, one a call, but for
    diffusers' DPM2, whose step's second call, at an odd index, is at the midpoint sqrt(sigma sigma_next) (k-diffusion's
    sample_dpm_2 calls the model there, and the web UI switches to the refiner on that call's sigma), where its
    `sigmas` hold the next step's sigma: that call's is in `sigmas_interpol`, at the same index. (DPM2 a's midpoint,
    and DPM++ 2S a's, between sigma and the ancestral step's sigma_down = sigma_next^2 / sigma, is sigma_next itself,
    as their `sigmas` hold it.)"""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or not hasattr(scheduler, "sigmas_interpol") or hasattr(scheduler, "sigmas_up"):
        return sigmas
    calls = sigmas.clone()
    calls[1::2] = scheduler.sigmas_interpol[1::2]
    return calls
