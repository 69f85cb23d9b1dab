"""A training run's folder (`--out`): the settings checked against what is already there (--resume, --overwrite)
before anything heavy loads, what --overwrite clears, the checkpoints that make a resumed run end exactly where an
uninterrupted one would, and the loss log.

The loop itself is in `train.py`; everything here reads or writes files and holds no model.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import os
import re
import shlex
import shutil
import socket
import unicodedata
import zipfile
from pathlib import Path
from typing import IO, Callable

import torch

from . import __version__
from .config import (ALTERNATIVES, COMMAND_ONLY, DEFAULT_LR, SETTINGS_END, SETTINGS_END_NOTE, TrainConfig, build,
                     clip_steps, read_config_file)
from .data import _OS_LITTER, PictureSet, caption_file
from .errors import ON_COMMAND_LINE, ConfigError, FormatError, TextinvWarning, setting, warn
from .formats import (FORMATS, TOKEN_FREE_FORMATS, default_filename, diffusers_file, first_file, load_embedding,
                      second_file, step_filename)
from .hub import hub_reference
from .io import TEMPORARY, remove_unheld, write_bytes, write_text
from .models import BUNDLED_MODELS, DTYPES, precision_name, same_model
from .tokens import token_names
from .tracking import LOGS_DIR, run_name

CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
STEP_EMBEDDINGS_DIR = "embeddings"  # each --save-every step's embedding (see step_filename)
LOSS_LOG = "loss.csv"
VALIDATION_LOG = "validation.csv"  # the validation loss (--validate-every, --validation-split), as loss.csv the loss
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".textinv-train.lock"  # held by the one `textinv train` writing the folder (see `run_lock`)
_LOCK_BYTE = 4096  # the byte of the lock file that msvcrt locks (Windows; beyond the end of the file is allowed)
# settings that may differ between a run and its resumption (they do not change what is learned step by step; device:
# where it runs, as `auto` already resumes a run on another machine's device, e.g. on another GPU than it started on;
# gradient_checkpointing: the UNet's forward is run again in the backward pass, the same numbers in less memory, so a
# run that ran out of it goes on with it; cuda_graphs: the same kernels, launched at once; precision: compared as the
# dtype it gives on this device with the one the checkpoint was trained at, `check_same_precision`)
RESUMABLE_CHANGES = {"steps", "epochs", "save_every", "keep_checkpoints", "step_embeddings", "sample_every",
                     "sample_steps", "png_embeddings", "png_caption", "log_every", "device", "log_with", "log_dir",
                     "gradient_checkpointing", "cuda_graphs", "resume", "overwrite", "resume_or_start",
                     "sample_prompts", "validate_every",
                     "precision", "out"}  # (out: the folder resumed, however spelt)
# stored absolute: a run resumes, or reruns, from any directory. The settings the config marks as paths (`opt`'s
# path=, which a --config file's relative ones are read by too): local ones, and model sources (a path, a hub id or
# a bundled name), stored absolute when they name something on disk; the concepts' and subsets' folders apart
# (`_absolute_paths`)
PATH_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                      if f.metadata.get("path") in ("file", "embedding") and f.name not in ("concepts", "subsets"))
MODEL_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("path") == "source")
# which version of a --model hub id is loaded (a folder's variant too): given anew on resume as the model is
MODEL_CHOICES = ("revision", "variant")


# ---------------------------------------------------------------------------------------------------------------
# settings against the folder, and --overwrite


def prepare_output(config: TrainConfig, is_main: bool = True, saved: dict | None = None
                   ) -> tuple[TrainConfig, dict | None]:
    """Check the output folder against --resume/--overwrite before anything heavy is loaded. Returns the config
    (on resume the saved one, with the settings that may change taken from `config`; `saved`: those settings as
    `settings_to_resume` read them, None: read here) and, when --overwrite is to replace a previous run, that run's
    saved settings (`{}` if it has none) for `clear_run` to find its files; nothing is deleted here, so a run that
    fails on its inputs leaves the folder as it was."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{setting('out', out)} is a file; give a folder")
    _check_writable(out)
    tokens = [spec["token"] for spec in config.concept_list()]
    folders = [concept_folder(token) for token in tokens]
    if len(folders) > 1 and len(set(folders)) < len(folders):
        raise ConfigError(f"{setting('concepts')} tokens {tokens} would share an "
                          f"output folder ({', '.join(folders)}): give each concept a token that differs in more than "
                          "its <angle brackets> or punctuation")
    # what the run itself writes at the top of --out
    own = {CHECKPOINT_DIR, SAMPLES_DIR, LOSS_LOG, VALIDATION_LOG, CONFIG_FILE}
    taken = [t for t, f in zip(tokens, folders) if f.lower() in own] if len(folders) > 1 else []
    if taken:
        raise ConfigError(f"{setting('concepts')} token {taken[0]} would put its files in "
                          f"{out / concept_folder(taken[0])}, where the run keeps its own {concept_folder(taken[0])}; "
                          f"give that concept another token")
    _check_token_names(tokens, config.vectors or 1)  # (left out: one token, --init-embedding's, which takes no other's)
    holds_run = holds_files(out)
    if config.resume:
        return _resumed(out, config, saved), None
    if config.resume_or_start:  # (still on: `resume_or_start` found files and no checkpoint there)
        return _started_again(out, config, saved, is_main)
    if holds_run and not config.overwrite:
        raise ConfigError(f"output folder {out} is not empty; pass {setting('resume', True)} to continue the run "
                          f"there, {setting('overwrite', True)} to replace it, or choose another {setting('out')}")
    previous = None
    if holds_run and is_main:
        try:
            previous = read_config_file(out / CONFIG_FILE) if (out / CONFIG_FILE).is_file() else {}
        except ConfigError:
            previous = {}  # a damaged record: only the files every run writes are cleared
    return _absolute_paths(config), previous


def holds_files(out: Path) -> bool:
    """Whether the folder `out` holds anything a run would be written over. What a file browser leaves in a folder
    looked into (.DS_Store, desktop.ini) is not a run; nor are hidden files, the lock's and a killed write's
    temporaries among them: a new run's files take none of their names."""
    return out.is_dir() and any(not p.name.startswith(".") and p.name.lower() not in _OS_LITTER
                                for p in out.iterdir())


def resume_or_start(config: TrainConfig) -> TrainConfig:
    """--resume-or-start as what it is in the folder now, decided before anything is written there: a --resume
    where `config.out` holds a run (its config.yaml and a checkpoint: a run stopped, or complete, which a resume
    then says has nothing left to learn), a new run where the folder is missing or holds nothing (`holds_files`: a
    run killed before its config.yaml leaves only its lock). Anything else keeps it on for `prepare_output`
    (`_started_again`): config.yaml without a checkpoint, a run killed before its first save, is started again,
    other files are refused. Every process of a data-parallel run decides alone, from the folder as it was: the main
    process writes there only once they all have loaded (`_StopRequest.agree_set_up`), which also compares what
    they decided.

    >>> resume_or_start(TrainConfig(out="runs/never-made", resume_or_start=True)).resume_or_start
    False
    """
    if not config.resume_or_start or config.resume or config.overwrite or not isinstance(config.out, (str,
                                                                                                    os.PathLike)):
        return config  # (`validate` refuses a bad --out, and either flag beside it)
    out = Path(config.out).expanduser()
    if not holds_files(out):
        return dataclasses.replace(config, resume_or_start=False)
    if (out / CONFIG_FILE).is_file() and checkpoints(out):
        return dataclasses.replace(config, resume=True, resume_or_start=False)
    return config


