"""textinv's own schedulers (`textinv.schedulers`) against direct transcriptions of the samplers they implement, on a
toy denoiser (a function of the latents and sigma): the same steps, to float32's precision."""

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from textinv.samplers import scheduler_for


def _toy_start(sigma: float, read: list | None = None):
    """Starting latents (2, 4, 3, 3) at `sigma`, the list each call's sigma goes into, and the toy denoiser that
    records them there (and each call's latents in `read`, if given)."""
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * sigma
    calls = []

    def recording(latents, at):
        calls.append(at)
        if read is not None:
            read.append(latents.float())
        return _toy(latents, at)

    return x, calls, recording


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


def _drawn(scheduler, steps: int, x, sigma_of_call: list[float], kind: str, seed: int, begin: int = 0):
    """A diffusers pipeline's loop over `scheduler`: the toy denoiser reads each call's scaled input back at the
    sigma the transcription calls it at (`sigma_of_call`), and its output is of prediction type `kind`. The result
    and the latents each call read. `begin`: the call an img2img pipeline starts from (its timesteps from there,
    taken before it sets the scheduler's begin index, as diffusers' get_timesteps does)."""
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps[begin:]
    if begin:
        scheduler.set_begin_index(begin)
    # (as diffusers' pipelines pass it: to a step that takes one)
    noise = {"generator": torch.Generator().manual_seed(seed)} \
        if "generator" in inspect.signature(scheduler.step).parameters else {}
    read = []
    for t, sigma in zip(timesteps, sigma_of_call, strict=True):
        read.append(scheduler.scale_model_input(x, t) * math.sqrt(sigma ** 2 + 1))
        output = _prediction(kind, read[-1], _toy(read[-1], sigma), sigma)
        x = scheduler.step(output, t, x, **noise).prev_sample
    return x, read


@pytest.mark.parametrize("name, kind", [("dpm++2s_a", "epsilon"), ("dpm++2s_a_karras", "epsilon"),
                                        ("dpm++2s_a_karras", "v_prediction"), ("dpm++2s_a", "sample")])
def test_dpmpp_2s_ancestral_takes_k_diffusions_steps_on_a_toy_denoiser(name, kind):
    """Each model call's latents and the result match sample_dpmpp_2s_ancestral's on the same sigmas and noise: two
    calls a step (the second at the log-midpoint to sigma_down), one for the last, noise of sigma_up between."""
    steps, seed = 5, 7
    own = _sd_scheduler(prediction_type=kind)
    sigmas = (_karras if name.endswith("_karras") else _evenly)(own, steps)
    read = []  # each call's latents
    x, calls, recording = _toy_start(sigmas[0], read)

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


def _restart(denoiser, x, sigmas, noise):
    """The web UI's restart_sampler (s_noise 1, its own restart list), written out in float64 sigmas: Heun's steps;
    at 20 steps or more, n - 9 Karras steps over the schedule's range and 9 from the level nearest 2 to the one
    nearest 0.1 again (n // 4 twice from 36 steps), noise taking the latents up to where a step starts higher."""
    steps = len(sigmas) - 1
    pairs = list(zip(sigmas[:-1], sigmas[1:]))
    if steps >= 20:
        span, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        levels = _karras_range(steps - span * times, sigmas[-2], sigmas[0])
        low = int(np.argmin([abs(s - 0.1) for s in levels]))
        high = int(np.argmin([abs(s - 2) for s in levels]))
        pairs = []
        for i in range(len(levels) - 1):
            pairs.append((levels[i], levels[i + 1]))
            if i + 1 == low and high < low:
                again = _karras_range(span + 1, levels[low], levels[high])[:-1]
                again[0], again[-1] = levels[high], levels[low]
                pairs += list(zip(again[:-1], again[1:])) * times
    last = None
    for old, new in pairs:
        if last is not None and last < old:
            x = x + noise(x) * (old ** 2 - last ** 2) ** 0.5
        denoised = denoiser(x, old)
        d = (x - denoised) / old
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = (x_2 - denoiser(x_2, new)) / new
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x, len(pairs)


def _karras_range(n, low, high, rho=7.0):
    top, bottom = high ** (1 / rho), low ** (1 / rho)
    return [(top + i / (n - 1) * (bottom - top)) ** rho for i in range(n)] + [0.0]


@pytest.mark.parametrize("name, steps, start, kind", [("restart_karras", 8, 0, "epsilon"),
                                                      ("restart", 24, 0, "epsilon"),
                                                      ("restart_karras", 40, 0, "v_prediction"),
                                                      ("restart", 30, 8, "epsilon")])
def test_restart_takes_the_web_uis_steps_on_a_toy_denoiser(name, steps, start, kind):
    """Each model call's latents and the result match restart_sampler's on the same sigmas and noise: Heun's steps
    below 20 (8), one restart from 20 (24), two from 36 (40); an img2img pass that starts at step 8 of 30 (the
    pipeline's begin index) plans its last 22 steps alone, as the web UI hands Restart those sigmas."""
    own = _sd_scheduler(prediction_type=kind)
    sigmas = (_karras if name.endswith("_karras") else _evenly)(own, steps)
    read = []  # each call's latents
    x, calls, recording = _toy_start(sigmas[start], read)

    generator = torch.Generator().manual_seed(5)
    expected, taken = _restart(recording, x.double(), sigmas[start:], lambda like: torch.randn(like.shape,
                                                                                                generator=generator))
    assert taken == steps - start and len(calls) == 2 * taken - 1
    made = scheduler_for(own, name)
    assert type(made).__name__ == "RestartScheduler"
    got, got_read = _drawn(made, steps, x, calls, kind, 5, begin=2 * start)
    for call, (latents, wanted) in enumerate(zip(got_read, read)):
        torch.testing.assert_close(latents, wanted, rtol=1e-5, atol=1e-5, msg=f"call {call}")
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


def test_restart_below_20_steps_is_heun_call_for_call():
    from diffusers import HeunDiscreteScheduler

    own = _sd_scheduler()
    made, heun = scheduler_for(own, "restart_karras"), scheduler_for(own, "heun_karras")
    assert isinstance(heun, HeunDiscreteScheduler) and not type(heun) is type(made)
    for scheduler in (made, heun):
        scheduler.set_timesteps(19)
    assert torch.equal(made.timesteps, heun.timesteps) and torch.equal(made.sigmas, heun.sigmas)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * float(made.sigmas[0])
    calls = [float(s) for s in made.sigmas[:-1]]
    assert torch.equal(_drawn(made, 19, x, calls, "epsilon", 0)[0], _drawn(heun, 19, x, calls, "epsilon", 0)[0])


def test_a_restart_img2img_pass_that_would_take_fewer_steps_than_it_runs_is_refused_by_name():
    """Below the restart interval (a schedule that starts under sigma 0.1) the web UI's Restart takes n - 9 steps
    of n; a diffusers pipeline has counted the n already, so the pass is refused saying why, not drawn short."""
    own = DDIMScheduler(beta_start=1e-5, beta_end=5e-5, beta_schedule="linear", timestep_spacing="linspace")
    made = scheduler_for(own, "restart")
    made.set_timesteps(80)
    start = next(k for k, sigma in enumerate(made.schedule) if sigma < 0.09)
    run = 80 - start
    assert 20 <= run < 36
    with pytest.raises(ValueError, match=f"Restart takes {run - 9} steps, not {run}, on a schedule that starts at "
                                         f"sigma 0.0[0-9]+, below its restart interval"):
        made.set_begin_index(2 * start)


def _two_passes(make, kind: str = "epsilon"):
    """The results of two passes, each on a scheduler `make()` gives: 6 steps from the start, then an img2img pass of
    4 steps from call 2 (seeded noise for the ancestral steps)."""
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3)) * 14.0
    drawn = []
    for steps, begin, seed in ((6, 0, 1), (4, 2, 2)):
        scheduler = make()
        scheduler.set_timesteps(steps)
        calls = len(scheduler.timesteps) - begin
        drawn.append(_drawn(scheduler, steps, x, [10.0 / (k + 1) for k in range(calls)], kind, seed, begin)[0])
    return drawn


@pytest.mark.parametrize("name, base", [("dpm2_a", "KDPM2AncestralDiscreteScheduler"),
                                        ("dpm++2s_a_karras", "KDPM2AncestralDiscreteScheduler"),
                                        ("dpm2", "KDPM2DiscreteScheduler"), ("restart", "HeunDiscreteScheduler")])
