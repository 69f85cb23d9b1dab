"""textinv from Python, as a notebook uses it: one loaded model through several calls, settings given as Python
values, and the README's "Use from Python" example run as written."""

import os
import re
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch

from conftest import interrupt_loss_at
from textinv.config import GenerateConfig, MergeConfig, TrainConfig, check_choices
from textinv.errors import ConfigError, FormatError, ModelError, UnknownSettingError
from textinv.formats import LearnedEmbedding
from textinv.generate import generate
from textinv.merge import merge
from textinv.models import load_model
from textinv.samplers import SAMPLERS
from textinv.score import ScoreConfig, score
from textinv.train import TrainingInterrupted, train

ROOT = Path(__file__).resolve().parent.parent


LOADED = LearnedEmbedding("<zq>", {"text_encoder": torch.zeros(1, 32)}, {})  # (an embedding in memory)


def run_config(images, out, **kw):
    return TrainConfig(**{**dict(images=images, token="<zq>", init="dog", out=out, steps=2, batch=2, save_every=0,
                                 sample_every=0), **kw})


def test_a_model_passed_to_train_comes_back_as_it_came(sd1_dir, images, tmp_path):
    """train() left its token in the model passed in: training the same token again was refused as taken, and so
    was the learned file in generate() and in diffusers' load_textual_inversion on model.pipeline; and
    --gradient-checkpointing left the UNet in training mode."""
    model = load_model(sd1_dir)
    tokenizer, table, size = model.tokenizer, model.text_encoder.get_input_embeddings(), len(model.tokenizer)
    result = train(run_config(images, tmp_path / "a", gradient_checkpointing=True), model=model, progress=False)
    assert model.tokenizer is tokenizer and len(tokenizer) == size
    assert model.text_encoder.get_input_embeddings() is table
    assert not model.unet.training and not model.unet.is_gradient_checkpointing
    again = train(run_config(images, tmp_path / "b"), model=model, progress=False)  # the same token, once more
    assert torch.equal(again.embedding.vectors["text_encoder"], result.embedding.vectors["text_encoder"])
    pictures = generate(GenerateConfig(prompt=["a photo of <zq>"], embedding=[str(result.files[0])], n=1, steps=2,
                                       out=str(tmp_path / "renders")), model=model, progress=False)
    assert len(pictures) == 1 and len(model.tokenizer) == size
    model.pipeline.load_textual_inversion(result.files[0])
    assert len(model.tokenizer) == size + 1


def test_an_interrupted_run_hands_the_model_back_and_resumes_on_it(sd1_dir, images, tmp_path, monkeypatch):
    """A Ctrl-C (a notebook's "interrupt") in the middle of a step: the model passed in is handed back without the
    token too, so the run continues on the same model."""
    model = load_model(sd1_dir)
    size, table = len(model.tokenizer), model.text_encoder.get_input_embeddings()
    undo = interrupt_loss_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(run_config(images, tmp_path / "run", steps=4), model=model, progress=False)
    undo()
    assert stopped.value.step == 2
    assert len(model.tokenizer) == size and model.text_encoder.get_input_embeddings() is table
    resumed = train(run_config(images, tmp_path / "run", steps=4, resume=True), model=model, progress=False)
    assert resumed.steps == 4 and len(model.tokenizer) == size


@pytest.mark.parametrize("left_out", [("steps",), ("steps", "lr", "vectors")])
def test_a_resume_from_python_takes_the_settings_left_out_from_the_run(left_out, sd1_dir, images, tmp_path,
                                                                       monkeypatch):
    """A resume whose config leaves out `steps` (or `lr`, `vectors`: None until the run resolves them) goes on with
    the run's, as `--out DIR --resume` reads them from config.yaml, and ends where the uninterrupted run ends. It ran
    on to the default steps (3000; 8 here), and took lr 5e-3 and 1 vector, which were refused as other settings."""
    from textinv import config as config_module

    monkeypatch.setattr(config_module, "DEFAULT_STEPS", 8)  # (a resume that runs to the default stops soon)
    run = dict(steps=6, save_every=2, log_every=1, lr=3e-2, vectors=2)
    straight = train(run_config(images, tmp_path / "a", **run), model=load_model(sd1_dir), progress=False)
    undo = interrupt_loss_at(monkeypatch, 4)
    with pytest.raises(TrainingInterrupted):
        train(run_config(images, tmp_path / "b", **run), model=load_model(sd1_dir), progress=False)
    undo()
    resumed = train(run_config(images, tmp_path / "b", resume=True, **{**run, **dict.fromkeys(left_out)}),
                    model=load_model(sd1_dir), progress=False)
    assert resumed.steps == 6
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses
    with pytest.raises(ConfigError, match=r"at step 6 with steps=4: the run is past it; give steps=6 or more"):
        train(run_config(images, tmp_path / "b", resume=True, **{**run, "steps": 4}), model=load_model(sd1_dir),
              progress=False)  # (a steps given is --steps: one below the step reached refused, a larger one goes on)
    assert train(run_config(images, tmp_path / "b", resume=True, **{**run, "steps": 7}), model=load_model(sd1_dir),
                 progress=False).steps == 7


