"""The samplers `generate`, `score` and training's sample grids draw with: textinv's names for them, the web UI's
and kohya's names for the same, and the diffusers scheduler each is made as (`scheduler_for`).

A name is a base sampler ("dpm++2m") or a base and its sigma schedule ("dpm++2m_karras"; "euler_normal" for ComfyUI's
normal, `SCHEDULES`). The web UI (1.9 on) writes the two apart, `Sampler: DPM++ 2M, Schedule type: Karras`, and reads
its older one-name form, "DPM++ 2M Karras", as the same; `webui_names` (`webui_hires_names` for the hires fix's) and
`from_webui` translate both ways, `from_comfy` reads ComfyUI's sampler and scheduler (its dpmpp_3m_sde as
`dpm++3m_sde_comfy`, which keeps the next-to-last sigma the web UI's DPM++ 3M SDE discards). The web UI's "Automatic"
schedule is each sampler's own choice (Karras for DPM++ 2M, Exponential for the SDE ones, the model's own spacing for
Euler), so a picture drawn on the model's spacing with a sampler that has a choice of its own says "Uniform", or the
web UI would redraw it otherwise.

Each is set as the web UI runs it where diffusers' defaults differ: a sigma schedule spans the model's whole noise
range, UniPC is bh1 at order 3, DPM2, DPM2 a and DPM++ 3M SDE discard the next-to-last sigma (`_discarding`), DPM2, DPM2
a and DPM++ 2S a on Karras sigmas call the model at each sigma's own timestep, not a rounded one (`_unrounded`), LMS
counts its order from the pass's first step (`_lms_from_first_step`), and a k-diffusion sampler starts from noise of its
first sigma where that is below the model's largest (`_from_first_sigma`; ComfyUI's start too). `--eta` sets the
ancestral and SDE samplers' eta (`_at_eta`) and DDIM's (the pipeline's argument); `--sigma-churn` (with its tmin,
tmax and noise: `Churn`) Euler's, Heun's and DPM2's sigma churn (`_churning`), its noise setting DPM2 a's, DPM++ 2S a's
and the SDE samplers' noise too (`_at_eta`); `--discard-penultimate-sigma` discards the next-to-last sigma for the
other k-diffusion samplers too (`discards`).

DPM++ 2S a, Restart and LCM have no diffusers scheduler: they are textinv's own (`schedulers`), made as diffusers'
are; so is TCD, diffusers' at its own gamma.

Two bases need a package diffusers does not install: `lms` (and every `_beta` schedule) SciPy, `dpm++sde` torchsde
(`pip install 'textinv[samplers]'` adds both); a name whose package is missing is refused when it is read
(`check_installed`), not at the first picture.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import json
import math
from typing import NamedTuple

from .errors import ConfigError, given, not_one_of, setting


class Base(NamedTuple):
    label: str | None  # the web UI's name for it; None: the web UI has no such sampler
    cls: str  # the diffusers scheduler it is made as (or textinv's own, in `schedulers`)
    options: dict  # with these settings over the model's scheduler config
    automatic: str = ""  # the schedule the web UI's "Automatic" gives it ("": the model's own spacing)
    spaced: bool = False  # takes a sigma schedule (`SCHEDULES`): the web UI's k-diffusion samplers that textinv has
    needs: str = ""  # a package diffusers needs for it
    # the web UI's discard_next_to_last_sigma: the schedule of one step more, less its smallest non-zero sigma, so the
    # last step goes from a larger noise level to none (`_discarding`)
    discard: bool = False
    # the web UI's second_order: two model calls a step, which it counts as two steps where it schedules prompt
    # editing (SamplerData.total_steps, StableDiffusionProcessing.step_multiplier): `step_multiplier`
    second_order: bool = False
    # the eta it draws at where not told (the web UI's Eta, 1, for the ancestral and SDE samplers; its Eta DDIM, 0,
    # for DDIM), or None: textinv's takes no --eta (`check_eta`)
    eta: float | None = None
    # the web UI draws its noise from a Brownian tree seeded by the picture's seed (its brownian_noise), which its
    # Eta noise seed delta (--ensd) does not reach
    brownian: bool = False
    # takes the web UI's sigma churn, tmin, tmax and noise (`Churn`): k-diffusion's sample_euler, sample_heun and
    # sample_dpm_2, the samplers its sampler_extra_params gives all four
    churns: bool = False


_DPM = "DPMSolverMultistepScheduler"
# UniPC (Zhao et al. 2023) as the web UI and ComfyUI run it: order 3, lower at the last steps, stopping at the model's
# smallest noise level (their t = 1/N) with no step to 0, where bh1's update is infinite times 0 (a black picture)
_UNIPC = {"solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"}
BASES = {
    "euler": Base("Euler", "EulerDiscreteScheduler", {}, spaced=True, churns=True),
    "euler_a": Base("Euler a", "EulerAncestralDiscreteScheduler", {}, eta=1.0),  # (diffusers' takes no sigma schedule)
    "dpm++2m": Base("DPM++ 2M", _DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "karras", True),
    "dpm++2m_sde": Base("DPM++ 2M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                        "exponential", True, eta=1.0, brownian=True),
    "dpm++2m_sde_heun": Base("DPM++ 2M SDE Heun", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                         "solver_type": "heun"}, "exponential", True, eta=1.0,
                             brownian=True),
    # k-diffusion's sample_dpmpp_3m_sde takes its third-order step (`schedulers.sde_third_order_update`) up to the
    # last, where diffusers' lower_order_final takes a second-order one at the next-to-last below 15 steps
    "dpm++3m_sde": Base("DPM++ 3M SDE", _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                               "lower_order_final": False},
                        "exponential", True, discard=True, eta=1.0, brownian=True),
    # ComfyUI's dpmpp_3m_sde: the same, on the n-step schedule as it is. Its KSampler drops the next-to-last sigma for
    # dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 alone (comfy/samplers.py, DISCARD_PENULTIMATE_SIGMA_SAMPLERS),
    # its SamplerCustom for none
    "dpm++3m_sde_comfy": Base(None, _DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                           "lower_order_final": False}, spaced=True, eta=1.0, brownian=True),
    "dpm++sde": Base("DPM++ SDE", "DPMSolverSDEScheduler", {}, "karras", True, "torchsde", second_order=True,
                     eta=1.0, brownian=True),
    "ddim": Base("DDIM", "DDIMScheduler", {}, eta=0.0),
    "ddpm": Base("DDPM", "DDPMScheduler", {}),
    # the web UI's UniPC at its defaults (uni_pc_variant bh1, uni_pc_order 3, uni_pc_lower_order_final) and ComfyUI's
    # uni_pc; diffusers' own default is bh2 at order 2, ending at sigma 0
    "unipc": Base("UniPC", "UniPCMultistepScheduler", _UNIPC | {"solver_type": "bh1"}),
    "unipc_bh2": Base(None, "UniPCMultistepScheduler", _UNIPC | {"solver_type": "bh2"}),  # ComfyUI's uni_pc_bh2
    # Karras et al. 2022, Algorithm 1
    "heun": Base("Heun", "HeunDiscreteScheduler", {}, spaced=True, second_order=True, churns=True),
    "dpm2": Base("DPM2", "KDPM2DiscreteScheduler", {}, "karras", True, discard=True,  # k-diffusion's sample_dpm_2
                 second_order=True, churns=True),
    "dpm2_a": Base("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "karras", True, discard=True,
                   second_order=True, eta=1.0),
    # k-diffusion's sample_dpmpp_2s_ancestral: DPM-Solver++(2S) steps (Lu et al. 2022) with ancestral noise
    "dpm++2s_a": Base("DPM++ 2S a", "DPMSolverPP2SAncestralScheduler", {}, "karras", True, second_order=True,
                      eta=1.0),
    # Heun with restarts (Xu et al. 2023), as the web UI's sd_samplers_extra.restart_sampler
    "restart": Base("Restart", "RestartScheduler", {}, "karras", True, second_order=True),
    # pseudo linear multistep (Liu et al. 2022) without PNDM's Runge-Kutta warm-up, as the web UI's PLMS
    "plms": Base("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    # diffusers' single-step DPM-Solver++, kohya's dpmsingle: not ancestral, so not the web UI's "DPM++ 2S a"
    "dpm++2s": Base(None, "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "lms": Base("LMS", "LMSDiscreteScheduler", {}, spaced=True, needs="scipy"),
    # latent consistency models' sampling (Luo et al. 2023) for an LCM or LCM-LoRA, as the web UI's LCM: its own
    # schedule over the 50 timesteps an LCM is distilled at, the sigma schedules over their range
    "lcm": Base("LCM", "LatentConsistencyScheduler", {}, spaced=True),
    # diffusers' TCDScheduler (Zheng et al. 2024) at gamma 0.3, for a TCD or TCD-LoRA model; the web UI has none
    "tcd": Base(None, "StochasticTCDScheduler", {}),
}
# a sigma schedule: (the web UI's "Schedule type", the diffusers flag that gives it). ComfyUI's normal, simple and
# sgm_uniform (the web UI's Normal, Simple and SGM Uniform) take the steps at timesteps of the model's noise levels
# (`schedulers.comfy_spaced`): diffusers has no flag for them, so they ride on the Karras one, their sigmas in place of
# Karras's where the scheduler makes its schedule (`_comfy_spaced`)
SCHEDULES = {"karras": ("Karras", "use_karras_sigmas"), "exponential": ("Exponential", "use_exponential_sigmas"),
             "beta": ("Beta", "use_beta_sigmas"),  # (the web UI's Beta at its default alpha = beta = 0.6)
             "normal": ("Normal", "use_karras_sigmas"), "simple": ("Simple", "use_karras_sigmas"),
             "sgm_uniform": ("SGM Uniform", "use_karras_sigmas"),
             # ComfyUI's ddim_uniform and the web UI's DDIM schedule type: a timestep spacing, not a sigma schedule
             # (`ddim_uniform_times`), so no flag: "leading" at steps offset 1, or handed them (`_at_ddim_uniform`)
             "ddim_uniform": ("DDIM", None)}
COMFY_RULES = ("normal", "simple", "sgm_uniform")
# the samplers that take ddim_uniform though no sigma schedule (diffusers' Euler a and DDPM space their timesteps as
# Euler does), and the one sigma-schedule sampler that does not: textinv's LCM, whose own schedule spans its 50
# distilled levels, where ComfyUI's lcm takes ddim_uniform's stride over those levels
_DDIM_UNIFORM_TOO, _DDIM_UNIFORM_NOT = ("euler_a", "ddpm"), ("lcm",)

_PARTS = {name: (name, "") for name in BASES} | {
    f"{name}_{schedule}": (name, schedule) for name, base in BASES.items() for schedule in SCHEDULES
    if (base.spaced or schedule == "ddim_uniform" and name in _DDIM_UNIFORM_TOO)
    and not (schedule == "ddim_uniform" and name in _DDIM_UNIFORM_NOT)}
SAMPLERS = ("default", *_PARTS)
# the samplers for a refusal too long to list them (`errors.not_one_of`): what they are, where the command line and
# Python list every one
SAMPLERS_LISTED = ("samplers", "textinv generate --help", "textinv.samplers.SAMPLERS")
"""Every --sampler name; "default" is the model's own scheduler, as it is."""