def test_a_sampler_is_set_up_once_and_each_pass_draws_on_a_copy_of_its_own(monkeypatch, name, base):
    """Diffusers' DPM2 and DPM2 a set up their tables for every training timestep when made (~0.5 s), Restart plans
    its steps on them: made again, a sampler is a copy of the first one made, not set up again. Each copy holds its
    own timesteps, tables and step and begin index, and passes drawn on copies are bit for bit those drawn on
    schedulers made afresh."""
    import diffusers

    from textinv import samplers

    monkeypatch.setattr(samplers, "_MADE", {}, raising=False)
    own = _sd_scheduler()
    cls = getattr(diffusers, base)
    set_ups, real = [], cls.set_timesteps
    monkeypatch.setattr(cls, "set_timesteps", lambda self, *args, **kw: set_ups.append(1) or real(self, *args, **kw))
    first = scheduler_for(own, name)
    assert len(set_ups) == 1  # (the class's own set-up, on every training timestep)

    def made_again():
        before = len(set_ups)
        made = scheduler_for(own, name)
        assert len(set_ups) == before  # (a copy: not set up again)
        return made

    second = made_again()
    first.set_timesteps(6)
    first.set_begin_index(2)
    first._step_index = 3
    assert (second.step_index, second.begin_index) == (None, None)
    assert len(second.timesteps) > len(first.timesteps) and len(second.sigmas) > len(first.sigmas)
    copied = _two_passes(made_again)
    monkeypatch.setattr(samplers, "_made", lambda cls, config, options: cls.from_config(config, **options),
                        raising=False)
    afresh = _two_passes(lambda: scheduler_for(own, name))
    for a, b in zip(copied, afresh, strict=True):
        assert torch.equal(a, b)


def _ancestral_step(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up)."""
    up = min(s_next, eta * (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
    return (s_next ** 2 - up ** 2) ** 0.5, up


def _euler_ancestral(denoiser, x, sigmas, noise, eta):
    """k-diffusion's sample_euler_ancestral at `eta`, s_noise 1, written out in float64 sigmas."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        down, up = _ancestral_step(s, s_next, eta)
        x = x + (x - denoised) / s * (down - s)
        x = x + noise(x) * up  # (diffusers' draws the last step's too, of sigma 0)
    return x


def _dpm2_ancestral(denoiser, x, sigmas, noise, eta, s_noise=1.0):
    """k-diffusion's sample_dpm_2_ancestral at `eta` and `s_noise`: DPM-Solver-2 to sigma_down through its log-midpoint,
    Euler's step for the last, then noise of sigma_up."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        down, up = _ancestral_step(s, s_next, eta)
        d = (x - denoised) / s
        if down == 0:
            x = x + d * (down - s)
        else:
            mid = math.exp((math.log(s) + math.log(down)) / 2)
            x_2 = x + d * (mid - s)
            x = x + (x_2 - denoiser(x_2, mid)) / mid * (down - s)
            x = x + noise(x) * s_noise * up
    return x


def _dpmpp_2s_ancestral_at(denoiser, x, sigmas, noise, eta, s_noise=1.0):
    """sample_dpmpp_2s_ancestral at `eta` and `s_noise` (`_dpmpp_2s_ancestral` is it at 1 and 1)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        down, up = _ancestral_step(s, s_next, eta)
        if down == 0:
            x = x + (x - denoised) / s * (down - s)
        else:
            h = math.log(s) - math.log(down)
            mid = math.exp(-(-math.log(s) + h / 2))
            x_2 = (mid / s) * x - math.expm1(-h / 2) * denoised
            x = (down / s) * x - math.expm1(-h) * denoiser(x_2, mid)
        if s_next > 0:
            x = x + noise(x) * s_noise * up
    return x


def _ancestral_on_a_toy_denoiser(name: str, eta: float | None, s_noise: float | None):
    """Ancestral sampler `name`'s picture on the toy denoiser at `eta` and `s_noise` (None: its own), k-diffusion's
    written out at those, and textinv's at its own eta and noise."""
    from textinv.samplers import Churn

    steps, seed = 5, 3
    own = _sd_scheduler()
    base, karras = name.removesuffix("_karras"), name.endswith("_karras")
    sigmas = (_karras if karras else _evenly)(own, steps + (base == "dpm2_a"))
    if base == "dpm2_a":  # (the web UI's discard_next_to_last_sigma)
        sigmas = sigmas[:-2] + sigmas[-1:]
    x, calls, recording = _toy_start(sigmas[0])

    generator = torch.Generator().manual_seed(seed)
    write_out = {"euler_a": _euler_ancestral, "dpm2_a": _dpm2_ancestral, "dpm++2s_a": _dpmpp_2s_ancestral_at}[base]
    expected = write_out(recording, x.double(), sigmas, lambda like: torch.randn(like.shape, generator=generator),
                         1.0 if eta is None else eta, *(() if s_noise is None else (s_noise,)))
    churn = None if s_noise is None else Churn(noise=s_noise)
    got, _ = _drawn(scheduler_for(own, name, eta=eta, churn=churn), steps, x, calls, "epsilon", seed)
    plain, _ = _drawn(scheduler_for(own, name), steps, x, calls, "epsilon", seed)
    return got, expected.float(), plain


@pytest.mark.parametrize("name, eta", [("euler_a", 0.5), ("euler_a", 0.0), ("dpm2_a_karras", 0.5),
                                       ("dpm2_a", 0.0), ("dpm++2s_a_karras", 0.3), ("dpm++2s_a", 0.7)])
def test_an_ancestral_sampler_at_an_eta_takes_k_diffusions_steps_on_a_toy_denoiser(name, eta):
    """At --eta, Euler a, DPM2 a (its next-to-last sigma discarded) and DPM++ 2S a take k-diffusion's steps at that
    eta: each step to the lower sigma_down, the midpoint between (for the two-call ones) moved with it, then noise of
    the smaller sigma_up from the generator."""
    got, expected, at_one = _ancestral_on_a_toy_denoiser(name, eta, None)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, at_one, atol=1e-3)


@pytest.mark.parametrize("name, eta, s_noise", [("dpm2_a_karras", None, 0.5), ("dpm2_a", 0.5, 1.3),
                                                ("dpm++2s_a_karras", None, 0.8), ("dpm++2s_a", 0.7, 0.0)])
def test_an_ancestral_samplers_sigma_noise_takes_k_diffusions_steps_on_a_toy_denoiser(name, eta, s_noise):
    """With --sigma-noise (the web UI's Sigma noise, k-diffusion's s_noise), DPM2 a and DPM++ 2S a add s_noise times
    sigma_up of the generator's noise at each step, at their own eta or another; the steps are otherwise theirs."""
    got, expected, _ = _ancestral_on_a_toy_denoiser(name, eta, s_noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    unscaled, _, _ = _ancestral_on_a_toy_denoiser(name, eta, None)
    assert not torch.allclose(got, unscaled, atol=1e-3)


@pytest.mark.parametrize("name", ["dpm2_a_karras", "dpm++2s_a", "euler_a", "dpm++2m_sde_karras", "dpm++3m_sde",
                                  "dpm++sde"])
def test_an_ancestral_sampler_at_sigma_noise_1_is_the_one_it_was(name):
    """The sigma churn settings at the web UI's defaults (Sigma noise 1) make the scheduler an ancestral sampler always
    was: the same class, the same steps, bit for bit."""
    from textinv.samplers import Churn

    own = _sd_scheduler()
    plain = scheduler_for(own, name, seeds=[1])  # (DPM++ SDE's Brownian tree: the picture's seed's)
    given = scheduler_for(own, name, seeds=[1], churn=Churn(), generators=[torch.Generator()])
    assert type(given) is type(plain)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 14.6
    plain.set_timesteps(4)
    calls = [1.0] * len(plain.timesteps)
    assert torch.equal(_drawn(plain, 4, x, calls, "epsilon", 5)[0], _drawn(given, 4, x, calls, "epsilon", 5)[0])


def _dpmpp_2m_sde(denoiser, x, sigmas, noise, eta, solver_type, s_noise=1.0):
    """k-diffusion's sample_dpmpp_2m_sde at `eta` and `s_noise`, written out in float64 sigmas; `noise` is drawn at
    every step, as diffusers' step draws it, and added where the step does not end at 0."""
    old, h_last = None, None
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        drawn = noise(x)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            x = s_next / s * math.exp(-eta * h) * x - math.expm1(-h - eta * h) * denoised
            if old is not None:
                d = (denoised - old) / (h_last / h)
                if solver_type == "heun":
                    x = x + (-math.expm1(-h - eta * h) / (-h - eta * h) + 1) * d
                else:
                    x = x + 0.5 * -math.expm1(-h - eta * h) * d
            x = x + drawn * s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
        old, h_last = denoised, (math.log(s) - math.log(s_next) if s_next else None)
    return x


@pytest.mark.parametrize("name, eta, s_noise", [
    ("dpm++2m_sde_karras", 0.5, 1.0), ("dpm++2m_sde_exponential", 0.0, 1.0), ("dpm++2m_sde_heun_karras", 0.3, 1.0),
    ("dpm++2m_sde", 0.8, 0.6), ("dpm++2m_sde_karras", None, 0.5)])
def test_dpmpp_2m_sde_at_an_eta_takes_k_diffusions_steps_on_a_toy_denoiser(name, eta, s_noise):
    """At --eta and --sigma-noise, DPM++ 2M SDE and its Heun variant take k-diffusion's sample_dpmpp_2m_sde steps at
    that eta and s_noise: the latents keep exp(-eta h) more of themselves, the denoised estimates come in with
    1 - exp(-(1 + eta) h), and the fresh noise is s_noise sigma_next sqrt(1 - exp(-2 eta h)) of the generator's (none
    at eta 0: DPM++ 2M's steps)."""
    solver = "heun" if "heun" in name else "midpoint"
    got, expected, at_one = _multistep_sde_on_a_toy_denoiser(
        name, eta, s_noise, 5, lambda *drawing, s_noise: _dpmpp_2m_sde(*drawing, solver, s_noise))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, at_one, atol=1e-3)


