"""kohya's sample prompts file (`--sample-prompts FILE`): read as sd-scripts reads it, each prompt's options drawn
in the sample grids, recorded in config.yaml so a resume needs no file; prompts without options draw as they did."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from textinv.cli import main
from textinv.config import TrainConfig, build, config_file_settings
from textinv.errors import ConfigError
from textinv.generate import make_grid, render
from textinv.models import load_model
from textinv.sample_prompts import SamplePrompt
from textinv.train import sample_grid, train
from conftest import saved_whole

TXT = """# sample prompts for <zq>
a photo of <zq>

  # an indented note
<zq> on grass --n blurry, lowres --d 42 --l 5 --s 3 --ss k_euler_a --W 24 --h 8
a painting of {} --d 7
"""
READ = ["a photo of <zq>",
        {"prompt": "<zq> on grass", "negative_prompt": "blurry, lowres", "seed": 42, "guidance": 5.0, "steps": 3,
         "sampler": "euler_a", "width": 24, "height": 8},
        {"prompt": "a painting of {}", "seed": 7}]


def read(tmp_path, text, name="p.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return TrainConfig(images="x", token="<zq>", out="o", sample_prompts=[str(path)]).validate().sample_prompts


def test_a_kohya_txt_file_is_read_as_kohya_reads_it(tmp_path):
    """A prompt a line, blank and # lines left out, each line cut at " --" into the prompt and its options (names in
    any case); a prompt without options stays text, one with them a mapping of textinv's names (kohya's sampler
    names as textinv's)."""
    assert read(tmp_path, TXT) == READ
    assert read(tmp_path, "\ufeffa photo of {} --\n") == ["a photo of {}"]  # (a BOM; an empty option, as kohya)
    (tmp_path / "u16.txt").write_text("a photo of {} --d 3\n", encoding="utf-16")  # (Notepad's "Unicode")
    assert TrainConfig(images="x", token="<zq>", out="o", sample_prompts=[str(tmp_path / "u16.txt")]).validate() \
        .sample_prompts == [{"prompt": "a photo of {}", "seed": 3}]


def test_the_toml_and_json_forms_give_what_the_txt_gives(tmp_path):
    """kohya's .toml: [prompt]'s keys shared by every [[prompt.subset]] (a subset's own over them); its .json: a list
    of lines or mappings of the same keys."""
    toml = """
[prompt]
width = 16
height = 16

  [[prompt.subset]]
  prompt = "a photo of <zq>"

  [[prompt.subset]]
  prompt = "<zq> on grass"
  negative_prompt = "blurry, lowres"
  seed = 42
  scale = 5
  sample_steps = 3
  sample_sampler = "euler_a"
  width = 24
  height = 8
"""
    shared = {"width": 16, "height": 16}
    assert read(tmp_path, toml, "p.toml") == [{"prompt": "a photo of <zq>", **shared}, READ[1]]
    entries = ["a photo of <zq>", {"prompt": "<zq> on grass", "negative_prompt": "blurry, lowres", "seed": 42,
                                   "scale": 5, "sample_steps": 3, "sample_sampler": "k_euler_a", "width": 24,
                                   "height": 8}, "a painting of {} --d 7"]
    assert read(tmp_path, json.dumps(entries), "p.json") == READ


@pytest.mark.parametrize("given, ours", [("heun", "heun"), ("k_dpm_2", "dpm2"), ("dpm_2", "dpm2"),
                                          ("k_dpm_2_a", "dpm2_a"), ("DPM_2_A", "dpm2_a"), ("dpmsingle", "dpm++2s"),
                                          ("plms", "plms"), ("dpm2_a_karras", "dpm2_a_karras"), ("lms", "lms"),
                                          ("k_lms", "lms"), ("ddpm", "ddpm")])
