"""`textinv score`: how good is a learned embedding? Measured as the paper measures it, with CLIP, and shown.

Gal et al. (ICLR 2023, section 5.1) score textual inversion on two axes in the embedding space of CLIP ViT-B/32:
- reconstruction: how alike, in CLIP's image space, the pictures drawn from "a photo of S*" are to the concept's
  training pictures (the mean cosine similarity over every pair of a drawn and a training picture);
- editability: how well pictures drawn from new prompts ("a photo of S* on a beach") follow the prompt (the cosine
  similarity between each picture and the CLIP text embedding of its prompt with S* left out: "a photo of on a
  beach").
They put the same numbers beside baselines: the init word, and a person's description of the concept, in place of
S*. `score` does this for one embedding on the user's own model, at fixed seeds (the same seeds for every method, so
the pictures compare one to one), and also tells how much of the concept the edited pictures keep (their image
similarity to the training pictures): an embedding that ignores the edit and one that forgets the concept both
show.

`score(config)` reads top to bottom:

1. settings, the embedding, the training pictures, the prompts, CLIP: every check before the (slow) model load;
2. draw every prompt with every method (the learned token, the init word, the description) at the same seeds;
3. CLIP features of the training pictures, the drawn pictures and the prompts; the similarities per picture;
4. write `pictures/`, `report.html`, `report.png` and `scores.json` into --out. The report is built in a folder
   beside it and swapped in when complete: a run that fails or is killed leaves the last report as it was.

    textinv score --embedding runs/my-dog                       # a training run's folder: pictures, model, init
    textinv score --embedding my-dog.pt --images photos/my-dog --model ~/models/sd15 --description "a corgi"
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from PIL import Image, ImageDraw, ImageOps
from tqdm.auto import tqdm

from . import __version__, emphasis
from .config import DEFAULT_CLIP, ScoreConfig, check_config_object  # (there: its --help needs none of this module's imports)
from .data import PROPERTIES, load_image, picture_set
from .embedding_names import _file_name
from .errors import ConfigError, DataError, FormatError, ModelError, given, setting, warn, warns_at_caller
from .formats import BUNDLE_SEPARATOR, LearnedEmbedding, load_embedding, on_disk, split_bundle
from .hub import hub_reference
from .generate import (DEFAULT_STEPS, _slug, check_fits, drawing_dtype, expand_all, generation_clip_skip,
                       generation_size, handed_back, install_embedding, render)
from .infotext import png_text
from .io import absolute, atomic_path, make_folder, sync_folder, write_json, write_text
from .memory import memory_error, out_of_memory_as, smaller_side
from .models import (Model, _is_local_path, check_model_object, launched_precision, load_model, offline_note,
                     pick_device, quiet_transformers)
from .report import BASE_CSS, INK, LINE, MUTED, PAPER, data_uri, draw_loss_curve, font
from .run_folder import drop_lock, embedding_file, saved_run, take_lock

MARKER = "{}"

RECONSTRUCTION = {"object": "a photo of {}", "style": "a painting in the style of {}"}
# Edit prompts of the kinds the paper varies (place, medium, composition, style), in our own words.
EDITS = {
    "object": (
        "a photo of {} on a sandy beach",
        "a photo of {} in the snow",
        "a photo of {} on a kitchen table",
        "an oil painting of {}",
        "a pencil sketch of {}",
        "{} floating in outer space",
    ),
    "style": (
        "a castle on a hill in the style of {}",
        "a portrait of an old man in the style of {}",
        "a bowl of fruit in the style of {}",
        "a city street at night in the style of {}",
        "a cat asleep on a sofa in the style of {}",
        "a lighthouse by the sea in the style of {}",
    ),
}
SHEET_PICTURES = 8  # report.png shows at most this many pictures per prompt and method (report.html shows all)


@dataclass
class ScoreResult:
    html: Path
    png: Path
    scores: Path
    report: dict = dataclasses.field(repr=False)  # (scores.json's: a screenful, where a notebook shows the result)


# ---------------------------------------------------------------------------------------------------------------
# the judge


def _hub_reachable(source: str) -> bool:
    """Whether the Hugging Face hub answers at all (one request, no retries); False when HF_HUB_OFFLINE is set."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError

        huggingface_hub.model_info(source, timeout=10)
    except HfHubHTTPError:  # (an answer, if not the one hoped for: the hub is there)
        return True
    except Exception:  # no network, no DNS, offline mode
        return False
    return True


