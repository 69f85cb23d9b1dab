"""Inpainting (`generate --init-image PICTURE --mask MASK`): the img2img pass of `refine` redrawing only where the
mask is white, as the A1111 web UI's img2img "Inpaint upload" draws it (modules/processing.py,
StableDiffusionProcessingImg2Img.init and sample).

The mask is read as the web UI reads an uploaded one (`read_mask`): its transparency where it has any, else its
luminance, each made black or white at 128; then inverted (`--mask-invert`, the web UI's "Inpaint not masked") and
blurred (`--mask-blur`, a Gaussian of that sigma, `blur`). Then, per picture:

- the latent mask is the blurred mask at the latents' size, rounded to 0 or 1, and the kept latents are held to
  the init picture's (`--inpaint-blend`, `BLENDS`) as the web UI's CFG denoiser holds them
  (modules/sd_samplers_cfg_denoiser.py): at every UNet call the kept part of the denoised estimate (the x0 the
  guided prediction implies) is the init latents themselves (`blend_denoised`), so the sampler's own steps carry
  it; with the timestep samplers (DDIM, PLMS, UniPC: sd_samplers_timesteps.py, mask_before_denoising) the UNet reads
  the init latents in the kept part of its input instead. After the last step the kept latents are the init
  picture's own (`keep_init`, the web UI's processing.py). `noised` is diffusers' way
  (StableDiffusionInpaintPipeline): after each step the kept latents are put back from the init picture's, noised
  to the next step's level with the pass's own noise (`blend_step`). An inpainting model is held either way too,
  as the web UI holds it (its CFG denoiser blends whatever the model);
- after decoding, the init picture is pasted back over the drawn one through the blurred mask (whole picture: the
  mask doubled, so the redrawn part is drawn up to the blur's middle), so a pixel the mask keeps is the init
  picture's exactly;
- `--inpaint-fill` is the web UI's "Masked content": original (the picture as it is), fill (the masked part
  painted from the colours around it, `fill`), latent-noise (the masked latents the seed's noise), latent-nothing
  (zeros there); the two latent ones, as the web UI's, encode the filled picture first, so the kept latents at the
  mask's edge do not see the masked part;
- `--inpaint-area masked` is the web UI's "Only masked": the mask's bounding box, widened by `--masked-padding`
  pixels and then to the proportions of the size drawn (`crop_box`), is cut out of the picture at its own size,
  redrawn at the run's size and pasted back, so a small part of a large picture is redrawn with all the pixels.

An inpainting model (a UNet of 9 input channels, sd-v1-5-inpainting) also reads the mask and the masked picture's
latents at every step, laid after the latents as diffusers' StableDiffusionInpaintPipeline and the web UI lay them:
[latents (4), mask (1), masked picture's latents (4)] (`conditioning_hook`).

>>> mask = Image.new("L", (100, 50)); mask.paste(255, (90, 10, 100, 20))
>>> crop_box(mask, 0, (20, 10))  # (its box, twice as wide as tall as the size drawn, inside the picture)
(80, 10, 100, 20)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .data import _fit, load_image_and_alpha, prepare_image
from .errors import ConfigError, DataError, setting

FILLS = ("original", "fill", "latent-noise", "latent-nothing")
BLENDS = ("denoised", "noised")  # the web UI's (the default) and diffusers' (`blend_denoised`, `blend_step`)
BLEND_LABEL = "Inpaint blend"  # textinv's field for noised (the web UI has no choice, so writes none)
# the diffusers schedulers the web UI's timestep samplers (DDIM, PLMS, UniPC) are made as: the web UI blends the
# UNet's input for them, the denoised estimate for its k-diffusion ones
TIMESTEP_SCHEDULERS = {"DDIMScheduler", "PNDMScheduler", "UniPCMultistepScheduler"}
AREAS = ("whole", "masked")
MASK_BLUR = 4  # the web UI's default Mask blur
MASKED_PADDING = 32  # and "Only masked padding, pixels"
# the web UI's "Masked content" labels (it writes none for original), its "Mask mode" when inverted and its
# "Inpaint area" for only masked (it writes neither otherwise)
FILL_LABELS = {"fill": "fill", "latent-noise": "latent noise", "latent-nothing": "latent nothing"}
INVERTED_LABEL = "Inpaint not masked"
ONLY_MASKED_LABEL = "Only masked"


@dataclass(frozen=True)
class Inpaint:
    """A mask and how it is applied: `mask` as `read_mask` gives it (L, 0 or 255, white redrawn), not yet inverted
    or blurred; the rest as the `--mask-*`, `--inpaint-*` and `--masked-padding` settings."""

    mask: Image.Image
    blur: int = MASK_BLUR
    fill: str = "original"
    invert: bool = False
    area: str = "whole"
    padding: int = MASKED_PADDING
    blend: str = "denoised"
    # for_picture's masks by size: every prompt and batch redraws the same pictures, and a big one's blur takes long
    _blurred: dict[tuple[int, int], Image.Image] = field(init=False, default_factory=dict, compare=False, repr=False)

    def for_picture(self, size: tuple[int, int]) -> Image.Image:
        """The mask fitted to a picture of `size` (W, H) (`fitted`), then blurred: the web UI's mask, at the
        picture's size; made once for each size."""
        if size not in self._blurred:
            self._blurred[size] = blur(self.fitted(size), self.blur)
        return self._blurred[size]

    def fitted(self, size: tuple[int, int]) -> Image.Image:
        """The mask fitted to a picture of `size` (W, H) as an init picture is fitted (its middle at the picture's
        proportions), made 0 or 255 again, and inverted if asked: 255 where the picture is redrawn."""
        mask = _fit(self.mask, size, True).point(lambda v: 255 if v > 128 else 0)
        return mask.point(lambda v: 255 - v) if self.invert else mask

    def check_fits(self, size: tuple[int, int], path: str, picture: str) -> None:
        """Refuse a mask that, fitted to a picture of `size` (W, H) (`fitted`), redraws none of it: one of other
        proportions whose redrawn part lies outside the middle the picture takes, or one whose redrawn part is too
        thin to outlast being scaled to the picture's size."""
        if self.fitted(size).getbbox() is None:
            w, h = self.mask.size
            raise ConfigError(f"{setting('mask', path)} ({w}x{h}) redraws nothing of {picture} "
                              f"({size[0]}x{size[1]}): fitted to the picture (its middle at the picture's proportions, "
                              f"scaled to its size, then black or white at 128) it keeps all of it; give a mask of the "
                              f"picture's own size")


