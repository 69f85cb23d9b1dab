"""Model families and the text-encoder widths that identify them.

An embedding's width says which model it fits: 768 for SD 1.x (CLIP ViT-L/14), 1024 for SD 2.x (OpenCLIP ViT-H),
768 + 1280 for SDXL (its two encoders). Our own small "shapes" model has a width of its own.
"""

from __future__ import annotations

# Pipeline component names of the text encoders, in order. SD 1.x/2.x have one, SDXL two.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

FAMILY_NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
}

# widths of (text_encoder[, text_encoder_2]) for each well-known family
FAMILY_WIDTHS = {
    "sd1": (768,),
    "sd2": (1024,),
    "sdxl": (768, 1280),
}


def family_for_widths(widths: tuple[int, ...]) -> str | None:
    """The family whose text encoders have these widths, or None.

    >>> family_for_widths((768, 1280))
    'sdxl'
    """
    for family, known in FAMILY_WIDTHS.items():
        if tuple(widths) == known:
            return family
    return None


# the width of the bundled shapes model's text encoder (textinv/shapes/model), named where widths are described
SHAPES_WIDTHS = (128,)


def describe_widths(widths: tuple[int, ...]) -> str:
    """Widths in words with the family they belong to, for error messages: '1024 (Stable Diffusion 2.x)'.

    >>> describe_widths((768,))
    '768 (Stable Diffusion 1.x)'
    """
    text = " + ".join(str(w) for w in widths)
    family = family_for_widths(widths)
    if family:
        return f"{text} ({FAMILY_NAMES[family]})"
    return f"{text} (the bundled shapes model)" if tuple(widths) == SHAPES_WIDTHS else \
        f"{text} (no known Stable Diffusion family)"