class ClipJudge:
    """CLIP's image and text towers: unit-length embeddings of pictures and texts, compared by cosine similarity.

    >>> judge = ClipJudge.load("openai/clip-vit-base-patch32")    # doctest: +SKIP
    >>> (judge.images([picture]) @ judge.texts(["a dog"]).T).item()  # doctest: +SKIP
    0.27
    """

    def __init__(self, model, tokenizer, processor, source: str = "", device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer, self.processor, self.source, self.device = tokenizer, processor, source, torch.device(device)

    @classmethod
    def load(cls, source: str, device: str | torch.device = "cpu") -> "ClipJudge":
        """A CLIP model (transformers' CLIPModel, its tokenizer and image processor) from a hub id or a folder.
        Raises ModelError naming `source` and the fix when it cannot be had (no network and not cached)."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        def load(**online):
            with quiet_transformers():  # (transformers 5 notes that it falls back to its Pillow image processor)
                return (CLIPModel.from_pretrained(source, torch_dtype=torch.float32, output_loading_info=True,
                                                  **online),
                        AutoTokenizer.from_pretrained(source, **online),
                        CLIPImageProcessor.from_pretrained(source, **online))

        try:
            try:  # the cache first: offline, the hub's client retries each file for most of a minute
                (model, info), tokenizer, processor = load(local_files_only=True)
            except OSError:
                if Path(source).expanduser().exists() or _is_local_path(source) or not _hub_reachable(source):
                    raise
                (model, info), tokenizer, processor = load()
        except Exception as e:
            local = Path(source).expanduser().exists()
            if not local and _is_local_path(source):  # a mistyped folder is not a hub id to download
                raise ModelError(f"{given('clip', source)}: the folder {Path(source).expanduser()} does not exist; "
                                 f"check the path, or give a CLIP model's hub id, e.g. {DEFAULT_CLIP}") from None
            if not local and isinstance(e, (OSError, ConnectionError)):
                raise ModelError(f"{given('clip', source)}, the CLIP model that judges the pictures, is not in the "
                                 f"local Hugging Face cache and the hub could not be reached{offline_note()}; connect "
                                 f"once to download it, or pass {setting('clip')} a local folder holding a CLIP model "
                                 f"(CLIPModel's save_pretrained, with its tokenizer and image processor)") from None
            raise ModelError(f"{given('clip', source)} could not be loaded as a CLIP model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); give a CLIP model's hub id or folder, "
                             f"e.g. {DEFAULT_CLIP}") from None
        # transformers builds a CLIPModel from any CLIP part's folder (a model's text_encoder, an image encoder),
        # the weights it lacks made up at random, and says so only in a report quiet_transformers hides: such a
        # judge would score noise
        weights = {name for name, _ in model.named_parameters()} - {"logit_scale"}  # (buffers, and the unused scale,
        missing = sorted(k for k in info["missing_keys"] if k in weights)          # are no judge's weights)
        if missing:
            raise ModelError(f"{given('clip', source)} is not a whole CLIP model: {len(missing)} of a CLIP model's "
                             f"weights are not in it ({', '.join(missing[:2])} ...) and would be random; give a CLIP "
                             f"model with its text and image towers, e.g. {DEFAULT_CLIP}")
        return cls(model, tokenizer, processor, source, device)

    @torch.no_grad()
    def images(self, pictures: list[Image.Image], batch: int = 32) -> torch.Tensor:
        """(N, D) unit-length image embeddings."""
        out = []
        for start in range(0, len(pictures), batch):
            pixels = self.processor(images=[p.convert("RGB") for p in pictures[start:start + batch]],
                                    return_tensors="pt")["pixel_values"].to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit-length text embeddings (texts past CLIP's 77 tokens are cut, as CLIP itself reads them)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        pooled = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                       attention_mask=enc["attention_mask"].to(self.device)).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()


def concept_similarity(drawn: torch.Tensor, training: torch.Tensor) -> torch.Tensor:
    """Each drawn picture's mean cosine similarity to the training pictures: (N, D), (T, D) -> (N,)."""
    return (drawn @ training.T).mean(dim=1)


def training_similarity(training: torch.Tensor) -> float | None:
    """The training pictures' mean cosine similarity to each other (every pair of two different pictures): what
    reconstruction is read against; None for a single picture."""
    t = len(training)
    if t < 2:
        return None
    sims = training @ training.T
    return ((sims.sum() - sims.diagonal().sum()) / (t * (t - 1))).item()


def scored_text(template: str, steps: int = DEFAULT_STEPS) -> str:
    """The prompt CLIP reads for editability: the template with the concept left out, as in the paper, and the
    web UI's syntax reduced to the words drawn: emphasis brackets and BREAK dropped, and of prompt editing or
    alternation the text in force at the last of `steps` (the text the picture ends with).

    >>> scored_text("a photo of {} on a sandy beach")
    'a photo of on a sandy beach'
    >>> scored_text("[a photo of {}:an (oil:1.2) painting of {}:0.5]")
    'an oil painting of'
    """
    text = re.sub(r"\s+", " ", emphasis.words_drawn(template.replace(MARKER, " "), steps)).strip()
    return re.sub(r" ([,.;:!?])", r"\1", text)


# ---------------------------------------------------------------------------------------------------------------
# 1. checks


def run_settings(embedding: Path, token: str) -> dict:
    """What the training run beside `embedding` says: images (or, for a run of kohya subsets, `--dataset-config`'s,
    subsets), model (and the VAE, single-file config and prediction type it was loaded with), property, init and its
    loss curve file, from the config.yaml in the run folder (the embedding's folder, or its parent for one concept of
    a run of several). Empty when there is none."""
    from .run_folder import CONFIG_FILE, LOSS_LOG

    if hub_reference(embedding) is not None:  # (no run beside it: its parent would be the folder scored from)
        return {}
    folder = embedding if embedding.is_dir() else embedding.parent
    for run in (folder, folder.parent):
        found = saved_run(run)
        if found is None:
            if (run / CONFIG_FILE).is_file():
                return {}
            continue
        saved, specs = found
        spec = next((s for s in specs if s["token"] == token), specs[0] if len(specs) == 1 else None)
        if spec is None:
            return {}
        # a run started from --init-embedding saves no init word (its concept list says the --property word): the
        # file is what it started from, as the embedding's own metadata records
        init = f"embedding {saved.init_embedding}" if saved.init_embedding else spec["init"]
        settings = {"run": str(run), "config": str(run / CONFIG_FILE), "images": spec["images"], "init": init,
                    "subsets": saved.subset_list(),
                    "model": saved.model, "revision": saved.revision, "variant": saved.variant, "vae": saved.vae,
                    "single_file_config": saved.single_file_config,
                    "prediction_type": saved.prediction_type, "property": saved.property,
                    "loss_column": "loss" if len(specs) == 1 else spec["token"]}
        if (run / LOSS_LOG).is_file():
            settings["loss_log"] = str(run / LOSS_LOG)
        return settings
    return {}


def _recorded_model(name: str | None) -> str:
    """The model an embedding file names (`base_model`), when it can be loaded by that name: a bundled model, a hub
    id, or a path that exists (older files kept the path; textinv writes a local model by its name alone, which does
    not say where it is)."""
    from .models import BUNDLED_MODELS, _is_hub_id

    if name and (name in BUNDLED_MODELS or _is_hub_id(name) or Path(name).expanduser().exists()):
        return name
    if not name:
        said = "it does not name one"
    elif Path(name).expanduser().is_absolute():  # (an older file's, or another machine's, path)
        said = f"it names {name!r}, a path not on this machine"
    else:
        said = f"it names {name!r}, a local model's name, which does not say where it is"
    raise ConfigError(f"{setting('model')} is required: the model the embedding was learned for ({said}); pass "
                      f"{setting('model')} with its folder, file or hub id")


def _template(prompt: str, token: str) -> str:
    """An edit prompt with {} where the concept goes (the token written out is taken as its place too, in any case:
    CLIP's tokenizer lower-cases the prompt, so `<ZQ>` is `<zq>` in `generate` too). The token is looked for first:
    one that holds "{}" itself must not be cut in two."""
    written = re.compile(re.escape(token), re.IGNORECASE)
    if written.search(prompt):
        template = written.sub(lambda m: MARKER, prompt)
    elif MARKER in prompt:
        template = prompt
    else:
        raise ConfigError(f"{given('prompts', prompt)} has no {MARKER} and no {token}: write {MARKER} where the "
                          f"concept goes, e.g. 'a photo of {MARKER} on a beach'")
    if not re.search(r"\w", scored_text(template)):  # (editability would compare its pictures with empty text)
        raise ConfigError(f"{given('prompts', prompt)} is the concept alone: an edit prompt is scored by its other "
                          f"words (the change asked for), so add them, e.g. '{MARKER} on a beach'")
    return template


def _compared(paths: list[str], emb: LearnedEmbedding,
              scored: Path | None = None) -> list[tuple[LearnedEmbedding, str]]:
    """The --compare embeddings, each under a token of its own (they are often the same token at other steps,
    and all are installed at once; see `_compare_token`). Each embedding is read once: `run/embeddings/*` of a
    diffusers-sdxl run names both files of every step's pair (either reads the pair), and a file given twice, or
    the `scored` file itself, would only be drawn again at the same seeds."""
    found, tokens, read = [], {emb.token.lower()}, {_read_file(scored)} if scored is not None else set()
    skipped, read_from = {}, set()  # folder -> its files that are no embedding; the folders that held one
    for text, folder in _expand_folders(paths):
        path = Path(text).expanduser()
        on_hub = hub_reference(text) is not None  # (read as --embedding reads one: from the hub, or its cache)
        if not on_hub and not on_disk(path).exists():  # (FILE::NAME, a LoRA's bundled one: FILE)
            raise ConfigError(f"{given('compare', text)} does not exist; {setting('compare')} takes embedding files "
                              f"of the same concept, a folder of them (e.g. a run's embeddings/) or hub ids")
        try:
            other, file = load_embedding(embedding_file(path)), _read_file(path)
        except FormatError:
            if folder is None:  # (a file named on its own is meant: its error stands)
                raise
            skipped.setdefault(folder, []).append(path.name)  # (a folder may hold notes, previews, optimizer state)
            continue
        if folder is not None:
            read_from.add(folder)
        if file in read:
            continue
        read.add(file)
        name = (_file_name(text) if on_hub or split_bundle(path)[1] is not None  # (a bundled one: its NAME)
                else path.stem if path.is_file() else path.name)
        token = _compare_token(name, tokens, text)
        tokens.add(token.lower())
        if other.num_vectors != emb.num_vectors or other.widths != emb.widths:
            raise ConfigError(f"{setting('compare', text)} has {other.num_vectors} vector(s) of width "
                              f"{'+'.join(map(str, other.widths))}, the scored one {emb.num_vectors} of width "
                              f"{'+'.join(map(str, emb.widths))}: compare embeddings of one concept, trained alike")
        found.append((LearnedEmbedding(token, other.vectors, {**other.metadata, "token": token}), _named_as(text)))
    for folder, names in skipped.items():
        listed = f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        if folder not in read_from:
            raise ConfigError(f"{setting('compare', folder)} holds no embedding file ({listed} are not); give the "
                              f"files, or a run's embeddings/ folder")
        warn(f"{setting('compare', folder)}: skipped {len(names)} file(s) that are no embedding: {listed}",
             stacklevel=3)
    return found


def _expand_folders(paths: list[str]) -> list[tuple[str, str | None]]:
    """--compare entries, each with the folder it was found in (None for one given itself): a folder of embedding
    files (a run's `embeddings/`, the diffusers script's --output_dir with its learned_embeds-steps-500 files
    beside the final learned_embeds) given as its files, in the order of the step number in their names (500
    before 1000); a training run's folder, or a diffusers folder of one embedding, stays one entry."""
    from .embedding_names import EMBEDDING_SUFFIXES
    from .run_folder import CONFIG_FILE

    out = []
    for text in paths:
        folder = Path(text).expanduser()
        if not folder.is_dir() or (folder / CONFIG_FILE).is_file():
            out.append((text, None))
            continue
        files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in EMBEDDING_SUFFIXES]
        if files and all(f.stem in ("learned_embeds", "learned_embeds_2") for f in files):
            out.append((text, None))  # (one diffusers embedding: the folder reads it)
            continue
        if not files:
            raise ConfigError(f"{setting('compare', text)} is a folder without embedding files; give the files, or a "
                              f"run's embeddings/ folder")
        out += [(str(f), text) for f in sorted(files, key=lambda f: [int(x) if x.isdecimal() else x
                                                                   for x in re.split(r"(\d+)", f.name)])]
    return out