def _started_again(out: Path, config: TrainConfig, saved: dict | None, is_main: bool
                   ) -> tuple[TrainConfig, dict | None]:
    """`prepare_output` of --resume-or-start where `out` holds files and no checkpoint. A run killed before its first
    --save-every step left its config.yaml (and maybe the first grid): with the same settings (refused otherwise, as
    --resume refuses them), the run starts again over it, its files cleared as --overwrite clears them (`clear_run`,
    once the inputs and the model have loaded). Files that are no run's are refused, as without the flag."""
    if not (out / CONFIG_FILE).is_file():
        if checkpoints(out):  # (its record deleted: `no_record` says how to go on)
            raise ConfigError(no_record(out))
        raise ConfigError(f"{setting('resume_or_start')}: output folder {out} holds files but no textinv run (no "
                          f"{CONFIG_FILE}), so neither resumes nor starts there; choose another {setting('out')}, or "
                          f"move those files out")
    _resumed(out, config, saved)  # (the settings checked, as a resume checks them)
    saved = read_run_settings(out) if saved is None else saved
    learned = _learned_file(out)
    step = _saved_step(learned) if learned is not None else None
    # (a finished run whose checkpoints were deleted to make room: starting again would delete what it learned)
    if step is not None and step >= (saved.get("steps") or 0):
        raise ConfigError(f"{setting('resume_or_start')}: {out} holds the finished run's learned vectors ({learned}) "
                          f"but no checkpoint to resume from, and starting it again would delete them; start it again "
                          f"with {setting('overwrite', True)}{_from_saved_vectors(out)}, or give another "
                          f"{setting('out')}")
    if learned is not None and is_main:  # (a kill between a save's embedding file and its checkpoint, the first)
        warn(f"{setting('resume_or_start')}: {out} holds the run's vectors of step {step if step is not None else '?'} "
             f"({learned}) but no checkpoint to go on from them (a kill as the run saved, or checkpoints deleted): "
             f"the run starts again from its first step", stacklevel=3)
    return _absolute_paths(config), saved if is_main else None


def _saved_step(file: Path) -> int | None:
    """The step an embedding file the run saved was taken at (its `steps` record), or None where it cannot be read."""
    try:
        return int(load_embedding(file).metadata.get("steps", ""))
    except (FormatError, OSError, ValueError):
        return None


def _learned_file(out: Path) -> Path | None:
    """The embedding file the run in `out` saved (the first concept's that it has, in a run of several), or None:
    a run killed before its first checkpoint has written none, as every save writes both."""
    found = saved_run(out)
    specs = found[1] if found is not None else []
    for folder in [out] if len(specs) < 2 else [out / concept_folder(spec["token"]) for spec in specs]:
        if not folder.is_dir():
            continue
        file = embedding_file(folder)
        file = diffusers_file(file) if file.is_dir() else file
        if file is not None:
            return file
    return None


# the settings a TrainConfig leaves out as None until the run resolves them (--steps, --lr, --vectors, --precision,
# --validate-every, --log-dir) or as no tracker (--log-with, whose `none` turns a run's off): a resume from Python that
# leaves one out goes on with the run's, as `--out DIR --resume` takes every setting left out from config.yaml. (Any
# other setting left at None is compared with the run's, and refused where it differs; a default that is not None,
# `save_every=500`, cannot be told from a value given.)
LEFT_OUT_ON_RESUME = ("steps", "lr", "vectors", "precision", "validate_every", "log_with", "log_dir")


def settings_to_resume(config: TrainConfig) -> dict | None:
    """The settings saved in the run's config.yaml that a --resume of `config` goes on with (`read_run_settings`),
    read once for both `left_out_as_run` and `prepare_output` (so does a --resume-or-start that starts a run killed
    before its first checkpoint again, `_started_again`); None where it does not resume or there is no config.yaml
    to read (`prepare_output` refuses the resume)."""
    if not (config.resume or config.resume_or_start) or not isinstance(config.out, (str, os.PathLike)):
        return None  # (a bad `out` is refused by `validate`)
    out = Path(config.out).expanduser()
    return read_run_settings(out) if (out / CONFIG_FILE).is_file() else None


def left_out_as_run(config: TrainConfig, saved: dict | None) -> TrainConfig:
    """`config`, on --resume, with each `LEFT_OUT_ON_RESUME` setting it leaves out (None) taken from the run's
    settings `saved` (`settings_to_resume`), unless the setting that replaces it is given (`epochs` for `steps`,
    `lr_steps` for `lr`, as `build` layers a --config file under the flags); without them (None), as it is.

    >>> config = TrainConfig(out="runs/dog", resume=True)
    >>> left_out_as_run(config, settings_to_resume(config)).steps  # doctest: +SKIP
    6
    """
    if saved is None:
        return config
    instead = {name: pair for pair in ALTERNATIVES["TrainConfig"] for name in pair}
    taken = {name: saved[name] for name in LEFT_OUT_ON_RESUME if getattr(config, name) is None
             and saved.get(name) is not None and all(getattr(config, other) is None for other in instead.get(name, ()))}
    return dataclasses.replace(config, **taken)


def _resumed(out: Path, config: TrainConfig, saved: dict | None) -> TrainConfig:
    """The config a --resume of the run in `out` goes on with: the saved one (`saved`, as `settings_to_resume` read
    it; None: read here), with the settings that may change (`RESUMABLE_CHANGES`, and those that may have moved,
    `_moved_settings`) taken from `config`; other settings given otherwise than the run's are refused."""
    if not (out / CONFIG_FILE).exists():
        raise ConfigError(no_record(out))
    old = read_run_settings(out) if saved is None else saved
    new = _absolute_paths(config).to_dict()  # (--vectors left out beside --init-embedding: `left_out_as_run`'s)
    defaults = TrainConfig().to_dict()  # a setting newer than the saved run: only its default resumes it
    moved = _moved_settings(old, new, config)
    diffs = [k for k in new if k not in RESUMABLE_CHANGES | moved and not (k in MODEL_CHOICES and not new[k])
             and not _same(k, old.get(k, defaults.get(k)), new[k], config)]
    if diffs:
        detail = ", ".join(f"{k}: {old.get(k, defaults.get(k))!r} -> {new[k]!r}" for k in diffs)
        raise ConfigError(f"cannot resume {out} with different settings ({detail}); resume with the same "
                          f"settings or start a new run in another folder")
    # (--epochs given now: the steps come from it, not from the default `steps` beside it)
    now = {k: new[k] for k in RESUMABLE_CHANGES | moved if not (k == "steps" and new["epochs"] is not None)}
    return build(TrainConfig, old, now).validate()


def _moved_settings(old: dict, new: dict, config: TrainConfig) -> set[str]:
    """The settings of a resumed run (`old`) that may be given anew (`new`) because what they name may have moved;
    `new["concepts"]` becomes the run's concepts at their folders now."""
    # (images: the folder may have moved, to another disk or machine; its pictures must be the run's, which
    # `check_resumable` sees by their names)
    moved = {"images"} if new["images"] and old.get("images") else set()
    # (--validation-images too: not trained on, its pictures then and now are compared by name, a change said)
    moved |= {"validation_images"} if new["validation_images"] and old.get("validation_images") else set()
    # (the model too, as its folder or file may move: the checkpoint's fingerprint of it is compared once it has
    # loaded, `check_same_model`)
    moved |= {k for k in MODEL_SETTINGS if new[k] and old.get(k)}
    # (a hub id's revision or variant given now, where the run had another or none: the model given anew, whose
    # weights `check_same_model` compares; one left out is the run's)
    moved |= {k for k in MODEL_CHOICES if new[k]}
    if new["model"] and not new["revision"] and Path(new["model"]).expanduser().exists():
        moved.add("revision")  # (the hub model's branch, downloaded to a folder or file: that has one version)
    # (kohya's subsets too, the run's own given again, as --dataset-config reads them: their folders where they
    # are now)
    if new["subsets"] and old.get("subsets") and _moved_subsets(old["subsets"], new["subsets"], config):
        moved.add("subsets")
    if new["concepts"] and old.get("concepts"):  # (theirs too, given again with the same tokens)
        concepts = _moved_concepts(old["concepts"], new["concepts"], config)
        if concepts is not None:
            new["concepts"] = concepts
            moved.add("concepts")
    return moved


