"""The judge of the shapes world: a small CNN that reads a picture's attributes back.

Textual Inversion is scored on two things (Gal et al., ICLR 2023, section 5): reconstruction (does a picture made
from the learned word show the concept?) and editability (does the word still obey a prompt that puts it somewhere
new?). In the shapes world both become questions about attributes, and this probe answers them: it predicts the main
object's shape, named colour, exact hue, pattern, stripe angle, size and position, the background, the style, and
whether there is a second object (and its shape and colour).

It is trained only on fresh renders (`world.sample_batch`), a new batch every step, so it never sees the same picture
twice and cannot overfit. The shipped weights are `textinv/shapes/probe/probe.safetensors` (float16), with the
training config and the accuracy it reached both inside the file and beside it in `probe.json`. Training runs in
cycles (warmup, cosine decay); `--init` starts a further cycle from earlier weights:

    python -m textinv.shapes.probe --train --steps 4000 --out /tmp/p1.safetensors
    python -m textinv.shapes.probe --train --init /tmp/p1.safetensors --steps 2000 --lr 1e-3 --out /tmp/p2.safetensors
    then five more cycles, each `--init` the last, all with `--pattern-weight 3 --free-hue-prob 0.6`:
    --steps 2400 --lr 1e-3; --steps 1400 --lr 7e-4; --steps 2400 --lr 5e-4; --steps 2200 --lr 3e-4 --seed 7;
    --steps 5000 --lr 3e-4 --seed 8; then (at the default --free-hue-prob 0.25) --steps 8000 --lr 1.5e-4
    --seed 10 (the shipped weights: 27,400 steps, 205 min on one CPU thread in all)
    python -m textinv.shapes.probe --eval

Every head but one learns quickly. The pattern (stripes, dots or checks, and so the stripe angle) is the slow one: a
from-scratch CNN confuses stripes with checks for hundreds of thousands of pictures. The orientation channels
(`_orientation_channels`) and the heavier pattern loss help; more steps (a GPU makes them cheap) help most. (The
shipped weights' first cycle predates the two orientation channels; their stem weights for them started at zero.)

>>> probe = Probe.load()                         # doctest: +SKIP
>>> probe.predict(world.render(scene))["shape"]  # doctest: +SKIP
['star']
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from textinv.errors import ConfigError, ModelError
from textinv.io import atomic_path, write_json
from textinv.shapes import world

DEFAULT_PATH = Path(__file__).parent / "probe" / "probe.safetensors"
FORMAT = "textinv-shapes-probe/1"

# Class heads: attribute -> its class names, in the world's order.
CLASS_HEADS = {
    "shape": world.SHAPES,
    "color": tuple(world.COLORS),
    "pattern": world.PATTERNS,
    "size": tuple(world.SIZES),
    "position": tuple(world.POSITIONS),
    "background": tuple(world.BACKGROUNDS),
    "style": world.STYLES,
    "has_second": ("no", "yes"),
    "second_shape": world.SHAPES,
    "second_color": tuple(world.COLORS),
}
# Angle heads, read as (cos, sin) of the angle times a symmetry factor: hue is periodic in 360 degrees, stripes in 180.
ANGLE_HEADS = {"hue": 1, "stripe_angle": 2}
ATTRIBUTES = tuple(CLASS_HEADS) + tuple(ANGLE_HEADS)


@dataclass
class ProbeConfig:
    """How the probe is built and trained; saved with its weights."""

    widths: tuple[int, ...] = (24, 32, 64, 128)  # channels of the stem and of the three conv stages
    hidden: int = 256  # width of the shared layer before the heads
    steps: int = 4000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    noise: float = 0.03  # largest std of the Gaussian pixel noise added in training (generated pictures are noisy)
    seed: int = 0
    free_hue_prob: float = 0.25  # as world.sample_batch
    second_prob: float = 0.3
    pattern_weight: float = 1.0  # weight of the pattern and stripe-angle losses
    init: str | None = None  # start from these weights (a further training cycle: warmup and cosine again)
    previous_steps: int = 0  # steps of the cycles before this one (recorded from `init`)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ConfigError(f"widths must be four positive channel counts (stem, then three stages), "
                              f"got {self.widths}")
        for name in ("steps", "batch", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


def _head_sizes() -> dict[str, int]:
    sizes = {name: len(classes) for name, classes in CLASS_HEADS.items()}
    sizes.update({name: 2 for name in ANGLE_HEADS})
    return sizes


def _orientation_channels(images: torch.Tensor, window: int = 7) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, H, W): the local structure tensor's orientation, (Jxx - Jyy, 2 Jxy) / (Jxx + Jyy).

    Its length is the coherence: near 1 inside stripes (one orientation), near 0 inside checks and dots (edges
    every way) and solid fills (no edges); its angle is twice the stripes' normal. Without it the network took
    hundreds of thousands of pictures and still confused stripes with checks; with it the difference is one channel.
    """
    lum = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sobel = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    grads = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), torch.stack([sobel, sobel.T]).unsqueeze(1))
    gx, gy = grads[:, :1], grads[:, 1:]
    tensor = torch.cat([gx * gx, gy * gy, gx * gy], dim=1)  # (B, 3, H, W): Jxx, Jyy, Jxy
    tensor = F.avg_pool2d(tensor, window, stride=1, padding=window // 2, count_include_pad=False)
    jxx, jyy, jxy = tensor.unbind(1)
    trace = (jxx + jyy + 1e-4).unsqueeze(1)
    return torch.cat([(jxx - jyy).unsqueeze(1), (2 * jxy).unsqueeze(1)], dim=1) / trace


def background_channels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 9, H, W): the picture, its difference from the background colour, a
    foreground map (the largest channel difference, scaled so the strongest pixel is 1) and the local orientation
    (`_orientation_channels`).

    Every background in the world is one colour, so the median of the border pixels finds it (an object covers far
    less than half the border). Handing the network the difference up front spares it learning figure against
    ground for every pair of object and background colours, which was most of what made it slow to train: with these
    channels shape accuracy after 10k pictures went from about 40 % to over 90 % on varied colours.
    """
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]],
                       dim=2)  # (B, 3, 4H - 4)
    background = border.median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1)
    diff = images - background
    fg = diff.abs().amax(1, keepdim=True)
    fg = fg / fg.amax(dim=(2, 3), keepdim=True).clamp_min(0.05)
    return torch.cat([images * 2 - 1, diff * 2, fg * 2 - 1, _orientation_channels(images)], dim=1)


IN_CHANNELS = 9  # what `background_channels` gives


class ProbeNet(nn.Module):
    """A 4x4 stride-2 stem to 32x32, three stages of two 3x3 convs (batch norm, ReLU) with 2x2 max pools between
    them (32, 16, 8 pixels), then two readouts of the last 8x8 map into a shared layer and one linear layer for all
    heads.

    The input is `background_channels(images)`. The readouts: global max and mean pooling, which are the same
    wherever the object stands (so a shape learnt at one place is known at all nine), and a coarse 4x4 map of a few
    channels, which keeps where things are (position, and which object is the second one). The stem halves the
    resolution at once (it sees each 2x2 block with its neighbours, so no detail is lost) because full-resolution
    convs cost most of the time on a CPU. Input (B, 3, 64, 64) in [0, 1]; other sizes are resized to 64.
    """

    def __init__(self, widths=(24, 32, 64, 128), hidden: int = 256, map_channels: int = 16):
        super().__init__()
        layers = [nn.Conv2d(IN_CHANNELS, widths[0], 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                  nn.ReLU(inplace=True)]
        c_in = widths[0]
        for i, c in enumerate(widths[1:]):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)  # (B, C, 8, 8)
        self.to_map = nn.Sequential(nn.Conv2d(c_in, map_channels, 1), nn.ReLU(inplace=True), nn.AvgPool2d(2),
                                    nn.Flatten())  # (B, map_channels * 16)
        self.shared = nn.Sequential(nn.Linear(2 * c_in + map_channels * 16, hidden), nn.ReLU(inplace=True))
        self.sizes = _head_sizes()
        self.head = nn.Linear(hidden, sum(self.sizes.values()))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (world.RESOLUTION, world.RESOLUTION):
            images = F.interpolate(images, size=(world.RESOLUTION, world.RESOLUTION), mode="bilinear",
                                   antialias=True, align_corners=False)
        # channels-last runs the convs about 1.5x faster on a CPU
        x = background_channels(images).contiguous(memory_format=torch.channels_last)  # (B, 9, 64, 64)
        f = self.features(x)  # (B, C, 8, 8)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)  # (B, 2C)
        x = self.shared(torch.cat([pooled, self.to_map(f)], dim=1))  # (B, hidden)
        out = self.head(x)  # (B, sum of head sizes)
        return dict(zip(self.sizes, out.split(list(self.sizes.values()), dim=1)))


def _angle_target(degrees: torch.Tensor, factor: int) -> torch.Tensor:
    a = torch.deg2rad(degrees.float() * factor)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _angle_of(vec: torch.Tensor, factor: int) -> torch.Tensor:
    period = 360.0 / factor
    return (torch.rad2deg(torch.atan2(vec[:, 1], vec[:, 0])) / factor) % period


def probe_loss(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], pattern_weight: float = 1.0
               ) -> torch.Tensor:
    """Sum of the heads' losses: cross-entropy for classes (the second object's heads only where there is one),
    squared error on (cos, sin) for angles (the stripe angle only on striped objects). `pattern_weight` scales the
    pattern and stripe-angle terms, the slowest to learn."""
    loss = out["shape"].new_zeros(())
    for name in CLASS_HEADS:
        weight = pattern_weight if name == "pattern" else 1.0
        loss = loss + weight * F.cross_entropy(out[name], labels[name], ignore_index=-1)
    loss = loss + F.mse_loss(out["hue"], _angle_target(labels["hue"], 1)) * 2
    stripes = labels["pattern"] == world.PATTERNS.index("stripes")
    if stripes.any():
        loss = loss + pattern_weight * F.mse_loss(out["stripe_angle"][stripes],
                                                  _angle_target(labels["stripe_angle"][stripes], 2))
    return loss


def refine_hues(images: torch.Tensor, estimate: torch.Tensor, window: float = 25.0) -> torch.Tensor:
    """Sharpen the network's hue estimates (B,) by measuring the pixels: the circular mean hue of the object's pixels
    whose hue lies within `window` degrees of the estimate, weighted by saturation and distance from the background.

    The regression head pulls hues between two named colours towards the nearer name (it saw named hues most), by
    up to 15 degrees; the pixels do not, since patterns, shading and strokes in this world keep the hue (they mix
    with white or black). Images with no such pixels keep the estimate.
    """
    images = images.detach().float().cpu()
    rgb = images.permute(0, 2, 3, 1).reshape(images.shape[0], -1, 3)  # (B, HW, 3)
    hue = world.rgb_to_hue(rgb.reshape(-1, 3)).view(rgb.shape[:2])  # (B, HW)
    mx, mn = rgb.max(-1).values, rgb.min(-1).values
    saturation = (mx - mn) / mx.clamp_min(1e-6)
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, None, :]  # (B, 1, 3)
    fg = (rgb - background).abs().amax(-1)
    near = ((hue - estimate[:, None] + 180.0) % 360.0 - 180.0).abs() < window
    weight = saturation * fg * near * (fg > 0.15) * (saturation > 0.3)
    a = torch.deg2rad(hue)
    c, s = (weight * torch.cos(a)).sum(1), (weight * torch.sin(a)).sum(1)
    measured = torch.rad2deg(torch.atan2(s, c)) % 360.0
    return torch.where(weight.sum(1) > 1.0, measured, estimate.float())


class Probe:
    """A trained `ProbeNet` with its config: reads attributes from pictures.

    >>> probe = Probe.load()                                          # doctest: +SKIP
    >>> probe.predict(torch.rand(2, 3, 64, 64))["style"]              # doctest: +SKIP
    ['sketchy', 'sketchy']
    """

    def __init__(self, net: ProbeNet, config: ProbeConfig, metrics: dict | None = None):
        self.net = net.eval()
        self.config = config
        self.metrics = metrics or {}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Probe":
        self.net.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Raw head outputs for (B, 3, H, W) images in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
        self.net.eval()
        parts = [self.net(images[i:i + batch_size].to(self.device, torch.float32))
                 for i in range(0, images.shape[0], batch_size)]
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}

    def predict(self, images: torch.Tensor, refine_hue: bool = True) -> dict[str, list]:
        """Attribute -> one value per image: class names, hue and stripe angle in degrees, `has_second` as a bool,
        and the second object's shape and colour (None where the probe sees no second object)."""
        out = self.logits(images)
        pred: dict[str, list] = {}
        for name, classes in CLASS_HEADS.items():
            pred[name] = [classes[i] for i in out[name].argmax(1).tolist()]
        pred["has_second"] = [v == "yes" for v in pred["has_second"]]
        for name in ("second_shape", "second_color"):
            pred[name] = [v if has else None for v, has in zip(pred[name], pred["has_second"])]
        for name, factor in ANGLE_HEADS.items():
            pred[name] = _angle_of(out[name], factor).tolist()
        if refine_hue:
            pred["hue"] = refine_hues(images, _angle_of(out["hue"], 1)).tolist()
        return pred

    def save(self, path: str | Path = DEFAULT_PATH, dtype: torch.dtype = torch.float16) -> Path:
        """Write the weights (float16 by default) as safetensors, config and metrics in its metadata, and the same
        as JSON beside it (`probe.json` for `probe.safetensors`). Both writes are atomic."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = self._meta()
        tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in self.net.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"textinv": json.dumps(meta)})
        write_json(path.with_suffix(".json"), meta)
        return path

    def _meta(self) -> dict:
        return {"format": FORMAT, "config": asdict(self.config), "classes": {k: list(v) for k, v in
                                                                             CLASS_HEADS.items()},
                "metrics": self.metrics}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH, device="cpu") -> "Probe":
        """Load a probe written by `save`. Raises ModelError if the file is missing, not a probe, or was trained on
        a world whose attribute lists have changed since (retrain it then)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no probe weights at {path}: train them with "
                             f"`python -m textinv.shapes.probe --train --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("textinv")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # SafetensorError and friends: not a (whole) safetensors file
            raise ModelError(f"{path} is not a readable safetensors file ({e}): is it a probe written by "
                             f"Probe.save?") from None
        try:
            meta = json.loads(raw)
        except (TypeError, ValueError):
            raise ModelError(f"{path} has no textinv probe metadata: is it a probe written by Probe.save?") from None
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path} is format {meta.get('format')!r}, this textinv reads {FORMAT!r}")
        classes = {k: list(v) for k, v in CLASS_HEADS.items()}
        if meta.get("classes") != classes:
            raise ModelError(f"{path} was trained on a different shapes world (its attribute lists differ): "
                             f"retrain it with `python -m textinv.shapes.probe --train`")
        config = ProbeConfig(**meta["config"])
        net = ProbeNet(config.widths, config.hidden)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
        return cls(net.to(device, memory_format=torch.channels_last), config, meta.get("metrics"))


