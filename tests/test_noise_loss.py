"""kohya's noise and loss settings (`--ip-noise-gamma`, `--multires-noise-iterations`, `--adaptive-noise-scale`,
`--noise-offset-random-strength`, `--loss-type`, `--huber-*`, `--debiased-estimation-loss`,
`--scale-v-pred-loss-like-noise-pred`, `--v-pred-like-loss`): each is kohya's formula, computed here on its own on
small tensors; off (the default) a run is the run made without them; a resumed run equals an uninterrupted one;
bad values are refused naming the flag."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from textinv import batches, losses, train as train_module
from textinv.config import TrainConfig, config_file_settings
from textinv.errors import ConfigError
from textinv.models import load_model
from textinv.losses import LossOptions, denoising_loss
from textinv.batches import BatchSampler, NoiseOptions
from textinv.train import composed_noise, train

from test_train import _mixed_pictures, config
from conftest import fresh_model


def sd_scheduler(prediction_type="epsilon"):
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         prediction_type=prediction_type)


def kohya_snr(t):
    """SD's schedule's SNR at timesteps `t`, from its betas, capped at 1000 as kohya caps it."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[t]
    return torch.minimum(alpha_bar / (1 - alpha_bar), torch.tensor(1000.0, dtype=torch.float64)), alpha_bar


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    pred, latents, noise = (torch.randn(n, 4, 3, 3, generator=g) for _ in range(3))
    return pred, latents, noise, torch.tensor([0, 5, 500, 999][:n])


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_loss_weights_are_kohyas(kind):
    """Each weight times the per-sample mean squared error, applied after Min-SNR's, as kohya's
    `apply_debiased_estimation`, `scale_v_prediction_loss_like_noise_prediction` and `add_v_prediction_like_loss` do
    (SNR capped at 1000: SD's timestep 0 is above it)."""
    scheduler = sd_scheduler(kind)
    pred, latents, noise, t = batch()
    target = scheduler.get_velocity(latents, noise, t) if kind == "v_prediction" else noise
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3)).double()
    snr, _ = kohya_snr(t)
    assert snr[0] == 1000  # (the cap is reached)

    def loss(**kw):
        return denoising_loss(scheduler, pred, latents, noise, t, kind, options=LossOptions(**kw)).double()

    debiased = mse / (snr + 1) if kind == "v_prediction" else mse / snr.sqrt()
    torch.testing.assert_close(loss(debiased=True), debiased, rtol=2e-4, atol=0)
    scale = snr / (snr + 1)
    torch.testing.assert_close(loss(scale_v_like_noise=True), mse * scale, rtol=2e-4, atol=0)
    torch.testing.assert_close(loss(v_pred_like=0.3), mse + mse / scale * 0.3, rtol=2e-4, atol=0)
    # all three, after Min-SNR-5, in kohya's order
    raw_snr = snr.clone()
    raw_snr[0] = (lambda a: a / (1 - a))(kohya_snr(t)[1][0])  # (Min-SNR's own SNR is not capped)
    min_snr = torch.minimum(raw_snr, torch.tensor(5.0, dtype=torch.float64)) / (raw_snr + (kind == "v_prediction"))
    want = mse * min_snr
    want = want * scale
    want = want + want / scale * 0.3
    want = want / (snr + 1) if kind == "v_prediction" else want / snr.sqrt()
    got = denoising_loss(scheduler, pred, latents, noise, t, kind, 5.0,
                         options=LossOptions(debiased=True, scale_v_like_noise=True, v_pred_like=0.3)).double()
    torch.testing.assert_close(got, want, rtol=2e-4, atol=0)


