"""The denoising loss of textual inversion: the captions' conditioning (`encode_captions`), the loss against the
prediction type's target (`denoising_loss`, `diffusion_loss`), Min-SNR weights (`loss_weights`) and kohya's loss
settings (`LossOptions`: --loss-type, the Huber schedules, the weights by timestep, and their checks).

Moved out of train.py, which keeps the run and its loop; the shapes pretraining and `memory.step_bytes` use them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .errors import ConfigError, setting
from .models import Model, encode_text


def encode_captions(model: Model, ids: list[torch.Tensor], clip_skip: int = 1) -> tuple[torch.Tensor,
                                                                                       torch.Tensor | None]:
    """The UNet's conditioning for training captions' ids (`CaptionBank`): `encode_text` of (B, 77) ids, one pass
    of each text encoder, as always; kohya's layout for the chunks of --max-token-length 150 or 225 ((B, n * 77),
    `long_caption_ids`): every chunk encoded on its own (`encode_text`: its `clip_skip`, SDXL's penultimate layers),
    then the first chunk's start state, every chunk's 75 token states, and the last chunk's last state (its end or
    padding) laid end to end, (B, 2 + 75n, C): the inner chunks' start and end states are left out, as sd-scripts'
    `get_hidden_states` and `get_hidden_states_sdxl` leave them out (library/train_util.py; strategy_sd.py,
    strategy_sdxl.py in newer versions). SDXL's pooled output is the first chunk's, as there. (Their SD 2.x branch
    means to copy a padding state over an empty chunk's end state, but compares an id with the end token's text,
    which is never equal: every family is laid out alike there, and so here.)

    >>> hidden, _ = encode_captions(model, [long_caption_ids(model.tokenizer, ["a dog"], 150)])  # doctest: +SKIP
    >>> hidden.shape  # doctest: +SKIP
    torch.Size([1, 152, 768])
    """
    width = model.tokenizer.model_max_length
    if ids[0].shape[-1] == width:
        return encode_text(model, ids, clip_skip)
    batch, n = ids[0].shape[0], ids[0].shape[-1] // width
    hidden, pooled = encode_text(model, [i.reshape(batch * n, width) for i in ids], clip_skip)  # (B * n, 77, C)
    hidden = hidden.reshape(batch, n, width, -1)
    hidden = torch.cat([hidden[:, 0, :1], hidden[:, :, 1:-1].flatten(1, 2), hidden[:, -1, -1:]], dim=1)
    return hidden, (pooled.reshape(batch, n, -1)[:, 0] if pooled is not None else None)


def loss_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str,
                 plus_one: bool = False) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting", 2023) for
    timesteps with these cumulative alphas.

    Measured on the error of the predicted clean latent, the plain epsilon loss weighs a timestep by SNR and the
    plain v loss by SNR + 1; Min-SNR caps that at `gamma`: weight min(SNR, gamma) / SNR for epsilon, and
    min(SNR, gamma) / (SNR + 1) for v. `plus_one` caps v's own SNR + 1 instead, min(SNR + 1, gamma) / (SNR + 1),
    which keeps full weight at the noisy end (SNR -> 0 on a zero-terminal-SNR schedule, where min(SNR, gamma)
    would weigh the last timesteps zero). Where SNR = 0 the epsilon weight is its limit, 1.
    """
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-12)
    if prediction_type == "v_prediction":
        return ((snr + 1) if plus_one else snr).clamp(max=gamma) / (snr + 1)
    return (gamma / snr.clamp(min=1e-12)).clamp(max=1.0)


@dataclass(frozen=True)
class LossOptions:
    """kohya's loss settings beyond --min-snr-gamma: the loss per latent pixel (`pixel_loss`) and the weights by
    timestep after Min-SNR's (`kohya_weights`). `of` gives None when all are off: the loss is then the plain
    squared error, computed as it always was."""

    loss_type: str = "l2"  # --loss-type
    huber_schedule: str = "snr"  # --huber-schedule
    huber_c: float = 0.1  # --huber-c
    huber_scale: float = 1.0  # --huber-scale
    debiased: bool = False  # --debiased-estimation-loss
    scale_v_like_noise: bool = False  # --scale-v-pred-loss-like-noise-pred
    v_pred_like: float = 0.0  # --v-pred-like-loss

    @classmethod
    def of(cls, config: TrainConfig) -> "LossOptions | None":
        options = cls(config.loss_type, config.huber_schedule, config.huber_c, config.huber_scale,
                      config.debiased_estimation_loss, config.scale_v_pred_loss_like_noise_pred,
                      config.v_pred_like_loss)
        on = options.loss_type != "l2" or options.weighted
        return options if on else None

    @property
    def weighted(self) -> bool:
        return bool(self.debiased or self.scale_v_like_noise or self.v_pred_like)


