"""The A1111 web UI's image embedding's picture: its caption, and its second copy of the embedding, hidden in the
picture's pixels.

The web UI's embedding PNGs carry the embedding twice: in the "sd-ti-embedding" text chunk, and in two strips of
pixels added left and right of the picture, which survive an image host that strips text chunks (the web UI reads
them when the chunk is gone). The layout, as modules/textual_inversion/image_embedding.py writes and reads it
(insert_image_data_embed, extract_image_data_embed):

    stream   zlib (level 9) of the JSON of the embedding's dict, each tensor as {"TORCHTENSOR": nested list}
    nibbles  the stream's low nibbles make the left strip, its high nibbles the right one; each is repeated
             (np.resize) to a whole number of 3-channel pixel columns as high as the picture, laid row by row
    xor      each strip's cells, in that order, are xored with the low nibble of an LCG's bytes: seed 0,
             x = (1664525 x + 1013904223) mod 2**32, byte = x mod 255, started afresh for each strip
    look     the cells' high nibbles are free: the web UI draws dots shaded by the first vector's magnitudes
    picture  [left strip][1 black column][picture][1 black column][right strip], on black, RGB

Reading crops the black border, keeps the low nibbles, and takes the strips as what lies left of the first and right
of the last column whose low nibbles are all zero. zlib ignores the repeated tail.

The caption (`caption`, the web UI's caption_image_overlay, drawn before the strips are added) darkens the picture
toward its top and bottom and writes the embedding's name at the top, the checkpoint, its hash and the vectors and
steps along the bottom; it leaves the strips and black columns alone, so reading is the same.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

_LCG_A, _LCG_C, _LCG_M = 1664525, 1013904223, 2**32
_CHANNELS = 3
_MAX_JSON = 256 * 2**20  # far above any embedding's JSON (75 SDXL vectors: about 4 MB); a zlib bomb stops here


def lcg_bytes(count: int) -> np.ndarray:
    """The first `count` bytes of the web UI's LCG (seed 0), which each strip's nibbles are xored with.

    >>> lcg_bytes(3).tolist()
    [253, 242, 127]
    """
    states = np.array([_LCG_C], np.uint64)  # the first state, from seed 0
    a, c = _LCG_A, _LCG_C  # x -> a x + c mod 2**32 moves a state len(states) places on
    while len(states) < count:  # doubling: a million bytes in 0.1 s, where a loop takes 0.5 s
        # (a x + c < 2**64: no overflow in uint64)
        states = np.concatenate([states, (states * np.uint64(a) + np.uint64(c)) % np.uint64(_LCG_M)])
        a, c = a * a % _LCG_M, (a * c + c) % _LCG_M
    return (states[:count] % np.uint64(255)).astype(np.uint8)


def strip_columns(length: int, height: int) -> int:
    """How many pixel columns wide each strip is for a `length`-byte stream beside a picture `height` pixels high.
    The web UI rounds up to whole rows, then to whole 3-channel columns, each time adding a whole step when the
    count is already even (1000 bytes, 100 high: 1100 cells, then 1200, so 4 columns)."""
    cells = length + height - length % height
    cells += height * _CHANNELS - cells % (height * _CHANNELS)
    return cells // (height * _CHANNELS)


def hide(image, data: dict, first_vector):
    """`image` (PIL) widened by the two strips that carry `data` (the a1111 dict, JSON-encodable) as the web UI
    lays them; `first_vector` (floats) shades their dots.

    >>> hide(preview, {"string_to_param": {"*": {"TORCHTENSOR": [[0.1, 0.2]]}}}, [0.1, 0.2])  # doctest: +SKIP
    """
    from PIL import Image

    stream = np.frombuffer(zlib.compress(json.dumps(data).encode("utf-8"), 9), np.uint8)
    width, height = image.size
    shape = (height, strip_columns(len(stream), height), _CHANNELS)
    shades, key = _shades(first_vector), lcg_bytes(int(np.prod(shape))).reshape(shape) & 0x0F
    low = _strip(stream & 0x0F, key, shades)
    high = _strip(stream >> 4, key, shades[::-1])
    out = Image.new("RGB", (width + 2 * shape[1] + 2, height))
    out.paste(Image.fromarray(low, "RGB"), (0, 0))
    out.paste(image.convert("RGB"), (shape[1] + 1, 0))
    out.paste(Image.fromarray(high, "RGB"), (shape[1] + width + 2, 0))
    return out


def _shades(vector) -> np.ndarray:
    # the dots' grey levels: the first vector's magnitudes (up to 1024), the largest white, as the web UI shades them
    values = np.abs(np.asarray(vector, np.float64).ravel()[:1024])
    top = values.max() if values.size else 0.0
    return (values / top * 255).astype(np.uint8) if top > 0 else np.full(max(values.size, 1), 128, np.uint8)


def _strip(nibbles: np.ndarray, key: np.ndarray, shades: np.ndarray) -> np.ndarray:
    # np.resize repeats the stream to fill the strip, as the web UI's does; the dots go in the high nibbles
    cells = np.resize(nibbles, key.size).reshape(key.shape) ^ key
    return (cells | (_dots(key.shape[:2], shades)[..., None] & 0xF0)).astype(np.uint8)


def _dots(size: tuple, shades: np.ndarray) -> np.ndarray:
    """A (height, width) grey pattern of round dots on an 8-pixel grid, one shade per dot in turn; only its high
    nibble is used, so it is free to look like anything."""
    ys, xs = np.mgrid[:size[0], :size[1]]
    dot = (xs // 8) * ((size[0] + 7) // 8) + ys // 8  # numbered down each column of dots, then across
    inside = (xs % 8 - 3.5) ** 2 + (ys % 8 - 3.5) ** 2 <= 9
    return np.where(inside, shades[dot % len(shades)], 0).astype(np.uint8)


def find(image, object_hook=None) -> dict | None:
    """The dict the web UI hid in `image`'s pixels (JSON read with `object_hook`, which gets each tensor's
    {"TORCHTENSOR": nested list}), or None where the picture carries none (a preview, a photo, or one whose pixels
    were changed since: resized, saved lossy)."""
    pixels = np.asarray(image.convert("RGB"), np.uint8)
    pixels = _crop_black(pixels) & 0x0F
    empty = np.flatnonzero(pixels.sum(axis=(0, 2)) == 0)  # the black columns either side of the picture
    if len(empty) < 2:
        return None
    low, high = pixels[:, :empty[0]], pixels[:, empty[-1] + 1:]
    if low.shape != high.shape or low.size == 0:
        return None
    key = lcg_bytes(low.size).reshape(low.shape) & 0x0F
    stream = (((high ^ key) << 4) | (low ^ key)).astype(np.uint8).tobytes()
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(stream, _MAX_JSON)
        data = json.loads(text, object_hook=object_hook) if inflate.eof else None  # (not eof: cut short, or a bomb)
    except (zlib.error, ValueError):  # (UnicodeDecodeError is a ValueError)
        return None
    return data if isinstance(data, dict) else None


_INK = (255, 255, 255, 230)  # the web UI's text colour, drawn into the RGBA picture (its alpha is dropped later)
_FONT_SIZE, _LARGEST, _PADDING = 32, 72, 10


def caption(image, title: str, left: str, mid: str, right: str):
    """`image` (PIL) captioned as the web UI captions an embedding's picture (caption_image_overlay): darkened
    toward its top and bottom edges, `title` at the top left, `left`, `mid` and `right` along the bottom, each at
    its side or the middle; RGBA, as there. The web UI writes the title as "<NAME>", the footer as the checkpoint's
    name, "[its short hash]" and "Nv Ss" (vectors, steps). Its font file (Noto Sans) is not ours: Pillow's default
    font (scalable with FreeType) stands in, so the letters differ a little but sit and scale as there.

    >>> caption(preview, "<my-dog>", "v1-5-pruned", "[6ce0161689]", "2v 500s")  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    out = Image.alpha_composite(image.convert("RGBA"), Image.fromarray(_shade(image.size)))
    draw = ImageDraw.Draw(out)
    width, height = out.size
    # the title fills 3/4 of the width less 4 paddings; the footer, at one size, each text a third less a padding
    size = _fitted(draw, title, _FONT_SIZE, width * 0.75 - 4 * _PADDING)
    draw.text((_PADDING, _PADDING), title, anchor="lt", font=_font(size), fill=_INK)
    footer = _font(min([_fitted(draw, text, size, width / 3 - _PADDING) for text in (left, mid, right) if text]
                       or [size]))
    for x, text, anchor in ((_PADDING, left, "ls"), (width / 2, mid, "ms"), (width - _PADDING, right, "rs")):
        draw.text((x, height - _PADDING), text, anchor=anchor, font=footer, fill=_INK)
    return out


