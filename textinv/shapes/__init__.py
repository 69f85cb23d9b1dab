"""The shapes world: textinv's own small world of 64x64 procedural scenes, for its embedded default model.

`world` draws, renders and captions scenes and defines the benchmark concepts; `probe` is the attribute-reading
CNN that judges generated pictures.
"""