def no_record(out: str | os.PathLike) -> str:
    """Why `out`, which lacks config.yaml, cannot resume, and what to do: a folder with checkpoints lost its record
    (deleted by hand), one without holds no run."""
    if checkpoints(Path(out)):
        return (f"cannot resume: {out} holds the run's checkpoints but not its {CONFIG_FILE}, the settings a resume "
                f"goes on with: put back a copy of it, or start the run again with {setting('overwrite', True)}")
    return (f"cannot resume: {out} holds no {CONFIG_FILE}, so no run was started there; check {setting('out')}, or "
            f"start a new run without {setting('resume', True)}")


def read_run_settings(out: str | os.PathLike) -> dict:
    """The settings a run saved in `out`'s config.yaml, for --resume. It is written whole (`io`), so one that cannot
    be read, or lacks its last line (`config.SETTINGS_END`), was damaged from outside (a disk error, a copy cut
    short): said so, not as a --config file's mistake."""
    saved = Path(out) / CONFIG_FILE
    try:
        settings = read_config_file(saved)
        lines = [line.strip() for line in saved.read_text(encoding="utf-8-sig").splitlines()]
    except ConfigError:
        settings = None
    # cut short at a line, it still parses, and the settings lost would take their defaults: a file whose header says
    # it ends with `SETTINGS_END` and that lacks that line (one an older textinv wrote says nothing of it)
    if settings is None:
        raise ConfigError(f"cannot resume {out}: its settings file {saved} cannot be read (damaged from outside: "
                          f"textinv writes it whole); put back a copy of it, or start the run again with "
                          f"{setting('overwrite', True)}")
    if SETTINGS_END_NOTE in lines and SETTINGS_END not in lines:
        raise ConfigError(f"cannot resume {out}: its settings file {saved} is cut short (its last line, "
                          f"{SETTINGS_END!r}, is missing: a copy cut short, or an edit that took it out), so the "
                          f"settings after the cut would be lost; put back a copy of it (or that line, if the "
                          f"settings are whole), or start the run again with {setting('overwrite', True)}")
    if settings.get("lr_steps") is not None and settings.get("lr") == DEFAULT_LR:  # (an older textinv wrote its
        settings["lr"] = None  # default beside a stepped rate, where --lr was left out: this one writes None)
    return settings


def saved_threads(out: str | os.PathLike) -> int | None:
    """The torch CPU threads a run in `out` took its steps on, as its config.yaml's header records them ("... on
    cpu, torch.float32, 1 thread"); None where it ran elsewhere, or there is no such record. torch splits some float
    sums by thread, so a resume on another count does not end bit for bit where the run would have.

    >>> saved_threads("no/such/run") is None
    True
    """
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(Path(out) / CONFIG_FILE, encoding="utf-8-sig") as f:
            for line in itertools.islice(f, 3):
                found = re.match(r"# ran with .* on cpu, [^,]+, (\d+) threads?$", line.rstrip())
                if found:
                    return int(found[1])
    return None


@contextlib.contextmanager
def run_lock(out: Path, is_main: bool = True):
    """Hold `out` for this run: a second `textinv train` on the same folder (a fresh start, a --resume or an
    --overwrite while one runs) is refused instead of both writing the same files. The lock is the operating
    system's on a file in the folder (flock; on Windows msvcrt.locking), so it goes with its process however that
    ends (SIGKILL, a crash): there is no stale lock to clear. Its file goes when the run ends, whichever way
    (`take_lock`; a kill leaves it, held by nothing), and a run that writes nothing (a folder refused, inputs that
    fail) leaves the folders it made as they were: gone too."""
    if not is_main:  # (data parallel: the main process holds it for all)
        yield
        return
    out = Path(out)
    if out.exists() and not out.is_dir():  # (prepare_output says so)
        yield
        return
    _check_writable(out)  # (its messages, before the folder is made)
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # (the deepest first)
    if made:
        from .io import output_folder

        output_folder(out)
    lock, held = out / LOCK_FILE, None
    try:
        held = take_lock(lock, lambda holder: f"{out} is being written by another textinv train ({holder}); wait "
                                              f"for it to finish or stop it, or choose another --out")
        yield
    finally:
        if held is not None:
            drop_lock(held, lock)
        for folder in made:  # the folders it made, while they are empty (--out a/b/c: a and b too)
            try:
                folder.rmdir()
            except OSError:
                break


def clear_temporaries(out: Path) -> None:
    """Remove the temporary files that writes cut short by a kill left in the run folder `out` (call it holding
    `run_lock`, once `prepare_output` has taken the folder for this run; a folder refused is left as it is, as another
    run writing below it). A live write's, which its process holds locked, stays: another command may write below
    (`generate --out` the folder's previews)."""
    for path in Path(out).rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink() and TEMPORARY.fullmatch(path.name):
            with contextlib.suppress(OSError):  # (gone meanwhile: its write ended)
                remove_unheld(path)


def hold_file(lock: Path, refusal: Callable[[str], str]) -> IO:
    """`lock` opened and locked (`_try_lock`), holding who holds it (process and host), for the caller to close;
    where another process holds it, ConfigError(`refusal(who)`)."""
    f = open(lock, "a+")
    if not _try_lock(f):
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(refusal(holder))
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def take_lock(lock: Path, refusal: Callable[[str], str]) -> IO:
    """`hold_file`, for a lock file that lasts as long as its hold: the holder removes it when done (`drop_lock`),
    so a finished command leaves no file behind. The file locked is checked to be the one `lock` still names: a
    holder that finished between this process's opening the file and locking it has removed it, and a lock on a
    removed file holds nothing (a third process would make and lock a new one beside it)."""
    while True:
        f = hold_file(lock, refusal)
        try:
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def drop_lock(f: IO, lock: Path) -> None:
    """Let go of `take_lock`'s hold on `lock`, removing the file first, while it is held: a process that opened it
    meanwhile is refused by the hold, and one that comes later makes a new one."""
    with contextlib.suppress(OSError):  # (Windows: an open file cannot be removed; it stays, unheld)
        lock.unlink()
    f.close()


