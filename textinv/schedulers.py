"""Samplers of the web UI's that diffusers has no scheduler for, written as diffusers schedulers so its pipelines draw
with them as with their own (`samplers.scheduler_for` makes them from the model's scheduler config).

`DPMSolverPP2SAncestralScheduler` is k-diffusion's sample_dpmpp_2s_ancestral, the web UI's "DPM++ 2S a" and
ComfyUI's dpmpp_2s_ancestral: DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r = 1/2) from each
sigma down to the ancestral step's sigma_down, then fresh noise of sigma_up (eta 1, s_noise 1).

`sde_first_order_update` and `sde_second_order_update` are diffusers' DPM++ 2M SDE updates (DPMSolverMultistepScheduler,
sde-dpmsolver++) at an eta or noise scale other than its 1, as k-diffusion's sample_dpmpp_2m_sde takes them (the web
UI's Eta and Sigma noise); `sde_third_order_update` is DPM++ 3M SDE's third-order one as k-diffusion's
sample_dpmpp_3m_sde takes it (diffusers' differs in the sign of one term), at any eta and noise scale too.
`dpmpp_sde_step` is DPM++ SDE's step (diffusers' DPMSolverSDEScheduler's) at an eta or noise scale other than its 1,
as k-diffusion's sample_dpmpp_sde takes them.

`RestartScheduler` is the web UI's "Restart" (its sd_samplers_extra.restart_sampler): Heun's steps with, at 20 steps
or more, a stretch of the schedule drawn again after noise takes the latents back up it (Xu et al. 2023, "Restart
Sampling for Improving Generative Processes").

`LatentConsistencyScheduler` is the web UI's "LCM" (its sd_samplers_lcm, since 1.8) and ComfyUI's lcm after its
ModelSamplingDiscrete node's lcm sampling: the multistep sampling of latent consistency models (Luo et al. 2023,
"Latent Consistency Models", Algorithm 1) on the 50 noise levels an LCM (or LCM-LoRA) was distilled at, each step the
model's denoised estimate under the consistency boundary conditions, then fresh noise of the next step's sigma.

`StochasticTCDScheduler` is diffusers' TCDScheduler (Zheng et al. 2024, "Trajectory Consistency Distillation",
strategic stochastic sampling) at its own gamma, which a diffusers pipeline would otherwise set to its eta argument, 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler, TCDScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import KDPM2AncestralDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class DPMSolverPP2SAncestralScheduler(KDPM2AncestralDiscreteScheduler):
    """DPM++ 2S a: each step from sigma s to the next, s', is a DPM-Solver++(2S) step to sigma_down = s'^2 / s through
    the midpoint sqrt(s sigma_down) (halfway in log sigma), then noise of sigma_up = sqrt(s'^2 - sigma_down^2) from the
    pipeline's generator; the last step, to 0, is one model call that lands on its denoised estimate.

    Its steps are laid out as diffusers' DPM2 a lays out its own: the same sigmas, midpoints, up and down sigmas, two
    model calls a step (the midpoint's second) and one for the last, so its timesteps, `scale_model_input`,
    `add_noise`, img2img's start and the sigma schedules (Karras, exponential, beta) are that class's; only the update
    differs. DPM2's second half is an Euler step with the midpoint's derivative; this one is the exponential
    integrator's step on the denoised estimates, exact for a denoiser that does not change along the step.

    >>> pipe.scheduler = DPMSolverPP2SAncestralScheduler.from_config(pipe.scheduler.config)  # doctest: +SKIP
    >>> pipe("a cat", num_inference_steps=20, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
    """

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """One model call's update: at the step's sigma the move to its midpoint, at the midpoint the move to
        sigma_down and the step's noise. Returns (the next latents, this call's denoised estimate)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        # the tables hold each step's values twice, the step's first call reading them at an even index (0, 2, 4,
        # ...) and its midpoint's call at the odd one after it: the step's own values are at the even one
        first = self.state_in_first_order
        at = self.step_index if first else self.step_index - 1
        sigma, middle = self.sigmas[at], self.sigmas_interpol[at]
        denoised = _denoised(self.config.prediction_type, model_output, sample, sigma if first else middle)
        if first:
            # t = -log sigma; from t to the midpoint s = t + h / 2: x_s = (sigma_s / sigma) x - expm1(-h / 2) D, where
            # -expm1(-h / 2) = 1 - sigma_s / sigma. The last step's midpoint is 0 (diffusers' table): x_s = D
            ratio = middle / sigma
            prev_sample = ratio * sample + (1 - ratio) * denoised
            if middle > 0:
                self.sample = sample  # (the step's start, which its second half moves from)
        else:
            # from t to t_down with the midpoint's estimate: (sigma_down / sigma) x - expm1(-h) D(x_s, sigma_s)
            start, self.sample = self.sample, None
            ratio = self.sigmas_down[at] / sigma
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            prev_sample = ratio * start + (1 - ratio) * denoised + noise * self.sigmas_up[at]
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


def _denoised(kind: str, model_output: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    """The denoised estimate of `sample` (x0 + sigma noise) from the output of a model of prediction type `kind`
    for its scaled input x / sqrt(sigma^2 + 1)."""
    if kind == "epsilon":
        return sample - sigma * model_output
    if kind == "v_prediction":
        return model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
    if kind == "sample":
        return model_output
    raise ValueError(f"prediction_type {kind!r} is not one of epsilon, v_prediction or sample")


def karras(n: int, low: float, high: float, rho: float = 7.0) -> list[float]:
    """Karras et al. 2022's n noise levels from `high` down to `low` (eq. 5), then 0, as k-diffusion's
    get_sigmas_karras.

    >>> [round(s, 3) for s in karras(3, 0.1, 2.0)]
    [2.0, 0.524, 0.1, 0.0]
    """
    top, bottom = high ** (1 / rho), low ** (1 / rho)
    return [(top + i / max(n - 1, 1) * (bottom - top)) ** rho for i in range(n)] + [0.0]


def comfy_spaced(rule: str, levels: np.ndarray, n: int) -> np.ndarray:
    """The n sigmas, largest first (the 0 after them not included), ComfyUI's scheduler `rule` takes over the model's
    noise `levels` (its sigma at each timestep, rising: ModelSamplingDiscrete's sigmas), as comfy/samplers.py's
    normal_scheduler (sgm_uniform: the same with sgm) and simple_scheduler take them; the web UI's Normal, Simple and
    SGM Uniform schedule types (1.10 on) are the same rules. normal takes n timesteps evenly spaced from the last to
    the first, sgm_uniform the first n of n + 1 so spaced (the step to the first becomes the step to 0), each sigma
    interpolated in log sigma between two levels; simple the level every len / n timesteps down from the last, rounded
    down to a whole timestep.

    >>> levels = np.array([0.1, 1.0, 10.0])
    >>> comfy_spaced("normal", levels, 3).round(6).tolist(), comfy_spaced("sgm_uniform", levels, 2).round(6).tolist()
    ([10.0, 1.0, 0.1], [10.0, 1.0])
    >>> comfy_spaced("simple", levels, 2).tolist()
    [10.0, 1.0]
    """
    last = len(levels) - 1
    if rule == "simple":
        stride = len(levels) / n  # (in float, as ComfyUI takes it: int(x * stride) rounds down)
        return np.array([levels[last - int(x * stride)] for x in range(n)])
    if rule == "normal":
        at = np.linspace(last, 0, n)
    elif rule == "sgm_uniform":
        at = np.linspace(last, 0, n + 1)[:-1]
    else:
        raise ValueError(f"{rule!r} is not one of ComfyUI's schedulers normal, simple or sgm_uniform")
    return np.exp(np.interp(at, np.arange(len(levels)), np.log(levels)))


def restart_plan(schedule: list[float]) -> list[tuple[float, float]]:
    """The Heun steps (from sigma, to sigma) the web UI's Restart takes on the sigma `schedule` (its n steps' sigmas,
    then 0): at fewer than 20 steps the schedule's own; from 20, n - 9 Karras steps over the schedule's range with 9
    steps from the level nearest 2 down to the one nearest 0.1 drawn again once they are passed, and from 36 steps
    n - 2 (n // 4) steps with n // 4 drawn again twice (Xu et al. 2023's restart interval [0.1, 2]): n steps in all,
    fewer only where no level of the range is nearer 2 than 0.1 (a schedule that starts below about 0.1).

    >>> len(restart_plan(karras(20, 0.03, 14.6))), restart_plan([14.6, 1.0, 0.0])
    (20, [(14.6, 1.0), (1.0, 0.0)])
    """
    steps = len(schedule) - 1
    if steps < 20:
        return list(zip(schedule[:-1], schedule[1:]))
    span, times = (steps // 4, 2) if steps >= 36 else (9, 1)
    levels = karras(steps - span * times, schedule[-2], schedule[0])
    low, high = (min(range(len(levels)), key=lambda i: abs(levels[i] - x)) for x in (0.1, 2.0))
    plan = []
    for i in range(len(levels) - 1):
        plan.append((levels[i], levels[i + 1]))
        if i + 1 == low and high < low:
            again = karras(span + 1, levels[low], levels[high])[:-1]
            again[0], again[-1] = levels[high], levels[low]  # (the very levels: no noise where one ends, ~1e-17 off)
            plan += list(zip(again[:-1], again[1:])) * times
    return plan


class RestartScheduler(HeunDiscreteScheduler):
    """The web UI's Restart: Heun's steps along `restart_plan`, where a step that starts above the last one's end
    first adds the noise that takes the latents up to it, sqrt(start^2 - end^2) of the pipeline's generator's.

    Its tables are laid out as diffusers' Heun lays out its own, one entry a model call: two calls a step (at its
    start, then at its end from the Euler step there) and one for the last step, to 0, so `scale_model_input`,
    `add_noise` and img2img's start are that class's. At fewer than 20 steps it is Heun, call for call. An img2img
    pass (`set_begin_index`) plans the schedule's last steps alone, as the web UI hands Restart the sigmas it runs.

    >>> pipe.scheduler = RestartScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)  # doctest: +SKIP
    >>> pipe("a cat", num_inference_steps=20, generator=torch.Generator().manual_seed(1))  # doctest: +SKIP
    """

    def set_timesteps(self, num_inference_steps=None, device=None, num_train_timesteps=None, timesteps=None):
        super().set_timesteps(num_inference_steps, device, num_train_timesteps, timesteps)
        self.plan_steps()

    def plan_steps(self) -> None:
        """Plan the steps on Heun's tables as they are (`set_timesteps` made them; the web UI's "Always discard
        next-to-last sigma" takes a sigma out of them first: `samplers._discarding`)."""
        # Heun's tables hold [s0, s1, s1, ..., s(n-1), s(n-1), 0]: the schedule is their first and every other one
        self.schedule = torch.cat([self.sigmas[:1], self.sigmas[1::2]]).tolist()
        self._heun = self.sigmas.clone(), self.timesteps.clone()
        self._lay_out(0)

    def set_begin_index(self, begin_index: int = 0) -> None:
        super().set_begin_index(begin_index)
        if begin_index:
            self._lay_out(begin_index)

    def _lay_out(self, begin: int) -> None:
        """The tables from call `begin` (the first call of step begin / 2) on, for the plan of the schedule's steps
        from there. The timesteps are changed in place: an img2img pipeline holds the part it runs already."""
        schedule = self.schedule[begin // 2:]
        plan = restart_plan(schedule)
        sigmas, times = (table[begin:] for table in self._heun)  # (a plan of the schedule's own steps: Heun's)
        if plan != list(zip(schedule[:-1], schedule[1:])):
            calls = [s for start, end in plan for s in ((start, end) if end > 0 else (start,))]
            if sum(end == 0 for _, end in plan) > 1:
                # (the web UI's restart_sampler takes the level nearest 0.1 as it finds it: 0 can be it, where the
                # schedule's smallest non-zero sigma is above 0.2, as on the model's spacing less its next-to-last)
                raise ValueError(f"Restart's level nearest sigma 0.1 on this schedule is 0 (its smallest non-zero "
                                 f"sigma is {schedule[-2]:.2g}): the web UI's goes down to 0, then restarts from "
                                 f"there, one model call fewer than a diffusers pipeline counts; draw it on a sigma "
                                 f"schedule (restart_karras), at more steps, or without discarding the next-to-last "
                                 f"sigma")
            if len(calls) != len(times):
                # (the web UI would take fewer steps; a diffusers pipeline has counted the iterations already)
                raise ValueError(f"Restart takes {len(plan)} steps, not {len(schedule) - 1}, on a schedule that "
                                 f"starts at sigma {schedule[0]:.3g}, below its restart interval: draw this pass at "
                                 f"a higher denoising strength or fewer than 20 steps")
            log_sigmas = torch.log(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
            times = torch.from_numpy(self._sigma_to_t(np.array(calls), log_sigmas))
            sigmas = torch.tensor(calls + [0.0])
        self.timesteps[begin:] = times.to(self.timesteps)
        self.sigmas = torch.cat([self.sigmas[:begin], sigmas.to(self.sigmas)])
        self.plan = self.plan[:begin // 2] + plan if begin else plan

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """One model call's update: at a step's start the Euler step to its end (the last step's whole move), at
        its end Heun's correction, then the noise up to the next step's start where that is higher."""
        if self.step_index is None:
            self._init_step_index(timestep)
        k = self.step_index // 2  # this call's step: calls 0 1 | 2 3 | ... (each step's start at an even one)
        start, end = self.plan[k]
        first = self.step_index % 2 == 0
        denoised = _denoised(self.config.prediction_type, model_output, sample, start if first else end)
        if first:
            derivative = (sample - denoised) / start
            prev_sample = sample + derivative * (end - start)
            if end > 0:
                self.sample, self.prev_derivative, self.dt = sample, derivative, end - start
                return self._output(prev_sample, denoised, return_dict)
        else:
            derivative = (self.prev_derivative + (sample - denoised) / end) / 2
            prev_sample = self.sample + derivative * self.dt
            self.sample, self.prev_derivative, self.dt = None, None, None
        if k + 1 < len(self.plan) and self.plan[k + 1][0] > end:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            prev_sample = prev_sample + noise * math.sqrt(self.plan[k + 1][0] ** 2 - end ** 2)
        return self._output(prev_sample, denoised, return_dict)

    def _output(self, prev_sample, denoised, return_dict: bool):
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


class LatentConsistencyScheduler(EulerDiscreteScheduler):
    """The web UI's LCM: at each step's sigma s the model's denoised estimate D, taken as an LCM's consistency
    function, c_skip x + c_out D (`boundary`), is the step's result; where a step follows, fresh noise of its sigma
    from the pipeline's generator is added to it, x = D + s' noise (k-diffusion's form of LCM's multistep sampling:
    sample_lcm, ComfyUI's too).

    An LCM is distilled at 50 of the model's timesteps, 19, 39, ..., 999 (`original_steps`; every 20th of 1000), so
    the model is called at the one of those whose sigma is nearest the step's, as the web UI's LCMCompVisDenoiser
    does; the step's own sigma scales its input and its estimate. Its own schedule (the web UI's "Automatic" and
    "Uniform" for LCM) takes n sigmas evenly spaced in index over those 50 levels, from 999 to 19, each between two
    levels interpolated in log sigma. Karras, exponential and beta schedules (`use_karras_sigmas`, ...) span the same
    range, sigma(19) to sigma(999), as the web UI's span its LCM denoiser's.

    Its tables are laid out as diffusers' Euler lays out its own (the steps' sigmas, then 0; one timestep a step), so
    `scale_model_input`, `add_noise` and img2img's start are that class's. Diffusers' own LCMScheduler takes the same
    step on other timesteps (at 4 steps 999, 759, 499, 259; here 999, 679, 339, 19) and is what its LCM pipelines use.

    >>> pipe.scheduler = LatentConsistencyScheduler.from_config(pipe.scheduler.config)  # doctest: +SKIP
    >>> pipe("a cat", num_inference_steps=4, guidance_scale=1.5)  # doctest: +SKIP
    """

    original_steps = 50  # the timesteps an LCM was distilled at (diffusers' LCMScheduler's original_inference_steps)
    timestep_scaling = 10.0  # the boundary conditions' time scale (LCMScheduler's timestep_scaling)

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None):
        if num_inference_steps is None or timesteps is not None or sigmas is not None:
            raise ValueError("LatentConsistencyScheduler takes a number of steps, not timesteps or sigmas")
        levels = self.lcm_sigmas()
        schedule = self._schedule(num_inference_steps, levels)
        nearest = np.abs(np.log(schedule)[:, None] - np.log(levels)[None, :]).argmin(axis=1)
        skip = self.config.num_train_timesteps // self.original_steps
        self.timesteps = torch.from_numpy(nearest * skip + skip - 1).to(device=device, dtype=torch.float32)
        self.sigmas = torch.from_numpy(np.append(schedule, 0.0)).to(torch.float32)  # (on the CPU, as Euler's)
        self.num_inference_steps = num_inference_steps
        self._step_index, self._begin_index = None, None

    def lcm_sigmas(self) -> np.ndarray:
        """The sigmas of the timesteps an LCM was distilled at, 19, 39, ..., 999 of 1000 (rising)."""
        skip = self.config.num_train_timesteps // self.original_steps
        alphas = self.alphas_cumprod.double().numpy()[skip - 1::skip][:self.original_steps]
        return ((1 - alphas) / alphas) ** 0.5

    def _schedule(self, n: int, levels: np.ndarray) -> np.ndarray:
        """The n steps' sigmas over `levels` (`lcm_sigmas`): the sampler's own spacing, or the config's schedule."""
        low, high = levels[0], levels[-1]
        if getattr(self, "comfy_rule", None):  # (ComfyUI's lcm draws its schedulers over these 50 levels)
            return comfy_spaced(self.comfy_rule, levels, n)
        if self.config.use_karras_sigmas:
            return np.array(karras(n, low, high)[:-1])
        if self.config.use_exponential_sigmas:
            return np.exp(np.linspace(math.log(high), math.log(low), n))
        if self.config.use_beta_sigmas:  # (the web UI's beta_scheduler at its alpha = beta = 0.6)
            import scipy.stats

            return low + scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (high - low)
        at = np.linspace(len(levels) - 1, 0, n)
        return np.exp(np.interp(at, np.arange(len(levels)), np.log(levels)))

    def boundary(self, timestep) -> tuple[float, float]:
        """(c_skip, c_out) of an LCM's consistency function at `timestep` (Song et al. 2023, "Consistency Models",
        eq. 7, with sigma_data 0.5 at the time timestep_scaling x timestep): c_skip -> 1 and c_out -> 0 as t -> 0."""
        scaled = float(timestep) * self.timestep_scaling
        return 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25) ** 0.5

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """One step: the consistency function's estimate at this step's sigma, then the next step's noise (none
        after the last). Returns (the next latents, the estimate)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        skip, out = self.boundary(self.timesteps[self.step_index])
        denoised = skip * sample + out * _denoised(self.config.prediction_type, model_output, sample, sigma)
        prev_sample = denoised
        if sigma_next > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            prev_sample = denoised + noise * sigma_next
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return prev_sample, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The starting noise's sigma, the first step's, as the web UI's x = noise sigma_0 (Euler's is sqrt(sigma_0^2
        + 1) on the "leading" spacing SD 1.x's configs name, which this schedule does not take)."""
        return self.sigmas.max()


class StochasticTCDScheduler(TCDScheduler):
    """Diffusers' TCDScheduler for a TCD (or TCD-LoRA) model, at its `gamma`, 0.3 (diffusers' default, the paper's
    suggestion): each step from timestep t to t' predicts the latents at the earlier timestep s = floor((1 - gamma) t')
    from the model's estimates of x0 and its noise, then adds fresh noise from the pipeline's generator up to t' (none
    after the last step, which ends at s = 0). Its step takes no eta: diffusers' pipelines hand their eta (DDIM's, 0 by
    default) to a step that takes one, which would draw TCD at gamma 0, with no noise.

    >>> pipe.scheduler = StochasticTCDScheduler.from_config(pipe.scheduler.config)  # doctest: +SKIP
    >>> pipe("a cat", num_inference_steps=4, guidance_scale=1.0)  # doctest: +SKIP
    """

    gamma = 0.3

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
        """TCDScheduler's step at the scheduler's `gamma`."""
        return super().step(model_output, timestep, sample, eta=self.gamma, generator=generator,
                            return_dict=return_dict)


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step from `sigma` to `sigma_next`, as k-diffusion's get_ancestral_step:
    the step goes down to sigma_down, then adds noise of sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2. Eta 1 (the
    web UI's default) adds the most noise that keeps the step a DDPM one (Song et al. 2021, eq. 16), eta 0 none.

    >>> [round(float(s), 3) for s in ancestral_step(torch.tensor(2.0), torch.tensor(1.0), 0.5)]
    [0.901, 0.433]
    """
    up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


def euler_ancestral_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                         generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True):
    """Diffusers' EulerAncestralDiscreteScheduler's step at the scheduler's `eta` (k-diffusion's
    sample_euler_ancestral, the web UI's Euler a at its Eta): Euler's step to sigma_down, then the noise of sigma_up
    (`ancestral_step`) from the pipeline's generator. Diffusers' own is this at eta 1."""
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput

    if self.step_index is None:
        self._init_step_index(timestep)
    sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
    sample = sample.to(torch.float32)
    denoised = _denoised(self.config.prediction_type, model_output, sample, sigma)
    down, up = ancestral_step(sigma, sigma_next, self.eta)
    noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
    prev_sample = (sample + (sample - denoised) / sigma * (down - sigma) + noise * up).to(model_output.dtype)
    self._step_index += 1
    if not return_dict:
        return prev_sample, denoised
    return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


def dpmpp_sde_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
                   s_noise: float = 1.0):
    """Diffusers' DPMSolverSDEScheduler's step at the scheduler's `eta` and `noise` (k-diffusion's sample_dpmpp_sde
    at r = 1/2, the web UI's DPM++ SDE at its Eta and Sigma noise). A step from sigma s to s' calls the model at s,
    then at the midpoint s_m = sqrt(s s') (halfway in log sigma, at any eta); each call moves the step's start x to
    the ancestral sigma_down of its end (s_m, then s': `ancestral_step` at eta) with the exponential integrator,
    (sigma_down / s) x + (1 - sigma_down / s) D (D: that call's denoised estimate), then adds noise of noise *
    sigma_up from the Brownian tree between s and that end. The last step, to 0, is Euler's. At eta 1 and noise 1
    it is diffusers' own step (`s_noise`, which pipelines do not pass, scales the noise further, as there)."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler, DPMSolverSDESchedulerOutput

    if self.step_index is None:
        self._init_step_index(timestep)
    if self.noise_sampler is None:  # (one tree over the schedule's range, seeded as diffusers seeds its own)
        low, high = self.sigmas[self.sigmas > 0].min(), self.sigmas.max()
        self.noise_sampler = BrownianTreeNoiseSampler(sample, low.item(), high.item(), self.noise_sampler_seed)
    first = self.state_in_first_order
    at = self.step_index if first else self.step_index - 1  # (the step's start: its first call's place)
    sigma, sigma_next = self.sigmas[at], self.sigmas[at + 1]
    middle = (sigma.log() + (sigma_next.log() - sigma.log()) / 2).exp() if sigma_next > 0 else None
    denoised = _denoised(self.config.prediction_type, model_output, sample, sigma if first else middle)
    if sigma_next == 0:
        prev_sample = sample + (sample - denoised) / sigma * (sigma_next - sigma)
    else:
        end, start = (middle, sample) if first else (sigma_next, self.sample)
        down, up = ancestral_step(sigma, end, getattr(self, "eta", 1.0))
        prev_sample = (down / sigma) * start + (1 - down / sigma) * denoised
        prev_sample = prev_sample + self.noise_sampler(sigma, end) * (s_noise * getattr(self, "noise", 1.0)) * up
        self.sample, self.mid_point_sigma = (sample, middle) if first else (None, None)
    self._step_index += 1
    if not return_dict:
        return prev_sample, denoised
    return DPMSolverSDESchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)


def step_values(table: torch.Tensor) -> torch.Tensor:
    """The steps' values of a table diffusers' DPM2 and DPM2 a lay out two entries a step (DPM++ 2S a too), [v0, v1,
    v1, ..., vn, vn, vn] (vn: the end): [v0, v1, ..., vn]. `step_table` lays them out again."""
    return torch.cat([table[:1], table[1::2][:-1]])


def step_table(values: torch.Tensor) -> torch.Tensor:
    """The table diffusers' DPM2 and DPM2 a make of the steps' values [v0, v1, ..., vn] (vn: the end), each after the
    first twice for a step's two model calls and the end once more: [v0, v1, v1, ..., vn, vn, vn] (`step_values`)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def set_times(scheduler, sigmas: torch.Tensor, places: slice) -> None:
    """Write the timesteps of `sigmas` (the scheduler's own sigma-to-timestep mapping) into its timesteps' `places`
    (a scheduler that keeps no log sigmas, as Euler and Heun: those of its training noise levels)."""
    log_sigmas = getattr(scheduler, "log_sigmas", None)
    if log_sigmas is None:
        log_sigmas = torch.log(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5)
    times = scheduler._sigma_to_t(sigmas.cpu().numpy(), log_sigmas.cpu().numpy())
    scheduler.timesteps[places] = torch.from_numpy(times).to(scheduler.timesteps)


def ancestral_tables(scheduler, eta: float) -> None:
    """Set the up and down sigmas and the midpoints of diffusers' DPM2 a tables (KDPM2AncestralDiscreteScheduler's,
    which DPM++ 2S a lays out alike) for `eta` (`ancestral_step`), and the midpoints' timesteps: k-diffusion's
    sample_dpm_2_ancestral and sample_dpmpp_2s_ancestral take each step's midpoint between sigma and sigma_down
    (halfway in log sigma), so it moves with eta. The tables hold each step's values twice, [v0, v1, v1, ..., vn, vn,
    vn] (vn: the end), and the timesteps [t0, its midpoint's, t1, ...]; the last step, to 0, adds no noise and has no
    midpoint at any eta."""
    sigmas = step_values(scheduler.sigmas)  # (the steps' sigmas, then 0)
    steps = len(sigmas) - 1
    if steps < 2:
        return
    down, up = ancestral_step(sigmas[:steps - 1], sigmas[1:steps], eta)  # (every step but the last)
    middle = sigmas[:steps - 1].log().lerp(down.log(), 0.5).exp()
    for name, values in (("sigmas_down", down), ("sigmas_up", up), ("sigmas_interpol", middle)):
        whole = step_values(getattr(scheduler, name)).clone()
        whole[:steps - 1] = values.to(whole)
        setattr(scheduler, name, step_table(whole))
    set_times(scheduler, middle, slice(1, None, 2))


def sde_first_order_update(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                           noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Diffusers' DPMSolverMultistepScheduler's first-order sde-dpmsolver++ update at the scheduler's `eta` and
    `noise` (`_sde_update`)."""
    return _sde_update(self, [model_output], sample, noise)


def sde_second_order_update(self, model_output_list: list[torch.Tensor], *args, sample: torch.Tensor | None = None,
                            noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Diffusers' DPMSolverMultistepScheduler's second-order sde-dpmsolver++ update at the scheduler's `eta` and
    `noise` (`_sde_update`)."""
    return _sde_update(self, model_output_list[-2:], sample, noise)


def sde_third_order_update(self, model_output_list: list[torch.Tensor], *args, sample: torch.Tensor | None = None,
                           noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Diffusers' DPMSolverMultistepScheduler's third-order sde-dpmsolver++ update as k-diffusion's
    sample_dpmpp_3m_sde takes it (`_sde_update`): diffusers' own adds its second difference D2 with alpha_t
    ((1 - exp(-2h) - 2h) / (2h)^2 - 0.5), which tends to -alpha_t as h -> 0 where a third-order correction vanishes;
    k-diffusion's (the web UI's) has + 0.5 there."""
    return _sde_update(self, model_output_list[-3:], sample, noise)


def _sde_update(self, outputs: list[torch.Tensor], sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One step of k-diffusion's sample_dpmpp_2m_sde (sample_dpmpp_3m_sde's with three `outputs`) at eta and s_noise
    (the scheduler's `eta` and `noise`, 1 where not set: the web UI's DPM++ 2M SDE and its Heun variant at its Eta and
    Sigma noise), written in diffusers' VP terms: from sigma s to t, h = lambda_t - lambda_s (lambda = log alpha /
    sigma), the latents keep exp(-eta h) sigma_t / sigma_s of themselves, the denoised estimate D0 (`outputs`' last)
    comes in with alpha_t (1 - exp(-(1 + eta) h)), the multistep correction with alpha_t (`_sde_correction`), and
    fresh noise of s_noise sigma_t sqrt(1 - exp(-2 eta h)). At eta 1 and s_noise 1 its first and second orders are
    diffusers' own; at eta 0 DPM++ 2M's. A step to sigma 0 lands on D0."""
    eta, scale = getattr(self, "eta", 1.0), getattr(self, "noise", 1.0)
    sigma_t, sigma_s = self.sigmas[self.step_index + 1], self.sigmas[self.step_index]
    alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma_t)
    if sigma_t == 0:
        return alpha_t * outputs[-1]
    alpha_s, sigma_s = self._sigma_to_alpha_sigma_t(sigma_s)
    lambdas = [_lambda(self, self.sigmas[self.step_index - back]) for back in range(len(outputs))]  # s0, s1, s2
    h = (torch.log(alpha_t) - torch.log(sigma_t)) - lambdas[0]
    gh = (1 + eta) * h
    kept = -torch.expm1(-gh)  # 1 - exp(-(1 + eta) h)
    x_t = (sigma_t / sigma_s * torch.exp(-eta * h)) * sample + (alpha_t * kept) * outputs[-1]
    x_t = x_t + alpha_t * _sde_correction(self, outputs, lambdas, h, gh)
    return x_t + (scale * sigma_t * torch.sqrt(-torch.expm1(-2 * eta * h))) * noise


def _lambda(self, sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log alpha - log sigma at the scheduler's (VE) `sigma`."""
    alpha, sigma = self._sigma_to_alpha_sigma_t(sigma)
    return torch.log(alpha) - torch.log(sigma)


def _sde_correction(self, outputs: list[torch.Tensor], lambdas: list[torch.Tensor], h: torch.Tensor,
                    gh: torch.Tensor):
    """k-diffusion's multistep correction (to be times alpha_t) from denoised estimates `outputs` (oldest first) at
    `lambdas` (newest first), for a step of h at gh = (1 + eta) h: none for one; for two, with D1 = (D0 - D_prev) / r
    (r = h_prev / h), D1 (1 - exp(-gh)) / 2 (midpoint) or phi_2 D1, phi_2 = (1 - exp(-gh)) / -gh + 1 (heun, and
    sample_dpmpp_3m_sde's second step); for three, phi_2 D1 - phi_3 D2, phi_3 = phi_2 / gh - 1/2, D1 and D2 the
    first and second differences (sample_dpmpp_3m_sde)."""
    if len(outputs) == 1:
        return 0.0
    phi_2 = -torch.expm1(-gh) / -gh + 1.0
    r0 = (lambdas[0] - lambdas[1]) / h
    d1_0 = (outputs[-1] - outputs[-2]) / r0
    if len(outputs) == 2:
        if self.config.solver_type == "heun" or self.config.solver_order == 3:
            return phi_2 * d1_0
        return (0.5 * -torch.expm1(-gh)) * d1_0
    r1 = (lambdas[1] - lambdas[2]) / h
    d1_1 = (outputs[-2] - outputs[-3]) / r1
    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return phi_2 * d1 - (phi_2 / gh - 0.5) * d2