def test_a_resume_from_python_keeps_the_runs_tracker_and_validation_interval(sd1_dir, images, tmp_path, monkeypatch):
    """`log_with`, `log_dir` and `validate_every` left out (None) on a Python resume are the run's too, as a resume
    without --log-with, --log-dir or --validate-every takes them from config.yaml: the run went on unlogged (None
    read as no tracker) and scored the validation loss at save_every's interval."""
    from test_tracking import read_events, scalars

    run = dict(steps=6, save_every=2, log_every=1, validation_split=0.25, validate_every=1, log_with="tensorboard",
               log_dir=str(tmp_path / "tb"))
    straight = train(run_config(images, tmp_path / "a", **run), model=load_model(sd1_dir), progress=False)
    with pytest.raises(TrainingInterrupted):
        train(run_config(images, tmp_path / "b", **run), model=load_model(sd1_dir), progress=False,
              on_step=lambda step: step == 3 and os.kill(os.getpid(), signal.SIGINT))
    resumed = train(run_config(images, tmp_path / "b", resume=True,
                               **{**run, **dict.fromkeys(("log_with", "log_dir", "validate_every"))}),
                    model=load_model(sd1_dir), progress=False)
    assert resumed.validation == straight.validation and [s for s, _ in resumed.validation] == list(range(7))
    assert [s for s, _ in scalars(read_events(tmp_path / "tb" / "b"))["loss"]] == list(range(1, 7))


def test_a_resume_from_python_that_leaves_out_the_precision_goes_on_at_the_runs(sd1_dir, images, tmp_path,
                                                                                monkeypatch):
    """A run started at `precision="bf16"` on the CPU, resumed from Python with `precision` left out: it goes on at
    the run's bf16, as on the command line (it read as auto given, fp32 on the CPU, and went on at fp32 with a
    warning that the run would not end where it would have)."""
    from textinv.run_folder import PrecisionChangedWarning

    run = dict(model=str(sd1_dir), steps=4, save_every=2, precision="bf16")
    straight = train(run_config(images, tmp_path / "a", **run), progress=False)
    undo = interrupt_loss_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train(run_config(images, tmp_path / "b", **run), progress=False)
    undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionChangedWarning)
        resumed = train(run_config(images, tmp_path / "b", resume=True, **{**run, "precision": None}),
                        progress=False)
    assert resumed.steps == 4
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_resume_on_another_model_passed_in_is_refused_as_that_model(sd1_dir, images, tmp_path):
    """train(config, model=...) resumed with another model than the run's: it was warned about as "the model shapes
    has changed since the run started" (config.model's default, which nothing loaded) and the run went on; a model
    passed in is one given anew, so another one is refused, naming it, and the run's own resumes."""
    from textinv.run_folder import ModelChangedWarning
    from textinv.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1", seed=5).save_pretrained(tmp_path / "other")
    model, out = load_model(sd1_dir), tmp_path / "run"
    train(run_config(images, out, steps=2, save_every=2), model=model, progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* with the model passed to train\(\): that is not the "
                                          "model the run was trained with"):
        train(run_config(images, out, steps=4, resume=True), model=load_model(tmp_path / "other"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChangedWarning)
        assert train(run_config(images, out, steps=4, resume=True), model=model, progress=False).steps == 4


def test_a_run_on_a_model_passed_in_records_that_model(sd1_dir, images, tmp_path):
    """config.yaml and the embedding named the --model default, `shapes`, for a run on a model passed in: a resume
    from the command line then loaded the wrong model, and the file's base_model was wrong."""
    from textinv.cli import main
    from textinv.config import read_config_file

    out = tmp_path / "run"
    result = train(run_config(images, out, steps=2, save_every=2), model=load_model(sd1_dir), progress=False)
    assert read_config_file(out / "config.yaml")["model"] == str(sd1_dir)
    assert result.embedding.metadata["base_model"] == sd1_dir.name  # (a local model by its name alone)
    assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0


def test_a_run_on_a_model_passed_in_records_the_vae_it_was_loaded_with(sd1_dir, images, tmp_path):
    """load_model(x, vae=v) passed to train() was recorded as x alone: a resume from the command line loaded x's own
    VAE, warned that the model had changed and trained on; a vae= the config gave that the model lacks was recorded
    too."""
    from textinv.cli import main
    from textinv.config import read_config_file
    from textinv.run_folder import ModelChangedWarning
    from textinv.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1", seed=7).vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    train(run_config(images, out, steps=2, save_every=2), model=load_model(sd1_dir, vae=tmp_path / "vae"),
          progress=False)
    saved = read_config_file(out / "config.yaml")
    assert (saved["model"], saved["vae"]) == (str(sd1_dir), str(tmp_path / "vae"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChangedWarning)
        assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    train(run_config(images, tmp_path / "b", vae=str(tmp_path / "vae")), model=load_model(sd1_dir), progress=False)
    assert read_config_file(tmp_path / "b" / "config.yaml").get("vae") is None  # (the model passed in has its own)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: GenerateConfig(prompt="a photo of <zq>"),
     r"prompt= takes a list, got str 'a photo of <zq>'; e\.g\. prompt=\['a photo of <zq>'\]"),
    (lambda tmp: GenerateConfig(prompt=["a"], embedding="runs/zq/learned_embeds.safetensors"),
     r"embedding= takes a list, got str"),
    (lambda tmp: GenerateConfig(prompt=["a"], n="4"), r"n= takes a whole number, got str '4'"),
    (lambda tmp: GenerateConfig(prompt=["a"], guidance="3"), r"guidance= takes a number, got str '3'"),
    (lambda tmp: run_config(tmp, tmp / "o", sample_prompts="a photo of {}"), r"sample_prompts= takes a list"),
    (lambda tmp: run_config(tmp, tmp / "o", steps=2.5), r"steps= takes a whole number, got float 2\.5"),
    (lambda tmp: run_config(tmp, tmp / "o", flip="no"), r"flip= takes True or False, got str 'no'"),
    (lambda tmp: run_config(tmp, tmp / "o", lr="5e-3:100, 1e-3"),  # (as the command line's --lr says)
     r"lr= takes a number, got str '5e-3:100, 1e-3'; it is the web UI's stepped rate \(RATE:STEP, \.\.\., RATE\): "
     r"give it as lr_steps='5e-3:100, 1e-3'"),
    (lambda tmp: ScoreConfig(embedding=str(tmp), prompts="a {} on grass"), r"prompts= takes a list, got str"),
    (lambda tmp: ScoreConfig(embedding=str(tmp), steps="8"), r"steps= takes a whole number, got str '8'"),
    (lambda tmp: GenerateConfig(prompt=["a"], embedding=[LOADED]),  # (failed in os.fspath with a bare TypeError)
     r"embedding= takes a list of text or Paths, got LearnedEmbedding .*; pass its file \(train's result\.files\[0\], "
     r"or one save_embedding\(emb, 'emb\.safetensors'\) writes\)"),
    (lambda tmp: ScoreConfig(embedding=LOADED), r"embedding= takes text or a Path, got LearnedEmbedding .*; pass its "
                                                r"file"),
])
def test_python_settings_of_another_type_are_refused_by_name(make, message, tmp_path):
    """Settings given from Python skip the command line's reading of text: one prompt as a str was read letter by
    letter ("t: no such file" for an embedding path), n="4" failed inside a comparison with a TypeError."""
    with pytest.raises(ConfigError, match=message):
        make(tmp_path).validate()


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(images="pics", stpes=3), r"TrainConfig has no setting 'stpes': did you mean steps=\?"),
    (lambda: TrainConfig(placeholder_token="<zq>"),
     r"TrainConfig has no setting 'placeholder_token': that is the diffusers script's name; textinv calls it 'token'"),
    (lambda: GenerateConfig(prompt=["a"], guidance_scale=3.0), r"no setting 'guidance_scale'.* textinv calls it "
                                                                r"'guidance'"),
    (lambda: MergeConfig(out="mix.pt", tokn="<mix>"), r"MergeConfig has no setting 'tokn': did you mean token=\?"),
    (lambda: ScoreConfig(embeding="runs/zq"), r"ScoreConfig has no setting 'embeding': did you mean embedding=\?"),
    (lambda: TrainConfig(zzzqq=1), r"no setting 'zzzqq': its settings are the flags of textinv train"),
])
def test_a_setting_name_a_config_lacks_is_refused_with_the_one_meant(make, message):
    """`TrainConfig(stpes=3)` raised Python's bare "unexpected keyword argument", where the command line's
    `--stpes` names --steps: the nearest setting, or textinv's name for another tool's. Still a TypeError."""
    with pytest.raises(UnknownSettingError, match=message) as raised:
        make()
    assert isinstance(raised.value, TypeError)


