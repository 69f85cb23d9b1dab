"""The `textinv` command line: it parses, calls the library, and shows; no logic of its own.

    textinv train --images photos/my-dog --token "<my-dog>" --init dog --out runs/my-dog
    textinv generate --embedding runs/my-dog/learned_embeds.safetensors --prompt "a photo of <my-dog>" -n 4
    textinv generate --again renders/000-a-photo-of-my-dog-s2.png --seed 7   # that picture's settings, another seed
    textinv convert runs/my-dog/learned_embeds.safetensors my-dog.pt
    textinv inspect my-dog.pt
    textinv merge mix.pt --token "<mix>" "dog.pt*0.7 + cat.pt*0.3"   # a new embedding of others (and words)
    textinv inspect renders/000-a-photo-of-my-dog-s2.png   # a picture's settings, as the web UI's PNG Info
    textinv score --embedding runs/my-dog --description "a corgi"   # CLIP scores beside baselines, a report
    textinv push runs/my-dog --repo me/my-dog     # publish on the Hugging Face hub, with a model card
    textinv caption --images photos/my-dog --prefix "a photo of {},"   # BLIP captions: photos/my-dog/*.txt
    textinv demo                      # learn an example concept on the bundled model, write an HTML/PNG report
    textinv evaluate --out benchmarks/results

The flags of `train` and `generate` are built from the fields of `TrainConfig` and `GenerateConfig` (their help is
the `--help`); `--config FILE` (YAML, TOML or JSON) supplies settings that flags then override.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import gc
import json
import os
import re
import shlex
import sys
import typing
import warnings
from pathlib import Path

from . import __version__
from .errors import LONGEST_LIST, ON_COMMAND_LINE, ConfigError, FormatError, TextinvError
from .foreign import foreign_hint  # (no more: the rest brings torch, imported inside main's Ctrl-C handler)


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field; defaults are suppressed so only flags actually given override the file."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:  # (a config file's setting only: mappings, which a flag cannot give)
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + ([f.metadata["short"]] if "short" in f.metadata else [])
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if default not in (None, [], "") and default is not False:  # (a switch: off unless given, as it reads)
            help_text += f" (default: {default})"
        kwargs: dict = dict(dest=f.name, help=help_text, default=argparse.SUPPRESS)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
            if len(f.metadata["choices"]) > 16:  # (the help lists them; a usage line of 47 names would not be read)
                kwargs["metavar"] = "NAME"
        if kind is bool:
            if default is False:
                parser.add_argument(*names, action="store_true", **kwargs)
            else:  # tri-state or default-on: --flip / --no-flip
                parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind is list:
            parser.add_argument(*names, action="extend", nargs="+", **kwargs)
        elif "spellings" in f.metadata or "refused" in f.metadata:  # (argparse checks the choices after `type`)
            parser.add_argument(*names, type=_spelled_type(f.metadata), **kwargs)
        elif f.name == "resolution":
            parser.add_argument(*names, type=_resolution_type(list(hints)), **kwargs)
        elif f.name == "lr":
            parser.add_argument(*names, type=_lr_type, **kwargs)
        else:
            parser.add_argument(*names, type=kind if kind in (int, float) else str, **kwargs)


def _spelled_type(metadata):
    """argparse's type of a setting that takes other tools' names of its choices (`config.spelled`); a name the
    setting answers itself (its `refused`: the web UI's upscaling networks) is that answer, not "invalid choice"."""
    from .config import spelled

    def value_of(text: str) -> str:
        value = spelled(metadata.get("spellings", {}), text, metadata.get("notes"))
        refused = metadata.get("refused", lambda _: None)(value) if value not in metadata["choices"] else None
        if refused:
            raise argparse.ArgumentTypeError(f"{text!r} {refused}")  # (argparse names the flag before it)
        return value
    value_of.__name__ = "str"
    return value_of


def _resolution_type(settings: list[str]):
    """argparse's type of --resolution: a whole number, with kohya's "W,H" answered (`config.kohya_pair_note`);
    train's also WIDTHxHEIGHT and "W,H" (`config.training_size`)."""
    from .config import kohya_pair_note, training_size

    def side(text: str) -> int | list[int]:
        if "buckets" in settings and re.fullmatch(r"\s*\d+\s*[x,]\s*\d+\s*", text.lower()):
            return training_size(text)
        note = kohya_pair_note(text, settings)
        if note:
            raise argparse.ArgumentTypeError(note)
        return int(text)
    side.__name__ = "int"  # (argparse names it in "invalid int value: 'x'", as for the other numbers)
    return side


def _lr_type(text: str) -> float:
    """argparse's type of --lr: a number, with the web UI's stepped rate answered (`config.stepped_rate_note`)."""
    from .config import stepped_rate_note

    note = stepped_rate_note(text)
    if note:
        raise argparse.ArgumentTypeError(note)
    return float(text)


_lr_type.__name__ = "float"  # (argparse names it in "invalid float value: 'x'", as for the other numbers)


def _config_from_args(cls, args: argparse.Namespace):
    from .config import COMMAND_ONLY, build, config_file_settings

    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    # (its relative paths are read from its folder; flags' from the working directory, as a shell's are)
    layers = [config_file_settings(cls, args.config)] if getattr(args, "config", None) else []
    if flags.get("resume") and flags.get("out"):  # `--out DIR --resume` alone continues the saved run
        from .run_folder import CONFIG_FILE, no_record, read_run_settings

        saved = Path(flags["out"]) / CONFIG_FILE
        if not saved.exists():  # (said now: the missing --images would be the first complaint otherwise)
            note = _diffusers_run_note(Path(flags["out"]))
            raise ConfigError(f"cannot resume: {flags['out']} holds no {CONFIG_FILE}, so no run was started there; {note}"
                              if note else no_record(flags["out"]))
        layers.insert(0, {k: v for k, v in read_run_settings(flags["out"]).items() if k not in COMMAND_ONLY})
    elif flags.get("resume_or_start") and flags.get("out"):  # (every setting given: nothing read from the folder)
        from .run_folder import CONFIG_FILE

        note = None if (Path(flags["out"]) / CONFIG_FILE).exists() else _diffusers_run_note(Path(flags["out"]))
        if note:  # (the diffusers script's folder, which its `--resume_from_checkpoint latest` went on from)
            raise ConfigError(f"--resume-or-start: {flags['out']} holds no {CONFIG_FILE}, so no textinv run; {note}")
    return build(cls, *layers, flags)


def _step_of(path: Path) -> int:
    """The step number at the end of a diffusers script's name (`checkpoint-500`, `learned_embeds-steps-500.bin`);
    -1 for none."""
    tail = path.name.split(".")[0].rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _diffusers_run_note(out: Path) -> str | None:
    """For `--resume` of the diffusers script's --output_dir (what its `--resume_from_checkpoint latest` read):
    its checkpoint-N folders are accelerate states, so say which of its files a new run starts from instead."""
    states = sorted(out.glob("checkpoint-*"), key=_step_of) if out.is_dir() else []
    if not states:
        return None
    files = sorted(out.glob("learned_embeds-steps-*"), key=_step_of) or sorted(out.glob("learned_embeds.*"))
    start = f"--init-embedding {shlex.quote(str(files[-1]))}" if files else \
        "--init-embedding with its learned_embeds file"
    return (f"its {states[-1].name} is the diffusers script's (an accelerate state, which textinv cannot read): "
            f"start a textinv run from its vectors with {start} --out NEW_DIR")


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .train import TrainingInterrupted, train

    config = _config_from_args(TrainConfig, args)
    if args.threads is None and (config.resume or config.resume_or_start) and config.out:
        from .run_folder import saved_threads

        # (the run's own count, as every other setting is the run's: the `--resume` line an interrupted run prints
        # names no --threads, and another count does not end bit for bit where the run would have; not more threads
        # than this machine has cores, a run moved to a smaller one, which would crawl, and end otherwise anyway)
        saved = saved_threads(config.out)
        args.threads = saved if saved is not None and saved <= (os.cpu_count() or saved) else None
    if args.threads is not None:
        _set_threads(args.threads)
    try:
        train(config)
    except TrainingInterrupted as e:
        if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch every process stops: one says so
            return 128 + e.signum
        # the saved config.yaml holds every setting: the folder alone resumes (a repeated --overwrite would refuse)
        again = " (or the same command again: --resume-or-start resumes it)" if config.resume_or_start else ""
        print(f"\ninterrupted: {e}. Continue with: {_resume_command(config, args)}{again}", file=sys.stderr)
        return 128 + e.signum  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports them
    except OSError as e:  # a write failed (a full disk, a folder made read-only): what is kept, and how to go on
        from .run_folder import checkpoints

        kept = checkpoints(Path(config.out))
        fix = "make room" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        then = (f"the last checkpoint ({kept[-1].name}) is kept: {fix}, then continue with: "
                f"{_resume_command(config, args)}" if kept
                else f"no checkpoint was saved yet: {fix}, then start the run again with "
                     f"{'the same command' if config.resume_or_start else '--overwrite'}")
        print(f"textinv train: error: {e.strerror or e}: {e.filename or 'a file'}; {then}", file=sys.stderr)
        return 2
    return 0


def _resume_command(config, args) -> str:
    """The command that continues an interrupted run: its folder holds every setting, but not --threads, which is
    no setting of the run; the sums of a CPU step depend on it, so a run given one goes on bit for bit only at the
    same count (left out, torch's own count is the same again on the same machine)."""
    threads = f" --threads {args.threads}" if args.threads is not None else ""
    return f"textinv train --out {shlex.quote(str(config.out))} --resume{threads}"


def cmd_generate(args) -> int:
    from .config import GenerateConfig
    from .generate import generate

    if args.threads is not None:
        _set_threads(args.threads)
    keep = None
    if getattr(args, "again", None):  # the picture's settings, with the flags given beside it over them
        from .again import again_config

        if getattr(args, "config", None):
            raise ConfigError("--again takes its settings from the picture: give the ones to change as flags beside "
                              "it, not --config")
        names = {f.name for f in dataclasses.fields(GenerateConfig)}
        config, keep = again_config(args.again, {k: v for k, v in vars(args).items() if k in names})
    else:
        config = _config_from_args(GenerateConfig, args)
    paths = generate(config, keep_seeds=keep)
    print(f"wrote {len(paths)} image(s) to {config.out}")
    return 0


def cmd_convert(args) -> int:
    from .formats import convert
    from .run_folder import embedding_file

    # (a `~` the shell left as it is, quoted or after `=`: the home folder, as train and score read it)
    home = os.path.expanduser
    written = convert(embedding_file(Path(home(args.src))), home(args.dst), to=args.to, token=args.token,
                      second=args.second and home(args.second), overwrite=args.overwrite,
                      into_lora=args.into_lora and home(args.into_lora), caption=args.caption)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_merge(args) -> int:
    from .config import MergeConfig
    from .merge import merge

    result = merge(_config_from_args(MergeConfig, args))
    print(result.report["text"])
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_file
    from .run_folder import embedding_file

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    given = [flag for flag, value in (("--revision", args.revision), ("--variant", args.variant)) if value]
    if given and not args.model:  # (said, not ignored: the file alone was read, no model at that version)
        raise ConfigError(f"{' and '.join(given)} {'pick' if len(given) > 1 else 'picks'} which version of --model "
                          f"to load; give --model too, or leave {'them' if len(given) > 1 else 'it'} out")
    path = embedding_file(Path(args.file).expanduser())
    try:
        report = inspect_file(path, model=args.model, top_k=args.top_k, revision=args.revision, variant=args.variant)
    except FormatError as refused:  # no embedding: a drawn picture's settings are shown, as the web UI's PNG Info
        report = _drawn_picture(path, refused)
        if args.model:  # (said, not ignored: there are no vectors to compare with it)
            raise ConfigError(f"{path} is a drawn picture, not an embedding: --model compares an embedding's "
                              f"vectors with a model's vocabulary; leave --model out to see its settings") from None
    print(json.dumps(report, indent=2) if args.json else report["text"])
    return 0


def _drawn_picture(path: Path, refused: FormatError) -> dict:
    """`inspect_picture`'s report on a file that holds no embedding; `refused` (why it holds none) where it holds no
    generation settings either (a photo, a damaged file, an A1111 embedding PNG that could not be read), and why its
    settings cannot be read where they cannot (--again refuses it too)."""
    from .again import holds_settings
    from .inspect import inspect_picture

    try:
        return inspect_picture(path)
    except ConfigError as unread:
        if not holds_settings(path):  # (the embedding's refusal says what this file is)
            raise refused from None
        raise FormatError(f"{path} holds no embedding, and the generation settings it holds cannot be read "
                          f"({unread})") from None


def cmd_demo(args) -> int:
    from .shapes.demo import DemoConfig, run_demo

    _set_threads(args.threads)
    config = _config_from_args(DemoConfig, args)
    run_demo(config)
    return 0


def cmd_score(args) -> int:
    from .score import ScoreConfig, score

    if args.threads is not None:
        _set_threads(args.threads)
    config = _config_from_args(ScoreConfig, args)
    score(config)
    return 0


def cmd_caption(args) -> int:
    from .caption import CaptionConfig, caption_pictures

    caption_pictures(_config_from_args(CaptionConfig, args))
    return 0


def cmd_push(args) -> int:
    from .hub import push

    if not args.repo:  # (checked here, not by argparse: another tool's flag beside it is answered first)
        raise ConfigError("--repo OWNER/NAME is required: the hub repo to publish to, e.g. --repo your-name/my-dog")
    print(f"published {push(args.source, args.repo, private=args.private, hub_token=args.hub_token)}")
    return 0


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; on an idle 2-core "
                   "machine 2 train about 20%% faster and draw no faster, on a busy one 1 is steadier)")