def read_mask(path: str | Path, invert: bool = False) -> Image.Image:
    """The mask picture at `path` as an L picture of 0 (keep) and 255 (redraw), read as the web UI reads an
    uploaded mask: a picture with transparency (an RGBA or LA PNG with any pixel not opaque) by its transparency
    (opaque: redraw), any other by its luminance; above 128 is white. Refuses a file that is no picture and a mask
    with nothing to redraw (nothing white, or, with `invert`, nothing black).

    >>> read_mask("mask.png").mode  # doctest: +SKIP
    'L'
    """
    try:
        picture, alpha = load_image_and_alpha(path)
    except DataError as e:
        raise ConfigError(f"{setting('mask', path)} cannot be read: {e}; give a picture, white where it is "
                          f"redrawn") from None
    source = alpha if alpha is not None and alpha.getextrema() != (255, 255) else picture.convert("L")
    mask = source.point(lambda v: 255 if v > 128 else 0)
    redrawn = 0 if invert else 255
    if redrawn not in {v for v in mask.getextrema()}:
        said = [f"{setting('mask_invert')} redraws the black part"] * invert + _greys(source, invert, source is alpha)
        what = ("black" if invert else "white") + (f" ({'; '.join(said)})" if said else "")
        raise ConfigError(f"{setting('mask', path)} has nothing {what}: nothing would be redrawn; paint the part to "
                          f"redraw {'black' if invert else 'white'} (a transparent mask: opaque)")
    return mask


