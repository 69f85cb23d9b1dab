"""textinv: Textual Inversion (Gal et al., "An Image is Worth One Word", ICLR 2023) for Stable Diffusion.

Learn a new pseudo-word, a few vectors in the frozen text encoder's embedding space, from 3-10 pictures of a
concept, save it in the files the ecosystem reads, and generate new images with it.

From Python (the README's "Use from Python"): `textinv.models.load_model`, `textinv.config.TrainConfig` and
`GenerateConfig`, `textinv.train.train`, `textinv.generate.generate` (and `render`, pictures into memory),
`textinv.formats.load_embedding`, `save_embedding` and `convert`, `textinv.merge.merge`, `textinv.score.score`. They are not re-exported here: `textinv.train` and `textinv.generate` are modules,
which a function of the same name would shadow (or be shadowed by, once the module is imported), and this file stays
free of torch, which the command line's start-up imports only once it needs it.
"""

__version__ = "0.1.0"