def check_loss_for(config: TrainConfig, prediction_type: str, source: str, alphas_cumprod: torch.Tensor,
                   timesteps: tuple[int, int]) -> None:
    """Refuse, once the model has loaded (its prediction type and schedule known), the loss weights that are for
    the other kind of model, as kohya's scripts refuse them, and those that would be infinite at a timestep drawn
    (`timesteps`, [low, high)): 1/SNR terms where the schedule's SNR is 0 (zero terminal SNR)."""
    if config.scale_v_pred_loss_like_noise_pred and prediction_type != "v_prediction":
        raise ConfigError(f"{setting('scale_v_pred_loss_like_noise_pred')} weighs a v-prediction loss, and {source} "
                          f"predicts {prediction_type}: leave it out (or give "
                          f"{setting('prediction_type', 'v_prediction')}, if the model is a v-prediction one read as "
                          f"epsilon)")
    if config.v_pred_like_loss and prediction_type == "v_prediction":
        raise ConfigError(f"{setting('v_pred_like_loss', config.v_pred_like_loss, 'g')} adds a v-prediction-like "
                          f"term to an epsilon loss, and {source} predicts v_prediction: leave it out (or use "
                          f"{setting('scale_v_pred_loss_like_noise_pred')}, which weighs a v loss like an epsilon "
                          f"one)")
    # (SNR 0: the last timestep of such a schedule)
    zero = (torch.nonzero(alphas_cumprod[timesteps[0]:timesteps[1]] == 0).flatten() + timesteps[0]).tolist()
    infinite = [named for named, on in ((setting("debiased_estimation_loss"), config.debiased_estimation_loss
                                         and prediction_type != "v_prediction"),
                                        (setting("v_pred_like_loss", config.v_pred_like_loss, "g"),
                                         config.v_pred_like_loss))
                if on]
    if zero and infinite:
        raise ConfigError(f"{infinite[0]} weighs an epsilon loss by 1/SNR terms, and {source}'s schedule has zero SNR "
                          f"at timestep {zero[0]} (zero terminal SNR), where the weight is infinite: leave it out, or "
                          f"draw below that timestep ({setting('max_timestep', zero[0])})")


SNR_CAP = 1000.0  # kohya's: SNR at timestep 0 is near 1,200 for SD (infinite on a schedule that starts at alpha 1)


def kohya_weights(alphas_cumprod: torch.Tensor, prediction_type: str, options: LossOptions) -> torch.Tensor:
    """The weights of kohya's loss options for timesteps with these cumulative alphas, (B,), each with the SNR
    capped at `SNR_CAP` as kohya caps it (applied after Min-SNR's, as kohya applies them):
    --scale-v-pred-loss-like-noise-pred SNR/(SNR + 1) (a v loss weighs a timestep SNR + 1 times the clean-latent
    error, an epsilon loss SNR times); --v-pred-like-loss X adds X times the loss weighed (SNR + 1)/SNR, a factor
    1 + X (SNR + 1)/SNR; --debiased-estimation-loss 1/sqrt(SNR), or for v-prediction 1/(SNR + 1) (Yu et al.,
    "Unmasking Bias in Diffusion Model Training", 2024).

    >>> a = torch.tensor([0.5])  # SNR 1
    >>> kohya_weights(a, "epsilon", LossOptions(v_pred_like=0.5, debiased=True)).tolist()
    [2.0]
    """
    snr = (alphas_cumprod / (1 - alphas_cumprod)).clamp(max=SNR_CAP)
    weight = torch.ones_like(snr)
    if options.scale_v_like_noise:
        weight = weight * snr / (snr + 1)
    if options.v_pred_like:
        weight = weight * (1 + options.v_pred_like * (snr + 1) / snr)
    if options.debiased:
        weight = weight / ((snr + 1) if prediction_type == "v_prediction" else snr.sqrt())
    return weight