def test_a_mistyped_choice_from_python_names_the_one_meant(tmp_path):
    """`sampler="eulr"` listed every sampler without the one meant, where the command line's --sampler eulr says
    "did you mean 'euler'?"."""
    with pytest.raises(ConfigError, match=r"^sampler='eulr' is not one of the .*; did you mean 'euler'\?$"):
        GenerateConfig(prompt=["a"], sampler="eulr").validate()
    with pytest.raises(ConfigError, match=r"^format='difusers' is not one of: .*; did you mean 'diffusers'\?$"):
        run_config(tmp_path, tmp_path / "o", format="difusers").validate()


@pytest.mark.parametrize("make", [lambda: GenerateConfig(prompt=["a"], sampler="eulr"),
                                  lambda: GenerateConfig(prompt=["a"], hires_sampler="eulr"),
                                  lambda: ScoreConfig(embedding="e.safetensors", images="pics", sampler="eulr")])
def test_a_refusal_of_a_sampler_counts_the_names_and_says_where_they_are(make):
    """A sampler mistyped from Python listed all 122 names (2,000 characters), where the command line's argparse
    says their count and leaves them to --help: the count, the first few and where every one is listed."""
    with pytest.raises(ConfigError) as raised:
        check_choices(make())  # (what `validate` checks them with: ScoreConfig's checks its files first)
    said = str(raised.value)
    assert f"is not one of the {len(SAMPLERS)} samplers (default, euler, euler_a, " in said
    assert "textinv.samplers.SAMPLERS lists every one); did you mean 'euler'?" in said
    assert SAMPLERS[-1] not in said and len(said) < 250


def test_a_choice_is_named_as_its_user_wrote_it(tmp_path, capsys):
    """A choice refused from Python said `--sampler 'eulr'`, the command line's flag, where a type refused said
    `sampler=`: Python's keyword from Python, the flag on the command line (a --config file's keys too)."""
    from textinv.cli import main

    with pytest.raises(ConfigError, match=r"^precision='no' is the diffusers script's and accelerate's word"):
        GenerateConfig(prompt=["a"], precision="no").validate()
    config = tmp_path / "g.yaml"
    config.write_text(f"sampler: eulr\nout: {tmp_path / 'out'}\nprompt: [x]\n")
    assert main(["generate", "--config", str(config)]) == 2
    assert "error: --sampler 'eulr' is not one of the " in (err := capsys.readouterr().err)
    assert "textinv generate --help lists every one); did you mean 'euler'?" in err
    with pytest.raises(ConfigError, match=r"^sampler='eulr' is not"):  # (the command line's run is over)
        GenerateConfig(prompt=["a"], sampler="eulr").validate()