def _multistep_sde_on_a_toy_denoiser(name: str, eta: float | None, s_noise: float, steps: int, written_out):
    """A multistep SDE sampler's (`name`'s) picture on the toy denoiser at `eta` (None: its own, 1) and `s_noise`, the
    same written out as k-diffusion draws it (`written_out(denoiser, x, sigmas, noise, eta, s_noise=...)`) on the
    same sigmas and the generator's noise, and textinv's at its own eta and noise."""
    from textinv.samplers import Churn

    seed, own = 3, _sd_scheduler()
    made = scheduler_for(own, name, eta=eta, churn=Churn(noise=s_noise))
    made.set_timesteps(steps)
    sigmas = made.sigmas.double().tolist()  # (the schedule is the sampler's own; the update is what is checked)
    x, calls, recording = _toy_start(sigmas[0])
    generator = torch.Generator().manual_seed(seed)
    expected = written_out(recording, x.double(), sigmas, lambda like: torch.randn(like.shape, generator=generator),
                           1.0 if eta is None else eta, s_noise=s_noise)
    # (diffusers' DPM-Solver works on alpha x0 + sigma' eps, sigma' = sigma / sqrt(sigma^2 + 1))
    start = x / math.sqrt(sigmas[0] ** 2 + 1)
    got, _ = _drawn(made, steps, start, calls, "epsilon", seed)
    at_one, _ = _drawn(scheduler_for(own, name), steps, start, calls, "epsilon", seed)
    return got, expected.float(), at_one


def _dpmpp_3m_sde(denoiser, x, sigmas, noise, eta=1.0, s_noise=1.0):
    """k-diffusion's sample_dpmpp_3m_sde at `eta` and `s_noise`, written out in float64 sigmas: h_eta = (1 + eta) h in
    its phi_2, phi_3 and the denoised estimate's share, exp(-eta h) more of the latents kept, noise of s_noise
    sigma_next sqrt(1 - exp(-2 eta h)); `noise` is drawn at every step, as diffusers' step draws it, and added where
    the step does not end at 0."""
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        drawn = noise(x)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            x = x + drawn * s_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
    return x


@pytest.mark.parametrize("name, steps", [("dpm++3m_sde", 6), ("dpm++3m_sde_karras", 8),
                                         ("dpm++3m_sde_exponential", 16)])
def test_dpmpp_3m_sde_takes_k_diffusions_steps_on_a_toy_denoiser(name, steps):
    """DPM++ 3M SDE takes k-diffusion's sample_dpmpp_3m_sde steps (the web UI's): a first-order step, a second-order
    one with phi_2 (the heun form), third-order ones up to the last (at any number of steps: diffusers' own takes a
    second-order one before the last below 15), then the denoised estimate."""
    seed = 3
    made = scheduler_for(_sd_scheduler(), name)
    made.set_timesteps(steps)
    sigmas = made.sigmas.double().tolist()  # (the schedule is the sampler's own; the update is what is checked)
    x, calls, recording = _toy_start(sigmas[0])
    generator = torch.Generator().manual_seed(seed)
    expected = _dpmpp_3m_sde(recording, x.double(), sigmas, lambda like: torch.randn(like.shape, generator=generator))
    got, _ = _drawn(made, steps, x / math.sqrt(sigmas[0] ** 2 + 1), calls, "epsilon", seed)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)


def test_diffusers_third_order_sde_update_differs_from_k_diffusions_in_one_sign():
    """Diffusers' own third-order sde-dpmsolver++ update adds the second difference D2 with alpha_t ((1 - exp(-2h) -
    2h) / (2h)^2 - 0.5), k-diffusion's sample_dpmpp_3m_sde (textinv's) with + 0.5: the two differ by alpha_t D2 exactly,
    the same step otherwise, so diffusers' correction tends to -alpha_t D2, not 0, as the steps shorten."""
    from diffusers import DPMSolverMultistepScheduler

    ours = scheduler_for(_sd_scheduler(), "dpm++3m_sde")
    theirs = DPMSolverMultistepScheduler.from_config(ours.config)
    ours.set_timesteps(40)
    theirs.set_timesteps(40)
    theirs.sigmas = ours.sigmas  # (the same steps: ours drops the next-to-last sigma)
    ours._step_index = theirs._step_index = 20
    outputs = [torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    sample, noise = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    lambdas = [ours._sigma_to_alpha_sigma_t(ours.sigmas[20 - back]) for back in range(3)]
    lambdas = [torch.log(alpha) - torch.log(sigma) for alpha, sigma in lambdas]
    alpha_t, sigma_t = ours._sigma_to_alpha_sigma_t(ours.sigmas[21])
    h = torch.log(alpha_t) - torch.log(sigma_t) - lambdas[0]
    r0, r1 = (lambdas[0] - lambdas[1]) / h, (lambdas[1] - lambdas[2]) / h
    d2 = ((outputs[2] - outputs[1]) / r0 - (outputs[1] - outputs[0]) / r1) / (r0 + r1)
    got = ours.multistep_dpm_solver_third_order_update(outputs, sample=sample, noise=noise)
    diffusers = theirs.multistep_dpm_solver_third_order_update(outputs, sample=sample, noise=noise)
    torch.testing.assert_close(got - diffusers, alpha_t * d2, rtol=1e-4, atol=1e-5)
    assert (alpha_t * d2).abs().max() > 0.1


@pytest.mark.parametrize("name, eta, s_noise", [("dpm++3m_sde", 0.5, 1.0), ("dpm++3m_sde_karras", 0.0, 1.0),
                                                ("dpm++3m_sde_exponential", None, 0.6), ("dpm++3m_sde", 0.3, 1.4)])
def test_dpmpp_3m_sde_at_an_eta_and_sigma_noise_takes_k_diffusions_steps_on_a_toy_denoiser(name, eta, s_noise):
    """At --eta and --sigma-noise, DPM++ 3M SDE takes k-diffusion's sample_dpmpp_3m_sde steps at that eta and s_noise
    (the web UI hands it both): its third-order step with h_eta = (1 + eta) h, the fresh noise s_noise sigma_next
    sqrt(1 - exp(-2 eta h)) of the generator's (none at eta 0)."""
    got, expected, at_one = _multistep_sde_on_a_toy_denoiser(name, eta, s_noise, 7, _dpmpp_3m_sde)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, at_one, atol=1e-3)


def _dpmpp_sde(denoiser, x, sigmas, noise, eta, s_noise):
    """k-diffusion's sample_dpmpp_sde at `eta` and `s_noise`, r = 1/2, written out in float64 sigmas; `noise(s, e)`
    is the Brownian tree's draw between sigmas s and e. Each step: to the ancestral sigma_down of the log-midpoint
    s_m, noise of its sigma_up, the model at s_m; then from the step's start to sigma_down of the next sigma with that
    estimate, and its noise; the last step, to 0, Euler's."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s)
        if s_next == 0:
            x = x + (x - denoised) / s * (s_next - s)
            continue
        t, t_next = -math.log(s), -math.log(s_next)
        middle = math.exp(-(t + (t_next - t) / 2))
        down, up = _ancestral_step(s, middle, eta)
        x_2 = (down / s) * x - math.expm1(t + math.log(down)) * denoised + noise(s, middle) * s_noise * up
        denoised_2 = denoiser(x_2, middle)
        down, up = _ancestral_step(s, s_next, eta)
        x = (down / s) * x - math.expm1(t + math.log(down)) * denoised_2 + noise(s, s_next) * s_noise * up
    return x


def _dpmpp_sde_on_a_toy_denoiser(name: str, eta: float | None, s_noise: float | None, steps: int = 5):
    """DPM++ SDE's (`name`'s) picture on the toy denoiser at `eta` and `s_noise` (None: its own), k-diffusion's
    written out at those on the same sigmas and Brownian tree (the pictures' seeds'), and textinv's at its own."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from textinv.samplers import Churn

    own, seeds = _sd_scheduler(), [3, 4]
    churn = None if s_noise is None else Churn(noise=s_noise)
    made = scheduler_for(own, name, seeds=seeds, eta=eta, churn=churn)
    made.set_timesteps(steps)
    table = made.sigmas  # [s0, s1, s1, ..., s(n-1), s(n-1), 0]
    sigmas = torch.cat([table[:1], table[1::2]]).double().tolist()
    x, calls, recording = _toy_start(sigmas[0])
    tree = BrownianTreeNoiseSampler(x, table[table > 0].min().item(), table.max().item(), seeds)

    def noise(s, e):  # (asked at float32 sigmas, as the scheduler asks)
        return tree(torch.tensor(s, dtype=torch.float32), torch.tensor(e, dtype=torch.float32)).double()

    expected = _dpmpp_sde(recording, x.double(), sigmas, noise, 1.0 if eta is None else eta,
                          1.0 if s_noise is None else s_noise)
    assert len(calls) == 2 * steps - 1
    got, _ = _drawn(made, steps, x, calls, "epsilon", 0)
    plain, _ = _drawn(scheduler_for(own, name, seeds=seeds), steps, x, calls, "epsilon", 0)
    return got, expected.float(), plain


