"""Tiny random Stable Diffusion pipelines built in code: for tests, benchmarks' CPU mode, and trying things offline.

They have the real classes and wiring of SD 1.x (epsilon prediction) and SD 2.x (v-prediction, OpenCLIP-style
GELU text encoder, linear attention projections) at a few hundred thousand parameters, so the whole textinv stack
runs on them in seconds without downloading anything.
"""

from __future__ import annotations

import functools

import torch

from . import models  # noqa: F401  (first: it imports diffusers' pipelines with transformers' import notes quiet)
from .vocab import build_tokenizer

from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

# Words the tiny tokenizer knows as single tokens: enough for the default templates' common words and test inits.
TINY_WORDS = (
    "a photo of the an in on with and dog cat toy object style painting rendering cropped clean dirty dark bright "
    "small large cool weird nice close up good one picture drawing sketch red blue green yellow purple orange pink "
    "black white"
).split()


def _own_generator(build):
    """`build` (seeding torch's global generator, so a seed gives the weights it always gave) made to put that
    generator back as it found it: a caller's own random numbers after building a tiny model are those they would
    have been without it, as after `train` or `generate`."""
    @functools.wraps(build)
    def built(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return build(*args, **kwargs)
    return built


def _text_config(tokenizer, width: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=16,
    )


@_own_generator
def build_tiny_xl_pipeline(seed: int = 0, widths: tuple[int, int] = (32, 64)) -> StableDiffusionXLPipeline:
    """A tiny random SDXL pipeline: two text encoders (the second with a projection), text-time conditioning.

    >>> pipe = build_tiny_xl_pipeline()
    >>> pipe.unet.config.cross_attention_dim
    96
    """
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(TINY_WORDS))
    tokenizer_2 = build_tokenizer(list(TINY_WORDS))
    tokenizer_2.pad_token = "!"  # as SDXL's second tokenizer pads: with '!', not the end-of-text token
    # the old CLIP configs' eos_token_id=2, as the real SDXL text encoders have: pooling must not rely on it
    text_encoder = CLIPTextModel(_text_config(tokenizer, widths[0], "quick_gelu"))
    config_2 = _text_config(tokenizer_2, widths[1], "gelu")
    config_2.eos_token_id = 2
    text_encoder_2 = CLIPTextModelWithProjection(config_2)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(widths), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + widths[1], transformer_layers_per_block=(1, 1),
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@_own_generator
def build_tiny_xl_refiner(base: StableDiffusionXLPipeline, seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """A tiny random SDXL refiner for `base` (`build_tiny_xl_pipeline`): its second text encoder and VAE, a UNet of
    its own that reads that encoder alone and 5 time ids (size, crop, aesthetic score), as SDXL's refiner is laid out.

    >>> build_tiny_xl_refiner(build_tiny_xl_pipeline()).config.requires_aesthetics_score
    True
    """
    torch.manual_seed(seed)
    width = base.text_encoder_2.config.hidden_size
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=5 * 8 + width,
        transformer_layers_per_block=(1, 1), norm_num_groups=16,
    )
    pipe = StableDiffusionXLImg2ImgPipeline(vae=base.vae, text_encoder=None, tokenizer=None,
                                            text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                                            unet=unet, scheduler=base.scheduler, requires_aesthetics_score=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@_own_generator
def build_tiny_pipeline(family: str = "sd1", seed: int = 0, width: int = 32) -> StableDiffusionPipeline:
    """A tiny random SD pipeline ("sd1": epsilon; "sd2": v-prediction), 16x16 pixels, 8x8x4 latents.

    >>> pipe = build_tiny_pipeline("sd2")
    >>> pipe.scheduler.config.prediction_type
    'v_prediction'
    """
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}")
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(TINY_WORDS))
    # (made in this order, so a seed gives the weights it always gave)
    text_encoder = _tiny_sd_text_encoder(tokenizer, width, sd2)
    unet = _tiny_sd_unet(width, sd2)
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=_tiny_sd_scheduler(sd2), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_sd_text_encoder(tokenizer, width: int, sd2: bool) -> CLIPTextModel:
    """A random CLIP text encoder `width` wide: SD 1.x's (quick GELU) or SD 2.x's OpenCLIP-style one (GELU)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def _tiny_sd_unet(width: int, sd2: bool) -> UNet2DConditionModel:
    """A random UNet over 8x8x4 latents reading a `width`-wide text encoder; SD 2.x's with linear projections."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2,
        norm_num_groups=16,
    )


def _tiny_sd_scheduler(sd2: bool) -> DDIMScheduler:
    """SD's DDIM scheduler: epsilon prediction, or SD 2.x's v-prediction."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1,
                         prediction_type="v_prediction" if sd2 else "epsilon")


@_own_generator
def build_tiny_clip(seed: int = 0, width: int = 32, image_size: int = 32):
    """A tiny random CLIP (both towers, the tiny tokenizer, an image processor at `image_size`): a stand-in for
    the judge `textinv score` loads (`CLIPModel` + tokenizer + `CLIPImageProcessor`), saved to a folder with
    `save_tiny_clip`.

    >>> model, tokenizer, processor = build_tiny_clip()
    >>> model.config.projection_dim
    16
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(TINY_WORDS))
    text = _text_config(tokenizer, width, "quick_gelu").to_dict()
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return model, tokenizer, processor


def save_tiny_clip(folder, seed: int = 0):
    """`build_tiny_clip` saved where `CLIPModel.from_pretrained(folder)` (and `textinv score --clip folder`) reads it."""
    model, tokenizer, processor = build_tiny_clip(seed)
    for part in (model, tokenizer, processor):
        part.save_pretrained(folder)
    return folder