ANGLE_TOLERANCE = {"hue": 12.0, "stripe_angle": 12.0}
"""Default tolerance (degrees) within which a read angle counts as matching: about half the gap between named hues."""


def matches(pred: dict[str, list], expected: dict, tolerance: dict[str, float] | None = None) -> list[dict]:
    """Compare `Probe.predict` output with expected attribute values: one {attribute: bool} per image.

    Angles (`hue`, `stripe_angle`) match within `tolerance` degrees (default `ANGLE_TOLERANCE`), around the circle;
    everything else must be equal. Use it for both halves of the benchmark: a concept's `attributes`
    (reconstruction) and an edit prompt's expected values (editability).

    >>> matches({"shape": ["star"], "hue": [170.0]}, {"shape": "star", "hue": 163.0})
    [{'shape': True, 'hue': True}]
    """
    tolerance = {**ANGLE_TOLERANCE, **(tolerance or {})}
    unknown = set(expected) - set(ATTRIBUTES)
    if unknown:
        raise ConfigError(f"the probe does not read {sorted(unknown)}: choose from {', '.join(ATTRIBUTES)}")
    n = len(next(iter(pred.values())))
    rows = []
    for i in range(n):
        row = {}
        for name, want in expected.items():
            got = pred[name][i]
            if name in ANGLE_HEADS:
                period = 360.0 / ANGLE_HEADS[name]
                row[name] = abs((got - want + period / 2) % period - period / 2) <= tolerance[name]
            else:
                row[name] = got == want
        rows.append(row)
    return rows