@pytest.mark.parametrize("name, eta, s_noise", [("dpm++sde_karras", 0.5, None), ("dpm++sde", 0.0, None),
                                                ("dpm++sde_karras", None, 0.5), ("dpm++sde_exponential", 0.3, 1.3)])
def test_dpmpp_sde_at_an_eta_and_sigma_noise_takes_k_diffusions_steps_on_a_toy_denoiser(name, eta, s_noise):
    """At --eta and --sigma-noise, DPM++ SDE takes k-diffusion's sample_dpmpp_sde steps at that eta and s_noise (the
    web UI hands it both; diffusers' DPMSolverSDEScheduler draws at eta 1): each half-step goes to its end's
    ancestral sigma_down and adds s_noise sigma_up of the Brownian tree's noise, the model's midpoint call where it
    was (none at eta 0: DPM-Solver++(2S)'s steps)."""
    got, expected, plain = _dpmpp_sde_on_a_toy_denoiser(name, eta, s_noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_dpmpp_sde_at_eta_1_and_sigma_noise_1_is_diffusers_own():
    """DPM++ SDE at eta 1 and noise 1 is diffusers' DPMSolverSDEScheduler, bit for bit: given as such it is that
    class, as it always was; textinv's step (`schedulers.dpmpp_sde_step`) set to them draws its picture too, to
    float32's precision, and matches k-diffusion's loop there."""
    from textinv.samplers import Churn

    own, seeds = _sd_scheduler(), [3, 4]
    plain = scheduler_for(own, "dpm++sde_karras", seeds=seeds)
    given = scheduler_for(own, "dpm++sde_karras", seeds=seeds, eta=1.0, churn=Churn(noise=1.0))
    assert type(given) is type(plain) and type(plain).__name__ == "DPMSolverSDEScheduler"
    ours = scheduler_for(own, "dpm++sde_karras", seeds=seeds, eta=0.5)
    assert type(ours) is not type(plain)
    ours.eta = 1.0
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 14.6
    plain.set_timesteps(5)
    calls = [1.0 + k for k in range(len(plain.timesteps))]
    drawn = _drawn(plain, 5, x, calls, "epsilon", 0)[0]
    assert torch.equal(drawn, _drawn(given, 5, x, calls, "epsilon", 0)[0])
    torch.testing.assert_close(_drawn(ours, 5, x, calls, "epsilon", 0)[0], drawn, rtol=1e-5, atol=1e-5)
    got, expected, _ = _dpmpp_sde_on_a_toy_denoiser("dpm++sde_karras", None, None)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_sdes_update_at_eta_1_is_diffusers_own():
    """textinv's DPM++ 2M SDE update (`schedulers.sde_first_order_update`), at eta 1, is diffusers' sde-dpmsolver++
    update: the eta it adds changes nothing else."""
    own = _sd_scheduler()
    for name in ("dpm++2m_sde_karras", "dpm++2m_sde_heun"):
        plain, ours = scheduler_for(own, name), scheduler_for(own, name, eta=0.5)
        ours.eta = 1.0
        x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
        plain.set_timesteps(6)
        calls = plain.sigmas[:-1].tolist()
        torch.testing.assert_close(_drawn(ours, 6, x, calls, "epsilon", 5)[0],
                                   _drawn(plain, 6, x, calls, "epsilon", 5)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["euler_a", "dpm2_a_karras", "dpm++2s_a", "ddim", "dpm++2m_sde_karras",
                                  "dpm++2m_sde_heun", "dpm++3m_sde", "dpm++sde_karras"])
def test_a_sampler_at_its_own_eta_is_the_one_it_was(name):
    """--eta at a sampler's default (1; DDIM's 0) makes the scheduler it always was: the same class, the same steps."""
    own = _sd_scheduler()
    plain = scheduler_for(own, name, seeds=[1])  # (DPM++ SDE's Brownian tree: the picture's seed's)
    given = scheduler_for(own, name, seeds=[1], eta=0.0 if name == "ddim" else 1.0)
    assert type(given) is type(plain)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 14.6
    plain.set_timesteps(4)
    calls = [1.0] * len(plain.timesteps)
    assert torch.equal(_drawn(plain, 4, x, calls, "epsilon", 5)[0], _drawn(given, 4, x, calls, "epsilon", 5)[0])


def _sigma_to_t(scheduler, sigma: float) -> float:
    """k-diffusion's DiscreteSchedule.sigma_to_t, unquantized (the web UI's default): the training timestep of
    `sigma`, interpolated in log sigma between the two training levels around it."""
    logs = np.log(_training_sigmas(scheduler))
    low = min(int(np.sum(math.log(sigma) >= logs)) - 1, len(logs) - 2) if math.log(sigma) >= logs[0] else 0
    w = min(max((logs[low] - math.log(sigma)) / (logs[low] - logs[low + 1]), 0), 1)
    return (1 - w) * low + w * (low + 1)


@pytest.mark.parametrize("name", ["dpm2_karras", "dpm2_a_karras", "dpm++2s_a_karras", "dpm2_a_karras@0.5", "dpm2_normal",
                                  "dpm2_a_sgm_uniform", "dpm++2s_a_normal"])
def test_dpm2s_karras_steps_call_the_model_at_their_sigmas_own_timesteps(name):
    """Diffusers' DPM2 and DPM2 a round their steps' timesteps to whole ones on Karras sigmas (only there); the web
    UI calls the model at each sigma's own timestep, which textinv's take: the steps' model calls at their sigmas'
    timesteps, unrounded, the midpoints' as they were. ComfyUI's normal and sgm_uniform, drawn where Karras's would
    be (`samplers._comfy_spaced`), too."""
    name, _, eta = name.partition("@")
    own = _sd_scheduler()
    made = scheduler_for(own, name, eta=float(eta) if eta else None)
    made.set_timesteps(7)
    steps = torch.cat([made.sigmas[:1], made.sigmas[1::2][:-1]])[:-1].tolist()
    wanted = [_sigma_to_t(own, s) for s in steps]
    assert made.timesteps[0::2].tolist() == pytest.approx(wanted, abs=1e-2)
    assert any(abs(t - round(t)) > 0.05 for t in wanted)  # (not whole timesteps)


def _churning(sampler: str, denoiser, x, sigmas, noise, churn: float, tmin: float = 0.0, tmax: float = math.inf,
              s_noise: float = 1.0):
    """k-diffusion's sample_euler, sample_heun or sample_dpm_2 with sigma churn (Karras et al. 2022, Algorithm 2),
    written out in float64 sigmas: a step whose sigma is from tmin to tmax first adds noise up to sigma_hat, then
    steps from there (Euler's step for the last, to 0)."""
    steps = len(sigmas) - 1
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = min(churn / steps, 2 ** 0.5 - 1) if tmin <= s <= tmax else 0.0
        hat = s * (1 + gamma)
        if gamma > 0:
            x = x + noise(x) * s_noise * (hat ** 2 - s ** 2) ** 0.5
        d = (x - denoiser(x, hat)) / hat
        if s_next == 0 or sampler == "euler":
            x = x + d * (s_next - hat)
        elif sampler == "heun":
            x_2 = x + d * (s_next - hat)
            x = x + (d + (x_2 - denoiser(x_2, s_next)) / s_next) / 2 * (s_next - hat)
        else:  # dpm2: through the midpoint, halfway in log sigma
            mid = math.exp((math.log(hat) + math.log(s_next)) / 2)
            x_2 = x + d * (mid - hat)
            x = x + (x_2 - denoiser(x_2, mid)) / mid * (s_next - hat)
    return x


@pytest.mark.parametrize("name, churn, tmin, tmax, s_noise, first", [
    ("euler", 0.5, 0.0, math.inf, 1.0, 0), ("euler_karras", 40.0, 0.0, math.inf, 1.0, 0),
    ("heun", 0.8, 0.5, 5.0, 0.7, 0), ("heun_karras", 1.0, 0.0, math.inf, 1.0, 2),
    ("dpm2", 1.0, 0.0, math.inf, 1.0, 0), ("dpm2_karras", 0.6, 0.0, 3.0, 0.5, 0), ("dpm2", 1.0, 0.0, math.inf, 1.0, 2)])
def test_sigma_churn_takes_k_diffusions_steps_on_a_toy_denoiser(name, churn, tmin, tmax, s_noise, first):
    """With the web UI's sigma churn, Euler, Heun and DPM2 take k-diffusion's steps: each step whose sigma is from tmin
    to tmax first adds each picture's own noise (its generator's next draw) up to sigma_hat = sigma (1 + gamma),
    gamma = min(churn / steps, sqrt 2 - 1), then calls the model there at sigma_hat's timestep (DPM2: its midpoint
    from sigma_hat). An img2img pass (`first`: its first step) counts the steps it runs."""
    from textinv.samplers import Churn

    steps, seeds = 5, (3, 4)
    own = _sd_scheduler()
    base, karras = name.removesuffix("_karras"), name.endswith("_karras")
    sigmas = (_karras if karras else _evenly)(own, steps + (base == "dpm2"))
    if base == "dpm2":  # (the web UI's discard_next_to_last_sigma)
        sigmas = sigmas[:-2] + sigmas[-1:]
    run = sigmas[first:]
    x, calls, recording = _toy_start(run[0])

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    expected = _churning(base, recording, x.double(), run,
                         lambda like: torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators]),
                         churn, tmin, tmax, s_noise)
    made = scheduler_for(own, name, churn=Churn(churn, tmin, tmax, s_noise),
                         generators=[torch.Generator().manual_seed(s) for s in seeds])
    made.set_timesteps(steps)
    got, _ = _drawn(made, steps, x, calls, "epsilon", 0, begin=first * made.order)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    # each call at its own sigma's timestep (sigma_hat's, a churned step's first): the web UI's unquantized one
    made.set_timesteps(steps)
    if first:
        made.set_begin_index(first * made.order)
    assert made.churned and min(made.churned) >= first
    for k, (sigma, hat) in made.churned.items():
        assert math.isclose(made.timesteps[k * made.order], _sigma_to_t(own, hat), abs_tol=1e-3)
    plain, _ = _drawn(scheduler_for(own, name), steps, x, calls, "epsilon", 0, begin=first * made.order)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_the_churns_first_step_is_the_hand_computed_one():
    """Euler at churn 0.5 over 5 steps, one picture, from sigma s0: its generator's next draw e takes the latents up
    to sigma_hat = 1.1 s0, x_hat = x + e sqrt(sigma_hat^2 - s0^2); the model reads x_hat / sqrt(sigma_hat^2 + 1) at
    sigma_hat's timestep, and the step is Euler's from there: x_hat + eps (s1 - sigma_hat)."""
    from textinv.samplers import Churn

    own = _sd_scheduler()
    made = scheduler_for(own, "euler", churn=Churn(churn=0.5), generators=[torch.Generator().manual_seed(9)])
    made.set_timesteps(5)
    s0, s1 = float(made.sigmas[0]), float(made.sigmas[1])
    hat = 1.1 * s0
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1)) * s0
    e = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(9))
    x_hat = x + e * math.sqrt(hat ** 2 - s0 ** 2)
    t = made.timesteps[0]
    assert math.isclose(float(t), _sigma_to_t(own, hat), abs_tol=1e-3)
    scaled = made.scale_model_input(torch.cat([x, x]), t)  # (guidance's two rows: the same noise in both)
    torch.testing.assert_close(scaled, torch.cat([x_hat, x_hat]) / math.sqrt(hat ** 2 + 1))
    eps = 0.1 * scaled[:1]
    torch.testing.assert_close(made.step(eps, t, x).prev_sample, x_hat + eps * (s1 - hat))
    assert float(made.sigmas[0]) == s0  # (the table keeps the step's own sigma)