# (command, the settings given, as flags, the refusal from Python, on the command line): each names the setting as
# its user wrote it, where every one of them named the flag to Python callers too
NAMED = [
    ("train", dict(steps=0), ["--steps", "0"],
     "steps= must be a whole number >= 1, got 0", "--steps must be a whole number >= 1, got 0"),
    ("train", dict(lr=-1.0), ["--lr", "-1"], "lr= must be > 0", "--lr must be > 0"),
    ("train", dict(random_crop=True, center_crop=False), ["--random-crop", "--no-center-crop"],
     "random_crop= and center_crop=False: squashed", "--random-crop and --no-center-crop: squashed"),
    ("train", dict(lr_cycles=3), ["--lr-cycles", "3"],
     "lr_cycles=3 shapes lr_schedule='cosine_with_restarts', and the schedule is constant: give "
     "lr_schedule='cosine_with_restarts', or leave out lr_cycles=",
     "--lr-cycles 3 shapes --lr-schedule cosine_with_restarts, and the schedule is constant: give "
     "--lr-schedule cosine_with_restarts, or leave out --lr-cycles"),
    ("train", dict(validation_split=0.2, validate_every=0), ["--validation-split", "0.2", "--validate-every", "0"],
     "validate_every=0 with validation_split=0.2: the pictures held out would never be scored; give validate_every= N",
     "--validate-every 0 with --validation-split 0.2: the pictures held out would never be scored; give "
     "--validate-every N"),
    ("train", dict(min_timestep=10, max_timestep=5), ["--min-timestep", "10", "--max-timestep", "5"],
     "max_timestep= must be a whole number above min_timestep= (10)",
     "--max-timestep must be a whole number above --min-timestep (10)"),
    ("train", dict(steps=5, epochs=2), ["--steps", "5", "--epochs", "2"],
     "give the run's length as steps= or as epochs=, not both", "give the run's length as --steps or as --epochs"),
    ("train", dict(optimizer_args=["lr=0.1"]), ["--optimizer-args", "lr=0.1"],
     "optimizer_args='lr=...': give it as lr= ", "--optimizer-args lr=...: give it as --lr "),
    ("train", dict(resolution=[512, 770]), ["--resolution", "512x770"],
     "resolution's height must be a multiple of 8", "--resolution's height must be a multiple of 8"),
    ("generate", dict(guidance=-1.0), ["--guidance", "-1"],
     "guidance= must be at least 1 (1 turns guidance off), got -1", "--guidance must be at least 1"),
    ("generate", dict(n=0), ["-n", "0"], "n= must be >= 1, got 0", "-n must be >= 1, got 0"),
    ("generate", dict(hires_steps=4), ["--hires-steps", "4"],
     "hires_steps= sets the hires fix, which hires_scale= (or hires_width= and hires_height=) turns on; add it, "
     "e.g. hires_scale=2",
     "--hires-steps sets the hires fix, which --hires-scale (or --hires-width and --hires-height) turns on; add it, "
     "e.g. --hires-scale 2"),
    ("generate", dict(eta=2.0), ["--eta", "2"], "eta= must be from 0 to 1", "--eta must be from 0 to 1"),
    ("generate", dict(width=100), ["--width", "100"],
     "width= must be a multiple of 8 pixels, got 100", "--width must be a multiple of 8 pixels, got 100"),
    ("generate", dict(variation_seed=5), ["--variation-seed", "5"],
     "variation_seed= needs variation_strength=", "--variation-seed needs --variation-strength"),
    ("score", dict(n=0), ["-n", "0"], "n= must be a whole number >= 1, got 0", "-n must be a whole number >= 1"),
    ("score", dict(description=" "), ["--description", " "], "description= is empty", "--description is empty"),
]


@pytest.mark.parametrize("command, settings, flags, python, command_line", NAMED,
                         ids=[f"{c[0]}-{'-'.join(c[1])}" for c in NAMED])
def test_a_refused_setting_is_named_as_its_user_wrote_it(command, settings, flags, python, command_line, tmp_path,
                                                           capsys):
    """`TrainConfig(steps=0)` was told of --steps and `GenerateConfig(guidance=-1)` of --guidance, flags a notebook
    never typed: from Python a refusal names the keyword (and no flag), on the command line the flag, as before."""
    from textinv.cli import main

    embedding = tmp_path / "e.safetensors"
    embedding.write_bytes(b"")  # (score's check that it exists comes first; nothing reads it)
    given = {"train": (TrainConfig, dict(images=str(tmp_path), token="<zq>", out=str(tmp_path / "o"))),
             "generate": (GenerateConfig, dict(prompt=["a"], out=str(tmp_path / "g"))),
             "score": (ScoreConfig, dict(embedding=str(embedding)))}
    make, base = given[command]
    with pytest.raises(ConfigError) as raised:
        make(**base, **settings).validate()
    assert python in str(raised.value)
    assert not re.search(r"(?<![\w-])--?[a-z]", str(raised.value)), str(raised.value)
    argv = [command] + [item for key, value in base.items()
                        for item in (f"--{key}", value[0] if isinstance(value, list) else value)] + flags
    assert main(argv) == 2
    assert f"error: {command_line}" in capsys.readouterr().err


RUN_REFUSALS = [  # (what the run's folder holds, the settings beside it, from Python, on the command line)
    (None, dict(resume=True), "check out=, or start a new run without resume=True",
     "check --out, or start a new run without --resume"),
    ("model: [cut", dict(resume=True), "put back a copy of it, or start the run again with overwrite=True",
     "put back a copy of it, or start the run again with --overwrite"),
    (None, dict(init="<|endoftext|>"), "use a plain word close to your concept, e.g. init='dog'",
     "use a plain word close to your concept, e.g. --init dog"),
]


@pytest.mark.parametrize("saved, settings, python, command_line", RUN_REFUSALS,
                         ids=["no-run", "damaged-record", "init"])