def _try_lock(f) -> bool:
    """Take an exclusive, non-blocking lock on open file `f`; False when another process holds it, True with a
    warning where the file system takes no locks."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        # msvcrt locks bytes from the file's position, which "a+" put at its end (wherever the holder's line ended):
        # always the same byte, past that line, so a refused run can still read who holds it
        os.lseek(f.fileno(), _LOCK_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:  # (NFS without its lock daemon, some FUSE mounts: nothing to hold, the command goes on)
        warn(f"{Path(f.name).parent} is on a file system that takes no locks ({e.strerror or e}): a second textinv "
             f"command on it is not refused, so run one at a time there", stacklevel=2)
        return True


def _check_token_names(tokens: list[str], vectors: int) -> None:
    """Refuse concepts whose tokenizer entries would collide: CLIP lower-cases text, and with --vectors N a token
    `<a>` also takes `<a>_1` ... `<a>_{N-1}`, which may be another concept's token."""
    owner: dict[str, tuple[str, str]] = {}  # tokenizer entry (lower-cased) -> (token, entry as that token has it)
    for token in tokens:
        for name in token_names(token, vectors):
            other, other_name = owner.setdefault(name.lower(), (token, name))
            if other != token:
                taker, taken = (other, other_name) if other_name != other else (token, name)
                why = (f"with {setting('vectors', vectors)}, '{taker}' also takes '{taken}'" if taken != taker
                       else "the tokenizer lower-cases text")
                raise ConfigError(f"{setting('concepts')} tokens '{other}' and '{token}' both need the tokenizer entry "
                                  f"'{name.lower()}' ({why}); rename one of them")


def concept_folder(token: str) -> str:
    """The subfolder of --out that holds one concept's files in a run of several (its token as a file name)."""
    return Path(default_filename("a1111", token)).stem


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with every local path in it absolute (the concepts' folders and a model, VAE or config folder
    on disk too; bundled names and hub ids stay as they are), so the saved config works from any directory."""
    changes = {k: _absolute(getattr(config, k)) for k in PATH_SETTINGS
               if getattr(config, k) and hub_reference(getattr(config, k)) is None}  # (an embedding's hub id stays)
    for k in MODEL_SETTINGS:
        value = getattr(config, k)
        if value and value not in BUNDLED_MODELS and Path(value).expanduser().exists():
            changes[k] = _absolute(value)
    if config.concepts:
        # (an init left out stays left out: filled in here, the model's own word could no longer take its place)
        changes["concepts"] = [{**spec, "images": _absolute(spec["images"])}
                               for spec in config.concept_list(fill=False)]
    if config.subsets:
        changes["subsets"] = [{**subset, "images": _absolute(subset["images"])} for subset in config.subset_list()]
    return dataclasses.replace(config, **changes)


def moved_places(out: Path, config: TrainConfig) -> list[str]:
    """What a resume takes from somewhere else than the run had it (a picture folder, a subset's, the model, given
    where they are now), as 'NAME now NEW (was OLD)', for the resume to say: a resume from the wrong directory, whose
    relative folder names another project's pictures of the same names, is seen, where a checkpoint an earlier
    textinv wrote holds only the names to check them by (`check_same_contents`)."""
    saved = read_run_settings(out)
    lines = [f"{'pictures' if k == 'images' else '--' + k.replace('_', '-')} now {new} (was {old or 'none'})"
             for k, (old, new) in given_anew(saved, config, ("images", "validation_images") + MODEL_SETTINGS
                                                                + MODEL_CHOICES).items()]
    if saved.get("concepts") and config.concepts:
        for was, now in zip(_absolute_paths(dataclasses.replace(config, concepts=saved["concepts"])).concept_list(),
                            _absolute_paths(config).concept_list()):
            if was["images"] != now["images"]:
                lines.append(f"{now['token']}'s pictures now {now['images']} (were {was['images']})")
    if saved.get("subsets") and config.subsets:
        for n, (was, now) in enumerate(zip(_absolute_paths(dataclasses.replace(config, subsets=saved["subsets"]))
                                           .subset_list(), _absolute_paths(config).subset_list()), 1):
            if was["images"] != now["images"]:
                lines.append(f"subset {n}'s pictures now {now['images']} (were {was['images']})")
    return lines


def given_anew(saved: dict, config: TrainConfig, keys) -> dict[str, tuple]:
    """Each of the settings `keys` that a resume gives otherwise than the run's `saved` settings record, as
    {setting: (saved, now)}: a folder or model given where it is now; a hub id's revision or variant
    (`MODEL_CHOICES`) given other than the run's, which may have had none (saved as None)."""
    def anew(k: str, old, new) -> bool:
        if k in MODEL_CHOICES:
            return bool(new) and old != new
        return bool(old) and bool(new) and not _same(k, old, new, config)

    return {k: (saved.get(k), getattr(config, k)) for k in keys if anew(k, saved.get(k), getattr(config, k))}


def _moved_concepts(old: list, new: list, config: TrainConfig) -> list[dict] | None:
    """The saved concepts with the folders of `new` (a resume's --concepts), when `new` gives the same tokens in the
    same order, each with its saved init or none; else None."""
    def specs(concepts):
        return _absolute_paths(dataclasses.replace(config, concepts=concepts)).concept_list(fill=False)

    old, new = specs(old), specs(new)
    if [s["token"] for s in old] != [s["token"] for s in new] or any(
            n["init"] not in (None, o["init"]) for o, n in zip(old, new)):
        return None
    return [{**o, "images": n["images"]} for o, n in zip(old, new)]


def _moved_subsets(old: list, new: list, config: TrainConfig) -> bool:
    """Whether `new` (a resume's subsets) are the saved subsets `old` but for their folders: as many, in the same
    order, each with the same repeats and caption extension."""
    def settings(subsets):
        return [{**s, "images": None} for s in dataclasses.replace(config, subsets=subsets).subset_list()]

    return settings(old) == settings(new)


def _absolute(path) -> str:
    return str(Path(path).expanduser().resolve())


def _same(name: str, old, new, config: TrainConfig) -> bool:
    """Whether a saved setting and a resume's agree. Runs saved before paths were stored absolute hold relative
    ones, read from where the resume runs."""
    if name == "subsets" and old and new:  # (each in full: a subset given without its defaults, say)
        return (_absolute_paths(dataclasses.replace(config, subsets=old)).subsets
                == _absolute_paths(dataclasses.replace(config, subsets=new)).subsets)
    if name == "concepts" and old and new:
        # (inits filled in alike: runs saved before an init left out was kept as such hold the --property word)
        return (_absolute_paths(dataclasses.replace(config, concepts=old)).concept_list()
                == _absolute_paths(dataclasses.replace(config, concepts=new)).concept_list())
    if name in PATH_SETTINGS + MODEL_SETTINGS and old and new:  # (a hub id resolves to itself under any cwd)
        return old == new or _absolute(old) == _absolute(new)
    if name in STEPPED_SETTINGS:  # (a number from Python or a run saved before they were text; '1' from the CLI)
        return old == new or _stepped(old, name) == _stepped(new, name)
    return old == new


STEPPED_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("stepped"))


def _stepped(value, name: str):
    """A stepped setting's (value, until step) pairs, to compare however it was spelt; `value` itself if unreadable."""
    try:
        return clip_steps(value, name)
    except ConfigError:
        return value