def _greys(source: Image.Image, invert: bool, alpha: bool) -> list[str]:
    """What a refused mask's greys are read as, where it has any (its `source`, L: the luminance, or with `alpha` the
    opacity, it is read by): a soft mask of greys at most 128 has grey to redraw where it is painted, yet all of it is
    read as black, as the web UI rounds an uploaded mask (and one of greys above 128, inverted, all as white)."""
    low, high = source.getextrema()
    grey, most, least = ("opacity", "highest", "lowest") if alpha else ("grey", "brightest", "darkest")
    if invert and 128 < low < 255:
        return [f"its {least} {grey}, {low} of 255, is read as white: only 128 and below is black"]
    if not invert and 0 < high <= 128:
        return [f"its {most} {grey}, {high} of 255, is read as black: only above 128 is white"]
    return []


def blur(mask: Image.Image, sigma: int) -> Image.Image:
    """`mask` (L) blurred as the web UI blurs it (OpenCV's GaussianBlur along each axis): a Gaussian of `sigma`
    pixels over 2 int(2.5 sigma + 0.5) + 1 of them, the edges mirrored without repeating the edge pixel, rounded
    back to 0-255. 0 leaves it as it is."""
    if sigma <= 0:
        return mask
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    values = np.array(mask, dtype=np.float64)
    half = size // 2
    # (numpy's "reflect" mirrors without the edge pixel, again and again where the picture is narrower than the pad)
    rows = torch.from_numpy(np.pad(values, ((0, 0), (half, half)), mode="reflect"))[None, None]
    values = F.conv2d(rows, kernel.view(1, 1, 1, size))[0, 0].numpy()
    columns = torch.from_numpy(np.pad(values, ((half, half), (0, 0)), mode="reflect"))[None, None]
    values = F.conv2d(columns, kernel.view(1, 1, size, 1))[0, 0]
    return Image.fromarray(values.round().clamp(0, 255).numpy().astype(np.uint8), "L")