# kohya's sampler names (its --sample_sampler and gen_img's --sampler choices, `get_my_scheduler`) that textinv
# has, as textinv names them. Not its pndm (PNDM with Runge-Kutta warm-up steps, not the web UI's PLMS) nor its
# dpmsolver (DPM-Solver's first version, which diffusers is retiring)
KOHYA = {"ddim": "ddim", "ddpm": "ddpm", "euler": "euler", "k_euler": "euler", "euler_a": "euler_a",
         "k_euler_a": "euler_a", "dpmsolver++": "dpm++2m",  # (DPMSolverMultistep, dpmsolver++, order 2)
         "heun": "heun", "dpm_2": "dpm2", "k_dpm_2": "dpm2", "dpm_2_a": "dpm2_a", "k_dpm_2_a": "dpm2_a",
         "lms": "lms", "k_lms": "lms",
         "dpmsingle": "dpm++2s"}  # (DPMSolverSinglestep's defaults: dpmsolver++, order 2)
KOHYA_OTHERS = ("pndm", "dpmsolver")  # kohya's, which textinv does not have
# ComfyUI's samplers (KSampler's sampler_name) that textinv has, as textinv's base names. The _gpu ones draw the same
# noise on the GPU; uni_pc is UniPC's bh1 variant, uni_pc_bh2 its bh2, both at order 3 (--sampler's spellings: not
# ComfyUI's KSampler's drawing, `COMFY_UNLIKE`); lcm is the web UI's LCM as
# ComfyUI draws it after a ModelSamplingDiscrete node's lcm sampling (the LCM-LoRA workflow: without it ComfyUI takes
# lcm's steps on the model's own noise levels, with no boundary conditions). Not here: dpm_fast, dpm_adaptive, the
# cfg_pp ones
COMFY = {"euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "dpm_2": "dpm2", "dpm_2_ancestral": "dpm2_a",
         "lms": "lms", "dpmpp_2m": "dpm++2m", "dpmpp_2m_sde": "dpm++2m_sde", "dpmpp_2m_sde_gpu": "dpm++2m_sde",
         "dpmpp_2m_sde_heun": "dpm++2m_sde_heun", "dpmpp_2m_sde_heun_gpu": "dpm++2m_sde_heun",
         "dpmpp_3m_sde": "dpm++3m_sde_comfy", "dpmpp_3m_sde_gpu": "dpm++3m_sde_comfy", "dpmpp_sde": "dpm++sde",
         "dpmpp_sde_gpu": "dpm++sde", "dpmpp_2s_ancestral": "dpm++2s_a",
         "ddim": "ddim", "uni_pc": "unipc", "uni_pc_bh2": "unipc_bh2", "ddpm": "ddpm", "lcm": "lcm"}
# ComfyUI's KSampler samplers that textinv has a sampler of that name for (`COMFY`, --sampler's spellings) but draws
# otherwise, so `from_comfy` has none for them, with what differs: its uni_pc and uni_pc_bh2 step to sigma 0.001 at
# their last (comfy/extra_samplers/uni_pc.py, sample_unipc, in place of the schedule's 0) on the schedule of one step
# more less its next-to-last sigma (DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
_UNIPC_UNLIKE = ("its last step goes to sigma 0.001, on its scheduler's schedule of one step more less the "
                 "next-to-last sigma, where textinv's {}, the web UI's UniPC, steps on the model's own spacing to "
                 "its smallest noise level (SD's 0.029)")
COMFY_UNLIKE = {"uni_pc": _UNIPC_UNLIKE.format("unipc"), "uni_pc_bh2": _UNIPC_UNLIKE.format("unipc_bh2")}
# the schedules that space the steps evenly in timestep, as diffusers' own spacings (leading, trailing, linspace) do,
# read as the model's own spacing (a name without a schedule) where textinv has no such schedule: for a sampler that
# takes none (`Base.spaced`: Euler a, DDIM, UniPC, ...) all of them, which it draws on its own spacing (SD's at 20
# steps from timestep 951, sigma 11.0, where ComfyUI's normal starts at 999, 14.6); for the others the web UI's
# Uniform (k-diffusion's get_sigmas: timesteps evenly from 999 to 0, as ComfyUI's normal). ComfyUI's normal, simple,
# sgm_uniform and ddim_uniform (the web UI's DDIM) are `SCHEDULES` where the sampler has them. The web UI's labels and
# ComfyUI's names, lowercase
EVEN_SPACINGS = {"uniform", "sgm uniform", "sgm_uniform", "normal", "simple", "ddim", "ddim_uniform"}
# ComfyUI's schedulers that share a name with one of `SCHEDULES` but are another schedule: its "beta" takes the steps at
# beta quantiles of the model's timesteps (Lee et al. 2024 as written), where the web UI's Beta and diffusers'
# use_beta_sigmas space the noise levels themselves from the largest to the smallest (SD at 10 steps: the middle step
# at sigma 2.6 there, 8.4 here)
COMFY_OTHER_SCHEDULES = {"beta"}


def step_multiplier(name: str) -> int:
    """The model calls a step of sampler `name` counts as where the web UI schedules prompt editing: 2 for its
    second-order samplers (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, Restart), else 1 (the model's own, "default",
    too).

    >>> step_multiplier("heun_karras"), step_multiplier("dpm++2m")
    (2, 1)
    """
    return 2 if name in _PARTS and BASES[_PARTS[name][0]].second_order else 1


def eta_default(name: str) -> float | None:
    """The eta sampler `name` draws at without --eta: 1 for the ancestral and SDE ones (the web UI's Eta), 0 for DDIM
    (its Eta DDIM); None for one that takes no --eta.

    >>> eta_default("euler_a"), eta_default("ddim"), eta_default("dpm++2m_karras")
    (1.0, 0.0, None)
    """
    base = _PARTS.get(name, (None, ""))[0]
    return BASES[base].eta if base else None


def eta_label(name: str) -> str | None:
    """The web UI's infotext label of sampler `name`'s eta: "Eta DDIM" for DDIM, "Eta" for the ancestral and SDE ones
    (None: it takes none here)."""
    default = eta_default(name)
    return None if default is None else "Eta DDIM" if _PARTS[name][0] == "ddim" else "Eta"


def eta_kind(names) -> str | None:
    """The eta label (`eta_label`) of the first of samplers `names` (the passes', in order; None or empty: not
    given) that takes an eta: the one an --eta given for those passes is (`eta_of`); None where none takes one.

    >>> eta_kind([None, "euler", "ddim", "euler_a"]), eta_kind(["euler"])
    ('Eta DDIM', None)
    """
    return next((label for label in map(eta_label, filter(None, names)) if label), None)