def test_kohyas_heun_dpm_2_and_dpmsingle_are_taken_as_textinvs_samplers(tmp_path, given, ours):
    """kohya's heun, dpm_2, dpm_2_a (with or without k_) and dpmsingle were refused as samplers textinv lacked; they
    are the diffusers schedulers textinv now draws as heun, dpm2, dpm2_a and dpm++2s (and textinv's names pass)."""
    assert read(tmp_path, f"a photo of {{}} --ss {given}\n")[0]["sampler"] == ours


@pytest.mark.parametrize("line, said", [
    ("a {} --x 3", r"line 2: --x is none of the options of kohya's sample prompts .* --d \(the seed\)"),
    ("a {} --d42", r"line 2: --d42 .*write a space before its value \(--d 42\)"),
    ("a {} --cn pose.png", "line 2: --cn gives a ControlNet's picture.*; remove the option"),
    ("a {} --i photo.png", "line 2: --i gives an inpainting model's source picture"),
    ("a {} --ss dpmsolver", "line 2: --ss 'dpmsolver' is kohya's sampler; use one of: ddim, ddpm, euler"),
    ("a {} --ss pndm", "line 2: --ss 'pndm' is kohya's sampler"),  # (Runge-Kutta warm-up: not textinv's plms)
    ("a {} --ss fast", "line 2: --ss 'fast' is no sampler textinv knows"),
    ("a {} --w 500", "line 2: --w must be a multiple of 8 pixels, got 500; the nearest: 496 or 504"),
    ("a {} --d -1", r"line 2: --d takes a whole number \(the seed\), got '-1'"),
    ("a {} --l 0.5", "line 2: --l must be a finite number of at least 1"),
    ("a {} --s 0", "line 2: --s must be from 1 to 1000"),
    ("a {} --s 1001", r"line 2: --s must be from 1 to 1000 \(the denoising steps; kohya takes a .txt line's --s out "
                      r"of that range as its nearest end\), got 1001"),
    ("a {} --d 1 --d 2", "line 2: --d is given twice"),
    ("a {} --n", r"line 2: --n needs a value \(the negative prompt\)"),
    ("a dog --d 3", "sample prompt 'a dog' has no '{}'"),
])
def test_an_option_textinv_cannot_draw_with_is_refused_naming_the_line(tmp_path, line, said):
    """sd-scripts skips an option it does not know, or a value it cannot read, silently: `--sd 42` would draw at
    another seed than meant. Here each is refused with the file, the line and the fix."""
    with pytest.raises(ConfigError, match=said):
        read(tmp_path, f"a photo of {{}}\n{line}\n")


@pytest.mark.parametrize("space, said", [("\t", "a tab"), ("\u00a0", "a no-break space"),
                                         ("\u3000", "a full-width space")])
def test_an_option_after_a_tab_or_another_space_is_refused_not_drawn_as_words(tmp_path, space, said):
    """kohya cuts a line only at " --": after a tab (a spreadsheet's), a no-break space (a web page's) or a
    full-width one (a Japanese IME's) the option would be words of the prompt, and the picture drawn without it."""
    with pytest.raises(ConfigError, match=f"line 1: --d follows {said}, not a plain space, .*; put a plain space "
                                          f"before --d"):
        read(tmp_path, f"a photo of {{}}{space}--d 42\n")
    with pytest.raises(ConfigError, match=f"line 1: --s follows {said}"):  # (in an option's value too)
        read(tmp_path, f"a photo of {{}} --n blurry,{space}--s 20\n")
    # after the option's name any space will do, as between a prompt's words
    assert read(tmp_path, f"a photo of {{}} --d{space}42 --s  20\n") == [{"prompt": "a photo of {}", "seed": 42,
                                                                           "steps": 20}]


@pytest.mark.parametrize("name, text", [("p.txt", ""), ("p.json", ""), ("p.toml", "\n"), ("p.json", "\ufeff ")])
def test_an_empty_file_is_said_to_hold_no_prompt_whatever_its_form(tmp_path, name, text):
    with pytest.raises(ConfigError, match=f"{name}' holds no prompt"):
        read(tmp_path, text, name)


