"""The training loop: learn new token vectors so the frozen model reconstructs the concept's pictures.

Textual inversion (Gal et al., ICLR 2023, eq. 2): find v* = argmin_v E_{z, y, eps, t} || eps - eps_theta(z_t, t,
c_theta(y(v))) ||^2, where only the new token vectors v are optimised; the UNet eps_theta, the text encoder c_theta
and the VAE that gives z stay frozen. For v-prediction models (SD 2.x 768) the target is the velocity instead.

`train(config)` reads top to bottom:
1. check the settings and the output folder (before anything heavy is loaded);
2. load the model, add the token, initialise its vectors from the init text;
3. load the pictures, encode each (and its mirror image) with the VAE once, tokenize every caption once;
4. loop: sample a batch from the cached latent distributions, noise it, predict, step the optimizer;
   log, checkpoint, draw sample grids along the way;
5. save the embedding (and on Ctrl-C or a non-finite loss, the last good vectors before stopping).

Every random draw of the loop comes from seeded generators (one per concept) whose state goes into each checkpoint,
so a resumed run ends exactly where an uninterrupted one does (bit for bit on the CPU). Data parallel training
(`accelerate launch`) draws the global batch on every process from those same generators, each process takes its
slice, and the vectors' gradient is averaged across processes before the step. Several concepts in one run share
the frozen model and every batch; each concept's loss term is its own mean, so it learns what its own run would.

Beside it: the pictures' cached latents (`latent_cache`), the loss (`losses`), what a batch draws from (`batches`:
the caption bank, the sampler), the optimizer and its step (`optimizers`: clipping and fp16 skips per concept, the
rate on resume), the validation loss and the pictures it scores (`validation`), a signal's stop at a step boundary
(`stopping`) and the out-of-memory message (`train_memory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from . import __version__, emphasis, modelspec
from .batches import BatchSampler, CaptionBank, NoiseOptions, _check_no_other_tokens, concept_seed
from .config import (TrainConfig, check_config_object, clip_steps, lr_steps_end, parse_lr_steps,
                     read_config_file, save_config, stepped_value, training_size)
from .data import (CaptionSampler, PictureSet, TagVariation, default_templates, load_training_images, picture_set,
                   random_windows, read_caption, read_template_file, warn_unread_templates)
from .errors import (ConfigError, DataError, FormatError, ModelError, TrainingError, given, setting, warn,
                     warns_at_caller)
from .formats import LearnedEmbedding, default_filename, load_embedding, save_embedding, step_filename
from .generate import check_fits, check_steps, expand_all, uses_clip_l_half, warn_clip_l_half
from .graphs import CapturedStep, check_device as check_graph_device
from .io import atomic_path, output_folder
from .latent_cache import RANDOM_CROPS, _encoded, sampled_latents
from .losses import LossOptions, check_loss_for, diffusion_loss, encode_captions
from .memory import is_out_of_memory, out_of_memory_as, release, sides
from .models import (DTYPES, LAUNCHED_AT, EarlyInterrupt, Model, check_clip_skip, check_model_object,
                     launched_precision, launcher_precision, load_model, model_fingerprints, pick_device,
                     precision_name, shareable_name, webui_checkpoint, xl_time_ids)
from .optimizers import (SCHEDULE_FREE, _clip_rows, _rate_from_schedule, _step_skipping_overflows, evaluating,
                         make_optimizer)
from .run_folder import (CONFIG_FILE, LOSS_LOG, MODEL_SETTINGS, SAMPLES_DIR, STEP_EMBEDDINGS_DIR, VALIDATION_LOG,
                         check_resumable, check_same_contents, check_same_model, check_same_precision, clear_run,
                         clear_temporaries, concept_folder, left_out_as_run, load_checkpoint, moved_places,
                         newest_checkpoint, picture_contents, prepare_output, resume_or_start, run_lock,
                         save_checkpoint, saved_validation, settings_to_resume, write_loss_log)
from .sample_prompts import SamplePrompt, as_sample, prompt_file
from .samplers import scheduler_for
from .speed import check_compiled_unet, speed_up_unet, uncompiled, unet_example
from .stopping import _PROCESS_GROUP, _StopRequest, _cpu_group, _each
from .tokens import (ExtendedEmbedding, add_tokens, base_embedding, check_new_token, encode_init, expand_prompt,
                     init_vectors, scratch_tokens, split_words, token_names, webui_init_ids)
from .tracking import LOGS_DIR, RunTracker, run_name, tracker_names
from .train_memory import _allocated, _memory_error, _Where
from .validation import (FixedDraws, _lowest_validation, _split_each_concept, _split_then, _validation_pictures,
                         _warn_other_validation_pictures, fixed_draws, validation_loss)

class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the vectors at the last finished step were saved before stopping."""

    def __init__(self, step: int, path: Path, signum: int = signal.SIGINT):
        super().__init__(f"stopped at step {step}; vectors saved to {path}")
        self.step, self.path = step, path
        self.signum = int(signum)  # which signal stopped it: the command's exit status is 128 + it, as a shell's


@dataclass
class TrainResult:
    """What `train` learned: the first concept's `embedding` (the vectors and metadata of its file, ready for
    `generate.install_embedding` or `formats.save_embedding`), the embedding `files` it wrote (one, or an SDXL pair
    with --format diffusers; every concept's with several), the optimizer `steps` the run is at, the logged
    `losses`, and with several concepts every concept's embedding in `embeddings`."""

    embedding: LearnedEmbedding
    files: list[Path]
    steps: int
    # (the lists are left out of the repr a notebook shows: a long run logs hundreds of losses)
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (step, mean loss over the log interval)
    embeddings: list[LearnedEmbedding] = field(default_factory=list, repr=False)  # every concept's, in order
    validation: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (step, validation loss), when on


# ---------------------------------------------------------------------------------------------------------------
# 1. settings and output folder


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a CUDA GPU that supports it and fp32 elsewhere: fp32 is the safe, exact CPU default, and
    on Apple's MPS the safe one too (bf16 there needs macOS 14; diffusers' MPS guide runs SD in fp32)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[precision]


def _launched_precision(config: TrainConfig, say: bool, passed: bool) -> TrainConfig:
    """`config` with --precision left out (None) read as `accelerate launch`'s fp16 or bf16 (`launched_precision`),
    said so where `say`, else as auto; fp8 is none of textinv's precisions (warned about by
    `_warn_launcher_precision`); a model `passed` in trains at its own dtype, so leaves auto too."""
    return dataclasses.replace(config, precision=launched_precision(config.precision, say, passed))


def _warn_launcher_precision(precision: str, dtype: torch.dtype) -> None:
    """Say so when `accelerate launch` was asked for a mixed precision (`launcher_precision`) other than the `dtype`
    the run takes: a --precision given that differs, or fp8, which textinv lacks. accelerate's "no", every launch's
    default, says nothing."""
    asked = launcher_precision()
    if asked == "no" or DTYPES.get(asked) == dtype:
        return
    taken = next(name for name, d in DTYPES.items() if d == dtype)
    give = (f"give --precision {asked} (or leave --precision out)" if asked in DTYPES
            else f"textinv has --precision {', '.join(DTYPES)}")
    warn(f"{LAUNCHED_AT} is {asked}, not taken by textinv: this run takes {taken} (--precision {precision}); {give} "
         f"for the frozen weights' precision")


# ---------------------------------------------------------------------------------------------------------------
# 3. data: cached latent distributions (`latent_cache`) and pre-tokenized captions