@pytest.mark.parametrize("name", ["euler", "heun_karras", "dpm2"])
def test_a_churn_of_0_makes_the_sampler_it_always_was(name):
    """At churn 0 (whatever tmin, tmax and noise) a sampler is its own: the same class, the same steps."""
    from textinv.samplers import Churn

    own = _sd_scheduler()
    plain = scheduler_for(own, name)
    given = scheduler_for(own, name, churn=Churn(0.0, 0.5, 3.0, 0.5), generators=[torch.Generator()])
    assert type(given) is type(plain)
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 14.6
    plain.set_timesteps(4)
    calls = [1.0] * len(plain.timesteps)
    assert torch.equal(_drawn(plain, 4, x, calls, "epsilon", 5)[0], _drawn(given, 4, x, calls, "epsilon", 5)[0])


@pytest.mark.parametrize("name", ["euler", "euler_a", "lms_karras", "heun", "heun_karras", "dpm++2m", "dpm++sde",
                                  "dpm++2s_a_karras", "dpm++2m_sde_exponential", "lcm", "lcm_karras",
                                  "restart_karras"])
def test_discarding_the_penultimate_sigma_takes_it_out_of_the_longer_schedule(name):
    """--discard-penultimate-sigma (the web UI's "Always discard next-to-last sigma"): n steps go down the n + 1 step
    schedule without its smallest non-zero sigma, so there are still n steps and the last goes from the sigma before
    it to 0; every other sigma is the longer schedule's."""
    from textinv.schedulers import step_values

    steps = 5
    own = _sd_scheduler()

    def schedule(made):  # (the steps' sigmas, then 0: one a step, or two calls a step laid out)
        if hasattr(made, "sigmas_interpol"):
            return step_values(made.sigmas).tolist()
        return (torch.cat([made.sigmas[:1], made.sigmas[1::2]]) if made.order == 2 else made.sigmas).tolist()

    longer = scheduler_for(own, name, seeds=[1])
    longer.set_timesteps(steps + 1)
    made = scheduler_for(own, name, seeds=[1], discard=True)
    made.set_timesteps(steps)
    wanted = schedule(longer)
    assert len(wanted) == steps + 2
    assert schedule(made) == pytest.approx(wanted[:-2] + wanted[-1:])
    plain = scheduler_for(own, name, seeds=[1])
    plain.set_timesteps(steps)
    assert len(made.timesteps) == len(plain.timesteps)  # (the same number of model calls)
    assert not torch.allclose(made.sigmas, plain.sigmas)


@pytest.mark.parametrize("name", ["euler_karras", "heun"])
def test_a_discarding_sampler_takes_k_diffusions_steps_on_a_toy_denoiser(name):
    """Euler and Heun with the next-to-last sigma discarded are k-diffusion's sample_euler and sample_heun on the web
    UI's discarded schedule: the model called at each of its sigmas, the last step Euler's to 0."""
    steps = 5
    own = _sd_scheduler()
    base, karras = name.removesuffix("_karras"), name.endswith("_karras")
    sigmas = (_karras if karras else _evenly)(own, steps + 1)
    sigmas = sigmas[:-2] + sigmas[-1:]
    x, calls, recording = _toy_start(sigmas[0])

    expected = _churning(base, recording, x.double(), sigmas, None, 0.0)
    got, _ = _drawn(scheduler_for(own, name, discard=True), steps, x, calls, "epsilon", 0)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, steps, start", [("restart_karras", 8, 0), ("restart_karras", 24, 0),
                                                ("restart", 25, 0), ("restart_karras", 40, 0), ("restart", 30, 8)])
def test_restart_with_the_penultimate_sigma_discarded_takes_the_web_uis_steps_on_a_toy_denoiser(name, steps, start):
    """The web UI's "Always discard next-to-last sigma" reaches its Restart (a KDiffusionSampler: its get_sigmas hands
    restart_sampler the n + 1 step schedule less its next-to-last sigma): Restart plans its steps on that schedule, as
    restart_sampler does, below 20 steps Heun's on it; an img2img pass from step 8 of 30 plans its last 22 alone."""
    own = _sd_scheduler()
    sigmas = (_karras if name.endswith("_karras") else _evenly)(own, steps + 1)
    sigmas = sigmas[:-2] + sigmas[-1:]
    read = []
    x, calls, recording = _toy_start(sigmas[start], read)
    generator = torch.Generator().manual_seed(5)
    expected, taken = _restart(recording, x.double(), sigmas[start:], lambda like: torch.randn(like.shape,
                                                                                                generator=generator))
    assert taken == steps - start  # (its calls: the pipeline's, `_drawn` zips them strictly)
    made = scheduler_for(own, name, discard=True)
    got, got_read = _drawn(made, steps, x, calls, "epsilon", 5, begin=2 * start)
    for call, (latents, wanted) in enumerate(zip(got_read, read)):
        torch.testing.assert_close(latents, wanted, rtol=1e-5, atol=1e-5, msg=f"call {call}")
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    plain, _ = _drawn(scheduler_for(own, name), steps, x, calls, "epsilon", 5, begin=2 * start)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_a_restart_whose_level_nearest_sigma_0_1_is_0_is_refused_by_name():
    """On the model's spacing less its next-to-last sigma (20 to 24 steps for SD), the smallest non-zero sigma is
    above 0.2, so the level nearest 0.1 the web UI's restart_sampler restarts from is 0: it goes down to 0 twice, one
    model call fewer than a diffusers pipeline counts. Refused saying why, before drawing, not drawn otherwise."""
    from textinv.errors import ConfigError
    from textinv.samplers import check_pass

    own = _sd_scheduler()
    made = scheduler_for(own, "restart", discard=True)
    with pytest.raises(ValueError, match=r"Restart's level nearest sigma 0.1 on this schedule is 0 \(its smallest "
                                         r"non-zero sigma is 0.2[0-9]\): the web UI's goes down to 0, then restarts"):
        made.set_timesteps(22)
    with pytest.raises(ConfigError, match=r"^sampler='restart': --steps 22 with discard_penultimate_sigma=: "
                                          r"Restart's level nearest sigma 0.1 .* draw it on a sigma schedule"):
        check_pass(own, "restart", 22, 22, "--steps 22", discard=True)
    check_pass(own, "restart", 22, 22, "--steps 22")
    check_pass(own, "restart_karras", 22, 22, "--steps 22", discard=True)


@pytest.mark.parametrize("name", ["dpm2", "dpm2_a_karras", "dpm++3m_sde", "ddim", "unipc"])
def test_discarding_leaves_a_sampler_that_always_discards_or_has_no_sigma_schedule_as_it_was(name):
    """DPM2, DPM2 a and DPM++ 3M SDE discard the next-to-last sigma always; DDIM and UniPC are not discarded from (the
    config refuses the flag for a pass of these alone): the same class, the same tables."""
    own = _sd_scheduler()
    plain, given = scheduler_for(own, name, seeds=[1]), scheduler_for(own, name, seeds=[1], discard=True)
    assert type(given) is type(plain)
    plain.set_timesteps(5)
    given.set_timesteps(5)
    assert torch.equal(plain.timesteps, given.timesteps)