def _check_writable(out: Path) -> None:
    """Fail now, not after the model has loaded, when --out cannot be created or written."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{setting('out', out)}: {probe} is a file, so the folder cannot be made there; choose "
                          f"another {setting('out')}")
    if not os.access(probe, os.W_OK | os.X_OK):
        # (a read-only mount refuses every user: not a matter of permissions to change)
        read_only = hasattr(os, "statvfs") and os.statvfs(probe).f_flag & os.ST_RDONLY
        raise ConfigError(f"{setting('out', out)}: {probe} is "
                          f"{'on a read-only disk' if read_only else 'not writable by you'}; choose another "
                          f"{setting('out')}")


def clear_run(out: Path, previous: dict, keep: Path | None = None) -> None:
    """--overwrite: delete what the previous textinv run in `out` wrote (its record `previous` names its tokens
    and format), and nothing else a user may keep in the folder (a model file, other embeddings, notes). `keep`,
    the new run's --init-embedding, stays even if the old run wrote it ("refine my last result in place"): a
    restart before the first checkpoint reads it again; the new result replaces it at the first save. The record
    goes last: a kill meanwhile leaves it, so the next --overwrite still finds the files named by its token."""
    for name in (CHECKPOINT_DIR, SAMPLES_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    logged, where = previous.get("log_with"), previous.get("log_dir")
    # its trackers' folder (--log-dir/NAME), inside --out; also after --log-with none (a resume turned them off:
    # what they logged before is the old run's)
    if isinstance(logged, str):
        logs = Path(where if isinstance(where, str) and where else out / LOGS_DIR) / run_name(out)
        if out.resolve() in logs.resolve().parents:
            shutil.rmtree(logs, ignore_errors=True)
            with contextlib.suppress(OSError):  # (--log-dir's own folder, when that left it empty)
                if logs.parent.resolve() != out.resolve():
                    logs.parent.rmdir()
    # the files every run writes whatever its token (the diffusers layouts), and the logs (the record: last, below)
    plain = {default_filename(fmt, "<any>") for fmt in TOKEN_FREE_FORMATS}
    names = {LOSS_LOG, VALIDATION_LOG} | plain | {second_file(name).name for name in plain}
    try:
        tokens = [spec["token"] for spec in build(TrainConfig, previous, {"out": str(out)}).concept_list()]
    except (ConfigError, TypeError):
        tokens = []
    kept = {path.resolve() for path in ((keep, second_file(keep)) if keep is not None else ()) if path.is_file()}
    for token in tokens:
        names.update(default_filename(fmt, token) for fmt in FORMATS)
        folder = out / concept_folder(token)
        if len(tokens) > 1 and folder.is_dir():
            if any(folder.resolve() in k.parents for k in kept):  # the kept file stays; the rest of its folder goes
                for path in folder.rglob("*"):
                    if path.is_file() and path.resolve() not in kept:
                        path.unlink()
            else:
                shutil.rmtree(folder, ignore_errors=True)
    for path in out.iterdir():
        if path.is_file() and path.name in names and path.resolve() not in kept:
            path.unlink()
    steps = out / STEP_EMBEDDINGS_DIR  # the steps' embeddings by their names (the folder may hold a user's own)
    if steps.is_dir():
        for path, _ in _step_files(steps, tokens):
            if path.resolve() not in kept:
                path.unlink()
        if not any(steps.iterdir()):
            steps.rmdir()
    if (out / CONFIG_FILE).is_file():
        (out / CONFIG_FILE).unlink()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and the loss log


def _step_files(folder: Path, tokens: list[str]) -> list[tuple[Path, int]]:
    """The steps' embedding files in `folder` that a run of `tokens` writes, in any format (`step_filename`, a
    diffusers-sdxl pair's second files too), each with its step: by their names, as the folder may hold a user's own."""
    sentinel = "123456789"
    named = [(fmt, "<any>") for fmt in TOKEN_FREE_FORMATS] + [(fmt, t) for fmt in FORMATS
                                                              if fmt not in TOKEN_FREE_FORMATS for t in tokens]
    patterns = [re.escape(name).replace(sentinel, r"(\d+)")
                for fmt, token in named for first in [step_filename(fmt, token, int(sentinel))]
                for name in (first, second_file(first).name)]
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        matched = next((m for p in patterns for m in [re.fullmatch(p, path.name)] if m), None)
        if path.is_file() and matched:
            found.append((path, int(matched[1])))
    return found


def checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step-{step:06d}.pt"


def save_checkpoint(out, step, exts, optimizer, lr_schedule, samplers, scaler, history, config,
                     interval: tuple[list[float], int] = ([0.0], 0), pictures: list[list[str]] | None = None,
                     processes: int = 1, skipped: list[int] | None = None, model: dict[str, str] | None = None,
                     validation: tuple[list, list] = ([], []), held_out: list[list[str]] | None = None,
                     ran_at: tuple[str, str] | None = None, contents: list[list[list]] | None = None) -> None:
    """Everything needed to continue exactly: vectors, optimizer and lr state, the data generator, the step, the loss
    history (`history`: its rows, each concept's, and the last rows' learning rates, loss.csv's), and what the data
    stream depends on (each concept's picture names, the number of processes sharing a batch);
    `skipped`: the fp16 steps each concept skipped alone (its Adam step count is the shared one less these);
    `model`: the model's fingerprints (`model_fingerprints`), so a resume can tell it wherever it is; `validation`:
    the validation losses so far, as `history` (`saved_validation` reads them back); `held_out`: each concept's
    pictures --validation-split holds out, by name as `pictures` (None: no split); `ran_at`: the precision the steps
    were taken at and the device type, ("bf16", "cuda"), for `check_same_precision`; `contents`: each concept's
    pictures' `picture_contents`, in the order of `pictures`, for `check_same_contents`."""
    state = {
        "step": step,
        "model": model,
        "pictures": pictures,
        "contents": contents,
        "held_out": held_out,
        "processes": processes,
        "precision": ran_at[0] if ran_at else None,
        "device": ran_at[1] if ran_at else None,
        "vectors": [e.vectors.detach().cpu().clone() for e in exts],
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "samplers": [s.state_dict() for s in samplers],
        "scaler": scaler.state_dict(),
        "skipped_steps": list(skipped or [0] * len(samplers)),
        "history": [list(h) for h in history[0]],
        "history_by_concept": [list(map(float, h)) for h in history[1]],
        "history_rates": [float(r) for r in history[2]] if len(history) > 2 else [],  # (each row's learning rate)
        # the log interval's loss sum over its steps so far (summed over concepts), each concept's, and the steps
        "interval": [float(sum(interval[0])), int(interval[1])],
        "interval_by_concept": [float(v) for v in interval[0]],
        "validation": [list(h) for h in validation[0]],
        "validation_by_concept": [list(map(float, h)) for h in validation[1]],
        "textinv_version": __version__,
    }
    # (through memory, a few KB: torch.save on a full disk raises "iostream error", where a plain write says why)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(checkpoint_path(out, step), buffer.getvalue())
    kept = checkpoints(out)
    for old in kept[: max(0, len(kept) - max(config.keep_checkpoints, 1))]:
        old.unlink(missing_ok=True)


def checkpoints(out: Path) -> list[Path]:
    """A run's checkpoints, oldest first (by step number: past step 999,999 the names no longer sort)."""
    return sorted((out / CHECKPOINT_DIR).glob("step-*.pt"), key=lambda p: (len(p.stem), p.stem))


def newest_checkpoint(out: Path) -> tuple[Path, dict]:
    """The newest readable checkpoint in `out` and its contents (small: vectors, optimizer and data-stream state).
    Writes are atomic, so an unreadable one was damaged from outside (a disk error, a copy cut short): the one
    before it is taken, with a warning, and the run goes on from there to the same result."""
    found = checkpoints(out)
    if not found:
        raise ConfigError(f"cannot resume: {out / CHECKPOINT_DIR} holds no checkpoint (the run stopped before its "
                          f"first {setting('save_every')} step, or they were deleted); start it again with "
                          f"{setting('overwrite', True)}{_from_saved_vectors(out)}")
    damaged = []
    for i in reversed(range(len(found))):
        path = found[i]
        try:
            _check_crc(path)
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # (torch raises RuntimeError, EOFError, pickle's and zipfile's errors by the damage)
            damaged.append(f"{path.name} ({type(e).__name__})")
            why = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            older = found[i - 1].name if i else None
            warn(f"checkpoint {path} cannot be read ({why}); "
                 + (f"resuming from {older}" if older else "no older one is kept"), stacklevel=2)
    raise ConfigError(f"cannot resume: every checkpoint in {out / CHECKPOINT_DIR} is damaged ({', '.join(damaged)}); "
                      f"start the run again with {setting('overwrite', True)}{_from_saved_vectors(out)}")


def _check_crc(path: Path) -> None:
    """Raise zipfile.BadZipFile where a part of the checkpoint `path` (a zip file, as torch.save writes it) does not
    match the CRC-32 saved with it: torch.load does not check them, and took a byte changed by a disk error in the
    vectors or the optimizer's state as it was."""
    if zipfile.is_zipfile(path):  # (otherwise torch.load says what it is)
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"{bad} does not match its CRC-32")


def _from_saved_vectors(out: Path) -> str:
    """What a run restarted with --overwrite adds to start from the vectors its embedding file in `out` holds (the
    file stays: `clear_run`), or '' for none: --overwrite alone deletes it with the rest."""
    file = saved_vectors_file(out)
    return (f", and {setting('init_embedding', file)} (in place of {setting('init')}) to start from the vectors it "
            f"saved" if file else "")


def saved_vectors_file(out: Path) -> Path | None:
    """The file of the vectors the one-concept run in `out` saved last that loads (its embedding file, else the
    newest of its steps' files), for a new run to start from with --init-embedding; None for none, or a run of
    several concepts (a file each, and --init-embedding starts one)."""
    try:
        found = embedding_file(out)
    except ConfigError:  # (a run of several concepts: one file each)
        return None
    saved = saved_run(out)
    tokens = [spec["token"] for spec in saved[1]] if saved is not None else []
    if found.is_dir():  # (diffusers' layout, which embedding_file leaves to load_embedding)
        found = diffusers_file(found) or found
    # (damaged too, as a copy cut short leaves it: the newest of the steps' files that loads; a diffusers-sdxl
    # pair's first before its second, which loads as the pair too but reads as its half alone)
    found_steps = _step_files(out / STEP_EMBEDDINGS_DIR, tokens)
    listed = {path for path, _ in found_steps}
    steps = [path for path, _ in sorted(found_steps, key=lambda f: (-f[1], first_file(f[0]) in listed))]
    for file in ([found] if found.is_file() else []) + steps:
        try:
            load_embedding(file)
        except (FormatError, OSError):
            continue
        return file
    return None


def check_resumable(checkpoint: tuple[Path, dict], config: TrainConfig, found: list[PictureSet],
                     processes: int, held_out: list[PictureSet] | None = None
                     ) -> tuple[list[PictureSet], dict[str, str]]:
    """Refuse, before the model loads, a resume whose data stream would not continue the saved one: the step is
    past --steps, a concept's pictures changed (`found`: each concept's; the saved epoch order indexes them), or
    another number of processes would split another global batch (each process draws `batch` x processes samples
    per step). Returns `found` with each concept's pictures in the order the checkpoint has them (`same_names`),
    and the model settings given anew (`--model` where the model is now), each as the message says it ("model: OLD
    -> NEW"), for `check_same_model`; refused here when the checkpoint holds no fingerprint to compare the model
    with. `held_out`: each concept's pictures --validation-split holds out now (None: no split); a picture added or
    removed changes which those are, so a change is said of all the folder's pictures, those the checkpoint held out
    among them."""
    state = checkpoint[1]
    out, step = Path(config.out), int(state["step"])
    saved = read_run_settings(out)
    moved = {k: f"{k}: {old!r} -> {new!r}"
             for k, (old, new) in given_anew(saved, config, MODEL_SETTINGS + MODEL_CHOICES).items()}
    if moved and not state.get("model"):
        raise ConfigError(f"cannot resume {out} with a model given anew ({', '.join(moved.values())}): its "
                          f"checkpoints were saved by textinv {state.get('textinv_version', 'before 0.1')}, which did "
                          "not record which model they belong to; resume with the model where the run had it, or "
                          "start a new run")
    if step > config.steps:
        raise ConfigError(f"cannot resume {out} at step {step} with {setting('steps', config.steps)}: the run is "
                          f"past it; give {setting('steps', step)} or more")
    saved = state.get("processes", processes)  # (older checkpoints do not record it)
    if saved != processes:
        how = "without accelerate launch" if saved == 1 else f"with accelerate launch --num_processes {saved}"
        raise ConfigError(f"cannot resume {out}: it was trained by {saved} process(es) at "
                          f"{setting('batch', config.batch)} "
                          f"each, this launch has {processes}, which would change the batch of every step; resume "
                          f"{how}")
    ordered = []
    held_then = state.get("held_out") or [None] * len(found)  # (older checkpoints, and runs without a split: none)
    for k, (pictures, names, sampler) in enumerate(zip(found, state.get("pictures") or [None] * len(found),
                                                       state["samplers"])):
        now = pictures.names  # (kohya's layout: "10_dog/a.png")
        if names is None:  # (older checkpoints keep no names: the epoch order's length still tells the count)
            was = len(sampler["order"]) // config.repeats
            if not was or was == len(now):
                ordered.append(pictures)
                continue
            detail = f"{was} pictures then, {len(now)} now"
        else:
            order = same_names(names, now)
            if order is None and config.subsets:  # (checkpoints before subset names: whole paths, `_by_subset`)
                names = _by_subset(names)
                order = same_names(names, now)
            if order is not None:
                ordered.append(pictures.picked(order))
                continue
            if held_out is not None and held_then[k] is not None:  # (the split's pictures, then and now, too)
                names, now = names + held_then[k], now + held_out[k].names
            said = _picture_namer(config)
            detail = name_changes(names, now, said) or f"other pictures held out by {setting('validation_split')}"
        raise _pictures_changed(config, pictures, detail)
    return ordered, moved


def _pictures_changed(config: TrainConfig, pictures: PictureSet, detail: str) -> ConfigError:
    """The refusal of a resume whose `pictures` are not the run's (`detail`: how), with the ways on."""
    out = Path(config.out)
    folder = "the subsets' folders back as they were" if config.subsets else "the folder back as it was"
    learned = saved_vectors_file(out)  # (what the run learned so far need not be lost with it)
    keep = (f", or keep what it learned: start a new run from its vectors with {_new_run_from(learned)}"
            if learned is not None else "")
    return ConfigError(f"cannot resume {out}: the pictures in {pictures.where} changed since the run started "
                       f"({detail}); put {folder}, or start a new run with {setting('overwrite', True)}{keep}")


def picture_contents(pictures: PictureSet) -> list[list[str | None]]:
    """Each picture's file and caption file as short digests, `[picture, caption]` (None: no caption file), in the
    order of `pictures`: a checkpoint records them, as the names, so that a resume sees a picture edited in place or
    a caption written, edited or deleted since the run started, which would change what the rest of the run learns
    with nothing said (`check_same_contents`). Pictures that moved keep their bytes, so they still resume."""
    return [[_digest(path), _digest(caption) if (caption := caption_file(path, extension)) else None]
            for path, extension in zip(pictures.paths, pictures.caption_extensions)]


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()


def check_same_contents(checkpoint: tuple[Path, dict], config: TrainConfig, found: list[PictureSet],
                        contents: list[list[list[str | None]]]) -> None:
    """Refuse, before the model loads, a resume whose pictures have their run's names (`check_resumable`, which
    put `found` in the checkpoint's order) but other bytes: `contents`, their `picture_contents` now, against the
    checkpoint's. A checkpoint an earlier textinv wrote records none: its run resumes as before, by names."""
    saved = checkpoint[1].get("contents") or [None] * len(found)
    said = _picture_namer(config)
    for pictures, then, now in zip(found, saved, contents):
        if then is None or then == now:
            continue
        changed: dict[str, list[str]] = {}
        for name, (picture, caption), (picture_now, caption_now) in zip(pictures.names, then, now):
            if picture != picture_now:
                changed.setdefault("edited", []).append(said(name))
            if caption != caption_now:
                how = "added" if caption is None else "deleted" if caption_now is None else "edited"
                changed.setdefault(f"caption {how}", []).append(said(name))
        raise _pictures_changed(config, pictures, "; ".join(f"{how}: {', '.join(names)}"
                                                            for how, names in changed.items()))


def _new_run_from(learned: Path) -> str:
    """The settings of a new run that starts from the vectors in `learned`, in a folder of its own, as its user
    writes them: flags to paste into a shell (the path quoted for it), keywords from Python."""
    if ON_COMMAND_LINE.get():
        return f"{setting('init_embedding', shlex.quote(str(learned)))} {setting('out', 'NEW_DIR')}"
    return f"{setting('init_embedding', learned)}, {setting('out', 'NEW_DIR')}"


class PrecisionChangedWarning(TextinvWarning):
    """A run resumed with another --precision than it ran at, as asked: it goes on in other arithmetic."""


def check_same_precision(checkpoint: tuple[Path, dict], config: TrainConfig, dtype: torch.dtype,
                         device: torch.device, passed: bool = False) -> None:
    """Before the model loads: a resume whose --precision reads as the run's (config.yaml's word) must take its steps
    at the precision its checkpoint's were taken at (`dtype`, what --precision gives on `device`): `auto` is bf16 on
    a CUDA GPU and fp32 on the CPU, so a run moved between them would go on in other arithmetic, silently, and not
    end where it would have. The same dtype however given (`auto` and `fp32` on the CPU) goes on. Another word given
    (`--precision fp32` on a bf16 run) is a change asked for: it goes on, warned about when the arithmetic changes (or
    cannot be told: a checkpoint saved before the record). `passed`: `dtype` is that of a model passed to train(),
    which its steps take whatever --precision gives."""
    path, state = checkpoint
    out, then = Path(config.out), state.get("precision")
    was = read_run_settings(out).get("precision", "auto")
    now = precision_name(dtype)
    if then == now or (then is None and was == config.precision):
        return
    if was != config.precision:
        ran = f"at {then} on {state.get('device')}" if then else "at a precision its checkpoint does not record"
        warn(f"resuming {out} at {now} ({setting('precision', config.precision)}), as asked: it ran {ran} "
             f"({setting('precision', was)}), so it goes on in other arithmetic and will not end exactly where it "
             "would have", PrecisionChangedWarning, stacklevel=3)
        return
    given = "the model passed to train()" if passed else f"{setting('precision', config.precision)} on {device.type}"
    fix = (f"pass the model loaded at {DTYPES[then]} (load_model's dtype) to go on as it was, or give "
           f"{setting('precision', now)}" if passed else
           f"resume with {setting('precision', then)} to go on as it was, or with {setting('precision', now)}")
    raise ConfigError(f"cannot resume {out} at {now} ({given}): its checkpoint {path.name} was trained at {then} on "
                      f"{state.get('device')}, and steps at another precision round otherwise, so the run would not "
                      f"end where it would have; {fix} to go on at {now} knowingly")


class ModelChangedWarning(TextinvWarning):
    """A run resumed with a model whose weights are not the ones it started with, from the same source."""


def check_same_model(checkpoint: tuple[Path, dict], moved: dict[str, str], fingerprints: dict[str, str],
                     config: TrainConfig) -> None:
    """Once the model has loaded, compare it with the one the run's checkpoint was made with (`model_fingerprints`):
    a model given anew (`moved`, from `check_resumable`) must be the same one, wherever it is now; a model at the
    run's own source that changed since (a folder overwritten, a hub id updated) is warned about, as the run can
    only go on with it."""
    saved, out, given = checkpoint[1].get("model"), Path(config.out), ", ".join(moved.values())
    same = same_model(saved, fingerprints) if saved else True
    if same:
        return
    if same is None:  # (read in fp16 then, bf16 now: neither rounding gives the other)
        if moved:
            then, now = "/".join(saved), "/".join(fingerprints)
            warn(f"resuming {out} with {given}: the model could not be compared with the run's "
                 f"(its weights were read in {then} then, {now} now); make sure it is the same model",
                 ModelChangedWarning, stacklevel=3)
        return
    if moved:
        variant = moved.get("variant")
        if variant:  # (fp16 files cast to bf16 round twice: not the plain weights' bf16, even of one model)
            was = read_run_settings(out).get("variant")
            as_started = (setting("variant", was) if was or not ON_COMMAND_LINE.get() else f"no {setting('variant')}"
                          ) + ("" if was else " (the plain weights)")  # (from Python: variant=None)
            raise ConfigError(f"cannot resume {out} with {given}: the weights' variant differs from the run's, and "
                              f"weights read from another variant are not the ones it was trained with; resume with "
                              f"{as_started}, as the run started, or start a new run with {setting('overwrite', True)}")
        raise ConfigError(f"cannot resume {out} with {given}: that is not the model the run was trained "
                          "with (its weights differ); give the run's own model where it is now, or start a new run "
                          f"with {setting('overwrite', True)}")
    warn(f"resuming {out}: the model {config.model} has changed since the run started (its weights are not "
         "the ones its checkpoint recorded); the run goes on with the model as it is now, so its embedding "
         "is learned partly against each", ModelChangedWarning, stacklevel=3)


def same_names(saved: list[str], now: list[str]) -> list[int] | None:
    """Where each of the `saved` picture names is in `now` (indices into `now`), when they are the same pictures;
    else None. Names are compared in one Unicode form (NFC): macOS writes an accented letter as the letter and a
    combining accent (NFD), Linux and Windows keep what they are given, so a folder copied between them can hold
    the same names in other bytes, which also sort otherwise (`find_images` sorts by the bytes).

    >>> same_names(["e\u0301.png", "f.png"], ["f.png", "\u00e9.png"])
    [1, 0]
    """
    if saved == now:
        return list(range(len(now)))
    composed = [_nfc(n) for n in now]
    where = {name: k for k, name in enumerate(composed)}
    if len(where) < len(now) or len(saved) != len(now):  # (two names one composed: the bytes must agree)
        return None
    order = [where.get(_nfc(name)) for name in saved]
    return order if None not in order and len(set(order)) == len(order) else None


def name_changes(then: list[str], now: list[str], said=str) -> str:
    """What differs between two lists of picture names, compared in one Unicode form (`same_names`), each name as
    `said` gives it: 'missing now: a.png; new: b.png' ('' when none does).

    >>> name_changes(["a.png", "b.png"], ["b.png", "c.png"])
    'missing now: a.png; new: c.png'
    """
    then, now = [_nfc(n) for n in then], [_nfc(n) for n in now]
    gone, new = sorted(set(then) - set(now)), sorted(set(now) - set(then))
    return "; ".join(part for part in (gone and f"missing now: {', '.join(map(said, gone))}",
                                       new and f"new: {', '.join(map(said, new))}") if part)


def _by_subset(names: list[str]) -> list[str]:
    """A checkpoint's subset pictures as it names them now, subset number and name within its folder ("2/a.png"),
    from their whole paths, as textinv 0.1.0 recorded them (`data.PictureSet.names`), so its runs resume after their
    folders moved: the pictures are in the subsets' order, so each run of names in one folder is the next subset's,
    and a name again in the same run begins the next (two subsets in a row with one folder, from two [[datasets]]).

    >>> _by_subset(["/p/dog/a.png", "/p/dog/b.png", "/p/close ups/a.png", "/p/close ups/a.png"])
    ['1/a.png', '1/b.png', '2/a.png', '3/a.png']
    """
    out, number, folder, seen = [], 0, None, set()
    for name in names:
        where, _, file = name.rpartition("/")
        if where != folder or file in seen:  # (the next subset begins)
            number, folder, seen = number + 1, where, set()
        seen.add(file)
        out.append(f"{number}/{file}")
    return out


def _picture_namer(config: TrainConfig) -> Callable[[str], str]:
    """How a refusal names a checkpoint's picture: as it is, or a subset's ("2/a.png": the second subset's a.png)
    where that subset's folder is now (`_in_subset`)."""
    if not config.subsets:
        return str
    folders = [subset["images"] for subset in config.subset_list()]
    return lambda name: _in_subset(name, folders)


def _in_subset(name: str, folders: list[str]) -> str:
    """A subset picture's checkpoint name ("2/a.png") as its path in the subsets' `folders`."""
    number, _, file = name.partition("/")
    k = int(number) - 1 if number.isdigit() else -1
    return (Path(folders[k]) / file).as_posix() if 0 <= k < len(folders) else name


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def load_checkpoint(checkpoint: tuple[Path, dict], exts, optimizer, lr_schedule, samplers, scaler
                     ) -> tuple[int, list[tuple[int, float]], list[list[float]], tuple[list[float], int]]:
    """Restore a run from a checkpoint (`newest_checkpoint`): returns the step, the loss history (total, and per
    concept with several) and the open log interval (each concept's loss sum, the steps)."""
    path, state = checkpoint
    shapes = [tuple(v.shape) for v in state["vectors"]]
    if shapes != [tuple(e.vectors.shape) for e in exts]:
        raise ConfigError(f"checkpoint {path} holds vectors of shapes {shapes}, this run needs "
                          f"{[tuple(e.vectors.shape) for e in exts]}; it belongs to another run")
    with torch.no_grad():
        for e, v in zip(exts, state["vectors"]):
            e.vectors.copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    for s, saved in zip(samplers, state["samplers"], strict=True):
        s.load_state_dict(saved)
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    interval = state.get("interval", (0.0, 0))  # (checkpoints before 0.1.0's interval record: a fresh interval)
    k = len(samplers)
    # (checkpoints before the per-concept record: the total shared out evenly, the per-concept curve starts later)
    sums = state.get("interval_by_concept") or [float(interval[0]) / k] * k
    return (int(state["step"]), [(int(s), float(v)) for s, v in state["history"]],
            [list(map(float, h)) for h in state.get("history_by_concept", [])], (sums, int(interval[1])))


def saved_validation(state: dict) -> tuple[list[tuple[int, float]], list[list[float]]]:
    """A checkpoint's validation losses (step, loss summed over concepts) and each concept's with several; none from
    a run without them, or a checkpoint older than them."""
    return ([(int(s), float(v)) for s, v in state.get("validation", [])],
            [list(map(float, h)) for h in state.get("validation_by_concept", [])])


def write_loss_log(path: Path, history: list[tuple[int, float]], by_concept: list[list[float]] = (),
                    tokens: list[str] = (), column: str = "loss", rate: Callable[[int], float] | None = None,
                    epoch: Callable[[int], int] | None = None) -> None:
    """loss.csv: `step,loss` (the loss summed over concepts), and with several concepts a column per token for each
    one's own loss (their sum is `loss`; the curve of one that diverges or stalls shows there), then the web UI's
    `learn_rate` and `epoch` of each row's step (`rate`, `epoch`), last so that the earlier columns keep their
    places; validation.csv the same with `column` validation_loss."""
    per_concept = len(tokens) > 1 and len(by_concept) == len(history)  # (not from a checkpoint made before them)
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")  # (quotes a token with a comma in it)
    rows.writerow(["step", column, *(tokens if per_concept else []), *(["learn_rate"] if rate else []),
                   *(["epoch"] if epoch else [])])
    for (s, v), per in zip(history, by_concept if per_concept else [()] * len(history)):
        rows.writerow([s, f"{v:.6f}", *(f"{x:.6f}" for x in per), *([f"{rate(s):.6g}"] if rate else []),
                       *([epoch(s)] if epoch else [])])
    write_text(path, text.getvalue())


def read_loss_log(path: str | Path, column: str = "loss") -> list[tuple[int, float]]:
    """The (step, loss) rows of a run's loss.csv: the loss summed over concepts, or one concept's (`column`: its
    token) in a run of several."""
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r[column])) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------------------
# reading a finished run: its settings and its embedding file


