"""`textinv demo`: learn one concept from its few pictures on the CPU, then show what the new word can do.

The pictures are committed in `examples/<concept>/` (five 64x64 renders of a benchmark concept of the shapes world,
the teal star by default: a hue between two named colours, which no word of the world says). `run_demo` reads top to
bottom:

1. check the settings, the model folder, the pictures and the probe before anything heavy is loaded;
2. learn the concept's token with `train()` from the pictures (the world's caption phrasing, see `evaluate`);
3. draw the concept in new prompts ("a photo of S*" and the concept's edit prompts), and beside each the same
   prompt with the init word instead of S* (same seeds), for contrast;
4. judge every picture with the attribute probe: does it show the concept, and does it obey the edit?
5. write `report.html` (self-contained: pictures inlined as PNGs, scaled up without smoothing), `report.png`
   (the same on one sheet, drawn with Pillow), `scores.json`, and the learned embedding under `run/`.

A re-run into the same --out sets the last report (and the run it describes) aside until its own is complete, so a
run that fails, is interrupted or is killed leaves the last good report where it was (see `_set_aside`). One demo at
a time writes an --out: a second one started meanwhile is refused (`LOCK_FILE`).

    textinv demo                    # about 2-3 minutes on 2 CPU cores
    textinv demo --quick            # a few seconds; every stage runs, nothing is really learned
    python -m textinv.shapes.demo --write-examples     # re-render examples/teal-star/ from the world
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from textinv import __version__
from textinv.config import TrainConfig, check_guidance, check_lr, check_seed, opt
from textinv.errors import ConfigError, ModelError, TrainingError
from textinv.io import atomic_path, output_folder, write_json, write_text
from textinv.report import (BASE_CSS, FAIL, INK, LINE, MUTED, PAPER, PASS, UNKNOWN, data_uri, draw_loss_curve,
                            font)
from textinv.shapes.evaluate import (check_judged_size, prompt_sets, sample, score_images, train_config,
                                     write_templates, write_training_images)
from textinv.shapes.world import BENCHMARK_CONCEPTS, Concept
from textinv.tokens import scratch_tokens

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
"""The committed example pictures, one folder per concept (present in a source checkout / editable install)."""
DEFAULT_CONCEPT = "teal-star"
METHODS = ("textual-inversion", "init-word")  # what the report puts side by side
SCALE = 2  # 64-pixel pictures are shown at 128 pixels, nearest-neighbour
OWNED = ("report.html", "report.png", "scores.json", "templates.txt", "run")  # what a run writes in --out
PREVIOUS = ".previous-report"  # where a re-run keeps the last report until its own is complete
LOCK_FILE = ".textinv-demo.lock"  # held by the one demo writing --out (`_held`)


def slug(concept: Concept) -> str:
    """The concept's folder name under `examples/`: its name with dashes ("teal-star")."""
    return concept.name.replace(" ", "-")


def find_concept(name: str) -> Concept:
    """A benchmark concept by folder name, name or token ("teal-star", "teal star", "<teal-star>")."""
    for c in BENCHMARK_CONCEPTS:
        if name in (slug(c), c.name, c.token):
            return c
    raise ConfigError(f"unknown demo concept {name!r}; choose one of {', '.join(slug(c) for c in BENCHMARK_CONCEPTS)}")


# The full run is sized for a 3-minute budget on 2 CPU cores with room to spare. Measured on 2 cores shared with
# other jobs: loading 5-7 s, training 0.10-0.17 s/step (batch 4), drawing 0.35-0.55 s per picture (25 steps with
# guidance), so 400 steps and 64 pictures take 1.5-2 minutes (each report lists its own times).
FULL = dict(steps=400, samples=4, sample_steps=25)
QUICK = dict(steps=3, samples=1, sample_steps=2)