def test_the_mappings_keys_are_checked_as_the_lines_options(tmp_path):
    with pytest.raises(ConfigError, match=r"p.json entry 1: unknown key 'steps' \(textinv's name; kohya's is "
                                          r"'sample_steps'\)"):
        read(tmp_path, json.dumps([{"prompt": "a {}", "steps": 3}]), "p.json")
    with pytest.raises(ConfigError, match=r"p.toml \[\[prompt.subset\]\] 1: controlnet_image gives a ControlNet"):
        read(tmp_path, '[prompt]\n[[prompt.subset]]\nprompt = "a {}"\ncontrolnet_image = "c.png"\n', "p.toml")
    with pytest.raises(ConfigError, match=r"p.toml \[\[prompt.subset\]\] 1 has no prompt"):
        read(tmp_path, "[prompt]\n[[prompt.subset]]\nseed = 3\n", "p.toml")
    with pytest.raises(ConfigError, match=r"must hold kohya's \[prompt\] table"):
        read(tmp_path, 'prompt = "a {}"\n', "p.toml")
    with pytest.raises(ConfigError, match="seed must be a whole number"):
        read(tmp_path, json.dumps([{"prompt": "a {}", "seed": "42"}]), "p.json")
    # (kohya passes a mapping's sample_steps to its sampler unclamped, which refuses more than the 1000 noise levels)
    with pytest.raises(ConfigError, match=r"p.toml \[\[prompt.subset\]\] 1: sample_steps must be from 1 to 1000"):
        read(tmp_path, '[prompt]\nsample_steps = 5000\n[[prompt.subset]]\nprompt = "a {}"\n', "p.toml")
    assert read(tmp_path, json.dumps([{"prompt": "a {}", "sample_steps": 1000}]), "p.json") == [
        {"prompt": "a {}", "steps": 1000}]


def test_an_option_kohyas_sd_sampling_leaves_unused_is_warned_about_and_left_out(tmp_path):
    with pytest.warns(UserWarning, match=r"line 1: --g left out: it is FLUX's guidance .* \(--l is the CFG scale\)"):
        assert read(tmp_path, "a photo of {} --g 3.5 --d 2\n") == [{"prompt": "a photo of {}", "seed": 2}]


def test_a_file_that_is_not_there_is_refused_not_drawn_as_a_prompt(tmp_path):
    """An entry ending in .txt, .toml or .json names a file; a missing one is an error naming it (a resume is told
    the run recorded what it read), not a prompt without a token."""
    for entries, said in (([str(tmp_path / "gone.txt")], f"sample_prompts='{tmp_path / 'gone.txt'}' does not exist"),
                          ([str(tmp_path)], "has no '{}'"),  # (no suffix: a prompt, refused as one)
                          ([str(tmp_path / "p.txt"), "a {}"], "not both"),
                          ([str(tmp_path / "empty.txt")], "holds no prompt")):
        (tmp_path / "p.txt").write_text("a {}\n")
        (tmp_path / "empty.txt").write_text("# nothing\n")
        with pytest.raises(ConfigError, match=said):
            TrainConfig(images="x", token="<zq>", out="o", sample_prompts=entries).validate()
    with pytest.raises(ConfigError, match="the resumed run recorded the prompts it read in its config.yaml: leave "
                                          "out sample_prompts="):
        TrainConfig(images="x", token="<zq>", out="o", sample_prompts=["gone.json"], resume=True).validate()