def eta_of(eta: float | None, name: str, names: list[str]) -> float | None:
    """The eta a pass of sampler `name` draws at, of --eta `eta` given for the passes' samplers `names` (--sampler,
    then --hires-sampler): `eta` where `name` takes the eta of the first of them that takes one, else None (its own
    default): the web UI's Eta (the ancestral and SDE samplers') and Eta DDIM are two settings, so a pass of the other
    kind draws at that one's.

    >>> eta_of(0.5, "ddim", ["euler_a", "ddim"]), eta_of(0.5, "dpm2_a", ["euler_a", "dpm2_a"])
    (None, 0.5)
    """
    kind = eta_kind(names)
    return eta if kind is not None and eta_label(name) == kind else None


def check_eta(eta: float | None, names: list[str] | None) -> None:
    """Refuse --eta outside 0 to 1 (the web UI's range for its Eta and Eta DDIM), or where none of the passes'
    samplers `names` (--sampler, --hires-sampler; None: not known yet) takes one, naming those that do."""
    if eta is None:
        return
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        raise ConfigError(f"{setting('eta')} must be from 0 to 1 (the share of each step's noise an ancestral or "
                          f"SDE sampler adds afresh), got {eta}")
    if names is None or any(eta_default(name) is not None for name in names):
        return
    taking = [n for n, b in BASES.items() if b.eta == 1]
    tcd = "; tcd at its gamma 0.3 only (TCD's eta)" if "tcd" in names else ""
    samplers = setting("sampler", " or ".join(dict.fromkeys(names)))
    raise ConfigError(f"{setting('eta', eta, 'g')}: {samplers} takes no eta; give one that does: {', '.join(taking)} "
                      f"(the web UI's Eta, default 1) or ddim (its Eta DDIM, default 0), with a schedule or "
                      f"without{tcd}")


def ensd_reaches(name: str) -> bool:
    """Whether the web UI's Eta noise seed delta (--ensd) changes the noise sampler `name` draws at each step: it
    seeds the generators every step's noise is drawn from, not the Brownian tree of the SDE samplers."""
    base = _PARTS.get(name, (None, ""))[0]
    return not (base and BASES[base].brownian)


def ensd_written(name: str, eta: float | None) -> bool:
    """Whether the web UI writes "ENSD" into a picture whose first pass's sampler is `name`, drawn at --eta `eta`
    (None: its default): for the samplers it flags uses_ensd (the ancestral ones) at an eta not 0 only, as its
    is_sampler_using_eta_noise_seed_delta. textinv's own record keeps --ensd for any sampler, so --again redraws it.

    >>> ensd_written("euler_a", None), ensd_written("euler_a", 0), ensd_written("ddim", 0.5), ensd_written("euler", 1)
    (True, False, False, False)
    """
    return eta_label(name) == "Eta" and ensd_reaches(name) and eta != 0


class Churn(NamedTuple):
    """The web UI's sigma churn settings (its s_churn, s_tmin, s_tmax, s_noise; Karras et al. 2022, Algorithm 2, as
    k-diffusion's sample_euler, sample_heun and sample_dpm_2 take them): each step whose sigma is from `tmin` to
    `tmax` first adds fresh noise, `noise` times the amount that takes its sigma up by gamma = min(`churn` / steps,
    sqrt 2 - 1), then steps from there (`_churning`). The defaults are the web UI's (its Sigma tmax 0: no limit)."""

    churn: float = 0.0
    tmin: float = 0.0
    tmax: float = math.inf
    noise: float = 1.0


# the web UI's infotext labels of `Churn`'s settings, with the flags that give them
CHURN_LABELS = {"churn": "Sigma churn", "tmin": "Sigma tmin", "tmax": "Sigma tmax", "noise": "Sigma noise"}
CHURN_SETTINGS = {"churn": "sigma_churn", "tmin": "sigma_tmin", "tmax": "sigma_tmax", "noise": "sigma_noise"}
# the samplers whose noise the web UI scales by its Sigma noise alone (its sampler_extra_params gives them s_noise, not
# the churn's other settings): DPM2 a, DPM++ 2S a, DPM++ 2M SDE (with its Heun variant), DPM++ 3M SDE and DPM++ SDE,
# whose noise textinv scales too (`_at_eta`). Not Euler a: the web UI hands sample_euler_ancestral no s_noise
_NOISE_SCALED = ("dpm2_a", "dpm++2s_a", "dpm++2m_sde", "dpm++2m_sde_heun", "dpm++3m_sde", "dpm++3m_sde_comfy",
                 "dpm++sde")
_THIRD_ORDER_SDE = ("dpm++3m_sde", "dpm++3m_sde_comfy")  # (k-diffusion's sample_dpmpp_3m_sde, both)


# the samplers the web UI's "Always discard next-to-last sigma" reaches that do not discard it already: its
# k-diffusion ones that textinv has (Restart too: its KDiffusionSampler's get_sigmas hands restart_sampler the schedule
# of one step more, less that sigma, which it plans its steps on)
_DISCARDING = ("euler", "euler_a", "lms", "heun", "dpm++2m", "dpm++2m_sde", "dpm++2m_sde_heun", "dpm++sde",
               "dpm++2s_a", "lcm", "restart")


def discards(name: str, discard: bool = False) -> bool:
    """Whether sampler `name` discards the next-to-last sigma (`_discarding`): DPM2, DPM2 a and DPM++ 3M SDE always,
    as the web UI's do; with `discard` (--discard-penultimate-sigma, its "Always discard next-to-last sigma") its
    other k-diffusion samplers too.

    >>> discards("euler"), discards("euler", True), discards("dpm2_karras"), discards("ddim", True)
    (False, True, True, False)
    """
    base = _PARTS.get(name, (None, ""))[0]
    return bool(base and (BASES[base].discard or discard and base in _DISCARDING))


def discard_written(names: list[str], discard: bool) -> bool:
    """Whether the web UI writes "Discard penultimate sigma: True" for passes of samplers `names` drawn with
    --discard-penultimate-sigma `discard`: where the setting makes one of them discard, not one that always does."""
    return discard and any(discards(n, True) and not discards(n) for n in names)


def check_discard(discard: bool, names: list[str] | None) -> None:
    """Refuse --discard-penultimate-sigma where none of the passes' samplers `names` (None: not known yet) takes it,
    naming those that do."""
    if not discard or names is None or any(discards(n, True) for n in names):
        return
    samplers = setting("sampler", " or ".join(dict.fromkeys(names)))
    raise ConfigError(f"{setting('discard_penultimate_sigma')}: {samplers} takes no sigma schedule to discard it from "
                      f"(the web UI draws its DDIM, PLMS and UniPC one step more with it, which textinv does not); "
                      f"give one that does: {', '.join(_DISCARDING)}, with a schedule or without (dpm2, dpm2_a and "
                      f"dpm++3m_sde discard it always)")


def takes_churn(name: str) -> bool:
    """Whether sampler `name` takes the web UI's sigma churn settings (`Churn`): Euler, Heun and DPM2, on any schedule.

    >>> takes_churn("heun_karras"), takes_churn("euler_a")
    (True, False)
    """
    base = _PARTS.get(name, (None, ""))[0]
    return bool(base and BASES[base].churns)


def churn_taken(name: str) -> tuple[str, ...]:
    """The sigma churn settings (`Churn`'s fields) sampler `name` takes: all four for Euler, Heun and DPM2
    (`takes_churn`), the noise alone for DPM2 a, DPM++ 2S a and the SDE samplers (their fresh noise scaled by it,
    k-diffusion's s_noise), none for another.

    >>> churn_taken("dpm2_a_karras"), churn_taken("euler_a"), len(churn_taken("heun"))
    (('noise',), (), 4)
    """
    if takes_churn(name):
        return Churn._fields
    return ("noise",) if _PARTS.get(name, (None, ""))[0] in _NOISE_SCALED else ()


def churn_given(churn: Churn) -> dict[str, float]:
    """`churn`'s settings that are not the web UI's defaults, by field name.

    >>> churn_given(Churn(churn=0.5, noise=1.0))
    {'churn': 0.5}
    """
    return {key: value for key, value in churn._asdict().items() if value != getattr(Churn(), key)}


def check_churn(churn: Churn, names: list[str] | None) -> None:
    """Refuse sigma churn settings outside their range (each a finite number from 0, --sigma-tmax above 0 and not
    below --sigma-tmin), or given where none of the passes' samplers `names` (--sampler, --hires-sampler; None: not
    known yet) takes them (`churn_taken`), naming those that do."""
    for key, value in churn._asdict().items():
        if not (value >= 0 and (math.isfinite(value) or key == "tmax")):
            raise ConfigError(f"{setting(CHURN_SETTINGS[key])} must be a number from 0, got {value}")
    if churn.tmax <= 0 or churn.tmax < churn.tmin:
        raise ConfigError(f"{setting('sigma_tmax', churn.tmax, 'g')} must be above 0 and not below "
                          f"{setting('sigma_tmin', churn.tmin, 'g')} (the steps that churn have a sigma from tmin "
                          f"to tmax); leave it out for no upper limit")
    taken = {key for name in names or () for key in churn_taken(name)}
    refused = {key: value for key, value in churn_given(churn).items() if key not in taken}
    if not refused or names is None:
        return
    flags = ", ".join(setting(CHURN_SETTINGS[key], value, "g") for key, value in refused.items())
    samplers = setting("sampler", " or ".join(dict.fromkeys(names)))
    churning = ", ".join(n for n, b in BASES.items() if b.churns)
    if list(refused) == ["noise"]:
        raise ConfigError(f"{flags}: {samplers} takes no sigma noise; give "
                          f"one that does: {churning} (the churn's noise), {', '.join(_NOISE_SCALED)} (their "
                          f"fresh noise), with a schedule or without")
    raise ConfigError(f"{flags}: {samplers} takes no sigma churn settings; "
                      f"give one that does: {churning}, with a schedule or without (the web UI's Euler, Heun and "
                      f"DPM2)")