def huber_threshold(scheduler, timesteps: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """kohya's pseudo-Huber threshold for each timestep, (B,): --huber-schedule snr (1 - C)/(1 + sigma)^2 + C with
    sigma = sqrt((1 - alpha_bar)/alpha_bar), from about 1 at the clean end to about C at the noisy end; exponential
    C^(t/T) x scale; constant C x scale (T: the schedule's timesteps, C: --huber-c, scale: --huber-scale)."""
    c = options.huber_c
    if options.huber_schedule == "snr":
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        sigma = ((1 - alphas) / alphas).sqrt()
        return (1 - c) / (1 + sigma) ** 2 + c
    if options.huber_schedule == "exponential":  # (kohya's exp(-alpha t) with alpha = -ln(C)/T)
        return c ** (timesteps.float() / scheduler.config.num_train_timesteps) * options.huber_scale
    return torch.full(timesteps.shape, c * options.huber_scale, device=timesteps.device)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, options: LossOptions | None, c=None) -> torch.Tensor:
    """The loss of each latent pixel, (B, C, h, w): --loss-type l2 (squared error), l1 (absolute error), huber
    2c (sqrt(d^2 + c^2) - c) or smooth_l1 2 (sqrt(d^2 + c^2) - c), d the error, c the sample's threshold `c` (B,)
    (`huber_threshold`): kohya's pseudo-Huber losses, which are ~d^2 for |d| << c and ~2c|d| (huber) or ~2|d|
    (smooth_l1) far from it.

    >>> pixel_loss(torch.tensor([[[[3.0]]]]), torch.zeros(1, 1, 1, 1), LossOptions("huber"), torch.tensor([4.0]))
    tensor([[[[8.]]]])
    """
    if options is None or options.loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if options.loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = c.view(-1, *[1] * (pred.dim() - 1))  # (B, 1, 1, 1)
    soft = torch.sqrt((pred - target) ** 2 + c ** 2) - c
    return 2 * c * soft if options.loss_type == "huber" else 2 * soft


def denoising_loss(scheduler, pred, latents, noise, timesteps, prediction_type: str, min_snr_gamma=None,
                   plus_one: bool = False, pixel_weight: torch.Tensor | None = None,
                   options: LossOptions | None = None) -> torch.Tensor:
    """Mean squared error of `pred` against the prediction type's target (epsilon or velocity), per sample (B,),
    times `loss_weights` when `min_snr_gamma` is given. Shared by textual inversion and the shapes pretraining.

    `pixel_weight` (B, 1, h, w) >= 0 makes each sample's mean a weighted mean over the latent pixels (`--alpha-mask`):
    a pixel of weight 0 adds nothing, and a sample's loss keeps the scale of the plain mean whatever its weights'
    total, so the learning rate means what it does without weights. `options`: kohya's other loss (`pixel_loss`)
    and weights (`kohya_weights`); None: the plain squared error."""
    target = scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
    if options is None:
        error = F.mse_loss(pred.float(), target, reduction="none")  # (B, C, h, w)
    else:
        c = huber_threshold(scheduler, timesteps, options) if options.loss_type in ("huber", "smooth_l1") else None
        error = pixel_loss(pred.float(), target, options, c)
    if pixel_weight is None:
        loss = error.mean(dim=(1, 2, 3))  # (B,)
    else:
        loss = (error * pixel_weight).sum(dim=(1, 2, 3)) / (pixel_weight.sum(dim=(1, 2, 3)) * error.shape[1])
    if min_snr_gamma:
        alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        loss = loss * loss_weights(alphas, min_snr_gamma, prediction_type, plus_one)
    if options is not None and options.weighted:
        loss = loss * kohya_weights(scheduler.alphas_cumprod.to(timesteps.device)[timesteps], prediction_type,
                                    options)
    return loss


def diffusion_loss(model: Model, scheduler, latents, noise, timesteps, input_ids: list[torch.Tensor],
                   min_snr_gamma=None, time_ids=None, clip_skip: int = 1, pixel_weight=None,
                   text: tuple | None = None, input_noise=None, options: LossOptions | None = None) -> torch.Tensor:
    """The denoising loss of one batch: the model's own target (epsilon or velocity), mean over pixels, (B,).

    `input_ids` holds one (B, 77) tensor per text encoder (B, n * 77 with --max-token-length: `encode_captions`);
    `time_ids` (B, 6) is SDXL's size/crop conditioning; `pixel_weight` (B, 1, h, w) weighs the latent pixels
    (`denoising_loss`); `text`, when given, is `encode_captions`'s result for `input_ids`, already computed;
    `input_noise`, when given, is what the latents are noised with instead of `noise`, which stays the target's
    (--ip-noise-gamma); `options`: kohya's loss settings (`denoising_loss`).
    """
    unet = model.unet
    # the frozen weights' dtype: their first parameter's, as `unet.dtype` reads it after a walk over every module
    # (two of those were ~3% of a training step on the bundled shapes model)
    dtype = next(unet.parameters()).dtype
    noisy = scheduler.add_noise(latents, noise if input_noise is None else input_noise, timesteps)  # (B, 4, h, w)
    # (B, 77, C), or (B, 2 + 75n, C) with --max-token-length [+ (B, C2) for SDXL]
    hidden, pooled = text or encode_captions(model, input_ids, clip_skip)
    extra = {}
    if pooled is not None:
        extra["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}
    pred = unet(noisy.to(dtype), timesteps, hidden.to(dtype), **extra).sample
    return denoising_loss(scheduler, pred, latents, noise, timesteps, model.prediction_type, min_snr_gamma,
                          pixel_weight=pixel_weight, options=options)