def _lcm_levels(scheduler) -> np.ndarray:
    """The sigmas of timesteps 19, 39, ..., 999, the 50 an LCM is distilled at (the web UI's LCMCompVisDenoiser's)."""
    return _training_sigmas(scheduler)[19::20]


def _lcm_sigmas(scheduler, n: int, schedule: str = "") -> list[float]:
    """The web UI's sigmas for LCM: its own (get_sigmas: n timesteps from 999 to 19, each between two of the 50
    levels interpolated in log sigma), or Karras's over the levels' range; then 0."""
    levels = _lcm_levels(scheduler)
    if schedule == "karras":
        low, high = levels[0] ** (1 / 7), levels[-1] ** (1 / 7)
        return [(high + i / (n - 1) * (low - high)) ** 7 for i in range(n)] + [0.0]
    sigmas = []
    for t in np.linspace(999, 19, n):
        index = (t - 19) / 20
        low = math.floor(index)
        high, w = min(low + 1, 49), index - low
        sigmas.append(math.exp((1 - w) * math.log(levels[low]) + w * math.log(levels[high])))
    return sigmas + [0.0]


def _lcm(denoiser, x, sigmas, noise, levels):
    """The web UI's sample_lcm on its LCM denoiser, written out in float64 sigmas: the model called at the nearest of
    the 50 levels' timesteps t, its estimate taken under the boundary conditions at 10 t (sigma_data 0.5), then noise
    of the next sigma."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = int(np.abs(np.log(levels) - math.log(s)).argmin()) * 20 + 19
        scaled = 10.0 * t
        c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25) ** 0.5
        x = c_out * denoiser(x, s) + c_skip * x
        if s_next > 0:
            x = x + s_next * noise(x)
    return x


@pytest.mark.parametrize("name, steps, kind", [("lcm", 4, "epsilon"), ("lcm", 8, "v_prediction"),
                                               ("lcm_karras", 6, "epsilon"), ("lcm", 1, "epsilon")])
def test_lcm_takes_the_web_uis_steps_on_a_toy_denoiser(name, steps, kind):
    """Each model call's latents, its timestep and the result match the web UI's sample_lcm with its LCM denoiser on
    the same sigmas and noise: at 4 steps the model is called at timesteps 999, 679, 339 and 19 (diffusers'
    LCMScheduler: 999, 759, 499, 259)."""
    own = _sd_scheduler(prediction_type=kind)
    sigmas = _lcm_sigmas(own, steps, "karras" if name.endswith("_karras") else "")
    read, seed = [], 4
    x, calls, recording = _toy_start(sigmas[0], read)
    generator = torch.Generator().manual_seed(seed)
    expected = _lcm(recording, x.double(), sigmas, lambda like: torch.randn(like.shape, generator=generator),
                    _lcm_levels(own))
    made = scheduler_for(own, name)
    assert type(made).__name__ == "LatentConsistencyScheduler"
    made.set_timesteps(steps)
    if (name, steps) == ("lcm", 4):
        assert made.timesteps.tolist() == [999, 679, 339, 19]
    got, got_read = _drawn(made, steps, x, calls, kind, seed)
    for call, (latents, wanted) in enumerate(zip(got_read, read)):
        torch.testing.assert_close(latents, wanted, rtol=1e-5, atol=1e-5, msg=f"call {call}")
    # (tighter than the calls': the boundary conditions move the result by 7e-6 of x at timestep 19)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    if steps > 1:
        other, _ = _drawn(scheduler_for(own, name), steps, x, calls, kind, seed + 1)
        assert not torch.allclose(got, other)  # (its noise is the generator's)


def test_lcm_starts_from_noise_of_its_first_sigma_on_sd_1s_leading_spacing():
    """The pipeline's starting latents are noise times `init_noise_sigma`: the first sigma, as the web UI's x = noise
    sigma_0, where diffusers' Euler takes sqrt(sigma_0^2 + 1) on the "leading" spacing SD 1.x's config names."""
    own = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    made = scheduler_for(own, "lcm")
    made.set_timesteps(4)
    assert own.config.timestep_spacing == "leading"
    assert float(made.init_noise_sigma) == pytest.approx(_lcm_sigmas(own, 4)[0]) == pytest.approx(14.6146, abs=1e-4)


def _tcd_timesteps(n: int) -> list[int]:
    """TCD's timesteps for n steps: n of the 50 an LCM or TCD is distilled at (19, 39, ..., 999), from 999 down, at
    floor(i 50 / n)."""
    distilled = [20 * k + 19 for k in range(50)][::-1]
    return [distilled[math.floor(i * 50 / n)] for i in range(n)]


def _tcd(denoiser, x, timesteps, alphas, noise, gamma=0.3):
    """Zheng et al. 2024's strategic stochastic sampling, written out in float64 on latents x = sqrt(a) x0 +
    sqrt(1 - a) eps: from t, the model's x0 and eps give the latents at s = floor((1 - gamma) t') (t': the next
    timestep, 0 after the last), then noise takes them up to t' (none after the last)."""
    for i, t in enumerate(timesteps):
        a = alphas[t]
        x0 = denoiser(x / math.sqrt(a), math.sqrt((1 - a) / a))  # (the toy reads x0 + sigma eps)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        s = math.floor((1 - gamma) * t_next)
        x = math.sqrt(alphas[s]) * x0 + math.sqrt(1 - alphas[s]) * eps
        if i + 1 < len(timesteps):
            kept = alphas[t_next] / alphas[s]
            x = math.sqrt(kept) * x + math.sqrt(1 - kept) * noise(x)
    return x


@pytest.mark.parametrize("steps, kind", [(4, "epsilon"), (6, "v_prediction"), (1, "epsilon")])
def test_tcd_takes_strategic_stochastic_steps_at_gamma_0_3_on_a_toy_denoiser(steps, kind):
    """tcd is diffusers' TCDScheduler at gamma 0.3 whatever eta a pipeline hands a step: its step takes none (a
    diffusers pipeline passes its own, 0 by default, to a step that takes one: no noise, gamma 0)."""
    own = _sd_scheduler(prediction_type=kind)
    alphas = own.alphas_cumprod.double().numpy()
    timesteps = _tcd_timesteps(steps)
    sigma = math.sqrt((1 - alphas[timesteps[0]]) / alphas[timesteps[0]])
    read, seed = [], 2
    x, calls, recording = _toy_start(sigma, read)
    x = x * math.sqrt(alphas[timesteps[0]])  # (the latents at t: sqrt(a) (x0 + sigma eps))
    generator = torch.Generator().manual_seed(seed)
    expected = _tcd(recording, x.double(), timesteps, alphas, lambda like: torch.randn(like.shape,
                                                                                        generator=generator))
    made = scheduler_for(own, "tcd")
    assert "eta" not in inspect.signature(made.step).parameters
    made.set_timesteps(steps)
    assert made.timesteps.tolist() == timesteps
    got, got_read = _drawn(made, steps, x, calls, kind, seed)
    for call, (latents, wanted) in enumerate(zip(got_read, read)):
        torch.testing.assert_close(latents, wanted, rtol=1e-5, atol=1e-5, msg=f"call {call}")
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


# ComfyUI's KSampler (comfy/samplers.py, KSampler.calculate_sigmas) draws the samplers of its
# DISCARD_PENULTIMATE_SIGMA_SAMPLERS on the schedule of one step more less its next-to-last sigma, every other sampler
# on the schedule as it is (its SamplerCustom each on the sigmas it is given)
_COMFY_DISCARDING = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")


