"""textinv's own schedulers (`textinv.schedulers`) against direct transcriptions of the samplers they implement, on a
toy denoiser (a function of the latents and sigma): the same steps, to float32's precision."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from textinv.samplers import scheduler_for


def _toy(x, sigma):
    """A denoiser: the latents' denoised estimate at noise level sigma, nonlinear in both."""
    return 0.5 * x / math.sqrt(1 + sigma ** 2) + 0.3 * torch.tanh(x) / (1 + sigma)


def _sd_scheduler(**config):
    """SD's noise schedule (scaled linear betas), on the linspace spacing unless `config` says otherwise."""
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, timestep_spacing="linspace", **config)


def _training_sigmas(scheduler) -> np.ndarray:
    alphas = scheduler.alphas_cumprod.double().numpy()
    return ((1 - alphas) / alphas) ** 0.5


def _karras(scheduler, n: int, rho: float = 7.0) -> list[float]:
    """Karras et al. 2022's schedule (eq. 5) over the model's whole noise range, then 0: the web UI's."""
    sigmas = _training_sigmas(scheduler)
    low, high = sigmas.min() ** (1 / rho), sigmas.max() ** (1 / rho)
    return [(high + i / (n - 1) * (low - high)) ** rho for i in range(n)] + [0.0]


def _evenly(scheduler, n: int) -> list[float]:
    """The model's own spacing on linspace timesteps: its sigmas at n timesteps from the last to the first, then 0."""
    sigmas = _training_sigmas(scheduler)
    timesteps = np.linspace(0, len(sigmas) - 1, n)[::-1]
    return list(np.interp(timesteps, np.arange(len(sigmas)), sigmas)) + [0.0]


def _dpmpp_2s_ancestral(denoiser, x, sigmas, noise):
    """k-diffusion's sample_dpmpp_2s_ancestral at eta 1 and s_noise 1, written out in float64 sigmas."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        up = min(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)  # get_ancestral_step
        down = (s_next ** 2 - up ** 2) ** 0.5
        if down == 0:  # Euler to 0
            x = x + (x - denoised) / s * (down - s)
        else:  # DPM-Solver++(2S), t = -log sigma
            t, t_next = -math.log(s), -math.log(down)
            h = t_next - t
            mid = math.exp(-(t + h / 2))
            x_2 = (mid / s) * x - math.expm1(-h / 2) * denoised
            x = (down / s) * x - math.expm1(-h) * denoiser(x_2, mid)
        if s_next > 0:
            x = x + noise(x) * up
    return x


def _prediction(kind: str, x, denoised, sigma: float):
    """What a model of prediction type `kind` outputs for latents x = x0 + sigma eps whose x0 is `denoised`."""
    eps = (x - denoised) / sigma
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":  # (its input scaled to alpha x0 + sigma' eps: v = alpha eps - sigma' x0)
        return (eps - sigma * denoised) / math.sqrt(sigma ** 2 + 1)
    return denoised


def _drawn(scheduler, steps: int, x, sigma_of_call: list[float], kind: str, seed: int):
    """A diffusers pipeline's loop over `scheduler`: the toy denoiser reads each call's scaled input back at the
    sigma the transcription calls it at (`sigma_of_call`), and its output is of prediction type `kind`. The result
    and the latents each call read."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    read = []
    for t, sigma in zip(scheduler.timesteps, sigma_of_call, strict=True):
        read.append(scheduler.scale_model_input(x, t) * math.sqrt(sigma ** 2 + 1))
        output = _prediction(kind, read[-1], _toy(read[-1], sigma), sigma)
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x, read


@pytest.mark.parametrize("name, kind", [("dpm++2s_a", "epsilon"), ("dpm++2s_a_karras", "epsilon"),
                                        ("dpm++2s_a_karras", "v_prediction"), ("dpm++2s_a", "sample")])
def test_dpmpp_2s_ancestral_takes_k_diffusions_steps_on_a_toy_denoiser(name, kind):
    """Each model call's latents and the result match sample_dpmpp_2s_ancestral's on the same sigmas and noise: two
    calls a step (the second at the log-midpoint to sigma_down), one for the last, noise of sigma_up between."""
    steps, seed = 5, 7
    own = _sd_scheduler(prediction_type=kind)
    sigmas = (_karras if name.endswith("_karras") else _evenly)(own, steps)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    calls, read = [], []  # each call's sigma and latents

    def recording(latents, sigma):
        calls.append(sigma)
        read.append(latents.float())
        return _toy(latents, sigma)

    generator = torch.Generator().manual_seed(seed)
    expected = _dpmpp_2s_ancestral(recording, x.double(), sigmas, lambda like: torch.randn(like.shape,
                                                                                            generator=generator))
    assert len(calls) == 2 * steps - 1
    made = scheduler_for(own, name)
    assert type(made).__name__ == "DPMSolverPP2SAncestralScheduler"
    got, got_read = _drawn(made, steps, x, calls, kind, seed)
    for call, (latents, wanted) in enumerate(zip(got_read, read)):
        torch.testing.assert_close(latents, wanted, rtol=1e-5, atol=1e-5, msg=f"call {call}")
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    other, _ = _drawn(scheduler_for(own, name), steps, x, calls, kind, seed + 1)
    assert not torch.allclose(got, other)  # (its noise is the generator's)
