"""textinv: Textual Inversion (Gal et al., "An Image is Worth One Word", ICLR 2023) for Stable Diffusion.

Learn a new pseudo-word, a few vectors in the frozen text encoder's embedding space, from 3-10 pictures of a
concept, save it in the files the ecosystem reads, and generate new images with it.
"""

__version__ = "0.1.0"