def _comfy_sigmas(scheduler, sampler_name: str, schedule: str, steps: int) -> list[float]:
    """The sigmas ComfyUI's KSampler hands its sampler `sampler_name` for `steps` steps of its scheduler `schedule`
    (karras, exponential, normal, simple or sgm_uniform) on the model whose noise schedule diffusers' `scheduler`
    holds, written out from ComfyUI's definitions: ModelSamplingDiscrete's sigmas are the training schedule's, one a
    timestep (after a ModelSamplingDiscrete node's lcm sampling, its 50 timesteps' 19, 39, ..., 999, where ComfyUI's
    lcm draws), sigma_min and sigma_max the smallest and largest; karras is k-diffusion's get_sigmas_karras at rho 7,
    exponential its get_sigmas_exponential (n sigmas evenly spaced in log sigma); normal (comfy/samplers.py,
    normal_scheduler) the sigmas at torch.linspace(timestep(sigma_max), timestep(sigma_min), n), sgm_uniform (the same
    with sgm=True) at the first n of linspace(..., n + 1), each ModelSamplingDiscrete.sigma(t): the log sigmas of
    timesteps floor(t) and ceil(t) weighed by t's fraction; simple (simple_scheduler) sigmas[-(1 + int(x * len /
    n))] for x in range(n); all then 0."""
    sigmas = _training_sigmas(scheduler)
    if sampler_name == "lcm":
        sigmas = sigmas[19::20]
    low, high = sigmas[0], sigmas[-1]
    discard = sampler_name in _COMFY_DISCARDING
    n = steps + discard
    if schedule in ("normal", "sgm_uniform"):
        times = torch.linspace(len(sigmas) - 1, 0, n + (schedule == "sgm_uniform"))[:n].double()
        log_sigmas = torch.from_numpy(np.log(sigmas))
        w = times.frac()
        drawn = ((1 - w) * log_sigmas[times.floor().long()] + w * log_sigmas[times.ceil().long()]).exp().tolist()
        drawn += [0.0]
    elif schedule == "simple":
        drawn = [float(sigmas[-(1 + int(x * (len(sigmas) / n)))]) for x in range(n)] + [0.0]
    elif schedule == "ddim_uniform":  # (ddim_scheduler: timesteps 1, 1 + s, ... below 1000, s = 1000 // n)
        drawn = [float(sigmas[t]) for t in range(1, len(sigmas), len(sigmas) // n)][::-1] + [0.0]
    elif schedule == "karras":
        drawn = _karras(scheduler, n) if sampler_name != "lcm" else [
            (high ** (1 / 7) + i / (n - 1) * (low ** (1 / 7) - high ** (1 / 7))) ** 7 for i in range(n)] + [0.0]
    else:
        drawn = [math.exp(math.log(high) + i / (n - 1) * (math.log(low) - math.log(high))) for i in range(n)] + [0.0]
    return drawn[:-2] + drawn[-1:] if discard else drawn


def _stepped(made, steps: int) -> list[float]:
    """The sigmas scheduler `made` steps through for `steps` steps, ending at 0: diffusers' tables of two model calls
    a step (Heun's, DPM++ SDE's, DPM2's) hold each step's more than once."""
    made.set_timesteps(steps)
    sigmas = made.sigmas
    if hasattr(made, "sigmas_interpol"):  # ([s0, s1, s1, ..., the end thrice])
        sigmas = torch.cat([sigmas[:1], sigmas[1::2][:-1]])
    elif made.order == 2:  # ([s0, s1, s1, ..., s(n-1), s(n-1), 0])
        sigmas = torch.cat([sigmas[:1], sigmas[1::2]])
    return sigmas.double().tolist()


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                                          "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde",
                                          "dpmpp_3m_sde_gpu", "ddim", "lcm"])
def test_a_comfyui_ksampler_sampler_on_a_sigma_schedule_draws_its_sigmas(sampler_name):
    """Each ComfyUI KSampler sampler textinv reads on a Karras or exponential schedule (`from_comfy`) steps through
    the sigmas ComfyUI's KSampler hands it: one step more less the next-to-last for dpm_2 and dpm_2_ancestral alone.
    textinv read its dpmpp_3m_sde as the web UI's DPM++ 3M SDE, which discards the next-to-last sigma where ComfyUI's
    does not: 8 steps drew on 9's schedule less its smallest non-zero sigma."""
    from textinv.samplers import from_comfy

    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SD's)
    for schedule in ("karras", "exponential"):
        name = from_comfy(sampler_name, schedule)
        got = _stepped(scheduler_for(own, name, seeds=[1]), 8)
        assert got == pytest.approx(_comfy_sigmas(own, sampler_name, schedule, 8), rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                                          "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde",
                                          "ddim", "lcm"])
def test_a_comfyui_ksampler_sampler_on_its_normal_simple_or_sgm_uniform_schedule_draws_its_sigmas(sampler_name):
    """ComfyUI's normal (its default), simple and sgm_uniform take the steps at timesteps of the model's own noise
    levels: textinv read them as the model's own spacing, which at 20 steps starts at timestep 951 (sigma 11.0) on SD's
    config, where normal starts at 999 (14.6). Each KSampler sampler on them now steps through ComfyUI's sigmas."""
    from textinv.samplers import from_comfy

    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SD's)
    for schedule in ("normal", "simple", "sgm_uniform"):
        name = from_comfy(sampler_name, schedule)
        for steps in (3, 8, 30) if sampler_name in ("euler", "dpm_2", "lcm") else (8,):
            got = _stepped(scheduler_for(own, name, seeds=[1]), steps)
            wanted = _comfy_sigmas(own, sampler_name, schedule, steps)
            assert got == pytest.approx(wanted, rel=1e-5, abs=1e-6), (name, steps)


def test_comfyuis_uni_pc_is_not_read_as_the_web_uis_unipc():
    """ComfyUI's uni_pc and uni_pc_bh2 take their last step to sigma 0.001 (its sample_unipc, in place of the
    schedule's 0), on the schedule of one step more less the next-to-last sigma; textinv's unipc, the web UI's UniPC,
    stops at the model's smallest noise level, on its own spacing. They were read as it; now, as a sampler textinv
    does not have, they are asked for, saying what differs."""
    from textinv.samplers import COMFY_UNLIKE, from_comfy

    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SD's)
    for sampler_name, ours in [("uni_pc", "unipc"), ("uni_pc_bh2", "unipc_bh2")]:
        assert from_comfy(sampler_name, "normal") is None and from_comfy(sampler_name, "karras") is None
        made = scheduler_for(own, ours)
        made.set_timesteps(8)
        smallest = _training_sigmas(own)[0]
        assert made.sigmas[-1].item() == pytest.approx(smallest) and smallest > 0.02  # (ComfyUI's: 0.001)
        assert "sigma 0.001" in COMFY_UNLIKE[sampler_name] and ours in COMFY_UNLIKE[sampler_name]


def test_comfyuis_ddim_is_euler_on_every_schedule_and_on_ddim_uniform_draws_its_sigmas():
    """ComfyUI's ddim is its Euler sampler (sampler_object: ksampler("euler")), which steps down to sigma 0; textinv
    read it as its ddim on the even spacings, diffusers' DDIM, whose last step goes to the model's smallest noise level
    under SD's config (set_alpha_to_one false), sigma 0.029, not 0. textinv's euler draws it: on ComfyUI's ddim_uniform
    at a number of steps that divides 1000, the same sigmas."""
    from textinv.samplers import from_comfy

    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SD's)
    assert from_comfy("ddim", "ddim_uniform") == "euler_ddim_uniform" and from_comfy("ddim", "normal") == "euler_normal"
    assert from_comfy("ddim", "karras") == "euler_karras"
    made = scheduler_for(own, "ddim")
    assert made.final_alpha_cumprod == own.alphas_cumprod[0]  # (what textinv's ddim ends at: not ComfyUI's 0)
    # ComfyUI's ddim_uniform (comfy/samplers.py, ddim_scheduler): the training sigmas at timesteps 1, 1 + s, 1 + 2s, ...
    # while below 1000, s = 1000 // steps, from the largest down, then 0
    sigmas = _training_sigmas(own)
    steps = 20
    comfy = [sigmas[t] for t in range(1, len(sigmas), len(sigmas) // steps)][::-1] + [0.0]
    assert _stepped(scheduler_for(own, from_comfy("ddim", "ddim_uniform")), steps) == pytest.approx(comfy, rel=1e-5)


def _start_noise(made, steps: int) -> float:
    """The noise level, in k-diffusion's terms (x = x0 + sigma noise), of the pure noise scheduler `made` starts a pass
    of `steps` steps from: diffusers' pipelines start at noise times its init_noise_sigma, which DPM-Solver's
    multistep scheduler holds in VP terms (x / sqrt(1 + sigma^2), sigma its first)."""
    from diffusers import DPMSolverMultistepScheduler

    made.set_timesteps(steps)
    first = float(made.sigmas[0])
    return float(made.init_noise_sigma) * ((1 + first ** 2) ** 0.5 if isinstance(made, DPMSolverMultistepScheduler)
                                           else 1.0)


@pytest.mark.parametrize("name", ["euler", "euler_a", "heun", "dpm2", "dpm2_a", "lms", "dpm++2s_a", "dpm++sde",
                                  "restart", "dpm++2m", "dpm++2m_sde", "dpm++3m_sde_comfy"])
def test_a_k_diffusion_sampler_starts_from_its_first_sigma_where_that_is_below_the_models_largest(name):
    """Where a pass starts below the model's largest noise level (the model's own spacing under a "leading" config,
    SDXL's: ComfyUI's ddim_uniform, the web UI's DDIM schedule type) both the web UI (x = noise sigmas[0]) and
    ComfyUI (noise_scaling without max_denoise) start from noise times that first sigma. textinv's started at sqrt(1 +
    s0^2): diffusers' Euler-style init_noise_sigma on that spacing, its DPM-Solver's unit VP noise (SD at 20 steps:
    11.07 for 11.03). From the largest (every sigma schedule) the two tools differ, and diffusers' start is kept:
    sigma_max for the Euler-style ones, as the web UI; sqrt(1 + sigma_max^2) for DPM-Solver's, as ComfyUI."""
    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SDXL's)
    largest = _training_sigmas(own)[-1]
    made = scheduler_for(own, name, seeds=[1])
    start = _start_noise(made, 20)
    assert start == pytest.approx(float(made.sigmas[0]), rel=1e-6) and start < 0.8 * largest
    if name != "euler_a":  # (diffusers' Euler a takes no sigma schedule)
        dpm_solver = name.startswith(("dpm++2m", "dpm++3m"))
        wanted = (1 + largest ** 2) ** 0.5 if dpm_solver else largest
        assert _start_noise(scheduler_for(own, f"{name}_karras", seeds=[1]), 20) == pytest.approx(wanted, rel=1e-6)


@pytest.mark.parametrize("name", ["dpm++2m_exponential", "dpm++2m_sde_exponential", "dpm++3m_sde_exponential",
                                  "dpm++3m_sde_comfy_exponential", "dpm++2m_sde_heun_beta"])
def test_dpm_solver_on_exponential_or_beta_sigmas_calls_the_model_at_the_nearest_whole_timestep(name):
    """ComfyUI calls the model at the whole timestep nearest each sigma (ModelSamplingDiscrete.timestep: the training
    level nearest in log sigma), as diffusers' DPM-Solver does on Karras sigmas; on exponential and beta ones it
    truncated the sigma's own timestep, up to a whole one below it (and below the web UI's, which takes it as it is):
    SD's first step, at sigma_max, at 998, not 999."""
    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)  # (SD's)
    log_levels = np.log(_training_sigmas(own))
    made = scheduler_for(own, name, seeds=[1])
    made.set_timesteps(20)
    nearest = [int(np.abs(math.log(s) - log_levels).argmin()) for s in made.sigmas[:-1].tolist()]
    assert made.timesteps.tolist() == nearest and nearest[0] == 999


# SD's config ("leading", steps offset 1: SD 1.x's, SDXL's), one that states no spacing (linspace) and "trailing"
_CONFIGS = {"leading": dict(timestep_spacing="leading", steps_offset=1), "linspace": {},
            "trailing": dict(timestep_spacing="trailing")}


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                                          "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde",
                                          "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ddim", "ddpm"])