def steps_for_epochs(epochs: int, counts: Sequence[Sequence[int]], batch: int, grad_accum: int = 1,
                     processes: int = 1, tokens: Sequence[str] = ()) -> tuple[int, str]:
    """The optimizer steps of `epochs` epochs (--epochs), and one line saying how they were counted. `counts` holds,
    per concept, how many times each picture is in an epoch (its kohya folder's count, or its subset's num_repeats,
    x --repeats: `BatchSampler`'s table); `tokens` names the concepts.

    Every step draws batch x grad_accum x processes samples from each concept's epochs, and an epoch ends inside a
    batch (the sampler goes on into the next one), so E epochs are E x the epoch's samples over that, rounded up
    once: the diffusers script and kohya's round each epoch up instead, as their epochs end in a short batch.
    A flip is a random draw of each sample, not a second copy: mirror images do not lengthen an epoch (nor in
    theirs). With several concepts the largest one's epoch counts, so every concept gets at least E epochs (each
    smaller one more, as a shared --steps would give it).

    >>> steps_for_epochs(10, [[10] * 5], batch=4)
    (125, '--epochs 10: 5 pictures x 10 repeats / batch 4 = 12.5 steps an epoch, 125 steps')
    """
    per_step = batch * grad_accum * processes
    sizes = [sum(c) for c in counts]
    k = sizes.index(max(sizes))
    steps = -(-epochs * sizes[k] // per_step)  # (whole numbers: no float rounding at any size)
    each = counts[k]
    what = f"{len(each)} picture{'s' * (len(each) != 1)}"
    if len(set(each)) > 1:  # (kohya folders of different counts)
        what = f"{sizes[k]} samples ({what}, each its kohya folder's count or subset's num_repeats x --repeats)"
    elif each[0] > 1:
        what += f" x {each[0]} repeats"
    by = " x ".join([f"batch {batch}"] + [f"grad-accum {grad_accum}"] * (grad_accum > 1)
                    + [f"{processes} processes"] * (processes > 1))
    per_epoch = f"{sizes[k] / per_step:.2f}".rstrip("0").rstrip(".")
    which = f" of the largest concept, {tokens[k]} (the others get more)" if len(counts) > 1 else ""
    total = f"{steps} step{'s' * (steps != 1)}"
    return steps, f"--epochs {epochs}{which}: {what} / {by} = {per_epoch} steps an epoch, {total}"


def _epochs_note(path: Path, steps: int) -> str | None:
    """The line of a run's config.yaml header that says how --epochs gave its steps (`steps_for_epochs`), while the
    run is still of those `steps`; else None. Read by its start and end only, so a line an earlier textinv worded
    otherwise is kept as it is."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((line[2:] for line in lines if line.startswith("# --epochs ")
                 and re.search(rf", {steps} steps?$", line)), None)


READ_FROM = "subsets and settings as read from kohya's dataset config"
PROMPTS_FROM = "sample_prompts as read from kohya's sample prompts file"


def _header_note(path: Path, start: str) -> str | None:
    """The line of a run's config.yaml header that starts with `start` (without its "# "), or None."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((line[2:] for line in lines if line.startswith(f"# {start}")), None)


def _saved_setting(path: Path, name: str):
    """Setting `name` as a run's config.yaml at `path` holds it, or None."""
    try:
        return read_config_file(path).get(name)
    except ConfigError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# the run


class _Read(NamedTuple):
    """A concept's pictures as `_train` reads them (`pictures_of`): the pictures, their cached latent
    distributions (`_encoded`), caption bank, SDXL time ids and alpha weights (None where unused)."""

    pictures: list
    mean: torch.Tensor | list
    std: torch.Tensor | list
    bank: CaptionBank
    time_ids: torch.Tensor | None
    pixel_weight: torch.Tensor | list | None


@dataclass
class ConceptState:
    """One concept of a run: its token, pictures, cached latents, captions, sampler and rows in the tables."""

    token: str
    init: str
    pictures: list
    mean: torch.Tensor | list  # (2I, 4, h, w): the pictures, then their mirror images (--buckets with pictures of
    std: torch.Tensor | list  # several shapes: a list of 2I (4, h_i, w_i), see _latents_each)
    bank: CaptionBank
    sampler: BatchSampler
    time_ids: torch.Tensor | None  # (I, 6) for SDXL
    rows: list[slice]  # this token's rows in each encoder's added vectors
    out: Path  # where its embedding goes
    pixels: torch.Tensor | None = None  # kept only by the reference-like mode, which encodes every step
    pixel_weight: torch.Tensor | None = None  # (2I, 1, h, w) with --alpha-mask: `latent_weights`
    validation: FixedDraws | None = None  # the validation loss's draws (`validation.fixed_draws`), when it is on
    crops: int = 1  # each picture's windows with --random-crop: mean, std and pixel_weight hold 2 * I * crops
    noise_shape: tuple = field(init=False)  # what the concept's noise is drawn at, each step (see __post_init__)

    def __post_init__(self):
        # the latents' shape, or with buckets the largest height and width its latents have, each sample taking its
        # own size's corner (`_draw`): a square run's random numbers are what they always were, and a concept's are
        # its own run's whatever the other concepts' shapes
        shapes = [m.shape for m in self.mean]
        self.noise_shape = (shapes[0][0], max(s[1] for s in shapes), max(s[2] for s in shapes))


@warns_at_caller  # (a warning raised anywhere in the run names the user's `train(...)` line)
def train(config: TrainConfig, model: Model | None = None, progress: bool = True, on_step=None) -> TrainResult:
    """Learn `config.token` from the pictures in `config.images`; write everything into `config.out`.

    With `config.concepts` it learns several independent tokens in one run that shares the frozen model: each
    step draws `batch` samples per concept, all go through the UNet as one batch, and the loss is the sum of each
    concept's mean, so every concept gets the gradient its own run would get (the returned result is the first
    concept's; each concept's file is in `out/<name>/`).

    >>> from textinv.config import TrainConfig
    >>> result = train(TrainConfig(images="photos/dog", token="<my-dog>", init="dog", out="runs/dog"))  # doctest: +SKIP
    >>> result.files  # doctest: +SKIP
    [PosixPath('/.../runs/dog/learned_embeds.safetensors')]

    `on_step(step)` is called after each optimizer step (benchmarks time steps with it). A `model` passed in
    (`models.load_model`, loaded once for several runs) trains on the device it is on and comes back as it came,
    also after an error or Ctrl-C: without the run's tokens, so the same token can be trained again and the learned
    file installed by `generate` or diffusers' `load_textual_inversion`.
    """
    from accelerate import PartialState

    check_config_object(config, TrainConfig)
    check_model_object(model)
    if model is not None:
        # the model trained with is the one passed in: config.yaml, the embedding's base_model and a later resume or
        # score name it as it was loaded, not the --model default (`shapes`) nothing loaded, nor a --vae it lacks
        config = dataclasses.replace(config, model=model.source, **{k: model.loaded_with.get(k) for k in
                                                                     ("revision", "variant", "vae",
                                                                      "single_file_config", "prediction_type")})
    # (read now: the config validate returns holds what it gave, and config.yaml's header names the file)
    source = str(Path(config.dataset_config).expanduser().resolve()) if config.dataset_config else None
    prompts_from = prompt_file(config.sample_prompts)  # (kohya's sample prompts file: config.yaml's header names it)
    # (a resume's steps, lr, vectors, precision ... left out: the run's, from its config.yaml, read once here for
    # `prepare_output` too); --resume-or-start decided first, from the folder as it is
    config = resume_or_start(config)
    saved = settings_to_resume(config)
    config = left_out_as_run(config, saved).validate()
    device = pick_device(config.device)  # (a device this machine lacks is refused before anything loads)
    # Without a GPU, `accelerate launch --multi_gpu --num_processes N` runs N CPU processes over gloo.
    started = not _PROCESS_GROUP.running()  # (a group the caller started is the caller's to end)
    state = PartialState(cpu=device.type != "cuda")
    _PROCESS_GROUP.together = False  # (until this run ends with every process at one place)
    if started and _PROCESS_GROUP.running():  # (a launcher's group of one too: torchrun --nproc_per_node 1)
        _PROCESS_GROUP.end_at_exit()
    if state.num_processes > 1:  # launched data-parallel: each process's device is accelerate's
        if str(config.device).strip().lower() != "auto" and (device.type == "mps" or device.index is not None):
            raise ConfigError(f"{setting('device', config.device)}: under accelerate launch each process takes its "
                              f"own GPU (choose them with accelerate launch --gpu_ids); give "
                              f"{setting('device', 'auto')}, cuda or cpu")
        device = state.device
    elif model is not None:
        device = model.unet.device
    config = _launched_precision(config, progress and state.is_main_process, passed=model is not None)
    where = _Where(config, resolve_precision(config.precision, device) if model is None else model.unet.dtype,
                   progress=progress and state.is_main_process)
    if state.is_main_process:
        _warn_launcher_precision(config.precision, where.dtype)

    def run() -> TrainResult:
        # (cuda:N: pinned memory, the bf16 check and CUDA graphs use the current GPU, which would otherwise be cuda:0)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            # the run's signal handlers (`_StopRequest`, from its first step) go back last, once the folder is let go
            # of and the model handed back: a signal in those last moments is the run's, not Python's
            with EarlyInterrupt(), contextlib.ExitStack() as handlers:
                stop = _StopRequest(_cpu_group(state, handlers))
                # (data parallel: a process whose set-up fails, the folder's lock included, stops every process)
                with stop.setting_up(), run_lock(Path(config.out), state.is_main_process), \
                        _handed_back(model):  # (one run per folder)
                    return _train(config, model, progress, on_step, state, device, source, where, prompts_from,
                                  stop=stop, handlers=handlers, saved=saved)

    # out of memory: raised once the lock is released and the model handed back, as `out_of_memory_as` raises it
    return out_of_memory_as(run, lambda e: _memory_error(where, device, e), lambda: device)


@contextlib.contextmanager
def _handed_back(model: Model | None):
    """A model passed to `train` comes back as it came: its tokenizers and embedding tables without the run's tokens
    (`scratch_tokens`), which would otherwise refuse the same token in a second run and the learned file in
    `generate` or diffusers' `load_textual_inversion`, and its UNet out of the training mode and gradient
    checkpointing that --gradient-checkpointing turns on. (The speed levers, --compile and --channels-last, stay:
    they are for the next run as much as this one.)"""
    if model is None:
        yield
        return
    unet = model.unet
    training, checkpointing = unet.training, unet.is_gradient_checkpointing
    with scratch_tokens(model):
        try:
            yield
        finally:
            if unet.is_gradient_checkpointing and not checkpointing:
                unet.disable_gradient_checkpointing()
            unet.train(training)


def _moved_model(error: ModelError, config: TrainConfig, moved: dict[str, str]) -> ModelError:
    """`error`, loading a resumed run's model, with the flag that gives its new place when a path its config.yaml
    names is gone (`moved`: the settings given anew, whose own paths are the user's to fix): as with its pictures, a
    model folder or file is moved to another disk or converted, and a resume takes it where it is now."""
    gone = [k for k in MODEL_SETTINGS if k not in moved and getattr(config, k)
            and Path(getattr(config, k)).is_absolute() and not Path(getattr(config, k)).exists()]
    if not config.resume or not gone:
        return error
    flags = " and ".join(f"--{k.replace('_', '-')}" for k in gone)
    it, them, is_ = ("they", "them", "are") if len(gone) > 1 else ("it", "it", "is")
    return ModelError(f"{error} (the run's {flags}, as {Path(config.out) / CONFIG_FILE} names {them}; if {it} moved, "
                      f"resume with {flags} where {it} {is_} now: the run checks that it is the same model)")


def _pictures(config: TrainConfig, folder: str | None) -> PictureSet:
    """A concept's pictures (`picture_set`: the folder `folder`, else the run's kohya subsets). A resumed run's folder
    that is gone is said with the flag that gives its new place: a run folder is moved with its pictures, to another
    directory or machine, and its config.yaml names where they were."""
    try:
        return picture_set(folder, config.subset_list())
    except DataError as e:
        gone = [s["images"] for s in config.subset_list() if not Path(s["images"]).exists()] if folder is None else []
        if config.resume and gone:  # (kohya's subsets: given again by the file that gave them)
            raise DataError(f"cannot resume {config.out}: the subset folder {gone[0]} does not exist (the "
                            f"{len(config.subsets)} kohya subsets {Path(config.out) / CONFIG_FILE} names); if the "
                            f"subsets moved, resume with {setting('dataset_config')} and the run's dataset config, "
                            f"each image_dir where its folder is now (the same subsets, in the same order)") from None
        if not config.resume or folder is None or Path(folder).exists():
            raise
        again = ("--concepts, each concept's FOLDER=TOKEN as it is now, in the run's order" if config.concepts
                 else "--images with where they are now")
        raise DataError(f"{e} (the pictures {Path(config.out) / CONFIG_FILE} names; if they moved, resume with "
                        f"{again})") from None


@dataclass(eq=False)
class _Run:
    """What `_train`'s phases hand on to one another, and the loop's running state (what nanoGPT's train.py keeps in
    its globals): the run's settings and process first, then each phase's fields as it fills them in."""

    config: TrainConfig
    state: object  # accelerate's PartialState: this process, and how many there are
    device: torch.device
    where: _Where  # what the run is doing, kept up to date for `_memory_error`
    progress: bool
    on_step: Callable[[int], None] | None
    source: str | None  # the --dataset-config the config's subsets and settings were read from
    prompts_from: str | None  # the kohya sample prompts file its sample prompts were read from
    # `_check_inputs`: the pictures and the checkpoint, before the model loads
    previous: object = None  # (--overwrite: the old run, cleared once the inputs and the model have loaded)
    specs: list[dict] = field(default_factory=list)  # each concept's token, init text and folder
    found: list[PictureSet] = field(default_factory=list)  # each concept's pictures
    held_back: list = field(default_factory=list)  # each concept's pictures held out for the validation loss
    contents: list = field(default_factory=list)  # each concept's pictures' bytes as digests (`picture_contents`)
    checkpoint: tuple[Path, dict] | None = None  # the one a --resume goes on from
    repeats: list[list[int]] = field(default_factory=list)  # each picture's times in an epoch
    length: str | None = None  # (how --epochs became the steps: printed, and kept in config.yaml's header)
    moved: dict = field(default_factory=dict)  # (the model settings a resume gives anew, compared once it has loaded)
    places: list = field(default_factory=list)  # (all a resume moved)
    start_from: LearnedEmbedding | None = None  # --init-embedding's vectors
    templates: list[str] = field(default_factory=list)
    validation_seed: int = 0
    # `_load_model`: the model with the run's tokens added
    model: Model | None = None
    dtype: torch.dtype = torch.float32
    fingerprints: object = None
    file_format: str = ""
    webui_checkpoint: dict = field(default_factory=dict)  # --format a1111: the model file's hash and name, read once
    timesteps: tuple[int, int] = (0, 0)
    loss_options: object = None
    clip_skip: int = 1
    held: list[int] = field(default_factory=list)  # rows that tokens added before this run hold in each encoder
    rows_per_concept: list = field(default_factory=list)
    # `_read_concepts`
    resolution: int | tuple[int, int] = 0  # a square's side, or (W, H) with --resolution WIDTHxHEIGHT
    concepts: list[ConceptState] = field(default_factory=list)
    # `_prepare_step`: the optimizer over the new vectors, its schedule and the step's pieces
    scheduler: object = None
    scaling: float = 1.0
    exts: list = field(default_factory=list)  # each encoder's embedding, the added vectors in it
    others: list = field(default_factory=list)  # (the rows of tokens not this run's, and their values: kept)
    lr: float = 0.0
    trained: list = field(default_factory=list)
    table_copies: list = field(default_factory=list)  # (the reference-like mode's frozen tables)
    optimizer: object = None
    lr_schedule: object = None
    clip_norm: list | None = None  # --max-grad-norm, --max-grad-value as (value, until step) pairs: `clip_steps`
    clip_value: list | None = None
    scaler: object = None
    captured: CapturedStep | None = None
    samplers: list = field(default_factory=list)
    # `_start_or_resume` and the loop
    step: int = 0
    # history: (step, loss) per log interval, the loss summed over concepts; by_concept: each concept's, with several
    history: list = field(default_factory=list)
    by_concept: list = field(default_factory=list)
    rates: list = field(default_factory=list)  # the rate of each of the last rows of `history` (loss.csv's learn_rate)
    # each concept's loss summed over the log interval's finished steps (a checkpoint keeps it, so a resumed
    # loss.csv is the uninterrupted run's)
    interval_loss: torch.Tensor | None = None  # (K,)
    interval_steps: int = 0
    validated: list = field(default_factory=list)  # the validation losses: (step, summed over concepts)
    validated_by_concept: list = field(default_factory=list)  # and each concept's
    skipped: list[int] = field(default_factory=list)  # the fp16 steps each concept skipped alone
    sample_prompts: list[SamplePrompt] = field(default_factory=list)
    last_good: list | None = None  # the last vectors known finite, and their step
    last_good_step: int = 0
    lr_used: float | None = None  # the rate of the step just taken
    tracker: RunTracker | None = None
    group: object = None  # data parallel: the CPU group the processes agree on stopping over
    stop: _StopRequest | None = None
    samplers_at_step: list | None = None  # what a checkpoint of `step` holds if a second Ctrl-C stops mid-step
    started: float = 0.0  # (when the loop began, and at which step: for the summary)
    first_step: int = 0

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def concept_losses(self, inputs: dict) -> torch.Tensor:
        """Each concept's mean loss over its part of a micro-batch, (K,); their sum is what is differentiated, so
        concept k's gradient is its own run's."""
        config = self.config
        per_sample = grouped_loss(self.model, self.scheduler, inputs["latents"], inputs["noise"], inputs["timesteps"],
                                  inputs["ids"], config.min_snr_gamma, inputs["cond_ids"], self.clip_skip,
                                  inputs["pixel_weight"], inputs["input_noise"], self.loss_options)  # (K * B,)
        return per_sample.view(len(self.concepts), -1).mean(dim=1)

    def embedding_of(self, c: ConceptState, at_step: int, vectors: list[torch.Tensor] | None = None
                     ) -> LearnedEmbedding:
        config, model = self.config, self.model
        vectors = vectors or [e.vectors for e in self.exts]
        per_encoder = {name: v[r].detach().float().cpu().clone()
                       for (name, _, _), v, r in zip(model.encoders, vectors, c.rows)}
        meta = {"token": c.token, "vectors": str(config.vectors), "base_model": str(shareable_name(config.model)[0]),
                "family": model.family, "property": config.property, "init": c.init, "steps": str(at_step),
                "clip_skip": str(self.clip_skip), "resolution": _size_text(self.resolution),
                "prediction_type": model.prediction_type, "textinv_version": __version__}
        # (a hub id's branch and weights' variant beside its name, only when given: the file is as it always was)
        meta.update({f"base_model_{k}": getattr(config, k) for k in ("revision", "variant") if getattr(config, k)})
        if config.max_token_length != emphasis.CHUNK:  # (left out at 75: a run's file is as it always was)
            meta["max_token_length"] = str(config.max_token_length)
        meta.update(self.webui_checkpoint)  # (the web UI's sd_checkpoint and sd_checkpoint_name of a single file)
        return LearnedEmbedding(c.token, per_encoder, meta)

    def embedding_path(self, c: ConceptState) -> Path:
        return c.out / default_filename(self.file_format, c.token)

    def saved_where(self) -> Path:
        """What a message names as saved: the embedding file, or with several concepts the folder of them all."""
        return self.embedding_path(self.concepts[0]) if len(self.concepts) == 1 else self.out

    def save_all(self, at_step: int, vectors: list[torch.Tensor] | None = None, checkpoint: bool = True
                 ) -> list[Path]:
        """Each concept's embedding, and a checkpoint to resume from (main process only)."""
        if not self.is_main:
            return []
        config, concepts, file_format = self.config, self.concepts, self.file_format
        date = modelspec.now()  # (one for the step's files too: they are the same bytes as the main file's)
        # (the files hold a schedule-free optimizer's average; the checkpoint the point it steps from, to go on)
        with evaluating(self.optimizer):
            files = [f for c in concepts for f in _write_embedding(self.embedding_of(c, at_step, vectors),
                                                                     self.embedding_path(c), file_format, date)]
            # (not for the last good vectors a non-finite loss falls back to: they are an earlier step's)
            if config.step_embeddings and config.save_every and at_step and at_step % config.save_every == 0 \
                    and vectors is None:
                for c in concepts:  # (the step's files are the main file's at that step, a .pt's name the step's)
                    step_file = c.out / STEP_EMBEDDINGS_DIR / step_filename(file_format, c.token, at_step)
                    _write_embedding(self.embedding_of(c, at_step), step_file, file_format, date,
                                     name=step_file.stem if file_format == "a1111" else None)
        if checkpoint:
            save_checkpoint(self.out, at_step, self.exts, self.optimizer, self.lr_schedule, self.samplers,
                            self.scaler, (self.history, self.by_concept, self.rates), config,
                            (self.interval_loss.tolist(), self.interval_steps),
                            pictures=[listed.names for listed in self.found], processes=self.world,
                            skipped=self.skipped, model=self.fingerprints,
                            validation=(self.validated, self.validated_by_concept),
                            held_out=([held.names for held in self.held_back] if self.held_back[0] is not None
                                      else None), ran_at=(precision_name(self.dtype), self.device.type),
                            contents=self.contents)
        # (a run stopped by a non-finite loss keeps its finite curve)
        self.write_loss_log()
        # (as the checkpoint has them: a second Ctrl-C between a score and its row left the row out)
        if self.validated:
            self.write_validation_log()
        return files

    def write_loss_log(self) -> None:
        """loss.csv: the loss history, with each row's rate (the one it trained at; the schedule's at that step for
        rows a checkpoint made before them lacks) and epoch (the largest concept's, from 1, as `steps_for_epochs`
        counts them: the epoch of the step's last sample)."""
        per_step = self.config.batch * self.config.grad_accum * self.world
        per_epoch = max(sum(counts) for counts in self.repeats)  # (the largest concept's samples)
        schedule = self.lr_schedule  # (a LambdaLR: the rate of step s is set after s - 1 schedule steps)
        # (a resume with a raised --steps stretches a schedule: the rows before it trained at the old one's rates)
        known = dict(zip([s for s, _ in self.history][-len(self.rates):], self.rates)) if self.rates else {}
        write_loss_log(self.out / LOSS_LOG, self.history, self.by_concept, [c.token for c in self.concepts],
                       rate=lambda s: known[s] if s in known else schedule.base_lrs[0] * schedule.lr_lambdas[0](s - 1),
                       epoch=lambda s: -(-s * per_step // per_epoch))

    def write_validation_log(self) -> None:
        write_loss_log(self.out / VALIDATION_LOG, self.validated, self.validated_by_concept,
                       [c.token for c in self.concepts], column="validation_loss")

    def grid_path(self, c: ConceptState, at_step: int) -> Path:
        return c.out / SAMPLES_DIR / f"step-{at_step:06d}.png"

    def png_path(self, c: ConceptState, at_step: int) -> Path:
        """--png-embeddings' picture (named as the web UI names its own: my-dog-500.png, called so there)."""
        return c.out / SAMPLES_DIR / step_filename("a1111-png", c.token, at_step)

    def drawn(self, at_step: int) -> bool:
        """Whether every concept's grid of `at_step` is written, with its --png-embeddings picture (written after
        it: a run stopped between the two left the grid alone)."""
        return all(self.grid_path(c, at_step).is_file()
                   and (not self.config.png_embeddings or self.png_path(c, at_step).is_file()) for c in self.concepts)

    def draw_samples(self, at_step: int) -> None:
        config, where, concepts = self.config, self.where, self.concepts
        if not (self.is_main and config.sample_every):
            return
        where.stage, where.step, where.prompts, where.at_once, where.drawn_at = "grid", at_step, \
            len(self.sample_prompts), 0, None

        def drawing(pictures: int, width: int, height: int) -> None:
            where.at_once, where.drawn_at = pictures, (width, height)
        # with the UNet uncompiled: compiled for the training step, it would compile again for the sampler's calls
        # (no gradient, another batch): minutes for a whole UNet, and CUDA graphs of their own, for a few pictures
        with uncompiled(self.model.unet), evaluating(self.optimizer):
            for c in concepts:
                def own(p: str) -> str:  # (this concept's token, all its vectors; and as generate draws them,
                    # the multi-vector tokens a model the diffusers script saved whole holds: `tokens.saved_tokens`)
                    return expand_all(expand_prompt(p.replace("{}", c.token), c.token, config.vectors), [], self.model)

                grid = sample_grid(self.model, [dataclasses.replace(s, prompt=own(s.prompt),
                                                                    negative_prompt=own(s.negative_prompt))
                                                for s in self.sample_prompts], config.seed, config.sample_steps,
                                   self.resolution, self.clip_skip, drawing)
                with atomic_path(self.grid_path(c, at_step)) as tmp:
                    grid.save(tmp, format="PNG")
                if config.png_embeddings:
                    save_embedding(self.embedding_of(c, at_step), self.png_path(c, at_step), "a1111-png",
                                   preview=grid, caption=config.png_caption)
                if self.tracker is not None:  # (after its file: a grid the tracker has is in samples/ too)
                    self.tracker.log_grid(at_step, "samples" if len(concepts) == 1 else f"samples/{c.out.name}",
                                          grid)
        where.stage, where.step = "step", at_step + 1

    def validate(self, at_step: int) -> None:
        """The validation loss of the vectors at `at_step` (every process scores it, the same: no collective), once a
        step: validation.csv and the trackers get it."""
        config, concepts = self.config, self.concepts
        if self.validated and self.validated[-1][0] == at_step:
            return

        def loss_of(b: dict) -> torch.Tensor:
            return grouped_loss(self.model, self.scheduler, b["latents"], b["noise"], b["timesteps"], b["ids"],
                                config.min_snr_gamma, b["cond_ids"], self.clip_skip, b["pixel_weight"], None,
                                self.loss_options)
        with uncompiled(self.model.unet), evaluating(self.optimizer):  # (as the grids: no compile, no gradient)
            losses = [validation_loss(c.validation, loss_of, config.batch) for c in concepts]
        means = torch.stack(losses).tolist()  # (K,)
        self.validated.append((at_step, sum(means)))
        if len(concepts) > 1:
            self.validated_by_concept.append(means)
        if self.tracker is not None:
            self.tracker.log_validation(at_step, sum(means),
                                        {c.out.name: m for c, m in zip(concepts, means)} if len(concepts) > 1
                                        else None)
        if self.is_main:
            self.write_validation_log()

    def validating(self, at_step: int) -> bool:
        every = self.config.validating_every
        return bool(every) and (at_step % every == 0 or at_step == self.config.steps)

    def vectors_finite(self) -> bool:
        return all(torch.isfinite(e.vectors).all() for e in self.exts)

    def snapshot(self) -> list[torch.Tensor]:
        with evaluating(self.optimizer):  # (what a file of these vectors holds)
            return [e.vectors.detach().clone() for e in self.exts]

    def stop_non_finite(self, at_step: int, bad: list[str], together: bool = True) -> None:
        """Save the last good vectors (as of their step) and stop with what to change. `together`: every process
        gets here at this step (loss and grads are shared, so the vectors are too), and so may wait for the main
        one's save; after a second Ctrl-C they may be anywhere."""
        self.save_all(self.last_good_step, self.last_good, checkpoint=False)
        if together:
            self.wait_for_main()
        which = f" ({', '.join(bad)}'s)" if len(self.concepts) > 1 and bad else ""
        raise TrainingError(
            f"the loss{which} became non-finite (NaN/inf) by step {at_step}; the last good vectors (step "
            f"{self.last_good_step}) were saved to {self.saved_where()}. Lower "
            f"{'--lr-steps' if self.config.lr_steps else '--lr'} (the rate is {self.lr_used:g} now), set "
            f"--max-grad-norm 1.0, or use --precision fp32/bf16 instead of fp16.")

    def wait_for_main(self) -> None:
        """The other processes leave only once the main one has saved: a launcher that sees one process end
        stops the rest, which would cut the main process's save short."""
        if self.group is not None:
            torch.distributed.barrier(group=self.group)
            _PROCESS_GROUP.together = True


def _train(config: TrainConfig, model: Model | None, progress: bool, on_step, state, device: torch.device,
           source: str | None = None, where: _Where | None = None, prompts_from: str | None = None,
           *, stop: _StopRequest, handlers: contextlib.ExitStack, saved: dict | None) -> TrainResult:
    """`train`'s run; `source`: the --dataset-config the config's subsets and settings were read from; `where`: what
    it is doing, kept up to date for `_memory_error`; `prompts_from`: the kohya sample prompts file its sample
    prompts were read from; `stop`: the run's stop request, over its processes' CPU group (`_cpu_group`);
    `handlers`: where the run's signal handlers are put back (`train`'s, once it has let go of the folder and the
    model); `saved`: a resume's settings, as `settings_to_resume` read them."""
    run = _Run(config, state, device, where or _Where(config, torch.float32), progress, on_step, source, prompts_from,
               group=stop.group, stop=stop)
    _check_inputs(run, model, saved)  # 1. settings, output folder and pictures, before the (slow) model load
    _load_model(run, model)  # 2. model and tokens
    _read_concepts(run)  # 3. data: each concept's cached latents and captions
    _prepare_step(run)  # the optimizer over the new vectors, its schedule, the compiled UNet
    # (data parallel: every process loaded all this, before the main one writes a file, and resumes or starts alike)
    stop.agree_set_up(resumes=run.config.resume)
    _start_or_resume(run)  # config.yaml, or the checkpoint's state
    files = _loop(run, handlers)  # 4. the loop
    return _finish(run, files)  # 5. results


def _check_inputs(run: _Run, model: Model | None, saved: dict | None) -> None:
    """`_train`'s first phase: the output folder, each concept's pictures (read before the slow model load, so bad
    data fails first), the pictures held out for validation, the steps --epochs gives, and the checkpoint a
    --resume goes on from, checked against the settings (`saved`: the run's, `_train`'s)."""
    config, is_main, progress, where = run.config, run.is_main, run.progress, run.where
    config, run.previous = prepare_output(config, is_main, saved)
    out = Path(config.out)
    if is_main:  # (the folder is this run's now: a refused one is left as it is)
        clear_temporaries(out)
    specs = config.concept_list()
    # fail on bad data before the (slow) model load: each concept's folder, or kohya's subsets (--dataset-config)
    found = [_pictures(config, spec["images"]) for spec in specs]
    for spec, pictures in zip(specs, found):
        if pictures.described and is_main and progress:  # (kohya's layout or subsets: what was read)
            print(f"{run.source}: {pictures.described}" if run.source and spec["images"] is None
                  else pictures.described)
    for pictures in found:
        for path, extension in zip(pictures.paths, pictures.caption_extensions):
            read_caption(path, extension)  # (a caption file that is not UTF-8, say; read again with the pictures)
    validation_seed = config.seed if config.validation_seed is None else config.validation_seed
    held_back = [None] * len(found)  # each concept's pictures held out for the validation loss (--validation-split)
    checkpoint = newest_checkpoint(out) if config.resume else None
    if config.validation_split:
        found, held_back = _split_each_concept(config, specs, found, validation_seed, is_main and progress,
                                               _split_then(checkpoint, config))
    elif config.validation_images is not None:
        held_back = [_validation_pictures(config.validation_images, found[0])]
    # each picture's times in an epoch: its kohya folder's (or subset's) count x --repeats
    repeats = [[n * config.repeats for n in pictures.repeats] for pictures in found]
    length = None  # (how --epochs became the steps: printed, and kept in config.yaml's header)
    if config.epochs is not None:  # the steps from now on: config.yaml holds them, so a resume or rerun takes them
        steps, length = steps_for_epochs(config.epochs, repeats, config.batch, config.grad_accum, run.world,
                                         [spec["token"] for spec in specs])
        config = dataclasses.replace(config, steps=steps, epochs=None)
        if is_main and progress:
            print(length)
    end = lr_steps_end(config.lr_steps)
    if config.steps is None:  # --steps left out (config.yaml then holds the steps, so a resume runs to them too:
        # `left_out_as_run`, as a run an older textinv started ran on past a stepped rate's last step to its --steps)
        config = dataclasses.replace(config, steps=config.steps_to_run())
        if end is not None and is_main and progress and checkpoint is None:  # (the web UI stops at the last step)
            print(f"--lr-steps ends at step {end}, its last rate's step, as the web UI's: the run is {end} steps")
    if config.cuda_graphs:
        check_graph_device(run.device)
    moved, places = {}, []  # (the model settings a resume gives anew, compared once it has loaded; all it moved)
    if checkpoint is not None:
        # (the pictures in the order its epoch table counts them)
        found, moved = check_resumable(checkpoint, config, found, run.world,
                                       held_back if config.validation_split else None)
        # (the dtype the steps take: a model passed in trains at its own, whatever --precision gives)
        check_same_precision(checkpoint, config, resolve_precision(config.precision, run.device) if model is None
                             else model.unet.dtype, run.device, passed=model is not None)
        places = moved_places(out, config)  # (said once resumed: config.yaml then records where they are now)
        if config.validation_images is not None:  # (not trained on: a change is said, the run goes on)
            _warn_other_validation_pictures(checkpoint[1], held_back[0], step=int(checkpoint[1]["step"]))
        repeats = [[n * config.repeats for n in pictures.repeats] for pictures in found]
    # (each picture's and caption's bytes, in the checkpoint's order: each checkpoint records them, a resume compares)
    run.contents = [picture_contents(pictures) for pictures in found]
    if checkpoint is not None:
        check_same_contents(checkpoint, config, found, run.contents)
    start_from = None
    if config.init_embedding:
        specs[0]["init"] = f"embedding {shareable_name(config.init_embedding, True)[0]}"  # (the file records its name)
        if checkpoint is None:  # (a resume takes the vectors from its checkpoint: the file may be gone by now)
            start_from = _read_init_embedding(config)
            # --vectors left out is the file's count (config.yaml records it, so a resume or rerun has it)
            config = dataclasses.replace(config, vectors=start_from.num_vectors)
    where.config, where.step = config, (int(checkpoint[1]["step"]) if checkpoint is not None else 0) + 1
    templates = read_template_file(config.templates) if config.templates else list(default_templates(config.property))
    if config.templates:
        warn_unread_templates(config.templates, templates, found)
    run.config, run.specs, run.found, run.held_back, run.checkpoint = config, specs, found, held_back, checkpoint
    run.repeats, run.length, run.moved, run.places = repeats, length, moved, places
    run.start_from, run.templates, run.validation_seed = start_from, templates, validation_seed


def _load_model(run: _Run, model: Model | None) -> None:
    """`_train`'s second phase: the model (loaded, or the one passed in), checked against the checkpoint and the
    settings, with each concept's token added to every text encoder, its vectors started from the init text."""
    config, device, where, checkpoint, moved, specs = \
        run.config, run.device, run.where, run.checkpoint, run.moved, run.specs
    # the dtype the steps take (checkpoints record it): a model passed in keeps its own
    dtype = resolve_precision(config.precision, device) if model is None else model.unet.dtype
    if model is not None and checkpoint is not None:  # (not config.model's: it is compared as one given anew)
        moved = {"model": "the model passed to train()"}
    if model is None:
        try:
            model = load_model(config.model, dtype=dtype, device=device, prediction_type=config.prediction_type,
                               single_file_config=config.single_file_config, vae=config.vae,
                               revision=config.revision, variant=config.variant)
        except ModelError as e:
            raise _moved_model(e, config, moved) from None
    model.check_trainable()
    fingerprints = model_fingerprints(model)  # (before any token is added: a checkpoint records the model's own)
    if checkpoint is not None:
        check_same_model(checkpoint, moved, fingerprints, config)
    where.dtype = next(model.unet.parameters()).dtype  # (a model passed in has its own)
    where.model = model
    run.model, run.dtype, run.moved, run.fingerprints = model, dtype, moved, fingerprints
    run.file_format = _file_format(config.format, model)
    if run.file_format == "a1111" and run.is_main:  # (a full read of the file: once, not at every save)
        run.webui_checkpoint = webui_checkpoint(config.model)
    if config.png_embeddings and model.is_xl:
        raise ConfigError(f"{setting('png_embeddings')} writes the web UI's embedding PNGs, which hold one text "
                          f"encoder's vectors; an SDXL embedding has two: leave it out")
    timesteps = run.timesteps = timestep_range(config, model.noise_scheduler().config.num_train_timesteps)
    check_loss_for(config, model.prediction_type, model.source, model.noise_scheduler().alphas_cumprod, timesteps)
    run.loss_options = LossOptions.of(config)
    run.clip_skip = where.clip_skip = check_clip_skip(model, config.clip_skip)  # (SDXL's 2 is its own reading: 1)
    if config.sample_every:  # (now, not at the first grid: the sampler refuses them there)
        check_steps(model, config.sample_steps, "sample_steps")
        for shot in map(as_sample, config.sample_prompts):  # (a sampler this model's schedule refuses, likewise)
            scheduler_for(model.pipeline.scheduler, shot.sampler or "default",
                          flag=f"--sample-prompts {shot.prompt!r}: its sampler")
    # a model that says its own words for the property (the bundled shapes model knows neither "object" nor the
    # paper's templates' words) gives the init and templates the user left out
    own = model.prompting.get(config.property, {})
    if own.get("templates") and not config.templates:
        run.templates = list(own["templates"])
    if own.get("init") and not config.init and not config.init_embedding:
        specs = run.specs = [dict(spec, init=again["init"])
                             for spec, again in zip(specs, config.concept_list(own["init"]))]
    _add_run_tokens(run)
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.unet.train()  # diffusers checkpoints only in training mode; the frozen UNet has no dropout


def _add_run_tokens(run: _Run) -> None:
    """Each concept's token entries added to every text encoder of the model, their vectors started from the
    concept's init text (or --init-embedding's file), and each concept's rows in the added vectors noted."""
    config, model, specs, start_from, is_main = run.config, run.model, run.specs, run.start_from, run.is_main
    # rows that tokens added before this run (an installed embedding) hold in each encoder's vectors: they share the
    # trained parameter, so AdamW's weight decay would shrink them; they are put back after every step
    run.held = [len(te.get_input_embeddings().vectors) if isinstance(te.get_input_embeddings(), ExtendedEmbedding)
                else 0 for _, _, te in model.encoders]
    # every concept's token entries and init text first: a later concept's bad one must not leave a model passed in
    # holding the earlier concepts' tokens (the corrected run would then find them taken); and an init text is read
    # as its concept's own run reads it, whatever tokens the other concepts add (their word pieces, not their rows)
    init_ids = []
    vocabs = [tok.get_vocab() for _, tok, _ in model.encoders]  # (a new dict of the whole vocabulary each call)
    for spec in specs:
        for (_, tok, _), vocab in zip(model.encoders, vocabs):
            for name in token_names(spec["token"], config.vectors):
                check_new_token(tok, name, vocab)
        init_ids.append([encode_init(tok, spec["init"]) for _, tok, _ in model.encoders]
                        if start_from is None and not config.init_embedding else None)
    for spec, ids in zip(specs, init_ids):
        names = token_names(spec["token"], config.vectors)
        # one set of vectors per text encoder (SDXL has two), each initialised from the init text in its own encoder
        if start_from is not None:
            check_fits(model, start_from, PAIR_HINT)
            if is_main and uses_clip_l_half(model, start_from):  # (starts below takes its clip_l half)
                warn_clip_l_half(model, start_from)
            starts = [start_from.vectors[name] for name, _, _ in model.encoders]
        elif config.init_embedding:  # resuming: the checkpoint's vectors replace these
            starts = [torch.zeros(config.vectors, base_embedding(te).weight.shape[1]) for _, _, te in model.encoders]
        else:
            starts = [init_vectors(base_embedding(te).weight, _init_ids(model, name, own, config), config.vectors,
                                   config.init_spread) for (name, _, te), own in zip(model.encoders, ids)]
            split = split_words(model.tokenizer, ids[0])
            if split and is_main and not config.resume:
                warn(f"{given('init', spec['init'])}: {model.source} does not know {', '.join(split)} as a word, "
                     f"so {spec['token']} starts from those fragments' vectors; give a word it "
                     f"knows (check the spelling)")  # (named at the line that called `train`: `warn`)
        exts = [add_tokens(tok, te, names, start) for (_, tok, te), start in zip(model.encoders, starts)]
        run.rows_per_concept.append([slice(e.vectors.shape[0] - config.vectors, e.vectors.shape[0]) for e in exts])


def _init_ids(model: Model, encoder: str, ids: list[int], config: TrainConfig) -> list[int]:
    """The init tokens encoder `encoder` starts from: all of them, or with --init-spread webui the ones the web UI
    reads there (`webui_init_ids`: OpenCLIP's are SD 2.x's encoder and SDXL's second)."""
    if config.init_spread != "webui":
        return ids
    return webui_init_ids(ids, config.vectors, open_clip=model.family == "sd2" or encoder == "text_encoder_2")


def _read_concepts(run: _Run) -> None:
    """`_train`'s third phase: each concept's pictures read and encoded once (their cached latent distributions),
    its captions tokenized once, its validation draws fixed, and its own seeded batch sampler."""
    config, model, device, where, specs = run.config, run.model, run.device, run.where, run.specs
    size = training_size(config.resolution)
    resolution = run.resolution = tuple(size) if isinstance(size, list) else size or model.resolution
    if (far := model.size_note(resolution)) is not None:
        warn(far)
    where.stage, where.resolution = "latents", resolution
    tokenizers = [tok for _, tok, _ in model.encoders]
    concepts = run.concepts
    step_px = bucket_step(model) if config.buckets else None

    def pictures_of(listed: PictureSet, spec: dict, seed: int, tags: TagVariation = TagVariation(),
                    crop_seed=None) -> _Read:
        """A concept's pictures read and encoded, with their captions; with `crop_seed` (--random-crop) the
        encoded are RANDOM_CROPS windows of each (`random_windows`), else each picture's centre; `seed` draws
        --latent-sampling once's latents."""
        pictures = load_training_images(listed.paths, resolution, config.center_crop, use_alpha=config.alpha_mask,
                                        bucket_step=step_px, caption_extensions=listed.caption_extensions,
                                        random_crop=crop_seed is not None, no_upscale=config.bucket_no_upscale,
                                        wildcards=config.caption_wildcards)
        encoded = random_windows(pictures, RANDOM_CROPS, crop_seed) if crop_seed is not None else pictures
        mean, std, pixel_weight = _encoded(model.vae, encoded, listed.where, config.alpha_mask, device)
        mean, std = sampled_latents(mean, std, config.latent_sampling, seed)
        for p in pictures:  # (the windows are encoded: their pictures' covers are not needed any more)
            p.cover = p.cover_alpha = None
        placeholder = expand_prompt(spec["token"], spec["token"], config.vectors)
        captions = CaptionSampler(pictures, run.templates, placeholder, tags=tags, prefix=config.caption_prefix,
                                  suffix=config.caption_suffix)
        bank = CaptionBank(tokenizers, captions, device,
                           entries=token_names(spec["token"], config.vectors), max_token_length=config.max_token_length,
                           expand=lambda text: expand_all(text, [], model))
        _check_no_other_tokens(model.tokenizer, bank, pictures, spec, [s["token"] for s in specs if s is not spec],
                               config.vectors)
        time_ids = _xl_time_ids(pictures, config.center_crop, device) if model.is_xl else None
        return _Read(pictures, mean, std, bank, time_ids, pixel_weight)

    # how the caption files are written (kohya's caption_separator, keep_tokens_separator, secondary_separator,
    # enable_wildcard): the held-out pictures' captions too, which are scored unvaried
    caption_format = dict(separator=config.tag_separator, keep_separator=config.keep_tags_separator,
                          joiner=config.tag_joiner, wildcards=config.caption_wildcards)
    for k, (spec, listed, rows) in enumerate(zip(specs, run.found, run.rows_per_concept)):
        tags = TagVariation(config.shuffle_tags, config.tag_dropout, config.keep_tags,
                            seed=concept_seed(config.seed, k), warmup_min=config.tag_warmup_min,
                            warmup_steps=config.tag_warmup_length(), **caption_format)
        crops = RANDOM_CROPS if config.random_crop else 1
        read = pictures_of(listed, spec, concept_seed(config.seed, k), tags,
                           concept_seed(config.seed, k) if config.random_crop else None)
        pictures, mean, std, bank, time_ids, pixel_weight = read
        validation = None
        if config.validating_every:  # the pictures held out, or the training pictures
            scored = (pictures_of(run.held_back[k], spec, concept_seed(config.seed, k),
                                  TagVariation(**caption_format))
                      if run.held_back[k] is not None else read)
            validation = fixed_draws(scored.mean, scored.std, scored.bank, scored.time_ids, scored.pixel_weight,
                                     pictures=len(scored.pictures), draws=config.validation_draws,
                                     timesteps=run.timesteps, seed=concept_seed(run.validation_seed, k),
                                     scaling=model.vae.config.scaling_factor, device=device)
        # concept k draws from its own generator: a concept of a joint run sees what its own run would see
        sampler = BatchSampler(len(pictures), run.repeats[k], config.use_flip, concept_seed(config.seed, k),
                               config.noise_offset, NoiseOptions.of(config), crops, config.caption_dropout,
                               config.caption_dropout_every)
        concept_out = run.out if len(specs) == 1 else run.out / concept_folder(spec["token"])
        concepts.append(ConceptState(spec["token"], spec["init"], pictures, mean, std, bank, sampler, time_ids, rows,
                                     concept_out, pixel_weight=pixel_weight, validation=validation, crops=crops))
        if config.reference_like:  # (one shape: --buckets is refused with it)
            pixels = torch.stack([p.pixels for p in pictures])  # (I, 3, H, W)
            concepts[-1].pixels = torch.cat([pixels, pixels.flip(-1)]).to(device, model.vae.dtype)


def _prepare_step(run: _Run) -> None:
    """What the training step needs: the UNet sped up (--compile, --channels-last), the noise schedule on the
    device, the optimizer over the new vectors only, its learning-rate schedule, the fp16 loss scaler, and with
    --cuda-graphs the captured step."""
    config, model, device, concepts = run.config, run.model, run.device, run.concepts
    run.where.stage = "step"  # (from the compiled UNet's check on: a step's batch)
    speed_up_unet(model.unet, config.compile, config.compile_mode, config.channels_last)
    if config.compile != "off":
        # (the example as the steps call the UNet: a different shape, layout or call recompiles at the first step)
        check_compiled_unet(model.unet, unet_example(model, len(concepts) * config.batch, concepts[0].mean[0].shape,
                                                     like=concepts[0].mean[0], tokens=config.max_token_length + 2))
    scheduler = run.scheduler = model.noise_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    run.scaling = model.vae.config.scaling_factor
    exts = run.exts = [te.get_input_embeddings() for _, _, te in model.encoders]
    run.others = [(e, e.vectors.detach()[:n].clone()) for e, n in zip(exts, run.held) if n]  # (not this run's: kept)

    # optimizer over the new vectors only
    stepped = parse_lr_steps(config.lr_steps) if config.lr_steps else None
    run.clip_norm = clip_steps(config.max_grad_norm, "--max-grad-norm")
    run.clip_value = clip_steps(config.max_grad_value, "--max-grad-value")
    base = stepped[0][0] if stepped else config.lr
    lr = run.lr = base * (config.batch * config.grad_accum * run.world if config.scale_lr else 1)
    trained = run.trained = [e.vectors for e in exts]
    if config.reference_like:  # the diffusers example's costs, for side-by-side benchmarks
        for (_, _, te), e in zip(model.encoders, exts):
            te.float()
            e.base.weight.requires_grad_(True)
            trained.append(e.base.weight)
        run.table_copies = [e.base.weight.detach().clone() for e in exts]
    # (--optimizer adamw, the default: torch.optim.AdamW(trained, lr=lr, weight_decay=config.weight_decay))
    # (a schedule-free one warms up itself, and runs at a constant rate: `optimizers.check_schedule`)
    schedule_free = config.optimizer in SCHEDULE_FREE
    optimizer = run.optimizer = make_optimizer(config.optimizer, trained, lr, config.weight_decay,
                                               config.optimizer_args,
                                               warmup_steps=config.warmup_steps if schedule_free else 0)
    from diffusers.optimization import get_scheduler

    if stepped:  # A1111's: each rate until its step (the LambdaLR is rebuilt from the settings on resume)
        def factor(step: int) -> float:
            return stepped_value(stepped, step) / base

        run.lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    else:
        # (diffusers' schedules, kohya's too: each a LambdaLR of the step, so a resume rebuilds it from the settings
        # and `_rate_from_schedule` reads it; num_cycles and power shape only cosine_with_restarts and polynomial)
        run.lr_schedule = get_scheduler("constant" if schedule_free else config.lr_schedule, optimizer,
                                        num_warmup_steps=0 if schedule_free else config.warmup_steps,
                                        num_training_steps=config.steps, num_cycles=config.lr_cycles,
                                        power=config.lr_power)

    # fp16 gradients through the frozen fp16 UNet can underflow: scale the loss (a no-op for fp32/bf16)
    scaler = run.scaler = torch.amp.GradScaler(device.type, enabled=run.dtype == torch.float16)
    run.captured = CapturedStep(run.concept_losses, trained, lambda total: scaler.scale(total / config.grad_accum),
                                capture=device.type == "cuda") if config.cuda_graphs else None
    run.samplers = [c.sampler for c in concepts]


def _start_or_resume(run: _Run) -> None:
    """A new run writes its config.yaml (an --overwrite clears the old run first, now that the inputs and the model
    have loaded); a resumed one takes its step, loss curve, optimizer, schedule and samplers from its checkpoint and
    writes the settings now in force."""
    config, device, concepts, out, checkpoint = run.config, run.device, run.concepts, run.out, run.checkpoint
    # what config.yaml's header records beside the settings: where the run ran, and the defaults left to the model
    resolved = {"resolution": run.resolution, "format": run.file_format, "flip": config.use_flip,
                "max_timestep": run.timesteps[1],
                "init": concepts[0].init if len(concepts) == 1 and not config.init_embedding else None}
    # on the CPU the thread count too: torch splits some float sums by thread, so 1 and 2 threads differ in a last bit
    threads = torch.get_num_threads()
    record = (f"{device.type}, {run.dtype}" + (f", {threads} thread{'s' * (threads > 1)}" if device.type == "cpu"
                                               else ""),
              {k: v for k, v in resolved.items() if getattr(config, k) is None and v is not None})
    interval = ([0.0] * len(concepts), 0)
    run.skipped = [0] * len(concepts)  # the fp16 steps each concept skipped alone (`_step_skipping_overflows`)
    read_from = f"{READ_FROM} {run.source}" if run.source else None  # (config.yaml's header names the subsets' file)
    prompts_note = f"{PROMPTS_FROM} {run.prompts_from}" if run.prompts_from else None  # (and the prompts' file)
    length = run.length
    if config.resume:
        run.step, run.history, run.by_concept, interval = load_checkpoint(checkpoint, run.exts, run.optimizer,
                                                                          run.lr_schedule, run.samplers, run.scaler)
        run.skipped = [int(n) for n in checkpoint[1].get("skipped_steps") or run.skipped]  # (older checkpoints: none)
        run.rates = [float(r) for r in checkpoint[1].get("history_rates") or []]  # (the last rows': older have none)
        run.validated, run.validated_by_concept = saved_validation(checkpoint[1])
        _rate_from_schedule(run.optimizer, run.lr_schedule)  # (a raised --steps: the next step's rate is the new one)
        if run.is_main:
            # the settings a resume may change (--steps) as now in force; how --epochs gave the steps is kept while
            # they stand
            length = length or _epochs_note(out / CONFIG_FILE, config.steps)
            read_from = _header_note(out / CONFIG_FILE, READ_FROM) if config.subsets and not run.source else read_from
            if not run.prompts_from and config.sample_prompts == _saved_setting(out / CONFIG_FILE, "sample_prompts"):
                prompts_note = _header_note(out / CONFIG_FILE, PROMPTS_FROM)  # (the prompts the file gave, still)
            save_config(config, out / CONFIG_FILE, run.world, *record, length=length,
                        read_from=[note for note in (read_from, prompts_note) if note])
            if run.progress:
                print(f"resuming {out} at step {run.step} of {config.steps}" + "".join(f"\n  {p}" for p in run.places))
    elif run.is_main:
        if run.previous is not None:  # --overwrite: the inputs and the model loaded, so the old run goes now
            clear_run(out, run.previous, Path(config.init_embedding) if config.init_embedding else None)
        output_folder(out)
        save_config(config, out / CONFIG_FILE, run.world, *record, length=length,
                    read_from=[note for note in (read_from, prompts_note) if note])
    run.where.writing = True
    run.sample_prompts = _sample_prompts(config, run.templates, concepts)
    run.interval_loss = torch.tensor(interval[0], device=device)  # (K,)
    run.interval_steps = interval[1]


def _sample_prompts(config: TrainConfig, templates: list[str], concepts: list[ConceptState]) -> list[SamplePrompt]:
    """The grids' prompts, each concept's token marked `{}` for `_Run.draw_samples` to fill in."""
    # the grids' prompts: the run's templates, but a [filewords] template has no picture's words to fill in, and
    # when every template has one (A1111's *_filewords.txt) the property's default templates stand in
    # (each with the settings a kohya sample prompts file gave it, or none: the grid's)
    sample_prompts = [as_sample(p) for p in config.sample_prompts] or [
        SamplePrompt(t) for t in ([t for t in templates if "[filewords]" not in t][:4]
                                  or list(default_templates(config.property))[:4])]
    # a prompt may name a token as it is written in `generate` ('a photo of <my-dog>'): each concept's grid draws
    # its own token there, as with {}; so may a negative prompt
    named = re.compile("|".join(re.escape(c.token) for c in sorted(concepts, key=lambda c: -len(c.token))),
                       re.IGNORECASE)

    def marked(p: str) -> str:
        return p if "{}" in p else named.sub(lambda m: "{}", p)

    return [dataclasses.replace(s, prompt=marked(s.prompt), negative_prompt=marked(s.negative_prompt))
            for s in sample_prompts]


def _loop(run: _Run, handlers: contextlib.ExitStack) -> list[Path]:
    """`_train`'s loop: the run's signal handlers (`_StopRequest`), what the steps need (`_set_up_loop`), the steps
    (`_steps`); then what was set up is undone, however the loop ends (a signal at any line of it included). A Ctrl-C
    kept as the model loaded (`EarlyInterrupt`) stops the run before anything is set up; in data parallel it stops
    every process at the first step boundary instead, as a Ctrl-C during the set-up does. Returns the embedding
    files written."""
    run.last_good, run.last_good_step = run.snapshot(), run.step
    run.started, run.first_step = time.time(), run.step
    stop = run.stop
    handlers.callback(stop.release)
    # from here a first signal is noted, and stops the run at the next step boundary
    stop.install(alone=run.world == 1)
    undo = []  # what `_set_up_loop` made, each undone in the reverse order
    try:
        return _steps(run, _set_up_loop(run, undo))
    finally:
        # a captured step holds a whole step's memory: not kept by the traceback of a run stopped or failed (which a
        # notebook keeps), nor past the run
        run.captured = None
        # Each part runs whatever a Ctrl-C or SIGTERM cuts short (a tracker's close may take a while: wandb's
        # upload), and the handlers stay: put back, a signal would be Python's KeyboardInterrupt, or SIGTERM's kill,
        # before the tracker was closed. A signal here ends only the part it lands in: a run that got here is saved
        # (an error on its way out goes on as it was). Then the run has ended (`_StopRequest.end`): what is left
        # takes moments, and a signal changes nothing (`train` puts the handlers back once the folder is let go of)
        _each([*reversed(undo), stop.end])


def _set_up_loop(run: _Run, undo: list) -> tqdm:
    """What `_loop`'s steps need, each thing's undoing appended to `undo` as it is made: the experiment trackers,
    autocast on the text encoders, and the progress bar, which is returned (closed first, before an error's
    message, not after it)."""
    config, device = run.config, run.device
    # --log-with: loss.csv's rows and the grids go to experiment trackers too (a resumed run goes on in its logs)
    trackers = tracker_names(config.log_with)
    if trackers:
        run.tracker = RunTracker(trackers, Path(config.log_dir or run.out / LOGS_DIR), run_name(run.out),
                                 resumed_at=run.step if config.resume else None)
        undo.append(run.tracker.finish)
    # the reference-like mode with half-precision weights: the diffusers example keeps the text encoder's weights in
    # fp32, but `accelerator.prepare` (--mixed_precision bf16/fp16) runs its forward under autocast; so here too
    # (an instance attribute, removed when the run ends; the UNet and VAE run as they are, outside autocast)
    if config.reference_like and run.dtype != torch.float32:
        for _, _, te in run.model.encoders:
            te.forward = torch.autocast(device.type, dtype=run.dtype)(te.forward)
            undo.append(lambda te=te: delattr(te, "forward"))
    run.where.held = _allocated(device)
    bar = tqdm(total=config.steps, initial=run.step, disable=not (run.progress and run.is_main), desc="train",
               unit="step")
    undo.append(bar.close)
    return bar


def _steps(run: _Run, bar: tqdm) -> list[Path]:
    """`_loop`'s steps, top to bottom: stop if asked, take a step, log, then validate, save and draw as due; the
    final save. A Ctrl-C or SIGTERM saves the run at its last finished step, as does running out of device memory.
    Returns the embedding files written."""
    config, samplers, stop = run.config, run.samplers, run.stop
    try:
        _first_actions(run)
        stop.agree_set_up(last=True)  # (data parallel: the main process's files and grid done, or failed)
        while run.step < config.steps:
            stop.check()  # Ctrl-C or SIGTERM since the last step: stop here, between two steps
            run.where.step = run.step + 1
            # what a checkpoint of `step` must hold if a second Ctrl-C stops the run in the middle of this step
            run.samplers_at_step = [s.state_dict() for s in samplers]
            run.interval_loss += _train_step(run)
            run.interval_steps += 1
            run.step += 1
            step = run.step
            run.samplers_at_step = None  # from here on the samplers' state is that of the finished step
            run.lr_used = run.lr_schedule.get_last_lr()[0]  # (a Python float: no host sync)
            run.lr_schedule.step()
            run.optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if run.on_step is not None:
                run.on_step(step)
            if step % config.log_every == 0 or step == config.steps:
                _log(run, bar)
            stop.release_hold()  # (a second Ctrl-C that came meanwhile stops the run here)
            _periodic_actions(run)
        # 5. results (inside the signal handling: a Ctrl-C or SIGTERM now lets the last save finish)
        _PROCESS_GROUP.together = True  # (every process took the last step: none is left in a collective)
        files = run.save_all(run.step)
        stop.finished = True
        if config.sample_every and run.step % config.sample_every:
            run.draw_samples(run.step)
    except KeyboardInterrupt:
        stop.holding = False
        bar.close()
        files = _save_interrupted(run)
    except RuntimeError as e:  # (torch.OutOfMemoryError is one)
        if not is_out_of_memory(e):
            raise
        # out of device memory: the step's tensors go first (those the frames it came through hold, and this
        # frame's), then the run is saved as Ctrl-C saves it, at the last finished step, so --resume continues it
        # (`train` says how); not between a step's update and its count, where the last checkpoint stands
        release(e)
        run.captured = None  # (let go of: a graph holds its memory)
        _save_out_of_memory(run)
        raise
    return files


def _first_actions(run: _Run) -> None:
    """Before the first step: the validation loss of the vectors the run starts from, and their grid (a resumed run
    stopped between a checkpoint and its grid draws that grid now)."""
    config, step = run.config, run.step
    if run.validating(step):  # (the start's, or on resume the step's the run stopped in)
        run.validate(step)
    if step == 0 and not config.resume:
        run.draw_samples(0)
    elif config.resume and config.sample_every and step % config.sample_every == 0 and not run.drawn(step):
        run.draw_samples(step)  # (the run stopped after this step's checkpoint, before its grid)


def _train_step(run: _Run) -> torch.Tensor:
    """One optimizer step: `grad_accum` micro-batches drawn from every concept's generator, their gradients
    averaged across processes, each concept's rows clipped, then the update. Returns the step's loss of each
    concept, (K,), on the device (no host sync). A second Ctrl-C waits from the update on (`_StopRequest.hold`)
    until the loop has counted and logged the step."""
    config, device, model, concepts, exts, optimizer, scaler = \
        run.config, run.device, run.model, run.concepts, run.exts, run.optimizer, run.scaler
    step, world = run.step, run.world
    step_loss = torch.zeros(len(concepts), device=device)
    for _ in range(config.grad_accum):
        inputs = _micro_batch([_draw(c, config, world, run.rank, run.timesteps, device, run.scaling, model, step)
                               for c in concepts], model.is_xl, config.alpha_mask)
        if run.captured is not None:  # (the same losses and gradients, from a replayed CUDA graph)
            per_concept = run.captured(inputs)
        else:
            per_concept = run.concept_losses(inputs)  # (K,)
            scaler.scale(per_concept.sum() / config.grad_accum).backward()
        step_loss += per_concept.detach() / config.grad_accum
    if world > 1:  # the mean over the global batch: of the gradient, and of the loss that is logged
        for tensor in [e.vectors.grad for e in exts] + [step_loss]:
            torch.distributed.all_reduce(tensor)
            tensor /= world
    scaler.unscale_(optimizer)
    if run.clip_norm:  # (stepped as the web UI's clip value: the value at this step, counted from 0)
        norm = stepped_value(run.clip_norm, run.step)
        for c in concepts:  # each concept clipped on its own, as in its own run
            _clip_rows([(e.vectors.grad, r) for e, r in zip(exts, c.rows)], norm)
    if run.clip_value:  # (each number on its own: the concepts' rows need no telling apart)
        value = stepped_value(run.clip_value, run.step)
        for e in exts:  # (an fp16 overflow's inf is kept, so that its step is skipped as without clipping)
            grad = e.vectors.grad
            grad.copy_(torch.where(grad.isinf(), grad, grad.clamp(-value, value)))
    # from the update to the step's log entry a second Ctrl-C waits (milliseconds): stopped in between, the
    # checkpoint would hold the update under the previous step's count, and a resume would apply it twice
    run.stop.hold()
    # (the reference-like mode trains the whole table too, and skips whole steps as the reference does)
    if config.reference_like:
        _step_skipping_overflows(scaler, optimizer, exts, [[slice(None)] * len(exts)])
        with torch.no_grad():  # put the frozen rows back, as the reference does after every step
            for e, copy in zip(exts, run.table_copies):
                e.base.weight.copy_(copy)
    else:
        _step_skipping_overflows(scaler, optimizer, exts, [c.rows for c in concepts], run.skipped)
    if run.others:  # the tokens installed before this run stay as they were
        with torch.no_grad():
            for e, kept in run.others:
                e.vectors[:len(kept)] = kept
                # (and in a schedule-free optimizer's iterate z, which its weight decay moved: the average
                # that grids and validation see is between the two)
                if "z" in optimizer.state.get(e.vectors, {}):
                    optimizer.state[e.vectors]["z"][:len(kept)] = kept
    return step_loss


def _log(run: _Run, bar) -> None:
    """The log interval's mean loss (the loop's only host sync, once an interval): checked finite, then into the
    history, the trackers and the progress bar; loss.csv every ten intervals."""
    step, concepts = run.step, run.concepts
    means = (run.interval_loss / run.interval_steps).tolist()  # the only host sync, once per interval
    mean_loss = sum(means)
    if not math.isfinite(mean_loss) or not run.vectors_finite():
        run.stop_non_finite(step, [c.token for c, m in zip(concepts, means) if not math.isfinite(m)])
    run.last_good, run.last_good_step = run.snapshot(), step
    run.history.append((step, mean_loss))
    run.rates.append(run.lr_used)
    if len(concepts) > 1:
        run.by_concept.append(means)
    if run.tracker is not None:
        run.tracker.log(step, mean_loss, run.lr_used,
                        {c.out.name: m for c, m in zip(concepts, means)} if len(concepts) > 1 else None)
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{run.lr_used:.2e}",  # (the rate of the step just taken)
                    **({"val": f"{run.validated[-1][1]:.4f}"} if run.validated else {}))  # (the latest score)
    run.interval_loss.zero_()
    run.interval_steps = 0
    if run.is_main and step % (run.config.log_every * 10) == 0:
        run.write_loss_log()


def _periodic_actions(run: _Run) -> None:
    """After a step: the validation loss, a checkpoint and a sample grid, each when its interval has come round."""
    config, step = run.config, run.step
    saving = config.save_every and step % config.save_every == 0 and step < config.steps
    sampling = config.sample_every and step % config.sample_every == 0
    scoring = run.validating(step)
    # a save, sample or validation step between loss checks: no file, checkpoint, grid or validation loss of
    # vectors gone non-finite
    if (saving or sampling or scoring) and not run.vectors_finite():
        run.stop_non_finite(step, [])
    if scoring:  # (before the save: its checkpoint holds this step's)
        run.validate(step)
    if saving:
        run.last_good, run.last_good_step = run.snapshot(), step  # (finite: checked)
        run.save_all(step)
    if sampling:
        run.draw_samples(step)


def _save_interrupted(run: _Run) -> list[Path]:
    """A Ctrl-C or SIGTERM: the run saved at its last finished step (a half-drawn step is redone on resume), then
    `TrainingInterrupted`, unless the run had finished. Returns the files written."""
    step, stop = run.step, run.stop
    run.optimizer.zero_grad(set_to_none=True)
    if not run.vectors_finite():  # (gone non-finite since the last loss check: no NaN file, nor a checkpoint)
        run.stop_non_finite(step, [], together=stop.agreed)
    if run.samplers_at_step is not None and step < run.config.steps:  # the half-drawn step is redone on resume
        for s, saved in zip(run.samplers, run.samplers_at_step):
            s.load_state_dict(saved)
    files = run.save_all(step)  # `step` counts finished optimizer steps: the vectors are those of that step
    if stop.agreed:  # (every process stopped here; after a second Ctrl-C they may be anywhere)
        run.wait_for_main()
    if step < run.config.steps:
        raise TrainingInterrupted(step, run.saved_where(), stop.signum) from None
    # stopped in the last save or grid, its files are all saved now: the run is complete (a resume would have
    # nothing to learn), and says so as a run that was not stopped does, not "interrupted ... --resume"
    stop.finished = True
    return files


def _save_out_of_memory(run: _Run) -> None:
    """Out of device memory, the step's tensors let go of: the run saved as Ctrl-C saves it, at the last finished
    step; not between a step's update and its count, where the last checkpoint stands."""
    step = run.step
    run.optimizer.zero_grad(set_to_none=True)
    if not run.stop.holding:
        if run.samplers_at_step is not None and step < run.config.steps:  # (the half-drawn step is redone on resume)
            for s, saved in zip(run.samplers, run.samplers_at_step):
                s.load_state_dict(saved)
        run.save_all(step)
        run.where.saved = step if run.is_main else None


def _finish(run: _Run, files: list[Path]) -> TrainResult:
    """What the run learned, said on the terminal (how long it took, the lowest validation loss) and returned."""
    step, concepts, first_step = run.step, run.concepts, run.first_step
    if run.is_main and run.progress:
        took = time.time() - run.started
        learned = ", ".join(c.token for c in concepts)
        if first_step == 0:
            what = f"learned {learned} in {step} step{'s' * (step != 1)}"
        elif first_step < step:  # (a resumed run: what this one did)
            what = f"learned {learned}: " + (f"steps {first_step + 1}-{step}" if step - first_step > 1 else
                                             f"step {step}")
        else:
            what = f"{learned}: nothing to learn, the run was at step {step} already"
        print(f"{what} ({took:.0f} s); saved {', '.join(str(f) for f in files)}")
        if run.validated:
            print(_lowest_validation(run.validated, step, lambda at: [
                c.out / STEP_EMBEDDINGS_DIR / step_filename(run.file_format, c.token, at) for c in concepts]))
    with evaluating(run.optimizer):
        embeddings = [run.embedding_of(c, step) for c in concepts]
    return TrainResult(embedding=embeddings[0], files=files, steps=step, losses=run.history,
                       embeddings=embeddings, validation=run.validated)


def _write_embedding(emb: LearnedEmbedding, path: Path, file_format: str, date: str | None = None,
                     name: str | None = None) -> list[Path]:
    """`save_embedding`, a failed write raised as the OSError it is: `textinv train` then says which checkpoint is
    kept and the command that goes on from it (the advice for `convert`, another output path, is not it here).
    A file there that already holds `emb` keeps its `modelspec.date` (`_saved_date`). `name`: a .pt's `name` where
    it is not the token (a step's file holds the web UI's `my-dog-500`, as the web UI writes its own: textinv reads
    the token from its record in the file, the web UI a .pt by its file's name)."""
    try:
        return save_embedding(emb, path, file_format, date=_saved_date(emb, path) or date, name=name)
    except FormatError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def _saved_date(emb: LearnedEmbedding, path: Path) -> str | None:
    """The `modelspec.date` of the embedding file at `path` when it holds `emb` already: the same vectors at the same
    step, written again by a resume with nothing left to learn or a Ctrl-C just after a save. The file then keeps its
    bytes, so the SHA-256 that pictures drawn with it record (generate's TI hashes, --again's check) stays its own;
    ModelSpec's date is when the model was made."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = load_embedding(path)
    except (FormatError, OSError):  # (unreadable: written anew, with the date of now)
        return None
    same = old.metadata.get("steps") == emb.metadata.get("steps") and old.vectors.keys() == emb.vectors.keys() and all(
        torch.equal(old.vectors[name], emb.vectors[name].detach().to("cpu", torch.float32)) for name in emb.vectors)
    return old.metadata.get(modelspec.PREFIX + "date") if same else None


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync. A plain `.to("cuda")` of pageable memory is copied and then
    the stream synchronized (`memcpy_and_sync`): the host would wait for the whole previous step at every draw,
    and the next step's launches could not overlap the GPU's work. From pinned memory the copy is queued in stream
    order (the pinned block is kept until it has run), so the values are the same."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _draw(c: ConceptState, config, world, rank, timesteps, device, scaling, model, step: int) -> dict:
    """One concept's part of a micro-batch at `step` (0 = the first): latents, noise, timesteps, token ids, SDXL
    time ids."""
    drawn = c.sampler.draw(config.batch * world, c.noise_shape, timesteps)
    mine_cpu = {k: v[rank * config.batch:(rank + 1) * config.batch] for k, v in drawn.items()}
    mine = {k: _to_device(v, device) for k, v in mine_cpu.items()}
    which = _latent_index(mine, len(c.pictures), c.crops)
    if isinstance(c.mean, list):  # pictures of several shapes (--buckets): one latent a sample, at its own size
        picks = _latent_index(mine_cpu, len(c.pictures), c.crops).tolist()  # (on the host: no sync)
        corner = [(slice(None), slice(0, c.mean[i].shape[-2]), slice(0, c.mean[i].shape[-1])) for i in picks]
        latents = [(c.mean[i] + c.std[i] * mine["eps_latent"][n][at]) * scaling
                   for n, (i, at) in enumerate(zip(picks, corner))]
        noise = [mine["noise"][n][at] for n, at in enumerate(corner)]
        pixel_weight = [c.pixel_weight[i] for i in picks] if c.pixel_weight is not None else None
    else:
        corner = None
        noise = mine["noise"]
        pixel_weight = c.pixel_weight[which] if c.pixel_weight is not None else None
        if c.pixels is not None:  # reference-like mode: the VAE encoder runs every step
            with torch.no_grad():
                dist = model.vae.encode(c.pixels[which]).latent_dist
                latents = (dist.mean + dist.std * mine["eps_latent"].to(dist.mean.dtype)).float() * scaling
        else:
            latents = (c.mean[which] + c.std[which] * mine["eps_latent"]) * scaling
    input_noise = None
    parts = {k: mine[k] for k in ("offset", "offset_normal", "multires", "ip_noise") if k in mine}
    if parts:  # (kohya's noise settings: none in a default run)
        noise, input_noise = composed_noise(noise, latents, parts, config.adaptive_noise_scale, corner)
    return {"latents": latents, "noise": noise, "input_noise": input_noise, "timestep": mine["timestep"],
            "ids": c.bank.pick(mine["image"], mine["caption"], step, mine.get("dropped")),
            "time_ids": c.time_ids[mine["image"]] if c.time_ids is not None else None,
            "pixel_weight": pixel_weight}


def _latent_index(drawn: dict, pictures: int, crops: int) -> torch.Tensor:
    """Each drawn sample's row in its concept's cached latents: window `crop` of every picture after the window
    before it (`random_windows`), the mirror images after all of them (`encode_latents`)."""
    window = drawn["image"] + drawn["crop"] * pictures if "crop" in drawn else drawn["image"]
    return window + drawn["flip"].long() * pictures * crops


def composed_noise(noise, latents, parts: dict, adaptive_scale: float, corners: list | None = None):
    """The noise with the parts of kohya's noise settings that `BatchSampler.draw` drew (`parts`, on the device,
    each (n, ...)) put in, in kohya's order, and what the latents are noised with: (noise, input noise or None).

    1. offset with --adaptive-noise-scale A (parts offset (n,) and offset_normal (n, C, 1, 1)): each sample's
       channel offset by max(0, X + A |its latent channel's mean|) times its normal number;
    2. multi-resolution noise (multires, `pyramid_levels`): added, then the sum divided by its standard deviation
       over the whole batch, as kohya rescales it;
    3. input perturbation (ip_noise): added to the noise the latents are noised with only.
    `noise` and `latents` are (n, C, h, w) tensors, or with --buckets lists of (C, h_i, w_i), each sample's part
    then its corner of the drawn shape (`corners`, as `_draw` crops the noise)."""
    listed = corners is not None

    def each(key):  # (a part at each sample's size)
        return [parts[key][n][at] for n, at in enumerate(corners)] if listed else parts[key]
    if "offset_normal" in parts:
        if listed:
            noise = [x + (parts["offset"][n] + adaptive_scale * z.mean(dim=(1, 2), keepdim=True).abs()).clamp(min=0)
                     * parts["offset_normal"][n] for n, (x, z) in enumerate(zip(noise, latents))]
        else:  # (n, C, 1, 1)
            strength = (parts["offset"].view(-1, 1, 1, 1)
                        + adaptive_scale * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0)
            noise = noise + strength * parts["offset_normal"]
    if "multires" in parts:
        if listed:
            noise = [x + m for x, m in zip(noise, each("multires"))]
            spread = torch.cat([x.flatten() for x in noise]).std()
            noise = [x / spread for x in noise]
        else:
            noise = noise + parts["multires"]
            noise = noise / noise.std()
    input_noise = None
    if "ip_noise" in parts:
        input_noise = [x + p for x, p in zip(noise, each("ip_noise"))] if listed else noise + parts["ip_noise"]
    return noise, input_noise


def _micro_batch(batch: list[dict], is_xl: bool, alpha_mask: bool) -> dict:
    """The concepts' draws (`_draw`) as one micro-batch: latents, noise, timesteps, token ids per encoder, SDXL's
    time ids, the pixel weights and the noise the latents are noised with (--ip-noise-gamma) (None where unused),
    as `concept_losses` and a captured step take them."""
    return {"latents": _join([b["latents"] for b in batch]), "noise": _join([b["noise"] for b in batch]),
            "timesteps": torch.cat([b["timestep"] for b in batch]),
            "ids": [torch.cat(parts) for parts in zip(*(b["ids"] for b in batch))],
            "cond_ids": torch.cat([b["time_ids"] for b in batch]) if is_xl else None,
            "pixel_weight": _join([b["pixel_weight"] for b in batch]) if alpha_mask else None,
            "input_noise": _join([b["input_noise"] for b in batch]) if batch[0]["input_noise"] is not None else None}


def _join(parts: list):
    """The concepts' parts of a batch as one: a tensor, or (when any concept has pictures of several shapes) a
    list of per-sample tensors."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    return [x for p in parts for x in (p if isinstance(p, list) else p.unbind(0))]


def grouped_loss(model: Model, scheduler, latents, noise, timesteps, input_ids: list[torch.Tensor],
                 min_snr_gamma=None, time_ids=None, clip_skip: int = 1, pixel_weight=None, input_noise=None,
                 options: LossOptions | None = None) -> torch.Tensor:
    """`diffusion_loss` of a batch whose latents may be of several shapes (`--buckets`: a list of (4, h_i, w_i)):
    the samples of each shape go through the UNet together (the text encoder runs once, on the whole batch), and
    the (B,) losses come back in the batch's order. A batch of one shape (a tensor) is one call, as always.
    `input_noise` and `options` (None: unused) go to `diffusion_loss`, keywords only, so a default run calls it
    as it always did."""
    extra = {k: v for k, v in (("input_noise", input_noise), ("options", options)) if v is not None}
    if isinstance(latents, torch.Tensor):
        return diffusion_loss(model, scheduler, latents, noise, timesteps, input_ids, min_snr_gamma, time_ids,
                              clip_skip, pixel_weight, **extra)
    groups: dict[tuple, list[int]] = {}
    for n, latent in enumerate(latents):
        groups.setdefault(tuple(latent.shape), []).append(n)
    hidden, pooled = encode_captions(model, input_ids, clip_skip)
    losses, order = [], []
    for members in groups.values():
        # indices made on the host reach a GPU as the draws do (`_to_device`): `torch.tensor(list, device="cuda")`
        # would wait for the GPU to finish the previous shape's UNet before launching the next
        at = _to_device(torch.tensor(members), timesteps.device)
        losses.append(diffusion_loss(
            model, scheduler, torch.stack([latents[n] for n in members]), torch.stack([noise[n] for n in members]),
            timesteps[at], [ids[at] for ids in input_ids], min_snr_gamma,
            time_ids[at] if time_ids is not None else None, clip_skip,
            torch.stack([pixel_weight[n] for n in members]) if pixel_weight is not None else None,
            text=(hidden[at], pooled[at] if pooled is not None else None),
            **({"input_noise": torch.stack([input_noise[n] for n in members])} if input_noise is not None else {}),
            **({"options": options} if options is not None else {})))
        order += members
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(losses)[_to_device(back, timesteps.device)]  # (B,) in the batch's order


def bucket_step(model: Model) -> int:
    """The pixels a bucket's sides step by: the VAE's down-sampling times the UNet's, so every level of the UNet
    gets a whole number of latent pixels (64 for SD)."""
    return model.pipeline.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)


def _size_text(resolution: int | tuple[int, int]) -> str:
    """The training size as an embedding's metadata records it: "512" for a square (as it always was), "512x768"."""
    return "x".join(map(str, resolution)) if isinstance(resolution, tuple) else str(resolution)


def _xl_time_ids(pictures: list, center_crop: bool, device) -> torch.Tensor:
    """SDXL's size and crop conditioning of each picture, (I, 6) (mirrored pictures share it)."""
    return torch.stack([xl_time_ids(torch.tensor([p.original_size]), torch.tensor([p.crop_top_left(center_crop)]),
                                    torch.tensor([list(p.pixels.shape[-2:])]))[0] for p in pictures]).to(device)


PAIR_HINT = ("give its first file (learned_embeds) with its partner (learned_embeds_2) beside it, or join the two "
             "with textinv convert FIRST OUT --second SECOND")


def _read_init_embedding(config: TrainConfig) -> LearnedEmbedding:
    """The --init-embedding file, read before the model loads, with its vector count checked against --vectors
    where that was given."""
    try:
        start = load_embedding(config.init_embedding)
    except FormatError as e:
        raise FormatError(f"{setting('init_embedding')}: {e}") from None
    if start.num_vectors > emphasis.CHUNK:  # (--vectors' own limit: say so, not "pass --vectors N", then refused)
        raise ConfigError(f"{setting('init_embedding', config.init_embedding)} has {start.num_vectors} vectors per "
                          f"encoder, more than a 77-token prompt holds ({emphasis.CHUNK} at most, with its start and "
                          f"end), so it cannot be trained; start from an embedding of at most {emphasis.CHUNK} vectors")
    if config.vectors is not None and start.num_vectors != config.vectors:
        raise ConfigError(f"{setting('init_embedding', config.init_embedding)} has {start.num_vectors} vector(s) per "
                          f"encoder, {setting('vectors', config.vectors)} asks for {config.vectors}: leave "
                          f"{setting('vectors')} out (it is then the file's count) or give "
                          f"{setting('vectors', start.num_vectors)}")
    return start


def timestep_range(config: TrainConfig, num_timesteps: int) -> tuple[int, int]:
    """The [low, high) range training timesteps are drawn from: --min-timestep and --max-timestep within the model's
    schedule of `num_timesteps`."""
    high = num_timesteps if config.max_timestep is None else config.max_timestep
    if high > num_timesteps or config.min_timestep >= high:
        raise ConfigError(f"{setting('min_timestep', config.min_timestep)} / {setting('max_timestep', high)} do not "
                          f"fit the model's {num_timesteps} timesteps: draw from a range within 0..{num_timesteps}")
    return config.min_timestep, high


# ---------------------------------------------------------------------------------------------------------------
# checkpoints, loss log, sample grids


def _file_format(name: str | None, model: Model) -> str:
    """The file format for --format on this model: SDXL's are the single `sdxl` file or diffusers' two files."""
    if model.is_xl:
        if name not in (None, "sdxl", "diffusers"):
            theirs = (f" (kohya's sdxl_train_textual_inversion.py writes the 'sdxl' one (clip_l + clip_g): "
                      f"{setting('format', 'sdxl')})" if name == "kohya" else "")
            raise ConfigError(f"{setting('format', name)} holds one text encoder; an SDXL embedding is saved as 'sdxl' "
                              f"(one file: clip_l + clip_g) or 'diffusers' (two files){theirs}")
        return "diffusers-sdxl" if name == "diffusers" else "sdxl"
    if name == "sdxl":
        raise ConfigError(f"{setting('format', 'sdxl')} is for SDXL models; {model.source} is {model.family}")
    return name or "diffusers"


@torch.no_grad()
def sample_grid(model: Model, prompts: list[str | SamplePrompt], seed: int, steps: int,
                resolution: int | tuple[int, int], clip_skip: int = 1, drawing=None):
    """One image per (expanded) prompt at fixed seeds, side by side: the same grid at every step shows the progress.
    Picture i is drawn at seed + i, `steps` steps, the model's guidance and scheduler and `resolution`, each but
    where its `SamplePrompt` (a kohya sample prompts file's options) gives its own, with its negative prompt;
    `resolution` (W, H): pictures of that size (a run at --resolution WIDTHxHEIGHT).
    `drawing(pictures, width, height)`, if given, is told what each pipeline call draws before it draws it (train's
    note for running out of memory).

    >>> grid = sample_grid(model, ["a photo of <t>", SamplePrompt("<t> at dusk", seed=42, width=768)], 0, 25,
    ...                    512)  # doctest: +SKIP
    >>> grid.size  # doctest: +SKIP
    (1536, 512)
    """
    from .generate import make_grid, render

    shots = [p if isinstance(p, SamplePrompt) else SamplePrompt(p) for p in prompts]
    # the pictures of one set of settings go through the pipeline together: a grid of prompts without options is
    # one call, as it always was
    groups: dict[tuple, list[int]] = {}
    wide, high = sides(resolution)
    for i, s in enumerate(shots):
        key = (s.negative_prompt, s.guidance, s.steps or steps, s.sampler or "default", s.width or wide,
               s.height or high)
        groups.setdefault(key, []).append(i)
    images = [None] * len(shots)
    for (negative, guidance, n, sampler, width, height), members in groups.items():
        if drawing is not None:
            drawing(len(members), width, height)
        drawn = render(model, [shots[i].prompt for i in members],
                       seeds=[seed + i if shots[i].seed is None else shots[i].seed for i in members], steps=n,
                       resolution=max(wide, high), guidance=guidance, negative_prompt=negative, sampler=sampler,
                       clip_skip=clip_skip, width=width, height=height)
        for i, image in zip(members, drawn):
            images[i] = image
    return make_grid(images, cols=len(images))
