"""The shapes world: procedural 64x64 scenes, their captions, and the concepts the benchmark learns.

textinv's embedded default model is a small Stable Diffusion pipeline pretrained on this world, and its quality
benchmark judges Textual Inversion (Gal et al., ICLR 2023) on it: a concept here is something the world's words only
approximate (a hue between two named colours, a pattern at one angle, a held-out combination, a rendering style),
shown in 4-5 pictures, as in the paper's setting.

The file has five parts, top to bottom:
  1. attributes: the closed lists of shapes, colours, patterns, sizes, positions, backgrounds and styles;
  2. scenes: `ObjectSpec` and `Scene` (one picture, in names and numbers) and `SceneBatch` (many, as tensors);
  3. sampling: `sample_batch` draws whole batches of attribute tensors at once, never a held-out combination;
  4. rendering: `render` turns a batch into pixels with tensor ops only (signed distances on rotated grids);
  5. words: `caption` (varied, partial, always true), `describe` (the fullest), `VOCABULARY`, and the concepts.

>>> import torch
>>> batch = sample_batch(8, torch.Generator().manual_seed(0))
>>> render(batch).shape
torch.Size([8, 3, 64, 64])
"""

from __future__ import annotations

import colorsys
import math
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from textinv.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# 1. Attributes
# ---------------------------------------------------------------------------------------------------------------

RESOLUTION = 64
"""Default side of a rendered image in pixels. Lengths given in pixels below are pixels of a 64-pixel image."""

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon", "ring", "crescent")
"""Object shapes. Each is a signed distance function in a unit frame (it fits a circle of radius about 1). A diamond
is a rhombus (0.62 wide for 1 tall) so that no rotation of the square looks like it."""

COLORS = {
    # name: (hue in degrees, saturation, value). Hues are spaced at least 25 degrees apart so that the sampler's
    # jitter (+-5 degrees) never crosses into a neighbour; the gaps hold the in-between hues concepts use.
    "red": (0.0, 0.85, 0.90),
    "orange": (28.0, 0.90, 0.97),
    "yellow": (52.0, 0.90, 0.95),
    "green": (125.0, 0.75, 0.75),
    "cyan": (185.0, 0.85, 0.85),
    "blue": (220.0, 0.80, 0.90),
    "purple": (275.0, 0.65, 0.80),
    "pink": (325.0, 0.55, 0.95),
}
"""Named object colours, all hues (no white, black or gray objects), as HSV."""

COLOR_RGB = {name: tuple(colorsys.hsv_to_rgb(h / 360.0, s, v)) for name, (h, s, v) in COLORS.items()}
"""The RGB (floats in [0, 1]) of each named colour before jitter."""

PATTERNS = ("solid", "stripes", "dots", "checks")
"""Fills. Stripes, dots and checks have an angle (degrees, counter-clockwise from horizontal) and a period (pixels);
their second colour is a tint of the object colour on dark backgrounds and a shade of it on light ones."""

SIZES = {"small": 0.30, "medium": 0.41, "large": 0.52}
"""Object radius as a fraction of half the image side (a large object spans about half the image)."""

POSITIONS = {
    # name: anchor direction (x right, y down); the object centre is SPREAD times this, plus a small offset.
    "center": (0, 0),
    "left": (-1, 0),
    "right": (1, 0),
    "top": (0, -1),
    "bottom": (0, 1),
    "top-left": (-1, -1),
    "top-right": (1, -1),
    "bottom-left": (-1, 1),
    "bottom-right": (1, 1),
}
SPREAD = 0.44
"""How far from the centre the non-central positions sit, as a fraction of half the image side."""

BACKGROUNDS = {
    # Muted or dark, so every object colour stands out against every background.
    "white": (0.96, 0.96, 0.96),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.50, 0.50, 0.50),
    "cream": (0.94, 0.88, 0.74),
    "navy": (0.10, 0.13, 0.32),
    "maroon": (0.36, 0.08, 0.12),
}
"""Named background colours (RGB in [0, 1])."""

STYLES = ("flat", "outlined", "sketchy", "shaded")
"""Rendering styles, each with a strength in [0, 1]:
flat: plain anti-aliased fill (strength unused);
outlined: only an edge band (1.5-3 px wide, by strength) plus the pattern's marks, interior left as background;
sketchy: wobbly edges, a dark pencil stroke, crayon grain in the fill and paper grain everywhere (more by strength);
shaded: lit from the upper left (strength turns the light by up to 45 degrees either way) with a drop shadow."""

# Two-object scenes: the main object sits on the left or top (reading order: it is the one named first), the
# second object, always small and solid, at the mirrored place.
TWO_OBJECT_POSITIONS = ("left", "top", "top-left", "bottom-left")
MIRROR = {
    "center": "center", "left": "right", "right": "left", "top": "bottom", "bottom": "top",
    "top-left": "bottom-right", "bottom-right": "top-left", "top-right": "bottom-left", "bottom-left": "top-right",
}

HUE_JITTER = 5.0  # degrees either way around a named hue when sampling
PATTERN_PERIODS = {"small": (4.5, 6.0), "medium": (5.0, 7.5), "large": (5.5, 9.0)}
"""The sampler's range of pattern periods (pixels) for each size: small objects get fine patterns so that even a
small star shows a few stripes, dots or checks (a coarse pattern on it would look solid)."""
SCALE_JITTER = 0.05  # sizes vary by +-5 %
OFFSET_JITTER = 0.03  # positions vary by +-3 % of half the side
BACKGROUND_JITTER = 0.03

HELDOUT_COMBINATIONS = frozenset({
    # (shape, named colour, pattern) never drawn by `sample_batch(exclude_heldout=True)`, so the pretrained model has
    # seen each part but never the whole: the benchmark concepts below are built on them.
    ("star", "cyan", "solid"),
    ("hexagon", "yellow", "dots"),
    ("heart", "pink", "stripes"),
    ("cross", "blue", "checks"),
    ("ring", "purple", "dots"),
    ("crescent", "green", "stripes"),
})

_SHAPE_ID = {name: i for i, name in enumerate(SHAPES)}
_COLOR_NAMES = tuple(COLORS)
_COLOR_ID = {name: i for i, name in enumerate(_COLOR_NAMES)}
_PATTERN_ID = {name: i for i, name in enumerate(PATTERNS)}
_SIZE_NAMES = tuple(SIZES)
_SIZE_ID = {name: i for i, name in enumerate(_SIZE_NAMES)}
_POSITION_NAMES = tuple(POSITIONS)
_POSITION_ID = {name: i for i, name in enumerate(_POSITION_NAMES)}
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_ID = {name: i for i, name in enumerate(_BACKGROUND_NAMES)}
_STYLE_ID = {name: i for i, name in enumerate(STYLES)}