def _add_cpu_threads(p: argparse.ArgumentParser) -> None:
    """`train`'s, `generate`'s and `score`'s --threads: torch's own count (every core) unless given, as before it
    existed."""
    p.add_argument("--threads", type=int, help="torch CPU threads, for a run on the CPU (default: torch's, one per "
                   "core; train's --resume: the run's, where this machine has as many cores); on a machine busy with "
                   "other work, 1 can be several times faster (a shapes-model training step on the loaded 2-core VM: "
                   "0.17 s on 1, about 1.5 s on 2)")


def _add_model_version(p: argparse.ArgumentParser) -> None:
    """--revision and --variant beside a --model that is not a config field (`inspect`, `evaluate`), with the help
    `train` and `generate` give them."""
    from .config import REVISION_HELP, VARIANT_HELP

    p.add_argument("--revision", help=REVISION_HELP)
    p.add_argument("--variant", help=VARIANT_HELP)


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def cmd_evaluate(args) -> int:
    from .io import output_folder
    from .models import DTYPES, load_model, pick_device
    from .shapes.evaluate import (caption_fidelity, check_judged_size, evaluate, fidelity_markdown, first_concepts,
                                  format_fidelity, format_markdown, print_table, settings, write_results)
    from .shapes.probe import DEFAULT_PATH, Probe

    if args.captions < 0:
        raise ConfigError(f"--captions must be 0 (none) or more, got {args.captions}")
    config = settings(args.fast, vars(args))
    concepts = first_concepts(args.concepts, allow_none=bool(args.captions))
    _set_threads(args.threads)
    device = pick_device(config.device)  # (a device it lacks: before --out is made)
    if args.out:  # now, not after an hour of benchmark
        args.out = str(output_folder(args.out))
    model = load_model(args.model, dtype=DTYPES[config.precision], device=device, revision=args.revision,
                       variant=args.variant)
    probe = Probe.load(args.probe or DEFAULT_PATH)
    check_judged_size(model)
    results = []
    if args.captions:
        # a given --seed moves the captions' seeds too; without it they stay the published tables' (2000, ...)
        seed = {"seed": config.seed} if "seed" in vars(args) else {}
        fidelity = caption_fidelity(model, probe, args.captions, sample_steps=config.sample_steps,
                                    guidance=config.guidance, chunk=config.chunk, sampler=config.sampler, **seed)
        print(format_fidelity(fidelity))
        results.append((fidelity, "fidelity", fidelity_markdown))
    if concepts:
        result = evaluate(model, probe, concepts, config=config)
        print_table(result)
        results.append((result, "quality", format_markdown))
    if args.out:
        paths = [path for result, name, markdown in results for path in write_results(result, args.out, name, markdown)]
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage (30 lines for `train`) above a mistyped flag; the mistake and where the help
    is are enough. Subcommand parsers are made of the same class."""

    def error(self, message):
        first, _, more = message.partition("\n")  # (lines under the first, e.g. other tools' names, follow it)
        first = _near_choice(first)
        self.exit(2, f"{self.prog}: error: {first} (see {self.prog} --help)\n" + (more + "\n" if more else ""))


_INVALID_CHOICE = re.compile(r"invalid choice: (?P<given>.+?) \(choose from (?P<choices>.+)\)$")


def _near_choice(message: str) -> str:
    """argparse's "invalid choice" with the nearest choice named (`--sampler eulr`: did you mean 'euler'?), and a
    list of more than 16 choices (`--sampler`'s 61, a screenful) left to --help, which lists them."""
    match = _INVALID_CHOICE.search(message)
    if not match:
        return message
    given = match["given"].strip("'")
    choices = [choice.strip("'") for choice in match["choices"].split(", ")]
    near = difflib.get_close_matches(given, choices, n=1) if re.search(r"[a-zA-Z]", given) else []
    said = f"choose from {match['choices']}" if len(choices) <= LONGEST_LIST else f"one of {len(choices)} names"
    said += f"; did you mean {near[0]!r}?" if near else ""
    return f"{message[:match.start()]}invalid choice: {match['given']} ({said})"


def _short_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"textinv: warning: {message}\n"  # (not Python's file:line and the source line of the warning call)


def _warning_above_bars(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's own showwarning, but a warning raised while a progress bar is drawn (train's, generate's) is written
    as tqdm.write writes, on lines of its own with the bar drawn again below them, not after the bar's text on its
    line. Only the write changes: a catch_warnings(record=True) in effect still records the warning."""
    stream = sys.stderr if file is None else file
    if stream is not None and _bar_drawn():
        file = _AboveBars(stream)
    warnings._showwarning_orig(message, category, filename, lineno, file, line)


def _bar_drawn() -> bool:
    from tqdm import tqdm

    return any(not bar.disable for bar in list(tqdm._instances))  # (a copy: a bar may close in another thread)


class _AboveBars:
    """A stream whose writes go above the progress bars drawn on it: the bars cleared, the text written, the bars
    drawn again."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self._stream, end="")


# each command's line in `textinv --help`
_HELP = {
    "train": "learn a token from a folder of pictures",
    "generate": "generate images with learned tokens",
    "convert": "convert an embedding file between formats (lossless)",
    "merge": "make a new embedding of embeddings and words: weighted sums, concatenation",
    "inspect": "what an embedding file holds and which model it fits (a drawn picture: the settings generate "
               "--again reads from it)",
    "score": "how good is an embedding: CLIP reconstruction and editability, with a report",
    "caption": "write a caption file beside each training picture, with BLIP",
    "push": "publish an embedding on the Hugging Face hub, with a model card",
    "demo": "learn an example concept on the bundled model and write a report",
    "evaluate": "the quality benchmark: reconstruction and editability per concept",
}


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser, every command's flags in it; given the command line `argv`, only the command it
    names has its flags, the others their line of help: building them imports torch, and `score`'s and `demo`'s
    diffusers too (5 s of CPU on the 2-core VM), which `textinv --help` or `textinv convert --help` need not wait for.
    """
    parser = _Parser(prog="textinv", description="Textual Inversion: learn a new word for a concept "
                                     "from a few pictures, and generate with it.")
    parser.add_argument("--version", action="version", version=f"textinv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    named = next((word for word in argv if not word.startswith("-")), None) if argv is not None else None
    for add_command in (_add_train, _add_generate, _add_convert, _add_merge, _add_inspect, _add_score, _add_caption,
                        _add_push, _add_demo, _add_evaluate):
        name = add_command.__name__.removeprefix("_add_")
        if argv is None or name == named:
            add_command(sub)
        else:
            sub.add_parser(name, help=_HELP[name])
    parser.commands = sub.choices  # (name -> its parser: `_parse` names the command's own flags)
    return parser


def _add_config_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/TOML/JSON file of settings; flags override it")


def _add_train(sub) -> None:
    from .config import TrainConfig

    p = sub.add_parser("train", help=_HELP["train"],
                       description="Learn new token vectors so the frozen model reconstructs your pictures.")
    _add_config_file(p)
    add_config_flags(p, TrainConfig)
    _add_cpu_threads(p)
    p.set_defaults(func=cmd_train)


def _add_generate(sub) -> None:
    from .config import GenerateConfig

    p = sub.add_parser("generate", help=_HELP["generate"],
                       description="Draw pictures from prompts that use learned tokens (embedding files of any "
                                   "supported format); each PNG carries its prompt, seed and settings.")
    _add_config_file(p)
    p.add_argument("--again", metavar="PICTURE", help="draw a picture textinv, the A1111 web UI or ComfyUI drew "
                   "again, from the settings in its PNG text (a web UI JPEG/WebP/AVIF: its EXIF; ComfyUI's: its "
                   "graph, a WebP's in its EXIF; or a ComfyUI workflow saved as .json, either format); flags beside "
                   "it override them (--seed 5, -n 4, --prompt ...)")
    add_config_flags(p, GenerateConfig)
    _add_cpu_threads(p)
    p.set_defaults(func=cmd_generate)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help=_HELP["convert"])
    p.add_argument("src", help="embedding file in any supported format")
    p.add_argument("dst", help="file to write")
    p.add_argument("--to", choices=("diffusers", "diffusers-bin", "a1111", "a1111-png", "kohya", "sdxl",
                                     "diffusers-sdxl"), help="target format (default: from dst's suffix)")
    p.add_argument("--token", help="token name to store (default: the one in the file)")
    p.add_argument("--second", help="SDXL kept as two files (diffusers' SDXL script): the second text encoder's "
                                    "file, when it is not named as src's partner (learned_embeds_2.* is found alone)")
    p.add_argument("--overwrite", action="store_true", help="replace dst if it exists (default: refuse)")
    p.add_argument("--into-lora", metavar="LORA", help="write LORA (.safetensors) with the embedding bundled in it to "
                   "dst, as the web UI reads bundles: <lora:dst's name> in a prompt then installs it under its token")
    p.add_argument("--no-caption", dest="caption", action="store_false", help="an a1111-png's picture without the "
                   "web UI's caption (the name at the top, the checkpoint, hash, vectors and steps at the bottom)")
    p.set_defaults(func=cmd_convert)


def _add_merge(sub) -> None:
    from .config import MergeConfig

    p = sub.add_parser("merge", help=_HELP["merge"],
                       description="Write a new embedding made of embedding files and vocabulary words, as the web "
                                   "UI's Embedding Inspector and Embedding Merge extensions do. E.g. textinv merge "
                                   "mix.pt --token '<mix>' \"dog.pt*0.7 + cat.pt*0.3\" \"style.pt[0:2]\"")
    merge_help = {f.name: f.metadata["help"] for f in dataclasses.fields(MergeConfig)}
    p.add_argument("out", metavar="OUT", help=merge_help["out"])
    p.add_argument("terms", metavar="TERM", nargs="+", help=merge_help["terms"])
    add_config_flags(p, MergeConfig)
    p.set_defaults(func=cmd_merge)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help=_HELP["inspect"])
    p.add_argument("file", help="embedding file in any supported format, or a picture textinv, the web UI or "
                   "ComfyUI drew")
    p.add_argument("--model", help="also compare with this model's vocabulary (norms, nearest tokens)")
    _add_model_version(p)
    p.add_argument("--top-k", type=int, default=5, help="nearest vocabulary tokens per vector (with --model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)


def _add_score(sub) -> None:
    from .config import ScoreConfig  # (not score's module: it loads the models, seconds --help need not wait)

    p = sub.add_parser("score", help=_HELP["score"],
                       description="Draw the concept in 'a photo of' and edit prompts, with the learned token and "
                                   "with baselines (the init word, your description) at the same seeds, judge the "
                                   "pictures with CLIP as the textual inversion paper does, and write report.html, "
                                   "report.png and scores.json.")
    _add_config_file(p)
    add_config_flags(p, ScoreConfig)
    _add_cpu_threads(p)
    p.set_defaults(func=cmd_score)


def _add_caption(sub) -> None:
    from .caption import CaptionConfig

    p = sub.add_parser("caption", help=_HELP["caption"],
                       description="Caption each picture of a training folder with BLIP (as the web UI's "
                                   "preprocessing and kohya's make_captions.py do) into NAME.txt beside it, which "
                                   "train reads: --prefix 'a photo of {},' puts the token in each caption, "
                                   "[filewords] templates take them as they are.")
    add_config_flags(p, CaptionConfig)
    p.set_defaults(func=cmd_caption)


def _add_push(sub) -> None:
    # a command of its own, not a train flag: it publishes a run once it is done (or resumed, or scored, or an older
    # one), a failed upload costs no training, and a token given to train would be saved in the run's config.yaml
    p = sub.add_parser("push", help=_HELP["push"],
                       description="Upload a training run's embedding (or any embedding file) to a Hugging Face hub "
                                   "repo, with a README.md model card (token, init, base model, family, steps, the "
                                   "run's last sample grid, how to load it), in one commit. `diffusers` then loads "
                                   "it with pipe.load_textual_inversion(REPO), textinv with --embedding REPO.")
    p.add_argument("source", metavar="RUN_OR_FILE", help="a training run's --out folder (or one concept's folder of "
                                                         "it), or an embedding file")
    p.add_argument("--repo", metavar="OWNER/NAME", help="the hub repo to publish to (made if need be)")
    p.add_argument("--private", action="store_true", help="make the repo private (only when it is made here)")
    p.add_argument("--hub-token", help="a Hugging Face token that can write (default: HF_TOKEN, or the one `hf auth "
                                       "login` saved; given here, it stays in your shell's history)")
    p.set_defaults(func=cmd_push)


def _add_demo(sub) -> None:
    from .shapes.demo import DemoConfig

    p = sub.add_parser("demo", help=_HELP["demo"],
                       description="Learn the example concept in examples/ (a teal star) on the CPU with the "
                                   "bundled shapes model, draw it in new prompts beside the init word, judge the "
                                   "pictures with the attribute probe, and write report.html + report.png.")
    add_config_flags(p, DemoConfig)
    _add_threads(p)
    p.set_defaults(func=cmd_demo)


def _add_evaluate(sub) -> None:
    from .shapes.evaluate import EvalConfig

    p = sub.add_parser("evaluate", help=_HELP["evaluate"],
                       description="Learn each benchmark concept of the shapes world and score it, with two "
                                   "baselines (init word, best description), by the attribute probe.")
    p.add_argument("--concepts", type=int, help="evaluate the first N benchmark concepts (default: all; 0 with "
                   "--captions: none)")
    p.add_argument("--captions", type=int, default=0, help="first check the model itself: draw N held-in captions "
                   "and probe whether shape, colour, pattern and background come out as captioned")
    p.add_argument("--out", help="folder to write quality-YYYY-MM-DD.json and .md into")
    p.add_argument("--model", default="shapes", help="the model (default: the bundled shapes model)")
    _add_model_version(p)
    p.add_argument("--probe", help="attribute probe weights (default: the bundled probe)")
    p.add_argument("--fast", action="store_true", help="a smoke run: few steps and samples (flags override it)")
    _add_threads(p)
    add_config_flags(p, EvalConfig)
    p.set_defaults(func=cmd_evaluate)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parse_args`, but a flag the command does not have is answered with what the user most likely meant
    (argparse names only what it did not know, and from the top-level parser, which knows no command's flags):
    another tool's name for one of its flags gets textinv's (`foreign.NAMES`: `--placeholder_token` is `--token`),
    anything else the nearest flag by spelling, which for an underscore spelling is its own (`--grad_accum`:
    `--grad-accum`); a value after a switch (kohya's `--resume PATH`) is said to be one.

    Underscore spellings are answered, not accepted: one spelling per flag keeps `--help`, errors, the README and
    saved commands alike, and the other tools' same-named flags do not always mean the same (kohya's `--resolution`
    may be "W,H"), so taking them silently could change what a run does. (argparse's prefix matching, allow_abbrev,
    stays: no other tool's name in `foreign.NAMES` is a prefix of a textinv flag, which a test checks, so none is
    taken for one.)"""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser.commands[args.command]
        flags = [flag for action in command._actions for flag in action.option_strings]
        switches = {flag for action in command._actions if action.nargs == 0 for flag in action.option_strings}
        given = sys.argv[1:] if argv is None else list(argv)
        said, notes = [], []
        for word in unknown:
            name = word.split("=")[0]
            other = foreign_hint(name, args.command) if word.startswith("--") else None
            if other:
                said.append(word)
                notes.append(f"  {other}")
            elif word.startswith("-"):
                near = difflib.get_close_matches(name, flags, n=1)
                said.append(f"{word} (did you mean {near[0]}?)" if near else word)
            else:
                after = [given[i - 1] for i in range(1, len(given)) if given[i] == word and given[i - 1] in switches]
                said.append(f"{word} (a value after {after[0]}, which takes none)" if after else word)
                if after and after[0] == "--resume":
                    notes.append(f"  {_resume_note(word)}")
        command.error("\n".join([f"unrecognized arguments: {' '.join(said)}", *notes]))
    return args


def _resume_note(given: str) -> str:
    """What a path after --resume (kohya's `--resume STATE`, a checkpoint of a run) should have been: the run's
    folder as --out, named where the path is in one (its config.yaml there or a level up: `checkpoints/`)."""
    path = Path(given)
    run = next((folder for folder in (path, *list(path.parents)[:2]) if (folder / "config.yaml").is_file()), None)
    return (f"--resume takes no path: it goes on with the run in --out from its last checkpoint; "
            f"textinv train --out {run if run is not None else 'DIR'} --resume")


# a disk full (or over quota) or read-only: said in one line, as a bad setting is
_WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def main(argv: list[str] | None = None) -> int:
    python_format, warnings.formatwarning = warnings.formatwarning, _short_warning
    python_show = warnings.showwarning
    if python_show is getattr(warnings, "_showwarning_orig", None):  # (Python's own: not a logger's, nor IPython's)
        warnings.showwarning = _warning_above_bars
    on_command_line = ON_COMMAND_LINE.set(True)  # (refusals name flags, not Python's keywords: `errors.given`)
    try:
        # (building the parser imports torch and diffusers: seconds a Ctrl-C may come in) ~300k objects, none of
        # them garbage: the collector's passes over them as they piled up were a fifth of the start-up (~1 s here)
        collecting = gc.isenabled()
        gc.disable()
        try:
            args = _parse(make_parser(sys.argv[1:] if argv is None else argv), argv)
        finally:
            if collecting:
                gc.enable()
        return args.func(args)
    except TextinvError as e:
        print(f"textinv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed (train says it its own way, with the checkpoint kept): not a bug
        if e.errno not in _WRITE_FAILURES:
            raise
        fix = "choose another --out" if e.errno == errno.EROFS else "make room"
        # (every write is atomic: what was written before it is whole, and the file it failed on is as it was)
        print(f"textinv {args.command}: error: {e.strerror or e}: {e.filename or 'a file'}; {fix}, then run it again",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # (generate's says what was written before it)
        print(f"\ninterrupted: {e}" if str(e) else "\ninterrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning, warnings.showwarning = python_format, python_show
        ON_COMMAND_LINE.reset(on_command_line)


def _tolerant_output() -> None:
    """Let stdout and stderr write any character. A token, prompt or file name may hold characters the stream's
    encoding lacks (Windows writes redirected output, `textinv inspect F > info.txt`, in its ANSI code page, e.g.
    cp1252), and printing one raised UnicodeEncodeError after the work was done; such characters are written as
    backslash escapes instead (`\\u6f22`), keeping what they were. stderr's reader may leave (`_ReaderMayLeave`)."""
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)):  # (a TextIOWrapper; not a test's or a notebook's stand-in)
            stream.reconfigure(errors="backslashreplace")
    if sys.stderr is not None:  # (None: pythonw on Windows)
        sys.stderr = _ReaderMayLeave(sys.stderr)


class _ReaderMayLeave:
    """stderr, whose reader may leave while the command runs (`textinv train ... 2>&1 | tee train.log`, where Ctrl-C
    stops tee too): a write it cannot take sends it and the rest to the null device. The BrokenPipeError raised
    mid-step (by the progress bar, or Ctrl-C's note) stopped a run without the save Ctrl-C promises."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_null()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_null()

    def _to_null(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run() -> None:
    """The `textinv` command and `python -m textinv`: `main`, then exit."""
    _tolerant_output()
    try:
        code = main()
        sys.stdout.flush()  # (here, not in the interpreter's exit, where a failure is only reported)
    except BrokenPipeError:
        # the reader of the output left early (`textinv inspect F | head`): stop quietly, as Unix tools do, with
        # stdout pointed at nothing so that the interpreter's last flush finds nothing to fail on
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    # Exit without the interpreter's last garbage collections: they walk every object torch, diffusers and
    # transformers made (~400k), 2-3 s on the 2-core VM; the process's memory goes back to the system whole.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