def crop_box(mask: Image.Image, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (x1, y1, x2, y2) "Only masked" redraws: the bounding box of the (blurred) mask's non-black pixels,
    `padding` pixels wider on each side within the picture, then widened (or made taller) about its middle to the
    proportions of `size` (W, H), the size it is drawn at, kept inside the picture where it fits, as the web UI's
    masking.get_crop_region and expand_crop_region do."""
    width, height = mask.size
    x1, y1, x2, y2 = mask.getbbox() or (0, 0, width, height)  # (none left once fitted: all of it, as img2img)
    x1, y1, x2, y2 = max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, width), min(y2 + padding, height)
    if (x2 - x1) / (y2 - y1) > size[0] / size[1]:
        y1, y2 = _widened(y1, y2, int((x2 - x1) * size[1] / size[0] - (y2 - y1)), height)
    else:
        x1, x2 = _widened(x1, x2, int((y2 - y1) * size[0] / size[1] - (x2 - x1)), width)
    return x1, y1, x2, y2


def _widened(low: int, high: int, more: int, most: int) -> tuple[int, int]:
    """The span low..high `more` pixels longer, half on each side, moved back inside 0..`most` (cut to it when it is
    longer)."""
    low, high = low - more // 2, high + more - more // 2
    if high > most:
        low, high = low - (high - most), most
    if low < 0:
        low, high = 0, high - low
    return low, min(high, most)


def fill(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """The web UI's "fill" (masking.fill): the masked part of `picture` (RGB) painted with the colours around it,
    the kept part blurred ever less (radii 256 down to 0) and laid over it again and again, so each masked pixel
    takes the colour of the kept ones nearest it."""
    keep = mask.point(lambda v: 255 - v)
    # the kept part, see-through where masked; premultiplied (RGBa), so a half-kept pixel keeps its colour and the
    # see-through part adds none to the blur
    kept = Image.new("RGBa", picture.size)
    kept.paste(picture.convert("RGBA").convert("RGBa"), mask=keep)
    painted = Image.new("RGBA", picture.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        # blurred, then laid over what is painted so far
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            painted.alpha_composite(blurred)
    return painted.convert("RGB")


@dataclass
class Prepared:
    """One picture made ready for the pass: `picture`, what the pass redraws (the fitted picture, or the box's
    part at the drawn size), with its masked part filled as asked; `redraw` (1, h, w), 1 where the latents are
    redrawn; `pixel_mask` (1, H, W) of the drawn size, 1 where redrawn (an inpainting model's, unrounded); and
    what `paste_back` lays the drawn picture into: `base` (the init picture at the output's size), `overlay` (L:
    how much of the drawn picture shows), `box` (where it goes in `base`; None: all of it)."""

    picture: Image.Image
    redraw: torch.Tensor
    pixel_mask: torch.Tensor
    base: Image.Image
    overlay: Image.Image
    box: tuple[int, int, int, int] | None


def prepare(inpaint: Inpaint, picture: Image.Image, size: tuple[int, int], factor: int) -> Prepared:
    """`picture` (RGB, at its own size) and the mask made ready to redraw at `size` (W, H) with latents `factor`
    times smaller, as the web UI's whole-picture or only-masked inpainting."""
    mask = inpaint.for_picture(picture.size)
    if inpaint.area == "masked":
        box = crop_box(mask, inpaint.padding, size)
        base, overlay = picture, mask
        drawn, drawn_mask = _fit(picture.crop(box), size, True), _fit(mask.crop(box), size, True)
    else:
        box = None
        base, drawn_mask = _fit(picture, size, True), _fit(mask, size, True)
        drawn = base
        overlay = drawn_mask.point(lambda v: min(2 * v, 255))  # (the web UI doubles it: redrawn up to the middle)
    if inpaint.fill != "original":  # (latent-noise and latent-nothing too: the web UI fills all but original)
        drawn = fill(drawn, drawn_mask)
    latent_size = (size[0] // factor, size[1] // factor)
    # (the web UI resizes it as an RGB picture, Pillow's default bicubic, then rounds)
    redraw = np.array(drawn_mask.convert("RGB").resize(latent_size), dtype=np.float32)[..., 0] / 255
    pixel_mask = torch.from_numpy(np.array(drawn_mask, dtype=np.float32) / 255)[None]
    return Prepared(drawn, torch.from_numpy(redraw.round())[None], pixel_mask, base, overlay, box)


def paste_back(drawn: Image.Image, prepared: Prepared) -> Image.Image:
    """The drawn picture laid into the init picture: resized into its box (only masked), then the init picture
    laid over it where the mask keeps it (through the blurred mask, so the seam is soft)."""
    whole = prepared.base.copy()
    if prepared.box is not None:
        x1, y1, x2, y2 = prepared.box
        whole.paste(_fit(drawn, (x2 - x1, y2 - y1), True), (x1, y1))
    else:
        whole = drawn
    shown = np.array(prepared.overlay, dtype=np.float32)[..., None] / 255  # (H, W, 1): the drawn picture's share
    mixed = np.array(whole, dtype=np.float32) * shown + np.array(prepared.base, dtype=np.float32) * (1 - shown)
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8), "RGB")


def start_latents(latents: torch.Tensor, redraw: torch.Tensor, fill_as: str, noise: torch.Tensor) -> torch.Tensor:
    """The init latents (B, C, h, w) the pass starts from: with latent-noise the masked part is the pass's `noise`,
    with latent-nothing zeros, as the web UI's; `redraw` (B, 1, h, w): 1 where redrawn."""
    if fill_as == "latent-noise":
        return latents * (1 - redraw) + noise.to(latents) * redraw
    if fill_as == "latent-nothing":
        return latents * (1 - redraw)
    return latents


def blend_step(init: torch.Tensor, noise: torch.Tensor, redraw: torch.Tensor):
    """A `callback_on_step_end` for diffusers' img2img pipeline that puts the kept latents back after each step:
    the init latents `init` (B, C, h, w) noised with `noise` to the next step's level (the scheduler's own
    `add_noise`), after the last step as they are; `redraw` (B, 1, h, w): 1 where the pass draws."""
    def blend(pipe, i, t, tensors):
        latents = tensors["latents"]
        timesteps = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) - pipe.num_timesteps:]
        kept = init.to(latents)
        if i + 1 < len(timesteps):
            kept = pipe.scheduler.add_noise(kept, noise.to(latents), timesteps[i + 1:i + 2])
        mask = redraw.to(latents)
        return {"latents": kept * (1 - mask) + latents * mask}

    return blend