_HSV = torch.tensor([COLORS[c] for c in _COLOR_NAMES], dtype=torch.float64)  # (C, 3)
_BG_RGB = torch.tensor([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=torch.float32)  # (G, 3)
_ANCHORS = torch.tensor([POSITIONS[p] for p in _POSITION_NAMES], dtype=torch.float32)  # (P, 2)
_RADII = torch.tensor([SIZES[s] for s in _SIZE_NAMES], dtype=torch.float32)  # (S,)
_PERIOD_LO = torch.tensor([PATTERN_PERIODS[s][0] for s in _SIZE_NAMES])
_PERIOD_HI = torch.tensor([PATTERN_PERIODS[s][1] for s in _SIZE_NAMES])
_MIRROR_ID = torch.tensor([_POSITION_ID[MIRROR[p]] for p in _POSITION_NAMES])
_HELDOUT_IDS = torch.tensor(sorted((_SHAPE_ID[s], _COLOR_ID[c], _PATTERN_ID[p]) for s, c, p in HELDOUT_COMBINATIONS))


def _check_name(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}: choose one of {', '.join(choices)}")


def hue_of(rgb) -> float:
    """The hue of an RGB colour (floats in [0, 1]) in degrees.

    >>> round(hue_of((0.0, 0.5, 1.0)))
    210
    """
    return colorsys.rgb_to_hsv(*rgb)[0] * 360.0


def nearest_color(hue: float) -> str:
    """The named colour whose hue is closest (around the circle) to `hue` degrees.

    >>> nearest_color(170.0)
    'cyan'
    """
    gaps = [abs((hue - h + 180.0) % 360.0 - 180.0) for h, _, _ in COLORS.values()]
    return _COLOR_NAMES[int(np.argmin(gaps))]


def color_at_hue(hue: float) -> tuple[float, float, float]:
    """An RGB colour at any hue, with saturation and value blended between the two neighbouring named colours.

    Used for in-between concepts ("teal", "amber") so they look like members of the palette.

    >>> [round(x, 2) for x in color_at_hue(0.0)] == [round(x, 2) for x in COLOR_RGB["red"]]
    True
    """
    h, s, v = _blend_hsv(torch.tensor([float(hue)], dtype=torch.float64))
    return tuple(float(x) for x in _hsv_to_rgb(h, s, v)[0])


# ---------------------------------------------------------------------------------------------------------------
# 2. Scenes
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its names, plus the continuous values that make each picture of it different.

    `rgb` (floats in [0, 1]) is the exact colour; None means the named colour as it is. `color` may be left out when
    `rgb` is given: it becomes the nearest named hue.

    >>> ObjectSpec("star", rgb=(0.1, 0.75, 0.6)).color
    'cyan'
    """

    shape: str
    color: str | None = None
    rgb: tuple[float, float, float] | None = None
    pattern: str = "solid"
    pattern_angle: float = 0.0  # degrees, counter-clockwise from horizontal
    pattern_period: float = 7.0  # pixels (of a 64-pixel image)
    size: str = "medium"
    scale: float = 1.0  # multiplies the size's radius
    position: str = "center"
    offset: tuple[float, float] = (0.0, 0.0)  # added to the position, in half-sides (x right, y down)
    rotation: float = 0.0  # degrees, counter-clockwise

    def __post_init__(self):
        _check_name("shape", self.shape, SHAPES)
        _check_name("pattern", self.pattern, PATTERNS)
        _check_name("size", self.size, SIZES)
        _check_name("position", self.position, POSITIONS)
        if self.rgb is not None:
            if len(self.rgb) != 3 or not all(0.0 <= float(x) <= 1.0 for x in self.rgb):
                raise ConfigError(f"rgb {self.rgb!r} is not three floats in [0, 1]; scale 0-255 values by 1/255")
            object.__setattr__(self, "rgb", tuple(float(x) for x in self.rgb))
        if self.color is None:
            if self.rgb is None:
                raise ConfigError(f"a {self.shape} needs a color name or an rgb value")
            object.__setattr__(self, "color", nearest_color(hue_of(self.rgb)))
        _check_name("color", self.color, COLORS)
        if not self.pattern_period > 0:
            raise ConfigError(f"pattern_period must be positive pixels, got {self.pattern_period}")
        if not self.scale > 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")

    @property
    def exact_rgb(self) -> tuple[float, float, float]:
        """The colour drawn: `rgb`, or the named colour's."""
        return self.rgb if self.rgb is not None else COLOR_RGB[self.color]

    @property
    def hue(self) -> float:
        """Hue of the drawn colour in degrees."""
        return hue_of(self.exact_rgb)


@dataclass(frozen=True)
class Scene:
    """One picture: a main object, maybe a second one, a background and a style.

    `seed` drives the pixel noise of the sketchy style, so a scene always renders to the same pixels.

    >>> scene = Scene(ObjectSpec("star", "red"), background="navy")
    >>> render_pil(scene).size
    (64, 64)
    """

    obj: ObjectSpec
    background: str = "white"
    background_rgb: tuple[float, float, float] | None = None  # None: the named background as it is
    style: str = "flat"
    style_strength: float = 0.5
    second: ObjectSpec | None = None
    seed: int = 0

    def __post_init__(self):
        _check_name("background", self.background, BACKGROUNDS)
        _check_name("style", self.style, STYLES)
        if not 0.0 <= self.style_strength <= 1.0:
            raise ConfigError(f"style_strength must be in [0, 1], got {self.style_strength}")
        if not 0 <= int(self.seed) < 2**31:
            raise ConfigError(f"seed must be in [0, 2**31), got {self.seed}")

    @classmethod
    def random(cls, rng: np.random.Generator | int | None = None, **kwargs) -> "Scene":
        """A random scene drawn as `sample_batch` draws them (keyword arguments go to it).

        >>> Scene.random(0) == Scene.random(0)
        True
        """
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return sample_batch(1, generator, **kwargs).scenes()[0]


@dataclass
class ObjectBatch:
    """The objects of a batch as tensors, one row per scene (class ids as int64, the rest float32)."""

    shape: torch.Tensor  # (B,) int64 index into SHAPES
    color: torch.Tensor  # (B,) int64 index into COLORS (the named colour, for labels and captions)
    rgb: torch.Tensor  # (B, 3) the drawn colour
    pattern: torch.Tensor  # (B,) int64 index into PATTERNS
    pattern_angle: torch.Tensor  # (B,) degrees
    pattern_period: torch.Tensor  # (B,) pixels of a 64-pixel image
    size: torch.Tensor  # (B,) int64 index into SIZES
    scale: torch.Tensor  # (B,)
    position: torch.Tensor  # (B,) int64 index into POSITIONS
    offset: torch.Tensor  # (B, 2)
    rotation: torch.Tensor  # (B,) degrees

    def index(self, idx) -> "ObjectBatch":
        return ObjectBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device) -> "ObjectBatch":
        return ObjectBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def center(self) -> torch.Tensor:
        """(B, 2) object centres in half-sides, x right, y down."""
        return _ANCHORS.to(self.offset.device)[self.position] * SPREAD + self.offset

    def radius(self) -> torch.Tensor:
        """(B,) object radii in half-sides."""
        return _RADII.to(self.scale.device)[self.size] * self.scale