def webui_names(name: str) -> tuple[str, str | None] | None:
    """The web UI's `Sampler` and `Schedule type` for sampler `name` (None: not written), or None when the web UI
    has no such sampler (the model's own, "default", has no name there either).

    >>> webui_names("dpm++2m_karras"), webui_names("dpm++2m"), webui_names("euler_a")
    (('DPM++ 2M', 'Karras'), ('DPM++ 2M', 'Uniform'), ('Euler a', None))
    """
    base, schedule = _PARTS.get(name, (None, ""))
    if base is None or BASES[base].label is None:
        return None
    if schedule:
        return BASES[base].label, SCHEDULES[schedule][0]
    # the web UI's "Automatic" (what it reads when no schedule is written) would give this sampler its own choice
    return BASES[base].label, "Uniform" if BASES[base].automatic else None


def webui_hires_names(name: str, first: str) -> tuple[str, str | None] | None:
    """The web UI's `Hires sampler` and `Hires schedule type` for hires sampler `name` after a first pass of sampler
    `first` (None: not written), or None when the web UI has no such sampler. The web UI writes the hires schedule
    only where it differs from the first pass's `Schedule type` and reads none as that one, so a sampler on the
    model's spacing (Euler, Heun, ...) after a first pass on a sigma schedule says "Uniform" (the web UI's name for
    the model's spacing), or the web UI would redraw its pass on the first pass's schedule.

    >>> webui_hires_names("euler", "dpm++2m_karras"), webui_hires_names("euler", "euler_a")
    (('Euler', 'Uniform'), ('Euler', None))
    >>> webui_hires_names("dpm++2m", "euler_a"), webui_hires_names("heun_karras", "dpm++2m_karras")
    (('DPM++ 2M', 'Uniform'), ('Heun', None))
    """
    names = webui_names(name)
    if names is None:
        return None
    sampler, schedule = names
    before = (webui_names(first) or (None, None))[1]
    if schedule is None and before not in (None, "Uniform"):
        schedule = "Uniform"
    return sampler, None if schedule == before else schedule


def from_webui(sampler: str, schedule: str | None) -> str | None:
    """textinv's name for the web UI's `Sampler` and `Schedule type` (None when its text has none), or None when
    textinv has no such sampler. No schedule is the model's spacing, as before the web UI had the setting (Restart's
    Karras, its only one then); its sampler may carry the schedule in its name, as then ("DPM++ 2M Karras");
    "Automatic" is the sampler's own.

    >>> from_webui("DPM++ 2M", "Karras"), from_webui("DPM++ 2M Karras", None), from_webui("DPM++ 2M", "Automatic")
    ('dpm++2m_karras', 'dpm++2m_karras', 'dpm++2m_karras')
    >>> from_webui("DPM++ 2M", None), from_webui("DPM++ 2M", "Uniform"), from_webui("Euler a", "Karras")
    ('dpm++2m', 'dpm++2m', None)
    """
    sampler, schedule = sampler.strip(), (schedule or "").strip()
    for key, (label, _) in SCHEDULES.items():  # the one-name form: its schedule is the name's
        if sampler.lower().endswith(" " + label.lower()):
            sampler, schedule = sampler[:-len(label) - 1].strip(), label
    base = next((name for name, b in BASES.items() if b.label and b.label.lower() == sampler.lower()), None)
    if base is None:
        return None
    if base == "restart" and not schedule:  # (before the setting, the web UI's Restart always drew on Karras's)
        schedule = "karras"
    return _named(base, BASES[base].automatic if schedule.lower() == "automatic" else schedule)


def from_comfy(sampler: str, scheduler: str) -> str | None:
    """textinv's name for ComfyUI's sampler and scheduler (KSampler's sampler_name and scheduler), or None when
    textinv has no such one: also where it draws ComfyUI's sampler otherwise (`COMFY_UNLIKE`, which says how). Its
    normal (the default), simple and sgm_uniform are textinv's schedules of those names, ComfyUI's sigmas, for a sampler
    that takes a sigma schedule; one that takes none (euler_ancestral, uni_pc, ...) draws on the model's own spacing
    (`EVEN_SPACINGS`). Its ddim_uniform is `_ddim_uniform` (`ddim_uniform_times`), which Euler a takes too.

    >>> from_comfy("dpmpp_2m", "karras"), from_comfy("euler_ancestral", "normal"), from_comfy("euler", "kl_optimal")
    ('dpm++2m_karras', 'euler_a', None)
    >>> from_comfy("euler", "normal"), from_comfy("dpmpp_2m_sde_gpu", "sgm_uniform"), from_comfy("heun", "simple")
    ('euler_normal', 'dpm++2m_sde_sgm_uniform', 'heun_simple')
    >>> from_comfy("dpmpp_3m_sde", "exponential"), from_comfy("uni_pc", "normal"), from_comfy("ddim", "ddim_uniform")
    ('dpm++3m_sde_comfy_exponential', None, 'euler_ddim_uniform')
    """
    if sampler not in COMFY or sampler in COMFY_UNLIKE or scheduler.lower() in COMFY_OTHER_SCHEDULES:
        return None
    base = COMFY[sampler]
    if base == "ddim":
        # ComfyUI's ddim runs its Euler sampler (comfy/samplers.py, get_sampler_method), DDIM's steps at eta 0 (Karras
        # et al. 2022, section 3), on any schedule down to sigma 0: Euler's, where diffusers' DDIM (textinv's ddim)
        # takes its last step to the model's smallest noise level under SD's config (set_alpha_to_one false)
        base = "euler"
    return _named(base, scheduler)


def _named(base: str, schedule: str) -> str | None:
    """textinv's name for `base` drawn on the schedule another tool names `schedule` ("": the model's own spacing),
    or None when textinv has no such pair (Euler a with Karras, Align Your Steps: diffusers has neither)."""
    key = next((key for key, (label, _) in SCHEDULES.items() if schedule.lower() in (key, label.lower())), None)
    if key and f"{base}_{key}" in _PARTS:
        return f"{base}_{key}"
    if key == "ddim_uniform" and base in _DDIM_UNIFORM_NOT:
        return None
    return base if schedule.lower() in EVEN_SPACINGS | {""} else None


def _webui_spellings() -> dict[str, str]:
    """The web UI's one-name form of every sampler textinv has, lowercase: "dpm++ 2m karras" -> dpm++2m_karras."""
    spellings = {}
    for name in _PARTS:
        names = webui_names(name)
        if names:
            sampler, schedule = names
            spellings[(sampler if schedule in (None, "Uniform") else f"{sampler} {schedule}").lower()] = name
    return spellings


# --sampler as textinv, the web UI ("Euler a", "DPM++ 2M Karras") and kohya (k_euler_a) spell it, in any case: the
# same scheduler under each name, so a name copied from those tools draws as there (`config.spelled`)
SPELLINGS = {**{name: name for name in SAMPLERS}, **KOHYA, **COMFY, **_webui_spellings()}
HELP = (f"sampling method: default (the model's own scheduler), {', '.join(BASES)}; a k-diffusion one "
        f"({', '.join(n for n, b in BASES.items() if b.spaced)}) also with a sigma schedule after it: _karras, "
        f"_exponential, _beta, or ComfyUI's _normal, _simple, _sgm_uniform or _ddim_uniform (dpm++2m_karras, "
        f"euler_normal; euler_a_ddim_uniform); the web "
        f"UI's names ('Euler a', 'DPM++ 2M SDE Karras') and "
        f"kohya's (k_euler_a, k_dpm_2, dpmsingle) and ComfyUI's (dpmpp_2m_sde, euler_ancestral) are taken as these")


def needed_packages(name: str) -> list[str]:
    """The packages diffusers needs to make sampler `name`: SciPy for LMS and the Beta schedule, torchsde for DPM++
    SDE (both for dpm++sde_beta).

    >>> needed_packages("dpm++sde_beta"), needed_packages("euler")
    (['torchsde', 'scipy'], [])
    """
    base, schedule = _PARTS.get(name, (None, ""))
    needs = [BASES[base].needs] if base and BASES[base].needs else []
    return needs + (["scipy"] if schedule == "beta" and "scipy" not in needs else [])


