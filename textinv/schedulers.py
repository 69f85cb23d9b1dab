"""Samplers of the web UI's that diffusers has no scheduler for, written as diffusers schedulers so its pipelines draw
with them as with their own (`samplers.scheduler_for` makes them from the model's scheduler config).

`DPMSolverPP2SAncestralScheduler` is k-diffusion's sample_dpmpp_2s_ancestral, the web UI's "DPM++ 2S a" and
ComfyUI's dpmpp_2s_ancestral: DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r = 1/2) from each
sigma down to the ancestral step's sigma_down, then fresh noise of sigma_up (eta 1, s_noise 1).
"""

from __future__ import annotations

import torch
from diffusers import KDPM2AncestralDiscreteScheduler
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

    >>> scheduler = DPMSolverPP2SAncestralScheduler.from_config(pipe.scheduler.config)  # doctest: +SKIP
    >>> pipe.scheduler = scheduler; pipe("a cat", num_inference_steps=20, generator=torch.Generator().manual_seed(1))
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
        denoised = self._denoised(model_output, sample, sigma if first else middle)
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

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The denoised estimate of `sample` (x0 + sigma noise) from the model's output for its scaled input
        x / sqrt(sigma^2 + 1), by the model's prediction type."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
        if kind == "sample":
            return model_output
        raise ValueError(f"prediction_type {kind!r} is not one of epsilon, v_prediction or sample")