@dataclass
class DemoConfig:
    """Settings of `textinv demo`; saved in its scores.json."""

    out: str = opt("demo-out", "folder for report.html, report.png, scores.json and the learned embedding (run/)")
    concept: str = opt(DEFAULT_CONCEPT, "which concept to learn: a folder of examples/ named after a benchmark concept")
    model: str = opt("shapes", "the model: a bundled name or a diffusers folder")
    probe: str = opt(None, "attribute probe weights (default: the probe installed with textinv)")
    steps: int = opt(None, f"training steps (default: {FULL['steps']}; {QUICK['steps']} with --quick)")
    lr: float = opt(5e-3, "learning rate")
    batch: int = opt(4, "training images per step")
    samples: int = opt(None, f"pictures per prompt and method (default: {FULL['samples']}; {QUICK['samples']} with "
                             f"--quick)")
    sample_steps: int = opt(None, f"denoising steps per picture (default: {FULL['sample_steps']}; "
                                  f"{QUICK['sample_steps']} with --quick)")
    guidance: float = opt(None, "classifier-free guidance scale (default: the model's own, 3 for the shapes model)")
    seed: int = opt(0, "seed of the training run; picture i of every prompt uses seed + i")
    quick: bool = opt(False, "a few seconds' run through every stage (for tests): learns nothing")

    def resolved(self) -> "DemoConfig":
        """A copy with every unset setting filled in (the full run's values, or --quick's), checked."""
        defaults = QUICK if self.quick else FULL
        filled = {k: (defaults[k] if getattr(self, k) is None and k in defaults else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        config = DemoConfig(**filled)
        for name in ("steps", "batch", "samples", "sample_steps"):
            value = getattr(config, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        check_lr(config.lr)
        check_guidance(config.guidance)
        check_seed(config.seed, max(config.samples, 4), negative=True)  # (picture i uses seed + i; the run's grids too)
        find_concept(config.concept)
        return config


@dataclass
class DemoResult:
    html: Path
    png: Path
    scores: Path
    embedding: Path
    seconds: float
    report: dict


# ---------------------------------------------------------------------------------------------------------------
# 1. checks


def example_images(concept: Concept, out: Path) -> tuple[Path, bool]:
    """The folder of the concept's example pictures, and whether they came from `examples/` (True) or had to be
    rendered into `out` because this install has no examples folder (False; the pictures are the same)."""
    from textinv.data import find_images

    folder = EXAMPLES / slug(concept)
    if folder.is_dir():
        find_images(folder)  # raises a clear DataError if the folder holds no pictures
        return folder, True
    rendered = out / "examples" / slug(concept)
    write_training_images(concept, rendered)
    return rendered, False


def _check_model(source: str) -> None:
    from textinv.models import BUNDLED_MODELS, resolve_source

    folder = BUNDLED_MODELS.get(source)
    if folder is not None and not (folder / "model_index.json").exists():
        raise ModelError(
            f"the demo needs the bundled '{source}' model in {folder}, which this install does not have. Export "
            f"it with `python -m textinv.shapes.pretrain --export --work WORK --out {folder}` after pretraining "
            f"(see that module's help), or pass --model with a diffusers folder of a shapes model"
        )
    resolve_source(source)  # a clear error for a bad path


def load_probe(path: str | None):
    """The attribute probe, or None (with the reason) when the default weights are not installed. An explicit
    path that does not load is an error."""
    from textinv.shapes.probe import DEFAULT_PATH, Probe

    if path is None and not DEFAULT_PATH.is_file():
        return None, (f"no probe weights installed ({DEFAULT_PATH}), so the pictures are shown without scores; "
                      f"train them with `python -m textinv.shapes.probe --train`")
    return Probe.load(path or DEFAULT_PATH), None


# ---------------------------------------------------------------------------------------------------------------
# the last report, kept until the next is complete


@contextlib.contextmanager
def _replacing_report(out: Path):
    """Move the last report's files (`OWNED`) into `out/PREVIOUS`, run the block that writes the new ones, then
    drop the old; if the block raises (a diverging run, Ctrl-C), put the old back in place of the partial new.

    A run killed outright (power cut, SIGKILL) leaves PREVIOUS behind, and the next demo's `_put_back` restores it
    first. The marker file `.complete` inside says the set-aside finished, so the new run may have written
    files of its own, which the put-back removes; without it the move was cut short and the old files are split
    between the two folders, with nothing new yet.
    """
    _set_aside(out)
    try:
        yield
    except BaseException:
        _put_back(out)
        raise
    gone = out / (PREVIOUS + ".gone")
    os.replace(out / PREVIOUS, gone)  # one rename: from here on the new report is the current one
    shutil.rmtree(gone)


def _set_aside(out: Path) -> None:
    keep = out / PREVIOUS
    keep.mkdir()
    for name in OWNED:
        if (out / name).exists():
            os.replace(out / name, keep / name)
    (keep / ".complete").touch()


def _put_back(out: Path) -> None:
    shutil.rmtree(out / (PREVIOUS + ".gone"), ignore_errors=True)  # a finished run killed while tidying up
    keep = out / PREVIOUS
    if not keep.is_dir():
        return
    if (keep / ".complete").exists():
        for name in OWNED:  # the unfinished run's files
            _remove(out / name)
        (keep / ".complete").unlink()  # (a put-back cut short here must not remove what it then moves back)
    for name in OWNED:
        if (keep / name).exists():
            _remove(out / name)
            os.replace(keep / name, out / name)
    shutil.rmtree(keep)


@contextlib.contextmanager
def _held(out: Path, given: str):
    """Hold `out` for this demo: a second demo into the same folder (the default demo-out, in two shells) is refused,
    naming the process, instead of putting back or setting aside the first one's report as it is written and
    training into the same run/. The lock is the operating system's (`run_folder.take_lock`, as score's), so it goes
    with its process however that ends; its hidden file goes when the demo ends, whichever way (a kill leaves it,
    held by nothing), so the folder keeps only the report and run/."""
    from textinv.run_folder import drop_lock, take_lock  # (here: it loads the model loader, seconds --help waited)

    lock = out / LOCK_FILE
    held = take_lock(lock, lambda holder: f"--out {given} is being written by another textinv demo ({holder}); wait "
                                          f"for it to finish, or choose another --out")
    try:
        yield
    finally:
        drop_lock(held, lock)


def _check_own_folder(out: Path, given: str) -> None:
    """Refuse an --out that holds anything a demo does not write: its `run/`, report and templates are replaced
    whole, so a folder of the user's own (their pictures, the folder they are in, another run) would lose files or
    get a report sheet among its pictures."""
    litter = ("thumbs.db", "desktop.ini")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWNED + ("examples",)
                     and not p.name.startswith(".") and p.name.lower() not in litter)
    run = out / "run"
    if run.is_dir() and any(run.iterdir()) and not (run / "config.yaml").is_file():
        foreign.insert(0, "run/ (not a demo's run)")
    if foreign:
        raise ConfigError(f"--out {given} is not a demo's folder (it holds {', '.join(foreign[:5])}"
                          f"{' ...' if len(foreign) > 5 else ''}); the demo replaces its report and run/ there: "
                          f"give a new or empty folder, e.g. --out demo-out")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# the run


def run_demo(config: DemoConfig | None = None, model=None, probe=None, progress: bool = True) -> DemoResult:
    """Learn the demo concept and write the report; return where it is.

    >>> result = run_demo(DemoConfig(out="demo-out"))  # doctest: +SKIP
    >>> result.html                                    # doctest: +SKIP
    PosixPath('demo-out/report.html')
    """
    started = time.perf_counter()

    # 1. checks -----------------------------------------------------------------------------------------------------
    config = (config or DemoConfig()).resolved()
    concept = find_concept(config.concept)
    out = output_folder(config.out)
    with _held(out, config.out):  # (one demo at a time)
        return _learn_draw_judge(config, concept, out, model, probe, progress, started)


def _learn_draw_judge(config: DemoConfig, concept: Concept, out: Path, model, probe, progress: bool, started: float
                      ) -> DemoResult:
    """`run_demo` once --out is held: the checks that read the folder, then learn, draw, judge and report."""
    log = print if progress else (lambda *a, **k: None)
    _put_back(out)  # a demo killed before it finished left the last good report set aside: it is the current one
    _check_own_folder(out, config.out)
    if model is None:
        _check_model(config.model)
    note = None
    if probe is None:
        probe, note = load_probe(config.probe)
    images_dir, committed = example_images(concept, out)
    pictures = [Image.open(p).convert("RGB") for p in sorted(images_dir.glob("*.png"))]
    if model is None:
        from textinv.models import load_model

        model = load_model(config.model)
    check_judged_size(model)
    config = dataclasses.replace(config, guidance=model.guidance_or_own(config.guidance))
    times = {"started": started, "ready": time.perf_counter()}  # (perf_counter at each stage's end: the report's)

    with _replacing_report(out):  # the last report stays until this one is written
        # 2. learn -------------------------------------------------------------------------------------------------
        tc = _demo_train_config(config, concept, out, images_dir)
        log(f"learning {concept.token} ({concept.name}) from {len(pictures)} pictures in {images_dir}, "
            f"{config.steps} steps", flush=True)
        rows = {m: _demo_prompts(concept, m) for m in METHODS}
        seeds = [config.seed + i for i in range(config.samples)]
        result = _learn(tc, model, progress, config.lr)
        times["trained"] = time.perf_counter()

        # 3. draw --------------------------------------------------------------------------------------------------
        drawn = _draw(model, result, rows, seeds, config, concept, log)
        times["drawn"] = time.perf_counter()

        # 4. judge -------------------------------------------------------------------------------------------------
        table = _judge(probe, rows, drawn, len(seeds))
        times["judged"] = time.perf_counter()

        # 5. report ------------------------------------------------------------------------------------------------
        report = _report(config, concept, model, probe, note, (images_dir, committed, len(pictures)), seeds, result,
                         table, times)
        html_path, png_path, json_path = _write_report(out, report, pictures, drawn, result)
    log(f"report: {html_path} (open it in a browser) and {png_path}; scores in {json_path}")
    if note:
        log(f"note: {note}")
    return DemoResult(html=html_path, png=png_path, scores=json_path, embedding=Path(report["embedding"] or ""),
                      seconds=report["seconds"]["total"], report=report)


def _demo_train_config(config: DemoConfig, concept: Concept, out: Path, images_dir: Path) -> TrainConfig:
    """The demo's training run (`evaluate.train_config`), into out/run, its prompts in out/templates.txt."""
    templates = write_templates(concept, out / "templates.txt")
    tc = train_config(concept, images_dir, templates, out / "run", config.steps, config.lr, config.batch,
                      seed=config.seed, model=config.model)
    # the loss at draws fixed for the run, four times over it: the steady line beside the noisy loss (8 draws a
    # picture: 200 samples of the UNet without gradients over a 400-step run, a few percent of its time)
    return dataclasses.replace(tc, validate_every=max(1, config.steps // 4), validation_draws=8)


def _learn(tc: TrainConfig, model, progress: bool, lr: float):
    """`train`'s result for `tc` (the model comes back without the token); a failure's advice is the demo's."""
    from textinv.train import train

    try:
        return train(tc, model=model, progress=progress)
    except TrainingError as e:  # its advice names train's flags; the demo has --lr and --batch
        raise TrainingError(f"the demo's training failed: {str(e).split('. ')[0]}. Run it again with a lower "
                            f"--lr (now {lr})") from None


def _draw(model, result, rows: dict[str, list], seeds: list[int], config: DemoConfig, concept: Concept, log
          ) -> dict[str, list[Image.Image]]:
    """Each method's pictures, every row's prompt at every seed in turn, the learned token installed meanwhile."""
    from textinv.generate import install_embedding

    drawn = {}
    with scratch_tokens(model):  # a model passed in comes back without the token
        install_embedding(model, result.embedding)
        log(f"drawing {len(rows[METHODS[0]])} prompts x {len(seeds)} seeds, with {concept.token} and with "
            f"'{concept.init_word}'", flush=True)
        for m in METHODS:
            prompts = [p for _, p, _ in rows[m] for _ in seeds]
            drawn[m] = sample(model, prompts, seeds * len(rows[m]), config.sample_steps, config.guidance)
    return drawn


def _judge(probe, rows: dict[str, list], drawn: dict[str, list[Image.Image]], k: int) -> list[dict]:
    """One entry per prompt row: each method's prompt and, with a `probe`, its verdicts on the row's `k` pictures."""
    table = []
    for j in range(len(rows[METHODS[0]])):
        entry = {"kind": rows[METHODS[0]][j][0], "expects": rows[METHODS[0]][j][2]}
        for m in METHODS:
            _, prompt, expected = rows[m][j]
            entry[m] = _judged(probe, prompt, expected, drawn[m][j * k:(j + 1) * k])
        table.append(entry)
    return table


def _judged(probe, prompt: str, expected: dict, pics: list[Image.Image]) -> dict:
    """The probe's verdicts on one prompt's pictures (None without a probe)."""
    k = len(pics)
    verdicts, readings, glimpses, hits = [None] * k, [None] * k, [None] * k, None
    if probe is not None:
        verdicts, per_attribute, predicted = score_images(probe, pics, expected)
        hits = {a: sum(v) for a, v in per_attribute.items()}  # how many pictures get each one right
        per_picture = [{a: predicted[a][i] for a in predicted} for i in range(k)]
        readings = [_reading(p) for p in per_picture]
        glimpses = [f"{p['color']} {p['shape']}, hue {p['hue']:.0f}" for p in per_picture]
    return {"prompt": prompt, "pass": verdicts, "read": readings, "glimpse": glimpses,
            "passed": sum(bool(v) for v in verdicts) if probe is not None else None, "of": k, "hits": hits}


def _report(config: DemoConfig, concept: Concept, model, probe, note: str | None,
            pictures: tuple[Path, bool, int], seeds: list[int], result, table: list[dict], times: dict[str, float]
            ) -> dict:
    """scores.json's record of the run: `pictures` is (their folder, whether committed, how many); `times` the
    perf_counter readings at the start and the end of each stage."""
    images_dir, committed, count = pictures
    report = {
        "title": f"textinv demo: learning {concept.token} from {count} pictures",
        "concept": {"name": concept.name, "token": concept.token, "init_word": concept.init_word,
                    "kind": concept.kind, "description": concept.description, "attributes": concept.attributes},
        "images": str(images_dir), "images_committed": committed,
        "model": model.describe(), "textinv_version": __version__,
        "settings": dataclasses.asdict(config), "seeds": seeds,
        "probe": None if probe is None else (getattr(probe, "metrics", None) or "loaded"), "probe_note": note,
        "loss": [list(x) for x in result.losses],
        "validation_loss": [list(x) for x in result.validation],
        "prompts": table,
        "summary": _summary(table) if probe is not None else None,
        "embedding": str(result.files[0]) if result.files else None,
        "seconds": {"load": round(times["ready"] - times["started"], 1),
                    "train": round(times["trained"] - times["ready"], 1),
                    "draw": round(times["drawn"] - times["trained"], 1),
                    "judge": round(times["judged"] - times["drawn"], 1)},
    }
    report["seconds"]["total"] = round(time.perf_counter() - times["started"], 1)  # drawing the report: well under 1 s
    return report


def _write_report(out: Path, report: dict, pictures: list[Image.Image], drawn: dict[str, list[Image.Image]], result
                  ) -> tuple[Path, Path, Path]:
    """report.png, report.html and scores.json in `out`, each written whole (`io.atomic_path`)."""
    loss_png = draw_loss_curve(result.losses, fixed=result.validation)
    sheet = draw_sheet(report, pictures, drawn, loss_png)
    html_path, png_path, json_path = out / "report.html", out / "report.png", out / "scores.json"
    with atomic_path(png_path) as tmp:
        sheet.save(tmp, format="PNG")
    write_text(html_path, render_html(report, pictures, drawn, loss_png))
    write_json(json_path, report)
    return html_path, png_path, json_path


def _demo_prompts(concept: Concept, method: str) -> list[tuple[str, str, dict]]:
    """'a photo of S*' (or the style's first) and the concept's edit prompts."""
    rows = prompt_sets(concept, method)
    return [r for r in rows if r[0] == "reconstruction"][:1] + [r for r in rows if r[0] == "edit"]


def _reading(p: dict) -> str:
    """The probe's reading of one picture, in a few words."""
    text = f"{p['size']} {p['color']} {p['pattern']} {p['shape']} (hue {p['hue']:.0f}), {p['position']}, " \
           f"{p['background']} background, {p['style']}"
    if p.get("has_second"):
        text += f", and a {p['second_color']} {p['second_shape']}"
    return text


def _summary(table: list[dict]) -> dict:
    out = {}
    for m in METHODS:
        recon = [e[m] for e in table if e["kind"] == "reconstruction"]
        edit = [e[m] for e in table if e["kind"] == "edit"]
        out[m] = {"reconstruction": [sum(x["passed"] for x in recon), sum(x["of"] for x in recon)],
                  "editability": [sum(x["passed"] for x in edit), sum(x["of"] for x in edit)]}
    return out


# ---------------------------------------------------------------------------------------------------------------
# drawing (Pillow only; the shared pieces are in textinv.report)


def _big(img: Image.Image, scale: int = SCALE) -> Image.Image:
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _count(entry: dict) -> str:
    return "not judged" if entry["passed"] is None else f"passed {entry['passed']}/{entry['of']}"


def _concept_hits(report: dict, method: str) -> str:
    """How many of all a method's pictures (every prompt's) get each of the concept's own attributes right."""
    own = next(e["expects"] for e in report["prompts"] if e["kind"] == "reconstruction")
    entries = [e[method] for e in report["prompts"] if e[method].get("hits")]
    return _counts({a: sum(e["hits"].get(a, 0) for e in entries) for a in own}, sum(e["of"] for e in entries))


def _hits(entry: dict) -> str:
    """Which attributes the pictures get right, each counted: a picture passes only with all of them, so this
    shows what a method did learn when few pass ("shape 4/4, hue 4/4, pattern 0/4")."""
    return _counts(entry["hits"], entry["of"]) if entry.get("hits") else ""


def _counts(hits: dict[str, int], of: int) -> str:
    return ", ".join(f"{a.replace('_', ' ')} {n}/{of}" for a, n in hits.items())


_CELL, _GAP = 64 * SCALE, 8  # the sheet's pictures: their side, and the room between two, in pixels


def draw_sheet(report: dict, pictures: list[Image.Image], drawn: dict, loss_png: Image.Image) -> Image.Image:
    """The whole report on one PNG: training pictures, loss, every prompt's pictures (S* beside the init word,
    a green/red bar under each for the probe's verdict), and the totals."""
    col_gap = 36
    block = max(len(report["seeds"]) * (_CELL + _GAP), 280)  # one method's pictures of a prompt
    width = max(2 * block + col_gap + 2 * 24, len(pictures) * (_CELL + _GAP) + loss_png.width + 3 * 24, 900)
    height = 90 + 34 + _CELL + 70 + 48 + len(report["prompts"]) * (_CELL + 56) + 200
    sheet = Image.new("RGB", (width, height), PAPER)
    d = ImageDraw.Draw(sheet)
    x0 = 24
    y = _sheet_heading(d, report, x0, 18)
    y = _sheet_training(sheet, d, pictures, loss_png, x0, y)
    y = _sheet_prompts(sheet, d, report, drawn, x0, x0 + block + col_gap, y)
    d.line([x0, y, width - 24, y], fill=LINE)
    y = _sheet_scores(d, report, x0, y + 12)
    y += 28
    d.text((x0, y), f"seeds {report['seeds']}; textinv {report['textinv_version']}; total "
           f"{report['seconds'].get('total', 0):.0f} s", fill=MUTED, font=font(11))
    return sheet.crop((0, 0, width, min(height, y + 30)))


def _sheet_heading(d: ImageDraw.ImageDraw, report: dict, x0: int, y: int) -> int:
    """The sheet's title and what was learned, how, at `y`; returns the `y` below them."""
    c = report["concept"]
    d.text((x0, y), report["title"], fill=INK, font=font(22))
    y += 32
    d.text((x0, y), f"{c['name']}: {c['description']}. Model: {report['model']}. {report['settings']['steps']} "
           f"steps, {report['seconds']['train']:.0f} s of training.", fill=MUTED, font=font(13))
    return y + 40


def _sheet_training(sheet: Image.Image, d: ImageDraw.ImageDraw, pictures: list[Image.Image], loss_png: Image.Image,
                    x0: int, y: int) -> int:
    """Section 1: the training pictures, the loss curve at the right; returns the `y` below them."""
    d.text((x0, y), "1. The pictures it learns from", fill=INK, font=font(16))
    y += 28
    for i, pic in enumerate(pictures):
        sheet.paste(_big(pic), (x0 + i * (_CELL + _GAP), y))
    sheet.paste(loss_png, (sheet.width - loss_png.width - 24, y - 30))
    return y + max(_CELL, loss_png.height - 30) + 30


def _sheet_prompts(sheet: Image.Image, d: ImageDraw.ImageDraw, report: dict, drawn: dict, x0: int, x1: int,
                   y: int) -> int:
    """Section 2: each prompt's pictures, S*'s from `x0` and the init word's from `x1`, a bar under each for the
    probe's verdict; returns the `y` below them."""
    c, k = report["concept"], len(report["seeds"])
    small = font(11)
    d.text((x0, y), f"2. New prompts: {c['token']} (left) and the init word '{c['init_word']}' in its place (right), "
           f"same seeds", fill=INK, font=font(16))
    y += 24
    d.text((x0, y), report["probe_note"] or "bar under each picture: green = the probe sees the concept and the "
           "edit, red = it does not", fill=FAIL if report["probe_note"] else MUTED, font=small)
    y += 24
    xs = {"textual-inversion": x0, "init-word": x1}
    labels = {"textual-inversion": c["token"], "init-word": f"'{c['init_word']}' instead"}
    for j, entry in enumerate(report["prompts"]):
        d.text((x0, y), entry["textual-inversion"]["prompt"], fill=INK, font=font(13))
        for m in METHODS:
            e = entry[m]
            d.text((xs[m], y + 19), f"{labels[m]}: {_count(e)}", fill=MUTED, font=small)
            for i in range(k):
                px, py = xs[m] + i * (_CELL + _GAP), y + 36
                sheet.paste(_big(drawn[m][j * k + i]), (px, py))
                verdict = e["pass"][i]
                color = UNKNOWN if verdict is None else PASS if verdict else FAIL
                d.rectangle([px, py + _CELL + 2, px + _CELL - 1, py + _CELL + 7], fill=color)
        y += _CELL + 56
    return y


def _sheet_scores(d: ImageDraw.ImageDraw, report: dict, x0: int, y: int) -> int:
    """Section 3: each method's totals and attributes right (or why nothing was judged); returns the `y` below."""
    c, text_font = report["concept"], font(13)
    d.text((x0, y), "3. Scores (the attribute probe's verdict)", fill=INK, font=font(16))
    y += 28
    if report["summary"] is None:
        d.text((x0, y), "not judged: " + (report["probe_note"] or "no probe"), fill=MUTED, font=text_font)
        return y
    for m in METHODS:
        s = report["summary"][m]
        name = c["token"] if m == "textual-inversion" else f"init word '{c['init_word']}'"
        d.text((x0, y), f"{name}:  shows the concept in {s['reconstruction'][0]}/{s['reconstruction'][1]} "
               f"of 'a photo of' pictures;  obeys the edit and keeps the concept in {s['editability'][0]}/"
               f"{s['editability'][1]} edited pictures", fill=INK, font=text_font)
        y += 20
        d.text((x0 + 16, y), f"the concept's attributes, over all its pictures: {_concept_hits(report, m)}",
               fill=MUTED, font=font(11))
        y += 24
    return y


_CSS = BASE_CSS + """
.note { color: #b4322d; } p.hits { font-size: .75rem; margin: 0 0 .3rem; }
img.px { image-rendering: pixelated; width: 128px; height: 128px; display: block; }
.prompt { display: grid; grid-template-columns: 1fr 1fr; gap: 28px; margin: 1rem 0; }
.prompt h3 { font-size: .95rem; font-weight: 600; margin: 0 0 .3rem; font-family: ui-monospace, monospace; }
figure.pass img { outline: 5px solid #28a046; outline-offset: -5px; }
figure.fail img { outline: 5px solid #d2322d; outline-offset: -5px; }
figcaption { max-width: 128px; }
"""


def render_html(report: dict, pictures: list[Image.Image], drawn: dict, loss_png: Image.Image) -> str:
    """The report as one self-contained HTML page (every picture inlined)."""
    parts = (_html_heading(report) + _html_training(report, pictures, loss_png) + _html_prompts(report, drawn)
             + _html_scores(report) + [_html_settings(report)])
    return "\n".join(parts)


def _html_heading(report: dict) -> list[str]:
    """The page's head, title and what was learned, from what, on which model (and the probe's note)."""
    esc = html.escape
    c = report["concept"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(report['title'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc(report['title'])}</h1>",
             f"<p class='muted'>{esc(c['name'])}: {esc(c['description'])}. Learned as <code>{esc(c['token'])}</code> "
             f"from the init word <code>{esc(c['init_word'])}</code> on {esc(report['model'])}.</p>"]
    if report["probe_note"]:
        parts.append(f"<p class='note'>{esc(report['probe_note'])}</p>")
    return parts


def _html_training(report: dict, pictures: list[Image.Image], loss_png: Image.Image) -> list[str]:
    """Section 1, the training pictures, and the loss curve with the run's times."""
    esc = html.escape
    parts = ["<section id='training'><h2>1. The pictures it learns from</h2><div class='row'>"]
    parts += [f"<img class='px' src='{data_uri(_big(p))}' alt='training picture {i + 1}'>"
              for i, p in enumerate(pictures)]
    parts.append(f"</div><p class='muted'>{esc(report['images'])}</p></section>")
    s = report["seconds"]
    parts.append(f"<section id='loss'><h2>Training</h2><img src='{data_uri(loss_png)}' alt='training loss'>"
                 f"<p class='muted'>{report['settings']['steps']} steps in {s['train']:.0f} s; loading took "
                 f"{s['load']:.0f} s, drawing {s['draw']:.0f} s, judging {s['judge']:.0f} s.</p></section>")
    return parts


def _html_prompts(report: dict, drawn: dict) -> list[str]:
    """Section 2: each prompt's pictures, S*'s beside the init word's, framed by the probe's verdict."""
    esc = html.escape
    c = report["concept"]
    k = len(report["seeds"])
    parts = [f"<section id='samples'><h2>2. New prompts: <code>{esc(c['token'])}</code> beside the init word "
             f"<code>{esc(c['init_word'])}</code></h2><p class='muted'>Same seeds on both sides. A green frame: "
             f"the probe sees the concept and the edit; red: it does not (hover a picture for what it sees)."
             f"</p>"]
    for j, entry in enumerate(report["prompts"]):
        parts.append("<div class='prompt'>")
        for m in METHODS:
            e = entry[m]
            parts.append(f"<div><h3>{esc(e['prompt'])} <span class='muted'>[{_count(e)}]</span></h3>"
                         + (f"<p class='muted hits'>right on: {esc(_hits(e))}</p>" if _hits(e) else "")
                         + "<div class='row'>")
            for i in range(k):
                verdict = e["pass"][i]
                cls = "" if verdict is None else "pass" if verdict else "fail"
                read = e["read"][i] or ""
                parts.append(f"<figure class='{cls}' title='{esc(read, quote=True)}'><img class='px' "
                             f"src='{data_uri(_big(drawn[m][j * k + i]))}' alt='{esc(e['prompt'], quote=True)}'>"
                             f"<figcaption>seed {report['seeds'][i]}"
                             + (f": {esc(e['glimpse'][i])}" if e["glimpse"][i] else "") + "</figcaption></figure>")
            parts.append("</div></div>")
        parts.append("</div>")
    parts.append("</section>")
    return parts


def _html_scores(report: dict) -> list[str]:
    """Section 3: what the scores mean and each method's (or why nothing was judged)."""
    esc = html.escape
    c = report["concept"]
    parts = ["<section id='scores'><h2>3. Scores</h2>"]
    expects = ", ".join(f"{a} {v}" for a, v in c["attributes"].items())
    if report["summary"] is None:
        parts.append(f"<p class='muted'>Not judged: {esc(report['probe_note'] or 'no probe')}</p>")
    else:
        parts.append(f"<p>The attribute probe reads each picture. <b>Reconstruction</b>: 'a photo of' pictures "
                     f"that show the concept ({esc(expects)}). <b>Editability</b>: edited pictures that obey the "
                     f"edit and still show the concept.</p><table><tr><th></th><th>reconstruction</th>"
                     f"<th>editability</th><th>the concept's attributes right, over all its pictures</th></tr>")
        for m in METHODS:
            sm = report["summary"][m]
            name = f"<code>{esc(c['token'])}</code>" if m == "textual-inversion" else \
                f"init word <code>{esc(c['init_word'])}</code>"
            parts.append(f"<tr><td>{name}</td><td>{sm['reconstruction'][0]}/{sm['reconstruction'][1]}</td>"
                         f"<td>{sm['editability'][0]}/{sm['editability'][1]}</td>"
                         f"<td>{esc(_concept_hits(report, m))}</td></tr>")
        parts.append("</table>")
    parts.append("</section>")
    return parts


def _html_settings(report: dict) -> str:
    """The last section: the learned embedding, how to use it, the settings to reproduce the run; the page's end."""
    esc = html.escape
    settings = json.dumps(report["settings"], indent=1)
    return (f"<section id='settings'><h2>Reproduce</h2><p>The learned embedding: "
            f"<code>{esc(str(report['embedding']))}</code>. Use it with <code>textinv generate --embedding "
            f"{esc(str(report['embedding']))} --prompt 'a photo of {esc(report['concept']['token'])}'</code>.</p>"
            f"<pre>{esc(settings)}</pre><p class='muted'>seeds {report['seeds']}; textinv "
            f"{esc(report['textinv_version'])}; total {report['seconds'].get('total', 0):.0f} s</p></section>"
            f"</body></html>")


# ---------------------------------------------------------------------------------------------------------------
# the example pictures


def write_examples(concept: Concept | None = None, folder: Path | None = None) -> list[Path]:
    """Render a concept's five training pictures into `examples/<concept>/` (what is committed there)."""
    concept = concept or find_concept(DEFAULT_CONCEPT)
    return write_training_images(concept, folder or EXAMPLES / slug(concept), k=5, seed=0)


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m textinv.shapes.demo",
                                     description="Re-render the demo's example pictures (the demo itself is "
                                                 "`textinv demo`).")
    parser.add_argument("--write-examples", action="store_true", help="write examples/<concept>/*.png")
    parser.add_argument("--concept", default=DEFAULT_CONCEPT)
    args = parser.parse_args(argv)
    if not args.write_examples:
        parser.error("say --write-examples (run the demo with `textinv demo`)")
    for path in write_examples(find_concept(args.concept)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