def keep_init(init: torch.Tensor, redraw: torch.Tensor):
    """A `callback_on_step_end` that makes the kept latents the init latents `init` (B, C, h, w) after the last
    step, as the web UI's img2img does once sampling ends (processing.py, StableDiffusionProcessingImg2Img.sample);
    `redraw` (B, 1, h, w): 1 where the pass draws."""
    def keep(pipe, i, t, tensors):
        latents = tensors["latents"]
        if i + 1 < pipe.num_timesteps:
            return {}
        mask = redraw.to(latents)
        return {"latents": init.to(latents) * (1 - mask) + latents * mask}

    return keep


def blend_denoised(init: torch.Tensor, redraw: torch.Tensor):
    """A function of the pipeline that hooks its UNet to hold the kept latents to `init` (B, C, h, w) at every call,
    as the web UI's CFG denoiser does, and gives the hooks' handles (`redraw` (B, 1, h, w): 1 where the pass draws).
    With a timestep sampler (`TIMESTEP_SCHEDULERS`) the UNet's input is `init` in the kept part, its output as it
    is; with any other the kept part of its output is made the prediction whose x0 is `init` (`kept_prediction`):
    guidance is affine, so the guided x0 is then the web UI's blended denoised estimate.

    A call's rows are the pictures' in turn (uncond and cond under guidance); the input blend runs before the
    prompt's own hooks (composable diffusion's adds rows), the output blend after them (it takes them back)."""
    def register(pipe) -> list:
        def blend_input(module, args, kwargs):
            if type(pipe.scheduler).__name__ not in TIMESTEP_SCHEDULERS:
                return None
            args = list(args)
            sample = args[0] if args else kwargs["sample"]
            rows = torch.arange(sample.shape[0]) % init.shape[0]
            mask = redraw[rows].to(sample)
            sample = init[rows].to(sample) * (1 - mask) + sample * mask
            if args:
                args[0] = sample
                return tuple(args), kwargs
            return tuple(args), {**kwargs, "sample": sample}

        def blend_output(module, args, kwargs, output):
            scheduler = pipe.scheduler  # (the pass's sampler, set after the hooks)
            if type(scheduler).__name__ in TIMESTEP_SCHEDULERS:
                return None
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            predicted = output[0] if isinstance(output, tuple) else output.sample
            rows = torch.arange(predicted.shape[0]) % init.shape[0]
            # (the pictures' latents come first in the input under any hook; an inpainting model's UNet reads the
            # mask and the masked picture's latents after them)
            x = sample[:init.shape[0], :init.shape[1]][rows]
            alpha, sigma = input_level(scheduler, timestep)
            blended = kept_prediction(predicted, x, init[rows], redraw[rows], alpha, sigma,
                                      scheduler.config.get("prediction_type", "epsilon"))
            return (blended, *output[1:]) if isinstance(output, tuple) else type(output)(sample=blended)

        return [pipe.unet.register_forward_pre_hook(blend_input, with_kwargs=True, prepend=True),
                pipe.unet.register_forward_hook(blend_output, with_kwargs=True)]

    return register