def _named_as(text: str) -> str:
    """How the report names an embedding given as `text`: a local one by its absolute path (found from any working
    folder), a hub one by its reference, as `generate` records one (its place in the cache is this machine's)."""
    return text if hub_reference(text) is not None else absolute(text)


def _read_file(path: Path) -> Path:
    """The file an embedding is read from (a pair's first file; a diffusers folder's learned_embeds.*); for one a
    LoRA bundles, `FILE::NAME` with FILE so found."""
    from .formats import _resolve

    file, bundle = split_bundle(Path(path).expanduser())
    found = _resolve(embedding_file(Path(file))).resolve()
    return found if bundle is None else Path(f"{found}{BUNDLE_SEPARATOR}{bundle}")


def _compare_token(name: str, taken: set[str], text: str) -> str:
    """A compared file's token: its name in angle brackets, lower-case, with only letters, digits, '_', '.' and '-'
    (a space splits a token, brackets and ':' are emphasis to the prompt parser, BREAK a chunk break), numbered if
    taken. Nor may it hold a token taken or be held in one: the tokenizer and the prompt expansion find a token
    inside longer text (a web UI run's 'zq' in its step file's '<zq-500>' would draw zq's vectors), so a name that
    holds one gives way to 'compared'."""
    name = re.sub(r"[^\w.-]+", "-", name.lower()).strip("-") or "compared"
    if any(t in f"<{name}>" and t != f"<{name}>" for t in taken):  # (the same token is numbered below)
        name = "compared"
    for k in range(1, 1000):
        token = f"<{name}>" if k == 1 else f"<{name}-{k}>"
        if not any(t in token or token in t for t in taken):
            return token
    raise ConfigError(f"{setting('compare', text)}: no token of its own could be made beside "
                      f"{', '.join(sorted(taken))}; score it with {setting('token')} set to a name of angle brackets, "
                      f"e.g. {given('token', '<my-concept>')}")