def test_a_refusal_once_the_run_starts_names_settings_as_its_user_wrote_them(saved, settings, python, command_line,
                                                                               sd1_dir, images, tmp_path, capsys):
    """`train(dataclasses.replace(config, resume=True))` on a folder without a run, or with its config.yaml
    damaged, was told of --out, --resume and --overwrite, and an init the tokenizer cannot read of --init: flags
    found once the run's folder or model is read, not by `validate`. From Python the keywords, as typed here."""
    from textinv.cli import main
    from textinv.errors import TextinvError

    out = tmp_path / "run"
    if saved is not None:
        out.mkdir()
        (out / "config.yaml").write_text(saved)
    with pytest.raises(TextinvError) as raised:
        train(run_config(images, out, model=str(sd1_dir), **settings), progress=False)
    assert python in str(raised.value)
    assert not re.search(r"(?<![\w-])--?[a-z]", str(raised.value)), str(raised.value)
    flags = [item for key, value in settings.items() for item in [f"--{key}"] + ([] if value is True else [value])]
    argv = ["train", "--images", str(images), "--token", "<zq>", "--model", str(sd1_dir), "--out", str(out), *flags]
    assert main(argv) == 2
    assert command_line in capsys.readouterr().err


def test_a_mistyped_bundled_model_names_the_nearest(capsys):
    """`load_model("shapez")` listed the bundled models without the one meant, where a mistyped choice names it;
    the command line's --model says it too."""
    from textinv.cli import main

    with pytest.raises(ModelError, match=r"Bundled models: shapes; did you mean 'shapes'\?$"):
        load_model("shapez")
    assert main(["generate", "--prompt", "x", "--model", "shapez"]) == 2
    assert "did you mean 'shapes'?" in capsys.readouterr().err


def test_a_config_of_another_command_is_refused_by_name(sd1_dir, tmp_path):
    """`train(GenerateConfig(...))`, or a dict of settings, failed with an AttributeError deep in the call."""
    with pytest.raises(ConfigError, match=r"config= takes a TrainConfig, got GenerateConfig; GenerateConfig holds "
                                          r"the settings of generate\(\)"):
        train(GenerateConfig(prompt=["a"]), progress=False)
    with pytest.raises(ConfigError, match=r"takes a GenerateConfig, got dict; pass GenerateConfig\(\*\*settings\)"):
        generate({"prompt": ["a"]}, progress=False)
    with pytest.raises(ConfigError, match=r"takes a MergeConfig, got TrainConfig"):
        merge(TrainConfig(images="pics"))
    with pytest.raises(ConfigError, match=r"takes a ScoreConfig, got str"):
        score("runs/zq", progress=False)


def test_pictures_in_memory_are_refused_with_how_to_save_them(images, tmp_path):
    """images= is a folder (recorded in config.yaml, read again by --resume); a list of PIL pictures failed in
    pathlib with a TypeError. A Path is a folder like a str."""
    from PIL import Image

    pictures = [Image.open(p) for p in sorted(images.glob("*.png"))]
    with pytest.raises(ConfigError, match=r"images= takes text or a Path, got list .*save the pictures into a "
                                          r"folder first"):
        run_config(pictures, tmp_path / "o").validate()
    run_config(images, tmp_path / "o").validate()  # (a Path)