def saved_run(run: Path):
    """The training settings (a TrainConfig) and its concepts saved in `run`'s config.yaml; None when there is none
    or it is not a textinv training config."""
    if not (run / CONFIG_FILE).is_file():
        return None
    try:
        saved = build(TrainConfig, {k: v for k, v in read_config_file(run / CONFIG_FILE).items()
                                    if k not in COMMAND_ONLY})
        return saved, saved.concept_list()
    except ConfigError:  # not a textinv training config: no defaults from it
        return None


def embedding_file(path: Path) -> Path:
    """The file `--embedding` names: `path` itself, a diffusers folder (learned_embeds.*, read by load_embedding),
    or a training run's folder whose run saved it under the token's name (--format a1111 or kohya, and SDXL's
    default sdxl file); a run of several concepts is refused, naming its concepts' folders. The second file of a
    diffusers-sdxl pair (learned_embeds_2) names the pair: its first file reads both."""
    if path.is_file():
        first = _first_of_pair(path)
        try:
            return first if first is not None and len(load_embedding(first).widths) == 2 else path
        except FormatError:  # (a damaged partner: the file named is read, and said, alone)
            return path
    if not path.is_dir() or any((path / name).is_file() for name in ("learned_embeds.safetensors",
                                                                       "learned_embeds.bin")):
        return path
    for run in (path, path.parent):
        found = saved_run(run)
        if found is None:
            continue
        saved, specs = found
        if run == path and len(specs) > 1:
            folders = ", ".join(str(path / concept_folder(s["token"])) for s in specs)
            raise ConfigError(f"{path} is a training run of {len(specs)} concepts; give one at a time: its "
                              f"folder ({folders})")
        # (a concept's folder is its token's name, in the Unicode form its disk keeps: `same_names`)
        spec = specs[0] if run == path else next((s for s in specs if _nfc(concept_folder(s["token"]))
                                                  == _nfc(path.name)), None)
        if spec is not None:  # (an SDXL run's default format is sdxl; diffusers' files were looked for above)
            file = _named_in(path, default_filename(saved.format or "sdxl", spec["token"]))
            if file is not None:
                return file
        break
    return path


def _named_in(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, its name in whichever Unicode form the disk keeps (`same_names`), or None."""
    if (folder / name).is_file():
        return folder / name
    return next((f for f in sorted(folder.iterdir()) if _nfc(f.name) == _nfc(name) and f.is_file()), None)


def _first_of_pair(path: Path) -> Path | None:
    """The first file of the diffusers-sdxl pair whose second file is `path`, when it lies beside it."""
    stem = path.name.replace("learned_embeds_2", "learned_embeds", 1)
    for name in (stem, path.stem[:-2] + path.suffix if path.stem.endswith("_2") else None):
        if name and name != path.name and (path.parent / name).is_file() and second_file(path.parent / name) == path:
            return path.parent / name
    return None