def _sampler(name: str, flag: str | None, quoted: bool = False) -> str:
    """Sampler `name` as a refusal names it: after `flag`, where the caller says where it was given (--hires-sampler,
    a sample prompt's), else as the setting sampler, as its user writes it (`errors.setting`; `quoted`: `given`)."""
    if flag and flag.endswith("="):  # (a keyword, as `errors.setting` names one from Python: hires_sampler=)
        return f"{flag}{name!r}"
    if flag:
        return f"{flag} {name!r}" if quoted else f"{flag} {name}"
    return given("sampler", name) if quoted else setting("sampler", name)


def check_installed(name: str, flag: str | None = None) -> None:
    """Refuse sampler `name` when a package it needs is missing, naming it (`_sampler`) and the install command."""
    for package in needed_packages(name):
        if importlib.util.find_spec(package) is not None:
            continue
        base = _PARTS[name][0]
        raise ConfigError(f"{_sampler(name, flag)} needs the {package} package (diffusers' {BASES[base].cls} uses it"
                          + (", as the Beta schedule does" if package == "scipy" and base != "lms" else "")
                          + f"): pip install {package} (or pip install 'textinv[samplers]', which adds SciPy and "
                            f"torchsde), or choose another sampler")


def scheduler_for(scheduler, name: str, seeds: list[int] | None = None, flag: str | None = None,
                  eta: float | None = None, churn: Churn | None = None,
                  generators: list | None = None, discard: bool = False):
    """The diffusers scheduler for sampler `name`, made from the model's own scheduler's config, so it keeps the
    model's noise schedule, prediction type and timestep spacing; "default" is the model's own scheduler. `seeds`
    (the pictures' seeds, in the batch's order) seed DPM++ SDE's Brownian noise, one tree a picture, so a seed
    draws its picture at any batch size. `eta` (None: the sampler's own, `eta_default`) sets an ancestral or SDE
    sampler's (`_at_eta`; DDIM's is the pipeline's argument). `churn` sets the sigma churn of a sampler that takes it
    (`takes_churn`; another draws without), its noise drawn from `generators` (the pipeline's, one a picture, in
    the batch's order), as the web UI draws it from each picture's, and its noise setting DPM2 a's, DPM++ 2S a's and
    the SDE samplers' noise scale (`churn_taken`). `discard` discards the next-to-last sigma where
    the sampler takes that (`discards`; another draws as it does). A refusal names `flag` as where the sampler was
    given.

    >>> scheduler_for(model.pipeline.scheduler, "dpm2_a_karras")  # doctest: +SKIP
    KDPM2AncestralDiscreteScheduler {... "use_karras_sigmas": true ...}
    """
    if name == "default":
        return scheduler
    if name not in _PARTS:
        raise ConfigError(f"{_sampler(name, flag, quoted=True)} {not_one_of(SAMPLERS, SAMPLERS_LISTED)}")
    check_installed(name, flag)
    base, schedule = _PARTS[name]
    cls = _scheduler_class(base)
    # the sigma spacing is the sampler's: a model whose scheduler config ships Karras (or exponential, beta) spacing
    # would otherwise draw "euler" with it, recorded as plain Euler
    takes = inspect.signature(cls.__init__).parameters
    spacing = {flag: False for _, flag in SCHEDULES.values() if flag in takes}
    if schedule and SCHEDULES[schedule][1]:
        spacing[SCHEDULES[schedule][1]] = True
    if schedule in COMFY_RULES:
        cls = _comfy_spaced(cls, schedule)
    if BASES[base].cls == _DPM and schedule in ("exponential", "beta"):
        cls = _rounded(cls)
    if BASES[base].cls == _DPM or base == "lcm":
        cls = _first_of_equal_timesteps(cls)
    if schedule == "ddim_uniform":
        # ComfyUI's timesteps whatever the model's config says, all of them (`_at_ddim_uniform`): diffusers'
        # "leading" spacing at steps offset 1 is them for Euler, Heun, DPM2, LMS, DDPM, ... where 1000 // steps fits
        spacing |= {"timestep_spacing": "leading", "steps_offset": 1}
        cls = _at_ddim_uniform(cls)
    elif schedule:
        # a schedule spans the model's whole noise range, as the web UI's (its sigma_min and sigma_max are the model's
        # smallest and largest): diffusers' Euler, Heun, DPM2, LMS and DPM++ SDE take the range from their timestep
        # spacing, and "leading" (SD 2.x's and SDXL's) would start 20 Karras steps at sigma 11.0, not 14.6
        spacing["timestep_spacing"] = "linspace"
    options = dict(BASES[base].options)
    if "noise_sampler_seed" in takes:  # (without seeds, a random tree: not one a seed remakes)
        options["noise_sampler_seed"] = list(seeds) if seeds is not None else None
    if discards(name, discard):
        cls = _discarding(cls)
    if base == "lms":
        cls = _lms_from_first_step(cls)
    if spacing.get("use_karras_sigmas") and _interleaved(cls):  # (and ComfyUI's schedules, which take its place)
        cls = _unrounded(cls)
    # (DDIM's is the pipeline's argument; a sampler that takes none draws as it does: the other pass's took it)
    at_eta = eta is not None and BASES[base].eta not in (None, eta) and base != "ddim"
    scaled = churn is not None and churn.noise != 1 and base in _NOISE_SCALED  # (at 1: the sampler's own noise)
    if at_eta or scaled or base in _THIRD_ORDER_SDE:  # (diffusers' third-order SDE update is not k-diffusion's)
        cls = _at_eta(cls, base)
    if BASES[base].spaced or base == "euler_a":  # (the web UI's and ComfyUI's k-diffusion samplers)
        cls = _from_first_sigma(cls, vp=BASES[base].cls == _DPM)
    churning = churn is not None and churn.churn > 0 and BASES[base].churns  # (at churn 0 the others do nothing)
    if churning:
        if not isinstance(generators, list):
            raise ValueError("a sampler with sigma churn draws its noise from the pictures' generators: give "
                             "scheduler_for a list of them, one a picture")
        cls = _churning(cls)
    made = _made(cls, scheduler.config, {**spacing, **options})
    if at_eta:
        made.eta = eta
    if scaled:
        made.noise = churn.noise
    if churning:
        made.churn, made.generators = churn, generators
    if scheduler.config.get("rescale_betas_zero_snr"):
        # (from_config keeps a setting the class does not take in its config: what it takes is its __init__'s)
        if "rescale_betas_zero_snr" not in takes:
            # diffusers' class has no such option: it would quietly sample SD's unrescaled schedule, not the model's
            able = [n for n in BASES
                    if "rescale_betas_zero_snr" in inspect.signature(_scheduler_class(n).__init__).parameters]
            raise ConfigError(f"{_sampler(name, flag)} cannot sample a model with a zero-terminal-SNR noise schedule "
                              f"(as this one's): its scheduler, {cls.__name__}, has none; use "
                              f"{', '.join(able[:-1])} or {able[-1]}")
        if schedule in COMFY_RULES:
            # ComfyUI's rule starts at the model's largest noise level, which ComfyUI's zero-terminal-SNR sampling
            # (ModelSamplingDiscrete with zsnr) sets at sigma 4.5e3 and diffusers' at 4.1e3 (Euler) or infinity: not
            # ComfyUI's sigmas, so not drawn as if they were
            raise ConfigError(f"{_sampler(name, flag)} cannot sample a model with a zero-terminal-SNR noise schedule "
                              f"(as this one's): ComfyUI's {schedule} starts at the model's largest noise level, which "
                              f"ComfyUI's zero-terminal-SNR sampling sets at sigma 4.5e3 and diffusers elsewhere "
                              f"(4.1e3, or infinity); use {base}")
        if schedule:
            # its largest noise level is infinite: a sigma schedule puts most steps at the top, on the same timestep
            # (or takes the logarithm of infinity)
            raise ConfigError(f"{_sampler(name, flag)} cannot sample a model with a zero-terminal-SNR noise schedule "
                              f"(as this one's); use {base}")
    return made


# made schedulers, by class, config and options (`_made`): a few, as a grid's samplers on one or two models
_MADE: dict[tuple[type, str], object] = {}
_MADE_AT_MOST = 32


def _made(cls: type, config, options: dict):
    """A copy of `cls.from_config(config, **options)`, made once for each class, config and options. Diffusers' DPM2
    and DPM2 a (so DPM++ 2S a) set up their tables for every training timestep when made, one timestep at a time
    (their `_sigma_to_t`: about 0.5 s on a 2-core CPU), and Restart plans its steps on them (0.07 s), where every pass
    of a batch or X/Y/Z grid and every refiner and Restart check makes one again. Each one handed out is a deep copy:
    its own tables, timesteps, step and begin index, never another pass's."""
    key = (cls, json.dumps({**config, **options}, sort_keys=True, default=_plain))
    if key not in _MADE:
        if len(_MADE) >= _MADE_AT_MOST:
            del _MADE[next(iter(_MADE))]  # (the oldest)
        _MADE[key] = cls.from_config(config, **options)
    return copy.deepcopy(_MADE[key])