def _methods(config: ScoreConfig, emb: LearnedEmbedding, run: dict,
             others: list[tuple[LearnedEmbedding, str]] = ()) -> list[dict]:
    """What stands in the concept's place, one method each: the learned token, the embeddings compared with it
    (labelled by file and step; files of one name, as two runs' learned_embeds, by their folder too), then the
    baselines."""
    # a baseline that names a token draws its learned vectors (the prompt expansion and the tokenizer find a token
    # inside other words, in any case): it would be no baseline, and score the embedding against itself
    tokens = [emb.token] + [other.token for other, _ in others]
    for name, words, example in (("init", config.init, "dog"),
                                 ("description", config.description, "a corgi with a red collar")):
        named = [t for t in tokens if words and t.lower() in words.lower()]
        if named:
            raise ConfigError(f"{given(name, words)} names the token {named[0]}: a baseline is drawn with plain "
                              f"words in the token's place, e.g. {given(name, example)}")
    methods = [{"name": "textual inversion", "words": emb.token, "label": emb.token}]
    names = [Path(path).name for _, path in others]
    for k, (other, path) in enumerate(others):
        step = other.metadata.get("steps")
        if hub_reference(path) is not None:  # (a local one is named by its absolute path: never a reference)
            name = path
        else:
            name = names[k] if names.count(names[k]) == 1 else f"{Path(path).parent.name}/{names[k]}"
        methods.append({"name": f"compared {k + 1}", "words": other.token,
                        "label": name + (f" (step {step})" if step else "")})
    # the word the embedding records it started from (the run's settings may leave it to the model: the bundled
    # model's own "shape" where the settings say nothing), else the run's
    init = config.init if config.init is not None else (emb.metadata.get("init") or run.get("init"))
    if init and init.strip().lower() != "none" and not init.startswith("embedding "):  # (an init file has no word)
        methods.append({"name": "init word", "words": init.strip(), "label": f"init word '{init.strip()}'"})
    if config.description:
        methods.append({"name": "description", "words": config.description.strip(),
                        "label": f"description '{config.description.strip()}'"})
    return methods


REPORT_ENTRIES = ("pictures", "training", "report.html", "report.png", "scores.json")  # what a report folder holds


def out_folder(text: str) -> Path:
    """--out as an absolute path without `.`, `..` or a trailing slash: the swap renames it and the folders beside
    it are named after it. Refuses the folder the command runs in, or one above it: replacing it whole would pull
    the ground from under the shell."""
    out = Path(absolute(text))
    here = Path.cwd()
    if out == here or out in here.parents:
        raise ConfigError(f"{setting('out', text)} is "
                          f"{'the folder you are in' if out == here else 'above the folder you are in'}; the report "
                          f"replaces its folder whole: give a folder of its own, e.g. {setting('out', 'score-out')}")
    return out


def _prepare_out(out: Path) -> tuple[Path, Path, IO]:
    """The folder to build the report in, beside `out`, and the hold on `out` (`_hold`; close it when done); refuses
    an `out` that holds anything a report does not write (it is replaced whole, and a user's file put in it would go
    too). Puts back a report that a run killed during the swap had moved aside."""
    previous, partial = out.parent / f".{out.name}.previous", out.parent / f".{out.name}.partial"
    try:
        make_folder(out.parent)
        lock = _hold(out)
    except OSError as e:  # (said of --out as given, not of the files beside it)
        raise ConfigError(f"{setting('out', out)}: cannot create the folder ({e.strerror or e}); choose another "
                          f"{setting('out')}") from None
    try:
        _check_out(out, previous)
        if partial.exists():  # (a killed run's: a running one holds `out`)
            shutil.rmtree(partial)
        partial.mkdir()
    except BaseException as e:
        _release(lock, out)
        if isinstance(e, OSError):
            raise ConfigError(f"{setting('out', out)}: cannot create the folder ({e.strerror or e}); choose another "
                              f"{setting('out')}") from None
        raise
    return previous, partial, lock


def _hold(out: Path) -> IO:
    """Hold `out` for this report, returning the open lock file: a second `textinv score` into the same --out (the
    default score-out, in two shells) is refused, naming the process, instead of deleting the first one's report
    as it is built. The lock is the operating system's (`run_folder.take_lock`), on a hidden file beside `out`, so
    it goes with its process however that ends; `_release` removes the file."""
    return take_lock(_lock_file(out), lambda holder: f"--out {out} is being written by another textinv score "
                                                     f"({holder}); wait for it to finish, or choose another --out")