def input_level(scheduler, timestep) -> tuple[float, float]:
    """(alpha, sigma) of the latents the UNet reads at `timestep`, x = alpha x0 + sigma noise, as `scheduler`
    makes them and takes x0 back from its output. A k-diffusion scheduler (Euler, Heun, DPM2, ...) scales its
    latents x0 + s noise by 1 / sqrt(s^2 + 1) for the UNet, at the noise level s of the call (its
    `scale_model_input`, asked of a 1); the others hand the UNet their latents as they are: at their step's sigma
    (DPM++, UniPC) or at the timestep's own alpha_bar (DDIM, PLMS, DDPM)."""
    # (asked in float32: MPS has no float64, and DPM2 keeps its midpoint sigmas on the device)
    alpha = float(scheduler.scale_model_input(torch.ones(()), timestep))
    if alpha != 1:
        return alpha, (1 - alpha ** 2) ** 0.5
    if hasattr(scheduler, "sigmas"):
        index = scheduler.step_index  # (None at the first call: the step the scheduler will start from)
        if index is None:
            index = scheduler.begin_index if scheduler.begin_index is not None else \
                scheduler.index_for_timestep(timestep)
        s = float(scheduler.sigmas[index])
        return 1 / (1 + s ** 2) ** 0.5, s / (1 + s ** 2) ** 0.5
    alpha_bar = float(scheduler.alphas_cumprod[int(torch.as_tensor(timestep).flatten()[0])])
    return alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5


def kept_prediction(predicted: torch.Tensor, x: torch.Tensor, init: torch.Tensor, redraw: torch.Tensor,
                    alpha: float, sigma: float, prediction_type: str) -> torch.Tensor:
    """The UNet's prediction `predicted` (B, C, h, w) of latents `x` = alpha x0 + sigma noise, where `redraw`
    (B, 1, h, w) is below 1 replaced by the prediction whose x0 is `init`: epsilon (x - alpha x0) / sigma,
    v_prediction (alpha x - x0) / sigma, sample x0 itself. Each is affine in x0, so the x0 this gives is the blend
    `init` (1 - redraw) + x0 redraw, and blending cond and uncond before guidance is blending the guided one.

    >>> x = torch.randn(1, 4, 2, 2); kept_prediction(x, x, x, torch.zeros(1, 1, 2, 2), 0.6, 0.8, "sample").equal(x)
    True
    """
    init = init.to(torch.float32)
    if prediction_type == "epsilon":
        kept = (x.float() - alpha * init) / sigma
    elif prediction_type == "v_prediction":
        kept = (alpha * x.float() - init) / sigma
    elif prediction_type == "sample":
        kept = init
    else:
        raise ConfigError(f"inpainting cannot blend a prediction of type {prediction_type!r}: give "
                          f"--inpaint-blend noised")
    mask = redraw.to(torch.float32)
    return (kept * (1 - mask) + predicted.float() * mask).to(predicted.dtype)


def conditioning_hook(unet, pixel_masks: torch.Tensor, pixels: torch.Tensor, encode):
    """A hook giving an inpainting model's UNet (9 input channels) at each call the mask and the masked picture's
    latents after the latents, [latents, mask, masked latents], as diffusers' StableDiffusionInpaintPipeline and
    the web UI give them: the mask (B, 1, H, W) rounded to 0 or 1 and scaled to the latents' size (nearest), the
    picture (B, 3, H, W in [-1, 1]) grey (0) where redrawn, encoded (`encode`). A call's rows are the pictures' in
    turn (uncond and cond under guidance)."""
    mask = pixel_masks.round()
    masked = encode(pixels * (1 - mask))  # (B, 4, h, w)
    mask = F.interpolate(mask, size=masked.shape[-2:])  # (B, 1, h, w)
    extra = torch.cat([mask.to(masked), masked], dim=1)

    def add(module, args, kwargs):
        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[1] != 4:
            return None
        rows = torch.arange(sample.shape[0]) % extra.shape[0]
        sample = torch.cat([sample, extra[rows].to(sample)], dim=1)
        if args:
            args[0] = sample
        else:
            kwargs = {**kwargs, "sample": sample}
        return tuple(args), kwargs

    return unet.register_forward_pre_hook(add, with_kwargs=True)


def prepared_pixels(prepared: list[Prepared], size: tuple[int, int]) -> torch.Tensor:
    """The pictures the pass redraws (B, 3, H, W) in [-1, 1]."""
    return torch.stack([prepare_image(p.picture, 0, size=size) for p in prepared])