def _noisy(images: torch.Tensor, max_std: float, g: torch.Generator) -> torch.Tensor:
    if max_std <= 0:
        return images
    std = torch.rand(images.shape[0], 1, 1, 1, generator=g) * max_std
    noise = torch.randn(images.shape, generator=g)
    return (images + (std * noise).to(images.device)).clamp(0, 1)


def train_probe(config: ProbeConfig | None = None, device="cpu", log=print, **overrides) -> Probe:
    """Train a probe on fresh renders (a new batch every step) and return it (evaluated, see `metrics`).

    Keyword arguments override fields of `config`, e.g. `train_probe(steps=20, batch=16)`.

    >>> probe = train_probe(steps=2, batch=4, log=None)
    >>> sorted(probe.predict(torch.rand(1, 3, 64, 64)))[:3]
    ['background', 'color', 'has_second']
    """
    config = ProbeConfig(**{**asdict(config or ProbeConfig()), **overrides})
    if config.init:
        start_from = Probe.load(config.init)
        if (start_from.config.widths, start_from.config.hidden) != (config.widths, config.hidden):
            raise ConfigError(f"{config.init} has widths {start_from.config.widths} and hidden "
                              f"{start_from.config.hidden}; train with the same or without --init")
        config.previous_steps = start_from.config.previous_steps + start_from.config.steps
        previous_seconds = start_from.metrics.get("total_train_seconds", start_from.metrics.get("train_seconds", 0))
        net = start_from.net
    else:
        net, previous_seconds = ProbeNet(config.widths, config.hidden), 0.0
    net = net.to(device, memory_format=torch.channels_last).train()
    # A later cycle draws other pictures than the first: its stream starts from the seed plus the steps before it.
    torch.manual_seed(config.seed + config.previous_steps)
    g = torch.Generator().manual_seed(config.seed + config.previous_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    seen = {name: [] for name in ("shape", "pattern", "size", "style", "second_shape")}
    for step in range(config.steps):
        # Linear warmup, then cosine decay to zero.
        if step < config.warmup:
            lr = config.lr * (step + 1) / config.warmup
        else:
            t = (step - config.warmup) / max(1, config.steps - config.warmup)
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * t))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = world.sample_batch(config.batch, g, device, free_hue_prob=config.free_hue_prob,
                                   second_prob=config.second_prob)
        images = _noisy(world.render(batch, device), config.noise, g)  # (B, 3, 64, 64)
        labels = batch.labels()
        out = net(images)
        loss = probe_loss(out, labels, config.pattern_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for name in seen:  # running accuracy on the training batches (each is fresh, so it is a fair estimate)
            keep = labels[name] >= 0
            seen[name].append((out[name].argmax(1)[keep] == labels[name][keep]).float().mean().item())
        if log and ((step + 1) % 100 == 0 or step == config.steps - 1):
            accs = "  ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in seen.items())
            log(f"step {step + 1:5d}  loss {loss.item():.4f}  lr {lr:.2e}  {accs}  {time.perf_counter() - start:.0f}s")
            seen = {k: [] for k in seen}
    probe = Probe(net.eval(), config)
    seconds = time.perf_counter() - start
    probe.metrics = {"train_seconds": round(seconds, 1), "total_train_seconds": round(previous_seconds + seconds, 1),
                     "total_steps": config.previous_steps + config.steps}
    return probe


LEGIBLE_PIXELS = 32
"""A fill shown in fewer pixels than this (a 5x5 patch and a bit) is not counted in `pattern_where_visible`."""


def evaluate(probe: Probe, n: int = 1024, seed: int = 12345, free_hue_prob: float = 0.0,
             noise: float = 0.0) -> dict[str, float]:
    """Per-attribute accuracy of `probe` on `n` fresh renders (seed apart from training's), plus mean absolute hue
    and stripe-angle errors in degrees. Named hues only by default: an in-between hue has no single right name."""
    g = torch.Generator().manual_seed(seed)
    batch = world.sample_batch(n, g, free_hue_prob=free_hue_prob)
    images = _noisy(world.render(batch), noise, g)
    out, labels = probe.logits(images), batch.labels()
    result = {}
    for name in CLASS_HEADS:
        keep = labels[name] >= 0
        result[name] = (out[name].argmax(1)[keep] == labels[name][keep]).float().mean().item()
    # the pattern again, on the pictures whose fill shows in enough pixels to be read (see world.pattern_visibility)
    visible = world.pattern_visibility(batch) >= LEGIBLE_PIXELS
    pattern_ok = out["pattern"].argmax(1) == labels["pattern"]
    result["pattern_where_visible"] = pattern_ok[visible].float().mean().item()
    result["pattern_visible_share"] = visible.float().mean().item()
    hue_err = (refine_hues(images, _angle_of(out["hue"], 1)) - labels["hue"] + 180.0) % 360.0 - 180.0
    result["hue_error_deg"] = hue_err.abs().mean().item()
    stripes = labels["pattern"] == world.PATTERNS.index("stripes")
    angle_err = (_angle_of(out["stripe_angle"][stripes], 2) - labels["stripe_angle"][stripes] + 90.0) % 180.0 - 90.0
    result["stripe_angle_error_deg"] = angle_err.abs().mean().item()
    return result


def _format_metrics(metrics: dict[str, float]) -> str:
    lines = []
    for name, value in metrics.items():
        lines.append(f"  {name:24s} {value:8.2f}" if name.endswith("_deg") else f"  {name:24s} {value:8.4f}")
    return "\n".join(lines)


def _main(argv=None) -> int:
    """Train or evaluate the shapes-world attribute probe."""
    import argparse

    from textinv.errors import TextinvError

    d = ProbeConfig()
    parser = argparse.ArgumentParser(prog="python -m textinv.shapes.probe", description=_main.__doc__)
    parser.add_argument("--train", action="store_true", help="train a probe on fresh renders and save it")
    parser.add_argument("--eval", action="store_true", help="print per-attribute accuracy on fresh renders")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=str(DEFAULT_PATH), help="weights file to write (--train)")
    parser.add_argument("--init", default=None, help="start training from these weights (another cycle)")
    parser.add_argument("--pattern-weight", type=float, default=d.pattern_weight,
                        help="weight of the pattern and stripe-angle losses")
    parser.add_argument("--free-hue-prob", type=float, default=d.free_hue_prob,
                        help="share of objects drawn at any hue rather than a named one")
    parser.add_argument("--weights", default=None, help="weights to evaluate (default: --out)")
    parser.add_argument("--n", type=int, default=2048, help="renders to evaluate on")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not (args.train or args.eval):
        parser.error("say --train, --eval or both")
    torch.set_num_threads(args.threads)
    try:
        if args.train:
            probe = train_probe(ProbeConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                            init=args.init, pattern_weight=args.pattern_weight,
                                            free_hue_prob=args.free_hue_prob),
                                device=args.device)
            probe.metrics.update({k: round(v, 4) for k, v in evaluate(probe, args.n).items()})
            probe.save(args.out)
            print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) after "
                  f"{probe.metrics['train_seconds']}s")
        if args.eval:
            probe = Probe.load(args.weights or args.out, device=args.device)
            print(f"named hues, {args.n} fresh renders:")
            print(_format_metrics(evaluate(probe, args.n)))
            free = evaluate(probe, args.n, seed=54321, free_hue_prob=1.0)
            print(f"any hue: hue error {free['hue_error_deg']:.2f} deg")
            noisy = evaluate(probe, args.n, seed=777, noise=0.03)
            print(f"with pixel noise up to 0.03: worst accuracy "
                  f"{min(v for k, v in noisy.items() if not k.endswith(('_deg', '_share'))):.4f}")
    except TextinvError as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