@pytest.mark.parametrize("config", list(_CONFIGS))
def test_a_comfyui_ksampler_sampler_on_ddim_uniform_calls_the_model_at_its_timesteps_on_any_config(sampler_name,
                                                                                                   config):
    """ComfyUI's ddim_uniform takes its steps at timesteps 1, 1 + s, ... (s = 1000 // steps), largest first. textinv
    read it as the model's own spacing, which is that only for its Euler-style samplers under a config that states
    "leading" at steps offset 1: DPM-Solver spaces "leading" otherwise (941, 894, ..., 48 at 20), and a config that
    states none gives linspace (999, ..., 0). Each now steps through ComfyUI's sigmas (dpm_2's of one step more, less
    the next-to-last), its single-call samplers' model calls at ComfyUI's whole timesteps, on every config."""
    from textinv.samplers import from_comfy

    own = DDIMScheduler.from_config(_sd_scheduler().config, **_CONFIGS[config])
    name = from_comfy(sampler_name, "ddim_uniform")
    assert name.endswith("_ddim_uniform")
    for steps in (n - (sampler_name in _COMFY_DISCARDING) for n in (4, 20, 25)):  # (counts ddim_uniform draws)
        made = scheduler_for(own, name, seeds=[1])
        wanted = _comfy_sigmas(own, sampler_name, "ddim_uniform", steps)
        if hasattr(made, "sigmas"):
            assert _stepped(made, steps) == pytest.approx(wanted, rel=1e-5, abs=1e-6), (name, steps)
        made.set_timesteps(steps)
        if made.order == 1:  # (DDPM too: its timesteps alone)
            times = list(range(1, 1000, 1000 // steps))[::-1]
            assert made.timesteps.tolist() == pytest.approx(times, abs=1e-3), (name, steps)


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                                          "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde",
                                          "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ddim", "ddpm"])
def test_a_comfyui_ksampler_sampler_on_ddim_uniform_draws_all_its_steps_where_1000_over_steps_does_not_fit(
        sampler_name):
    """Where 1000 // steps does not fit, ComfyUI's ddim_uniform takes more steps than asked: 31 at 30 (timesteps 33
    apart from 1), 167 at 150; dpm_2's schedule of one step more, 32 timesteps 32 apart, less the next-to-last. textinv
    refused those counts ("leading" drew 30 others). Each sampler now steps through all of ComfyUI's sigmas, its
    single-call samplers' model calls at all of ComfyUI's timesteps, on SD's config and on one that states no
    spacing."""
    from textinv.samplers import ddim_uniform_times, from_comfy

    name = from_comfy(sampler_name, "ddim_uniform")
    for config in ("leading", "linspace"):
        own = DDIMScheduler.from_config(_sd_scheduler().config, **_CONFIGS[config])
        for steps in (30, 150):
            made = scheduler_for(own, name, seeds=[1])
            wanted = _comfy_sigmas(own, sampler_name, "ddim_uniform", steps)
            assert len(wanted) - 1 > steps  # (ComfyUI's: more steps than asked)
            if hasattr(made, "sigmas"):
                assert _stepped(made, steps) == pytest.approx(wanted, rel=1e-5, abs=1e-6), (name, steps)
            made.set_timesteps(steps)
            if made.order == 1:  # (DDPM too: its timesteps alone)
                assert made.timesteps.tolist() == pytest.approx(ddim_uniform_times(steps), abs=1e-3), (name, steps)


@pytest.mark.parametrize("name", ["euler", "euler_a", "heun", "dpm2", "dpm2_a", "lms", "dpm++2s_a", "dpm++sde",
                                  "restart", "ddpm"])
def test_a_ddim_uniform_sampler_at_a_count_that_fits_is_the_models_leading_spacing_as_before(name):
    """Where 1000 // steps fits, ComfyUI's ddim_uniform timesteps are SD's "leading" spacing at steps offset 1, which
    those samplers drew on before they drew every count: their tables are that spacing's, bit for bit, so every
    picture drawn at those counts is drawn as it was (DPM2's on the schedule of one step more, less a sigma)."""
    from textinv.samplers import ddim_uniform_times, discards

    own = DDIMScheduler.from_config(_sd_scheduler().config, **_CONFIGS["leading"])
    more = int(discards(name))
    for steps in (n - more for n in (4, 20, 25, 50)):
        assert len(ddim_uniform_times(steps + more)) == steps + more
        spaced, plain = scheduler_for(own, f"{name}_ddim_uniform", seeds=[1]), scheduler_for(own, name, seeds=[1])
        spaced.set_timesteps(steps)
        plain.set_timesteps(steps)
        assert torch.equal(spaced.timesteps, plain.timesteps), (name, steps)
        if hasattr(plain, "sigmas"):
            assert torch.equal(spaced.sigmas, plain.sigmas), (name, steps)


def test_check_steps_refuses_tcd_beyond_its_50_timesteps_and_no_ddim_uniform_count():
    """ddim_uniform was refused at the counts where it draws more steps than asked (31 at 30); it draws them now
    (`samplers._at_ddim_uniform`), so only TCD's limit is left, refused by name before the model loads."""
    from textinv.config import GenerateConfig
    from textinv.errors import ConfigError
    from textinv.samplers import check_steps

    for name, steps in (("euler_ddim_uniform", 30), ("dpm++2m_ddim_uniform", 150), ("dpm2_ddim_uniform", 20),
                        ("heun_ddim_uniform", 3), ("tcd", 50)):
        check_steps(name, steps)
    GenerateConfig(prompt=["a dog"], model="m", sampler="dpm++2m_ddim_uniform", steps=30).validate()
    with pytest.raises(ConfigError, match=r"sampler='tcd' at 51 steps: TCD takes its steps among the 50"):
        GenerateConfig(prompt=["a dog"], model="m", sampler="tcd", steps=51).validate()


def _sweep_names():
    from textinv.samplers import SAMPLERS

    return [name for name in SAMPLERS if name != "default"]


@pytest.mark.parametrize("name", _sweep_names())
def test_every_sampler_takes_each_of_its_steps_once_in_order_at_any_step_count(name):
    """Each sampler draws from a pass's first step to its last, one step index after another, or is refused by name
    (`check_steps`). Where two of a pass's first timesteps were equal (DPM-Solver on the web UI's beta sigmas from 48
    steps: sigma_max and the next both nearest 999; LCM from 100 steps, on beta sigmas from 9, its calls at the
    nearest of 50 timesteps) diffusers started the pass at its second step and ran off the end of its sigmas (an
    IndexError). SD's config; a dummy model output in place of a UNet."""
    from textinv.errors import ConfigError
    from textinv.samplers import check_pass

    own = DDIMScheduler.from_config(_sd_scheduler().config, timestep_spacing="leading", steps_offset=1)
    x0 = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for steps in (1, 20, 25, 30, 50, 150):
        try:
            check_pass(own, name, steps, steps, f"--steps {steps}")
        except ConfigError:
            continue
        made = scheduler_for(own, name, seeds=[1])
        made.set_timesteps(steps)
        noise = {"generator": torch.Generator().manual_seed(0)} \
            if "generator" in inspect.signature(made.step).parameters else {}
        indexed = isinstance(getattr(type(made), "step_index", None), property)  # (not DDIM, PLMS, DDPM)
        x, after = x0 * float(made.init_noise_sigma), []
        for t in made.timesteps:
            x = made.step(0.1 * made.scale_model_input(x, t), t, x, **noise).prev_sample
            after.append(made.step_index if indexed else None)
        assert torch.isfinite(x).all(), (name, steps)
        if indexed:  # (after call k, the index of the next: k + 1)
            assert after == list(range(1, len(made.timesteps) + 1)), (name, steps)