@dataclass
class SceneBatch:
    """Many scenes as tensors: what the renderer and the probe's training read. Rows without a second object keep
    placeholder values in `second` (ignored, as `has_second` is False there)."""

    obj: ObjectBatch
    second: ObjectBatch
    has_second: torch.Tensor  # (B,) bool
    background: torch.Tensor  # (B,) int64 index into BACKGROUNDS
    background_rgb: torch.Tensor  # (B, 3)
    style: torch.Tensor  # (B,) int64 index into STYLES
    style_strength: torch.Tensor  # (B,)
    seed: torch.Tensor  # (B,) int64, the noise seed

    def __len__(self) -> int:
        return int(self.seed.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seed.device

    def to(self, device) -> "SceneBatch":
        return self._map(lambda t: t.to(device), lambda o: o.to(device))

    def index(self, idx) -> "SceneBatch":
        """The scenes at `idx` (a slice, an index tensor or a bool mask)."""
        return self._map(lambda t: t[idx], lambda o: o.index(idx))

    def _map(self, fn, obj_fn) -> "SceneBatch":
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        return SceneBatch(**{k: obj_fn(v) if isinstance(v, ObjectBatch) else fn(v) for k, v in kwargs.items()})

    @classmethod
    def from_scenes(cls, scenes: list[Scene], device="cpu") -> "SceneBatch":
        """Stack `Scene`s into tensors."""
        if not scenes:
            raise ConfigError("no scenes to render: pass at least one Scene")
        placeholder = ObjectSpec("circle", "red")
        objs = [s.obj for s in scenes]
        seconds = [s.second or placeholder for s in scenes]
        f32 = dict(dtype=torch.float32, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        return cls(
            obj=_stack_objects(objs, device),
            second=_stack_objects(seconds, device),
            has_second=torch.tensor([s.second is not None for s in scenes], dtype=torch.bool, device=device),
            background=torch.tensor([_BACKGROUND_ID[s.background] for s in scenes], **i64),
            background_rgb=torch.tensor(
                [s.background_rgb or BACKGROUNDS[s.background] for s in scenes], **f32),
            style=torch.tensor([_STYLE_ID[s.style] for s in scenes], **i64),
            style_strength=torch.tensor([s.style_strength for s in scenes], **f32),
            seed=torch.tensor([int(s.seed) for s in scenes], **i64),
        )

    def scenes(self) -> list[Scene]:
        """The batch as `Scene`s (exact values kept, so the scenes render to the same pixels)."""
        cpu = self.to("cpu")
        objs, seconds = _unstack_objects(cpu.obj), _unstack_objects(cpu.second)
        has, bg, bg_rgb = cpu.has_second.tolist(), cpu.background.tolist(), cpu.background_rgb.tolist()
        style, strength, seed = cpu.style.tolist(), cpu.style_strength.tolist(), cpu.seed.tolist()
        return [
            Scene(obj=objs[i], background=_BACKGROUND_NAMES[bg[i]], background_rgb=tuple(bg_rgb[i]),
                  style=STYLES[style[i]], style_strength=strength[i], second=seconds[i] if has[i] else None,
                  seed=seed[i])
            for i in range(len(cpu))
        ]

    def labels(self) -> dict[str, torch.Tensor]:
        """What the attribute probe learns to read, as tensors: class ids, hue in degrees, stripe angle in degrees
        (mod 180, meaningful where the pattern is stripes), and the second object's shape and colour (-1 if none)."""
        none = torch.full_like(self.second.shape, -1)
        return {
            "shape": self.obj.shape, "color": self.obj.color, "hue": rgb_to_hue(self.obj.rgb),
            "pattern": self.obj.pattern, "stripe_angle": self.obj.pattern_angle % 180.0,
            "size": self.obj.size, "position": self.obj.position, "background": self.background,
            "style": self.style, "has_second": self.has_second.long(),
            "second_shape": torch.where(self.has_second, self.second.shape, none),
            "second_color": torch.where(self.has_second, self.second.color, none),
        }


def _stack_objects(objs: list[ObjectSpec], device) -> ObjectBatch:
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return ObjectBatch(
        shape=torch.tensor([_SHAPE_ID[o.shape] for o in objs], **i64),
        color=torch.tensor([_COLOR_ID[o.color] for o in objs], **i64),
        rgb=torch.tensor([o.exact_rgb for o in objs], **f32),
        pattern=torch.tensor([_PATTERN_ID[o.pattern] for o in objs], **i64),
        pattern_angle=torch.tensor([o.pattern_angle for o in objs], **f32),
        pattern_period=torch.tensor([o.pattern_period for o in objs], **f32),
        size=torch.tensor([_SIZE_ID[o.size] for o in objs], **i64),
        scale=torch.tensor([o.scale for o in objs], **f32),
        position=torch.tensor([_POSITION_ID[o.position] for o in objs], **i64),
        offset=torch.tensor([o.offset for o in objs], **f32),
        rotation=torch.tensor([o.rotation for o in objs], **f32),
    )


def _unstack_objects(b: ObjectBatch) -> list[ObjectSpec]:
    cols = {f.name: getattr(b, f.name).tolist() for f in fields(b)}
    return [
        ObjectSpec(shape=SHAPES[cols["shape"][i]], color=_COLOR_NAMES[cols["color"][i]], rgb=tuple(cols["rgb"][i]),
                   pattern=PATTERNS[cols["pattern"][i]], pattern_angle=cols["pattern_angle"][i],
                   pattern_period=cols["pattern_period"][i], size=_SIZE_NAMES[cols["size"][i]],
                   scale=cols["scale"][i], position=_POSITION_NAMES[cols["position"][i]],
                   offset=tuple(cols["offset"][i]), rotation=cols["rotation"][i])
        for i in range(len(cols["shape"]))
    ]


# ---------------------------------------------------------------------------------------------------------------
# 3. Sampling
# ---------------------------------------------------------------------------------------------------------------


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) hue degrees, saturation, value -> (N, 3) RGB, the usual piecewise-linear formula."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device) + h[:, None] / 60.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3) RGB -> (N,) hue in degrees [0, 360); gray gets 0."""
    r, g, b = rgb.unbind(-1)
    mx, mn = rgb.max(-1).values, rgb.min(-1).values
    c = (mx - mn).clamp_min(1e-8)
    h = torch.where(mx == r, ((g - b) / c) % 6.0, torch.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return (h * 60.0) % 360.0


def _blend_hsv(hue: torch.Tensor):
    """Saturation and value at any hue, blended linearly between the two named colours around it."""
    hues = _HSV[:, 0].to(hue.dtype)
    order = torch.argsort(hues)
    hs, ss, vs = hues[order], _HSV[order, 1].to(hue.dtype), _HSV[order, 2].to(hue.dtype)
    hue = hue % 360.0
    hi = torch.searchsorted(hs, hue, right=True) % len(hs)  # next named hue going up (wraps to red)
    lo = (hi - 1) % len(hs)
    span = (hs[hi] - hs[lo]) % 360.0
    t = ((hue - hs[lo]) % 360.0) / span
    return hue, ss[lo] + t * (ss[hi] - ss[lo]), vs[lo] + t * (vs[hi] - vs[lo])


def _nearest_color_ids(hue: torch.Tensor) -> torch.Tensor:
    gaps = ((hue[:, None] - _HSV[:, 0].to(hue.dtype)[None] + 180.0) % 360.0 - 180.0).abs()
    return gaps.argmin(1)


def _uniform(n, lo, hi, g) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _sample_colors(n: int, g: torch.Generator, free_hue_prob: float):
    """Named colours with jitter, or (with probability `free_hue_prob`) any hue, labelled by the nearest name."""
    named = torch.randint(len(COLORS), (n,), generator=g)
    jitter = _uniform(n, -HUE_JITTER, HUE_JITTER, g).double()
    free = torch.rand(n, generator=g) < free_hue_prob
    free_hue = _uniform(n, 0.0, 360.0, g).double()
    hue = torch.where(free, free_hue, _HSV[named, 0] + jitter) % 360.0
    _, s, v = _blend_hsv(hue)
    s = torch.where(free, s, _HSV[named, 1]) + _uniform(n, -0.05, 0.05, g).double()
    v = torch.where(free, v, _HSV[named, 2]) + _uniform(n, -0.05, 0.05, g).double()
    color = torch.where(free, _nearest_color_ids(hue), named)
    return color, _hsv_to_rgb(hue, s.clamp(0, 1), v.clamp(0, 1)).float()


def _heldout_mask(shape, color, pattern) -> torch.Tensor:
    key = (shape * len(COLORS) + color) * len(PATTERNS) + pattern
    ids = _HELDOUT_IDS
    held = (ids[:, 0] * len(COLORS) + ids[:, 1]) * len(PATTERNS) + ids[:, 2]
    return torch.isin(key, held)


def _sample_objects(n: int, g: torch.Generator, free_hue_prob: float, exclude_heldout: bool,
                    patterned: bool = True) -> ObjectBatch:
    shape = torch.randint(len(SHAPES), (n,), generator=g)
    color, rgb = _sample_colors(n, g, free_hue_prob)
    pattern = torch.randint(len(PATTERNS), (n,), generator=g) if patterned else torch.zeros(n, dtype=torch.int64)
    # Redraw whole rows (shape, colour, pattern) that form a held-out combination, batch-wise, until none is left.
    while exclude_heldout:
        bad = _heldout_mask(shape, color, pattern).nonzero().squeeze(1)
        if bad.numel() == 0:
            break
        k = bad.numel()
        shape[bad] = torch.randint(len(SHAPES), (k,), generator=g)
        color[bad], rgb[bad] = _sample_colors(k, g, free_hue_prob)
        if patterned:
            pattern[bad] = torch.randint(len(PATTERNS), (k,), generator=g)
    return ObjectBatch(
        shape=shape, color=color, rgb=rgb, pattern=pattern,
        pattern_angle=_uniform(n, 0.0, 180.0, g),
        pattern_period=torch.rand(n, generator=g),  # a fraction of the size's range until the size is final
        size=torch.randint(len(SIZES), (n,), generator=g),
        scale=_uniform(n, 1.0 - SCALE_JITTER, 1.0 + SCALE_JITTER, g),
        position=torch.randint(len(POSITIONS), (n,), generator=g),
        offset=_uniform((n, 2), -OFFSET_JITTER, OFFSET_JITTER, g),
        rotation=_uniform(n, 0.0, 360.0, g),
    )


def sample_batch(n: int, generator: torch.Generator | None = None, device="cpu", *, exclude_heldout: bool = True,
                 second_prob: float = 0.3, free_hue_prob: float = 0.25) -> SceneBatch:
    """Draw `n` random scenes as tensors, with no Python loop over scenes.

    Attributes are uniform over their lists; continuous values (hue jitter, pattern angle and period, rotation,
    scale, offset, style strength, noise seed) uniform in their ranges. With probability `free_hue_prob` an object's
    hue is anywhere on the circle (named by the nearest colour), so the model also learns the in-between hues that
    concepts use. With probability `second_prob` a small solid second object is added (the main one then moves to a
    left or top position, at most medium size). Held-out combinations (`HELDOUT_COMBINATIONS`) are redrawn.
    Everything is drawn on the CPU from `generator`, then moved to `device`, so a seed gives the same batch on any
    device.

    >>> a = sample_batch(4, torch.Generator().manual_seed(1))
    >>> b = sample_batch(4, torch.Generator().manual_seed(1))
    >>> bool((render(a) == render(b)).all())
    True
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    for name, p in (("second_prob", second_prob), ("free_hue_prob", free_hue_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    obj = _sample_objects(n, g, free_hue_prob, exclude_heldout)
    second = _sample_objects(n, g, free_hue_prob, exclude_heldout, patterned=False)
    has_second = torch.rand(n, generator=g) < second_prob
    # Two-object layout: main object left or top and small/medium, the second small at the mirrored place.
    left_top = torch.tensor([_POSITION_ID[p] for p in TWO_OBJECT_POSITIONS])
    obj.position = torch.where(has_second, left_top[torch.randint(len(left_top), (n,), generator=g)], obj.position)
    obj.size = torch.where(has_second, obj.size.clamp(max=_SIZE_ID["medium"]), obj.size)
    second.position = _MIRROR_ID[obj.position]
    second.size = torch.full((n,), _SIZE_ID["small"], dtype=torch.int64)
    for o in (obj, second):
        o.pattern_period = _PERIOD_LO[o.size] + (_PERIOD_HI[o.size] - _PERIOD_LO[o.size]) * o.pattern_period
    background = torch.randint(len(BACKGROUNDS), (n,), generator=g)
    bg_rgb = (_BG_RGB[background] + _uniform((n, 3), -BACKGROUND_JITTER, BACKGROUND_JITTER, g)).clamp(0, 1)
    batch = SceneBatch(
        obj=obj, second=second, has_second=has_second, background=background, background_rgb=bg_rgb,
        style=torch.randint(len(STYLES), (n,), generator=g), style_strength=torch.rand(n, generator=g),
        seed=torch.randint(0, 2**31 - 1, (n,), generator=g),
    )
    return batch.to(device)


# ---------------------------------------------------------------------------------------------------------------
# 4. Rendering
# ---------------------------------------------------------------------------------------------------------------
# Every shape is a signed distance function (negative inside) in the object's own frame: centred, rotated, scaled
# to unit radius, y up. Distances times radius / pixel size are in pixels, which gives anti-aliasing (coverage
# 0.5 - d), outlines (a band |d + w/2| < w/2) and shadows (a softer coverage) from one evaluation. The pixel work is
# tensor ops over (N, H, W); the only Python loops go over shape and pattern kinds (10 and 4), never over scenes.


def _length(x, y):
    return torch.sqrt(x * x + y * y)


def _sd_box(x, y, bx: float, by: float):
    qx, qy = x.abs() - bx, y.abs() - by
    return _length(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)


def _sd_polygon(x, y, n: int, circumradius: float, normal0: float):
    """Regular n-gon: distance to the nearest edge line (exact inside and along edges, a bound outside corners).
    `normal0` is the direction (radians) of one edge's outward normal."""
    sector = 2.0 * math.pi / n
    t = torch.atan2(y, x) - normal0
    t = t - sector * torch.round(t / sector)
    return _length(x, y) * torch.cos(t) - circumradius * math.cos(math.pi / n)


def _sd_circle(x, y):
    return _length(x, y) - 0.9


def _sd_square(x, y):
    return _sd_box(x, y, 0.75, 0.75)


def _sd_triangle(x, y):
    return _sd_polygon(x, y, 3, 1.05, -math.pi / 2)  # one edge at the bottom, a corner pointing up


def _sd_star(x, y, outer=1.05, inner=0.45):
    # Fold the angle into one point's half sector [0, 36 deg] and measure to the edge from the tip (outer, 0) to
    # the inner corner at 36 degrees; the sign says which side of that edge the point lies on.
    sector = 2.0 * math.pi / 5
    t = torch.atan2(y, x) - math.pi / 2
    t = (t - sector * torch.round(t / sector)).abs()
    r = _length(x, y)
    qx, qy = r * torch.cos(t), r * torch.sin(t)
    ax, ex, ey = outer, inner * math.cos(sector / 2) - outer, inner * math.sin(sector / 2)
    wx, wy = qx - ax, qy
    h = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0)
    dist = _length(wx - ex * h, wy - ey * h)
    return torch.where(ex * wy - ey * wx > 0, -dist, dist)


def _sd_heart(x, y, side=1.1):
    # The classic construction: a square turned 45 degrees with two discs on its upper edges.
    c = -0.08  # vertical centre of the square, so the whole heart is centred
    yc = y - c
    u, v = (x + yc) / math.sqrt(2.0), (yc - x) / math.sqrt(2.0)
    box = _sd_box(u, v, side / 2, side / 2)
    m = side / (2 * math.sqrt(2.0))
    left = _length(x + m, yc - m) - side / 2
    right = _length(x - m, yc - m) - side / 2
    return torch.minimum(box, torch.minimum(left, right))


def _sd_cross(x, y):
    return torch.minimum(_sd_box(x, y, 0.95, 0.3), _sd_box(x, y, 0.3, 0.95))


def _sd_diamond(x, y, a=0.62, b=1.0):
    return (x.abs() * b + y.abs() * a - a * b) / math.hypot(a, b)


def _sd_hexagon(x, y):
    return _sd_polygon(x, y, 6, 0.95, math.pi / 2)  # flat top and bottom


def _sd_ring(x, y):
    return (_length(x, y) - 0.71).abs() - 0.21


def _sd_crescent(x, y):
    return torch.maximum(_length(x, y) - 0.92, -(_length(x - 0.4, y - 0.25) - 0.72))


_SDF = (_sd_circle, _sd_square, _sd_triangle, _sd_star, _sd_heart, _sd_cross, _sd_diamond, _sd_hexagon, _sd_ring,
        _sd_crescent)
assert len(_SDF) == len(SHAPES)


def _sdf_by_shape(shape: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) shape ids and (N, H, W) unit-frame coordinates -> (N, H, W) signed distances, one kind at a time."""
    d = torch.empty_like(x)
    for k, fn in enumerate(_SDF):
        idx = (shape == k).nonzero().squeeze(1)
        if idx.numel():
            d[idx] = fn(x[idx], y[idx])
    return d


def _hash_noise(seed: torch.Tensor, salt: int, h: int, w: int) -> torch.Tensor:
    """(N,) seeds -> (N, H, W) uniform noise in [0, 1), a pure function of (seed, salt, pixel).

    An integer hash rather than a torch.Generator, so a scene's noise does not depend on the batch it is in or the
    device (int64 ops are exact everywhere). Multipliers stay below 2**31 so no product leaves int64."""
    dev = seed.device
    iy = torch.arange(h, device=dev).view(1, h, 1)
    ix = torch.arange(w, device=dev).view(1, 1, w)
    mask = 0xFFFFFFFF
    x = (seed.view(-1, 1, 1) * 0x1B873593 + iy * 0x2C1B3C6D + ix * 0x297A2D39 + salt * 0x68E31DA4) & mask
    for mult in (0x7FEB352D, 0x46B1A5D3):
        x = x ^ (x >> 15)
        x = (x * mult) & mask
    x = x ^ (x >> 16)
    return x.float() * (1.0 / 2**32)


def _hash_scalar(seed: torch.Tensor, salt: int) -> torch.Tensor:
    """(N,) seeds -> (N,) uniform numbers in [0, 1)."""
    return _hash_noise(seed, salt, 1, 1).view(-1)


def _pattern_mask(pattern, angle, period_px, dx, dy, px) -> torch.Tensor:
    """Where the pattern's second colour goes, as coverage in [0, 1]. Coordinates are the object's offset from its
    centre in image units (y up), `px` the size of a pixel in those units; angle in degrees, period in pixels."""
    a = torch.deg2rad(angle).view(-1, 1, 1)
    period = (period_px * px).view(-1, 1, 1)  # in image units
    ppx = period_px.view(-1, 1, 1)  # in pixels
    ca, sa = torch.cos(a), torch.sin(a)
    u = (ca * dx + sa * dy) / period  # along the stripes
    v = (-sa * dx + ca * dy) / period  # across the stripes
    m = torch.zeros_like(u)
    for k in (1, 2, 3):
        idx = (pattern == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        pu, pv, p = u[idx], v[idx], ppx[idx]
        tv = (pv - torch.floor(pv) - 0.5).abs()  # 0 at a stripe's middle, 0.5 between
        if k == 1:  # stripes: half of each period
            m[idx] = (0.5 - (tv - 0.25) * p).clamp(0, 1)
        elif k == 2:  # dots: a disc in each cell, one of them on the object's centre (so a small one shows some)
            du, dv = pu - torch.floor(pu + 0.5), pv - torch.floor(pv + 0.5)
            m[idx] = (0.5 - (_length(du, dv) - 0.3) * p).clamp(0, 1)
        else:  # checks: the product of two square waves
            tu = (pu - torch.floor(pu) - 0.5).abs()
            su = ((0.25 - tu) * p * 2).clamp(-1, 1)
            sv = ((0.25 - tv) * p * 2).clamp(-1, 1)
            m[idx] = 0.5 + 0.5 * su * sv
    return m


def _wobbled(lx, ly, i, rpx, s, seed, salt, s64):
    """Sketchy: the object frame's coordinates `lx`, `ly` with rows `i` wobbled (new tensors); `rpx`, `s` and
    `seed` are those rows' radius in pixels, style strength and seed."""
    # By under a pixel, in waves 16 pixels long (a shaky hand, not a new shape: a small hexagon must still read as a
    # hexagon, not a circle), phases from the seed.
    amp = (0.25 + 0.35 * s) * s64 / rpx
    k = 2 * math.pi * rpx / (16.0 * s64)
    ph1 = 2 * math.pi * _hash_scalar(seed, salt + 1).view(-1, 1, 1)
    ph2 = 2 * math.pi * _hash_scalar(seed, salt + 2).view(-1, 1, 1)
    lx, ly = lx.clone(), ly.clone()
    lx[i], ly[i] = lx[i] + amp * torch.sin(k * ly[i] + ph1), ly[i] + amp * torch.sin(k * lx[i] + ph2)
    return lx, ly


def _patterned_color(c, m, bg_rgb) -> torch.Tensor:
    """(N, 3, H, W): the object colour `c` (N, 3, 1, 1) mixed by the pattern's coverage `m` with a tint (dark
    backgrounds) or a shade (light ones)."""
    lum = (bg_rgb * torch.tensor([0.299, 0.587, 0.114], device=bg_rgb.device)).sum(1).view(-1, 1, 1, 1)
    c2 = torch.where(lum < 0.5, c + (1 - c) * 0.6, c * 0.45)
    return c + (c2 - c) * m[:, None]


def _outlined(d, alpha, m, c, color, s, s64):
    """Outlined (the rows' distance, coverage, pattern coverage, object colour, colour and strength): their
    coverage, an edge band 1.5-3 px wide plus the pattern's marks, and their colour, the object colour."""
    w = (1.5 + 1.5 * s) * s64
    band = (0.5 - ((d + w / 2).abs() - w / 2)).clamp(0, 1)
    return torch.maximum(band, alpha * m), c.expand_as(color)


def _sketched(d, alpha, color, s, seed, salt, size, s64):
    """Sketchy (the rows' distance, coverage, colour, strength and seed): their coverage, with crayon grain letting
    the background through the fill, and their colour, with a darker pencil stroke following the edge."""
    grain = _hash_noise(seed, salt + 3, size, size)
    stroke = (0.5 - (d.abs() - 0.6 * s64)).clamp(0, 1)
    return torch.maximum(alpha * (1 - (0.2 + 0.3 * s) * grain), stroke), color * (1 - 0.55 * stroke[:, None])


def _shaded(shape, dx, dy, ct, st, r, rpx, color, strength, s64):
    """Shaded (the rows' shapes, offsets, rotation's cosine and sine, radius, radius in pixels, colour and
    strength): their colour and their drop shadow's coverage."""
    # Brightness ramps along the light direction (upper left, turned by strength), highlights go to white; the drop
    # shadow is the shape again, moved away from the light, with a soft edge.
    la = torch.deg2rad(135.0 + 90.0 * (strength - 0.5)).view(-1, 1, 1)
    lxd, lyd = torch.cos(la), torch.sin(la)
    b = (0.85 + 0.4 * (dx * lxd + dy * lyd) / r).clamp(0.4, 1.3)[:, None]
    color = torch.where(b < 1, color * b, color + (1 - color) * (b - 1) * 1.5)
    sx, sy = dx + 0.09 * lxd, dy + 0.09 * lyd  # 0.09 image units away from the light
    ds = _sdf_by_shape(shape, (ct * sx + st * sy) / r, (-st * sx + ct * sy) / r) * rpx
    return color, (0.5 - ds / (3.0 * s64)).clamp(0, 1)


def _draw_objects(o: ObjectBatch, style, strength, seed, bg_rgb, X, Y, px, salt):
    """Render the objects of `o` (N rows) over a shared grid: returns coverage (N, H, W), colour (N, 3, H, W) and
    drop-shadow coverage (N, H, W). Lengths written in pixels are pixels of a 64-pixel image (times `s64`)."""
    s64 = 2.0 / (px * RESOLUTION)  # pixels of this image per pixel of a 64-pixel one
    cxy, radius = o.center(), o.radius().view(-1, 1, 1)
    dx = X - cxy[:, 0].view(-1, 1, 1)
    dy = -(Y - cxy[:, 1].view(-1, 1, 1))  # y up from here on
    th = torch.deg2rad(o.rotation).view(-1, 1, 1)
    ct, st = torch.cos(th), torch.sin(th)
    lx = (ct * dx + st * dy) / radius  # rotate by -rotation into the object's frame
    ly = (-st * dx + ct * dy) / radius
    rpx = radius / px  # radius in pixels
    s = strength.view(-1, 1, 1)
    sketchy, outlined, shaded = ((style == _STYLE_ID[name]).nonzero().squeeze(1)
                                 for name in ("sketchy", "outlined", "shaded"))
    if sketchy.numel():
        lx, ly = _wobbled(lx, ly, sketchy, rpx[sketchy], s[sketchy], seed[sketchy], salt, s64)
    d = _sdf_by_shape(o.shape, lx, ly) * rpx  # (N, H, W) signed distance in pixels
    alpha = (0.5 - d).clamp(0, 1)
    m = _pattern_mask(o.pattern, o.pattern_angle, o.pattern_period * s64, dx, dy, px)
    c = o.rgb.view(-1, 3, 1, 1)
    color = _patterned_color(c, m, bg_rgb)
    if outlined.numel():
        i = outlined
        alpha[i], color[i] = _outlined(d[i], alpha[i], m[i], c[i], color[i], s[i], s64)
    if sketchy.numel():
        i = sketchy
        alpha[i], color[i] = _sketched(d[i], alpha[i], color[i], s[i], seed[i], salt, X.shape[-1], s64)
    shadow = torch.zeros_like(alpha)
    if shaded.numel():
        i = shaded
        color[i], shadow[i] = _shaded(o.shape[i], dx[i], dy[i], ct[i], st[i], radius[i], rpx[i], color[i],
                                      strength[i], s64)
    return alpha, color, shadow


def render(scenes, device="cpu", resolution: int = RESOLUTION) -> torch.Tensor:
    """Render scenes to a (B, 3, H, W) float32 tensor in [0, 1] on `device`.

    `scenes` is a `SceneBatch`, a list of `Scene`s or one `Scene`. The result depends only on the scenes (noise is
    hashed from each scene's seed), so a scene gives the same pixels alone or in any batch. `resolution` scales
    everything (lengths are defined on a 64-pixel image).

    >>> render(Scene(ObjectSpec("heart", "pink"))).shape
    torch.Size([1, 3, 64, 64])
    """
    if isinstance(scenes, Scene):
        scenes = [scenes]
    batch = scenes if isinstance(scenes, SceneBatch) else SceneBatch.from_scenes(list(scenes))
    if resolution < 8:
        raise ConfigError(f"resolution must be at least 8 pixels, got {resolution}")
    batch = batch.to(device)
    n, dev = len(batch), batch.device
    px = 2.0 / resolution  # one pixel in image units (the image spans [-1, 1])
    coords = (torch.arange(resolution, device=dev, dtype=torch.float32) + 0.5) * px - 1.0
    Y, X = coords.view(1, -1, 1), coords.view(1, 1, -1)  # (1, H, 1), (1, 1, W): broadcast, never materialised

    img = batch.background_rgb.view(n, 3, 1, 1).expand(n, 3, resolution, resolution).clone()
    layers = [(torch.arange(n, device=dev), batch.obj, 0)]
    two = batch.has_second.nonzero().squeeze(1)
    if two.numel():
        layers.append((two, batch.second.index(two), 10))
    for idx, o, salt in layers:
        style, strength, seed = batch.style[idx], batch.style_strength[idx], batch.seed[idx]
        alpha, color, shadow = _draw_objects(o, style, strength, seed, batch.background_rgb[idx], X, Y, px, salt)
        part = img[idx] * (1 - 0.4 * shadow[:, None])
        img[idx] = part + (color - part) * alpha[:, None]

    # Sketchy: paper grain over the whole picture.
    sk = (batch.style == _STYLE_ID["sketchy"]).nonzero().squeeze(1)
    if sk.numel():
        paper = _hash_noise(batch.seed[sk], 99, resolution, resolution) - 0.5
        amount = (0.06 + 0.06 * batch.style_strength[sk]).view(-1, 1, 1, 1)
        img[sk] = img[sk] + amount * paper[:, None]
    return img.clamp_(0, 1)


def pattern_visibility(scenes) -> torch.Tensor:
    """(B,) how many pixels of each picture show its main object's fill: those (any channel off by more than 0.1)
    that change when the fill is swapped for solid, or for a solid object for dots (the room a pattern would
    have). A fill seen in a handful of pixels, as on a small outlined ring, cannot be read by anyone.

    >>> [int(n) > 100 for n in pattern_visibility([Scene(ObjectSpec("square", "red", pattern="stripes",
    ...                                                             size="large"))])]
    [True]
    """
    batch = scenes if isinstance(scenes, SceneBatch) else SceneBatch.from_scenes(
        [scenes] if isinstance(scenes, Scene) else list(scenes))
    swapped = batch.index(slice(None))  # new tensors' holder: the main object's pattern is replaced, not written into
    swapped.obj = swapped.obj.index(slice(None))
    solid = swapped.obj.pattern == PATTERNS.index("solid")
    swapped.obj.pattern = torch.where(solid, PATTERNS.index("dots"), PATTERNS.index("solid"))
    return ((render(batch) - render(swapped)).abs().amax(1) > 0.1).sum((1, 2))


def to_pil(images: torch.Tensor):
    """A (3, H, W) or (B, 3, H, W) tensor in [0, 1] -> a PIL image (a batch becomes one row)."""
    from PIL import Image

    if images.dim() == 4:
        images = torch.cat(list(images), dim=2)
    arr = (images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def render_pil(scene: Scene, resolution: int = RESOLUTION):
    """Render one scene as a PIL RGB image.

    >>> render_pil(Scene(ObjectSpec("ring", "cyan"), background="black")).mode
    'RGB'
    """
    return to_pil(render(scene, resolution=resolution)[0])


def contact_sheet(images: torch.Tensor, columns: int = 16, upscale: int = 1):
    """Lay (B, 3, H, W) images out on a grid, as a PIL image (to look at a world sample)."""
    b, _, h, w = images.shape
    rows = -(-b // columns)
    sheet = torch.ones(3, rows * h, columns * w)
    for i in range(b):
        r, c = divmod(i, columns)
        sheet[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    image = to_pil(sheet)
    return image.resize((image.width * upscale, image.height * upscale), 0) if upscale > 1 else image


def benchmark_render(batch_size: int = 256, repeats: int = 5, device="cpu", seed: int = 0) -> float:
    """Images per second of `sample_batch` + `render` at `batch_size`, best of `repeats` (after one warm-up)."""
    g = torch.Generator().manual_seed(seed)
    render(sample_batch(batch_size, g, device), device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = render(sample_batch(batch_size, g, device), device)
        if out.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return batch_size / best


# ---------------------------------------------------------------------------------------------------------------
# 5. Words: captions, descriptions and the concepts
# ---------------------------------------------------------------------------------------------------------------

_PREFIXES = ("", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "a rendering of ")
_PATTERN_ADJ = {"solid": "solid", "stripes": "striped", "dots": "dotted", "checks": "checkered"}
_PATTERN_WITH = {"stripes": "with stripes", "dots": "with dots", "checks": "with checks"}
_POSITION_PHRASES = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left",), "right": ("on the right",), "top": ("at the top",), "bottom": ("at the bottom",),
    "top-left": ("in the top left corner", "at the top left"),
    "top-right": ("in the top right corner", "at the top right"),
    "bottom-left": ("in the bottom left corner", "at the bottom left"),
    "bottom-right": ("in the bottom right corner", "at the bottom right"),
}
_BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "on {}")
_STYLE_PHRASES = ("{} style", "in {} style", "in a {} style")
_JOINERS = ("and", "next to")

# How often each attribute is named in a caption (the rest the model must learn to fill in).
_KEEP = {"color": 0.8, "pattern": 0.7, "solid": 0.2, "size": 0.5, "position": 0.5, "background": 0.5,
         "style": 0.5, "flat": 0.3, "second": 0.85, "second_detail": 0.6, "shape_word": 0.1}


def position_phrase(position: str) -> str:
    """The world's first wording of a position ("on the left", "in the center")."""
    return _POSITION_PHRASES[position][0]


def _words(text: str) -> list[str]:
    """Lower-case words of a caption (letters only; commas and the like are dropped).

    >>> _words("A red star, flat style")
    ['a', 'red', 'star', 'flat', 'style']
    """
    out, cur = [], []
    for ch in text.lower() + " ":
        if ch.isalpha():
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    return out


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _noun_phrase(o: ObjectSpec, rng: np.random.Generator, full: bool, with_pattern: bool = True,
                 angle_share: float = 0.0) -> str:
    words, tail = [], ""
    if full or rng.random() < _KEEP["size"]:
        words.append(o.size)
    if full or rng.random() < _KEEP["color"]:
        words.append(o.color)
    # (drawn only with a share above 0: at 0 a caption takes exactly the draws it took before the setting existed)
    oriented = with_pattern and angle_share > 0 and o.pattern in ORIENTATIONS and (
        full or rng.random() < angle_share)
    if with_pattern and (full or oriented or rng.random() < _KEEP["solid" if o.pattern == "solid" else "pattern"]):
        if oriented:
            tail = f" with {orientation_word(o.pattern, o.pattern_angle)} {o.pattern}"
        elif o.pattern != "solid" and not full and rng.random() < 0.4:
            tail = " " + _PATTERN_WITH[o.pattern]
        else:
            words.append(_PATTERN_ADJ[o.pattern])
    noun = "shape" if not full and rng.random() < _KEEP["shape_word"] else o.shape
    words.append(noun)
    return f"{_article(words[0])} {' '.join(words)}{tail}"


def caption(scene: Scene, rng: np.random.Generator | int | None = None, angle_share: float = 0.0) -> str:
    """A training caption for `scene`: varied wording, some attributes left out at random, never a false one.

    Words come from `VOCABULARY` only, and from `ORIENTATION_WORDS` with `angle_share` > 0: that share of the
    captions of a patterned object name its fill's orientation ("with vertical stripes", `orientation_word`). At 0
    (the default) the captions and the draws they take from `rng` are those of the world before the setting. The
    main object is always named first.

    >>> caption(Scene(ObjectSpec("star", "red", size="small"), background="navy"), 3)  # doctest: +SKIP
    'a photo of a small red star on a navy background'
    >>> "with vertical stripes" in caption(Scene(ObjectSpec("star", "red", pattern="stripes", pattern_angle=88.0)),
    ...                                    3, angle_share=1.0)
    True
    """
    _check_share(angle_share)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    o = scene.obj
    text = _PREFIXES[rng.integers(len(_PREFIXES))] + _noun_phrase(o, rng, full=False, angle_share=angle_share)
    extras = []
    if rng.random() < _KEEP["position"]:
        extras.append(rng.choice(_POSITION_PHRASES[o.position]))
    if rng.random() < _KEEP["background"]:
        extras.append(_BACKGROUND_PHRASES[rng.integers(len(_BACKGROUND_PHRASES))].format(scene.background))
    if rng.random() < (_KEEP["flat"] if scene.style == "flat" else _KEEP["style"]):
        extras.append(", " + _STYLE_PHRASES[rng.integers(len(_STYLE_PHRASES))].format(scene.style))
    rng.shuffle(extras)
    text += "".join(e if e.startswith(",") else " " + e for e in extras)
    if scene.second is not None and rng.random() < _KEEP["second"]:
        second = _noun_phrase(scene.second, rng, full=False, with_pattern=False)
        text += f" {rng.choice(_JOINERS)} {second}"
        if rng.random() < _KEEP["second_detail"] * 0.5:
            text += " " + rng.choice(_POSITION_PHRASES[scene.second.position])
    return text.lstrip(", ")


def describe(scene: Scene, orientation: bool = False) -> str:
    """The fullest description of a scene in the world's own words (every attribute that has a word).

    `orientation`: name the main object's fill orientation too (`ORIENTATION_WORDS`), as the captions of a model
    pretrained with `angle_share` > 0 do.

    >>> describe(Scene(ObjectSpec("star", "red", size="small", position="left"), background="navy"))
    'a small red solid star on the left on a navy background, flat style'
    >>> describe(Scene(ObjectSpec("star", "red", pattern="checks", pattern_angle=50.0)), orientation=True)
    'a medium red star with diagonal checks in the center on a white background, flat style'
    """
    o = scene.obj
    phrase = _noun_phrase(o, None, full=True, angle_share=1.0 if orientation else 0.0)
    text = f"{phrase} {position_phrase(o.position)} on a {scene.background} " \
           f"background, {scene.style} style"
    if scene.second is not None:
        s = scene.second
        text += f", and {_noun_phrase(s, None, full=True, with_pattern=s.pattern != 'solid')} " \
                f"{position_phrase(s.position)}"
    return text


def captions(batch: SceneBatch, rng: np.random.Generator | int | None = None, angle_share: float = 0.0) -> list[str]:
    """`caption` for every scene of a batch."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return [caption(s, rng, angle_share) for s in batch.scenes()]


def _vocabulary() -> tuple[str, ...]:
    texts = list(_PREFIXES) + list(_PATTERN_WITH.values()) + list(_PATTERN_ADJ.values()) + list(_JOINERS)
    texts += [p for ps in _POSITION_PHRASES.values() for p in ps]
    texts += [p.format(b) for p in _BACKGROUND_PHRASES + _STYLE_PHRASES for b in ("x",)]
    texts += ["a an shape"] + list(SHAPES) + list(COLORS) + list(SIZES) + list(BACKGROUNDS) + list(STYLES)
    return tuple(sorted({w for t in texts for w in _words(t)} - {"x"}))


VOCABULARY = _vocabulary()
"""Every word a caption or description can use (lower case; captions also hold commas). A closed list, so the
world's tokenizer can be small. The orientation words (`ORIENTATION_WORDS`) are not in it: only captions drawn with
an `angle_share` above 0 use them."""

ORIENTATIONS = {
    # pattern: (the period its fill repeats in, in degrees; the words of the bins, the first centred on 0 degrees)
    "stripes": (180.0, ("horizontal", "rising", "vertical", "falling")),
    "dots": (90.0, ("straight", "diagonal")),
    "checks": (90.0, ("straight", "diagonal")),
}
"""The words that name a fill's orientation, in equal bins around the circle of angles the fill can tell apart.
Stripes repeat every 180 degrees, so four bins of 45: horizontal (0), rising (45: up to the right), vertical (90),
falling (135). Dots and checks sit on a square lattice that maps onto itself turned by 90 degrees (stripes at 0 and
90 are different pictures, checks at 0 and 90 the same one), so their angle means something only modulo 90: two bins,
straight (rows along the axes, 0) and diagonal (45). A finer or a 180-degree word for them would name a difference
no picture shows."""

ORIENTATION_WORDS = tuple(dict.fromkeys(w for _, words in ORIENTATIONS.values() for w in words))
"""The words `orientation_word` can give, in a fixed order (the world's tokenizer appends them in this order)."""


def orientation_word(pattern: str, angle: float) -> str:
    """The orientation bin of a fill drawn at `angle` degrees (counter-clockwise from horizontal): `ORIENTATIONS`.

    >>> orientation_word("stripes", 170.0), orientation_word("stripes", 40.0), orientation_word("checks", 95.0)
    ('horizontal', 'rising', 'straight')
    """
    if pattern not in ORIENTATIONS:
        raise ConfigError(f"a {pattern!r} fill has no orientation: only {', '.join(ORIENTATIONS)} have one")
    period, words = ORIENTATIONS[pattern]
    width = period / len(words)
    # (the last % : a float just below 0 can come out of the first one as `period` itself)
    return words[int(((float(angle) + width / 2) % period) // width) % len(words)]


def _check_share(share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"angle_share must be a share in [0, 1], got {share}")


_SCENE_KEYS = ("shape", "color", "hue", "pattern", "stripe_angle", "size", "position", "background", "style",
               "has_second", "second_shape", "second_color")
"""The probe attributes `Concept.scenes_for` can draw into a scene."""


@dataclass(frozen=True)
class Concept:
    """A benchmark concept: one object (or one style) that the world's words only approximate.

    `attributes` maps what the attribute probe must read back from a picture of it to the expected value (hue in
    degrees, stripe angle in degrees mod 180, class names otherwise).
    """

    name: str
    token: str  # the placeholder, e.g. "<teal-star>"
    init_word: str  # a vocabulary word to start the embedding from
    kind: str  # "object" or "style"
    description: str  # the nearest the world's words get
    base: ObjectSpec | None = None  # the object (object concepts)
    style: str = "flat"  # the style (style concepts; object concepts are shown flat)
    style_strength: float = 0.5
    attributes: dict = field(default_factory=dict)

    def training_scenes(self, k: int = 5, seed: int = 0) -> list[Scene]:
        """`k` pictures of the concept, as the 3-10 pictures a user brings: an object concept at different positions,
        sizes and backgrounds; a style concept on different objects. Deterministic in `seed`.

        >>> len(BENCHMARK_CONCEPTS[0].training_scenes(5))
        5
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        rng = np.random.default_rng([seed, sum(map(ord, self.name))])
        positions = rng.permutation([p for p in POSITIONS if p != "center"])
        backgrounds = rng.permutation(list(BACKGROUNDS))
        scenes = []
        for i in range(k):
            common = dict(
                position=str(positions[i % len(positions)]) if i else "center",
                size=("medium", "large")[i % 2] if self.kind == "object" else str(rng.choice(["medium", "large"])),
                scale=float(rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER)),
                offset=tuple(rng.uniform(-OFFSET_JITTER, OFFSET_JITTER, 2).tolist()),
            )
            if self.kind == "object":
                obj = replace(self.base, **common)
            else:
                obj = Scene.random(rng, second_prob=0.0).obj
                obj = replace(obj, **common)
            scenes.append(Scene(obj, background=str(backgrounds[i % len(backgrounds)]), style=self.style,
                                style_strength=self.style_strength, seed=int(rng.integers(2**31))))
        return scenes

    def scenes_for(self, expected: dict, k: int = 32, seed: int = 0) -> list[Scene]:
        """`k` true pictures of what a benchmark prompt asks for: the training scenes' variety (`training_scenes`),
        with every attribute in `expected` (a prompt's probe expectations, as `edit_prompts` and `attributes` give
        them) set. What the probe reads from their renders is the most a prompt's samples can score.

        A second object is drawn as the world draws one (small, solid, mirrored), its main object moved to a
        left or top place and kept at most medium size unless `expected` fixes them.

        >>> scenes = BENCHMARK_CONCEPTS[0].scenes_for({"background": "black", "size": "small"}, k=3)
        >>> [(s.background, s.obj.size, s.obj.shape) for s in scenes][0]
        ('black', 'small', 'star')
        """
        unknown = set(expected) - set(_SCENE_KEYS)
        if unknown:
            raise ConfigError(f"cannot draw {sorted(unknown)} into a scene: expected attributes must be among "
                              f"{', '.join(_SCENE_KEYS)}")
        obj_keys = {"shape": "shape", "color": "color", "pattern": "pattern", "size": "size", "position": "position",
                    "stripe_angle": "pattern_angle"}
        scenes = []
        for i, scene in enumerate(self.training_scenes(k, seed)):
            obj = replace(scene.obj, **{obj_keys[key]: v for key, v in expected.items() if key in obj_keys})
            if "color" in expected:
                obj = replace(obj, rgb=None)
            if "hue" in expected:
                obj = replace(obj, rgb=color_at_hue(expected["hue"]), color=None)
            second = None
            if expected.get("has_second"):
                if "position" not in expected and obj.position not in TWO_OBJECT_POSITIONS:
                    obj = replace(obj, position=TWO_OBJECT_POSITIONS[i % len(TWO_OBJECT_POSITIONS)])
                if "size" not in expected and obj.size == "large":
                    obj = replace(obj, size="medium")
                second = ObjectSpec(expected.get("second_shape", "circle"), expected.get("second_color", "red"),
                                    size="small", position=MIRROR[obj.position])
            scenes.append(replace(scene, obj=obj, second=second,
                                  background=expected.get("background", scene.background),
                                  style=expected.get("style", scene.style)))
        return scenes

    def edit_prompts(self) -> list[tuple[str, dict]]:
        """Prompts that put the concept in a new setting (`{}` stands for the token), with what the probe should then
        read: for the editability half of the benchmark. The concept's own `attributes` should hold as well."""
        if self.kind == "object":
            return [
                ("a photo of {} on a black background", {"background": "black"}),
                ("{} on a cream background", {"background": "cream"}),
                ("a small {} in the top left corner", {"size": "small", "position": "top-left"}),
                ("a large {} at the bottom", {"size": "large", "position": "bottom"}),
                ("{}, sketchy style", {"style": "sketchy"}),
                ("an outlined {}", {"style": "outlined"}),
                ("{} and a yellow circle", {"has_second": True, "second_shape": "circle", "second_color": "yellow"}),
            ]
        return [
            ("a red star, {} style", {"shape": "star", "color": "red"}),
            ("a blue square on a white background, {} style", {"shape": "square", "color": "blue",
                                                               "background": "white"}),
            ("a green heart on the left, {} style", {"shape": "heart", "color": "green", "position": "left"}),
            ("a striped yellow circle, {} style", {"shape": "circle", "color": "yellow", "pattern": "stripes"}),
            ("a small pink cross on a navy background, {} style", {"shape": "cross", "color": "pink",
                                                                   "size": "small", "background": "navy"}),
        ]


def _concept_object(shape, hue=None, color=None, **kwargs) -> ObjectSpec:
    rgb = color_at_hue(hue) if hue is not None else None
    return ObjectSpec(shape, color=color, rgb=rgb, **kwargs)


BENCHMARK_CONCEPTS: tuple[Concept, ...] = (
    Concept("teal star", "<teal-star>", "star", "object", "a cyan star (a greener cyan than any named colour)",
            base=_concept_object("star", hue=163.0, rotation=12.0),
            attributes={"shape": "star", "hue": 163.0, "pattern": "solid"}),
    Concept("amber dotted hexagon", "<amber-hexagon>", "hexagon", "object",
            "a dotted hexagon between orange and yellow, fine dots at 20 degrees",
            base=_concept_object("hexagon", hue=41.0, pattern="dots", pattern_angle=20.0, pattern_period=5.5,
                                 rotation=8.0),
            attributes={"shape": "hexagon", "hue": 41.0, "pattern": "dots"}),
    Concept("candy heart", "<candy-heart>", "heart", "object", "a pink heart with stripes at 35 degrees",
            base=_concept_object("heart", color="pink", pattern="stripes", pattern_angle=35.0, pattern_period=6.0,
                                 rotation=-10.0),
            attributes={"shape": "heart", "color": "pink", "pattern": "stripes", "stripe_angle": 35.0}),
    Concept("harlequin cross", "<harlequin-cross>", "cross", "object", "a blue cross with checks at 45 degrees",
            base=_concept_object("cross", color="blue", pattern="checks", pattern_angle=45.0, pattern_period=6.5,
                                 rotation=20.0),
            attributes={"shape": "cross", "color": "blue", "pattern": "checks"}),
    Concept("violet ring", "<violet-ring>", "ring", "object", "a dotted ring between purple and pink",
            base=_concept_object("ring", hue=296.0, pattern="dots", pattern_angle=0.0, pattern_period=5.5),
            attributes={"shape": "ring", "hue": 296.0, "pattern": "dots"}),
    Concept("lime crescent", "<lime-crescent>", "crescent", "object",
            "a striped crescent between yellow and green, horizontal stripes",
            base=_concept_object("crescent", hue=97.0, pattern="stripes", pattern_angle=0.0, pattern_period=6.0,
                                 rotation=30.0),
            attributes={"shape": "crescent", "hue": 97.0, "pattern": "stripes", "stripe_angle": 0.0}),
    Concept("crayon style", "<crayon-style>", "sketchy", "style", "the sketchy style at its strongest",
            style="sketchy", style_strength=1.0, attributes={"style": "sketchy"}),
    Concept("spotlight style", "<spotlight-style>", "shaded", "style",
            "the shaded style lit from straight above-left at full contrast",
            style="shaded", style_strength=0.15, attributes={"style": "shaded"}),
)
"""The concepts of the quality benchmark: six objects built on `HELDOUT_COMBINATIONS` (or on hues between the named
ones, nearest-named combination held out) and two styles."""

CONCEPTS_BY_TOKEN = {c.token: c for c in BENCHMARK_CONCEPTS}


def _main(argv=None) -> int:
    """Look at the world or time the renderer: `python -m textinv.shapes.world --bench` or `--sheet out.png`."""
    import argparse

    from textinv.io import atomic_path

    parser = argparse.ArgumentParser(prog="python -m textinv.shapes.world", description=_main.__doc__)
    parser.add_argument("--bench", action="store_true", help="print rendering speed (images/s)")
    parser.add_argument("--batch", type=int, default=256, help="batch size for --bench")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sheet", help="write a contact sheet of random scenes (PNG) here")
    parser.add_argument("--concepts", help="write the benchmark concepts' training pictures (PNG) here")
    parser.add_argument("--n", type=int, default=64, help="scenes on the sheet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bench:
        speed = benchmark_render(args.batch, device=args.device, seed=args.seed)
        print(f"render: {speed:.0f} images/s (batch {args.batch}, {args.device}, {args.threads} thread(s))")
    if args.sheet:
        batch = sample_batch(args.n, torch.Generator().manual_seed(args.seed))
        with atomic_path(args.sheet) as tmp:
            contact_sheet(render(batch), upscale=2).save(tmp, format="PNG")
        for i, text in enumerate(captions(batch, args.seed)[:16]):
            print(f"{i:2d} {text}")
    if args.concepts:
        scenes = [s for c in BENCHMARK_CONCEPTS for s in c.training_scenes(5, args.seed)]
        with atomic_path(args.concepts) as tmp:
            contact_sheet(render(scenes), columns=5, upscale=2).save(tmp, format="PNG")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