@pytest.mark.parametrize("given", ["name", "pipeline"])
def test_a_model_argument_that_is_no_loaded_model_is_refused(given, sd1_dir, images, tmp_path):
    """model="shapes" or a diffusers pipeline failed with an AttributeError (no .unet / no .check_trainable), after
    the output folder was made."""
    model = str(sd1_dir) if given == "name" else load_model(sd1_dir).pipeline
    what = "got str" if given == "name" else "got StableDiffusionPipeline"
    with pytest.raises(ModelError, match=f"model= takes a Model from textinv.models.load_model, {what}"):
        train(run_config(images, tmp_path / "o"), model=model, progress=False)
    with pytest.raises(ModelError, match=what):
        generate(GenerateConfig(prompt=["a photo"], out=str(tmp_path / "r")), model=model, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_load_model_leaves_the_warning_filters_as_they_were(sd1_dir):
    """load_model added an "ignore" filter for diffusers' torch_dtype notice to the process's warning filters, where
    it stayed, hiding that notice from the user's own diffusers calls."""
    before = list(warnings.filters)
    load_model(sd1_dir)
    assert warnings.filters == before


def readme_python_blocks() -> list[str]:
    """The ```python blocks of the README's "Use from Python" section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example, verbatim, on the bundled model: train, generate, diffusers' load_textual_inversion,
    pictures into memory, save and convert. The documented API cannot change without this failing."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 2, "the README's 'Use from Python' section lost its examples"
    shutil.copytree(ROOT / "examples" / "teal-star", tmp_path / "examples" / "teal-star")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    assert scope["result"].files == [tmp_path / "runs" / "teal-star" / "learned_embeds.safetensors"]
    assert len(scope["pictures"]) == 4 and all(Path(p).is_file() for p in scope["pictures"])
    assert (tmp_path / "teal-star-diffusers.png").is_file()
    assert [image.size for image in scope["images"]] == [(64, 64)] * 2
    assert len(scope["model"].pipeline.tokenizer) == len(load_model("shapes").pipeline.tokenizer)  # (unloaded)
    assert (tmp_path / "teal-star.pt").is_file() and (tmp_path / "teal-star-kohya.safetensors").is_file()


def test_generate_leaves_the_callers_config_and_tokenizer_as_they_were(sd1_dir, images, tmp_path):
    """generate() wrote the seed --seed -1 drew into the caller's config, so the same config run again in a notebook
    drew that seed again instead of a new one; and it added the embedding's tokens to the model's own tokenizer
    object, handing back a copy: a tokenizer kept from before (or shared by a pipeline made of the model's
    components) kept the tokens while the text encoder lost their rows, and the copy decoded "a</w>photo</w>"."""
    from textinv.formats import LearnedEmbedding, save_embedding

    model = load_model(sd1_dir)
    tokenizer, size = model.tokenizer, len(model.tokenizer)
    ids = tokenizer(["a photo of a dog"]).input_ids
    file = save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "zq.safetensors")[0]
    config = GenerateConfig(prompt=["a photo of <zq>"], embedding=[str(file)], seed=-1, n=1, steps=1,
                            out=str(tmp_path / "r"))
    generate(config, model=model, progress=False)
    assert config.seed == -1
    assert model.tokenizer is tokenizer and len(tokenizer) == size
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == ["a photo of a dog"]


def test_a_tokenizer_copy_decodes_as_the_original(sd1_dir):
    """The copy the tokens go into (`tokenizer_copy`) decodes as the original: a plain deep copy of transformers'
    CLIP tokenizer loses the wrapper that reads the end-of-word marker as a space."""
    from textinv.tokens import tokenizer_copy

    tokenizer = load_model(sd1_dir).tokenizer
    ids = tokenizer(["a photo of a dog"]).input_ids
    assert tokenizer_copy(tokenizer).batch_decode(ids, skip_special_tokens=True) == ["a photo of a dog"]


def test_a_tokenizer_copy_shares_only_its_merge_list_with_the_original(sd1_dir):
    """The copy shares the merge list (read only when the tokenizer is made; half the time of a deep copy of SD's),
    and the tokens added to it are its own."""
    from textinv.tokens import tokenizer_copy

    tokenizer = load_model(sd1_dir).tokenizer
    if not hasattr(tokenizer, "_merges"):
        pytest.skip("a transformers before 5 keeps no merge list on the tokenizer")
    copied, size = tokenizer_copy(tokenizer), len(tokenizer)
    assert copied._merges is tokenizer._merges
    copied.add_tokens(["<zq>"])
    assert len(tokenizer) == size and len(copied) == size + 1
    assert tokenizer("a <zq>").input_ids != copied("a <zq>").input_ids
    assert tokenizer_copy(tokenizer)("a <zq>").input_ids == tokenizer("a <zq>").input_ids


def test_a_warning_of_a_generate_in_a_train_callback_names_the_callbacks_line(sd1_dir, images, tmp_path):
    """A warning names the innermost marked call the user's own code made (`errors.warn`): a generate() the user's
    on_step callback ran inside train() named the `train(...)` line, the outermost such call, not the callback's."""
    import inspect

    from conftest import train_config
    from textinv.formats import LearnedEmbedding, save_embedding

    drawing_model = load_model(sd1_dir)
    long = save_embedding(LearnedEmbedding("<long>", {"text_encoder": torch.randn(80, 32)}), tmp_path / "l.safetensors",
                          "diffusers")[0]
    lines = []

    def on_step(step):
        if step == 1:
            lines.append(inspect.currentframe().f_lineno + 1)
            generate(GenerateConfig(prompt=["a <long>"], embedding=[str(long)], n=1, steps=1, out=str(tmp_path / "r")),
                     model=drawing_model, progress=False)

    with pytest.warns(UserWarning, match="has 80 vectors") as said:
        train(train_config(images, tmp_path / "run", steps=1), model=load_model(sd1_dir), progress=False,
              on_step=on_step)
    assert {(w.filename, w.lineno) for w in said if "has 80 vectors" in str(w.message)} == {(__file__, lines[0])}


def test_generate_hands_back_a_model_with_an_embedding_installed_as_it_came(sd1_dir, tmp_path):
    """A model holding an embedding the notebook installed (install_embedding, as the README offers) kept every
    embedding generate() added to it: the next generate() with the same file was refused, its token "already in the
    tokenizer's vocabulary"."""
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.generate import install_embedding, unload_embeddings

    model = load_model(sd1_dir)
    size = len(model.tokenizer)
    install_embedding(model, LearnedEmbedding("<mine>", {"text_encoder": torch.randn(1, 32)}))
    tokenizer, table = model.tokenizer, model.text_encoder.get_input_embeddings()
    file = save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "zq.safetensors")[0]
    for k in range(2):
        generate(GenerateConfig(prompt=["a photo of <mine> <zq>"], embedding=[str(file)], n=1, steps=1,
                                out=str(tmp_path / f"r{k}")), model=model, progress=False)
        assert model.tokenizer is tokenizer and len(tokenizer) == size + 1
        assert model.text_encoder.get_input_embeddings() is table
    unload_embeddings(model)  # (what the notebook installed is still its own to take out)
    assert len(model.tokenizer) == size


def test_prompts_as_a_tuple_draw_as_a_list_does(sd1_dir, tmp_path):
    """check_types lets a tuple stand for a list, but generate() then failed inside, joining the prompts to a list:
    TypeError: can only concatenate tuple (not "list") to tuple."""
    model = load_model(sd1_dir)
    config = GenerateConfig(prompt=("a photo", "a dog"), n=1, steps=1, out=str(tmp_path / "r"))
    assert len(generate(config, model=model, progress=False)) == 2
    assert config.prompt == ("a photo", "a dog")  # (the caller's config as it was)


def test_warnings_raised_inside_generate_merge_and_a_plot_name_the_line_that_called_them(sd1_dir, tmp_path):
    """generate()'s warnings named lines inside textinv (checked_settings' and install_embedding's own callers),
    merge()'s one inside merge.py, a plot's cells' the line in xyz.py that draws each cell: a warning names the
    caller's line as train()'s do (`errors.warns_at_caller`), the outermost such call's where one runs another."""
    from textinv.config import MergeConfig
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.merge import merge

    model = load_model(sd1_dir)
    long = save_embedding(LearnedEmbedding("<long>", {"text_encoder": torch.randn(80, 32)}), tmp_path / "l.safetensors",
                          "diffusers")[0]
    xl = LearnedEmbedding("<xl>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 64)})
    xl = save_embedding(xl, tmp_path / "xl.safetensors", "sdxl")[0]
    drawing = dict(prompt=["a cat"], embedding=[str(long)], n=1, steps=1, out=str(tmp_path / "r"))
    with pytest.warns(UserWarning) as said:
        generate(GenerateConfig(**drawing), model=model, progress=False)
        merge(MergeConfig(out=str(tmp_path / "m.pt"), token="<m>", terms=[str(xl)]), model=model)
        generate(GenerateConfig(**drawing, x="steps=1,2"), model=model, progress=False)
    messages = "\n".join(str(w.message) for w in said)
    for what in ("is in no prompt= or negative_prompt=", "has 80 vectors", "only its clip_l half"):
        assert what in messages, what
    assert [(w.filename, w.lineno) for w in said if w.filename != __file__] == []


@pytest.mark.parametrize("settings", [{}, {"x": "steps=1,2"}], ids=["pictures", "xyz-plot"])
def test_generate_returns_absolute_paths_as_train_does(settings, sd1_dir, tmp_path, monkeypatch):
    """train() returned its files absolute and generate() its pictures as `out` was given (`renders/000-...png`):
    a path kept in a notebook named another file once the working directory changed."""
    monkeypatch.chdir(tmp_path)
    paths = generate(GenerateConfig(prompt=["a dog"], n=1, steps=1, out="renders", **settings),
                     model=load_model(sd1_dir), progress=False)
    assert paths and all(p.is_absolute() and p.parent == tmp_path / "renders" and p.is_file() for p in paths)


def test_building_a_tiny_model_leaves_the_callers_random_numbers_alone():
    """build_tiny_pipeline (and the SDXL and CLIP builders) seeded torch's global generator and left it there: a
    notebook's torch.rand after building one gave the build seed's numbers, not its own."""
    from textinv.tiny import build_tiny_clip, build_tiny_pipeline, build_tiny_xl_pipeline, build_tiny_xl_refiner

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_xl_refiner(build_tiny_xl_pipeline())
    build_tiny_pipeline("sd2")
    build_tiny_clip()
    assert torch.equal(torch.rand(4), expected)
    # (and the seed still gives the weights it gave)
    weights = build_tiny_pipeline("sd1", seed=4).unet.conv_in.weight
    torch.manual_seed(0)
    assert torch.equal(build_tiny_pipeline("sd1", seed=4).unet.conv_in.weight, weights)


def test_train_and_generate_leave_the_callers_random_numbers_alone(sd1_dir, images, tmp_path):
    """A notebook's own random numbers after a run are what they would have been without it: each run draws from
    generators of its own. A seed (or variation seed) of -1 took Python's global generator a step on, and one that
    the notebook had seeded gave the same "random" seed every time."""
    import random

    import numpy as np

    def draws():
        return random.random(), np.random.random(), torch.rand(1).item()

    def seeded():
        random.seed(5), np.random.seed(5), torch.manual_seed(5)

    seeded()
    expected = draws()
    seeded()
    model = load_model(sd1_dir)
    train(run_config(images, tmp_path / "o", flip=True), model=model, progress=False)
    paths = [generate(GenerateConfig(prompt=["a photo"], seed=-1, variation_strength=0.5, steps=2,
                                     out=str(tmp_path / f"r{i}")), model=model, progress=False)[0] for i in (1, 2)]
    assert draws() == expected
    assert paths[0].name != paths[1].name  # (-1 drew a seed each time, its name in the file name)


@pytest.mark.parametrize("name, fits", [("dog.pt", "'a1111' or 'diffusers-bin'"), ("dog.bin", "'diffusers-bin' or 'a1111'"),
                                        ("dog.png", "'a1111-png'")])
def test_saving_under_another_formats_suffix_names_the_format_that_takes_it(name, fits, tmp_path):
    """save_embedding(emb, "dog.pt", format="diffusers") said only "pick another format"."""
    from textinv.formats import LearnedEmbedding, save_embedding

    emb = LearnedEmbedding("<dog>", {"text_encoder": torch.zeros(1, 32)}, {})
    with pytest.raises(FormatError, match=rf"a 'diffusers' file must end in \.safetensors .*, or pick another format "
                                          rf"\({name[3:]} is {fits}\)$"):
        save_embedding(emb, tmp_path / name, format="diffusers")


def test_render_and_install_embedding_refuse_what_they_do_not_take_by_name(sd1_dir, tmp_path):
    """render("a photo", ...) drew one prompt per letter into diffusers' batch-size error, too few seeds failed
    there too, and install_embedding(model, PATH) raised an AttributeError ('PosixPath' has no 'widths')."""
    from textinv.generate import install_embedding, render

    model = load_model(sd1_dir)
    with pytest.raises(ConfigError, match=r"render takes a list of prompts, got str 'a photo'; e\.g\. \['a photo'\]"):
        render(model, "a photo", seeds=[0], steps=2)
    with pytest.raises(ConfigError, match=r"one seed for each prompt: got seeds=\[0\] for 2 prompt\(s\); e\.g\. "
                                          r"seeds=list\(range\(2\)\)"):
        render(model, ["a photo", "a dog"], seeds=[0], steps=2)
    with pytest.raises(FormatError, match=r"install_embedding takes a LearnedEmbedding, got PosixPath; pass "
                                          r"load_embedding\('.*dog\.pt'\)"):
        install_embedding(model, tmp_path / "dog.pt")
    assert len(render(model, ("a photo",), seeds=range(1), steps=2)) == 1


def test_every_warning_textinv_raises_is_a_textinv_warning(sd1_dir, images, tmp_path):
    """A notebook could not silence textinv's notes as a whole: a plain note was a bare UserWarning, and a
    module="textinv" filter misses them all, as they name the caller's line. TextinvWarning is every one's base."""
    from textinv.errors import TextinvWarning

    model = load_model(sd1_dir)

    def run(out):
        train(run_config(images, tmp_path / out, resolution=32), model=model, progress=False)  # 24px: upscaled
        generate(GenerateConfig(prompt=["a photo of <nope>"], steps=2, out=str(tmp_path / out / "r")), model=model,
                 progress=False)  # (a word the model does not know)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run("a")
    ours = [w for w in seen if w.filename == __file__]
    assert len(ours) >= 2 and all(issubclass(w.category, TextinvWarning) for w in ours), [
        (w.category, str(w.message)[:80]) for w in ours]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=TextinvWarning)
        run("b")
    assert [w for w in seen if w.filename == __file__] == []


def test_merge_leaves_the_callers_config_as_it_was(tmp_path):
    """merge validated the caller's own MergeConfig, which turned its Paths into text (and the web UI's names into
    textinv's): a notebook's config changed under it, as generate's no longer does."""
    import copy

    from textinv.formats import LearnedEmbedding, save_embedding

    save_embedding(LearnedEmbedding("<dog>", {"text_encoder": torch.ones(1, 32)}, {}), tmp_path / "dog.pt", "a1111")
    config = MergeConfig(out=tmp_path / "mix.pt", token="<mix>", terms=[f"{tmp_path / 'dog.pt'}*0.5"])
    given = copy.deepcopy(config)
    result = merge(config)
    assert config == given and isinstance(config.out, Path)
    assert result.files == [tmp_path / "mix.pt"]


def test_merge_returns_absolute_paths_as_train_does(tmp_path, monkeypatch):
    """merge's files were as given (relative), where train's, generate's and score's are absolute."""
    from textinv.formats import LearnedEmbedding, save_embedding

    monkeypatch.chdir(tmp_path)
    save_embedding(LearnedEmbedding("<dog>", {"text_encoder": torch.ones(1, 32)}, {}), "dog.pt", "a1111")
    result = merge(MergeConfig(out="mix.pt", token="<mix>", terms=["dog.pt*0.5"]))
    assert result.files == [tmp_path / "mix.pt"]
    assert "report" not in repr(result)  # (its summary, a screenful where a notebook shows the result)


def test_save_embedding_takes_its_format_from_the_suffix_as_convert_does(tmp_path):
    """save_embedding(emb, "dog.pt") refused the name, as its format was diffusers whatever the suffix, where
    convert picks the format from it: one rule for both, and a format the suffix contradicts refused naming both."""
    from textinv.formats import convert, detect_format, save_embedding

    emb = LearnedEmbedding("<dog>", {"text_encoder": torch.ones(1, 32)})
    for name, format in (("dog.pt", "a1111"), ("dog.bin", "diffusers-bin"), ("dog.png", "a1111-png"),
                         ("dog.safetensors", "diffusers")):
        assert detect_format(save_embedding(emb, tmp_path / name)[0]) == format, name
        assert detect_format(convert(tmp_path / "dog.pt", tmp_path / f"c-{name}")[0]) == format, name
    assert save_embedding(emb, tmp_path / "old.pt", format="diffusers-bin")  # (an old diffusers .pt, when named)
    xl = LearnedEmbedding("<xl>", {"text_encoder": torch.ones(1, 32), "text_encoder_2": torch.ones(1, 64)})
    assert detect_format(save_embedding(xl, tmp_path / "xl.safetensors")[0]) == "sdxl"
    assert len(save_embedding(xl, f"{tmp_path}/x/", format="diffusers")) == 2  # (diffusers-sdxl, as convert's)
    for save in (lambda: save_embedding(emb, tmp_path / "k.pt", format="kohya"),
                 lambda: convert(tmp_path / "dog.pt", tmp_path / "k.pt", to="kohya")):
        with pytest.raises(FormatError, match=r"a 'kohya' file must end in .safetensors .*\(.pt is 'a1111' or"):
            save()
    with pytest.raises(FormatError, match=r"dog.txt: cannot tell the format from the extension '.txt'"):
        save_embedding(emb, tmp_path / "dog.txt")


def test_convert_and_save_embedding_return_absolute_paths_as_train_does(tmp_path, monkeypatch):
    """They returned the paths as given, where train, generate, score and merge return them absolute: a notebook
    that changed its working directory lost them."""
    from textinv.formats import convert, save_embedding

    monkeypatch.chdir(tmp_path)
    emb = LearnedEmbedding("<dog>", {"text_encoder": torch.ones(1, 32)})
    assert save_embedding(emb, "dog.pt") == [tmp_path / "dog.pt"]
    assert convert("dog.pt", "dog.safetensors") == [tmp_path / "dog.safetensors"]


def test_a_train_result_shows_short():
    """A TrainResult shown in a notebook printed every vector's numbers and every logged loss: a screenful, where
    score's and merge's results show short."""
    from textinv.train import TrainResult

    emb = LearnedEmbedding("<dog>", {"text_encoder": torch.randn(2, 32)}, {"steps": 3})
    result = TrainResult(emb, [Path("/r/learned_embeds.safetensors")], 300, [(step, 0.1) for step in range(300)],
                         [emb], [(100, 0.2)])
    assert repr(result) == ("TrainResult(embedding=LearnedEmbedding(token='<dog>', vectors={'text_encoder': (2, 32)}, "
                            "metadata=<1 keys>), files=[PosixPath('/r/learned_embeds.safetensors')], steps=300)")