@pytest.mark.parametrize("schedule", ["snr", "exponential", "constant"])
@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_huber_and_smooth_l1_are_kohyas_pseudo_huber_with_its_thresholds(loss_type, schedule):
    """kohya's `conditional_loss` with `get_huber_threshold_if_needed`'s threshold per timestep: huber 2c (sqrt(d^2 +
    c^2) - c), smooth_l1 2 (sqrt(d^2 + c^2) - c), mean over the pixels; snr (1 - C)/(1 + sigma)^2 + C (no scale),
    exponential exp(-alpha t) x scale with alpha = -ln(C)/1000, constant C x scale."""
    scheduler = sd_scheduler()
    pred, latents, noise, t = batch(1)
    c0, scale = 0.2, (1.0 if schedule == "snr" else 1.5)
    _, alpha_bar = kohya_snr(t)
    c = {"snr": (1 - c0) / (1 + ((1 - alpha_bar) / alpha_bar).sqrt()) ** 2 + c0,
         "exponential": torch.exp(-(-math.log(c0) / 1000) * t.double()) * scale,
         "constant": torch.full((4,), c0 * scale, dtype=torch.float64)}[schedule].view(-1, 1, 1, 1)
    d = (pred - noise).double()
    each = torch.sqrt(d ** 2 + c ** 2) - c
    want = ((2 * c * each) if loss_type == "huber" else 2 * each).mean(dim=(1, 2, 3))
    options = LossOptions(loss_type, schedule, c0, scale)
    got = denoising_loss(scheduler, pred, latents, noise, t, "epsilon", options=options).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, ((pred - noise) ** 2).mean(dim=(1, 2, 3)).double())
    l1 = denoising_loss(scheduler, pred, latents, noise, t, "epsilon", options=LossOptions("l1"))
    torch.testing.assert_close(l1, (pred - noise).abs().mean(dim=(1, 2, 3)))
    # with --alpha-mask's pixel weights, the weighted mean of the same per-pixel loss
    weight = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    masked = denoising_loss(scheduler, pred, latents, noise, t, "epsilon", pixel_weight=weight, options=options)
    per_pixel = (2 * c * each if loss_type == "huber" else 2 * each)
    want = (per_pixel * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * 4)
    torch.testing.assert_close(masked.double(), want, rtol=1e-5, atol=1e-7)


def test_the_sampler_draws_kohyas_noise_parts_after_what_it_always_drew():
    """Each part is drawn after every draw a run made before (those are unchanged), in kohya's order: the offset's
    strength (random: uniform fraction of X, one per batch) and normal numbers, the pyramid's levels (r uniform in
    [2, 4) per level, each level's noise at the size / r^i scaled up bilinearly, weighed discount^i, until a side
    is 1), then the perturbation (its strength, then its noise)."""
    shape, n, x, gamma = (4, 16, 12), 3, 0.1, 0.2
    plain = BatchSampler(2, 2, flip=True, seed=3).draw(n, shape, (0, 1000))
    options = NoiseOptions(offset_random_strength=True, multires_iterations=6, multires_discount=0.4, ip_gamma=gamma,
                           ip_random_strength=True)
    got = BatchSampler(2, 2, flip=True, seed=3, noise_offset=x, noise=options).draw(n, shape, (0, 1000))
    assert all(torch.equal(got[k], v) for k, v in plain.items() if k != "noise")
    again = BatchSampler(2, 2, flip=True, seed=3)  # (the same stream, up to the new parts)
    again.draw(n, shape, (0, 1000))
    g = torch.Generator()
    g.set_state(again.generator.get_state())
    u = torch.rand(1, generator=g)
    torch.testing.assert_close(got["noise"], plain["noise"] + u * x * torch.randn((n, 4, 1, 1), generator=g))
    levels, (h, w) = torch.zeros(n, *shape), shape[1:]
    up = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for i in range(6):
        r = torch.rand(1, generator=g).item() * 2 + 2
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        levels += up(torch.randn(n, 4, hn, wn, generator=g)) * 0.4 ** i
        if hn == 1 or wn == 1:
            break
    torch.testing.assert_close(got["multires"], levels)
    u = torch.rand(1, generator=g)
    torch.testing.assert_close(got["ip_noise"], u * gamma * torch.randn((n, *shape), generator=g))
    assert not torch.equal(got["ip_noise"], torch.zeros_like(got["ip_noise"]))
    # with an adaptive scale, the strength (a fraction too) and the normal numbers go to `composed_noise`
    adaptive = BatchSampler(2, 2, flip=True, seed=3, noise_offset=x, noise=NoiseOptions(
        offset_random_strength=True, adaptive_scale=0.5)).draw(n, shape, (0, 1000))
    g.set_state(again.generator.get_state())
    u = torch.rand(1, generator=g)
    assert torch.equal(adaptive["noise"], plain["noise"])
    torch.testing.assert_close(adaptive["offset"], (u * x).expand(n))
    torch.testing.assert_close(adaptive["offset_normal"], torch.randn((n, 4, 1, 1), generator=g))
    # plain strengths: X and gamma themselves, no fraction drawn
    fixed = BatchSampler(2, 2, flip=True, seed=3, noise_offset=x, noise=NoiseOptions(ip_gamma=gamma)).draw(
        n, shape, (0, 1000))
    g.set_state(again.generator.get_state())
    torch.testing.assert_close(fixed["noise"], plain["noise"] + x * torch.randn((n, 4, 1, 1), generator=g))
    torch.testing.assert_close(fixed["ip_noise"], gamma * torch.randn((n, *shape), generator=g))


