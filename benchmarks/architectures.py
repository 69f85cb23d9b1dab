"""Full-size Stable Diffusion architectures with random weights, built from their published configs (no hub).

Compute does not depend on weight values, so a random-weight SD 1.5 times exactly like the real one.
"""

from __future__ import annotations

import copy

import torch
from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from textinv.tiny import TINY_WORDS, build_tiny_pipeline, build_tiny_xl_pipeline
from textinv.vocab import build_tokenizer

# SD 1.5's published component configs (the values of its config.json files)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      prediction_type="epsilon", steps_offset=1, clip_sample=False)

# SDXL base 1.0's published component configs
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025)
SDXL_SCHEDULER = {**{k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"},  # (Euler has no clipping)
                  "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}

# Per-sample cost of one textual-inversion step at 512x512 (forward + backward to the inputs, no weight gradients):
# UNet forward 803 GFLOP, text encoder 13 GFLOP, backward about the same again (issue 4's arithmetic).
FLOP_PER_SAMPLE = {"sd15": 1.65e12, "sdxl": 13.6e12}  # SDXL at 1024x1024: UNet forward 6.76 TFLOP

RESOLUTION = {"sd15": 512, "sdxl": 1024}
ARCHITECTURES = ("tiny", "tiny-xl", "sd15", "sdxl")


def _text_encoder(tokenizer, cls=CLIPTextModel, **config):
    return cls(CLIPTextConfig(**config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id))


def build(arch: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A pipeline of architecture `arch` (one of ARCHITECTURES) with random weights, on `device`, frozen (no
    weight needs a gradient: textual inversion trains none of them; every benchmark runs them so)."""
    pipe = _built(arch, device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return pipe


def _built(arch: str, device: str, dtype: torch.dtype):
    if arch == "tiny":
        return build_tiny_pipeline("sd1").to(device, dtype)
    if arch == "tiny-xl":
        return build_tiny_xl_pipeline().to(device, dtype)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHITECTURES)}")
    tokenizer = build_tokenizer(list(TINY_WORDS), size=SD15_TEXT["vocab_size"])
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: a full-size UNet initialises in seconds on a GPU
        text_encoder = _text_encoder(tokenizer, **SD15_TEXT)
        if arch == "sd15":
            unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        else:
            text_encoder_2 = _text_encoder(tokenizer, CLIPTextModelWithProjection, **SDXL_TEXT_2)
            unet, vae = UNet2DConditionModel(**SDXL_UNET), AutoencoderKL(**SDXL_VAE)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDPMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=copy.deepcopy(tokenizer), unet=unet,
                                         scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))
    return pipe.to(device, dtype)
