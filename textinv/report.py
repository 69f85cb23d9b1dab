"""Drawing for the reports `textinv demo` and `textinv score` write: colours, fonts, the loss chart, inlined PNGs.

Pillow only, so a report needs nothing a training run does not.
"""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw, ImageFont

INK, MUTED, PAPER, LINE = (25, 25, 30), (110, 110, 120), (255, 255, 255), (220, 220, 226)
PASS, FAIL, UNKNOWN = (40, 160, 70), (210, 50, 45), (190, 190, 196)

BASE_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1250px;
       color: #19191e; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.muted { color: #6e6e78; } .row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: .7rem; color: #6e6e78; }
table { border-collapse: collapse; } td, th { padding: .3rem .8rem; border-bottom: 1px solid #dcdce2; text-align: left; }
code { background: #f2f2f5; padding: 0 .25rem; border-radius: 3px; }
"""
"""The look both reports' pages share; each adds its own rules."""


def font(size: int):
    """Pillow's default font at `size` pixels (a scalable one when Pillow has FreeType, as its wheels do)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def data_uri(img: Image.Image) -> str:
    """`img` as a PNG data URI, to inline it in an HTML page."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


FIXED = (214, 120, 30)  # the validation loss's line (orange beside the loss's blue)


def draw_loss_curve(losses: list[tuple[int, float]], size: tuple[int, int] = (420, 190),
                    fixed: list[tuple[int, float]] = ()) -> Image.Image:
    """The training loss (mean over each log interval) against the step, as a small chart; `fixed`: the run's
    validation losses (`TrainResult.validation`, the loss at draws fixed for the run), drawn beside it.

    >>> draw_loss_curve([(1, 0.3), (2, 0.2)]).size
    (420, 190)
    """
    w, h = size
    img = Image.new("RGB", size, PAPER)
    d = ImageDraw.Draw(img)
    small = font(12)
    left, right, top, bottom = 52, w - 12, 24, h - 28
    d.text((left, 4), "training loss", fill=INK, font=font(14))
    d.rectangle([left, top, right, bottom], outline=LINE)
    if not losses:
        d.text((left + 8, top + 8), "no loss logged", fill=MUTED, font=small)
        return img
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    lo, hi = min(values + [v for _, v in fixed]), max(values + [v for _, v in fixed])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    s0, s1 = min(steps + [s for s, _ in fixed]), max(steps + [s for s, _ in fixed])
    span = max(s1 - s0, 1)

    def xy(s, v):
        return left + (s - s0) / span * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top)

    for frac in (0.25, 0.5, 0.75):  # light grid
        y = top + frac * (bottom - top)
        d.line([left + 1, y, right - 1, y], fill=(240, 240, 244))
    points = [xy(s, v) for s, v in losses]
    if len(points) == 1:
        d.ellipse([points[0][0] - 3, points[0][1] - 3, points[0][0] + 3, points[0][1] + 3], fill=(40, 90, 200))
    else:
        # The diffusion loss of a few steps is noisy (each draws its own timesteps): the raw interval means in a
        # light line, their running mean (over about a tenth of the run) in a dark one.
        d.line(points, fill=(175, 195, 235), width=1)
        window = max(1, len(values) // 10)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(40, 90, 200), width=2)
    if len(fixed) > 1:  # (its own steps: the start's, every N and the last)
        d.line([xy(s, v) for s, v in fixed], fill=FIXED, width=2)
        label = "at fixed draws"
        d.text((right - d.textlength(label, font=small), 6), label, fill=FIXED, font=small)
    d.text((4, top - 6), f"{hi:.3f}", fill=MUTED, font=small)
    d.text((4, bottom - 8), f"{lo:.3f}", fill=MUTED, font=small)
    d.text((left, bottom + 6), f"step {s0}", fill=MUTED, font=small)
    label = f"step {s1}"
    d.text((right - d.textlength(label, font=small), bottom + 6), label, fill=MUTED, font=small)
    return img