def test_a_config_files_prompts_file_is_read_from_its_folder_and_its_mappings_checked(tmp_path, monkeypatch):
    """`sample_prompts: prompts.txt` in a config file is beside the file, as its other paths are; the mappings
    config.yaml records are taken back (and a kohya key in one is named)."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "prompts.txt").write_text(TXT)
    cfg = tmp_path / "cfg" / "train.yaml"
    cfg.write_text("images: x\ntoken: <zq>\nout: o\nsample_prompts: prompts.txt\n")
    monkeypatch.chdir(tmp_path)
    settings = config_file_settings(TrainConfig, cfg)
    assert settings["sample_prompts"] == [str(tmp_path / "cfg" / "prompts.txt")]
    assert build(TrainConfig, settings).validate().sample_prompts == READ
    cfg.write_text(yaml.safe_dump({"images": "x", "token": "<zq>", "out": "o", "sample_prompts": READ}))
    assert build(TrainConfig, config_file_settings(TrainConfig, cfg)).validate().sample_prompts == READ
    cfg.write_text(yaml.safe_dump({"sample_prompts": [{"prompt": "a {}", "scale": 4}]}))
    with pytest.raises(ConfigError, match=r"unknown key 'scale' \('scale' is kohya's name; textinv's is 'guidance'"):
        build(TrainConfig, config_file_settings(TrainConfig, cfg), {"images": "x", "token": "<t>", "out": "o"}
              ).validate()


# ---------------------------------------------------------------------------------------------------------------
# the grids


@pytest.fixture(scope="module")
def model(sd1_dir):
    return load_model(sd1_dir)


def pixels(image):
    return np.asarray(image)


def test_prompts_without_options_draw_the_grid_they_always_did(model):
    """One pipeline call for the whole grid, picture i at seed + i, as before per-prompt settings (bit for bit)."""
    prompts = ["a photo of dog", "a cat on grass", "a painting of dog"]
    before = make_grid(render(model, prompts, seeds=[5, 6, 7], steps=4, resolution=16), cols=3)
    assert np.array_equal(pixels(sample_grid(model, prompts, 5, 4, 16)), pixels(before))
    assert np.array_equal(pixels(sample_grid(model, [SamplePrompt(p) for p in prompts], 5, 4, 16)), pixels(before))


def test_a_prompts_seed_draws_its_picture_at_that_seed(model):
    with_seed = sample_grid(model, ["a photo of dog", SamplePrompt("a cat on grass", seed=42)], 0, 4, 16)
    at_41 = sample_grid(model, ["a photo of dog", "a cat on grass"], 41, 4, 16)  # (the second at 41 + 1)
    assert np.array_equal(pixels(with_seed)[:, 16:], pixels(at_41)[:, 16:])
    assert not np.array_equal(pixels(with_seed)[:, :16], pixels(at_41)[:, :16])  # (the first at the grid's seed)


def test_a_prompts_own_settings_draw_its_picture_with_them(model):
    """Negative prompt, CFG scale, steps, sampler and size: the picture is the one `render` draws with them (at the
    grid's seed for its place), and differs from the grid's default; a smaller picture sits at its cell's top left."""
    own = dict(negative_prompt="blurry", guidance=3.0, steps=3, sampler="euler_a", width=24, height=8)
    grid = sample_grid(model, ["a photo of dog", SamplePrompt("a cat on grass", **own)], 0, 4, 16)
    assert grid.size == (48, 16)
    alone = render(model, ["a cat on grass"], seeds=[1], resolution=16, **own)[0]
    assert np.array_equal(pixels(grid)[:8, 24:], pixels(alone))
    assert (pixels(grid)[8:, 24:] == 255).all() and (pixels(grid)[:, 16:24] == 255).all()  # (white: the cells' rest)
    first = render(model, ["a photo of dog"], seeds=[0], steps=4, resolution=16)[0]
    assert np.array_equal(pixels(grid)[:, :16], pixels(first))
    for name, value in own.items():  # each setting changes the picture
        if name in ("width", "height"):
            continue
        one = sample_grid(model, [SamplePrompt("a cat on grass", **{name: value})], 1, 4, 16)
        plain = sample_grid(model, ["a cat on grass"], 1, 4, 16)
        assert not np.array_equal(pixels(one), pixels(plain)), name


# ---------------------------------------------------------------------------------------------------------------
# a run


def test_a_run_draws_the_files_prompts_records_them_and_resumes_without_the_file(sd1_dir, images, tmp_path):
    """config.yaml holds the prompts and options the file gave (its header names the file), so the run resumed
    after the file is gone draws the grids the uninterrupted run drew."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TXT.replace("--W 24 --h 8", "--w 24 --h 8").replace("<zq>", "<ZQ>"))  # (the token in any case)
    common = dict(images=str(images), token="<zq>", init="dog", model=str(sd1_dir), batch=2, save_every=1,
                  sample_every=1, sample_steps=3, log_every=1, lr=5e-2, sample_prompts=[str(prompts)])
    train(TrainConfig(out=str(tmp_path / "whole"), steps=2, **common), progress=False)
    text = (tmp_path / "whole" / "config.yaml").read_text()
    assert yaml.safe_load(text)["sample_prompts"] == [p.replace("<zq>", "<ZQ>") if isinstance(p, str) else
                                                      {**p, "prompt": p["prompt"].replace("<zq>", "<ZQ>")}
                                                      for p in READ]
    assert f"# sample_prompts as read from kohya's sample prompts file {prompts}\n" in text
    grid = Image.open(tmp_path / "whole" / "samples" / "step-000002.png")
    assert grid.size == (3 * 24, 16)  # (three cells of the widest picture's width, the tallest's height)

    train(TrainConfig(out=str(tmp_path / "part"), steps=1, **common), progress=False)
    prompts.unlink()
    assert main(["train", "--out", str(tmp_path / "part"), "--resume", "--steps", "2"]) == 0
    for step in ("step-000001.png", "step-000002.png"):
        assert np.array_equal(pixels(Image.open(tmp_path / "part" / "samples" / step)),
                              pixels(Image.open(tmp_path / "whole" / "samples" / step))), step
    assert f"kohya's sample prompts file {prompts}\n" in (tmp_path / "part" / "config.yaml").read_text()
    # given the file again, now gone: refused naming it, and told the run has what it read
    assert main(["train", "--out", str(tmp_path / "part"), "--resume", "--steps", "3", "--sample-prompts",
                 str(prompts)]) == 2


def test_a_negative_prompt_may_name_the_token_as_the_prompt_does(sd1_dir, images, tmp_path):
    """kohya puts its token in the negative prompt too: there, as in the prompt, the token written out is where each
    concept's grid draws its own (`--n <zq>` in <qz>'s grid steers away from <qz>, as `--n {}` does)."""
    from conftest import write_images
    from textinv.run_folder import concept_folder

    other = write_images(tmp_path / "other", n=2, seed=1)
    grids = {}
    for name, negative in (("braces", "{}"), ("token", "<ZQ>"), ("none", None)):
        path = tmp_path / f"{name}.txt"
        path.write_text("a photo of {}" + (f" --n {negative}" if negative else "") + "\n")
        out = tmp_path / name
        train(TrainConfig(concepts=[f"{images}=<zq>=dog", f"{other}=<qz>=cat"], model=str(sd1_dir), out=str(out),
                          steps=1, vectors=2, batch=2, save_every=0, sample_every=1, sample_steps=3,
                          sample_prompts=[str(path)]), progress=False)
        grids[name] = pixels(Image.open(out / concept_folder("<qz>") / "samples" / "step-000000.png"))
    assert np.array_equal(grids["braces"], grids["token"])
    assert not np.array_equal(grids["braces"], grids["none"])


@pytest.mark.filterwarnings("ignore::textinv.data.SmallImageWarning")  # (24 px pictures at the model's 64)
def test_a_grid_sampler_the_models_schedule_refuses_is_refused_before_the_first_step(images, tmp_path):
    """A grid's sampler that cannot sample the model (DPM2 on the bundled model's zero-terminal-SNR schedule) failed
    at the first grid, after the steps before it had run: it is refused once the model is loaded, naming the prompt."""
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    out = tmp_path / "run"
    config = TrainConfig(images=str(images), token="<zq>", model="shapes", out=str(out), steps=2, resolution=64,
                         sample_every=2, sample_steps=2,
                         sample_prompts=["a {}", {"prompt": "{} at night", "sampler": "dpm2"}])
    with pytest.raises(ConfigError, match=r"--sample-prompts '\{\} at night': its sampler dpm2 cannot sample a "
                                          r"model with a zero-terminal-SNR"):
        train(config.validate(), progress=False)
    assert not list(out.glob("checkpoints/*"))
    config.sample_prompts[1]["sampler"] = "dpm++2m_sde"  # (one that can)
    train(config.validate(), progress=False)
    assert (out / "samples" / "step-000002.png").exists()


def test_a_multi_vector_token_the_model_has_saved_in_it_is_drawn_whole_in_the_grids(sd1_dir, images, tmp_path,
                                                                                  monkeypatch):
    """A model the diffusers script saved whole (--save_as_full_pipeline --num_vectors 2) holds `<cat-toy>` and
    `<cat-toy>_1`, and generate draws `<cat-toy>` with both (`tokens.saved_tokens`): the grids drew its first vector
    alone, in the prompt and the negative prompt."""
    import textinv.generate as gen

    saved_whole(sd1_dir, tmp_path / "whole")
    seen = []
    real = gen.render
    monkeypatch.setattr(gen, "render", lambda model, prompts, **k: seen.append((prompts, k["negative_prompt"]))
                        or real(model, prompts, **k))
    grid = {"prompt": "{} beside <cat-toy>", "negative_prompt": "<cat-toy>"}
    train(TrainConfig(images=str(images), token="<zq>", init="dog", model=str(tmp_path / "whole"),
                      out=str(tmp_path / "run"), steps=1, vectors=2, batch=2, save_every=0, sample_every=1,
                      sample_steps=2, sample_prompts=[grid]), progress=False)
    assert seen and all(s == (["<zq> <zq>_1 beside <cat-toy> <cat-toy>_1"], "<cat-toy> <cat-toy>_1") for s in seen)


def test_a_grid_sampler_refused_at_its_steps_fails_the_run_before_the_first_step_naming_the_file_and_line(
        sd1_dir, images, tmp_path):
    """A sample prompt whose sampler cannot draw its steps (TCD beyond the 50 timesteps a TCD model is distilled at)
    was refused at the first grid, after the steps before it had run. It is refused as the run starts, naming the
    file and the line (the grid's --sample-steps where the line gives none; a config file's mapping by its place);
    a ddim_uniform sampler at 30 steps, which ComfyUI draws 31 of, is drawn."""
    import re

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {}\na painting of {} --ss tcd --s 60\n")
    out = tmp_path / "run"
    config = TrainConfig(images=str(images), token="<zq>", init="dog", model=str(sd1_dir), out=str(out), steps=2,
                         save_every=1, sample_every=2, sample_steps=3, sample_prompts=[str(prompts)])
    with pytest.raises(ConfigError, match=re.escape(f"{prompts} line 2: its sampler tcd at 60 steps: TCD takes its "
                                                    f"steps among the 50 timesteps")):
        train(config, progress=False)
    assert not list(out.glob("checkpoints/*"))
    prompts.write_text("a painting of {} --ss tcd\n")
    with pytest.raises(ConfigError, match=r"prompts.txt line 1: its sampler tcd at 51 steps"):
        TrainConfig(images="x", token="<zq>", out="o", sample_steps=51, sample_prompts=[str(prompts)]).validate()
    with pytest.raises(ConfigError, match=r"sample prompt 2: its sampler tcd at 60 steps"):
        TrainConfig(images="x", token="<zq>", out="o",
                    sample_prompts=["a {}", {"prompt": "b {}", "sampler": "tcd", "steps": 60}]).validate()
    assert read(tmp_path, "a {} --ss euler_ddim_uniform --s 30\n") == [
        {"prompt": "a {}", "sampler": "euler_ddim_uniform", "steps": 30}]