def test_composed_noise_is_kohyas_adaptive_offset_then_pyramid_then_perturbation():
    """`apply_noise_offset` with an adaptive scale (offset max(0, X + A |channel mean of the latent|) per sample and
    channel), `pyramid_noise_like`'s rescaling to unit spread over the batch, and the perturbation added only to
    what the latents are noised with; with --buckets, each sample's part at its own size."""
    g = torch.Generator().manual_seed(4)
    n, x, a = 3, 0.1, -0.5
    noise, latents, multires, ip = (torch.randn(n, 4, 5, 6, generator=g) for _ in range(4))
    latents = latents + torch.tensor([0.3, -0.1, 0.0, 0.05]).view(1, 4, 1, 1)  # (a negative A clamps some at 0)
    z = torch.randn(n, 4, 1, 1, generator=g)
    parts = {"offset": torch.full((n,), x), "offset_normal": z, "multires": multires, "ip_noise": ip}
    got, into = composed_noise(noise, latents, parts, a)
    offset = torch.clamp(x + a * latents.mean(dim=(2, 3), keepdim=True).abs(), min=0)
    assert (offset == 0).any() and (offset > 0).any()
    want = noise + offset * z + multires
    want = want / want.std()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(into, want + ip)
    assert composed_noise(noise, latents, {"multires": multires}, 0.0)[1] is None  # (no perturbation: none)
    # buckets: lists, each sample its corner of the drawn shape
    corners = [(slice(None), slice(0, 5), slice(0, 6)), (slice(None), slice(0, 3), slice(0, 6)),
               (slice(None), slice(0, 5), slice(0, 4))]
    listed_noise = [noise[k][at] for k, at in enumerate(corners)]
    listed_latents = [latents[k][at] for k, at in enumerate(corners)]
    got, into = composed_noise(listed_noise, listed_latents, parts, a, corners)
    want = [x_ + torch.clamp(x + a * lat.mean(dim=(1, 2), keepdim=True).abs(), min=0) * z[k] + multires[k][at]
            for k, (x_, lat, at) in enumerate(zip(listed_noise, listed_latents, corners))]
    spread = torch.cat([w.flatten() for w in want]).std()
    for k, at in enumerate(corners):
        torch.testing.assert_close(got[k], want[k] / spread)
        torch.testing.assert_close(into[k], want[k] / spread + ip[k][at])