def _shade(size: tuple[int, int]) -> np.ndarray:
    """The web UI's darkening, (height, width, 4) RGBA: black, opaque by row y of h as the larger of 1 - cos(1.5 y/h)
    and 1 - cos(1.65 (h - y)/h), so the top rows (which reach past 1) are black, the bottom ones nearly, and the
    middle is dimmed by about a third."""
    width, height = size
    y = np.arange(height, dtype=np.float64)
    level = np.maximum(1 - np.cos(y / height * 1.5), 1 - np.cos((height - y) / height * 1.5 * 1.1))
    layer = np.zeros((height, width, 4), np.uint8)
    layer[..., 3] = np.minimum((level * 255).astype(np.int64), 255)[:, None]  # (Pillow clips the web UI's 275 to 255)
    return layer


def _fitted(draw, text: str, size: int, room: float) -> int:
    # the web UI's fit: the size scaled by room over the text's width at `size`, at most 72 (and, here, at least 1:
    # a picture too narrow for any text gave it a size below 1, which no font takes)
    right = draw.textbbox((0, 0), text, font=_font(size))[2]
    return max(1, min(int(size * room / right), _LARGEST)) if right > 0 else size


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:  # (Pillow before 10.1: one bitmap size)
        return ImageFont.load_default()


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    # the web UI's crop_black: keep the box of pixels whose three channels are all above 0
    lit = (pixels > 0).all(axis=2)
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if not len(rows):
        return pixels[:0, :0]
    return pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
