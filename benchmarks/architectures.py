"""Full-size Stable Diffusion architectures with random weights, built from their published configs (no hub).

Compute does not depend on weight values, so a random-weight SD 1.5 times exactly like the real one.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from textinv.tiny import TINY_WORDS, build_tiny_pipeline
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

# Per-sample cost of one textual-inversion step at 512x512 (forward + backward to the inputs, no weight gradients):
# UNet forward 803 GFLOP, text encoder 13 GFLOP, backward about the same again (issue 4's arithmetic).
FLOP_PER_SAMPLE = {"sd15": 1.65e12}


def build(arch: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A pipeline of architecture `arch` ("sd15" or "tiny") with random weights, on `device`."""
    if arch == "tiny":
        return build_tiny_pipeline("sd1").to(device, dtype)
    if arch != "sd15":
        raise ValueError(f"unknown architecture {arch!r}: sd15 or tiny")
    tokenizer = build_tokenizer(list(TINY_WORDS), size=SD15_TEXT["vocab_size"])
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device, dtype)