def test_the_defaults_run_the_ops_they_always_ran(sd1_dir, images, tmp_path, monkeypatch):
    """With every new setting off (the defaults, and the inert ones a kohya config may give with them: the huber
    settings with l2, a discount without iterations), no new code runs: the sampler draws what it always drew, the
    loss is called as it always was, and the vectors and losses are the run's made without the code."""
    assert LossOptions.of(TrainConfig()) is None and NoiseOptions.of(TrainConfig()) is None
    inert = dict(huber_c=0.3, huber_schedule="constant", huber_scale=2.0, multires_noise_discount=0.5)
    assert LossOptions.of(TrainConfig(**inert)) is None and NoiseOptions.of(TrainConfig(**inert)) is None
    run = dict(steps=3, vectors=2, noise_offset=0.1)
    default = train(config(images, tmp_path / "a", **run), model=fresh_model(sd1_dir), progress=False)

    def absent(*a, **k):
        raise AssertionError("kohya's noise or loss code ran in a default run")

    monkeypatch.setattr(train_module, "composed_noise", absent)
    monkeypatch.setattr(batches, "pyramid_levels", absent)  # (as `BatchSampler` looks it up)
    for name in ("kohya_weights", "huber_threshold", "pixel_loss"):  # (looked up where `denoising_loss` is)
        monkeypatch.setattr(losses, name, absent)
    real, calls = train_module.diffusion_loss, []

    def spy(*a, **k):
        calls.append(sorted(k))
        return real(*a, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    without = train(config(images, tmp_path / "b", **run, **inert), model=fresh_model(sd1_dir), progress=False)
    assert calls and all(keys == [] for keys in calls)  # (positional, as before: no input_noise, no options)
    for name in default.embedding.vectors:
        assert torch.equal(default.embedding.vectors[name], without.embedding.vectors[name])
    assert default.losses == without.losses


ALL_NOISE = dict(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05,
                 multires_noise_iterations=4, multires_noise_discount=0.3, ip_noise_gamma=0.1,
                 ip_noise_gamma_random_strength=True)
ALL_LOSS = dict(loss_type="huber", huber_schedule="exponential", huber_c=0.2, huber_scale=1.5,
                debiased_estimation_loss=True, v_pred_like_loss=0.2, min_snr_gamma=5.0)


@pytest.mark.parametrize("settings", [ALL_NOISE, ALL_LOSS, dict(ALL_NOISE, buckets=True, loss_type="smooth_l1")],
                         ids=["noise", "loss", "buckets"])
def test_resume_equals_an_uninterrupted_run_with_every_setting_on(settings, sd1_dir, images, tmp_path):
    """The noise parts come from each concept's seeded generator, whose state each checkpoint holds: a run stopped
    and resumed learns what the uninterrupted run learns, bit for bit; and each setting changes what is learned."""
    pictures = _mixed_pictures(tmp_path / "mixed") if settings.get("buckets") else images
    straight = train(config(pictures, tmp_path / "a", steps=6, save_every=2, **settings), model=fresh_model(sd1_dir),
                     progress=False)
    train(config(pictures, tmp_path / "b", steps=4, save_every=2, **settings), model=fresh_model(sd1_dir),
          progress=False)
    resumed = train(config(pictures, tmp_path / "b", steps=6, save_every=2, resume=True, **settings),
                    model=fresh_model(sd1_dir), progress=False)
    for name in straight.embedding.vectors:
        assert torch.equal(straight.embedding.vectors[name], resumed.embedding.vectors[name])
    assert straight.losses == resumed.losses
    plain = {k: v for k, v in settings.items() if k == "buckets"}
    without = train(config(pictures, tmp_path / "c", steps=6, **plain), model=fresh_model(sd1_dir), progress=False)
    assert straight.losses != without.losses
    with pytest.raises(ConfigError, match="cannot resume .* with different settings"):  # (the settings are the run's)
        changed = {k: v for k, v in settings.items() if k not in ("ip_noise_gamma", "ip_noise_gamma_random_strength",
                                                                 "v_pred_like_loss")}
        train(config(pictures, tmp_path / "b", steps=8, resume=True, **changed), model=fresh_model(sd1_dir),
              progress=False)


def test_the_perturbation_noises_the_latents_and_the_target_keeps_the_noise(sd2_dir, images, tmp_path,
                                                                            monkeypatch):
    """v-prediction: kohya's --ip_noise_gamma noises the latents with noise + gamma x more noise, and the velocity
    target is made of the noise alone."""
    from conftest import record_noise

    seen = []
    record_noise(monkeypatch, seen)
    train(config(images, tmp_path / "p", steps=1, batch=3, ip_noise_gamma=0.5), model=fresh_model(sd2_dir),
          progress=False)
    (_, noised), (_, target) = [s for s in seen if s[0] in ("add", "v")][:2]
    gap = noised - target  # (3, 4, h, w): 0.5 x normal noise
    assert gap.std().item() == pytest.approx(0.5, rel=0.25) and abs(gap.mean().item()) < 0.15
    seen.clear()
    train(config(images, tmp_path / "q", steps=1, batch=3), model=fresh_model(sd2_dir), progress=False)
    (_, noised), (_, plain_target) = seen[:2]
    assert torch.equal(noised, plain_target) and torch.equal(plain_target, target)  # (the target's noise unchanged)


@pytest.mark.parametrize("settings, message", [
    (dict(ip_noise_gamma=-0.1), r"ip_noise_gamma= must be a number >= 0 \(0: off; about 0.1 is typical\), got -0.1"),
    (dict(ip_noise_gamma=float("nan")), r"ip_noise_gamma= must be a number >= 0"),
    (dict(v_pred_like_loss=-1.0), r"v_pred_like_loss= must be a number >= 0"),
    (dict(multires_noise_iterations=-1), r"multires_noise_iterations= must be a whole number >= 0"),
    (dict(multires_noise_discount=float("inf")), r"multires_noise_discount= must be a number >= 0"),
    (dict(huber_c=0.0), r"huber_c= must be a number > 0"),
    (dict(huber_scale=-1.0), r"huber_scale= must be a number > 0"),
    (dict(adaptive_noise_scale=0.1), r"adaptive_noise_scale=0.1 adds to noise_offset's offset, which is off"),
    (dict(noise_offset_random_strength=True), r"noise_offset_random_strength= draws a fraction of noise_offset="),
    (dict(ip_noise_gamma_random_strength=True), r"ip_noise_gamma_random_strength= draws a fraction of "
                                                r"ip_noise_gamma="),
    (dict(loss_type="l3"), r"loss_type='l3' is not one of: l2, l1, huber, smooth_l1"),
    (dict(huber_schedule="cosine"), r"huber_schedule='cosine' is not one of: snr, exponential, constant"),
    (dict(loss_type="huber", huber_scale=2.0), r"huber_scale=2.0 scales the exponential and constant "
                                               r"huber_schedule's threshold; the snr schedule has no scale"),
])
def test_bad_values_are_refused_naming_the_flag(settings, message, images, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config(images, tmp_path / "o", **settings).validate()


def test_the_weights_for_the_other_kind_of_model_are_refused_before_the_first_step(sd1_dir, sd2_dir, images,
                                                                                   tmp_path):
    with pytest.raises(ConfigError, match="scale_v_pred_loss_like_noise_pred= weighs a v-prediction loss, and .* "
                                          "predicts epsilon: leave it out"):
        train(config(images, tmp_path / "a", scale_v_pred_loss_like_noise_pred=True), model=fresh_model(sd1_dir),
              progress=False)
    with pytest.raises(ConfigError, match="v_pred_like_loss=0.1 adds a v-prediction-like term to an epsilon loss, "
                                          "and .* predicts v_prediction"):
        train(config(images, tmp_path / "b", v_pred_like_loss=0.1), model=fresh_model(sd2_dir), progress=False)
    for out in ("a", "b"):
        assert not (tmp_path / out / "checkpoints").exists()
    train(config(images, tmp_path / "c", steps=2, scale_v_pred_loss_like_noise_pred=True), model=fresh_model(sd2_dir),
          progress=False)


def test_kohyas_names_are_answered_and_its_config_keys_read(tmp_path):
    from textinv.foreign import foreign_hint

    for name, flag in (("ip_noise_gamma", "--ip-noise-gamma"), ("loss_type", "--loss-type"),
                       ("multires_noise_iterations", "--multires-noise-iterations"),
                       ("debiased_estimation_loss", "--debiased-estimation-loss"),
                       ("adaptive_noise_scale", "--adaptive-noise-scale")):
        assert f"--{name} is kohya's name; textinv calls it {flag}" in foreign_hint(f"--{name}", "train")
    assert "a schedule rescaled for training alone" in foreign_hint("--zero_terminal_snr", "train")
    path = tmp_path / "kohya.toml"
    path.write_text('loss_type = "smooth_l1"\nhuber_schedule = "exponential"\nhuber_c = 0.15\nip_noise_gamma = 0.1\n'
                    'multires_noise_iterations = 6\nmultires_noise_discount = 0.3\ndebiased_estimation_loss = true\n')
    assert config_file_settings(TrainConfig, path) == {
        "loss_type": "smooth_l1", "huber_schedule": "exponential", "huber_c": 0.15, "ip_noise_gamma": 0.1,
        "multires_noise_iterations": 6, "multires_noise_discount": 0.3, "debiased_estimation_loss": True}


def test_each_concept_of_a_joint_run_draws_and_weighs_as_its_own_run(sd1_dir, tmp_path):
    """Each concept's noise parts come from its own generator and are put together over its own part of the batch
    (the pyramid's rescaling too), and the loss weights are per sample: a joint run's concept learns its own run's
    vectors."""
    from conftest import each_concept_alone, write_images

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    concepts = [f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"]
    common = dict(steps=4, batch=2, save_every=0, sample_every=0, log_every=2, lr=5e-2, max_grad_norm=0.05,
                  **ALL_NOISE, **ALL_LOSS)
    joint = train(TrainConfig(concepts=concepts, out=str(tmp_path / "joint"), **common), model=fresh_model(sd1_dir),
                  progress=False)
    for mine, alone in zip(joint.embeddings, each_concept_alone(sd1_dir, tmp_path, concepts, **common)):
        assert torch.allclose(mine.vectors["text_encoder"], alone.vectors["text_encoder"], atol=1e-5)


def test_a_1_over_snr_weight_is_refused_where_the_schedule_reaches_zero_snr(tmp_path, images):
    """On a zero-terminal-SNR schedule (alpha_bar 0 at its last timestep) an epsilon loss's 1/sqrt(SNR) and
    (SNR + 1)/SNR weights are infinite there: refused before the first step, naming the way round; drawn below it,
    the run is finite. The v-prediction debiased weight, 1/(SNR + 1), is finite there."""
    from textinv.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True)
    pipe.save_pretrained(tmp_path / "zero")
    assert load_model(tmp_path / "zero").noise_scheduler().alphas_cumprod[-1] == 0
    for settings, flag in ((dict(debiased_estimation_loss=True), "debiased_estimation_loss="),
                           (dict(v_pred_like_loss=0.1), "v_pred_like_loss=0.1")):
        with pytest.raises(ConfigError, match=f"{flag} weighs an epsilon loss by 1/SNR terms, and .* has zero SNR at "
                                              r"timestep 999 .* \(max_timestep=999\)"):
            train(config(images, tmp_path / "a", **settings), model=load_model(tmp_path / "zero"), progress=False)
        below = train(config(images, tmp_path / flag[:6], steps=2, max_timestep=999, **settings),
                      model=load_model(tmp_path / "zero"), progress=False)
        assert all(math.isfinite(loss) for _, loss in below.losses)
    v = build_tiny_pipeline("sd2")
    v.scheduler = DDPMScheduler.from_config(v.scheduler.config, rescale_betas_zero_snr=True)
    v.save_pretrained(tmp_path / "zero-v")
    train(config(images, tmp_path / "v", steps=2, debiased_estimation_loss=True), model=load_model(tmp_path / "zero-v"),
          progress=False)
