"""Second passes over pictures, as `generate.render` draws them: `--init-image` (img2img: a given picture redrawn
with the prompt) and the web UI's hires fix (`--hires-scale`, or `--hires-width`/`--hires-height`: the prompt drawn
at --width x --height, enlarged, then redrawn at the larger size, which adds the detail the first size had no room
for). Each is a denoising pass that starts part of the way down the noise schedule, from a picture's latents with
the seed's noise added, instead of from pure noise (`--denoise`: how far up it starts).

What is here is what those passes share, each as the web UI computes it, so a picture's `parameters` text means
the same in both: its upscalers (`UPSCALERS`), the enlarged and cropped size (`hires_size`), how many steps a pass
runs of how long a schedule (`pass_steps`, refused before drawing where the model or sampler cannot run them:
`_pass_schedule`), and the pictures' latents (`encode`); and the hires fix's settings (`Hires`), checked before the
first pass draws (`_check_hires`). The passes themselves are drawn in `generate`; a refiner's hand-over is in
`refiner`.

>>> hires_size(512, 768, 2.0, None, None)
((1024, 1536), (0, 0))
>>> pass_steps(20, 0.7, hires=True), pass_steps(20, 0.75, hires=False)
((28, 20), (20, 16))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from .data import _scan
from .errors import ConfigError, setting
from .families import FAMILY_NAMES
from .samplers import check_pass, scheduler_for

if TYPE_CHECKING:  # (`config` imports this module, and `models` imports diffusers: seconds, not needed to read flags)
    from .models import Model


class Upscaler(NamedTuple):
    label: str  # the web UI's name, its "Hires upscaler"
    mode: str | None  # torch's interpolation of the latents; None: the decoded pictures are resized (`resample`)
    antialias: bool = False
    resample: int | None = None  # Pillow's filter for a picture upscaler


UPSCALERS = {
    "latent": Upscaler("Latent", "bilinear"),
    "latent-antialiased": Upscaler("Latent (antialiased)", "bilinear", True),
    "latent-bicubic": Upscaler("Latent (bicubic)", "bicubic"),
    "latent-bicubic-antialiased": Upscaler("Latent (bicubic antialiased)", "bicubic", True),
    "latent-nearest": Upscaler("Latent (nearest)", "nearest"),
    "latent-nearest-exact": Upscaler("Latent (nearest-exact)", "nearest-exact"),
    "lanczos": Upscaler("Lanczos", None, resample=Image.Resampling.LANCZOS),
    "nearest": Upscaler("Nearest", None, resample=Image.Resampling.NEAREST),
}
"""The hires fix's upscalers: the web UI's latent ones and its two plain picture resamplers. Its upscaling networks
(R-ESRGAN 4x+, 4x-UltraSharp, SwinIR, LDSR, ...) are separate downloads textinv does not run: `--again` enlarges
their pictures with Lanczos and says so, and --hires-upscaler refuses them, naming lanczos (`network_upscaler`). The web UI's "None" resizes with Lanczos too (it resizes what it does not
upscale), so it reads as lanczos."""
SPELLINGS = {**{name: name for name in UPSCALERS}, **{u.label.lower(): name for name, u in UPSCALERS.items()},
             "none": "lanczos"}
DEFAULT_UPSCALER = "latent"  # (the web UI's)
HIRES_DENOISE = 0.7  # the web UI's default "Denoising strength" for the hires fix
IMG2IMG_DENOISE = 0.75  # and for img2img
# the web UI's upscaling networks by their names' families and its "4x"/"x4" scale marks (ESRGAN_4x, R-ESRGAN 4x+,
# SwinIR 4x, LDSR, ScuNET GAN, DAT x4, 4x-UltraSharp and the other 4x_... model files)
_NETWORK = re.compile(r"esrgan|swinir|ldsr|scunet|ultrasharp|\bdat\b|\d+x(?![a-z])|\bx\d", re.IGNORECASE)


def network_upscaler(name: str) -> str | None:
    """What to say of `name` given as --hires-upscaler (after it) when it is one of the web UI's upscaling networks,
    which textinv does not run (None for any other name).

    >>> network_upscaler("lanczos") is None
    True
    """
    if name.strip().lower() in SPELLINGS or not _NETWORK.search(name):
        return None
    return (f"is the web UI's upscaling network, a separate download textinv does not run: give lanczos (as --again "
            f"reads a web UI picture enlarged by one; the redraw adds the detail) or one of textinv's others: "
            f"{', '.join(UPSCALERS)}")


def hires_size(width: int, height: int, scale: float | None, to_width: int | None, to_height: int | None,
               factor: int = 8) -> tuple[tuple[int, int], tuple[int, int]]:
    """The hires fix's enlarged size (W, H) for a first pass of `width` x `height`, and the latent columns and rows
    then cropped off (x, y) to fit it to `to_width` x `to_height`, as the web UI sizes it: by `scale`, or to one
    side given (the other at the first pass's proportions), or to both (enlarged to cover them, the overhang cut
    from the middle). `factor`: the VAE's pixels per latent. The final picture is `final_size`'s.

    >>> hires_size(512, 512, None, 1024, 768)
    ((1024, 1024), (0, 32))
    """
    crop = (0, 0)
    if not to_width and not to_height:
        return (int(width * scale), int(height * scale)), crop
    if to_width and to_height and width / height >= to_width / to_height:
        enlarged = (to_height * width // height, to_height)
    elif to_width:
        enlarged = (to_width, to_width * height // width)
    else:
        enlarged = (to_height * width // height, to_height)
    if to_width and to_height:
        crop = ((enlarged[0] - to_width) // factor, (enlarged[1] - to_height) // factor)
    return enlarged, crop


def final_size(enlarged: tuple[int, int], crop: tuple[int, int], factor: int = 8) -> tuple[int, int]:
    """The picture a hires pass draws (W, H): `hires_size`'s in whole latents, less the crop.

    >>> final_size((870, 870), (0, 0))
    (864, 864)
    """
    return tuple((side // factor - cut) * factor for side, cut in zip(enlarged, crop))


@dataclass(frozen=True)
class Hires:
    """The web UI's hires fix: the first pass enlarged by `scale`, or to `width` x `height` (one of them may be None:
    the first pass's proportions), with `upscaler` (`UPSCALERS`), then redrawn at `denoise` over `steps` sampling
    steps (None: as many as the first pass's) with `sampler` (None: the first pass's), for `prompt` and
    `negative_prompt` (already expanded; None: the first pass's), the web UI's Hires prompt and Hires negative
    prompt, at `guidance` (None: the first pass's; Forge's Hires CFG Scale), by `model` (None: the first pass's; the
    web UI's Hires checkpoint, loaded with `generate.hires_model`, the embeddings installed); `switch` (when given)
    is called before the second pass (`generate._hires_switch`: that pass's LoRAs, made active on the model that
    draws it)."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    denoise: float = HIRES_DENOISE
    upscaler: str = DEFAULT_UPSCALER
    sampler: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    model: Model | None = field(default=None, compare=False)
    switch: Callable[[], None] | None = field(default=None, compare=False)

    def sizes(self, width: int, height: int, factor: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(enlarged, crop, final) sizes for a first pass of `width` x `height` (`hires_size`)."""
        enlarged, crop = hires_size(width, height, self.scale, self.width, self.height, factor)
        return enlarged, crop, final_size(enlarged, crop, factor)


def upscale_latents(latents: torch.Tensor, enlarged: tuple[int, int], crop: tuple[int, int], upscaler: str,
                    factor: int = 8) -> torch.Tensor:
    """A latent upscaler's enlargement (B, C, h, w) -> (B, C, H', W') of `hires_size`'s size and crop."""
    how = UPSCALERS[upscaler]
    size = (enlarged[1] // factor, enlarged[0] // factor)
    return cropped(F.interpolate(latents.float(), size=size, mode=how.mode, antialias=how.antialias
                                 ).to(latents.dtype), crop)


def upscale_pictures(pictures: list[Image.Image], enlarged: tuple[int, int], upscaler: str,
                     factor: int = 8) -> list[Image.Image]:
    """A picture upscaler's enlargement of the first pass's pictures to `hires_size`'s size (in whole latents)."""
    size = tuple(side // factor * factor for side in enlarged)
    return [p.resize(size, resample=UPSCALERS[upscaler].resample) for p in pictures]


def cropped(latents: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """`latents` less `crop` (x, y) latent columns and rows, taken evenly from both sides (the odd one from the
    right and the bottom), as the web UI crops."""
    x, y = crop
    return latents[:, :, y // 2:latents.shape[2] - (y + 1) // 2, x // 2:latents.shape[3] - (x + 1) // 2]


def pass_steps(steps: int, denoise: float, hires: bool) -> tuple[int, int]:
    """(the steps of the schedule, the steps run: its last ones) of a pass at `denoise`, as the web UI counts them:
    the hires fix runs all `steps` of a schedule `1 / denoise` times as long (its "Hires steps"), img2img runs
    `int(denoise x steps) + 1` of `steps` (so denoise 1 runs them all). The web UI takes a denoise of 1 as 0.999."""
    denoise = min(denoise, 0.999)
    if hires:
        return max(int(steps / denoise), steps), steps
    return steps, min(int(denoise * steps) + 1, steps)


def strength(schedule: int, run: int) -> float:
    """The `strength` at which diffusers' img2img pipelines run the last `run` of `schedule` steps (they run
    int(schedule x strength)): midway between that count and the next, so no rounding can miss it.

    >>> [int(28 * strength(28, 20)), int(20 * strength(20, 20))]
    [20, 20]
    """
    return min((run + 0.5) / schedule, 1.0)


def same_latents(model: Model, other: Model) -> bool:
    """Whether `other` can go on with `model`'s latents as they are (a hires model, a refiner): both SDXL, or both
    SD 1.x/2.x, with the same VAE latent channels and scaling."""
    ours, theirs = model.vae.config, other.vae.config
    return (model.is_xl == other.is_xl and ours.latent_channels == theirs.latent_channels
            and ours.scaling_factor == theirs.scaling_factor)


def check_hires_model(model: Model, hires: Model) -> None:
    """Refuse a hires model (--hires-model) whose latents are not `model`'s (`same_latents`): the hires fix's second
    pass redraws the first pass's latents (enlarged) as they are, so both must be SDXL (not its refiner), or both
    SD 1.x/2.x with the same VAE latents. Its prediction type may differ: that pass samples with its own scheduler."""
    if hires.is_refiner or not same_latents(model, hires):
        raise ConfigError(f"{setting('hires_model', hires.source)} ({FAMILY_NAMES.get(hires.family, 'custom model')}) "
                          f"does not draw in the latents of {setting('model', model.source)} "
                          f"({FAMILY_NAMES.get(model.family, 'custom model')}): give a model of the same family (an "
                          f"SDXL model for SDXL, not its refiner; an SD 1.x/2.x model for SD 1.x/2.x)")


def _check_hires(model: Model, second_model: Model, hires: Hires, steps: int, sampler: str,
                 discard: bool = False) -> None:
    """Refuse the hires fix's second pass (by `second_model`) now, not once the first pass has drawn: its model, its
    schedule and sampler (`sampler`: the first pass's; `discard`: --discard-penultimate-sigma), its guidance."""
    check_hires_model(model, second_model)
    _pass_schedule(second_model, hires.steps or steps, hires.denoise, True, hires.sampler or sampler,
                   setting("hires_sampler" if hires.sampler else "sampler"), discard)
    if hires.sampler:
        scheduler_for(second_model.pipeline.scheduler, hires.sampler, flag=setting("hires_sampler"))
    if hires.guidance is not None and not (math.isfinite(hires.guidance) and hires.guidance >= 1):
        raise ConfigError(f"{setting('hires_guidance')} must be a finite number of at least 1, got {hires.guidance}")


def _pass_schedule(model: Model, steps: int, denoise: float, hires: bool, sampler: str,
                   sampler_flag: str | None = None, discard: bool = False) -> tuple[int, int]:
    """`pass_steps`'s (schedule, run) of a pass, its schedule refused where longer than the model's, and
    `sampler` (given as `sampler_flag`; `discard`: --discard-penultimate-sigma) where it would draw the pass short
    (`samplers.check_pass`)."""
    schedule, run = pass_steps(steps, denoise, hires)
    most = model.pipeline.scheduler.config.get("num_train_timesteps")
    name = "hires_steps" if hires else "steps"
    if most and schedule > most:
        raise ConfigError(f"{setting(name, steps)} at {setting('denoise', denoise)} runs the last of a schedule of "
                          f"{schedule} steps, more than the {most} noise levels {model.source} was trained with: give "
                          f"fewer {setting(name)} or a higher {setting('denoise')}")
    given = f"{setting(name, steps)} at {setting('hires_denoise' if hires else 'denoise', denoise, 'g')}"
    check_pass(model.pipeline.scheduler, sampler, schedule, run, given, sampler_flag, discard)
    return schedule, run


def start_size(picture: tuple[int, int], width: int | None, height: int | None, side: int,
               multiple: int = 8) -> tuple[int, int]:
    """The size (W, H) img2img draws a picture of size `picture` at: `width` x `height` when both are given (the
    picture cropped to their proportions), else the one given with the other at the picture's proportions, else
    the area of `side` x `side` (the model's own) at the picture's proportions; each side a multiple of `multiple`.

    >>> start_size((4000, 3000), None, None, 512), start_size((4000, 3000), 768, None, 512)
    ((584, 440), (768, 576))
    """
    w, h = picture
    if width and height:
        return width, height
    if width:
        return width, _multiple(width * h / w, multiple)
    if height:
        return _multiple(height * w / h, multiple), height
    scale = (side * side / (w * h)) ** 0.5
    return _multiple(w * scale, multiple, down=True), _multiple(h * scale, multiple, down=True)


def _multiple(pixels: float, multiple: int, down: bool = False) -> int:
    count = int(pixels // multiple) if down else round(pixels / multiple)
    return max(count, 1) * multiple


def init_pictures(init_image: str | None) -> list[Path | None]:
    """The pictures --init-image names, each redrawn with every prompt and seed: the file, or the pictures in the
    folder (not its subfolders, sorted by name, other files skipped with a warning, as training reads a folder);
    [None] without one."""
    if not init_image:
        return [None]
    path = Path(init_image).expanduser()
    if not path.is_dir():
        return [path]
    pictures, _ = _scan(path)
    if not pictures:
        raise ConfigError(f"{setting('init_image', init_image)} is a folder without pictures (its subfolders are not "
                          f"searched); give a picture, or a folder of them")
    return pictures


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) of pictures (B, 3, H, W) in [-1, 1], as diffusers' pipelines scale them: the mean of
    the VAE's distribution, not a draw from it, so the seed's noise is the only randomness of the pass (as the
    pipelines' own encoding would not leave it). A float16 VAE that needs float32 (SDXL's, `force_upcast`) runs
    in float32 for it, as the pipelines do."""
    config = vae.config
    upcast = vae.dtype == torch.float16 and config.get("force_upcast", False)
    dtype = vae.dtype
    if upcast:
        vae.to(torch.float32)
    try:
        mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode().float()
    finally:
        if upcast:
            vae.to(dtype)
    scaling = config.scaling_factor
    shift, spread = config.get("latents_mean"), config.get("latents_std")
    if shift is not None and spread is not None:  # (a VAE whose latents are also centred: as SDXL's pipelines do)
        shape = (1, -1, 1, 1)
        return (mean - torch.tensor(shift).view(shape).to(mean)) * scaling / torch.tensor(spread).view(shape).to(mean)
    return mean * scaling


def image_to_image(pipe, noise: torch.Tensor):
    """The img2img pipeline of a text-to-image one (SD or SDXL), sharing its modules as they are: nothing is copied
    or cast (diffusers' `from_pipe` casts every module to float32 unless told one dtype for all of them). It adds
    `noise` (B, C, h, w) to the latents it is given (their first timestep's worth), not noise of its own, so a pass
    draws the noise the web UI's would (`generate.seed_noise`: the seed's, or blended toward a variation seed's)."""
    import inspect

    import diffusers

    # (its own class: diffusers' AutoPipelineForImage2Image imports every pipeline it knows, 9 s on 2 cores)
    cls = (diffusers.StableDiffusionXLImg2ImgPipeline if "text_encoder_2" in pipe.components
           else diffusers.StableDiffusionImg2ImgPipeline)
    takes = inspect.signature(cls.__init__).parameters
    settings = {"requires_safety_checker": pipe.components.get("safety_checker") is not None,
                "add_watermarker": getattr(pipe, "watermark", None) is not None,
                "force_zeros_for_empty_prompt": pipe.config.get("force_zeros_for_empty_prompt", True),
                "requires_aesthetics_score": pipe.config.get("requires_aesthetics_score", False)}
    made = cls(**{k: v for k, v in {**pipe.components, **settings}.items() if k in takes})
    made.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))  # (textinv's loader turns it off)

    def noised(image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None, add_noise=True):
        # (what the pipelines' own prepare_latents does with latents it is given, but with this noise)
        latents = image.to(device=device, dtype=dtype)
        if latents.shape[0] != batch_size or not add_noise:
            raise ValueError(f"textinv's img2img pass takes one latent a picture, noised: got {latents.shape[0]} "
                             f"for {batch_size}")
        return made.scheduler.add_noise(latents, noise.to(device=device, dtype=dtype), timestep)

    made.prepare_latents = noised
    return made