def _plain(value):
    """A config value JSON has no type for (an array of trained betas) as a list."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def check_steps(name: str, steps: int, flag: str | None = None) -> None:
    """Refuse sampler `name` at `steps` steps where it cannot draw them as the tool it comes from draws them: TCD
    beyond the 50 timesteps a TCD model is distilled at, which diffusers' TCDScheduler chooses its steps among. (A
    `_ddim_uniform` one draws at every count, ComfyUI's steps: `_at_ddim_uniform`.)

    >>> check_steps("tcd", 60)  # doctest: +SKIP
    ConfigError: --sampler tcd at 60 steps: TCD takes its steps among the 50 timesteps a TCD model is distilled at ...
    """
    if _PARTS.get(name, (None, ""))[0] == "tcd" and steps > 50:
        raise ConfigError(f"{_sampler(name, flag)} at {steps} steps: TCD takes its steps among the 50 timesteps a TCD "
                          f"model is distilled at (diffusers' TCDScheduler); give 50 steps or fewer (2 to 8 is TCD's "
                          f"own use)")


def drawn_steps(name: str, steps: int, discard: bool = False) -> int:
    """The steps sampler `name` draws when asked for `steps` (its next-to-last sigma discarded with `discard`): a
    `_ddim_uniform` one ComfyUI's on SD's and SDXL's 1000 timesteps, more where 1000 // steps does not fit (31 at
    30; one that discards, as ComfyUI's dpm_2, on the schedule of one step more less a sigma: 31 at 30, of 32),
    `steps` for every other.

    >>> drawn_steps("euler_ddim_uniform", 30), drawn_steps("dpm2_ddim_uniform", 20), drawn_steps("euler", 30)
    (31, 21, 30)
    """
    if _PARTS.get(name, (None, ""))[1] != "ddim_uniform":
        return steps
    more = int(discards(name, discard))
    return len(ddim_uniform_times(steps + more)) - more


def check_pass(scheduler, name: str, schedule: int, run: int, given: str, flag: str | None = None,
               discard: bool = False) -> None:
    """Refuse sampler `name` for a pass that runs the last `run` steps of a `schedule`-step schedule of the model
    whose scheduler is `scheduler` (its next-to-last sigma discarded with `discard`) where it would take fewer calls:
    Restart from below its restart interval, 20 steps or more to run, where the web UI's takes 9 fewer
    (`schedulers.restart_plan`) and a diffusers pipeline has counted them all, or on a schedule whose level nearest
    sigma 0.1 is 0 (the model's spacing less its next-to-last sigma at 20 to 24 steps), where it goes down to 0
    twice. `given`: the settings that make the pass, `flag`: where the sampler was given, both for the message.

    >>> check_pass(model.pipeline.scheduler, "restart_karras", 200, 21, "--denoise 0.1")  # doctest: +SKIP
    ConfigError: --sampler restart_karras: --denoise 0.1 runs the last 21 steps of 200, from sigma 0.075, below ...
    """
    if name in _PARTS:
        check_steps(name, schedule, flag)
    if name not in _PARTS or _PARTS[name][0] != "restart":
        return
    from .schedulers import restart_plan

    made = scheduler_for(scheduler, name, flag=flag, discard=discard)
    try:
        made.set_timesteps(schedule)
    except ValueError as e:  # (the schedule's own plan: `schedulers.RestartScheduler`)
        discarding = f" with {setting('discard_penultimate_sigma')}" if discard else ""
        raise ConfigError(f"{_sampler(name, flag)}: {given}{discarding}: {e}") from e
    if run == schedule:
        return
    levels = made.schedule[schedule - run:]
    taken = len(restart_plan(levels))
    if taken < run:
        raise ConfigError(f"{_sampler(name, flag)}: {given} runs the last {run} steps of {schedule}, from sigma "
                          f"{levels[0]:.2g}, below Restart's restart interval (0.1 to 2), where the web UI's Restart "
                          f"takes only {taken}: give a higher denoise, or fewer than 20 steps to run")


def _scheduler_class(base: str) -> type:
    """The scheduler class base sampler `base` is made as: diffusers', or textinv's own (`schedulers`)."""
    import diffusers

    from . import schedulers

    return getattr(schedulers, BASES[base].cls, None) or getattr(diffusers, BASES[base].cls)


_VARIANTS: dict[tuple[type, str], type] = {}


def _variant(cls: type, what: str, **methods) -> type:
    """A subclass of diffusers' scheduler `cls` with `methods` in place of its own, named as `cls` is (its docstring
    says `what` it does otherwise), made once for each class and `what`, so every pass of a sampler uses one class."""
    if (cls, what) not in _VARIANTS:
        _VARIANTS[cls, what] = type(cls.__name__, (cls,), {**methods, "__module__": __name__,
                                                           "__doc__": f"{cls.__name__}, {what}"})
    return _VARIANTS[cls, what]


def _comfy_spaced(cls: type, rule: str) -> type:
    """Diffusers' scheduler `cls`, made with use_karras_sigmas, on ComfyUI's schedule `rule` (normal, simple or
    sgm_uniform: `schedulers.comfy_spaced`) over the model's training noise levels in place of Karras's: each of
    diffusers' k-diffusion-style schedulers makes its schedule's sigmas in `_convert_to_karras`, then their timesteps
    and its tables from them, as for Karras's (textinv's LCM reads `comfy_rule` over its 50 levels itself)."""
    from .schedulers import comfy_spaced

    def _convert_to_karras(self, in_sigmas, num_inference_steps=None):
        # (DPM++ 2M's hands it the 1000 training sigmas and the steps; the others the steps' sigmas alone)
        alphas = self.alphas_cumprod.double().numpy()
        return comfy_spaced(rule, ((1 - alphas) / alphas) ** 0.5, num_inference_steps or len(in_sigmas))

    return _variant(cls, f"on ComfyUI's {rule} schedule", _convert_to_karras=_convert_to_karras, comfy_rule=rule)


def _discarding(cls: type) -> type:
    """Diffusers' scheduler `cls` with the web UI's discard_next_to_last_sigma (DPM2, DPM2 a, DPM++ 3M SDE): for n
    steps, the sigmas of its n + 1 step schedule (the model's spacing or a sigma schedule) without the last non-zero
    one, so the sampler's last step goes from the one before it to 0, as the web UI's sampler table marks those three
    (its "Always discard next-to-last sigma" setting, --discard-penultimate-sigma, does it for its other k-diffusion
    samplers: `discards`). `set_timesteps` builds the longer schedule and takes that step out of its tables.

    >>> _discarding(diffusers.KDPM2DiscreteScheduler)  # doctest: +SKIP
    <class 'textinv.samplers.KDPM2DiscreteScheduler'>
    """
    def set_timesteps(self, num_inference_steps, *args, **kwargs):
        if num_inference_steps >= self.config.num_train_timesteps:
            # no longer schedule to take one from (diffusers' own __init__ sets every training timestep too)
            return cls.set_timesteps(self, num_inference_steps, *args, **kwargs)
        cls.set_timesteps(self, num_inference_steps + 1, *args, **kwargs)
        if hasattr(self, "plan_steps"):  # (Restart: Heun's tables less the sigma, its steps planned on them again)
            self.sigmas, self.timesteps = self._heun
            _discard_two_calls(self)
            self.plan_steps()
        elif hasattr(self, "sigmas_interpol"):
            _discard_interleaved(self)
        elif self.order == 2:  # Heun's and DPM++ SDE's tables: two calls a step (`_discard_two_calls`)
            _discard_two_calls(self)
        else:  # one sigma a step, then the end (Euler, Euler a, LMS, DPMSolverMultistepScheduler)
            self.sigmas = _without_next_to_last(self.sigmas)
            self.timesteps = self.timesteps[:-1]
        self.num_inference_steps = num_inference_steps

    return _variant(cls, "discarding the next-to-last sigma", set_timesteps=set_timesteps)


def _at_eta(cls, base: str):
    """Scheduler `cls` of sampler `base` at the eta its `eta` attribute holds: DPM++ 2M SDE's (and its Heun
    variant's) and DPM++ 3M SDE's updates at it (`schedulers.sde_first_order_update`; DPM++ 3M SDE's third-order
    step k-diffusion's, `schedulers.sde_third_order_update`, which diffusers' is not), DPM++ SDE's step
    (`schedulers.dpmpp_sde_step`); for an ancestral one (`schedulers.ancestral_step`) Euler a's step
    (`schedulers.euler_ancestral_step`), else DPM2 a's and DPM++ 2S a's tables set for it after `set_timesteps`
    (`schedulers.ancestral_tables`), their up sigmas then scaled by its `noise` attribute (the web UI's Sigma noise,
    k-diffusion's s_noise: each step adds s_noise sigma_up of fresh noise; the SDE samplers' updates scale their
    noise by it too). At eta 1 and noise 1 (and while it has neither, as when made) it is `cls`'s own, but for DPM++
    3M SDE's third-order step."""
    from . import schedulers

    if base == "euler_a":
        return _variant(cls, "at another eta", step=schedulers.euler_ancestral_step)
    if base == "dpm++sde":
        return _variant(cls, "at another eta or noise", step=schedulers.dpmpp_sde_step)
    if BASES[base].brownian:
        return _variant(cls, "at another eta or noise", dpm_solver_first_order_update=schedulers.sde_first_order_update,
                        multistep_dpm_solver_second_order_update=schedulers.sde_second_order_update,
                        multistep_dpm_solver_third_order_update=schedulers.sde_third_order_update)

    def set_timesteps(self, *args, **kwargs):
        cls.set_timesteps(self, *args, **kwargs)
        if getattr(self, "eta", 1.0) != 1.0:
            schedulers.ancestral_tables(self, self.eta)
        if getattr(self, "noise", 1.0) != 1.0:
            self.sigmas_up = self.sigmas_up * self.noise

    return _variant(cls, "at another eta or noise", set_timesteps=set_timesteps)


def _churning(cls):
    """Diffusers' Euler, Heun or DPM2 (`cls`) with the sigma churn its `churn` attribute holds (`Churn`), as
    k-diffusion's sample_euler, sample_heun and sample_dpm_2 (the web UI's) take it: step k, from sigma s_k, first
    adds noise of sqrt(sigma_hat^2 - s_k^2) (times the noise setting, one draw of each picture's generator), then
    steps from sigma_hat = s_k (1 + gamma) as the sampler does: its model call at sigma_hat's timestep, its
    derivative and step length from sigma_hat, DPM2's midpoint between sigma_hat and the next sigma. Gamma is
    min(churn / steps, sqrt 2 - 1) where tmin <= s_k <= tmax, else 0 (no draw); steps are those the pass runs (an
    img2img pass: the schedule's last ones, from `set_begin_index`), as the web UI hands the sampler only those.

    The tables keep the steps' own sigmas (the starting noise, img2img's start and the refiner's switch read them):
    a churned step's sigma_hat stands in its first call's place only while its calls run; its timesteps and DPM2's
    midpoints are written where the pipeline reads them."""
    from diffusers.utils.torch_utils import randn_tensor

    def set_timesteps(self, *args, **kwargs):
        cls.set_timesteps(self, *args, **kwargs)
        self._unchurned = self.timesteps.clone(), getattr(self, "sigmas_interpol", None)
        _plan_churn(self, 0)

    def set_begin_index(self, begin_index: int = 0):
        cls.set_begin_index(self, begin_index)
        _plan_churn(self, begin_index // self.order)

    def scale_model_input(self, sample, timestep):
        if self.step_index is None:
            self._init_step_index(timestep)
        k, call = divmod(self.step_index, self.order)
        if k not in self.churned:
            return cls.scale_model_input(self, sample, timestep)
        if call == 0:  # (the step's first call: its noise, one draw a picture, added here and in `step`)
            sigma, hat = self.churned[k]
            rows = (len(self.generators),) + tuple(sample.shape[1:])
            noise = randn_tensor(rows, generator=self.generators, device=sample.device, dtype=sample.dtype)
            self._added = noise * (self.churn.noise * (hat ** 2 - sigma ** 2) ** 0.5)
            # (the pipeline's batch holds the latents once for each guidance row: the same noise for each)
            sample = sample + self._added.repeat(sample.shape[0] // len(self.generators), *[1] * (sample.dim() - 1))
        with _at_sigma_hat(self, k):
            return cls.scale_model_input(self, sample, timestep)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        k, call = divmod(self.step_index, self.order)
        if k not in self.churned:
            return cls.step(self, model_output, timestep, sample, *args, **kwargs)
        with _at_sigma_hat(self, k):
            return cls.step(self, model_output, timestep, sample + self._added if call == 0 else sample, *args,
                            **kwargs)

    return _variant(cls, "with sigma churn", set_timesteps=set_timesteps, set_begin_index=set_begin_index,
                    scale_model_input=scale_model_input, step=step)


def _plan_churn(scheduler, first: int) -> None:
    """Set `scheduler.churned` ({step: (its sigma, sigma_hat)}, the steps from `first` on that churn) for a pass
    that runs the steps from `first` (`_churning`), and the timesteps of their calls at sigma_hat (DPM2's midpoint
    calls' too, the midpoints in its tables): the unchurned ones are put back first."""
    import torch

    from . import schedulers

    churn, order = getattr(scheduler, "churn", None), scheduler.order
    if churn is None:  # (diffusers' Heun and DPM2 set their timesteps when made, before it is set)
        scheduler.churned = {}
        return
    timesteps, midpoints = scheduler._unchurned
    scheduler.timesteps[:] = timesteps  # (in place: an img2img pipeline holds the part it runs already)
    if midpoints is not None:
        scheduler.sigmas_interpol = midpoints.clone()
    starts = range(0, len(scheduler.timesteps), order)  # (each step's first call)
    sigmas = [float(scheduler.sigmas[i]) for i in starts] + [0.0]  # (the steps' sigmas, then the end)
    steps = len(starts) - first
    gamma = min(churn.churn / steps, 2 ** 0.5 - 1) if steps > 0 else 0.0
    scheduler.churned = {k: (s, s * (1 + gamma)) for k, s in enumerate(sigmas[:-1])
                         if k >= first and churn.tmin <= s <= churn.tmax and gamma > 0}
    for k, (_, hat) in scheduler.churned.items():
        schedulers.set_times(scheduler, torch.tensor([hat]), slice(k * order, k * order + 1))
        if midpoints is not None and sigmas[k + 1] > 0:  # (DPM2: halfway from sigma_hat to the next, in log sigma)
            middle = math.sqrt(hat * sigmas[k + 1])
            scheduler.sigmas_interpol[2 * k + 1] = middle
            schedulers.set_times(scheduler, torch.tensor([middle]), slice(2 * k + 1, 2 * k + 2))


@contextlib.contextmanager
def _at_sigma_hat(scheduler, step: int):
    """Step `step`'s sigma_hat in its first call's place in `scheduler.sigmas` (`_churning`) while the sampler's
    own scale_model_input or step reads it there, its own sigma put back after."""
    place = step * scheduler.order
    sigma, hat = scheduler.churned[step]
    scheduler.sigmas[place] = hat
    try:
        yield
    finally:
        scheduler.sigmas[place] = sigma


def _interleaved(cls: type) -> bool:
    """Whether `cls` lays out its tables as diffusers' DPM2 and DPM2 a do, two entries a step (DPM++ 2S a too)."""
    import diffusers

    return issubclass(cls, (diffusers.KDPM2DiscreteScheduler, diffusers.KDPM2AncestralDiscreteScheduler))


def _unrounded(cls):
    """Diffusers' DPM2 or DPM2 a (so DPM++ 2S a) on Karras sigmas, its steps' timesteps those of their sigmas as they
    are: diffusers rounds them to whole timesteps there (and only there: not on its other schedules, nor the
    midpoints', nor Euler's or Heun's on Karras), where the web UI's k-diffusion denoiser (CompVisDenoiser, its
    quantization off by default) calls the model at the timestep of the sigma itself. The tables hold [t0, its
    midpoint's, t1, ...]: the steps' at the even places."""
    from . import schedulers

    def set_timesteps(self, *args, **kwargs):
        cls.set_timesteps(self, *args, **kwargs)  # (the steps' sigmas without the end, at the even places)
        schedulers.set_times(self, schedulers.step_values(self.sigmas)[:-1], slice(0, None, 2))

    return _variant(cls, "its Karras timesteps unrounded", set_timesteps=set_timesteps)


def _rounded(cls):
    """Diffusers' DPM-Solver multistep scheduler on exponential or beta sigmas, each step's model call at the whole
    timestep nearest its sigma, as diffusers' own takes it on Karras sigmas (and so on ComfyUI's schedules,
    `_comfy_spaced`) and ComfyUI on every schedule (ModelSamplingDiscrete.timestep): diffusers casts the sigma's own
    timestep to an integer there, which truncates it, up to a whole timestep below it and below the web UI's (which
    takes it as it is): SD's first exponential step, at sigma_max, at 998, not 999; 942 for 942.9."""
    import numpy as np
    import torch

    def set_timesteps(self, *args, **kwargs):
        cls.set_timesteps(self, *args, **kwargs)
        log_sigmas = np.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).cpu().numpy() ** 0.5)
        times = self._sigma_to_t(self.sigmas[:-1].cpu().numpy(), log_sigmas)  # (the steps' sigmas, less the end)
        self.timesteps = torch.from_numpy(np.round(times)).to(self.timesteps)

    return _variant(cls, "its timesteps rounded", set_timesteps=set_timesteps)


def _first_of_equal_timesteps(cls):
    """Diffusers' DPM-Solver multistep scheduler or textinv's LCM (`cls`), a pass that is not told its first step
    (a txt2img pipeline's: no `set_begin_index`) starting at the first of equal timesteps, not the second. Their
    steps go by sigma, and two sigmas can share a whole timestep: DPM-Solver's model call is at the whole timestep
    nearest its sigma (on Karras, exponential and beta sigmas, as ComfyUI's), LCM's at the nearest of its 50 distilled
    ones (the web UI's). Diffusers takes the second of equal timesteps as a pass's first step (for Heun-style tables,
    whose first call of a step shares its timestep with the step before's second), so a pass whose first two
    timesteps were equal (the web UI's beta sigmas from 48 steps on SD's: sigma_max and the next, 0.04 below it, both
    at 999; LCM on them from 9 steps, on its own spacing from 100) skipped its first step and stepped past the end of
    its sigmas (an IndexError). ComfyUI's beta scheduler (not the web UI's Beta) drops a repeated timestep, drawing
    fewer steps; the web UI's Beta keeps every sigma, each at its own timestep, as textinv does at the nearest."""
    def index_for_timestep(self, timestep, schedule_timesteps=None):
        timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        found = (timesteps == timestep).nonzero()
        return found[0].item() if len(found) else cls.index_for_timestep(self, timestep, schedule_timesteps)

    return _variant(cls, "starting at the first of equal timesteps", index_for_timestep=index_for_timestep)


def ddim_uniform_times(steps: int, train: int = 1000) -> list[int]:
    """The timesteps, largest first, ComfyUI's ddim_uniform (comfy/samplers.py, ddim_scheduler; the web UI's DDIM
    schedule type, sd_schedulers.ddim_scheduler) takes `steps` steps at on a model of `train` timesteps: 1, 1 + s,
    1 + 2s, ... below `train`, s = train // steps (at least 1). That is `steps` of them where s times steps is near
    enough `train`, more elsewhere: both tools draw them all (31 steps at 30, 167 at 150; 999 at 1000).

    >>> ddim_uniform_times(4), len(ddim_uniform_times(30))
    ([751, 501, 251, 1], 31)
    """
    return list(range(1, train, max(train // steps, 1)))[::-1]


def _at_ddim_uniform(cls):
    """Diffusers' scheduler `cls`, made with "leading" spacing at steps offset 1, on ComfyUI's ddim_uniform timesteps
    (`ddim_uniform_times`) at every step count, the model's sigmas at them, then its end: at a count where 1000 //
    steps does not fit, more steps than asked (31 at 30), each a model call, as ComfyUI and the web UI draw them. A
    pipeline counts the steps it was asked for and runs every timestep the scheduler holds (an img2img pass the last
    of them from the same place as at the asked count: the web UI's sigmas[steps - t_enc - 1:]).

    "leading" is them where the count fits, and is kept there, so those draw as they always have. Elsewhere the
    scheduler is handed them where it takes timesteps (diffusers' Euler, Heun, DDPM; its DPM-Solver at every count, as
    it spaces "leading" otherwise: 941, 894, ..., 48 at 20), else set at their count under a training length that
    makes "leading"'s stride, train // count, ComfyUI's (`_strided`: Euler a, LMS, DPM2, DPM++ SDE, ...)."""
    import diffusers

    handed = issubclass(cls, diffusers.DPMSolverMultistepScheduler)
    takes = "timesteps" in inspect.signature(cls.set_timesteps).parameters

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        train = self.config.num_train_timesteps
        times = ddim_uniform_times(num_inference_steps, train)
        if handed or len(times) != num_inference_steps and takes:
            cls.set_timesteps(self, device=device, timesteps=times)
        elif len(times) == num_inference_steps:
            cls.set_timesteps(self, num_inference_steps, device, *args, **kwargs)
        else:  # (DPM2's __init__ sets every timestep handing its own length, 1000: a stride of 1000 // 999 too)
            with _strided(self, max(train // num_inference_steps, 1) * len(times)):
                cls.set_timesteps(self, len(times), device, *args, **kwargs)

    return _variant(cls, "on ComfyUI's ddim_uniform timesteps", set_timesteps=set_timesteps)


@contextlib.contextmanager
def _strided(scheduler, train: int):
    """`scheduler` read as trained over `train` timesteps while it sets its timesteps: its "leading" spacing at n
    steps takes them train // n apart, the one thing its set_timesteps reads the training length for (its sigmas come
    from its own table of the model's, `alphas_cumprod`)."""
    from diffusers.configuration_utils import FrozenDict

    config = scheduler._internal_dict
    scheduler._internal_dict = FrozenDict({**config, "num_train_timesteps": train})
    try:
        yield
    finally:
        scheduler._internal_dict = config


def _from_first_sigma(cls, vp: bool):
    """Diffusers' k-diffusion-style scheduler `cls` starting a pass from pure noise as the web UI and ComfyUI do where
    its first sigma, s0, is below the model's largest noise level (the model's own spacing on a "leading" config,
    SDXL's: the web UI's DDIM schedule type, ComfyUI's ddim_uniform): noise times s0 (the web UI's x = noise sigmas[0],
    ComfyUI's noise_scaling without max_denoise). Diffusers starts there at sqrt(1 + s0^2): its Euler-style
    schedulers on that spacing (their init_noise_sigma), its DPM-Solver ones (`vp`: latents in VP terms, x / sqrt(1 +
    sigma^2)) at unit noise, 0.4% more at 20 steps. From the model's largest level, where every sigma schedule starts,
    the two tools differ and diffusers' start is kept: the Euler-style ones start at sigma_max as the web UI does, the
    DPM-Solver ones at sqrt(1 + sigma_max^2) as ComfyUI does (0.23% more on SD's and SDXL's 14.6)."""
    own = None if vp else inspect.getattr_static(cls, "init_noise_sigma")  # (DPM-Solver's: 1, set when made)

    def init_noise_sigma(self):
        if self.num_inference_steps is not None:
            first, last = float(self.sigmas[0]), float(self.alphas_cumprod[-1])
            if first < ((1 - last) / last) ** 0.5 * (1 - 1e-5):  # (ComfyUI's max_denoise: within 1e-5 of the largest)
                return first / (1 + first ** 2) ** 0.5 if vp else first
        return own.__get__(self) if own is not None else self._made_init_noise_sigma

    def made_with(self, value):  # (DPMSolverMultistepScheduler.__init__ sets its 1)
        self._made_init_noise_sigma = value

    return _variant(cls, "starting from its first sigma's noise",
                    init_noise_sigma=property(init_noise_sigma, made_with))


def _lms_from_first_step(cls):
    """Diffusers' LMS with its order counted from the pass's first step, as k-diffusion's sample_lms (the web UI's)
    counts it: diffusers' counts from the schedule's first step (min(step index + 1, 4)), so a pass that starts
    later in it (img2img, inpainting, the hires fix) took its first steps with the coefficients of a higher order
    than the derivatives it had (a sum that is not the step's length). A pass from the start is unchanged."""
    def step(self, model_output, timestep, sample, order=4, return_dict=True):
        # (this step's derivative and those before it in the pass: step appends the one before it counts)
        return cls.step(self, model_output, timestep, sample, min(order, len(self.derivatives) + 1), return_dict)

    return _variant(cls, "its order counted from the pass's first step", step=step)


def _without_next_to_last(values):
    """A schedule's per-step values, the last its end (sigma 0), less the one before the end."""
    import torch

    return torch.cat([values[:-2], values[-1:]])


def _discard_two_calls(scheduler) -> None:
    """Take the next-to-last sigma out of diffusers' Heun and DPM++ SDE tables, which hold [s0, s1, s1, ..., sn, sn,
    0] from the schedule [s0, ..., sn, 0], and timesteps of two calls a step and one for the last: without sn the last
    step goes from s(n-1) to 0 in one call, its timesteps the table's less its last two."""
    import torch

    schedule = _without_next_to_last(torch.cat([scheduler.sigmas[:1], scheduler.sigmas[1::2]]))
    scheduler.sigmas = torch.cat([schedule[:1], schedule[1:-1].repeat_interleave(2), schedule[-1:]])
    scheduler.timesteps = scheduler.timesteps[:-2]


def _discard_interleaved(scheduler) -> None:
    """Take the next-to-last sigma out of diffusers' DPM2 tables (KDPM2 and KDPM2 ancestral). They hold each step's
    values twice, for its two UNet calls, [v0, v1, v1, ..., vn, vn, vn] from the schedule [v0, ..., vn] (vn: the end),
    and the timesteps [t0, its midpoint, t1, ..., the last midpoint, t(n-1)]. Without sigma n - 1 the last step goes
    from sigma n - 2 to 0: in the ancestral tables it then adds no noise and has no midpoint (0s, as diffusers' own
    last step); everything before it is unchanged (`schedulers.step_values`, `schedulers.step_table`)."""
    from .schedulers import step_table, step_values

    ancestral = hasattr(scheduler, "sigmas_up")
    scheduler.sigmas = step_table(_without_next_to_last(step_values(scheduler.sigmas)))
    for name in ("sigmas_interpol", "sigmas_up", "sigmas_down") if ancestral else ("sigmas_interpol",):
        values = _without_next_to_last(step_values(getattr(scheduler, name)))
        if ancestral:
            values[-2] = 0.0  # the step into sigma 0: no noise to add, no midpoint
        setattr(scheduler, name, step_table(values))
    scheduler.timesteps = scheduler.timesteps[:-2]