def _release(lock: IO, out: Path) -> None:
    """Let go of `_hold`'s lock, removing its file (`run_folder.drop_lock`)."""
    drop_lock(lock, _lock_file(out))


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _check_out(out: Path, previous: Path) -> None:
    """Refuse an `out` that is not a report's folder (`_prepare_out`), after putting back one moved aside."""
    if not out.exists() and previous.is_dir():
        previous.rename(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{setting('out', out)} is a file; give a folder")
    # (hidden files and OS litter, as a file browser's .DS_Store, go with the report). Without scores.json, which
    # every published report has, nothing there is a report's: a folder of the user's own called training/ or
    # pictures/ (their photos: --images data/training --out data) would go with the swap
    report = (out / "scores.json").is_file()
    foreign = sorted(p.name for p in out.iterdir() if (p.name not in REPORT_ENTRIES or not report)
                     and not p.name.startswith(".") and p.name.lower() not in ("thumbs.db", "desktop.ini")
                     ) if out.is_dir() else []
    if foreign:
        what = "is not a score report" if not report else "holds more than a score report"
        raise ConfigError(f"{setting('out', out)} {what} (it holds {', '.join(foreign[:5])}"
                          f"{' ...' if len(foreign) > 5 else ''}) and would be replaced whole; give a new or empty "
                          f"folder, or move those out")


def _swap_in(partial: Path, out: Path, previous: Path) -> None:
    """Publish the finished report: the old one (if any) is moved aside, the new one renamed into place."""
    if out.exists():
        if previous.exists():
            shutil.rmtree(previous)
        out.rename(previous)
    partial.rename(out)
    sync_folder(out.parent)  # (the renames themselves outlast a power cut, as the report's files do)
    shutil.rmtree(previous, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# the run


@warns_at_caller  # (its warnings name the user's line: `errors.warn`)
def score(config: ScoreConfig, model: Model | None = None, judge: ClipJudge | None = None,
          progress: bool = True) -> ScoreResult:
    """Draw, judge and report one embedding (see the module's docstring); return where the report is.

    >>> score(ScoreConfig(embedding="runs/my-dog", description="a corgi"))  # doctest: +SKIP
    ScoreResult(html=PosixPath('/.../score-out/report.html'), ...)

    Running out of GPU memory raises `errors.DeviceMemoryError`, which says where and what needs less.
    """
    check_config_object(config, ScoreConfig)
    where = _Where()
    passed = model is not None  # (a model passed in draws at its own dtype)
    config = dataclasses.replace(config, precision=launched_precision(config.precision, progress, passed))
    return out_of_memory_as(lambda: _score(config, model, judge, progress, where),
                            lambda e: _memory_error(where, e), lambda: where.device)


@dataclass
class _Where:
    """What `score` is doing, kept up to date as it goes, for the message if the device runs out of memory."""

    device: torch.device | None = None
    doing: str = "loading the CLIP judge"
    dtype: torch.dtype | None = None
    size: tuple[int, int] | None = None  # the pictures' (width, height), once drawing
    out: str = ""


def _memory_error(where: _Where, error: BaseException):
    """The `DeviceMemoryError` for running out of memory at `where`, with the settings that need less there (as its
    user writes them: `errors.setting`)."""
    fixes = [setting("precision", "fp16")] if where.dtype == torch.float32 else []
    if where.size:
        fixes.append(f"{setting('resolution', smaller_side(max(where.size)))} (other pictures, and scores not "
                     f"comparable with a report at {_size_text(where.size)})")
    return memory_error(where.device or "cpu", where.doing, fixes, f"No report was written; {where.out} is left as "
                        f"it was", error, changes="the scores")


def _score(config: ScoreConfig, model: Model | None, judge: ClipJudge | None, progress: bool,
           where: _Where) -> ScoreResult:
    """`score`'s work; `where`: what it is doing, kept up to date for `_memory_error`."""
    log = print if progress else (lambda *a, **k: None)
    started = time.perf_counter()

    # 1. checks -------------------------------------------------------------------------------------------------
    check_model_object(model)
    config = config.validate()
    plan = _plan(config)
    device = pick_device(config.device)
    out = out_folder(config.out)
    previous, partial, lock = _prepare_out(out)
    where.device, where.out = device, str(out)
    try:  # (from here on a failure takes the half-built report with it)
        judge, model = _load_parts(config, plan, model, judge, device, where)
        where.doing = "judging the training pictures with CLIP"
        drawing = _drawing(config, plan, model, judge, partial)
        texts = judge.texts([scored_text(t, drawing.steps) for _, t in plan.prompts])  # (P, D)
        # the training pictures saved into the report, and thumbnails for its sheet, now: the full-size ones go
        training_files = _save_training(partial, plan.pictures)
        plan.pictures = [_thumb(p) for p in plan.pictures[:10]]
        t_ready = time.perf_counter()

        # 2. draw each prompt with each method at the same seeds; 3. judge each picture as it is drawn -----------
        check_fits(model, plan.emb, "pass the first file, learned_embeds.safetensors, with "
                                    "learned_embeds_2.safetensors beside it")
        log(f"drawing {len(plan.prompts)} prompts x {len(drawing.seeds)} seeds with "
            f"{', '.join(m['label'] for m in plan.methods)} on {model.describe()}", flush=True)
        drawing.bar = tqdm(total=len(plan.methods) * len(plan.prompts) * len(drawing.seeds), disable=not progress,
                           desc="score", unit="img")
        where.size = drawing.size
        where.doing = (f"drawing the report's pictures ({min(4, len(drawing.seeds))} at once at "
                       f"{drawing.size[0]}x{drawing.size[1]})")
        table, drawn = _draw_and_judge(drawing, plan, texts)
        t_drawn = time.perf_counter()

        # 4. report ---------------------------------------------------------------------------------------------
        losses = _losses(plan.run)
        seconds = {"load": round(t_ready - started, 1), "draw": round(t_drawn - t_ready - drawing.judging, 1),
                   "judge": round(drawing.judging, 1)}
        report = _report(config, plan, model, judge, drawing, training_files, table, losses, seconds)
        report["seconds"]["total"] = round(time.perf_counter() - started, 1)
        _write_report(partial, report, plan.pictures, drawn, losses)
        _swap_in(partial, out, previous)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        _release(lock, out)
    log(format_table(report))
    log(f"report: {out / 'report.html'} (open it in a browser) and {out / 'report.png'}; scores in "
        f"{out / 'scores.json'}")
    return ScoreResult(html=out / "report.html", png=out / "report.png", scores=out / "scores.json", report=report)


@dataclass
class _Plan:
    """What `score` works out from its settings and the embedding's training run before anything is loaded."""

    emb: LearnedEmbedding  # the scored embedding, under --token's name if given
    run: dict  # its training run's settings (`run_settings`)
    others: list  # (embedding, path as given) of each --compare
    installed: list  # the scored embedding and the compared ones, all drawn at once under their own tokens
    images: str | None  # the training pictures' folder (none for a run of kohya subsets)
    subsets: list  # that run's subsets, whose pictures are the training pictures
    pictures: list  # the training pictures, read (only the sheet's thumbnails once they are saved in the report)
    source: str  # the model
    kind: str  # the property learned: object, style...
    prompts: list  # (kind, template) of each prompt drawn: the reconstruction, then the edits
    methods: list  # how each picture names the concept (`_methods`)


def _plan(config: ScoreConfig) -> _Plan:
    """The embedding, the ones compared with it, the training pictures, the model and the prompts, each checked
    (a bad file or a missing folder is said before anything heavy is loaded)."""
    emb = load_embedding(embedding_file(Path(config.embedding)))
    run = run_settings(Path(config.embedding), emb.token)  # (by the file's own token)
    if config.token is not None:
        emb = LearnedEmbedding(config.token, emb.vectors, {**emb.metadata, "token": config.token})
    others = _compared(config.compare, emb, Path(config.embedding))
    installed = [emb] + [e for e, _ in others]  # (all at once: each is drawn under its own token)
    images = config.images or run.get("images")
    subsets = [] if config.images else run.get("subsets", [])  # (a run of kohya subsets: their pictures)
    if not images and not subsets:
        raise ConfigError(f"{setting('images')} is required: the concept's training pictures, which reconstruction is "
                          f"measured against (no training run's config.yaml beside the embedding says where they are)")
    pictures = _training_pictures(images, None if config.images else run, subsets)
    source = config.model or run.get("model") or _recorded_model(emb.metadata.get("base_model"))
    kind = config.property or run.get("property") or emb.metadata.get("property") or "object"
    if kind not in PROPERTIES:
        kind = "object"
    edits = [_template(p, emb.token) for p in config.prompts] or list(EDITS[kind])
    prompts = [("reconstruction", RECONSTRUCTION[kind])] + [("edit", t) for t in edits]
    methods = _methods(config, emb, run, others)
    return _Plan(emb, run, others, installed, images, subsets, pictures, source, kind, prompts, methods)


def _load_parts(config: ScoreConfig, plan: _Plan, model: Model | None, judge: ClipJudge | None,
                device: torch.device, where: _Where) -> tuple[ClipJudge, Model]:
    """The CLIP judge and the model, each unless given."""
    if judge is None:
        judge = ClipJudge.load(config.clip, device)
    if model is None:
        where.doing, where.dtype = "loading the model", drawing_dtype(config.precision, device)
        model = _load(config, plan.source, plan.run, device, plan.emb.metadata)
    where.device, where.dtype = model.unet.device, model.unet.dtype
    return judge, model


def _drawing(config: ScoreConfig, plan: _Plan, model: Model, judge: ClipJudge, partial: Path) -> Drawing:
    """The settings every picture is drawn with and the training pictures' CLIP features they are judged against;
    its `bar` is set once drawing starts."""
    steps = config.steps or DEFAULT_STEPS
    size = _size(config, model, plan.installed)
    guidance = model.guidance_or_own(config.guidance)
    clip_skip = generation_clip_skip(model, config.clip_skip, plan.installed)
    seeds = [config.seed + i for i in range(config.n)]
    training = judge.images(plan.pictures)  # (T, D)
    return Drawing(model, judge, plan.installed, partial, training, None, seeds, steps, size, guidance, clip_skip,
                   config.sampler, config.negative_prompt, str(plan.source), str(config.embedding))


def _size(config: ScoreConfig, model: Model, embeddings: list) -> tuple[int, int]:
    """The pictures' (width, height): --resolution's square, else the size the embeddings (the scored one and those
    compared with it, all drawn alike) were trained at where generate would draw at it (`generation_size`: a size
    that is not square), else the model's own square."""
    if config.resolution:
        return config.resolution, config.resolution
    return generation_size(model, embeddings) or (model.resolution, model.resolution)


def _size_text(size: tuple[int, int]) -> int | str:
    """A report's resolution: a square's side (as --resolution takes it), else "WIDTHxHEIGHT" (as a run records
    its --resolution)."""
    return size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}"


def _draw_and_judge(drawing: Drawing, plan: _Plan, texts: torch.Tensor) -> tuple[list[dict], dict]:
    """Every prompt drawn with every method, the embeddings installed for it and taken off after; the table's rows
    (one per method) and the sheet's thumbnails, by (method, prompt)."""
    drawn: dict[tuple[int, int], list[Image.Image]] = {}  # the first SHEET_PICTURES of each, as thumbnails
    table = []
    try:
        with handed_back(drawing.model):  # (in here: one that fails takes those before it off again)
            for e in plan.installed:
                install_embedding(drawing.model, e)
            for i, method in enumerate(plan.methods):
                rows = []
                for j, (kind_j, template) in enumerate(plan.prompts):
                    row, drawn[i, j] = drawing.row(method, j, template, texts[j])
                    rows.append({"kind": kind_j, **row})
                table.append({**method, "prompts": rows, **_summary(rows)})
    finally:
        drawing.bar.close()
    return table, drawn


def _report(config: ScoreConfig, plan: _Plan, model: Model, judge: ClipJudge, drawing: Drawing,
            training_files: list[str], table: list[dict], losses: list, seconds: dict) -> dict:
    """scores.json's content, which the sheet and the HTML page show too."""
    return {
        "title": f"textinv score: {plan.emb.token}",
        "embedding": {"path": _named_as(config.embedding), "token": plan.emb.token, "vectors": plan.emb.num_vectors,
                      "metadata": plan.emb.metadata},
        "compared": [{"path": path, "token": other.token, "metadata": other.metadata} for other, path in plan.others],
        "images": absolute(plan.images) if plan.images else ", ".join(s["images"] for s in plan.subsets),
        "training_files": training_files, "model": model.describe(),
        "clip": judge.source, "settings": {**dataclasses.asdict(config), "steps": drawing.steps,
                                           "guidance": drawing.guidance,
                                           # (the model as loaded: the run's revision and variant, if not given)
                                           **{k: model.loaded_with.get(k) for k in ("revision", "variant")},
                                           "clip_skip": drawing.clip_skip, "resolution": _size_text(drawing.size),
                                           "property": plan.kind},
        "seeds": drawing.seeds, "training_similarity": training_similarity(drawing.training), "methods": table,
        "loss": [list(x) for x in losses], "textinv_version": __version__,
        "seconds": seconds,
    }


def _write_report(partial: Path, report: dict, pictures: list[Image.Image], drawn: dict, losses: list) -> None:
    """report.png (the sheet), report.html and scores.json, into the report being built."""
    loss_png = draw_loss_curve(losses) if losses else None
    with atomic_path(partial / "report.png") as tmp:
        draw_sheet(report, pictures, drawn, loss_png).save(tmp, format="PNG")
    write_text(partial / "report.html", render_html(report, loss_png))
    write_json(partial / "scores.json", report)


@dataclass
class Drawing:
    """What every picture of a report is drawn and judged with; `row` draws one prompt for one method."""

    model: Model
    judge: ClipJudge
    embeddings: list  # the scored embedding and those compared with it, all installed
    partial: Path  # the report being built
    training: torch.Tensor  # (T, D) the training pictures' CLIP features
    bar: object
    seeds: list
    steps: int
    size: tuple[int, int]  # (width, height)
    guidance: float
    clip_skip: int
    sampler: str
    negative_prompt: str
    source: str  # (for the PNG text)
    embedding: str
    judging: float = 0.0  # seconds spent judging, of the time spent here

    def row(self, method: dict, j: int, template: str, text: torch.Tensor) -> tuple[dict, list[Image.Image]]:
        """Prompt `j` with the method's words in the concept's place: each picture written into the report and
        judged as it is drawn, a few at a time, and only the sheet's thumbnails kept (-n 64 on SDXL is over a
        thousand 1024px pictures: gigabytes held for nothing). Returns the row and those thumbnails."""
        prompt = template.replace(MARKER, method["words"])
        expanded = expand_all(prompt, self.embeddings, self.model)
        negative = expand_all(self.negative_prompt, self.embeddings, self.model)
        row = {"prompt": prompt, "scored_text": scored_text(template, self.steps), "concept": [], "text": [],
               "files": []}
        thumbs = []
        for start in range(0, len(self.seeds), 4):  # a few pictures per pipeline call bounds the memory
            chunk = self.seeds[start:start + 4]
            pictures = render(self.model, [expanded] * len(chunk), chunk, self.steps, guidance=self.guidance,
                              negative_prompt=negative, sampler=self.sampler, clip_skip=self.clip_skip,
                              width=self.size[0], height=self.size[1])
            started = time.perf_counter()
            feats = self.judge.images(pictures)  # (len(chunk), D)
            row["concept"] += [round(v, 4) for v in concept_similarity(feats, self.training).tolist()]
            row["text"] += [round(v, 4) for v in (feats @ text).tolist()]
            self.judging += time.perf_counter() - started
            for seed, img in zip(chunk, pictures):
                row["files"].append(self._save(method, j, prompt, seed, img))
            thumbs += [_thumb(img) for img in pictures[:SHEET_PICTURES - len(thumbs)]]
            self.bar.update(len(chunk))
        return row, thumbs

    def _save(self, method: dict, j: int, prompt: str, seed: int, img: Image.Image) -> str:
        name = f"pictures/{_slug(method['name'])}/{j:02d}-{_slug(emphasis.words_drawn(prompt))}-s{seed}.png"
        params = {"prompt": prompt, "negative_prompt": self.negative_prompt, "seed": seed, "steps": self.steps,
                  "sampler": self.sampler, "guidance": self.guidance, "size": f"{self.size[0]}x{self.size[1]}",
                  "clip_skip": self.clip_skip, "model": self.source, "embeddings": self.embedding,
                  "textinv_version": __version__}
        with atomic_path(self.partial / name) as tmp:
            img.save(tmp, format="PNG", pnginfo=png_text(params))
        return name


def _training_pictures(images: str | None, run: dict | None, subsets: list[dict] = ()) -> list[Image.Image]:
    """The concept's training pictures, read now (a bad one is said before the model loads): the folder `images`,
    or kohya `subsets` (`TrainConfig.subset_list`), each picture once. `run`: the training run they came from, when
    --images was not given: a folder moved or deleted since is said as that."""
    try:
        paths = dict.fromkeys(picture_set(images, subsets, "score").paths)  # (a picture in two subsets is one picture)
        # (seen only by CLIP, at 224, and as 256-pixel thumbnails: a big JPEG need not be decoded whole)
        return [load_image(p, shown_at=256) for p in paths]
    except DataError as e:
        if not run:
            raise
        raise DataError(f"{e} (the training pictures {run['config']} names; pass {setting('images')} where they "
                        f"are now)") from None


def _load(config: ScoreConfig, source: str, run: dict, device: torch.device, recorded: dict | None = None) -> Model:
    """The model to draw with, loaded as the training run loaded it (its revision, variant, VAE, single-file config
    and prediction type) when it is the run's, or at the revision and variant the embedding's metadata (`recorded`)
    names beside its base model when that is the model; a failure to load the run's model says where the name came
    from."""
    same = not config.model and source == run.get("model")
    extras = {k: getattr(config, k) or (run.get(k) if same else None)
              for k in ("revision", "variant", "vae", "single_file_config", "prediction_type")}
    if not config.model and not run.get("model") and recorded:  # (the embedding's base model, as its run loaded it)
        extras.update({k: getattr(config, k) or recorded.get(f"base_model_{k}") for k in ("revision", "variant")})
    try:
        return load_model(source, dtype=drawing_dtype(config.precision, device), device=device, **extras)
    except ModelError as e:
        if config.model:
            raise
        where = run["config"] if same else f"the embedding's metadata ({config.embedding})"
        raise ModelError(f"{e} (the model named by {where}; pass {setting('model')} to score on another)") from None


def _save_training(partial: Path, pictures: list[Image.Image]) -> list[str]:
    """The training pictures as small PNGs beside the report (a 24-megapixel photo need not be copied whole)."""
    names = []
    for k, pic in enumerate(pictures):
        name = f"training/{k:02d}.png"
        thumb = pic.copy()
        thumb.thumbnail((256, 256))
        with atomic_path(partial / name) as tmp:
            thumb.save(tmp, format="PNG")
        names.append(name)
    return names


def _summary(rows: list[dict]) -> dict:
    """A method's three numbers: reconstruction (the 'a photo of' pictures' similarity to the training pictures),
    editability (the edited pictures' similarity to their prompts) and how much of the concept the edits keep."""
    def mean(values):
        return round(sum(values) / len(values), 4) if values else None

    recon = [v for r in rows if r["kind"] == "reconstruction" for v in r["concept"]]
    edits = [r for r in rows if r["kind"] == "edit"]
    return {"reconstruction": mean(recon), "editability": mean([v for r in edits for v in r["text"]]),
            "kept_in_edits": mean([v for r in edits for v in r["concept"]])}


def _losses(run: dict) -> list[tuple[int, float]]:
    """The training run's loss curve for this concept (its own column in a run of several), if there is one."""
    from .run_folder import read_loss_log

    if "loss_log" not in run:
        return []
    try:
        return read_loss_log(run["loss_log"], run["loss_column"])
    except (OSError, KeyError, ValueError) as e:  # a damaged log costs the chart, not the report
        warn(f"could not read the loss curve {run['loss_log']} ({e}); the report leaves it out", stacklevel=3)
        return []


def format_table(report: dict) -> str:
    """The scores as a small text table."""
    width = max([34] + [len(m["label"]) for m in report["methods"]])  # (step files differ at their ends)
    lines = [f"{'':{width}s} reconstruction  editability  concept kept in edits"]
    for m in report["methods"]:
        lines.append(f"{m['label']:{width}s} {m['reconstruction']:14.3f} {m['editability']:12.3f} "
                     f"{m['kept_in_edits']:12.3f}")
    learned = [m for m in report["methods"] if m["name"] not in ("init word", "description")]
    if len(learned) > 1:  # (which is best is a trade-off between the two: both are named)
        for measure in ("reconstruction", "editability"):
            best = max(learned, key=lambda m: m[measure])
            lines.append(f"best {measure}: {best['label']} ({best[measure]:.3f})")
    if report["training_similarity"] is not None:
        lines.append(f"(the training pictures among themselves: {report['training_similarity']:.3f}; CLIP "
                     f"{report['clip']}, {_pictures(len(report['seeds']))} a prompt)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# drawing


THUMB = 128


def _pictures(n: int) -> str:
    return f"{n} picture{'' if n == 1 else 's'}"


def _thumb(img: Image.Image) -> Image.Image:
    """A THUMB-pixel square of the picture's middle (a 3:2 photo is cropped, not squashed, as report.html shows it)."""
    small = min(img.size) > THUMB
    return ImageOps.fit(img, (THUMB, THUMB), Image.Resampling.LANCZOS if small else Image.Resampling.NEAREST)


def draw_sheet(report: dict, pictures: list[Image.Image], drawn: dict, loss_png: Image.Image | None) -> Image.Image:
    """The report on one PNG: the scores, the training pictures (and loss), then each prompt's pictures, one row per
    method at the same seeds, each picture's CLIP similarity under it."""
    title_font, head_font, text_font, small = font(22), font(16), font(13), font(11)
    gap, label_w = 8, 230
    k = min(len(report["seeds"]), SHEET_PICTURES)
    methods = report["methods"]
    n_prompts = len(methods[0]["prompts"])
    width = max(label_w + k * (THUMB + gap) + 24, len(pictures[:10]) * (THUMB + gap) + 48 +
                (loss_png.width if loss_png else 0), 900)
    row_h = THUMB + 22
    height = 200 + 22 * len(methods) + THUMB + 60 + n_prompts * (28 + len(methods) * row_h) + 60
    sheet = Image.new("RGB", (width, height), PAPER)
    d = ImageDraw.Draw(sheet)
    x0, y = 24, 18
    d.text((x0, y), report["title"], fill=INK, font=title_font)
    y += 32
    d.text((x0, y), f"{report['model']}; judged by CLIP {report['clip']}", fill=MUTED, font=text_font)
    y += 30
    d.text((x0, y), "reconstruction: similarity to the training pictures of 'a photo of' pictures;  editability: "
           "similarity of edited pictures to their prompt", fill=MUTED, font=small)
    y += 22
    for m in methods:
        d.text((x0, y), f"{m['label']}:  reconstruction {m['reconstruction']:.3f}   editability {m['editability']:.3f}"
               f"   concept kept in edits {m['kept_in_edits']:.3f}", fill=INK, font=text_font)
        y += 22
    if report["training_similarity"] is not None:
        d.text((x0, y), f"the training pictures among themselves: {report['training_similarity']:.3f}", fill=MUTED,
               font=small)
    y += 30
    d.text((x0, y), "the training pictures", fill=INK, font=head_font)
    y += 24
    for i, pic in enumerate(pictures[:10]):
        sheet.paste(_thumb(pic), (x0 + i * (THUMB + gap), y))
    if loss_png is not None:
        sheet.paste(loss_png.resize((loss_png.width * THUMB // loss_png.height, THUMB)),
                    (width - 24 - loss_png.width * THUMB // loss_png.height, y))
    y += THUMB + 24
    for j in range(n_prompts):
        d.line([x0, y, width - 24, y], fill=LINE)
        d.text((x0, y + 6), f"{methods[0]['prompts'][j]['kind']}: {methods[0]['prompts'][j]['prompt']}", fill=INK,
               font=head_font)
        y += 28
        for i, m in enumerate(methods):
            row = m["prompts"][j]
            d.text((x0, y + 4), m["label"][:32], fill=INK, font=text_font)
            what = "concept" if row["kind"] == "reconstruction" else "text"
            d.text((x0, y + 24), f"{what} {sum(row[what]) / len(row[what]):.3f}", fill=MUTED, font=small)
            for s in range(k):
                px = x0 + label_w - 24 + s * (THUMB + gap)
                sheet.paste(_thumb(drawn[i, j][s]), (px, y))
                d.text((px, y + THUMB + 3), f"{row[what][s]:.3f}", fill=MUTED, font=small)
            y += row_h
    y += 10
    d.text((x0, y), f"seeds {report['seeds'][:k]}{' ...' if k < len(report['seeds']) else ''}; textinv "
           f"{report['textinv_version']}; {report['seconds']['total']:.0f} s", fill=MUTED, font=small)
    return sheet.crop((0, 0, width, min(height, y + 30)))


_CSS = BASE_CSS + """
h3 { font-size: .95rem; font-family: ui-monospace, monospace; margin: 1.2rem 0 .3rem; }
img.pic { width: 160px; height: 160px; object-fit: cover; display: block; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def render_html(report: dict, loss_png: Image.Image | None) -> str:
    """The report as an HTML page beside its pictures/ and training/ folders (the pictures are files, not inlined:
    a few hundred full-size pictures would make one page of hundreds of megabytes)."""
    esc = html.escape
    methods = report["methods"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(report['title'])}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(report['title'])}</h1>",
             f"<p class='muted'>{esc(report['model'])}; pictures judged by CLIP <code>{esc(report['clip'])}</code>; "
             f"{_pictures(len(report['seeds']))} a prompt at seeds {report['seeds'][0]}-{report['seeds'][-1]}, the same "
             f"for every method.</p>",
             "<h2>Scores</h2><p>As in the textual inversion paper: <b>reconstruction</b> is the mean CLIP image "
             "similarity of the 'a photo of' pictures to the training pictures; <b>editability</b> the mean CLIP "
             "similarity of the edited pictures to their prompt with the concept left out; <b>concept kept in "
             "edits</b> the edited pictures' similarity to the training pictures. Higher is better; they compare "
             "between methods and embeddings judged by the same CLIP, not across CLIP models.</p>",
             "<table><tr><th></th><th>reconstruction</th><th>editability</th><th>concept kept in edits</th></tr>"]
    for m in methods:
        parts.append(f"<tr><td>{esc(m['label'])}</td><td class='num'>{m['reconstruction']:.3f}</td><td class='num'>"
                     f"{m['editability']:.3f}</td><td class='num'>{m['kept_in_edits']:.3f}</td></tr>")
    parts.append("</table>")
    if report["training_similarity"] is not None:
        parts.append(f"<p class='muted'>The training pictures among themselves: {report['training_similarity']:.3f} "
                     f"(what reconstruction is read against).</p>")
    parts.append(f"<h2>The training pictures</h2><p class='muted'>{esc(report['images'])}</p><div class='row'>")
    parts += [f"<img class='pic' src='{esc(f, quote=True)}' alt='training picture'>" for f in report["training_files"]]
    parts.append("</div>")
    if loss_png is not None:
        parts.append(f"<h2>Training</h2><img src='{data_uri(loss_png)}' alt='training loss'>")
    parts.append("<h2>The pictures</h2>")
    for j in range(len(methods[0]["prompts"])):
        for m in methods:
            row = m["prompts"][j]
            what = "concept" if row["kind"] == "reconstruction" else "text"
            parts.append(f"<h3>{esc(row['prompt'])} <span class='muted'>({row['kind']}; {what} similarity "
                         f"{sum(row[what]) / len(row[what]):.3f})</span></h3><div class='row'>")
            for seed, f, v in zip(report["seeds"], row["files"], row[what]):
                parts.append(f"<figure><a href='{esc(f, quote=True)}'><img class='pic' src='{esc(f, quote=True)}' "
                             f"alt='{esc(row['prompt'], quote=True)}'></a><figcaption>seed {seed}: {v:.3f}"
                             f"</figcaption></figure>")
            parts.append("</div>")
    settings = json.dumps(report["settings"], indent=1, default=str)
    parts.append(f"<h2>Settings</h2><pre>{esc(settings)}</pre><p class='muted'>textinv {esc(report['textinv_version'])}"
                 f"; {report['seconds']['total']:.0f} s (drawing {report['seconds']['draw']:.0f} s)</p></body></html>")
    return "\n".join(parts)
